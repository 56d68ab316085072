"""Settings that are refused, each saying why and what to write instead."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from orchestrator.settings import Settings


def test_a_cluster_url_needs_a_hash_tagged_prefix_saying_so() -> None:
    with pytest.raises(ValidationError, match="has no hash tag") as caught:
        Settings(redis_url="redis+cluster://127.0.0.1:7000", redis_prefix="ota:")
    assert "OTA_REDIS_PREFIX={ota}:" in str(caught.value)
    tagged = Settings(redis_url="redis+cluster://127.0.0.1:7000", redis_prefix="{ota}:")
    assert tagged.redis_prefix == "{ota}:"


def test_download_offload_needs_a_long_secret_and_says_how_to_make_one() -> None:
    for secret in ("", "short"):
        with pytest.raises(ValidationError, match="needs OTA_DOWNLOAD_OFFLOAD_SECRET") as caught:
            Settings(download_offload="x-accel", download_offload_secret=secret)
        assert "openssl rand -hex 32" in str(caught.value)
    accepted = Settings(download_offload="x-accel", download_offload_secret="s" * 32)
    assert accepted.download_offload == "x-accel"
    assert accepted.download_offload_prefix == "/_ota_files/"


@pytest.mark.parametrize("prefix", ["", "/", "_ota_files/", "/_ota_files", "/a b/", "/f?x/"])
def test_download_offload_prefix_must_be_a_path_between_slashes(prefix: str) -> None:
    with pytest.raises(ValidationError, match="OTA_DOWNLOAD_OFFLOAD_PREFIX must be") as caught:
        Settings(download_offload_prefix=prefix)
    assert repr(prefix) in str(caught.value)
    assert Settings(download_offload_prefix="/internal/ota-files/").download_offload_prefix


def test_rollout_retention_defaults_to_ninety_days(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTA_ROLLOUT_RETENTION", raising=False)
    assert Settings().rollout_retention_s == 90 * 86_400


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("90d", 90 * 86_400),
        ("1d12h", 36 * 3600),
        ("0.5d", 12 * 3600),
        ("12h", 12 * 3600),
        ("90m", 5400),
        ("3600", 3600),
        (" 7D ", 7 * 86_400),
        ("forever", None),
        ("Forever", None),
    ],
)
def test_rollout_retention_is_read_from_its_variable_in_seconds_days_durations_or_forever(
    monkeypatch: pytest.MonkeyPatch, value: str, seconds: float | None
) -> None:
    monkeypatch.setenv("OTA_ROLLOUT_RETENTION", value)
    assert Settings().rollout_retention_s == seconds


def test_rollout_retention_can_be_given_by_its_field_name_as_tests_do() -> None:
    assert Settings(rollout_retention_s=7200).rollout_retention_s == 7200
    assert Settings(rollout_retention_s="2d").rollout_retention_s == 2 * 86_400


@pytest.mark.parametrize("value", ["0", "0s", "0d"])
def test_a_zero_rollout_retention_is_refused_naming_forever_and_a_short_duration(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("OTA_ROLLOUT_RETENTION", value)
    with pytest.raises(ValidationError, match="OTA_ROLLOUT_RETENTION must be longer than 0s") as e:
        Settings()
    assert f"got {value!r}" in str(e.value)
    assert "write forever to keep them" in str(e.value)


@pytest.mark.parametrize("value", ["1", "30m", "59m59s", "0.04d"])
def test_a_rollout_retention_under_an_hour_is_refused_naming_the_floor(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("OTA_ROLLOUT_RETENTION", value)
    with pytest.raises(ValidationError, match="OTA_ROLLOUT_RETENTION must be at least 1h") as e:
        Settings()
    assert f"got {value!r}" in str(e.value)
    assert "write 1h or more, or forever" in str(e.value)


@pytest.mark.parametrize("value", ["ninety days", "-5", "90x", "d", "1d-2h", "inf"])
def test_an_unreadable_rollout_retention_is_refused_naming_the_value_and_the_forms(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("OTA_ROLLOUT_RETENTION", value)
    with pytest.raises(ValidationError, match="OTA_ROLLOUT_RETENTION must be a number of sec") as e:
        Settings()
    assert f"got {value!r}" in str(e.value)
    assert "90d, 12h or 1d12h, or forever" in str(e.value)


def test_mqtt_provision_is_empty_by_default_and_takes_dynsec_or_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTA_MQTT_PROVISION", raising=False)
    assert Settings().mqtt_provision == ""
    for value in ("dynsec", "none"):
        monkeypatch.setenv("OTA_MQTT_PROVISION", value)
        assert Settings().mqtt_provision == value


def test_an_unknown_mqtt_provision_is_refused_naming_the_value_and_what_each_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTA_MQTT_PROVISION", "off")
    with pytest.raises(ValidationError) as caught:
        Settings()
    message = str(caught.value)
    assert "OTA_MQTT_PROVISION must be empty" in message
    assert "none (no device accounts: the embedded broker accepts anonymous clients)" in message
    assert "got 'off'" in message
