"""Wald's sequential probability ratio test on a failure rate, for `policy.confidence`.

A gate with a limit L and a confidence C asks, after every result, which of two failure rates
the results so far speak for: p0 = L/2 (a firmware that is fine) or p1 = 2·L (one that is not;
halfway between L and 100% when that is nearer, for limits over a third). With n finished
devices of which f failed, the evidence is the log-likelihood ratio

    llr = f·ln(p1/p0) + (n - f)·ln((1 - p1)/(1 - p0))

and the test halts once llr ≥ ln(1/(1 - C)) (it accepts p1) and passes once llr ≤ ln(1 - C)
(it accepts p0). The likelihood ratio is a martingale under p0 (a supermartingale below it),
so by Ville's inequality the chance that it ever reaches 1/(1 - C), over every look however
many, is at most 1 - C; the same holds for 1/ratio under p1 (and above it). Those two bounds
are the gate's guarantees: a firmware failing at p0 or less is halted with probability at most
1 - C, and one failing at p1 or more is passed with probability at most 1 - C.
docs/plans.md, "Confidence", works an example through.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from enum import StrEnum


class Decision(StrEnum):
    """What the test says so far."""

    HALT = "halt"  # accepts p1: the failure rate is too high
    PASS = "pass"  # noqa: S105 (a decision, not a password): accepts p0, the rate is fine
    UNDECIDED = "undecided"  # not enough results to tell p0 from p1 yet


@dataclass(frozen=True, slots=True)
class Evidence:
    """Where one test stands: the log-likelihood ratio, its bounds and the decision."""

    llr: float
    halt_at: float
    pass_at: float
    p0: float
    p1: float
    confidence: float
    decision: Decision

    def as_figures(self) -> dict[str, float | str]:
        """The evidence for an audit event's details (rounded for people)."""
        return {
            "llr": round(self.llr, 3),
            "halt_at": round(self.halt_at, 3),
            "pass_at": round(self.pass_at, 3),
            "p0": self.p0,
            "p1": self.p1,
            "confidence": self.confidence,
            "decision": self.decision.value,
        }

    def in_words(self) -> str:
        """`log-likelihood ratio 1.33; halts at 3.00, passes at -3.00`."""
        return (
            f"log-likelihood ratio {self.llr:.2f}; halts at {self.halt_at:.2f}, "
            f"passes at {self.pass_at:.2f}"
        )


@dataclass(frozen=True, slots=True)
class Sprt:
    """The test for one limit at one confidence (build it with `sprt_for`)."""

    limit: float
    confidence: float
    p0: float
    p1: float
    per_failure: float  # ln(p1/p0): what one failure adds to the ratio
    per_success: float  # ln((1 - p1)/(1 - p0)), negative: what one success adds
    halt_at: float  # ln(1/(1 - C))
    pass_at: float  # ln(1 - C)

    def llr(self, finished: int, failed: int) -> float:
        """The log-likelihood ratio of p1 against p0 after `failed` of `finished` failed."""
        return failed * self.per_failure + (finished - failed) * self.per_success

    def decision(self, finished: int, failed: int) -> Decision:
        """HALT, PASS or UNDECIDED after `failed` of `finished` failed."""
        llr = self.llr(finished, failed)
        if llr >= self.halt_at:
            return Decision.HALT
        if llr <= self.pass_at:
            return Decision.PASS
        return Decision.UNDECIDED

    def evidence(self, finished: int, failed: int) -> Evidence:
        """The evidence after `failed` of `finished` failed."""
        llr = self.llr(finished, failed)
        decision = self.decision(finished, failed)
        return Evidence(
            llr, self.halt_at, self.pass_at, self.p0, self.p1, self.confidence, decision
        )

    def failures_to_halt(self, finished: int) -> int:
        """The fewest failures among `finished` devices that halt (finished + 1: none can)."""
        span = self.per_failure - self.per_success
        guess = max(0, math.ceil((self.halt_at - finished * self.per_success) / span) - 1)
        while guess <= finished and self.llr(finished, guess) < self.halt_at:
            guess += 1
        return min(guess, finished + 1)


def applies(limit: float) -> bool:
    """Whether a limit can be tested: 0% and 100% are plain (any failure / never over)."""
    return 0 < limit < 1


def hypotheses(limit: float) -> tuple[float, float]:
    """(p0, p1) for a limit: half of it, and twice it (or halfway to 100% when nearer)."""
    return limit / 2, min(2 * limit, (1 + limit) / 2)


@functools.cache
def sprt_for(limit: float, confidence: float) -> Sprt:
    """The test of `limit` at `confidence` (0 < limit < 1, 0.5 <= confidence < 1)."""
    if not applies(limit):
        raise ValueError(f"a sequential test needs a limit between 0% and 100%, got {limit}")
    p0, p1 = hypotheses(limit)
    alpha = 1 - confidence
    return Sprt(
        limit=limit,
        confidence=confidence,
        p0=p0,
        p1=p1,
        per_failure=math.log(p1 / p0),
        per_success=math.log((1 - p1) / (1 - p0)),
        halt_at=-math.log(alpha),
        pass_at=math.log(alpha),
    )


def pct(rate: float) -> str:
    """`0.025` as `2.5%`, `0.1` as `10%`: a rate as people write it."""
    return f"{rate * 100:.4g}%"
