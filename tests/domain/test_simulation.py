"""The plan simulator: the engine's step function run against a synthetic fleet, offline."""

from __future__ import annotations

import math

import pytest

from orchestrator.domain.plans import Plan, parse_plan
from orchestrator.domain.simulation import Outcome, simulate
from orchestrator.domain.synthetic_fleet import Fleet, Stratum

KEYS = [
    "runs",
    "devices",
    "failure_rate",
    "p_halt",
    "p_complete",
    "p_inconclusive_pause",
    "reached_mean",
    "reached_p95",
    "bad_installs_mean",
    "bad_installs_p95",
    "duration_s_mean",
]


def plan(policy: str, waves: str = "[{percent: 100}]") -> Plan:
    return parse_plan(
        f"name: p\nfirmware: {{file: fw.bin}}\nwaves: {waves}\npolicy: {{{policy}}}\n"
    )


def test_the_summary_has_exactly_the_documented_keys() -> None:
    summary = simulate(plan("max_failure_rate: 5%"), Fleet(50, 0.0), runs=5)
    assert list(summary.as_json()) == KEYS
    assert summary.p_complete == 1.0
    assert summary.reached_mean == 50
    assert summary.bad_installs_p95 == 0


def test_runs_are_seeded_and_repeatable() -> None:
    gate = plan("max_failure_rate: 5%, confidence: 95%", "[{devices: 20}, {percent: 100}]")
    one = simulate(gate, Fleet(200, 0.06), runs=30, seed=7)
    again = simulate(gate, Fleet(200, 0.06), runs=30, seed=7)
    other = simulate(gate, Fleet(200, 0.06), runs=30, seed=8)
    assert one == again
    assert one != other


def test_a_firmware_that_fails_everywhere_is_halted_in_the_canary() -> None:
    gate = plan("max_failure_rate: 5%, confidence: 95%", "[{devices: 20}, {percent: 100}]")
    summary = simulate(gate, Fleet(1000, 1.0), runs=20)
    assert summary.p_halt == 1.0
    assert summary.reached_p95 <= 20  # the canary, nothing more
    assert summary.bad_installs_mean == summary.reached_mean


def test_without_confidence_one_early_failure_halts_a_healthy_rollout_often() -> None:
    """The default min_devices 1 judges from the first result: with 2% failing devices and a
    limit of 5%, a third of healthy rollouts are halted by an early failure; the sequential
    test halts almost none."""
    waves = "[{devices: 20}, {percent: 100}]"
    plain = simulate(plan("max_failure_rate: 5%", waves), Fleet(500, 0.02), runs=100)
    tested = simulate(
        plan("max_failure_rate: 5%, confidence: 95%", waves), Fleet(500, 0.02), runs=100
    )
    assert plain.p_halt > 0.25
    assert tested.p_halt < 0.05


def test_max_in_flight_bounds_the_blast_radius() -> None:
    """A 60%-failing firmware halts before more than the canary and max_in_flight are sent."""
    gate = plan(
        "max_failure_rate: 5%, confidence: 95%, max_in_flight: 5",
        "[{devices: 20}, {percent: 100}]",
    )
    summary = simulate(gate, Fleet(1000, 0.6), runs=50)
    assert summary.p_halt == 1.0
    assert summary.reached_p95 <= 20


def test_strata_set_the_fleet_true_rate() -> None:
    fleet = Fleet(100, 0.0, strata=(Stratum("model", "TH-300", 0.8, share=0.25),))
    assert fleet.true_failure_rate == pytest.approx(0.2)
    halves = Fleet(100, 0.1, strata=(Stratum("model", "A", 0.5), Stratum("model", "B", 0.3)))
    assert halves.true_failure_rate == pytest.approx((0.5 + 0.3 + 0.1) / 3)
    summary = simulate(plan("max_failure_rate: 100%"), fleet, runs=20)
    assert 0.1 < summary.bad_installs_mean / 100 < 0.3


def test_a_failing_stratum_is_caught_only_when_the_plan_judges_strata() -> None:
    """One model, a tenth of the fleet, fails 80% of the time while the rest is healthy: with
    `by: [model]` the stratified canary holds some of it and its own test halts nearly every
    run; judged as a whole, the 8% it adds is mostly lost in the fleet."""
    waves = "[{devices: 50, bake: 10m}, {percent: 50}, {percent: 100}]"
    gate = "max_failure_rate: 10%, min_devices: 20, confidence: 95%, max_in_flight: 100"
    fleet = Fleet(2000, 0.01, strata=(Stratum("model", "TH-300", 0.8, share=0.1),))
    judged = simulate(plan(f"{gate}, by: [model]", waves), fleet, runs=100, seed=3)
    whole = simulate(plan(gate, waves), fleet, runs=100, seed=3)
    assert judged.p_halt >= 0.9
    assert judged.reached_p95 == 50  # halted at the canary's end
    assert whole.p_halt <= 0.6


def test_with_strata_the_waves_take_every_stratum_in_proportion() -> None:
    """A canary of 10 with `by: [model]` holds one of a 10% model that fails every time: it
    is judged on its own at the wave end (1 of 1 failed), so every run halts there."""
    waves = "[{devices: 10}, {percent: 100}]"
    fleet = Fleet(1000, 0.0, strata=(Stratum("model", "TH-300", 1.0, share=0.1),))
    summary = simulate(plan("max_failure_rate: 50%, by: [model]", waves), fleet, runs=20)
    assert summary.p_halt == 1.0
    assert summary.bad_installs_mean == 1.0
    assert summary.reached_mean == 10


def test_bakes_and_latency_make_the_duration() -> None:
    baked = plan("max_failure_rate: 5%", "[{devices: 10, bake: 10m}, {percent: 100}]")
    summary = simulate(baked, Fleet(20, 0.0, latency_s=(5.0, 5.0)), runs=3)
    assert summary.duration_s_mean == pytest.approx(600 + 5 + 5, abs=0.1)


def test_a_health_soak_holds_each_wave_back() -> None:
    """With `health.soak`, a success counts only once its soak is over: each wave lasts its
    last result plus the soak, then its bake."""
    waves = "[{devices: 10, bake: 10m}, {percent: 100}]"
    soaked = plan("max_failure_rate: 5%, health: {soak: 30m, heartbeat: 5m}", waves)
    summary = simulate(soaked, Fleet(20, 0.0, latency_s=(5.0, 5.0)), runs=3)
    assert summary.duration_s_mean == pytest.approx(2 * (5 + 1800) + 600, abs=0.1)
    assert summary.p_complete == 1.0


# Plans and fleets that take every path of a run: rate and max_in_flight, retries, time-outs
# (latencies past device_timeout), per-type limits, min_devices, bakes, a soak, strata, and
# fleets of several groups drawn by chance.
SHORTCUT_CASES = [
    ("max_failure_rate: 5%, rate: 20/s, max_in_flight: 30, retries: 1", Fleet(300, 0.04)),
    (
        "max_failure_rate: 10%, max_failure_rate_by_type: {timed_out: 5%}, min_devices: 20, "
        "retries: 2, device_timeout: 40s, ack_timeout: 40s, rate: 5/s",
        Fleet(200, 0.05, latency_s=(5.0, 60.0)),
    ),
    ("max_failure_rate: 5%, confidence: 95%, retries: 1", Fleet(400, 0.03)),
    (
        "max_failure_rate: 20%, max_in_flight: 10, health: {soak: 1m, heartbeat: 30s}",
        Fleet(60, 0.1),
    ),
    (
        "max_failure_rate: 20%, rate: 10/s",
        Fleet(300, 0.02, strata=(Stratum("model", "TH-300", 0.5, share=0.1),)),
    ),
    (
        "max_failure_rate: 30%, by: [model], max_in_flight: 20, retries: 1",
        Fleet(200, 0.02, strata=(Stratum("model", "TH-300", 0.5, share=0.2),)),
    ),
]


@pytest.mark.parametrize(("policy", "fleet"), SHORTCUT_CASES)
def test_a_look_that_skips_decide_takes_decides_step(policy: str, fleet: Fleet) -> None:
    """Where no limit can be crossed and devices are left to send, the simulator asks the
    dispatch step directly instead of decide(); with check_steps it asks decide() too and
    fails on any difference, so the shortcut never changes what a run does."""
    waves = "[{devices: 10, bake: 1m}, {percent: 30}, {percent: 100}]"
    summary = simulate(plan(policy, waves), fleet, runs=40, seed=5, check_steps=True)
    assert summary == simulate(plan(policy, waves), fleet, runs=40, seed=5)
    assert summary.reached_mean > 10  # the runs went past the canary: the shortcut was taken


def _bound(p: float, runs: int) -> float:
    """Three standard errors of an estimated probability p from `runs` runs."""
    return 3 * math.sqrt(p * (1 - p) / runs)


# Fleets big enough for the test to decide at each limit; one wave, so every look is mid-wave
# but the last.
GUARANTEES = [(0.01, 1500), (0.05, 400), (0.2, 100)]


@pytest.mark.parametrize(("limit", "devices"), GUARANTEES)
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_the_guarantees_hold_over_every_look(limit: float, devices: int, confidence: float) -> None:
    """At half the limit a firmware is halted with probability at most 1 - C; at twice the
    limit it is stopped (halted or paused) with probability at least C, within three standard
    errors of the runs."""
    runs = 100
    gate = plan(f"max_failure_rate: {limit}, confidence: {confidence}")
    fine = simulate(gate, Fleet(devices, limit / 2), runs=runs, seed=1)
    assert fine.p_halt <= (1 - confidence) + _bound(1 - confidence, runs)
    bad = simulate(gate, Fleet(devices, 2 * limit), runs=runs, seed=2)
    stopped = bad.p_halt + bad.p_inconclusive_pause
    assert stopped >= confidence - _bound(confidence, runs)


def test_an_outcome_is_one_of_three() -> None:
    assert {o.value for o in Outcome} == {"halt", "complete", "inconclusive_pause"}


def test_a_fleet_over_the_maximum_is_refused_before_any_work() -> None:
    """A fleet the simulator cannot hold (a run keeps one entry a device) is a clear error at
    once, not a process that grows until it is killed."""
    with pytest.raises(ValueError, match="1 to 1,000,000 devices, got 99,999,999,999"):
        simulate(plan("max_failure_rate: 5%"), Fleet(99_999_999_999, 0.02), runs=1)
