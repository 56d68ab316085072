"""Wald's sequential test on a failure rate, against sequences worked out by hand.

Limit 5% at 95%: p0 = 2.5%, p1 = 10%; a failure adds ln(0.1/0.025) = ln 4 = 1.386294, a
success adds ln(0.9/0.975) = -0.080043; the test halts at ln 20 = 2.995732 and passes at
-2.995732.
"""

from __future__ import annotations

import math

import pytest

from orchestrator.domain.sprt import Decision, applies, hypotheses, pct, sprt_for

FIVE = sprt_for(0.05, 0.95)


def test_the_hypotheses_are_half_and_twice_the_limit() -> None:
    assert (FIVE.p0, FIVE.p1) == (0.025, 0.1)
    assert FIVE.per_failure == pytest.approx(1.386294, abs=1e-6)
    assert FIVE.per_success == pytest.approx(-0.080043, abs=1e-6)
    assert FIVE.halt_at == pytest.approx(2.995732, abs=1e-6)
    assert FIVE.pass_at == pytest.approx(-2.995732, abs=1e-6)


def test_above_a_third_the_alternative_is_halfway_to_certain_failure() -> None:
    assert hypotheses(0.2) == (0.1, 0.4)
    assert hypotheses(0.4)[1] == pytest.approx(0.7)


@pytest.mark.parametrize(
    ("finished", "failed", "llr", "decision"),
    [
        (0, 0, 0.0, Decision.UNDECIDED),
        (2, 2, 2.772589, Decision.UNDECIDED),  # two failures in a row are not yet enough
        (3, 3, 4.158883, Decision.HALT),
        (20, 2, 1.331822, Decision.UNDECIDED),  # 10% observed: cannot tell 2.5% from 10%
        (20, 3, 2.798157, Decision.UNDECIDED),
        (20, 4, 4.264494, Decision.HALT),
        (37, 0, -2.961580, Decision.UNDECIDED),
        (38, 0, -3.041623, Decision.PASS),  # 38 successes pass a 5% limit at 95%
        (56, 1, -3.016054, Decision.PASS),
    ],
)
def test_decisions_on_hand_computed_tallies(
    finished: int, failed: int, llr: float, decision: Decision
) -> None:
    assert FIVE.llr(finished, failed) == pytest.approx(llr, abs=1e-5)
    assert FIVE.decision(finished, failed) is decision


def test_a_sequence_halts_at_the_result_that_crosses_the_bound() -> None:
    """F S S F F: 1.386, 1.306, 1.226, 2.612, 3.999: halted at the fifth result."""
    failed = 0
    seen = []
    for finished, result in enumerate("FSSFF", 1):
        failed += result == "F"
        seen.append(FIVE.decision(finished, failed))
    assert seen == [Decision.UNDECIDED] * 4 + [Decision.HALT]
    assert FIVE.llr(5, 3) == pytest.approx(3 * math.log(4) + 2 * math.log(0.9 / 0.975))


def test_twenty_percent_at_ninety() -> None:
    """p0 10%, p1 40%: ln 4 per failure, ln(0.6/0.9) per success, bounds ±ln 10."""
    test = sprt_for(0.2, 0.9)
    assert test.decision(1, 1) is Decision.UNDECIDED  # 1.386 < 2.303
    assert test.decision(2, 2) is Decision.HALT  # 2.773
    assert test.decision(5, 0) is Decision.UNDECIDED  # -2.027
    assert test.decision(6, 0) is Decision.PASS  # -2.433


def test_a_higher_confidence_needs_more_results() -> None:
    strict = sprt_for(0.05, 0.99)  # bounds ±ln 100 = ±4.605
    assert strict.decision(3, 3) is Decision.UNDECIDED
    assert strict.decision(4, 4) is Decision.HALT
    assert strict.decision(57, 0) is Decision.UNDECIDED
    assert strict.decision(58, 0) is Decision.PASS


@pytest.mark.parametrize("limit", [0.01, 0.05, 0.2, 0.4])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_failures_to_halt_is_the_fewest_that_halt(limit: float, confidence: float) -> None:
    test = sprt_for(limit, confidence)
    for finished in range(300):
        least = test.failures_to_halt(finished)
        if least <= finished:
            assert test.decision(finished, least) is Decision.HALT
        if least > 0:
            assert test.decision(finished, least - 1) is not Decision.HALT


def test_the_evidence_in_words_and_figures() -> None:
    evidence = FIVE.evidence(20, 2)
    assert evidence.in_words() == "log-likelihood ratio 1.33; halts at 3.00, passes at -3.00"
    assert evidence.as_figures() == {
        "llr": 1.332,
        "halt_at": 2.996,
        "pass_at": -2.996,
        "p0": 0.025,
        "p1": 0.1,
        "confidence": 0.95,
        "decision": "undecided",
    }


def test_limits_of_0_and_100_percent_have_no_test() -> None:
    assert not applies(0.0)
    assert not applies(1.0)
    with pytest.raises(ValueError, match="between 0% and 100%"):
        sprt_for(0.0, 0.95)


def test_rates_read_as_people_write_them() -> None:
    assert [pct(r) for r in (0.025, 0.1, 0.95, 0.005)] == ["2.5%", "10%", "95%", "0.5%"]
