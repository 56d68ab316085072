"""Behaviour settings, their CLI spellings, seeded draws and the device book (no servers)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from orchestrator.simulator import (
    Behaviour,
    BookError,
    DeviceBook,
    DeviceIdentity,
    Stall,
    parse_fail_version,
    parse_latency,
    parse_rate,
    parse_stall,
)
from orchestrator.simulator.behaviour import device_random


@pytest.mark.parametrize(
    ("text", "rate"), [("0", 0.0), ("0.05", 0.05), ("5%", 0.05), (" 100% ", 1.0), ("1", 1.0)]
)
def test_rates_are_fractions_or_percentages(text: str, rate: float) -> None:
    assert math.isclose(parse_rate(text, "--fail-rate"), rate)


@pytest.mark.parametrize("text", ["2", "-0.1", "101%", "abc", "", "nan", "5%%"])
def test_a_rate_out_of_range_names_the_option_the_value_and_the_fix(text: str) -> None:
    with pytest.raises(ValueError, match="--reject must be a fraction between 0 and 1") as info:
        parse_rate(text, "--reject")
    assert repr(text) in str(info.value)
    assert "5%" in str(info.value)  # how to write it


def test_latency_is_min_dot_dot_max_seconds() -> None:
    assert parse_latency("0.1..0.5") == (0.1, 0.5)
    assert parse_latency("0.2") == (0.2, 0.2)
    with pytest.raises(ValueError, match=r"MIN <= MAX.*got '5\.\.1'; write 1\.\.5"):
        parse_latency("5..1")
    for bad in ("a..b", "-1..2", "1..inf", "..", "1...2"):
        with pytest.raises(ValueError, match=r"--latency must be MIN\.\.MAX"):
            parse_latency(bad)


def test_fail_version_is_version_equals_rate() -> None:
    assert parse_fail_version("1.2.0=0.5") == ("1.2.0", 0.5)
    assert parse_fail_version("v2=10%") == ("v2", 0.1)
    with pytest.raises(ValueError, match="VERSION=RATE"):
        parse_fail_version("1.2.0")
    with pytest.raises(ValueError, match="between 0 and 1"):
        parse_fail_version("1.2.0=3")


def test_a_stall_is_where_for_how_long_and_whether_the_device_hangs_up() -> None:
    assert parse_stall("30%", 90) == Stall(at=0.3, for_s=90.0)
    assert parse_stall("0", 0, hangup=True) == Stall(at=0.0, for_s=0.0, hangup=True)
    assert Stall(at=0.25).byte(1000) == 250
    with pytest.raises(ValueError, match=r"--stall-at must be below 1 \(100%\).*got '100%'"):
        parse_stall("100%", 90)
    with pytest.raises(ValueError, match="--stall-at must be a fraction between 0 and 1"):
        parse_stall("half", 90)
    for seconds in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="--stall-for must be 0 or more seconds, like 90"):
            parse_stall("30%", seconds)


def test_behaviour_refuses_impossible_values() -> None:
    with pytest.raises(ValueError, match=r"fail_rate must be between 0 and 1, got 1\.5"):
        Behaviour(fail_rate=1.5)
    with pytest.raises(ValueError, match="fail_versions"):
        Behaviour(fail_versions={"1.0": -1.0})
    with pytest.raises(ValueError, match="latency_s"):
        Behaviour(latency_s=(2.0, 1.0))
    with pytest.raises(ValueError, match=r"stall_rate must be between 0 and 1, got 2\.0"):
        Behaviour(stall_rate=2.0)
    with pytest.raises(ValueError, match=r"stall\.at must be a fraction .*got 1\.0"):
        Stall(at=1.0)
    with pytest.raises(ValueError, match=r"stall\.for_s must be 0 or more seconds, got -1"):
        Stall(for_s=-1)


def test_a_version_rate_comes_on_top_of_the_fail_rate() -> None:
    behaviour = Behaviour(fail_rate=0.5, fail_versions={"2.0": 0.5})
    assert behaviour.install_fail_rate("1.0") == 0.5
    assert behaviour.install_fail_rate(None) == 0.5
    assert behaviour.install_fail_rate("2.0") == 0.75


def test_draws_depend_only_on_seed_device_and_stream() -> None:
    first = [device_random(7, "dev-1").random() for _ in range(3)]
    assert first == [device_random(7, "dev-1").random() for _ in range(3)]
    assert device_random(7, "dev-1").random() != device_random(8, "dev-1").random()
    assert device_random(7, "dev-1").random() != device_random(7, "dev-2").random()
    assert device_random(7, "dev-1").random() != device_random(7, "dev-1", "latency").random()


def test_the_book_keeps_each_project_apart(tmp_path: Path) -> None:
    book = DeviceBook(tmp_path / "nested" / "book.json")
    assert book.load("p1") == []
    one = DeviceIdentity("d1", "t1", "sim-1", ("lab",), "1.0")
    book.save("p1", [one])
    book.save("p2", [DeviceIdentity("d2", "t2")])
    assert book.load("p1") == [one]
    assert [d.id for d in book.load("p2")] == ["d2"]
    assert set(json.loads(book.path.read_text())) == {"p1", "p2"}
    assert one.has_tags(["lab"])
    assert one.has_tags([])
    assert not one.has_tags(["lab", "eu"])


def test_a_broken_book_is_an_error_naming_the_file_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "book.json"
    path.write_text('{"p1": [{"id": "d1"}]}')
    with pytest.raises(BookError, match=r"book\.json is not a map.*token.*pass another --state"):
        DeviceBook(path).load("p1")
    path.write_text("not json")
    with pytest.raises(BookError, match="fix or delete it"):
        DeviceBook(path).load("p1")
