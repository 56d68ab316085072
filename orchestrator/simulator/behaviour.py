"""How simulated devices behave (rates, latency, seed), and the parsers of the CLI's spellings.

Every rate is the fraction (0 to 1) of devices, commands or installs a behaviour hits; each
device draws from its own `random.Random` seeded with `(seed, device id)`, so a run with the
same seed and the same devices makes the same choices whatever order commands arrive in.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

_RATE_HINT = "a fraction between 0 and 1, like 0.05 or 5%"


@dataclass(frozen=True, slots=True)
class Stall:
    """A download that stops part-way, once: having read `at` of the file (a fraction), the
    device reads nothing more for `for_s` seconds with the connection held open, or, with
    `hangup`, closes the connection and comes back after `for_s` to resume with Range."""

    at: float = 0.5
    for_s: float = 60.0
    hangup: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.at < 1.0:  # also refuses NaN
            raise ValueError(
                f"stall.at must be a fraction of the file from 0 up to 1 (not 1 itself: the "
                f"download would be over), got {self.at}"
            )
        if not 0.0 <= self.for_s < math.inf:
            raise ValueError(f"stall.for_s must be 0 or more seconds, got {self.for_s}")

    def byte(self, size: int) -> int:
        """The byte count after which a download of `size` bytes stalls."""
        return int(size * self.at)


@dataclass(frozen=True, slots=True)
class Behaviour:
    """What the simulated devices do; the defaults make a healthy, instant fleet."""

    fail_rate: float = 0.0  # of firmware installs: verified download, then `failed`
    fail_versions: Mapping[str, float] = field(default_factory=dict)  # version → extra fail rate
    reject_rate: float = 0.0  # of commands: `rejected` right after `received`
    offline_rate: float = 0.0  # of devices: never connect
    latency_s: tuple[float, float] = (0.0, 0.0)  # uniform pause before each result, seconds
    broken_download_rate: float = 0.0  # of downloads: the first attempt stops half-way
    wrong_version_rate: float = 0.0  # of firmware successes: another version is reported
    stall_rate: float = 0.0  # of downloads: the first transfer stalls as `stall` says
    stall: Stall = Stall()
    # Under a health soak (the command's `health`), of firmware successes: the device then
    # reports its old version (its bootloader went back), or sends no health report at all.
    revert_rate: float = 0.0
    die_after_success_rate: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        rates = {
            "fail_rate": self.fail_rate,
            "reject_rate": self.reject_rate,
            "offline_rate": self.offline_rate,
            "broken_download_rate": self.broken_download_rate,
            "wrong_version_rate": self.wrong_version_rate,
            "stall_rate": self.stall_rate,
            "revert_rate": self.revert_rate,
            "die_after_success_rate": self.die_after_success_rate,
            **{f"fail_versions[{v!r}]": r for v, r in self.fail_versions.items()},
        }
        for name, rate in rates.items():
            if not 0.0 <= rate <= 1.0:  # also refuses NaN
                raise ValueError(f"{name} must be between 0 and 1, got {rate}")
        low, high = self.latency_s
        if not 0.0 <= low <= high or math.isinf(high):
            raise ValueError(
                f"latency_s must be (min, max) seconds with 0 <= min <= max, got {self.latency_s}"
            )

    def install_fail_rate(self, version: str | None) -> float:
        """The chance an install of `version` fails: fail_rate and the version's own rate."""
        extra = self.fail_versions.get(version, 0.0) if version else 0.0
        return 1.0 - (1.0 - self.fail_rate) * (1.0 - extra)


def device_random(seed: int, device_id: str, stream: str = "") -> random.Random:
    """The seeded generator of one device (`stream` keeps independent draws apart)."""
    # A str seed is hashed with sha512 by `random`, so it does not depend on PYTHONHASHSEED.
    return random.Random(f"{seed}:{device_id}:{stream}")  # noqa: S311 - simulation, not secrets


def parse_rate(text: str, option: str) -> float:
    """`0.05`, `5%` → 0.05; ValueError naming `option`, the value and the fix otherwise."""
    value = text.strip()
    percent = value.endswith("%")
    try:
        rate = float(value.removesuffix("%")) / (100.0 if percent else 1.0)
    except ValueError:
        raise ValueError(f"{option} must be {_RATE_HINT}, got {text!r}") from None
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"{option} must be {_RATE_HINT}, got {text!r}")
    return rate


def parse_fail_version(text: str, option: str = "--fail-version") -> tuple[str, float]:
    """`1.2.0=0.5` → ("1.2.0", 0.5); ValueError naming the value and the fix otherwise."""
    version, sep, rate = text.partition("=")
    if not sep or not version.strip():
        raise ValueError(
            f"{option} must be VERSION=RATE, like 1.2.0=0.5 or 1.2.0=50%, got {text!r}"
        )
    return version.strip(), parse_rate(rate, f"the rate in {option} {text}")


def parse_stall(at: str, for_s: float, *, hangup: bool = False) -> Stall:
    """`--stall-at 30%`, `--stall-for 90` → Stall; ValueError naming the option and the fix."""
    fraction = parse_rate(at, "--stall-at")
    if fraction >= 1.0:
        raise ValueError(
            f"--stall-at must be below 1 (100%), where the download would be over, like 30%, "
            f"got {at!r}"
        )
    if not 0.0 <= for_s < math.inf:
        raise ValueError(f"--stall-for must be 0 or more seconds, like 90, got {for_s}")
    return Stall(at=fraction, for_s=for_s, hangup=hangup)


def parse_latency(text: str, option: str = "--latency") -> tuple[float, float]:
    """`0.1..0.5` → (0.1, 0.5), `0.2` → (0.2, 0.2); ValueError naming the value and the fix."""
    low_text, sep, high_text = text.partition("..")
    usage = f"{option} must be MIN..MAX seconds with 0 <= MIN <= MAX, like 0.1..0.5"
    try:
        low = float(low_text)
        high = float(high_text) if sep else low
    except ValueError:
        raise ValueError(f"{usage}, got {text!r}") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low < 0:
        raise ValueError(f"{usage}, got {text!r}")
    if low > high:
        raise ValueError(f"{usage}, got {text!r}; write {high_text}..{low_text}")
    return low, high
