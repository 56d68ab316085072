"""Properties of the plan parser over documents nobody would write on purpose.

Whatever the text (any YAML or JSON document, a valid plan with a piece broken, characters that
trouble a YAML reader), parse_plan gives a Plan or a PlanError whose every problem is located
in the text; a number or duration over its maximum is refused, naming the key and the maximum;
LibYAML and PyYAML read the same document the same way.
"""

from __future__ import annotations

import json
import math
from typing import Any
from unittest import mock

import yaml
from hypothesis import HealthCheck, assume, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from orchestrator.domain import yaml_locations
from orchestrator.domain.plan_values import MAX_DEVICES, MAX_DURATION_S, MAX_RATE_PER_S, MAX_RETRIES
from orchestrator.domain.plans import Plan, PlanError, parse_plan
from orchestrator.domain.yaml_locations import LocatedYaml, YamlSyntaxError, load_yaml

EXAMPLES = hypothesis_settings(
    database=None,
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
SOURCE = "p.yaml"
PLAN: dict[str, Any] = {
    "name": "fw-2",
    "firmware": {"file": "fw_2.bin"},
    "waves": [{"devices": 1}, {"percent": 100}],
}
HUGE_INTS = st.one_of(st.integers(2**63, 10**600), st.integers(2**31, 2**63))
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    HUGE_INTS,
    HUGE_INTS.map(lambda n: -n),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["30s", "168h", "169h", "1h30m", "500ms", "20/s", "10001/s", "5%", "~", ""]),
    st.dates(),
    st.binary(max_size=8),
)
KEYS = st.one_of(
    st.sampled_from(
        ["name", "firmware", "file", "target", "devices", "waves", "percent", "policy", "bake"]
    ),
    st.text(max_size=8),
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(KEYS, children, max_size=4)
    ),
    max_leaves=20,
)


def outcome(text: str) -> Plan | PlanError:
    """What parse_plan makes of `text`; any other exception fails the test."""
    try:
        return parse_plan(text, SOURCE)
    except PlanError as error:
        return error


def assert_located(text: str, result: Plan | PlanError) -> None:
    """A Plan, or problems each on a line and column of `text`, with a message."""
    if isinstance(result, Plan):
        return
    assert result.problems
    last_line = text.count("\n") + text.count("\r") + 2  # YAML also breaks at \r, \x85...
    for problem in result.problems:
        assert 1 <= problem.line <= last_line + len(text), (problem, text)
        assert problem.column >= 1, problem
        assert problem.message, problem
        assert str(problem).startswith(f"{SOURCE}:{problem.line}:{problem.column}: ")
    assert result.errors
    assert all(error["msg"] for error in result.errors)


def dumped(value: object, style: str) -> str:
    if style == "json":
        return json.dumps(value, default=str)
    return yaml.safe_dump(value, default_flow_style=style == "flow", allow_unicode=True)


@EXAMPLES
@given(VALUES, st.sampled_from(["block", "flow", "json"]))
def test_any_document_gives_a_plan_or_located_problems(value: object, style: str) -> None:
    text = dumped(value, style)
    assert_located(text, outcome(text))


@EXAMPLES
@given(st.dictionaries(st.sampled_from([*PLAN, "target", "policy", "rollback"]), VALUES))
def test_any_document_with_the_keys_of_a_plan_gives_a_plan_or_located_problems(
    parts: dict[str, Any],
) -> None:
    text = yaml.safe_dump({**PLAN, **parts}, allow_unicode=True)
    assert_located(text, outcome(text))


YAML_CHARACTERS = st.text(
    alphabet=st.sampled_from(list(":-[]{},&*!|>'\"#%@`?~ \t\n\r\\0123456789abcxyz.\x85\u2028é😀")),
    max_size=60,
)


@EXAMPLES
@given(YAML_CHARACTERS)
def test_any_text_gives_a_plan_or_located_problems(text: str) -> None:
    assert_located(text, outcome(text))


@EXAMPLES
@given(YAML_CHARACTERS, st.data())
def test_a_plan_with_odd_characters_put_in_gives_a_plan_or_located_problems(
    inserted: str, data: st.DataObject
) -> None:
    text = yaml.safe_dump(PLAN)
    at = data.draw(st.integers(0, len(text)))
    text = text[:at] + inserted + text[at:]
    assert_located(text, outcome(text))


RAW_NUMBERS = st.one_of(
    st.integers(1, 6000).map(lambda digits: "0x" + "f" * digits),
    st.integers(1, 6000).map(lambda digits: "-0o" + "7" * digits),
    st.integers(1, 20000).map(lambda digits: "0b" + "1" * digits),
    st.integers(1, 5000).map(lambda digits: "9" * digits),
    st.integers(1, 400).map(lambda digits: "1" + "_000" * digits),
    st.sampled_from([".inf", "-.inf", ".nan", "1.0e+306", "-1.0e+306", "1.0e+400", "0x_ff"]),
)
PLACE = "RAW_NUMBER_HERE"


@st.composite
def plan_with_a_raw_number(draw: st.DrawFn) -> str:
    """A plan with any one value, or a new key, written as a huge (or odd) number."""
    plan = {**PLAN, "policy": {"retries": 1, "rate": "10/s"}, "target": {"tags": ["a"]}}
    plan = json.loads(json.dumps(plan))
    holders: list[tuple[Any, Any]] = []

    def walk(node: Any) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, child in list(items):
            holders.append((node, key))
            if isinstance(child, dict | list):
                walk(child)

    walk(plan)
    node, key = draw(st.sampled_from(holders))
    node[key] = PLACE
    return yaml.safe_dump(plan).replace(PLACE, draw(RAW_NUMBERS))


@EXAMPLES
@given(plan_with_a_raw_number())
def test_a_huge_number_anywhere_gives_a_plan_or_a_short_located_problem(text: str) -> None:
    result = outcome(text)
    assert_located(text, result)
    if isinstance(result, PlanError):
        assert all(len(problem.message) < 300 for problem in result.problems), result


# -- maxima ---------------------------------------------------------------------------------------

DURATION_OVER = st.one_of(
    st.integers(MAX_DURATION_S + 1, 10**400),
    st.floats(MAX_DURATION_S + 1, math.inf, allow_nan=False),
    st.integers(MAX_DURATION_S // 3600 + 1, 10**30).map(lambda hours: f"{hours}h"),
    st.integers(MAX_DURATION_S // 60 + 1, 10**30).map(lambda minutes: f"{minutes}m"),
)
COUNT_OVER = st.integers(MAX_DEVICES + 1, 10**400)
# written as hexadecimal, a number may have more digits than Python agrees to print
HEX = "HEX_NUMBER"
HUGE_HEX = st.integers(7, 5000).map(lambda digits: "0x" + "f" * digits)
OVER: dict[tuple[str | int, ...], st.SearchStrategy[object]] = {
    ("policy", "ack_timeout"): DURATION_OVER,
    ("policy", "device_timeout"): DURATION_OVER,
    ("waves", 0, "bake"): DURATION_OVER,
    ("policy", "min_devices"): COUNT_OVER,
    ("policy", "max_in_flight"): COUNT_OVER,
    ("waves", 0, "devices"): COUNT_OVER,
    ("policy", "retries"): st.integers(MAX_RETRIES + 1, 10**400),
    ("policy", "rate"): st.one_of(
        st.integers(MAX_RATE_PER_S + 1, 10**400),
        st.floats(MAX_RATE_PER_S + 1, math.inf, allow_nan=False),
        st.integers(MAX_RATE_PER_S + 1, 10**30).map(lambda n: f"{n}/s"),
        st.integers(MAX_RATE_PER_S * 60 + 1, 10**30).map(lambda n: f"{n}/m"),
    ),
}


@st.composite
def over_a_maximum(draw: st.DrawFn) -> tuple[str, str]:
    """A valid plan with one value over its maximum; the value's key, and the YAML."""
    path = draw(st.sampled_from(sorted(OVER, key=str)))
    hexadecimal = draw(st.one_of(st.none(), HUGE_HEX))
    value = HEX if hexadecimal else draw(OVER[path])
    plan = json.loads(json.dumps(PLAN))
    node = plan
    for part in path[:-1]:
        node = node.setdefault(part, {}) if isinstance(part, str) else node[part]
    node[path[-1]] = value
    key = ".".join(f"[{p}]" if isinstance(p, int) else p for p in path).replace(".[", "[")
    return key, yaml.safe_dump(plan).replace(HEX, hexadecimal or HEX)


@EXAMPLES
@given(over_a_maximum())
def test_a_value_over_its_maximum_is_refused_naming_the_key_and_the_maximum(
    case: tuple[str, str],
) -> None:
    key, text = case
    result = outcome(text)
    assert isinstance(result, PlanError), f"{key} over its maximum was accepted:\n{text}"
    [problem] = result.problems
    assert problem.path == key
    assert problem.message.startswith(f"{key} must be at most "), problem.message
    assert len(problem.message) < 200  # a number of 5,000 digits is named by its length


# -- LibYAML and PyYAML ---------------------------------------------------------------------------


def read_by(loader: type[Any], text: str) -> LocatedYaml | YamlSyntaxError:
    with mock.patch.object(yaml_locations, "_FAST_LOADER", loader):
        try:
            return load_yaml(text)
        except YamlSyntaxError as error:
            return error
        except RecursionError as error:  # parse_plan turns this into a located problem
            return YamlSyntaxError(str(error), yaml_locations.START)


def _at(data: object, path: tuple[Any, ...]) -> object:
    for part in path:
        data = data[part] if isinstance(data, dict | list) else None
    return data


def same(fast: LocatedYaml, pure: LocatedYaml) -> bool:
    """Equal values, positions, plain texts and issues; except that an empty value (read as
    null, as in `{a: }`) may be placed a column or a line apart: both point at the gap."""

    def placed(read: LocatedYaml) -> dict[tuple[Any, ...], object]:
        return {path: at for path, at in read.values.items() if _at(read.data, path) is not None}

    return (repr(fast.data), placed(fast), fast.keys, fast.plain, fast.issues) == (
        repr(pure.data),
        placed(pure),
        pure.keys,
        pure.plain,
        pure.issues,
    )


@EXAMPLES
@given(
    st.one_of(
        st.tuples(VALUES, st.sampled_from(["block", "flow", "json"])).map(
            lambda case: dumped(*case)
        ),
        YAML_CHARACTERS,
    )
)
def test_libyaml_reads_a_document_as_pyyaml_does(text: str) -> None:
    assume(hasattr(yaml, "CSafeLoader"))
    # A bare `!` (the non-specific tag) makes LibYAML read text, as the YAML spec says, and
    # PyYAML resolve the value as if untagged: no plan has a reason to write one.
    assume("!" not in text)
    pure = read_by(yaml.SafeLoader, text)
    fast = read_by(yaml.CSafeLoader, text)
    if isinstance(pure, YamlSyntaxError):
        # what PyYAML refuses, LibYAML may read; what LibYAML refuses, PyYAML explains
        assert isinstance(fast, LocatedYaml) or fast.message == pure.message
        return
    assert isinstance(fast, LocatedYaml), (text, fast)
    assert same(fast, pure), text
