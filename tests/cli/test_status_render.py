"""`ota status` draws a rollout: with policy.confidence, the test's evidence under the rate."""

from __future__ import annotations

from rich.console import Console

from orchestrator.api.rollout_schemas import FirmwareOut, RolloutOut, WaveOut
from orchestrator.cli.progress import render


def view(evidence: str | None) -> RolloutOut:
    return RolloutOut(
        id="r1",
        name="fw-2.1.0",
        state="waiting_approval",
        reason="wave canary: 2 of 20 finished devices failed (10.0%, over max_failure_rate 5.0%)",
        wave="canary",
        wave_index=0,
        waves=[WaveOut(name="canary", target=20, counts={"succeeded": 18, "failed": 2})],
        counts={"succeeded": 18, "failed": 2, "pending": 20},
        failure_rate=0.1,
        max_failure_rate=0.05,
        evidence=evidence,
        created_at="2026-12-07T00:00:00Z",
        updated_at="2026-12-07T00:00:00Z",
        created_by="ci",
        firmware=FirmwareOut(file="fw.bin", version="2.1.0"),
        rollback=None,
        total=40,
        actions=["promote", "abort"],
    )


def shown(rollout: RolloutOut) -> str:
    console = Console(width=200, record=True)
    console.print(render(rollout))
    return console.export_text()


def test_the_evidence_is_shown_under_the_failure_rate() -> None:
    evidence = (
        "undecided: the test cannot yet tell 2.5% from 10% at 95% (log-likelihood ratio 1.33; "
        "halts at 3.00, passes at -3.00)"
    )
    lines = shown(view(evidence)).splitlines()
    rate = next(i for i, line in enumerate(lines) if line.startswith("failure rate 10.0%"))
    assert lines[rate + 1] == f"sequential test {evidence}"


def test_without_confidence_there_is_no_evidence_line() -> None:
    assert "sequential test" not in shown(view(None))
