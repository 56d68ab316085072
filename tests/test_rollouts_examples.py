"""Every example plan in rollouts/ is a valid plan (ARCHITECTURE §6)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.domain.plans import parse_plan

ROLLOUTS = Path(__file__).resolve().parent.parent / "rollouts"
EXAMPLES = sorted(ROLLOUTS.glob("*.yaml"))


def test_there_are_example_plans() -> None:
    assert EXAMPLES, f"no *.yaml in {ROLLOUTS}"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_each_example_plan_parses(path: Path) -> None:
    plan = parse_plan(path.read_text(encoding="utf-8"), str(path))
    assert plan.waves[-1].percent == 100


def test_the_examples_show_what_their_names_promise() -> None:
    plans = {path.stem: parse_plan(path.read_text(encoding="utf-8")) for path in EXAMPLES}
    canary = plans["canary"]
    assert canary.waves[0].devices == 10
    assert canary.waves[0].bake_s == 600
    assert [wave.percent for wave in canary.waves[1:]] == [10, 50, 100]
    assert canary.policy.on_failure == "halt"
    assert plans["rollback"].policy.on_failure == "rollback"
    assert plans["rollback"].policy.max_failure_rate_by_type
    assert plans["rollback"].rollback is not None
    manual = plans["manual-approval"]
    assert [wave.approval for wave in manual.waves if wave.percent == 50] == ["manual"]
