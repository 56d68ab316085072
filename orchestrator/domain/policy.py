"""The failure policy: is a rollout's failure rate over the plan's limits?

Failure rate = failures / finished devices (succeeded + failed + rejected + timed out, where a
success with the wrong version counts as failed). Mid-wave it is judged once `min_devices` have
finished; at the end of a wave (after its bake) it is always judged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

from orchestrator.domain.plans import FailureType, PolicySpec


@dataclass(frozen=True)
class Tally:
    """Finished devices of a rollout so far: successes, and failures by type."""

    succeeded: int = 0
    failures: Mapping[FailureType, int] = field(default_factory=dict)

    @cached_property
    def failed(self) -> int:
        """All failures, whatever their type."""
        return sum(self.failures.values())

    @property
    def finished(self) -> int:
        """Devices that reached a final result counted by the policy."""
        return self.succeeded + self.failed

    @property
    def failure_rate(self) -> float:
        """failures / finished, 0 when nothing has finished."""
        finished = self.finished
        return self.failed / finished if finished else 0.0


@dataclass(frozen=True)
class Verdict:
    """The policy's answer: whether a limit was crossed, which, and the numbers.

    The reason is written when it is read: the engine judges at every look, and reads it only
    when something happens.
    """

    breached: bool
    judged: bool  # False mid-wave while fewer than min_devices have finished
    failure_rate: float
    tally: Tally = field(repr=False)
    policy: PolicySpec = field(repr=False)
    over_type: FailureType | None = None  # the per-type limit crossed, when it is one

    @cached_property
    def reason(self) -> str:
        """The verdict in words, with its numbers."""
        tally, policy, rate = self.tally, self.policy, self.failure_rate
        if not self.judged:
            return f"{tally.finished} of min_devices {policy.min_devices} finished; not judged yet"
        counts = f"{tally.failed} of {tally.finished} finished devices"
        if self.over_type is not None:
            kind = self.over_type
            count = tally.failures.get(kind, 0)
            limit = policy.max_failure_rate_by_type[kind]
            return (
                f"{kind} rate {_pct(count / tally.finished)} ({count} of {tally.finished} "
                f"finished devices) is over max_failure_rate_by_type.{kind} {_pct(limit)}"
            )
        if self.breached:
            return (
                f"failure rate {_pct(rate)} ({counts}) is over max_failure_rate "
                f"{_pct(policy.max_failure_rate)}"
            )
        return f"failure rate {_pct(rate)} ({counts}) is within {_pct(policy.max_failure_rate)}"


def _pct(rate: float) -> str:
    return f"{rate * 100:.1f}%"


def judge(tally: Tally, policy: PolicySpec, *, end_of_wave: bool) -> Verdict:
    """Judge `tally` against `policy`; a limit is crossed when a rate is over it (not equal)."""
    rate = tally.failure_rate
    finished = tally.finished
    if not end_of_wave and finished < policy.min_devices:
        return Verdict(False, False, rate, tally, policy)
    if rate > policy.max_failure_rate:
        return Verdict(True, True, rate, tally, policy)
    for failure_type, limit in sorted(policy.max_failure_rate_by_type.items()):
        count = tally.failures.get(failure_type, 0)
        if count and count / finished > limit:
            return Verdict(True, True, rate, tally, policy, failure_type)
    return Verdict(False, True, rate, tally, policy)


def judge_strata(
    tallies: Mapping[str, Tally], policy: PolicySpec, *, end_of_wave: bool
) -> tuple[str, Verdict] | None:
    """Judge each stratum's tally (`counters.strata_tallies`) with the same limits as the
    whole; the stratum crossing one with the highest failure rate (the first label on a tie)
    and its verdict, or None when none crosses one."""
    worst: tuple[str, Verdict] | None = None
    for label, tally in tallies.items():
        verdict = judge(tally, policy, end_of_wave=end_of_wave)
        if verdict.breached and (worst is None or verdict.failure_rate > worst[1].failure_rate):
            worst = (label, verdict)
    return worst


RESENDS = 3  # times a silent device is sent the same command again before its deadline
RESEND_FLOOR_S = 1.0  # never sooner than this after the device's last sign of life


def resend_after_s(policy: PolicySpec) -> float:
    """How long a device in flight may stay silent before it is sent its command again.

    The same command (same command id and download key) goes out at most RESENDS times, spread
    over the shorter timeout, so a device that lost its command (a broker that lost its
    state, a clean session) gets it, and one whose result was lost is asked for it again
    (ARCHITECTURE §5), before the deadline turns either into a timeout.
    """
    shorter_s = min(policy.ack_timeout_s, policy.device_timeout_s)
    return max(RESEND_FLOOR_S, shorter_s / (RESENDS + 1))
