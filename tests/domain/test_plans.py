"""Rollout plans: the §6 YAML contract, its rules, and errors located at file:line:column."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from orchestrator.domain.plan_values import (
    format_duration,
    parse_duration,
    parse_failure_rate,
    parse_percent,
    parse_rate,
)
from orchestrator.domain.plans import (
    FailureType,
    FirmwareSpec,
    Plan,
    PlanError,
    PlanProblem,
    PolicySpec,
    RollbackSpec,
    TargetSpec,
    WaveSpec,
    parse_plan,
    plan_json_schema,
    shown_plan,
    stored_plan,
)
from orchestrator.errors import InvalidInput

# ARCHITECTURE §6, verbatim
SECTION_6_EXAMPLE = """\
name: thermostat-2.1.0            # required; unique among the project's active rollouts
firmware:
  file: firmware_v2.1.0.bin       # required; an uploaded firmware file of the project
  version: 2.1.0                  # optional; a success reporting another version is a failure
target:                           # all criteria must hold (AND); no target = every mqtt device
  tags: [thermostat, eu]          # the device has every one of these tags
  brand: Acme
  model: TH-200
  devices: [dev-1, dev-2]         # explicit ids (still ANDed with the rest)
  exclude: [dev-9]
waves:                            # cumulative coverage of the target, in order
  - name: canary
    devices: 10                   # reach 10 devices in total
    bake: 10m                     # after the wave's last final result, wait, then judge
  - percent: 10                   # reach 10% of the target in total
  - percent: 50
    approval: manual              # wait for `ota promote` before this wave starts
  - percent: 100                  # the last wave must reach 100%
policy:
  max_failure_rate: 5%            # "5%" or 0.05
  max_failure_rate_by_type:       # optional extra limits per failure type
    timed_out: 10%
  min_devices: 20                 # finished devices needed before judging mid-wave
  ack_timeout: 10m                # no result and no download by then = timed_out
  device_timeout: 30m             # not final by then = timed_out
  retries: 1                      # re-send to failed/timed_out devices (counted per device)
  rate: 20/s                      # commands per second at most ("/s", "/m")
  max_in_flight: 200              # devices sent but not final, at most
  on_failure: rollback            # halt | rollback
rollback:                         # required when on_failure is rollback
  file: firmware_v2.0.3.bin
  version: 2.0.3
"""

# Line numbers matter below: the waves start on line 4, the second wave on line 8.
SMALL = """\
name: demo
firmware:
  file: fw_v2.bin
waves:
  - name: canary
    devices: 10
    bake: 10m
  - percent: 100
"""


def problems(text: str) -> list[str]:
    """Every problem parse_plan reports for `text`, as printed lines."""
    with pytest.raises(PlanError) as caught:
        parse_plan(text, "rollout.yaml")
    return [str(problem) for problem in caught.value.problems]


def only_problem(text: str) -> str:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


def small_with(old: str, new: str) -> str:
    assert old in SMALL
    return SMALL.replace(old, new, 1)


# -- the §6 example ------------------------------------------------------------------------------


def test_the_section_6_example_parses_to_the_expected_plan() -> None:
    expected = Plan(
        name="thermostat-2.1.0",
        firmware=FirmwareSpec(file="firmware_v2.1.0.bin", version="2.1.0"),
        target=TargetSpec(
            tags=["thermostat", "eu"],
            brand="Acme",
            model="TH-200",
            devices=["dev-1", "dev-2"],
            exclude=["dev-9"],
        ),
        waves=[
            WaveSpec(name="canary", devices=10, bake_s=600),
            WaveSpec(name="wave-2", percent=10),
            WaveSpec(name="wave-3", percent=50, approval="manual"),
            WaveSpec(name="wave-4", percent=100),
        ],
        policy=PolicySpec(
            max_failure_rate=0.05,
            max_failure_rate_by_type={FailureType.TIMED_OUT: 0.1},
            min_devices=20,
            ack_timeout_s=600,
            device_timeout_s=1800,
            retries=1,
            rate_per_s=20,
            max_in_flight=200,
            on_failure="rollback",
        ),
        rollback=RollbackSpec(file="firmware_v2.0.3.bin", version="2.0.3"),
    )
    assert parse_plan(SECTION_6_EXAMPLE, "rollout.yaml") == expected


def test_a_plan_needs_only_a_name_firmware_and_waves_and_gets_the_defaults() -> None:
    plan = parse_plan("name: x\nfirmware: {file: a.bin}\nwaves: [{percent: 100}]\n")
    assert plan.target == TargetSpec()
    assert plan.policy == PolicySpec()
    assert plan.policy.max_failure_rate == 0.05
    assert plan.policy.ack_timeout_s == 600
    assert plan.policy.device_timeout_s == 1800
    assert plan.policy.on_failure == "halt"
    assert plan.rollback is None
    assert plan.waves == [WaveSpec(name="wave-1", percent=100)]


def test_unnamed_waves_are_named_wave_n_counting_from_1() -> None:
    plan = parse_plan(SMALL.replace("  - percent: 100", "  - percent: 50\n  - percent: 100"))
    assert [wave.name for wave in plan.waves] == ["canary", "wave-2", "wave-3"]


def test_a_plan_round_trips_through_its_json_dump() -> None:
    plan = parse_plan(SECTION_6_EXAMPLE)
    dumped = json.dumps(plan.model_dump(mode="json", by_alias=True))
    assert parse_plan(dumped) == plan


def test_json_input_works_and_its_errors_are_located_too() -> None:
    data = yaml.safe_load(SECTION_6_EXAMPLE)
    assert parse_plan(json.dumps(data, indent=2)) == parse_plan(SECTION_6_EXAMPLE)
    data["waves"][1]["percent"] = 120
    text = json.dumps(data, indent=2)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "120" in row)
    assert only_problem(text).startswith(f"rollout.yaml:{line}:")


def test_plain_numbers_where_text_is_meant_are_kept_as_written() -> None:
    text = SMALL.replace("  file: fw_v2.bin", "  file: fw_v2.bin\n  version: 2.10")
    text = text.replace("name: demo", "name: 2024")
    plan = parse_plan(text + "target:\n  model: 200\n  devices: [1001, 1002]\n")
    assert plan.firmware.version == "2.10"
    assert plan.name == "2024"
    assert plan.target.model == "200"
    assert plan.target.devices == ["1001", "1002"]


# -- located messages ----------------------------------------------------------------------------


def test_an_out_of_range_percent_names_file_line_column_value_and_range() -> None:
    text = small_with("  - percent: 100", "  - percent: 50\n  - percent: 120")
    assert only_problem(text) == (
        "rollout.yaml:9:14: waves[2].percent must be between 0 and 100, got 120"
    )


def test_an_unknown_key_points_at_the_key_and_suggests_the_right_one() -> None:
    text = small_with("    bake: 10m", "    bake_time: 10m")
    assert only_problem(text) == (
        "rollout.yaml:7:5: unknown key 'bake_time' in waves[0]; did you mean 'bake'?"
    )


def test_an_unknown_key_with_no_close_match_lists_the_keys() -> None:
    message = only_problem(SMALL + "colour: blue\n")
    assert message.startswith("rollout.yaml:9:1: unknown key 'colour' in the plan; use one of ")
    assert "name, firmware, target, waves, policy, rollback" in message


def test_an_unknown_failure_type_suggests_the_right_one() -> None:
    text = SMALL + "policy:\n  max_failure_rate_by_type:\n    timeout: 10%\n"
    assert only_problem(text) == (
        "rollout.yaml:11:5: unknown key 'timeout' in policy.max_failure_rate_by_type; "
        "did you mean 'timed_out'?"
    )


def test_a_missing_key_points_at_the_mapping_that_lacks_it() -> None:
    text = "name: demo\nfirmware:\n  version: '2'\nwaves: [{percent: 100}]\n"
    assert only_problem(text) == "rollout.yaml:3:3: firmware is missing the required key 'file'"
    assert only_problem("name: demo\nwaves: [{percent: 100}]\n") == (
        "rollout.yaml:1:1: the plan is missing the required key 'firmware'"
    )


def test_a_bad_failure_rate_names_both_accepted_forms() -> None:
    text = SMALL + "policy:\n  max_failure_rate: lots\n"
    assert only_problem(text) == (
        "rollout.yaml:10:21: policy.max_failure_rate must be a percentage like 5% or a "
        "fraction like 0.05, got 'lots'"
    )


def test_a_bad_duration_names_the_accepted_forms() -> None:
    message = only_problem(small_with("bake: 10m", "bake: soon"))
    assert message.startswith("rollout.yaml:7:11: waves[0].bake must be a duration like 30s, ")
    assert "1h30m" in message
    assert "500ms" in message
    assert message.endswith("got 'soon'")


def test_a_wrong_literal_names_the_choices_and_suggests_one() -> None:
    text = SMALL + "policy:\n  on_failure: Rollback\n"
    assert only_problem(text) == (
        "rollout.yaml:10:15: policy.on_failure must be 'halt' or 'rollback', got 'Rollback'; "
        "did you mean 'rollback'?"
    )


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("retries: 11", "policy.retries must be at most 10, got 11"),
        ("min_devices: 0", "policy.min_devices must be at least 1, got 0"),
        ("min_devices: '3'", "policy.min_devices must be a whole number, got '3'"),
        ("max_in_flight: true", "policy.max_in_flight must be a whole number, got true"),
        ("rate: 0/s", "policy.rate must be more than 0, got '0/s'"),
        ("ack_timeout: 0s", "policy.ack_timeout must be longer than 0s, got '0s'"),
    ],
)
def test_bad_policy_numbers_say_what_is_allowed(policy: str, expected: str) -> None:
    value_column = len("  ") + policy.index(":") + len(": ") + 1
    assert only_problem(f"{SMALL}policy:\n  {policy}\n") == (
        f"rollout.yaml:10:{value_column}: {expected}"
    )


HUGE_HEX = "0x" + "f" * 400  # 482 decimal digits
HUGER_HEX = "0x" + "f" * 4000  # more decimal digits than Python will print


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("ack_timeout: 1.0e+306", "policy.ack_timeout must be at most 168h (7 days), got 1e+306s"),
        ("ack_timeout: 604801", "policy.ack_timeout must be at most 168h (7 days), got 604801s"),
        ("device_timeout: 169h", "policy.device_timeout must be at most 168h (7 days), got '169h'"),
        (
            f"min_devices: {HUGE_HEX}",
            "policy.min_devices must be at most 10000000, got a number of 482 digits",
        ),
        ("max_in_flight: 10000001", "policy.max_in_flight must be at most 10000000, got 10000001"),
        ("rate: 10001/s", "policy.rate must be at most 10000/s, got '10001/s'"),
        ("rate: 600060/m", "policy.rate must be at most 10000/s, got '600060/m'"),
        ("rate: 1.0e+300", "policy.rate must be at most 10000/s, got 1e+300"),
        (
            f"retries: {HUGER_HEX}",
            "policy.retries must be at most 10, got a number of more than 4300 digits",
        ),
        (
            f"min_devices: -{HUGER_HEX}",
            "policy.min_devices must be at least 1, got a negative number of more than 4300 digits",
        ),
        (
            f"ack_timeout: -{HUGE_HEX}",
            "policy.ack_timeout must be a duration of 0s or more, got a negative number of 482 "
            "digits",
        ),
    ],
)
def test_numbers_and_durations_over_their_maximum_are_refused_naming_it(
    policy: str, expected: str
) -> None:
    value_column = len("  ") + policy.index(":") + len(": ") + 1
    assert only_problem(f"{SMALL}policy:\n  {policy}\n") == (
        f"rollout.yaml:10:{value_column}: {expected}"
    )


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "bake: 10m",
            "bake: 200h",
            "rollout.yaml:7:11: waves[0].bake must be at most 168h (7 days), got '200h'",
        ),
        (
            "devices: 10",
            f"devices: {HUGE_HEX}",
            "rollout.yaml:6:14: waves[0].devices must be at most 10000000, got a number of 482 "
            "digits",
        ),
    ],
)
def test_wave_numbers_over_their_maximum_are_refused_naming_it(
    old: str, new: str, expected: str
) -> None:
    assert only_problem(small_with(old, new)) == expected


def test_values_at_their_maximum_are_accepted() -> None:
    plan = parse_plan(
        small_with("devices: 10", "devices: 10000000").replace("bake: 10m", "bake: 168h")
        + "policy:\n  ack_timeout: 168h\n  device_timeout: 604800\n  rate: 600000/m\n"
        "  min_devices: 10000000\n  max_in_flight: 10000000\n  retries: 10\n"
    )
    assert plan.waves[0].devices == plan.policy.min_devices == plan.policy.max_in_flight
    assert plan.waves[0].bake_s == plan.policy.ack_timeout_s == plan.policy.device_timeout_s
    assert plan.policy.rate_per_s == 10_000


def test_a_number_too_long_for_python_to_read_is_refused_without_echoing_it() -> None:
    problem = only_problem(f"{SMALL}policy:\n  min_devices: {'9' * 5000}\n")
    assert problem.startswith("rollout.yaml:10:16: invalid YAML: cannot read '999")
    assert problem.endswith("a number of this many digits is more than any value needs")
    assert len(problem) < 200


STORED_PLAN: dict[str, Any] = {
    "name": "stored",
    "firmware": {"file": "fw.bin"},
    "waves": [{"percent": 100}],
    "policy": {"ack_timeout": 1e306, "device_timeout": 1e306},
}


def test_a_stored_plan_over_a_maximum_is_refused_with_what_no_longer_holds() -> None:
    with pytest.raises(PlanError) as caught:
        stored_plan(STORED_PLAN)
    assert str(caught.value).splitlines() == [
        "stored plan: policy.ack_timeout must be at most 168h (7 days), got 1e+306s",
        "stored plan: policy.device_timeout must be at most 168h (7 days), got 1e+306s",
    ]
    assert caught.value.errors[0]["loc"] == "policy.ack_timeout"


def test_a_stored_plan_over_a_maximum_can_still_be_shown_as_it_was_accepted() -> None:
    plan = stored_plan(STORED_PLAN, as_accepted=True)
    assert plan.policy.ack_timeout_s == 1e306
    with pytest.raises(PlanError, match="must be a mapping"):
        stored_plan(["not", "a", "plan"], as_accepted=True)


def test_a_plan_shown_leaves_its_target_out_and_takes_it_as_accepted() -> None:
    data = {**STORED_PLAN, "target": {"devices": [f"d{n}" for n in range(1000)], "tags": ["x"]}}
    plan = shown_plan(data)
    assert plan.target == TargetSpec()
    assert plan.policy.ack_timeout_s == 1e306
    assert plan.waves == stored_plan(data, as_accepted=True).waves


def test_several_problems_are_all_reported_in_text_order() -> None:
    text = small_with("    bake: 10m", "    bake: soon").replace("name: demo", "name: -x")
    found = problems(text + "policy:\n  retries: 99\n")
    assert [line.split(": ")[0] for line in found] == [
        "rollout.yaml:1:7",
        "rollout.yaml:7:11",
        "rollout.yaml:10:12",
    ]


def test_plan_error_is_invalid_input_with_one_line_per_problem_and_api_errors() -> None:
    with pytest.raises(PlanError) as caught:
        parse_plan(small_with("  - percent: 100", "  - percent: 120"), "rollout.yaml")
    error = caught.value
    assert isinstance(error, InvalidInput)
    assert isinstance(error, ValueError)
    assert error.message == "rollout.yaml:8:14: waves[1].percent must be between 0 and 100, got 120"
    assert error.errors == [
        {
            "loc": "8:14 waves[1].percent",
            "msg": "waves[1].percent must be between 0 and 100, got 120",
        }
    ]
    assert error.problems == [
        PlanProblem(
            "rollout.yaml",
            8,
            14,
            "waves[1].percent",
            "waves[1].percent must be between 0 and 100, got 120",
        )
    ]


# -- cross-field rules ---------------------------------------------------------------------------


def test_the_last_wave_must_be_percent_100() -> None:
    assert only_problem(small_with("percent: 100", "percent: 90")) == (
        "rollout.yaml:8:14: waves[1].percent must be 100 in the last wave, so that the rollout "
        "reaches the whole target; got 90"
    )
    message = only_problem(small_with("  - percent: 100", "  - devices: 20"))
    assert message.startswith("rollout.yaml:8:14: waves[1].devices cannot end the plan")


def test_percents_must_not_decrease_and_the_message_names_both_waves() -> None:
    text = small_with("  - percent: 100", "  - percent: 50\n  - percent: 20\n  - percent: 100")
    assert only_problem(text) == (
        "rollout.yaml:9:14: waves[2].percent is 20 but waves[1].percent (line 8, column 14) "
        "already reached 50%; "
        "waves are cumulative, so percent must not decrease"
    )


def test_device_counts_must_not_decrease() -> None:
    text = small_with("  - percent: 100", "  - devices: 5\n  - percent: 100")
    assert only_problem(text) == (
        "rollout.yaml:8:14: waves[1].devices is 5 but waves[0].devices (line 6, column 14) "
        "already reached 10 devices; "
        "waves are cumulative, so devices must not decrease"
    )


def test_a_percent_wave_after_a_devices_wave_is_fine_and_so_is_the_reverse() -> None:
    text = small_with("  - percent: 100", "  - percent: 1\n  - devices: 500\n  - percent: 100")
    assert [wave.devices or wave.percent for wave in parse_plan(text).waves] == [10, 1, 500, 100]


def test_wave_names_must_be_unique() -> None:
    text = small_with("  - percent: 100", "  - name: canary\n    percent: 100")
    assert only_problem(text) == (
        "rollout.yaml:8:11: waves[1].name 'canary' is already the name of waves[0].name "
        "(line 5, column 11); "
        "wave names must be unique"
    )


def test_a_wave_has_exactly_one_of_devices_and_percent() -> None:
    both = small_with("    devices: 10", "    devices: 10\n    percent: 5")
    assert only_problem(both) == (
        "rollout.yaml:5:5: waves[0] sets both devices and percent; keep one of them"
    )
    neither = small_with("    devices: 10\n", "")
    assert only_problem(neither).startswith(
        "rollout.yaml:5:5: waves[0] needs devices: N (a number of devices) or percent: P"
    )


def test_rollback_on_failure_needs_a_rollback_section() -> None:
    assert only_problem(SMALL + "policy:\n  on_failure: rollback\n") == (
        "rollout.yaml:10:15: policy.on_failure is rollback but the plan has no rollback section; "
        "add rollback: with the file to go back to, or use halt"
    )
    with_section = SMALL + "policy:\n  on_failure: rollback\nrollback:\n  file: fw_v1.bin\n"
    assert parse_plan(with_section).rollback == RollbackSpec(file="fw_v1.bin")


def test_the_rollback_file_must_differ_from_the_firmware_file() -> None:
    assert only_problem(SMALL + "rollback:\n  file: fw_v2.bin\n") == (
        "rollout.yaml:10:9: rollback.file must differ from firmware.file (line 3, column 9); "
        "both are 'fw_v2.bin'"
    )


def test_device_timeout_must_be_at_least_ack_timeout() -> None:
    text = SMALL + "policy:\n  ack_timeout: 30m\n  device_timeout: 10m\n"
    assert only_problem(text) == (
        "rollout.yaml:11:19: policy.device_timeout is 10m, shorter than policy.ack_timeout "
        "(line 10, column 16) of 30m; device_timeout is the longer of the two waits: lengthen "
        "it or shorten ack_timeout"
    )


def test_failure_rates_by_type_must_be_between_0_and_1() -> None:
    text = SMALL + "policy:\n  max_failure_rate_by_type:\n    failed: 150%\n"
    assert only_problem(text) == (
        "rollout.yaml:11:13: policy.max_failure_rate_by_type.failed must be between 0% and "
        "100%, got '150%'"
    )


def test_the_rules_hold_for_plans_built_in_python_too() -> None:
    with pytest.raises(ValueError, match="last wave"):
        Plan(name="x", firmware=FirmwareSpec(file="a.bin"), waves=[WaveSpec(percent=50)])


def test_a_firmware_file_must_be_a_plain_firmware_name() -> None:
    message = only_problem(small_with("fw_v2.bin", "notes.txt"))
    assert message == (
        "rollout.yaml:3:9: firmware.file must be an uploaded firmware file ending in .bin, .hex "
        "or .elf, got 'notes.txt'"
    )
    assert "firmware.file must be 1 to 128 characters" in only_problem(
        small_with("fw_v2.bin", "dir/fw.bin")
    )


def test_waves_must_not_be_empty_nor_more_than_50() -> None:
    assert only_problem("name: x\nfirmware: {file: a.bin}\nwaves: []\n") == (
        "rollout.yaml:3:8: waves must have at least 1 item, got 0"
    )
    many = [{"percent": 100}] * 51
    text = yaml.safe_dump({"name": "x", "firmware": {"file": "a.bin"}, "waves": many})
    assert "waves must have at most 50 items, got 51" in only_problem(text)


# -- values --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("10m", 600),
        ("2h", 7200),
        ("1h30m", 5400),
        ("500ms", 0.5),
        ("1h0m30s", 3630),
        ("1.5h", 5400),
        (" 45s ", 45),
        ("90", 90),
        (45, 45),
        (2.5, 2.5),
        (0, 0),
    ],
)
def test_durations_read_as_seconds(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "value", ["soon", "10 minutes", "1d", "", "m", "10M", "30m1h", True, None, [], "-5s"]
)
def test_anything_else_is_refused_with_the_accepted_forms(value: object) -> None:
    with pytest.raises(ValueError, match=r"must be a duration like 30s, 10m, 2h, 1h30m or 500ms"):
        parse_duration(value)


@pytest.mark.parametrize("value", [-1, float("inf"), float("nan"), 10**400])
def test_negative_or_endless_durations_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="0s or more"):
        parse_duration(value)


@pytest.mark.parametrize("seconds", [0, 0.5, 1, 59, 60, 90, 3600, 5400, 86400, 90061])
def test_format_duration_reads_back_as_the_same_seconds(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


def test_format_duration_writes_the_short_forms() -> None:
    assert [format_duration(s) for s in (0.5, 30, 600, 5400)] == ["500ms", "30s", "10m", "1h30m"]


@pytest.mark.parametrize(
    ("value", "per_s"), [("20/s", 20), ("600/m", 10), ("1.5 / s", 1.5), (5, 5), ("7", 7)]
)
def test_rates_read_as_commands_per_second(value: object, per_s: float) -> None:
    assert parse_rate(value) == per_s


@pytest.mark.parametrize("value", ["fast", "20/h", "20/", "/s", True, None])
def test_bad_rates_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match=r"must be a rate like 20/s or 600/m"):
        parse_rate(value)


@pytest.mark.parametrize(
    ("value", "fraction"),
    [("5%", 0.05), ("0%", 0), ("100%", 1), ("12.5 %", 0.125), (0.05, 0.05), (1, 1), ("0.2", 0.2)],
)
def test_failure_rates_read_as_fractions(value: object, fraction: float) -> None:
    assert parse_failure_rate(value) == pytest.approx(fraction)


def test_a_failure_rate_above_1_is_refused_with_the_percent_spelling() -> None:
    with pytest.raises(ValueError, match=r"got 5 \(for 5 percent, write 5%\)"):
        parse_failure_rate(5)


@pytest.mark.parametrize(("value", "percent"), [(10, 10), (10.5, 10.5), ("10%", 10), ("100", 100)])
def test_wave_percents_accept_numbers_and_percent_text(value: object, percent: float) -> None:
    assert parse_percent(value) == percent


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "must be more than 0"),
        (-5, "must be more than 0"),
        (120, "must be between 0 and 100, got 120"),
        ("101%", "must be between 0 and 100, got '101%'"),
        ("ten", "must be a percentage of the target like 10 or 10%, got 'ten'"),
        (True, "got true"),
    ],
)
def test_bad_wave_percents_are_refused(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_percent(value)


# -- YAML itself ---------------------------------------------------------------------------------


def test_a_yaml_syntax_error_is_located() -> None:
    message = only_problem("name: demo\nwaves: [1, 2\n")
    assert message.startswith("rollout.yaml:3:1: invalid YAML: expected ',' or ']'")
    assert "line 2, column 8" in message


def test_a_tab_in_the_indentation_says_so() -> None:
    assert only_problem("name: demo\n\tfirmware: x\n") == (
        "rollout.yaml:2:1: invalid YAML: a tab where YAML expects spaces; indent with spaces only"
    )


def test_a_duplicate_key_is_located_at_the_second_and_names_the_first() -> None:
    assert only_problem(small_with("    bake: 10m", "    bake: 10m\n    bake: 20m")) == (
        "rollout.yaml:8:5: duplicate key 'bake' in waves[0] (first at line 7, column 5); keep one"
    )


@pytest.mark.parametrize(
    ("text", "got"), [("- a\n- b\n", "a list"), ("just words\n", "'just words'"), ("42\n", "42")]
)
def test_a_document_that_is_not_a_mapping_is_refused(text: str, got: str) -> None:
    assert only_problem(text) == (
        "rollout.yaml:1:1: the plan must be a mapping of name, firmware, target, waves, policy, "
        f"rollback; got {got}"
    )


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_an_empty_document_is_refused(text: str) -> None:
    message = only_problem(text)
    assert message.startswith("rollout.yaml:")
    assert ": the plan is empty; write a mapping of name, firmware," in message


def test_two_documents_are_refused_at_the_second() -> None:
    assert only_problem(SMALL + "---\nname: other\n") == (
        "rollout.yaml:9:1: the file must hold one YAML document; remove the second '---' and "
        "what follows"
    )


@pytest.mark.parametrize(
    "text",
    [
        "name: !!int abc\n",
        "name: !custom x\n",
        "name: x\x00\n",
        "[" * 1000,
        "a: &a [*a]\n",
        "waves: &w [*w]\nname: x\nfirmware: {file: a.bin}\n",
        "<<: {name: x}\n",
        "? [a, b]\n: c\n",
        "name: x\nfirmware: {file: a.bin}\nwaves: [{percent: .nan}, {percent: .inf}]\n",
        "x: &a ['lol', 'lol']\ny: &b [*a, *a, *a, *a, *a, *a, *a, *a]\nz: [*b, *b, *b, *b, *b]\n",
    ],
)
def test_odd_yaml_gives_located_problems_not_tracebacks(text: str) -> None:
    for problem in problems(text):
        assert problem.startswith("rollout.yaml:")


def test_the_json_schema_uses_the_yaml_keys_and_forbids_others() -> None:
    schema = plan_json_schema()
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert set(schema["properties"]) == {
        "name",
        "firmware",
        "target",
        "waves",
        "policy",
        "rollback",
    }
    assert schema["required"] == ["name", "firmware", "waves"]
    assert schema["additionalProperties"] is False
    wave = schema["$defs"]["WaveSpec"]
    assert {"bake", "percent", "devices"} <= set(wave["properties"])
    assert "bake_s" not in wave["properties"]
    assert {"ack_timeout", "device_timeout", "rate"} <= set(
        schema["$defs"]["PolicySpec"]["properties"]
    )
    json.dumps(schema)


def test_the_json_schema_shows_the_maxima() -> None:
    defs = plan_json_schema()["$defs"]
    policy, wave = defs["PolicySpec"]["properties"], defs["WaveSpec"]["properties"]
    numbers = {
        "ack_timeout": policy["ack_timeout"]["anyOf"][0],
        "device_timeout": policy["device_timeout"]["anyOf"][0],
        "rate": policy["rate"]["anyOf"][0],
        "max_in_flight": policy["max_in_flight"]["anyOf"][0],
        "min_devices": policy["min_devices"],
        "retries": policy["retries"],
        "bake": wave["bake"]["anyOf"][0],
        "devices": wave["devices"]["anyOf"][0],
    }
    assert {key: form["maximum"] for key, form in numbers.items()} == {
        "ack_timeout": 604800,
        "device_timeout": 604800,
        "rate": 10000,
        "max_in_flight": 10_000_000,
        "min_devices": 10_000_000,
        "retries": 10,
        "bake": 604800,
        "devices": 10_000_000,
    }
    # a duration written as text cannot carry its maximum in a pattern: its description does
    assert "at most 168h (7 days)" in policy["ack_timeout"]["description"]


# -- properties ----------------------------------------------------------------------------------

NAMES = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,30}", fullmatch=True)
FILES = st.from_regex(r"[A-Za-z0-9_-]{1,20}\.(bin|hex|elf)", fullmatch=True)
DURATIONS = st.one_of(
    st.integers(0, 86_400),
    st.sampled_from(["30s", "10m", "2h", "1h30m", "500ms", "0s", "1.5h"]),
)


def percent_forms(value: float) -> st.SearchStrategy[object]:
    forms: list[object] = [value, f"{value}%"]
    if float(value).is_integer():
        forms += [int(value), f"{int(value)}%"]
    return st.sampled_from(forms)


@st.composite
def valid_plans(draw: st.DrawFn) -> dict[str, Any]:
    """A valid plan as the dict a YAML author would write."""
    kinds = draw(st.lists(st.sampled_from(["devices", "percent"]), max_size=5))
    counts = sorted(
        draw(
            st.lists(
                st.integers(1, 10_000),
                min_size=kinds.count("devices"),
                max_size=kinds.count("devices"),
            )
        )
    )
    n_percents = kinds.count("percent")
    percents = sorted(draw(st.lists(st.floats(0.5, 100), min_size=n_percents, max_size=n_percents)))
    waves: list[dict[str, Any]] = []
    for number, kind in enumerate([*kinds, "last"], 1):
        wave: dict[str, Any] = {}
        if draw(st.booleans()):
            wave["name"] = f"w{number}"
        if kind == "devices":
            wave["devices"] = counts.pop(0)
        else:
            wave["percent"] = draw(percent_forms(percents.pop(0) if kind == "percent" else 100.0))
        if draw(st.booleans()):
            wave["bake"] = draw(DURATIONS)
        if draw(st.booleans()):
            wave["approval"] = draw(st.sampled_from(["auto", "manual"]))
        waves.append(wave)
    firmware = draw(FILES)
    plan: dict[str, Any] = {"name": draw(NAMES), "firmware": {"file": firmware}, "waves": waves}
    if draw(st.booleans()):
        plan["firmware"]["version"] = draw(st.sampled_from(["2.1.0", "2.10", "1", "v3-rc1"]))
    if draw(st.booleans()):
        plan["target"] = {
            "tags": draw(st.lists(st.from_regex(r"[a-z0-9-]{1,12}", fullmatch=True), max_size=3)),
            "devices": draw(st.lists(st.from_regex(r"dev-[0-9]{1,4}", fullmatch=True), max_size=3)),
        }
    policy: dict[str, Any] = {}
    optional = {
        "max_failure_rate": st.one_of(st.integers(0, 100).map(lambda p: f"{p}%"), st.floats(0, 1)),
        "max_failure_rate_by_type": st.dictionaries(
            st.sampled_from([t.value for t in FailureType]), st.floats(0, 1)
        ),
        "min_devices": st.integers(1, 500),
        "retries": st.integers(0, 10),
        "rate": st.one_of(
            st.integers(1, 100).map(lambda n: f"{n}/s"),
            st.integers(1, 6000).map(lambda n: f"{n}/m"),
        ),
        "max_in_flight": st.integers(1, 1000),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            policy[key] = draw(strategy)
    if draw(st.booleans()):
        ack = draw(st.integers(1, 3600))
        policy["ack_timeout"] = f"{ack}s"
        policy["device_timeout"] = ack + draw(st.integers(0, 3600))
    if draw(st.booleans()):
        policy["on_failure"] = "rollback"
        plan["rollback"] = {"file": "previous_" + firmware}
    if policy:
        plan["policy"] = policy
    return plan


@hypothesis_settings(database=None, max_examples=200, deadline=None)
@given(valid_plans())
def test_generated_valid_plans_parse_with_monotone_coverage_ending_at_100(
    data: dict[str, Any],
) -> None:
    plan = parse_plan(yaml.safe_dump(data, sort_keys=False))
    percents = [wave.percent for wave in plan.waves if wave.percent is not None]
    counts = [wave.devices for wave in plan.waves if wave.devices is not None]
    assert percents == sorted(percents)
    assert counts == sorted(counts)
    assert plan.waves[-1].percent == 100
    assert len({wave.name for wave in plan.waves}) == len(plan.waves)
    assert plan.policy.device_timeout_s >= plan.policy.ack_timeout_s


def node_paths(value: object, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a plan dict: mappings, lists and leaves."""
    found = [path]
    if isinstance(value, dict):
        for key, child in value.items():
            found += node_paths(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += node_paths(child, (*path, index))
    return found


def get_at(data: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        data = data[part]
    return data


ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


@st.composite
def mutated_plans(draw: st.DrawFn) -> str:
    """A valid plan's YAML with one thing broken (or not quite)."""
    data = draw(valid_plans())
    mutation = draw(st.sampled_from(["delete", "unknown", "value", "truncate", "insert"]))
    if mutation in {"delete", "unknown", "value"}:
        paths = node_paths(data)
        if mutation == "delete":
            path = draw(st.sampled_from([p for p in paths if p]))
            parent = get_at(data, path[:-1])
            del parent[path[-1]]
        elif mutation == "unknown":
            mappings = [p for p in paths if isinstance(get_at(data, p), dict)]
            get_at(data, draw(st.sampled_from(mappings)))[
                draw(st.text(min_size=1, max_size=10))
            ] = 1
        else:
            path = draw(st.sampled_from([p for p in paths if p]))
            get_at(data, path[:-1])[path[-1]] = draw(ODD_VALUES)
        return yaml.safe_dump(data, sort_keys=False)
    text = yaml.safe_dump(data, sort_keys=False)
    at = draw(st.integers(0, len(text)))
    if mutation == "truncate":
        return text[:at]
    return text[:at] + draw(st.text(min_size=1, max_size=5)) + text[at:]


@hypothesis_settings(database=None, max_examples=200, deadline=None)
@given(mutated_plans())
def test_any_mutation_gives_a_plan_or_located_problems_never_another_exception(text: str) -> None:
    outcome: Plan | PlanError
    try:
        outcome = parse_plan(text, "p.yaml")
    except PlanError as error:
        outcome = error
    if isinstance(outcome, Plan):
        return
    assert outcome.problems
    last_line = len(text.splitlines()) + 1
    for problem in outcome.problems:
        assert 1 <= problem.line <= last_line, (problem, text)
        assert problem.column >= 1, problem
        assert problem.message
        assert str(problem).startswith(f"p.yaml:{problem.line}:{problem.column}: ")


@pytest.mark.parametrize("version", ['"1.0\\n"', '"1.0\\r"', '"1.0\\u0000"'])
def test_a_firmware_version_with_a_control_character_is_refused(version: str) -> None:
    """A trailing newline once slipped past the version check."""
    text = f"name: a\nfirmware: {{file: fw.bin, version: {version}}}\nwaves: [{{percent: 100}}]\n"
    assert "firmware.version" in only_problem(text)


# -- target.metadata -----------------------------------------------------------------------------


def test_a_target_selects_on_custom_metadata_and_keeps_values_as_written() -> None:
    plan = parse_plan(SMALL + "target:\n  metadata: {site: berlin, floor: 2, rev: 2.10}\n")
    assert plan.target.metadata == {"site": "berlin", "floor": "2", "rev": "2.10"}
    assert parse_plan(SMALL).target.metadata == {}


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        (
            "{site: [a, b]}",
            "rollout.yaml:10:20: target.metadata.site must be text, got a list",
        ),
        (
            "{site: " + "v" * 257 + "}",
            "rollout.yaml:10:20: target.metadata.site must be at most 256 characters, got 257",
        ),
        (
            "{'a b': x}",
            "rollout.yaml:10:14: target.metadata key 'a b' must be 1 to 64 characters "
            "without spaces or ':', got 'a b'",
        ),
        (
            "{allowed_commands: reboot}",
            "rollout.yaml:10:14: target.metadata key 'allowed_commands' is not custom metadata; "
            "select devices by their custom keys, got 'allowed_commands'",
        ),
        ("{site: null}", "rollout.yaml:10:20: target.metadata.site must be text, got nothing"),
        ("[site]", "rollout.yaml:10:13: target.metadata must be a mapping, got a list"),
    ],
)
def test_bad_target_metadata_is_located_and_says_what_is_allowed(
    metadata: str, expected: str
) -> None:
    assert only_problem(SMALL + f"target:\n  metadata: {metadata}\n") == expected


def test_a_target_with_more_metadata_keys_than_devices_hold_is_refused() -> None:
    pairs = ", ".join(f"k{i}: v" for i in range(65))
    assert only_problem(SMALL + f"target:\n  metadata: {{{pairs}}}\n") == (
        "rollout.yaml:10:13: target.metadata must have at most 64 items, got 65"
    )
