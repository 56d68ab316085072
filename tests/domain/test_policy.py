"""The failure policy's verdicts."""

from __future__ import annotations

from orchestrator.domain import counters
from orchestrator.domain.plans import FailureType, PolicySpec
from orchestrator.domain.policy import Tally, judge, judge_strata

F = FailureType


def test_mid_wave_nothing_is_judged_before_min_devices_finish() -> None:
    policy = PolicySpec(max_failure_rate=0.05, min_devices=20)
    verdict = judge(Tally(succeeded=5, failures={F.FAILED: 5}), policy, end_of_wave=False)
    assert not verdict.breached
    assert not verdict.judged
    assert verdict.reason == "10 of min_devices 20 finished; not judged yet"


def test_end_of_wave_is_always_judged() -> None:
    policy = PolicySpec(max_failure_rate=0.05, min_devices=20)
    verdict = judge(Tally(succeeded=5, failures={F.FAILED: 5}), policy, end_of_wave=True)
    assert verdict.breached
    assert verdict.failure_rate == 0.5
    assert verdict.reason == (
        "failure rate 50.0% (5 of 10 finished devices) is over max_failure_rate 5.0%"
    )


def test_a_rate_equal_to_the_limit_is_not_over_it() -> None:
    policy = PolicySpec(max_failure_rate=0.1, min_devices=1)
    verdict = judge(Tally(succeeded=9, failures={F.FAILED: 1}), policy, end_of_wave=False)
    assert verdict.judged
    assert not verdict.breached


def test_per_type_limits_catch_what_the_overall_limit_lets_through() -> None:
    policy = PolicySpec(
        max_failure_rate=0.2, max_failure_rate_by_type={F.TIMED_OUT: 0.05}, min_devices=1
    )
    tally = Tally(succeeded=90, failures={F.TIMED_OUT: 10})
    verdict = judge(tally, policy, end_of_wave=False)
    assert verdict.breached
    assert verdict.reason == (
        "timed_out rate 10.0% (10 of 100 finished devices) is over "
        "max_failure_rate_by_type.timed_out 5.0%"
    )


def test_wrong_versions_count_as_failures() -> None:
    tally = Tally(succeeded=3, failures={F.WRONG_VERSION: 1})
    assert tally.finished == 4
    assert tally.failure_rate == 0.25


def test_nothing_finished_is_a_zero_rate() -> None:
    verdict = judge(Tally(), PolicySpec(max_failure_rate=0.0), end_of_wave=True)
    assert verdict.failure_rate == 0.0
    assert not verdict.breached


def test_each_stratum_is_judged_with_the_same_limits_and_the_worst_is_named() -> None:
    tallies = counters.strata_tallies(
        {
            counters.in_stratum("model=A", "succeeded"): 9,
            counters.stratum_failures("model=A", "failed"): 1,
            counters.in_stratum("model=B", "succeeded"): 1,
            counters.stratum_failures("model=B", "timed_out"): 3,
            counters.stratum_failures("model=C", "failed"): 1,
            counters.base(counters.stratum_failures("model=C", "failed")): 1,
        }
    )
    assert tallies == {
        "model=A": Tally(9, {FailureType.FAILED: 1}),
        "model=B": Tally(1, {FailureType.TIMED_OUT: 3}),
    }
    policy = PolicySpec(max_failure_rate=0.2, min_devices=5)
    assert judge_strata(tallies, policy, end_of_wave=False) is None  # B: 4 of min_devices 5
    found = judge_strata(tallies, policy, end_of_wave=True)
    assert found is not None
    label, verdict = found
    assert label == "model=B"
    assert verdict.reason == (
        "failure rate 75.0% (3 of 4 finished devices) is over max_failure_rate 20.0%"
    )
