"""The failure policy's verdicts."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.domain import counters
from orchestrator.domain.plans import FailureType, PolicySpec
from orchestrator.domain.policy import (
    Tally,
    evidence_in_words,
    judge,
    judge_strata,
    may_cross_mid_wave,
)

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


# --- policy.confidence: a sequential test per limit ------------------------------------------

TESTED = PolicySpec(max_failure_rate=0.05, confidence=0.95)


def test_with_confidence_one_early_failure_does_not_halt() -> None:
    verdict = judge(Tally(failures={F.FAILED: 1}), TESTED, end_of_wave=False)
    assert verdict.judged
    assert not verdict.breached
    assert verdict.evidence is not None
    assert round(verdict.evidence.llr, 6) == 1.386294  # ln 4, short of ln 20


def test_with_confidence_mid_wave_halts_once_the_test_accepts_twice_the_limit() -> None:
    two = judge(Tally(failures={F.FAILED: 2}), TESTED, end_of_wave=False)
    three = judge(Tally(failures={F.FAILED: 3}), TESTED, end_of_wave=False)
    assert not two.breached
    assert three.breached
    assert three.reason == (
        "failure rate 100.0% (3 of 3 finished devices failed) is over max_failure_rate 5.0% at "
        "95% confidence: the test tells 10% from 2.5% (log-likelihood ratio 4.16; halts at "
        "3.00, passes at -3.00)"
    )


def test_with_confidence_mid_wave_never_pauses() -> None:
    verdict = judge(Tally(succeeded=18, failures={F.FAILED: 2}), TESTED, end_of_wave=False)
    assert not verdict.breached
    assert not verdict.inconclusive


def test_with_confidence_an_undecided_wave_end_over_the_limit_is_inconclusive() -> None:
    verdict = judge(Tally(succeeded=18, failures={F.FAILED: 2}), TESTED, end_of_wave=True)
    assert not verdict.breached
    assert verdict.inconclusive
    assert verdict.reason == (
        "2 of 20 finished devices failed (10.0%, over max_failure_rate 5.0%); the test cannot "
        "yet tell 2.5% from 10% at 95% (log-likelihood ratio 1.33; halts at 3.00, passes at "
        "-3.00)"
    )


def test_with_confidence_an_undecided_wave_end_within_the_limit_passes() -> None:
    verdict = judge(Tally(succeeded=19, failures={F.FAILED: 1}), TESTED, end_of_wave=True)
    assert not verdict.breached
    assert not verdict.inconclusive
    assert verdict.reason == (
        "failure rate 5.0% (1 of 20 finished devices) is within 5.0%; the test at 95% is still "
        "undecided (log-likelihood ratio -0.13; halts at 3.00, passes at -3.00)"
    )


def test_with_confidence_a_passed_test_says_so() -> None:
    verdict = judge(Tally(succeeded=38), TESTED, end_of_wave=True)
    assert not verdict.breached_or_inconclusive
    assert "the test at 95% passes" in verdict.reason


def test_with_confidence_per_type_limits_have_their_own_test() -> None:
    policy = PolicySpec(
        max_failure_rate=0.5, max_failure_rate_by_type={F.REJECTED: 0.02}, confidence=0.95
    )
    # 2 of 40 rejected: 5%, within 50% overall; p0 1%, p1 4% for rejections
    tally = Tally(succeeded=38, failures={F.REJECTED: 2})
    assert not judge(tally, policy, end_of_wave=False).breached
    end = judge(tally, policy, end_of_wave=True)
    assert end.inconclusive
    assert end.over_type is F.REJECTED
    assert end.reason.startswith(
        "2 of 40 finished devices rejected (5.0%, over max_failure_rate_by_type.rejected 2.0%)"
    )
    many = judge(Tally(succeeded=30, failures={F.REJECTED: 6}), policy, end_of_wave=False)
    assert many.breached
    assert many.over_type is F.REJECTED


def test_with_confidence_a_zero_limit_is_still_crossed_by_one_failure() -> None:
    policy = PolicySpec(max_failure_rate_by_type={F.WRONG_VERSION: 0.0}, confidence=0.95)
    tally = Tally(succeeded=99, failures={F.WRONG_VERSION: 1})
    verdict = judge(tally, policy, end_of_wave=False)
    assert verdict.breached
    assert verdict.over_type is F.WRONG_VERSION


def test_with_confidence_min_devices_still_holds_mid_wave() -> None:
    policy = PolicySpec(max_failure_rate=0.05, confidence=0.95, min_devices=10)
    verdict = judge(Tally(failures={F.FAILED: 5}), policy, end_of_wave=False)
    assert not verdict.judged


def test_the_evidence_in_words_for_a_rollout_s_view() -> None:
    assert evidence_in_words(PolicySpec(), 20, 2) is None
    assert evidence_in_words(TESTED, 20, 2) == (
        "undecided: the test cannot yet tell 2.5% from 10% at 95% (log-likelihood ratio 1.33; "
        "halts at 3.00, passes at -3.00)"
    )
    assert evidence_in_words(TESTED, 38, 0) == (
        "pass: the test tells 2.5% from 10% at 95% (log-likelihood ratio -3.04; halts at "
        "3.00, passes at -3.00)"
    )


_RATES = st.sampled_from([0.0, 0.001, 0.01, 0.02, 0.05, 0.1, 1 / 3, 0.5, 0.9, 1.0])


@settings(max_examples=400, deadline=None)
@given(
    overall=_RATES,
    typed=st.dictionaries(st.sampled_from(list(F)), _RATES, max_size=3),
    confidence=st.sampled_from([None, 0.9, 0.95, 0.99]),
    min_devices=st.integers(1, 30),
    succeeded=st.integers(0, 400),
    failures=st.dictionaries(st.sampled_from(list(F)), st.integers(1, 120), max_size=4),
)
def test_the_quick_mid_wave_check_agrees_with_the_verdict(
    overall: float,
    typed: dict[FailureType, float],
    confidence: float | None,
    min_devices: int,
    succeeded: int,
    failures: dict[FailureType, int],
) -> None:
    policy = PolicySpec(
        max_failure_rate=overall,
        max_failure_rate_by_type=typed,
        confidence=confidence,
        min_devices=min_devices,
    )
    tally = Tally(succeeded=succeeded, failures=failures)
    verdict = judge(tally, policy, end_of_wave=False)
    assert may_cross_mid_wave(tally, policy) == verdict.breached
