"""Every example plan in rollouts/ is a valid plan (ARCHITECTURE §6)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.domain.hooks import parse_template
from orchestrator.domain.hooks import render as render_template
from orchestrator.domain.plans import PlanError, parse_plan

ROLLOUTS = Path(__file__).resolve().parent.parent / "rollouts"
# plan templates of webhook-triggered deploys (ARCHITECTURE §8): plans once ${version} and
# ${file} are filled in from a release, so they are checked rendered, below
TEMPLATES = sorted(ROLLOUTS.glob("*-template.yaml"))
EXAMPLES = sorted(set(ROLLOUTS.glob("*.yaml")) - set(TEMPLATES))


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
    confident = plans["canary-confidence"]
    assert confident.policy.confidence == 0.95
    assert confident.waves == canary.waves
    assert confident.policy.model_copy(update={"confidence": None}) == canary.policy
    manual = plans["manual-approval"]
    assert [wave.approval for wave in manual.waves if wave.percent == 50] == ["manual"]
    strata = plans["strata"]
    assert strata.policy.by == ["model", "tag:hw-"]
    assert strata.target.versions == ["2.1.0", "2.1.1"]
    for soaked in (plans["health-soak"], plans["demo-health"]):
        assert soaked.policy.health is not None
        assert soaked.firmware.version  # a revert is a report of another version
    assert plans["health-soak"].policy.health is not None
    assert plans["health-soak"].policy.health.soak_s == 1800
    assert set(plans["health-soak"].policy.max_failure_rate_by_type) == {"reverted", "unhealthy"}


RELEASE = {"version": "2.1.0", "file": "fw_2.1.0.bin"}
WEBHOOK_TEMPLATE = ROLLOUTS / "webhook-template.yaml"


def render(path: Path, release: dict[str, str]) -> str:
    """The template with ${version} and ${file} filled in, as the hook route fills it in."""
    text = path.read_text(encoding="utf-8")
    parse_template(text, str(path))  # what registering the hook checks
    return render_template(text, release)


def test_every_file_in_rollouts_is_checked_as_a_plan_or_a_template() -> None:
    assert set(ROLLOUTS.glob("*.yaml")) == set(EXAMPLES) | set(TEMPLATES)
    assert WEBHOOK_TEMPLATE in TEMPLATES


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda path: path.name)
def test_each_template_parses_once_a_release_fills_it_in(path: Path) -> None:
    plan = parse_plan(render(path, RELEASE), str(path))
    assert plan.firmware.file == "fw_2.1.0.bin"
    assert plan.firmware.version == "2.1.0"
    assert plan.waves[-1].percent == 100


@pytest.mark.parametrize("version", ["2.1.0", "2.10", "3"])
def test_the_webhook_templates_version_becomes_the_plans_firmware_version(version: str) -> None:
    """Whatever the release's version looks like, the plan expects it as written."""
    release = {"version": version, "file": f"fw_{version}.bin"}
    plan = parse_plan(render(WEBHOOK_TEMPLATE, release), str(WEBHOOK_TEMPLATE))
    assert plan.firmware.version == version
    assert plan.name == f"thermostat-{version}"


def test_the_webhook_template_is_refused_before_it_is_filled_in() -> None:
    """The placeholders are not a plan's values: the parser names each where it is written."""
    text = WEBHOOK_TEMPLATE.read_text(encoding="utf-8")
    with pytest.raises(PlanError) as caught:
        parse_plan(text, str(WEBHOOK_TEMPLATE))
    problems = caught.value.problems
    assert [problem.path for problem in problems] == ["name", "firmware.file"]
    lines = text.splitlines()
    for problem in problems:
        assert problem.source == str(WEBHOOK_TEMPLATE)
        assert lines[problem.line - 1][problem.column - 1 :].startswith(
            ("thermostat-${version}", "${file}")
        )
