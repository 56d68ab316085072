"""The chance a plan's first wave stops a firmware failing at twice the limit, worked exactly."""

from __future__ import annotations

import pytest

from orchestrator.domain.gate_check import check_first_wave, stop_chances
from orchestrator.domain.plans import Plan, parse_plan


def plan(first: str, policy: str = "confidence: 95%") -> Plan:
    return parse_plan(
        f"name: p\nfirmware: {{file: fw.bin}}\nwaves: [{{name: canary, {first}}}, "
        f"{{percent: 100}}]\npolicy: {{{policy}}}\n"
    )


def test_a_canary_of_five_stops_a_ten_percent_firmware_when_any_device_fails() -> None:
    """At a 5% limit and 95%, 3 failures halt and 1 or 2 of 5 leave the test undecided over
    the limit (a pause): stopped unless all five succeed, 1 - 0.9^5."""
    check = check_first_wave(plan("devices: 5"))
    assert check is not None
    assert check.chance == pytest.approx(1 - 0.9**5)
    assert check.too_small
    assert check.warning() == (
        "canary of 5 with confidence 95%: a 10% failure rate is stopped in the canary with "
        f"probability 0.41; {check.enough} devices give 0.95"
    )


def test_twenty_devices_with_one_failure_are_within_the_limit() -> None:
    """1 of 20 is 5%, not over: stopped only with 2 failures or more (4 halt mid-wave)."""
    chances = list(stop_chances(plan("devices: 20").policy, 0.1, 20))
    at_least_two = 1 - 0.9**20 - 20 * 0.1 * 0.9**19
    assert chances[20] == pytest.approx(at_least_two)


def test_the_suggested_size_reaches_the_confidence() -> None:
    check = check_first_wave(plan("devices: 5"))
    assert check is not None
    assert check.enough is not None
    chances = list(stop_chances(plan("devices: 5").policy, 0.1, check.enough))
    assert chances[check.enough] >= 0.95
    assert all(p < 0.95 for p in chances[: check.enough])
    big = check_first_wave(plan(f"devices: {check.enough}"))
    assert big is not None
    assert not big.too_small


def test_no_check_without_confidence_or_a_known_size() -> None:
    assert check_first_wave(plan("devices: 5", policy="max_failure_rate: 5%")) is None
    assert check_first_wave(plan("percent: 10")) is None
    sized = check_first_wave(plan("percent: 10"), devices=5)
    assert sized is not None
    assert sized.devices == 5
