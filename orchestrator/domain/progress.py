"""The engine's decisions, as one pure function: given a look at a rollout, its next step.

`decide(plan, look)` reads the plan, the rollout's state, wave, dispatch cursor, counters, the
clock and the rate limiter's bucket, and answers with one step: start, dispatch N devices,
wait, mark the wave done, advance to the next wave, halt or roll back (with the reason and the
numbers), send the rollback firmware to the next devices, end the rollback, complete. It does
no I/O and keeps no state, so the engine's driver only carries steps out, and a simulator can
run a plan on a fake clock by calling it in a loop (a call costs a few microseconds).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.domain import counters
from orchestrator.domain.plans import Plan
from orchestrator.domain.policy import Tally, Verdict, judge, judge_strata, may_cross_mid_wave
from orchestrator.domain.states import (
    IN_FLIGHT_DEVICE_STATES,
    SOAKING_DEVICE_STATES,
    TERMINAL_ROLLOUT_STATES,
    DeviceState,
    RolloutAction,
    RolloutState,
)

DISPATCH_BATCH = 500  # devices dispatched by one step at most
ROLLBACK_BATCH = 500  # devices looked at by one rollback step
# Not final: a wave is done only once none of its devices is in one (a soak holds it back).
_OPEN = (
    DeviceState.PENDING,
    *sorted(IN_FLIGHT_DEVICE_STATES),
    *sorted(SOAKING_DEVICE_STATES),
)
_IN_FLIGHT = tuple(counters.total(state) for state in sorted(IN_FLIGHT_DEVICE_STATES))


@functools.cache
def _wave_names(wave: int) -> tuple[str, tuple[str, ...]]:
    """The counters of wave `wave`'s pending devices, and of its devices not final."""
    return counters.in_wave(wave, DeviceState.PENDING), tuple(
        counters.in_wave(wave, state) for state in _OPEN
    )


@dataclass(frozen=True, slots=True)
class Bucket:
    """The token bucket behind a plan's `rate`: tokens at hand when last refilled.

    It holds at most one second's worth (and at least one token), so a rollout that waited
    does not burst.
    """

    tokens: float = 0.0
    at_ms: int = 0

    def refill(self, rate_per_s: float | None, now_ms: int) -> Bucket:
        """The bucket at `now_ms` (unchanged without a rate)."""
        if rate_per_s is None:
            return Bucket(self.tokens, now_ms)
        elapsed_s = max(0.0, (now_ms - self.at_ms) / 1000)
        tokens = min(max(1.0, rate_per_s), self.tokens + elapsed_s * rate_per_s)
        return Bucket(tokens, now_ms)

    def spend(self, count: int) -> Bucket:
        """The bucket once `count` devices were dispatched."""
        return Bucket(self.tokens - count, self.at_ms)


@dataclass(frozen=True, slots=True)
class Look:
    """What the engine knows about a rollout at one moment."""

    state: RolloutState
    wave: int  # the wave being sent or judged, from 0
    cursor: int  # devices dispatched so far, in the rollout's order
    reach: Sequence[int]  # devices reached in total by the end of each wave
    wave_done_at_ms: int  # when the current wave's last device became final; 0: not yet
    counts: Mapping[str, int]  # the rollout's counters (domain.counters names them)
    now_ms: int
    bucket: Bucket = field(default_factory=Bucket)
    connected: bool = True  # commands can be published now
    rollback_cursor: int = 0  # devices of the order looked at by the rollback so far
    reason: str = ""  # the rollout's current reason (why it rolls back, while it does)
    # The wave whose end was found inconclusive and put to a person (-1: none); running
    # again at that wave's end means a person promoted it past the test.
    inconclusive_wave: int = -1


# --- the steps ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    """Start the rollout; when its first wave needs approval, then wait for it with `approval`."""

    approval: str | None = None


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Send the next `count` devices of the wave (up to `reach` in the order)."""

    count: int
    reach: int
    ack_deadline_ms: int
    bucket: Bucket  # after refilling; spend what was actually sent


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing to do before `until_ms` (None: until a device or a person changes something)."""

    until_ms: int | None = None
    bucket: Bucket | None = None  # the refilled bucket, when dispatch is rate-limited
    why: str = ""


@dataclass(frozen=True, slots=True)
class WaveDone:
    """Every device of the wave is final: note it at `at_ms`; it bakes `bake_s`, then is judged."""

    at_ms: int
    reason: str
    bake_s: float


@dataclass(frozen=True, slots=True)
class Finding:
    """A step that changes the rollout's course: why, in words for the audit trail and
    people, and the numbers behind it."""

    reason: str
    figures: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Advance(Finding):
    """The wave passed: go on to wave `wave`; `approval` when that one waits for a person."""

    wave: int
    approval: str | None = None


@dataclass(frozen=True, slots=True)
class Breach(Finding):
    """A failure limit was crossed: halt, or roll back when the plan says so and can."""

    action: RolloutAction  # HALT or ROLLBACK


@dataclass(frozen=True, slots=True)
class Inconclusive(Finding):
    """The wave `wave` ended with its sequential test undecided and its rate over a limit:
    wait for a person (promote to go on, or roll back / abort), the evidence in the reason."""

    wave: int


@dataclass(frozen=True, slots=True)
class Complete(Finding):
    """Every wave passed."""


@dataclass(frozen=True, slots=True)
class SendRollback:
    """Send the rollback firmware to the devices at order[start:stop] that took the new one."""

    start: int
    stop: int


@dataclass(frozen=True, slots=True)
class EndRollback(Finding):
    """Every rollback is final: ROLLBACK_DONE, or ROLLBACK_INCOMPLETE when some failed."""

    action: RolloutAction


@dataclass(frozen=True, slots=True)
class Finished:
    """The rollout is in a terminal state: nothing to decide."""


Step = (
    Start
    | Dispatch
    | Wait
    | WaveDone
    | Advance
    | Breach
    | Inconclusive
    | Complete
    | SendRollback
    | EndRollback
    | Finished
)


# --- the decision ------------------------------------------------------------------------------


def figures(verdict: Verdict, tally: Tally, wave: str) -> dict[str, Any]:
    """The numbers behind a policy verdict, for the audit event and the log line; with
    `policy.confidence`, the sequential test's evidence too."""
    numbers: dict[str, Any] = {
        "failure_rate": round(verdict.failure_rate, 6),
        "finished": tally.finished,
        "failed": tally.failed,
        "failures": {t.value: n for t, n in tally.failures.items()},
        "wave": wave,
    }
    if verdict.evidence is not None:
        numbers["evidence"] = verdict.evidence.as_figures()
    return numbers


def inconclusive_reason(
    plan: Plan, wave_name: str, verdict: Verdict, rollout_id: str, stratum: str = ""
) -> str:
    """Why the rollout waits at the end of wave `wave_name` (in `stratum`, when one stratum's
    test is the undecided one), and what a person can do."""
    stop = f"ota rollback {rollout_id}" if plan.rollback is not None else f"ota abort {rollout_id}"
    undo = "roll back" if plan.rollback is not None else "abort"
    where = f"{stratum}: " if stratum else ""
    return (
        f"wave {wave_name}: {where}{verdict.reason}; promote to continue or {undo} "
        f"(ota promote {rollout_id} / {stop})"
    )


def approval_reason(wave_name: str, rollout_id: str) -> str:
    """Why the rollout waits before wave `wave_name`, and the command that lets it go on."""
    return f"wave {wave_name} needs approval; run: ota promote {rollout_id}"


def decide(plan: Plan, look: Look, *, rollout_id: str = "ROLLOUT") -> Step:
    """The rollout's next step. Pure: the same plan and look give the same step."""
    state = look.state
    if state in TERMINAL_ROLLOUT_STATES:
        return Finished()
    if state is RolloutState.PENDING:
        first = plan.waves[0]
        manual = first.approval == "manual"
        return Start(approval_reason(first.name, rollout_id) if manual else None)
    if state is RolloutState.RUNNING:
        return _running(plan, look, rollout_id)
    if state is RolloutState.ROLLING_BACK:
        return _rolling_back(look)
    return Wait(why=f"the rollout is {state}")


def _breach(plan: Plan, look: Look, verdict: Verdict, tally: Tally, stratum: str = "") -> Breach:
    rollback = plan.policy.on_failure == "rollback" and plan.rollback is not None
    numbers = {
        **figures(verdict, tally, plan.waves[look.wave].name),
        "max_failure_rate": plan.policy.max_failure_rate,
    }
    reason = verdict.reason
    if stratum:
        reason = f"{stratum}: {reason}"
        whole = counters.tally_of(look.counts)
        numbers |= {
            "stratum": stratum,
            "rollout_failure_rate": round(whole.failure_rate, 6),
            "rollout_finished": whole.finished,
        }
    action = RolloutAction.ROLLBACK if rollback else RolloutAction.HALT
    return Breach(reason, numbers, action)


def _stratum_breach(plan: Plan, look: Look, *, end_of_wave: bool) -> Breach | None:
    """With `policy.by`, the breach of a stratum judged on its own, if one crosses a limit."""
    if not plan.policy.by:
        return None
    tallies = counters.strata_tallies(look.counts)
    found = judge_strata(tallies, plan.policy, end_of_wave=end_of_wave)
    if found is None:
        return None
    label, verdict = found
    return _breach(plan, look, verdict, verdict.tally, label)


def _stratum_inconclusive(plan: Plan, look: Look) -> tuple[str, Verdict] | None:
    """With `policy.by` and `confidence`, at a wave end: the first stratum (by label) whose
    test is undecided with its rate over a limit, and its verdict; None when there is none."""
    if not plan.policy.by or plan.policy.confidence is None:
        return None
    for label, tally in counters.strata_tallies(look.counts).items():
        verdict = judge(tally, plan.policy, end_of_wave=True)
        if verdict.inconclusive:
            return label, verdict
    return None


def _crossed(
    plan: Plan, look: Look, verdict: Verdict | None, tally: Tally, *, end_of_wave: bool
) -> Breach | None:
    """The step when the whole rollout's `verdict` (None: not judged) or a stratum's crossed
    a limit; None when neither did."""
    if verdict is not None and verdict.breached:
        return _breach(plan, look, verdict, tally)
    return _stratum_breach(plan, look, end_of_wave=end_of_wave)


def _running(plan: Plan, look: Look, rollout_id: str) -> Step:
    counts = look.counts
    tally = counters.tally_of(counts)
    mid_wave = None
    if may_cross_mid_wave(tally, plan.policy):
        mid_wave = judge(tally, plan.policy, end_of_wave=False)
    crossed = _crossed(plan, look, mid_wave, tally, end_of_wave=False)
    if crossed is not None:
        return crossed
    wave = look.wave
    pending, not_final = _wave_names(wave)
    if look.cursor < look.reach[wave] or counts.get(pending):
        return _dispatch(plan, look)
    open_devices = counters.summed(counts, not_final)
    if open_devices:
        return Wait(why=f"{open_devices} devices of the wave are not final")
    spec = plan.waves[wave]
    if not look.wave_done_at_ms:
        reason = f"wave {spec.name}: every device is final; baking {spec.bake_s:g}s before judging"
        return WaveDone(look.now_ms, reason, spec.bake_s)
    baked_at_ms = look.wave_done_at_ms + int(spec.bake_s * 1000)
    if look.now_ms < baked_at_ms:
        return Wait(baked_at_ms, why=f"wave {spec.name} bakes")
    verdict = judge(tally, plan.policy, end_of_wave=True)
    crossed = _crossed(plan, look, verdict, tally, end_of_wave=True)
    if crossed is not None:
        return crossed
    numbers = figures(verdict, tally, spec.name)
    passed = "passed"
    undecided = ("", verdict) if verdict.inconclusive else _stratum_inconclusive(plan, look)
    if undecided is not None:
        if look.inconclusive_wave != wave:
            stratum, judged = undecided
            reason = inconclusive_reason(plan, spec.name, judged, rollout_id, stratum)
            if stratum:
                numbers = {**figures(judged, judged.tally, spec.name), "stratum": stratum}
            return Inconclusive(reason, numbers, wave)
        passed = "was promoted past an inconclusive test"
    if wave == len(look.reach) - 1:
        return Complete(f"every wave done; {verdict.reason}", numbers)
    following = plan.waves[wave + 1]
    reason = (
        f"wave {spec.name} {passed} ({verdict.reason}); "
        f"wave {following.name} reaches {look.reach[wave + 1]} devices"
    )
    manual = following.approval == "manual"
    approval = approval_reason(following.name, rollout_id) if manual else None
    return Advance(reason, numbers, wave + 1, approval)


def _dispatch(plan: Plan, look: Look) -> Dispatch | Wait:
    if not look.connected:
        return Wait(why="the MQTT broker is not connected")
    in_flight = counters.summed(look.counts, _IN_FLIGHT)
    return dispatch_step(plan, look.reach[look.wave], in_flight, look.bucket, look.now_ms)


def dispatch_step(
    plan: Plan, reach: int, in_flight: int, bucket: Bucket, now_ms: int
) -> Dispatch | Wait:
    """What `decide` answers once it has found that the wave's next devices are to be sent
    (the rollout running, no limit crossed, devices of the wave left, the broker connected):
    as many as `max_in_flight` (with `in_flight` devices in flight) and the rate's bucket
    allow, up to `reach` in the order. The simulator asks this directly at a look where it
    knows that much already."""
    policy = plan.policy
    budget = DISPATCH_BATCH
    if policy.max_in_flight is not None:
        budget = min(budget, policy.max_in_flight - in_flight)
    refilled = bucket.refill(policy.rate_per_s, now_ms)
    if policy.rate_per_s is not None:
        budget = min(budget, int(refilled.tokens))
    if budget <= 0:
        until = None
        if policy.rate_per_s is not None and refilled.tokens < 1:
            until = now_ms + int((1 - refilled.tokens) / policy.rate_per_s * 1000) + 1
        return Wait(until, refilled, why="max_in_flight or rate holds dispatch back")
    deadline = now_ms + int(policy.ack_timeout_s * 1000)
    return Dispatch(budget, reach, deadline, refilled)


def _rolling_back(look: Look) -> Step:
    if look.rollback_cursor < look.cursor:
        return SendRollback(
            look.rollback_cursor, min(look.rollback_cursor + ROLLBACK_BATCH, look.cursor)
        )
    counts = look.counts
    if counts.get(counters.total(DeviceState.ROLLBACK_SENT)):
        return Wait(why="rollbacks are in flight")
    failed = counts.get(counters.total(DeviceState.ROLLBACK_FAILED), 0)
    rolled = counts.get(counters.total(DeviceState.ROLLED_BACK), 0)
    # The rollback's own reason (the figures that crossed the threshold, or who asked) stays
    # in the final one: the failure rate itself resets as devices roll back.
    cause = f"; rolled back because {look.reason}" if look.reason else ""
    if failed:
        return EndRollback(
            f"{failed} of {failed + rolled} devices did not take the rollback firmware{cause}",
            {"rolled_back": rolled, "rollback_failed": failed},
            RolloutAction.ROLLBACK_INCOMPLETE,
        )
    return EndRollback(
        f"{rolled} devices are back on the rollback firmware{cause}",
        {"rolled_back": rolled},
        RolloutAction.ROLLBACK_DONE,
    )
