"""The engine's step function, on a fake clock, without Redis: every transition it decides."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from orchestrator.domain import counters
from orchestrator.domain.plans import Plan, parse_plan
from orchestrator.domain.progress import (
    DISPATCH_BATCH,
    ROLLBACK_BATCH,
    Advance,
    Breach,
    Bucket,
    Complete,
    Dispatch,
    EndRollback,
    Finished,
    Inconclusive,
    Look,
    SendRollback,
    Start,
    Wait,
    WaveDone,
    decide,
)
from orchestrator.domain.states import TERMINAL_ROLLOUT_STATES, RolloutAction, RolloutState

R = RolloutState


def plan(policy: str = "", waves: str = "[{percent: 10}, {percent: 100}]", extra: str = "") -> Plan:
    return parse_plan(
        f"name: p\nfirmware: {{file: fw.bin, version: 2.0.0}}\nwaves: {waves}\n"
        f"policy: {{{policy}}}\n{extra}"
    )


def look(**changes: Any) -> Look:
    """Wave 0 of a 100-device rollout (10 in the first wave), running, nothing sent yet."""
    base = Look(
        state=R.RUNNING,
        wave=0,
        cursor=0,
        reach=(10, 100),
        wave_done_at_ms=0,
        counts={},
        now_ms=1_000_000,
        bucket=Bucket(0.0, 1_000_000),
    )
    return replace(base, **changes)


def done(wave: int, succeeded: int, failed: int = 0, **more: int) -> dict[str, int]:
    """Counters of a rollout whose devices so far are final."""
    counts = {
        counters.total("succeeded"): succeeded,
        counters.in_wave(wave, "succeeded"): succeeded,
    }
    if failed:
        counts[counters.total("failed")] = failed
        counts[counters.failures("failed")] = failed
    return counts | more


# --- start -------------------------------------------------------------------------------------


def test_a_pending_rollout_starts() -> None:
    assert decide(plan(), look(state=R.PENDING)) == Start(approval=None)


def test_a_pending_rollout_whose_first_wave_needs_approval_starts_then_waits_for_it() -> None:
    manual = plan(waves="[{name: canary, percent: 10, approval: manual}, {percent: 100}]")
    step = decide(manual, look(state=R.PENDING), rollout_id="r1")
    assert step == Start(approval="wave canary needs approval; run: ota promote r1")


@pytest.mark.parametrize("state", [R.PAUSED, R.HALTED, R.WAITING_APPROVAL])
def test_a_rollout_held_by_a_person_waits(state: RolloutState) -> None:
    step = decide(plan(), look(state=state))
    assert isinstance(step, Wait)
    assert step.until_ms is None


@pytest.mark.parametrize("state", sorted(TERMINAL_ROLLOUT_STATES))
def test_a_finished_rollout_has_nothing_to_decide(state: RolloutState) -> None:
    assert decide(plan(), look(state=state)) == Finished()


# --- dispatch: the wave, max_in_flight, rate -------------------------------------------------


def test_dispatch_sends_the_wave_up_to_its_reach() -> None:
    step = decide(plan("ack_timeout: 30s"), look())
    assert step == Dispatch(
        count=DISPATCH_BATCH, reach=10, ack_deadline_ms=1_030_000, bucket=Bucket(0.0, 1_000_000)
    )


def test_devices_put_back_to_pending_by_a_retry_are_sent_again() -> None:
    counts = {counters.in_wave(0, "pending"): 1, **done(0, 9)}
    assert isinstance(decide(plan(), look(cursor=10, counts=counts)), Dispatch)


def test_nothing_is_sent_while_the_broker_is_away() -> None:
    step = decide(plan(), look(connected=False))
    assert isinstance(step, Wait)
    assert "not connected" in step.why


def test_max_in_flight_bounds_each_dispatch() -> None:
    counts = {
        counters.total("sent"): 3,
        counters.total("downloading"): 2,
        counters.in_wave(0, "sent"): 5,
    }
    step = decide(plan("max_in_flight: 8"), look(cursor=5, counts=counts))
    assert isinstance(step, Dispatch)
    assert step.count == 3
    full = {**counts, counters.total("installing"): 3}
    assert isinstance(decide(plan("max_in_flight: 8"), look(cursor=5, counts=full)), Wait)


def test_rate_paces_dispatch_on_the_clock() -> None:
    """rate: 10/s sends 10 devices per simulated second, never a burst after a wait."""
    paced = plan("rate: 10/s", waves="[{percent: 100}]")
    bucket, now, sent, sends = Bucket(0.0, 0), 0, 0, 0
    while now <= 5_000:
        step = decide(paced, look(reach=(1000,), cursor=sent, now_ms=now, bucket=bucket))
        if isinstance(step, Dispatch):
            bucket = step.bucket.spend(step.count)
            sent += step.count
            sends += 1
        else:
            assert isinstance(step, Wait)
            assert step.bucket is not None
            bucket = step.bucket
        now += 100
    assert 49 <= sent <= 51  # 10/s over 5 s, give or take the step at the edges
    assert sends >= 45  # one device per look (100 ms), not bursts
    rested = decide(paced, look(reach=(1000,), cursor=sent, now_ms=60_000, bucket=bucket))
    assert isinstance(rested, Dispatch)
    assert rested.count == 10  # a minute's pause buys one second's worth, no more


def test_a_rate_limited_wait_says_when_the_next_token_comes() -> None:
    step = decide(plan("rate: 2/s"), look(bucket=Bucket(0.0, 1_000_000)))
    assert isinstance(step, Wait)
    assert step.until_ms is not None
    assert 1_000_000 < step.until_ms <= 1_000_501


# --- waves: wait, done, bake, judge, advance, complete ------------------------------------------


def test_a_sent_wave_waits_for_its_devices() -> None:
    counts = {counters.in_wave(0, "downloading"): 2, **done(0, 8)}
    step = decide(plan(), look(cursor=10, counts=counts))
    assert isinstance(step, Wait)
    assert "2 devices" in step.why


def test_a_wave_whose_devices_are_final_is_marked_done_then_bakes() -> None:
    baking = plan(waves="[{name: canary, percent: 10, bake: 1m}, {percent: 100}]")
    step = decide(baking, look(cursor=10, counts=done(0, 10)))
    assert step == WaveDone(
        at_ms=1_000_000,
        reason="wave canary: every device is final; baking 60s before judging",
        bake_s=60.0,
    )
    during = decide(baking, look(cursor=10, counts=done(0, 10), wave_done_at_ms=1_000_000))
    assert during == Wait(until_ms=1_060_000, why="wave canary bakes")
    after = look(cursor=10, counts=done(0, 10), wave_done_at_ms=1_000_000, now_ms=1_060_000)
    assert isinstance(decide(baking, after), Advance)


def test_a_passed_wave_advances_with_its_figures() -> None:
    step = decide(plan(), look(cursor=10, counts=done(0, 10), wave_done_at_ms=999_000))
    assert isinstance(step, Advance)
    assert step.wave == 1
    assert step.approval is None
    assert step.reason == (
        "wave wave-1 passed (failure rate 0.0% (0 of 10 finished devices) is within 5.0%); "
        "wave wave-2 reaches 100 devices"
    )
    assert step.figures == {
        "failure_rate": 0.0,
        "finished": 10,
        "failed": 0,
        "failures": {},
        "wave": "wave-1",
    }


def test_a_wave_that_needs_approval_is_advanced_to_and_waits() -> None:
    gated = plan(waves="[{percent: 10}, {name: rest, percent: 100, approval: manual}]")
    step = decide(gated, look(cursor=10, counts=done(0, 10), wave_done_at_ms=1), rollout_id="r9")
    assert isinstance(step, Advance)
    assert step.approval == "wave rest needs approval; run: ota promote r9"


def test_the_last_wave_passing_completes_the_rollout() -> None:
    counts = done(1, 90) | {counters.total("succeeded"): 100}
    step = decide(plan(), look(wave=1, cursor=100, counts=counts, wave_done_at_ms=1))
    assert isinstance(step, Complete)
    assert step.reason == (
        "every wave done; failure rate 0.0% (0 of 100 finished devices) is within 5.0%"
    )


# --- the failure policy ----------------------------------------------------------------------


def test_mid_wave_a_breach_waits_for_min_devices() -> None:
    strict = plan("min_devices: 5, max_failure_rate: 10%")
    open_six = {counters.in_wave(0, "sent"): 6}
    early = decide(strict, look(cursor=10, counts=done(0, 2, failed=2, **open_six)))
    assert isinstance(early, Wait)
    late = decide(strict, look(cursor=10, counts=done(0, 3, failed=2, **open_six)))
    assert isinstance(late, Breach)
    assert late.action is RolloutAction.HALT
    assert late.reason == (
        "failure rate 40.0% (2 of 5 finished devices) is over max_failure_rate 10.0%"
    )
    assert late.figures["max_failure_rate"] == 0.1


def test_at_a_wave_end_the_rate_is_judged_whatever_min_devices_says() -> None:
    strict = plan("min_devices: 50, max_failure_rate: 10%")
    step = decide(strict, look(cursor=10, counts=done(0, 8, failed=2), wave_done_at_ms=1))
    assert isinstance(step, Breach)


def test_a_breach_rolls_back_only_when_the_plan_says_so_and_names_a_rollback() -> None:
    counts = done(0, 0, failed=3)
    rolls = plan("on_failure: rollback", extra="rollback: {file: old.bin, version: 1.0.0}\n")
    halts = plan("on_failure: halt", extra="rollback: {file: old.bin, version: 1.0.0}\n")
    for rollout_plan, action in ((rolls, RolloutAction.ROLLBACK), (halts, RolloutAction.HALT)):
        step = decide(rollout_plan, look(cursor=10, counts=counts))
        assert isinstance(step, Breach)
        assert step.action is action


def test_failures_before_a_rebase_are_not_judged_again() -> None:
    counts = done(0, 5, failed=5) | {counters.base(counters.failures("failed")): 5}
    assert not isinstance(decide(plan(), look(cursor=10, counts=counts)), Breach)


# --- strata (policy.by) -----------------------------------------------------------------------


def in_strata(by_label: dict[str, tuple[int, int]]) -> dict[str, int]:
    """Stratum counters: {label: (succeeded, failed)} as the results script keeps them."""
    counts: dict[str, int] = {}
    for label, (succeeded, failed) in by_label.items():
        counts[counters.in_stratum(label, "succeeded")] = succeeded
        counts[counters.stratum_failures(label, "failed")] = failed
    return counts


# A fleet of 100 finished devices: 4 of model TH-300, 3 of them failed; 3% fleet-wide.
FLEET_UNDER_LIMIT = done(0, 97, failed=3) | in_strata(
    {"model=TH-300": (1, 3), "model=TH-200": (96, 0)}
)


def test_a_stratum_over_the_limit_halts_while_the_whole_is_under_it() -> None:
    by_model = plan("max_failure_rate: 5%, min_devices: 4, by: [model]")
    step = decide(by_model, look(cursor=10, counts=FLEET_UNDER_LIMIT))
    assert isinstance(step, Breach)
    assert step.action is RolloutAction.HALT
    assert step.reason == (
        "model=TH-300: failure rate 75.0% (3 of 4 finished devices) is over max_failure_rate 5.0%"
    )
    assert step.figures["stratum"] == "model=TH-300"
    assert (step.figures["finished"], step.figures["failed"]) == (4, 3)
    assert step.figures["rollout_failure_rate"] == 0.03


def test_without_by_the_same_counters_judge_only_the_whole() -> None:
    whole_only = plan("max_failure_rate: 5%, min_devices: 4")
    assert not isinstance(decide(whole_only, look(cursor=10, counts=FLEET_UNDER_LIMIT)), Breach)


def test_mid_wave_a_stratum_waits_for_its_own_min_devices_and_a_wave_end_judges_it() -> None:
    by_model = plan("max_failure_rate: 5%, min_devices: 5, by: [model]")
    counts = done(0, 97, failed=3) | in_strata({"model=TH-300": (1, 3), "model=TH-200": (96, 0)})
    mid = decide(by_model, look(cursor=100, reach=(100, 200), counts=counts))
    assert not isinstance(mid, Breach)  # TH-300 has 4 of min_devices 5 finished
    end = decide(by_model, look(cursor=100, reach=(100, 200), counts=counts, wave_done_at_ms=1))
    assert isinstance(end, Breach)
    assert end.reason.startswith("model=TH-300: ")


def test_the_stratum_named_is_the_one_with_the_highest_rate() -> None:
    by_model = plan("max_failure_rate: 5%, by: [model]")
    counts = done(0, 8, failed=4) | in_strata(
        {"model=A": (4, 1), "model=B": (2, 2), "model=C": (2, 1)}
    )
    counts[counters.failures("failed")] = 0  # only the strata are judged here
    counts[counters.total("succeeded")] = 100
    step = decide(by_model, look(cursor=10, counts=counts))
    assert isinstance(step, Breach)
    assert step.figures["stratum"] == "model=B"


def test_stratum_failures_before_a_rebase_are_not_judged_again() -> None:
    by_model = plan("max_failure_rate: 5%, min_devices: 4, by: [model]")
    rebased = {
        counters.base(name): value
        for name, value in FLEET_UNDER_LIMIT.items()
        if name.startswith(counters.REBASED_PREFIXES)
    }
    step = decide(by_model, look(cursor=10, counts=FLEET_UNDER_LIMIT | rebased))
    assert not isinstance(step, Breach)


def test_a_passing_wave_with_strata_advances() -> None:
    by_model = plan("max_failure_rate: 50%, by: [model]")
    counts = done(0, 9, failed=1) | in_strata({"model=A": (5, 0), "model=B": (4, 1)})
    step = decide(by_model, look(cursor=10, counts=counts, wave_done_at_ms=1))
    assert isinstance(step, Advance)


def test_with_confidence_a_stratum_is_judged_by_its_own_sequential_test() -> None:
    """One failure in a stratum no longer halts; three in a row do, the stratum named."""
    gated = plan("max_failure_rate: 5%, confidence: 95%, by: [model]")
    one = done(0, 90, failed=1) | in_strata({"model=A": (90, 0), "model=TH-300": (0, 1)})
    assert not isinstance(decide(gated, look(cursor=10, counts=one)), Breach)
    three = done(0, 90, failed=3) | in_strata({"model=A": (90, 0), "model=TH-300": (0, 3)})
    step = decide(gated, look(cursor=10, counts=three))
    assert isinstance(step, Breach)
    assert step.reason.startswith("model=TH-300: failure rate 100.0% (3 of 3 finished devices")
    assert step.figures["stratum"] == "model=TH-300"


def test_with_confidence_an_undecided_stratum_over_the_limit_pauses_the_wave_end() -> None:
    """The whole passes its test (2 of 100), a stratum cannot yet tell (2 of 10, 20%)."""
    gated = plan("max_failure_rate: 5%, confidence: 95%, by: [model]")
    counts = done(0, 98, failed=2) | in_strata({"model=A": (90, 0), "model=TH-300": (8, 2)})
    end = look(cursor=10, counts=counts, wave_done_at_ms=1)
    step = decide(gated, end, rollout_id="r1")
    assert isinstance(step, Inconclusive)
    assert step.reason.startswith("wave wave-1: model=TH-300: 2 of 10 finished devices failed (20")
    assert step.figures["stratum"] == "model=TH-300"
    assert (step.figures["finished"], step.figures["failed"]) == (10, 2)
    promoted = decide(gated, replace(end, inconclusive_wave=0), rollout_id="r1")
    assert isinstance(promoted, Advance)


# --- rolling back ----------------------------------------------------------------------------


def test_a_rollback_walks_the_order_in_batches_then_waits_then_ends() -> None:
    many = look(state=R.ROLLING_BACK, cursor=ROLLBACK_BATCH + 20)
    assert decide(plan(), many) == SendRollback(0, ROLLBACK_BATCH)
    second = replace(many, rollback_cursor=ROLLBACK_BATCH)
    assert decide(plan(), second) == SendRollback(ROLLBACK_BATCH, ROLLBACK_BATCH + 20)
    walked = replace(many, rollback_cursor=ROLLBACK_BATCH + 20)
    waiting = replace(walked, counts={counters.total("rollback_sent"): 2})
    assert isinstance(decide(plan(), waiting), Wait)
    ended = replace(walked, counts={counters.total("rolled_back"): 7}, reason="too many failed")
    assert decide(plan(), ended) == EndRollback(
        "7 devices are back on the rollback firmware; rolled back because too many failed",
        {"rolled_back": 7},
        RolloutAction.ROLLBACK_DONE,
    )


def test_a_rollback_some_devices_refused_ends_incomplete() -> None:
    counts = {counters.total("rolled_back"): 7, counters.total("rollback_failed"): 3}
    step = decide(plan(), look(state=R.ROLLING_BACK, counts=counts))
    assert step == EndRollback(
        "3 of 10 devices did not take the rollback firmware",
        {"rolled_back": 7, "rollback_failed": 3},
        RolloutAction.ROLLBACK_INCOMPLETE,
    )


# --- a whole rollout on the fake clock ----------------------------------------------------------


def test_a_whole_rollout_runs_on_the_step_function_alone() -> None:
    """A toy fleet answering each command 2 s later drives a 3-wave plan to completion."""
    three = plan(
        "rate: 50/s, max_in_flight: 20",
        waves="[{percent: 5, bake: 10s}, {percent: 50}, {percent: 100}]",
    )
    state, wave, cursor, done_at, now = R.PENDING, 0, 0, 0, 0
    reach = (5, 50, 100)
    bucket = Bucket(0.0, 0)
    answers: list[tuple[int, int]] = []  # (at_ms, wave)
    counts: dict[str, int] = {}
    steps = 0
    while state is not R.COMPLETED and steps < 10_000:
        steps += 1
        for at, w in [a for a in answers if a[0] <= now]:
            answers.remove((at, w))
            for name in (counters.total("sent"), counters.in_wave(w, "sent")):
                counts[name] -= 1
            for name in (counters.total("succeeded"), counters.in_wave(w, "succeeded")):
                counts[name] = counts.get(name, 0) + 1
        view = Look(state, wave, cursor, reach, done_at, counts, now, bucket)
        match decide(three, view):
            case Start():
                state = R.RUNNING
            case Dispatch(count=count, reach=limit, bucket=refilled):
                n = min(count, limit - cursor)
                bucket, cursor = refilled.spend(n), cursor + n
                for name in (counters.total("sent"), counters.in_wave(wave, "sent")):
                    counts[name] = counts.get(name, 0) + n
                answers += [(now + 2_000, wave)] * n
            case Wait(bucket=refilled):
                bucket = refilled or bucket
                now += 100
            case WaveDone(at_ms=at):
                done_at = at
            case Advance(wave=following):
                wave, done_at = following, 0
            case Complete():
                state = R.COMPLETED
            case other:
                pytest.fail(f"unexpected step {other}")
    assert state is R.COMPLETED
    assert counts[counters.total("succeeded")] == 100
    assert 10_000 + 2_000 * 3 <= now <= 30_000  # a bake, three rounds of answers, 20 in flight


# --- the health soak ---------------------------------------------------------------------------

SOAK = "health: {soak: 30m, heartbeat: 5m}"


def verifying(wave: int, n: int) -> dict[str, int]:
    return {counters.total("verifying"): n, counters.in_wave(wave, "verifying"): n}


def test_a_wave_whose_devices_are_verifying_is_not_done() -> None:
    """The soak holds the wave back: no WaveDone, no next wave, while a device is verifying."""
    counts = done(0, 8) | verifying(0, 2)
    step = decide(plan(SOAK), look(cursor=10, counts=counts))
    assert step == Wait(why="2 devices of the wave are not final")


def test_a_wave_is_done_once_its_soaks_have_passed() -> None:
    step = decide(plan(SOAK), look(cursor=10, counts=done(0, 10)))
    assert isinstance(step, WaveDone)


def test_verifying_devices_do_not_count_against_max_in_flight() -> None:
    counts = verifying(0, 5) | {counters.total("sent"): 1, counters.in_wave(0, "sent"): 1}
    step = decide(plan(f"max_in_flight: 3, {SOAK}"), look(cursor=6, counts=counts))
    assert isinstance(step, Dispatch)
    assert step.count == 2  # 3 in flight at most, 1 is


def test_verifying_devices_are_not_judged_yet() -> None:
    """A success under a soak is not a finished device: nothing to judge on verifying alone."""
    counts = verifying(0, 5) | {
        counters.total("failed"): 1,
        counters.in_wave(0, "failed"): 1,
        counters.failures("failed"): 1,
    }
    step = decide(plan(f"max_failure_rate: 40%, {SOAK}"), look(cursor=10, counts=counts))
    assert isinstance(step, Breach)  # 1 of 1 finished: the verifying five do not dilute it
    assert step.figures["finished"] == 1


@pytest.mark.parametrize("kind", ["unhealthy", "reverted"])
def test_soak_failures_count_in_the_failure_rate(kind: str) -> None:
    counts = done(0, 8) | {
        counters.total("failed"): 2,
        counters.in_wave(0, "failed"): 2,
        counters.failures(kind): 2,
    }
    step = decide(plan(f"max_failure_rate: 10%, {SOAK}"), look(cursor=10, counts=counts))
    assert isinstance(step, Breach)
    assert step.action is RolloutAction.HALT
    assert step.figures["failures"] == {kind: 2}


@pytest.mark.parametrize("kind", ["unhealthy", "reverted"])
def test_soak_failures_have_limits_of_their_own_and_can_roll_back(kind: str) -> None:
    counts = done(0, 19) | {
        counters.total("failed"): 1,
        counters.in_wave(0, "failed"): 1,
        counters.failures(kind): 1,
    }
    policy = f"max_failure_rate: 50%, max_failure_rate_by_type: {{{kind}: 1%}}, "
    policy += f"on_failure: rollback, {SOAK}"
    step = decide(
        plan(policy, extra="rollback: {file: old.bin}"),
        look(cursor=20, reach=(20, 100), counts=counts),
    )
    assert isinstance(step, Breach)
    assert step.action is RolloutAction.ROLLBACK
    assert f"{kind} rate 5.0%" in step.reason


def test_a_rollback_waits_for_nothing_that_verifies() -> None:
    """Rolling back: devices still verifying are sent the rollback too (not waited for)."""
    counts = verifying(0, 3)
    step = decide(plan(SOAK), look(state=R.ROLLING_BACK, cursor=10, counts=counts))
    assert step == SendRollback(0, 10)


# --- policy.confidence --------------------------------------------------------------------------

CONFIDENT = "confidence: 95%"
TWENTY = "[{name: canary, devices: 20}, {name: rest, percent: 100}]"


def test_with_confidence_a_single_early_failure_does_not_halt() -> None:
    open_nine = {counters.in_wave(0, "sent"): 9}
    without = decide(plan(), look(cursor=10, counts=done(0, 0, failed=1, **open_nine)))
    assert isinstance(without, Breach)
    step = decide(plan(CONFIDENT), look(cursor=10, counts=done(0, 0, failed=1, **open_nine)))
    assert isinstance(step, Wait)


def test_with_confidence_a_failing_canary_halts_mid_wave_with_the_evidence() -> None:
    open_seven = {counters.in_wave(0, "sent"): 7}
    step = decide(plan(CONFIDENT), look(cursor=10, counts=done(0, 0, failed=3, **open_seven)))
    assert isinstance(step, Breach)
    assert step.action is RolloutAction.HALT
    assert "at 95% confidence" in step.reason
    assert step.figures["evidence"]["decision"] == "halt"
    assert step.figures["evidence"]["llr"] == 4.159


def test_with_confidence_an_inconclusive_wave_end_waits_for_a_person() -> None:
    gate = plan(CONFIDENT, waves=TWENTY)
    at_end = look(cursor=20, reach=(20, 100), counts=done(0, 18, failed=2), wave_done_at_ms=1)
    step = decide(gate, at_end, rollout_id="r7")
    assert step == Inconclusive(
        wave=0,
        reason=(
            "wave canary: 2 of 20 finished devices failed (10.0%, over max_failure_rate 5.0%); "
            "the test cannot yet tell 2.5% from 10% at 95% (log-likelihood ratio 1.33; halts "
            "at 3.00, passes at -3.00); promote to continue or abort "
            "(ota promote r7 / ota abort r7)"
        ),
        figures=step.figures if isinstance(step, Inconclusive) else {},
    )
    assert isinstance(step, Inconclusive)
    assert step.figures["evidence"]["decision"] == "undecided"
    with_rollback = plan(CONFIDENT, waves=TWENTY, extra="rollback: {file: old.bin}\n")
    rolls = decide(with_rollback, at_end, rollout_id="r7")
    assert isinstance(rolls, Inconclusive)
    assert rolls.reason.endswith(
        "promote to continue or roll back (ota promote r7 / ota rollback r7)"
    )


def test_with_confidence_a_promoted_inconclusive_wave_advances() -> None:
    gate = plan(CONFIDENT, waves=TWENTY)
    promoted = look(
        cursor=20,
        reach=(20, 100),
        counts=done(0, 18, failed=2),
        wave_done_at_ms=1,
        inconclusive_wave=0,
    )
    step = decide(gate, promoted)
    assert isinstance(step, Advance)
    assert step.wave == 1
    assert step.reason.startswith("wave canary was promoted past an inconclusive test (")


def test_with_confidence_a_promoted_inconclusive_last_wave_completes() -> None:
    gate = plan(CONFIDENT, waves="[{percent: 100}]")
    counts = done(0, 18, failed=2)
    end = look(cursor=20, reach=(20,), counts=counts, wave_done_at_ms=1)
    assert isinstance(decide(gate, end), Inconclusive)
    assert isinstance(decide(gate, replace(end, inconclusive_wave=0)), Complete)


def test_with_confidence_an_undecided_wave_end_within_the_limit_advances() -> None:
    gate = plan(CONFIDENT, waves=TWENTY)
    step = decide(
        gate, look(cursor=20, reach=(20, 100), counts=done(0, 19, failed=1), wave_done_at_ms=1)
    )
    assert isinstance(step, Advance)
    assert "the test at 95% is still undecided" in step.reason
