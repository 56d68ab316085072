"""The plan simulator's synthetic fleet: its size, true failure rate, result latency, strata.

What `ota plan --simulate` and the dry run's `simulate=true` take from their options (such as
`--by-stratum model=TH-300:0.8@10%` and `--result-latency 5s..60s`), parsed here with errors
that name the option's form; domain/simulation.py runs plans against it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from orchestrator.domain.plan_values import format_duration, parse_duration, parse_failure_rate

MAX_DEVICES = 1_000_000  # the largest fleet a simulation takes (a run holds one entry a device)
LATENCY_S = (5.0, 60.0)  # a device's time from its command to its result, unless told
RUNS = 2_000  # runs of a simulation unless told


@dataclass(frozen=True)
class Stratum:
    """Devices whose `key` is `value` (such as model=TH-300): their share and true rate."""

    key: str
    value: str
    failure_rate: float
    share: float | None = None  # of the fleet; None: an equal share with the other strata

    def __str__(self) -> str:
        share = "" if self.share is None else f"@{self.share:.4g}"
        return f"{self.key}={self.value}:{self.failure_rate:.4g}{share}"


@dataclass(frozen=True)
class Fleet:
    """A synthetic fleet: its size, true failure rate, latency range and strata."""

    devices: int
    failure_rate: float
    latency_s: tuple[float, float] = LATENCY_S
    strata: tuple[Stratum, ...] = ()

    def groups(self) -> list[tuple[float, float]]:
        """(share, true failure rate) of each stratum, then of the devices in none."""
        named = [s.share for s in self.strata if s.share is not None]
        unnamed = [s for s in self.strata if s.share is None]
        left = max(0.0, 1.0 - sum(named))
        equal = left / (len(unnamed) + 1) if unnamed else 0.0
        groups = [(equal if s.share is None else s.share, s.failure_rate) for s in self.strata]
        rest = left - equal * len(unnamed)
        return [*groups, (rest, self.failure_rate)]

    @property
    def true_failure_rate(self) -> float:
        """The fleet's failure rate over all its devices."""
        return sum(share * rate for share, rate in self.groups())


def parse_stratum(text: str) -> Stratum:
    """`model=TH-300:0.8` or `model=TH-300:80%@10%` (its share of the fleet) as a Stratum;
    ValueError naming the form otherwise."""
    form = "KEY=VALUE:RATE or KEY=VALUE:RATE@SHARE, such as model=TH-300:0.8 or tag:hw=rev2:5%@10%"
    named, _, numbers = text.rpartition(":")
    key, equals, value = named.partition("=")
    if not (equals and key.strip() and value.strip() and numbers.strip()):
        raise ValueError(f"a stratum must read {form}, got {text!r}")
    rate, share = _one_or_two(
        numbers, "@", parse_failure_rate, f"stratum {text!r}: its rate and share"
    )
    if share is not None and share <= 0:
        raise ValueError(f"stratum {text!r}: its share must be more than 0%")
    return Stratum(key.strip(), value.strip(), rate, share)


def parse_latency(text: str) -> tuple[float, float]:
    """`5s..60s` (or one duration, `30s`) as (shortest, longest) seconds; ValueError else."""
    low, given = _one_or_two(
        text, "..", parse_duration, "a result latency must be a range like 5s..60s; its ends"
    )
    high = low if given is None else given
    if high < low:
        shown = f"{format_duration(low)}..{format_duration(high)}"
        raise ValueError(f"a result latency range must not end before it starts, got {shown}")
    return low, high


def _one_or_two(
    text: str, separator: str, parse: Callable[[str], float], what: str
) -> tuple[float, float | None]:
    """`A{separator}B`, or `A` alone (B None), each read by `parse`; ValueError starts `what`."""
    first, given, second = text.partition(separator)
    try:
        return parse(first.strip()), parse(second.strip()) if given else None
    except ValueError as exc:
        raise ValueError(f"{what} {exc}") from None


def check_strata(strata: Sequence[Stratum]) -> None:
    """ValueError when the strata's written shares add up to more than the whole fleet."""
    total = sum(s.share for s in strata if s.share is not None)
    if total > 1 + 1e-9:
        raise ValueError(
            f"the strata's shares add up to {total:.0%}, more than the whole fleet; lower them"
        )


def parse_fleet(devices: int, failure_rate: str, strata: Sequence[str], latency: str) -> Fleet:
    """The fleet that the simulator's options describe; ValueError naming the one wrong."""
    try:
        rate = parse_failure_rate(failure_rate)
    except ValueError as exc:
        raise ValueError(f"failure_rate {exc}") from None
    parsed = tuple(parse_stratum(text) for text in strata)
    check_strata(parsed)
    return Fleet(devices, rate, parse_latency(latency), parsed)
