"""jsonutil: standard JSON in and out; what Python's json takes beyond it is refused, located."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from orchestrator.errors import InvalidInput
from orchestrator.jsonutil import dumps, loads

FINITE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=20,
)
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])


def _refusal(data: bytes | str) -> InvalidInput | None:
    try:
        loads(data)
    except InvalidInput as refused:
        return refused
    return None


@hypothesis_settings(database=None, max_examples=100)
@given(value=FINITE)
def test_standard_json_round_trips(value: Any) -> None:
    assert loads(dumps(value)) == value
    assert loads(dumps(value).encode()) == value


@hypothesis_settings(database=None, max_examples=200)
@given(data=st.binary(max_size=200) | st.text(max_size=200))
def test_any_input_is_a_value_or_a_located_refusal_never_another_error(
    data: bytes | str,
) -> None:
    refused = _refusal(data)
    if refused is not None:
        assert isinstance(refused, InvalidInput)
        assert refused.errors[0]["loc"].startswith("body")


@hypothesis_settings(database=None, max_examples=100)
@given(
    before=st.lists(FINITE, max_size=3),
    number=NON_FINITE,
    key=st.text(min_size=1, max_size=6).filter(lambda k: "." not in k),
)
def test_nan_or_infinity_anywhere_is_refused_naming_its_place(
    before: list[Any], number: float, key: str
) -> None:
    value = {"data": [*before, {key: number}]}
    refused = _refusal(json.dumps(value))  # Python writes NaN; a sender may too
    assert refused is not None
    place = f"body.data.{len(before)}.{key}"
    assert refused.errors[0]["loc"] == place
    assert refused.message.startswith(f"{place} is ")
    with pytest.raises(InvalidInput, match="NaN and Infinity are not JSON"):
        dumps(value)


@pytest.mark.parametrize(
    "data",
    [b'"\\ud800"', b'{"\\udc00": 1}', b'["\\ud83d"]', '"\ud800"'],
)
def test_a_lone_surrogate_is_refused_and_a_pair_is_not(data: bytes | str) -> None:
    with pytest.raises(InvalidInput, match="not valid Unicode"):
        loads(data)
    assert loads(b'"\\ud83d\\ude00"') == "\U0001f600"
    assert loads(b'"\\\\ud800"') == "\\ud800"  # an escaped backslash: six plain characters
