"""The failure policy: is a rollout's failure rate over the plan's limits?

Failure rate = failures / finished devices (succeeded + failed + rejected + timed out, where a
success with the wrong version counts as failed). Mid-wave it is judged once `min_devices` have
finished; at the end of a wave (after its bake) it is always judged.

With `policy.confidence` each limit is judged by a sequential test (domain.sprt) instead of a
comparison: mid-wave a limit is crossed only when its test accepts twice the limit; at the end
of a wave too, and a wave whose test is still undecided with the rate over the limit is
inconclusive (the engine asks a person); undecided with the rate within the limit passes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from orchestrator.domain.plans import FailureType, PolicySpec
from orchestrator.domain.sprt import Decision, Evidence, applies, pct, sprt_for


@dataclass(frozen=True)
class Tally:
    """Finished devices of a rollout so far: successes, and failures by type."""

    succeeded: int = 0
    failures: Mapping[FailureType, int] = field(default_factory=dict)

    @property
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
    inconclusive: bool = False  # with confidence: a wave end the test cannot decide yet
    evidence: Evidence | None = None  # with confidence: the test of the limit named

    @property
    def breached_or_inconclusive(self) -> bool:
        """The rollout must not go on by itself."""
        return self.breached or self.inconclusive

    @cached_property
    def reason(self) -> str:
        """The verdict in words, with its numbers."""
        tally, policy, rate = self.tally, self.policy, self.failure_rate
        if not self.judged:
            return f"{tally.finished} of min_devices {policy.min_devices} finished; not judged yet"
        if self.evidence is not None:
            return self._tested_reason()
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

    def _tested_reason(self) -> str:
        """The verdict of a sequential test in words, with its numbers and evidence."""
        tally, policy, evidence = self.tally, self.policy, self.evidence
        assert evidence is not None
        kind, limit, count = "failure rate", policy.max_failure_rate, tally.failed
        if self.over_type is not None:
            kind = f"{self.over_type} rate"
            limit = policy.max_failure_rate_by_type[self.over_type]
            count = tally.failures.get(self.over_type, 0)
        rate = count / tally.finished if tally.finished else 0.0
        name = "max_failure_rate" if self.over_type is None else "max_failure_rate_by_type."
        name += "" if self.over_type is None else str(self.over_type)
        numbers = f"{count} of {tally.finished} finished devices"
        if self.over_type is not None:
            numbers += f" {self.over_type}"
        else:
            numbers += " failed"
        confidence = pct(evidence.confidence)
        tells = f"{pct(evidence.p0)} from {pct(evidence.p1)} at {confidence}"
        if self.breached:
            return (
                f"{kind} {_pct(rate)} ({numbers}) is over {name} {_pct(limit)} at "
                f"{confidence} confidence: the test tells {pct(evidence.p1)} from "
                f"{pct(evidence.p0)} ({evidence.in_words()})"
            )
        if self.inconclusive:
            return (
                f"{numbers} ({_pct(rate)}, over {name} {_pct(limit)}); the test cannot yet "
                f"tell {tells} ({evidence.in_words()})"
            )
        settled = "passes" if evidence.decision is Decision.PASS else "is still undecided"
        return (
            f"failure rate {_pct(tally.failure_rate)} ({tally.failed} of {tally.finished} "
            f"finished devices) is within {_pct(policy.max_failure_rate)}; the test at "
            f"{confidence} {settled} ({evidence.in_words()})"
        )


def _pct(rate: float) -> str:
    return f"{rate * 100:.1f}%"


def judge(tally: Tally, policy: PolicySpec, *, end_of_wave: bool) -> Verdict:
    """Judge `tally` against `policy`; a limit is crossed when a rate is over it (not equal).

    With `policy.confidence`, when its sequential test says so (see `judge_tested`).
    """
    if policy.confidence is not None:
        return judge_tested(tally, policy, end_of_wave=end_of_wave)
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
        if not end_of_wave and not may_cross_mid_wave(tally, policy):
            continue
        verdict = judge(tally, policy, end_of_wave=end_of_wave)
        if verdict.breached and (worst is None or verdict.failure_rate > worst[1].failure_rate):
            worst = (label, verdict)
    return worst


def _limits(policy: PolicySpec) -> list[tuple[FailureType | None, float]]:
    """Each limit of the policy: the overall one (None), then each type's, in order."""
    return [(None, policy.max_failure_rate), *sorted(policy.max_failure_rate_by_type.items())]


def judge_tested(tally: Tally, policy: PolicySpec, *, end_of_wave: bool) -> Verdict:
    """Judge `tally` with a sequential test per limit at `policy.confidence`.

    A limit of 0% or 100% has no test: it is compared as without confidence. Mid-wave (once
    min_devices have finished) a limit is crossed when its test halts; at a wave end too, and
    otherwise the first limit whose test is undecided with the rate over it is inconclusive.
    The verdict carries the evidence of the limit it names (the overall one when it passes).
    """
    confidence = policy.confidence
    assert confidence is not None
    rate, finished = tally.failure_rate, tally.finished
    if not end_of_wave and finished < policy.min_devices:
        return Verdict(False, False, rate, tally, policy)
    undecided: tuple[FailureType | None, int, float] | None = None
    tested: tuple[FailureType | None, int, float] | None = None  # the overall limit's test
    for kind, limit in _limits(policy):
        count = tally.failed if kind is None else tally.failures.get(kind, 0)
        if not applies(limit):
            if finished and count / finished > limit:
                return Verdict(True, True, rate, tally, policy, kind)
            continue
        test = sprt_for(limit, confidence)
        decision = test.decision(finished, count)
        if kind is None:
            tested = (kind, count, limit)
        if decision is Decision.HALT:
            evidence = test.evidence(finished, count)
            return Verdict(True, True, rate, tally, policy, kind, evidence=evidence)
        over = finished > 0 and count / finished > limit
        if decision is Decision.UNDECIDED and over and undecided is None:
            undecided = (kind, count, limit)
    if end_of_wave and undecided is not None:
        kind, count, limit = undecided
        evidence = sprt_for(limit, confidence).evidence(finished, count)
        return Verdict(False, True, rate, tally, policy, kind, True, evidence)
    passing: Evidence | None = None
    if tested is not None:
        _, count, limit = tested
        passing = sprt_for(limit, confidence).evidence(finished, count)
    return Verdict(False, True, rate, tally, policy, evidence=passing)


def limit_evidence(policy: PolicySpec, finished: int, failed: int) -> Evidence | None:
    """Where the sequential test of max_failure_rate stands; None without one."""
    limit, confidence = policy.max_failure_rate, policy.confidence
    if confidence is None or not applies(limit):
        return None
    return sprt_for(limit, confidence).evidence(finished, failed)


def evidence_in_words(policy: PolicySpec, finished: int, failed: int) -> str | None:
    """Where the test of max_failure_rate stands, for a person: `undecided: the test cannot
    yet tell 2.5% from 10% at 95% (log-likelihood ratio 1.33; …)`; None without a test."""
    evidence = limit_evidence(policy, finished, failed)
    if evidence is None:
        return None
    confidence, p0, p1 = evidence.confidence, pct(evidence.p0), pct(evidence.p1)
    tells = f"{p0} from {p1} at {pct(confidence)}"
    said = {
        Decision.HALT: f"halt: the test tells {p1} from {p0}",
        Decision.PASS: f"pass: the test tells {p0} from {p1}",
        Decision.UNDECIDED: f"undecided: the test cannot yet tell {tells}",
    }[evidence.decision]
    if evidence.decision is not Decision.UNDECIDED:
        said += f" at {pct(confidence)}"
    return f"{said} ({evidence.in_words()})"


def fewest_failures_to_cross(
    policy: PolicySpec, finished: int, types: Iterable[FailureType] = tuple(FailureType)
) -> int:
    """The fewest failures among `finished` devices, all of `types`, that can cross a limit
    mid-wave (`finished + 1` when none can): a quick test that tells when a verdict need not
    be asked for (the simulator's), never a verdict itself."""
    if finished < policy.min_devices:
        return finished + 1
    kinds = set(types)
    limits = _gate_limits(policy)
    fewest = _fewest_by_limit(limits, finished)
    allowed = [True] + [kind in kinds for kind, _ in limits[1]]
    return min([n for n, ok in zip(fewest, allowed, strict=True) if ok], default=finished + 1)


def may_cross_mid_wave(tally: Tally, policy: PolicySpec) -> bool:
    """Whether `tally` crosses a limit mid-wave: judge(tally, policy, end_of_wave=False)
    .breached, found from counts alone, without building the verdict (the engine's step
    function asks this at every look and builds the verdict only when it is True)."""
    failures = tally.failures
    if not failures:
        return False
    failed = sum(failures.values())
    finished = tally.succeeded + failed
    if finished < policy.min_devices:
        return False
    limits = _gate_limits(policy)
    fewest = _fewest_by_limit(limits, finished)
    if failed >= fewest[0]:
        return True
    for (kind, _), least in zip(limits[1], fewest[1:], strict=True):
        if failures.get(kind, 0) >= least:
            return True
    return False


_GateLimits = tuple[float, tuple[tuple[FailureType, float], ...], float | None]


def _gate_limits(policy: PolicySpec) -> _GateLimits:
    """What the fewest failures that cross each limit depend on (hashable, for the cache)."""
    by_type = tuple(sorted(policy.max_failure_rate_by_type.items()))
    return policy.max_failure_rate, by_type, policy.confidence


@functools.lru_cache(maxsize=65_536)
def _fewest_by_limit(limits: _GateLimits, finished: int) -> tuple[int, ...]:
    """For each limit (the overall one, then each type's in order), the fewest failures of
    its kind among `finished` devices that cross it (`finished + 1` when none can)."""
    overall, by_type, confidence = limits
    fewest = []
    for limit in [overall, *(limit for _, limit in by_type)]:
        if confidence is not None and applies(limit):
            least = sprt_for(limit, confidence).failures_to_halt(finished)
        else:
            least = math.floor(limit * finished) + 1
            while least > 1 and (least - 1) / finished > limit:
                least -= 1
            while least <= finished and not least / finished > limit:
                least += 1
        fewest.append(min(least, finished + 1))
    return tuple(fewest)


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
