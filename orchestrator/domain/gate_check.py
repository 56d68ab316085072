"""Is a plan's first wave big enough for its gate? The exact chance a bad firmware is stopped
in it, for `ota validate` and the dry run.

With `policy.confidence: C`, a firmware failing at twice `max_failure_rate` should be stopped
(halted, or paused as inconclusive at the wave's end) with probability at least C. In a first
wave of n devices that is only possible when n is big enough: a canary of 5 at a 5% limit sees
no failure at all in 59% of the runs of a 10%-failing firmware. The chance is computed exactly
over the wave's results, in the order they finish (each fails with the given rate), with the
policy's own verdicts after each result and at the wave's end.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from orchestrator.domain.plans import FailureType, Plan, PolicySpec
from orchestrator.domain.policy import Tally, fewest_failures_to_cross, judge

MOST_DEVICES = 2_000  # the largest first wave looked for when suggesting one
_NEGLIGIBLE = 1e-15


def _stops_at_end(policy: PolicySpec, finished: int) -> int:
    """The fewest failures among `finished` that stop the rollout at a wave end."""
    low, high = 0, finished + 1  # judge is monotone in failures: more never passes more
    while low < high:
        middle = (low + high) // 2
        tally = Tally(finished - middle, {FailureType.FAILED: middle} if middle else {})
        if judge(tally, policy, end_of_wave=True).breached_or_inconclusive:
            high = middle
        else:
            low = middle + 1
    return low


def stop_chances(policy: PolicySpec, failure_rate: float, most: int) -> Iterator[float]:
    """For each first-wave size n from 0 to `most`: the chance a firmware failing at
    `failure_rate` is stopped within that wave (mid-wave, or at its end)."""
    yield 0.0
    alive = [1.0]  # by failures so far: the chance of having reached it without a halt
    halted = 0.0
    types = (FailureType.FAILED,)
    for finished in range(1, most + 1):
        grown = [0.0] * (finished + 1)
        for failures, p in enumerate(alive):
            if p < _NEGLIGIBLE:
                continue
            grown[failures] += p * (1 - failure_rate)
            grown[failures + 1] += p * failure_rate
        gate = fewest_failures_to_cross(policy, finished, types)
        halted += sum(grown[gate:])
        alive = grown[:gate] + [0.0] * (finished + 1 - min(gate, finished + 1))
        at_end = _stops_at_end(policy, finished)
        yield min(1.0, halted + sum(alive[at_end:]))


@dataclass(frozen=True)
class FirstWaveCheck:
    """How likely the first wave stops a firmware failing at twice the limit, and what would
    be enough."""

    wave: str
    devices: int
    confidence: float
    failure_rate: float  # twice the limit
    chance: float
    enough: int | None  # the smallest first wave that reaches the confidence (None: > MOST)

    @property
    def too_small(self) -> bool:
        """The wave stops such a firmware less often than the confidence promises."""
        return self.chance < self.confidence

    def warning(self) -> str:
        """`canary of 5 with confidence 95%: a 10% failure rate is stopped in the canary with
        probability 0.41; 29 devices give 0.95`."""
        rate = f"{self.failure_rate * 100:.4g}%"
        enough = (
            f"{self.enough} devices give {self.confidence:.2f}"
            if self.enough is not None
            else f"even {MOST_DEVICES} devices do not reach {self.confidence:.2f}"
        )
        return (
            f"{self.wave} of {self.devices} with confidence {self.confidence * 100:.4g}%: a "
            f"{rate} failure rate is stopped in the {self.wave} with probability "
            f"{self.chance:.2f}; {enough}"
        )


def check_first_wave(plan: Plan, devices: int | None = None) -> FirstWaveCheck | None:
    """The check of the plan's first wave of `devices` (its written `devices` when None);
    None without confidence, without a testable limit, or without a known size."""
    policy = plan.policy
    first = plan.waves[0]
    size = devices if devices is not None else first.devices
    limit = policy.max_failure_rate
    if policy.confidence is None or size is None or not 0 < limit < 0.5:
        return None
    bad = 2 * limit
    chance, enough = 0.0, None
    for n, p in enumerate(stop_chances(policy, bad, max(size, MOST_DEVICES))):
        if n == size:
            chance = p
        if enough is None and p >= policy.confidence:
            enough = n
        if n >= size and enough is not None:
            break
    return FirstWaveCheck(first.name, size, policy.confidence, bad, chance, enough)
