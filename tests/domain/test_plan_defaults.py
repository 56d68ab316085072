"""Defaults never contradict what a plan writes.

Any one key written within its bounds, everything else left to its default, is a valid plan
that keeps the value as written: a default that would conflict gives way instead
(`ack_timeout` is 10m or `device_timeout` if shorter, `device_timeout` 30m or `ack_timeout` if
longer, a wave's default name is never one the plan wrote). Only two written values can
conflict, and then the problem names both, each where it is written.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from orchestrator.domain.devices import (
    ALLOWED_COMMANDS_KEY,
    MAX_METADATA_VALUE_CHARS,
    RESERVED_METADATA_KEYS,
    TAG,
)
from orchestrator.domain.plan_values import (
    ACK_TIMEOUT_S,
    DEVICE_TIMEOUT_S,
    HEARTBEAT_S,
    MAX_DEVICES,
    MAX_DURATION_S,
    MAX_RATE_PER_S,
    MAX_RETRIES,
    NAME,
    SOAK_S,
    format_duration,
    parse_confidence,
    parse_duration,
    parse_failure_rate,
    parse_percent,
    parse_rate,
)
from orchestrator.domain.plans import (
    FailureType,
    PlanError,
    default_wave_names,
    parse_plan,
    plan_json_schema,
    stored_plan,
)
from orchestrator.domain.policy import resend_after_s
from orchestrator.domain.strata import MAX_BY
from tests.domain.test_plan_reference import schema_keys

EXAMPLES = hypothesis_settings(
    database=None, max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
SOURCE = "plan.yaml"
# The smallest plan whose every other key may be written alone: two waves (so that a written
# wave name can meet a default one), and a rollback section (which on_failure: rollback needs).
BASE: dict[str, Any] = {
    "name": "defaults",
    "firmware": {"file": "new.bin"},
    "waves": [{"percent": 50}, {"percent": 100}],
    "rollback": {"file": "old.bin"},
}

# -- values within their bounds, in the forms a person writes -------------------------------------

SECONDS = st.one_of(
    st.integers(1, MAX_DURATION_S),
    st.floats(0.001, MAX_DURATION_S, allow_nan=False),
)
DURATIONS = st.one_of(SECONDS, SECONDS.map(format_duration))
FRACTIONS = st.floats(0, 1, allow_nan=False)
FAILURE_RATES = st.one_of(FRACTIONS, st.integers(0, 10_000).map(lambda n: f"{n / 100:g}%"))
COUNTS = st.integers(1, MAX_DEVICES)
TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=128)
FILES = st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,40}\.(bin|hex|elf)", fullmatch=True)
PER_S = st.floats(0.001, MAX_RATE_PER_S, allow_nan=False)
RATES = st.one_of(
    PER_S,
    st.integers(1, MAX_RATE_PER_S).map(lambda n: f"{n}/s"),
    st.integers(1, MAX_RATE_PER_S * 60).map(lambda n: f"{n}/m"),
)


def names(limit: int) -> st.SearchStrategy[str]:
    # Names a default could take as well as any other.
    made = st.from_regex(NAME, fullmatch=True).filter(lambda name: len(name) <= limit)
    return st.one_of(st.from_regex(r"wave-[12](-[0-9])?", fullmatch=True), made)


def same(value: object) -> object:
    return value


# key path -> (values, how the plan holds the value written; None: a section, which the
# plan holds with its defaults filled in)
Key = tuple[st.SearchStrategy[Any], Callable[[Any], object] | None]
WRITTEN: dict[str, Key] = {
    "name": (names(100), same),
    "firmware": (st.fixed_dictionaries({"file": FILES.filter(lambda f: f != "old.bin")}), None),
    "firmware.file": (FILES.filter(lambda name: name != "old.bin"), same),
    "firmware.version": (TEXT, same),
    "target": (st.just({}), None),
    "target.tags": (st.lists(st.from_regex(TAG, fullmatch=True), max_size=4), same),
    "target.brand": (TEXT, same),
    "target.model": (TEXT, same),
    "target.devices": (st.lists(TEXT, max_size=4), same),
    "target.exclude": (st.lists(TEXT, max_size=4), same),
    "target.metadata": (
        st.dictionaries(
            # printable ASCII keys (METADATA_KEY takes more) and values, so the dump is plain
            st.from_regex(r"[!-9;-~]{1,64}", fullmatch=True).filter(
                lambda key: key not in {*RESERVED_METADATA_KEYS, ALLOWED_COMMANDS_KEY}
            ),
            st.text(
                st.characters(min_codepoint=0x20, max_codepoint=0x7E),
                max_size=MAX_METADATA_VALUE_CHARS,
            ),
            max_size=4,
        ),
        same,
    ),
    "target.versions": (st.lists(TEXT, max_size=4), same),
    "waves": (st.just([{"percent": 100}]), None),
    "waves[].name": (names(64), same),
    "waves[].devices": (COUNTS, same),
    "waves[].percent": (st.floats(0.001, 100, allow_nan=False), parse_percent),
    "waves[].bake": (st.one_of(st.just(0), DURATIONS), parse_duration),
    "waves[].approval": (st.sampled_from(["auto", "manual"]), same),
    "policy": (st.just({}), None),
    "policy.max_failure_rate": (FAILURE_RATES, parse_failure_rate),
    "policy.max_failure_rate_by_type": (
        st.dictionaries(st.sampled_from([str(t) for t in FailureType]), FRACTIONS),
        same,
    ),
    **{
        f"policy.max_failure_rate_by_type.{failure_type}": (FAILURE_RATES, parse_failure_rate)
        for failure_type in FailureType
    },
    "policy.min_devices": (COUNTS, same),
    "policy.ack_timeout": (DURATIONS, parse_duration),
    "policy.device_timeout": (DURATIONS, parse_duration),
    "policy.retries": (st.integers(0, MAX_RETRIES), same),
    "policy.rate": (RATES, parse_rate),
    "policy.max_in_flight": (COUNTS, same),
    "policy.on_failure": (st.sampled_from(["halt", "rollback"]), same),
    "policy.by": (
        st.lists(
            st.one_of(
                st.sampled_from(["model", "brand", "version"]),
                st.from_regex(r"tag:[a-z0-9-]{1,8}", fullmatch=True),
            ),
            max_size=MAX_BY,
            unique=True,
        ),
        same,
    ),
    "policy.health": (st.just({}), None),
    "policy.health.soak": (DURATIONS, parse_duration),
    "policy.health.heartbeat": (DURATIONS, parse_duration),
    "policy.confidence": (
        st.sampled_from(["50%", "90%", "95%", "99%", "99.9%", 0.5, 0.95]),
        parse_confidence,
    ),
    "rollback": (st.fixed_dictionaries({"file": FILES.filter(lambda f: f != "new.bin")}), None),
    "rollback.file": (FILES.filter(lambda name: name != "new.bin"), same),
    "rollback.version": (TEXT, same),
}
# waves[].devices and waves[].percent go in the first wave (the last is `percent: 100`)
FIRST_WAVE_ONLY = {"waves[].devices", "waves[].percent"}


def put(plan: dict[str, Any], path: str, value: object, wave: int) -> None:
    """Write `value` at a key path of `plan`; `waves[]` means waves[wave]."""
    *parents, last = path.split(".")
    node: Any = plan
    for part in parents:
        node = node["waves"][wave] if part == "waves[]" else node.setdefault(part, {})
    if last in {"devices", "percent"} and parents == ["waves[]"]:
        node.pop("percent")  # a wave has exactly one of the two
    node[last] = value


def held(dumped: dict[str, Any], path: str, wave: int) -> object:
    node: Any = dumped
    for part in path.split("."):
        node = node["waves"][wave] if part == "waves[]" else node[part]
    return node


def test_every_key_of_the_schema_is_tried_alone() -> None:
    assert set(WRITTEN) == set(schema_keys(plan_json_schema()))


@st.composite
def one_key_written(draw: st.DrawFn) -> tuple[str, Any, int]:
    path = draw(st.sampled_from(sorted(WRITTEN)))
    wave = 0 if path in FIRST_WAVE_ONLY else draw(st.sampled_from([0, 1]))
    return path, draw(WRITTEN[path][0]), wave


@EXAMPLES
@given(one_key_written())
def test_any_one_key_written_within_its_bounds_with_defaults_elsewhere_is_a_valid_plan(
    case: tuple[str, Any, int],
) -> None:
    path, value, wave = case
    plan = copy.deepcopy(BASE)
    put(plan, path, value, wave)
    text = yaml.safe_dump(plan)
    try:
        parsed = parse_plan(text, SOURCE)
    except PlanError as error:
        pytest.fail(f"{path}: {value!r} alone is refused:\n{error.message}\n{text}")
    assert len({w.name for w in parsed.waves}) == len(parsed.waves)
    reads_as = WRITTEN[path][1]
    if reads_as is None:
        return
    expected = reads_as(value)
    got = held(parsed.model_dump(mode="json", by_alias=True), path, wave)
    if isinstance(expected, float):
        assert math.isclose(float(got), expected), (path, value, got)  # type: ignore[arg-type]
    else:
        assert got == expected, (path, value, got)


def test_device_timeout_alone_shortens_the_ack_timeout_default() -> None:
    """`policy: {device_timeout: 2m}` was refused: the default ack_timeout (10m) was longer."""
    text = yaml.safe_dump({**BASE, "policy": {"device_timeout": "2m"}})
    policy = parse_plan(text).policy
    assert (policy.ack_timeout_s, policy.device_timeout_s) == (120, 120)
    assert resend_after_s(policy) == 30  # resends adapt with it: a quarter of the shorter wait


def test_ack_timeout_alone_lengthens_the_device_timeout_default() -> None:
    policy = parse_plan(yaml.safe_dump({**BASE, "policy": {"ack_timeout": "1h"}})).policy
    assert (policy.ack_timeout_s, policy.device_timeout_s) == (3600, 3600)
    defaults = parse_plan(yaml.safe_dump(BASE)).policy
    assert (defaults.ack_timeout_s, defaults.device_timeout_s) == (ACK_TIMEOUT_S, DEVICE_TIMEOUT_S)


def test_health_keys_alone_adapt_the_other_default() -> None:
    """A soak shorter than 5m shortens the heartbeat; a heartbeat over 30m lengthens the soak."""
    health = parse_plan(yaml.safe_dump({**BASE, "policy": {"health": {"soak": "2m"}}})).policy
    assert health.health is not None
    assert (health.health.soak_s, health.health.heartbeat_s) == (120, 120)
    longer = {"health": {"heartbeat": "1h"}}
    health = parse_plan(yaml.safe_dump({**BASE, "policy": longer})).policy
    assert health.health is not None
    assert (health.health.soak_s, health.health.heartbeat_s) == (3600, 3600)
    health = parse_plan(yaml.safe_dump({**BASE, "policy": {"health": {}}})).policy
    assert health.health is not None
    assert (health.health.soak_s, health.health.heartbeat_s) == (SOAK_S, HEARTBEAT_S)
    assert parse_plan(yaml.safe_dump(BASE)).policy.health is None


@pytest.mark.parametrize(
    ("written", "named"),
    [
        (["wave-2", ""], ["wave-2", "wave-2-2"]),
        (["", "wave-1"], ["wave-1-2", "wave-1"]),
        (["", "wave-1", "wave-1-2"], ["wave-1-3", "wave-1", "wave-1-2"]),
        (["", "", "canary"], ["wave-1", "wave-2", "canary"]),
    ],
)
def test_a_default_wave_name_is_never_a_name_the_plan_wrote(
    written: list[str], named: list[str]
) -> None:
    assert default_wave_names(written) == named
    waves = [{"percent": 100, **({"name": name} if name else {})} for name in written]
    plan = parse_plan(yaml.safe_dump({**BASE, "waves": waves}))
    assert [wave.name for wave in plan.waves] == named


def line_of(text: str, key: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if line.strip().startswith(key))


@EXAMPLES
@given(SECONDS, SECONDS)
def test_two_written_timeouts_conflict_only_when_device_timeout_is_shorter_and_both_are_named(
    ack_s: float, device_s: float
) -> None:
    policy = {"ack_timeout": format_duration(ack_s), "device_timeout": format_duration(device_s)}
    text = yaml.safe_dump({**BASE, "policy": policy}, sort_keys=False)
    written = parse_duration(policy["ack_timeout"]), parse_duration(policy["device_timeout"])
    if written[1] >= written[0]:
        parsed = parse_plan(text, SOURCE).policy
        assert (parsed.ack_timeout_s, parsed.device_timeout_s) == written
        return
    with pytest.raises(PlanError) as caught:
        parse_plan(text, SOURCE)
    [problem] = caught.value.problems
    assert problem.line == line_of(text, "device_timeout:")
    ack_line = line_of(text, "ack_timeout:")
    assert f"policy.ack_timeout (line {ack_line}, column " in problem.message
    assert str(problem).startswith(f"{SOURCE}:{problem.line}:{problem.column}: ")


def test_written_values_that_conflict_name_each_other_with_their_lines() -> None:
    text = """\
name: clash
firmware:
  file: same.bin
waves:
  - name: canary
    percent: 20
  - name: canary
    percent: 10
  - percent: 100
rollback:
  file: same.bin
"""
    with pytest.raises(PlanError) as caught:
        parse_plan(text, SOURCE)
    assert [str(problem) for problem in caught.value.problems] == [
        "plan.yaml:7:11: waves[1].name 'canary' is already the name of waves[0].name (line 5, "
        "column 11); wave names must be unique",
        "plan.yaml:8:14: waves[1].percent is 10 but waves[0].percent (line 6, column 14) already "
        "reached 20%; waves are cumulative, so percent must not decrease",
        "plan.yaml:11:9: rollback.file must differ from firmware.file (line 3, column 9); both "
        "are 'same.bin'",
    ]


def test_a_stored_plan_names_the_other_value_without_a_line() -> None:
    data = {**BASE, "policy": {"ack_timeout": "30m", "device_timeout": "10m"}}
    with pytest.raises(PlanError) as caught:
        stored_plan(data)
    assert caught.value.message == (
        "stored plan: policy.device_timeout is 10m, shorter than policy.ack_timeout of 30m; "
        "device_timeout is the longer of the two waits: lengthen it or shorten ack_timeout"
    )


def test_a_plan_read_back_keeps_its_adapted_defaults() -> None:
    """What a rollout stores (every value, defaults included) reads back as the same plan."""
    plan = parse_plan(yaml.safe_dump({**BASE, "policy": {"device_timeout": "90s"}}))
    assert stored_plan(plan.model_dump(mode="json", by_alias=True)) == plan


def test_a_written_heartbeat_longer_than_the_written_soak_is_refused_at_both() -> None:
    text = "name: t\nfirmware: {file: fw.bin}\nwaves: [{percent: 100}]\n"
    text += "policy:\n  health:\n    soak: 5m\n    heartbeat: 10m\n"
    with pytest.raises(PlanError) as raised:
        parse_plan(text, "plan.yaml")
    assert raised.value.message == (
        "plan.yaml:7:16: policy.health.heartbeat is 10m, longer than policy.health.soak (line 6, "
        "column 11) of 5m; a silence longer than the soak could never be noticed: shorten "
        "heartbeat or lengthen soak"
    )
