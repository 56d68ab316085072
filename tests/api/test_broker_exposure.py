"""A broker that lets in clients without credentials is said so: at start and in /readyz.

An anonymous client on such a broker reads every command and download URL and publishes
results for any device. The service stays ready (commands flow) but warns.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog

from orchestrator import embedded
from orchestrator.embedded import EmbeddedBroker
from orchestrator.service import embedded_servers, print_banner
from orchestrator.settings import Settings
from orchestrator.transport.exposure import accepts_anonymous
from tests.conftest import Service, wait_for

Logs = list[MutableMapping[str, Any]]


async def _probed(service: Service) -> dict[str, Any]:
    """/readyz once the start-up probe has had the broker's answer."""
    body: dict[str, Any] = {}

    async def answered() -> bool:
        response = await service.client.get("/readyz")
        assert response.status_code == 200, response.text
        body.update(response.json())
        return body["mqtt_anonymous"] is not None

    await wait_for(answered)
    return body


@pytest.fixture
def logs() -> Iterator[Logs]:
    """Every log event of the test (the service's start included)."""
    with structlog.testing.capture_logs() as captured:
        yield captured


def _warnings(logs: Logs, text: str) -> Logs:
    return [e for e in logs if e["log_level"] == "warning" and text in e["event"]]


async def test_an_external_broker_open_to_anonymous_clients_is_ready_with_a_warning(
    logs: Logs, service: Service
) -> None:
    body = await _probed(service)
    assert (body["status"], body["mqtt"], body["mqtt_anonymous"]) == ("ok", True, True)
    [warning] = body["warnings"]
    assert warning.startswith("the MQTT broker accepts anonymous clients")
    assert "publish results for any device" in warning
    assert "allow_anonymous false" in warning
    [logged] = _warnings(logs, "the MQTT broker accepts anonymous clients")
    assert "read every command and download URL" in logged["event"]
    assert "@" not in logged["url"]


@pytest.fixture
def refusing_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(tmp_path / "dynsec", kind="mosquitto", dynsec=True).start() as broker:
        yield broker


@pytest.fixture
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """On the broker that refuses anonymous clients when the test asks for it."""
    if "refusing_broker" not in request.fixturenames:
        return settings
    broker: EmbeddedBroker = request.getfixturevalue("refusing_broker")
    return settings.model_copy(update={"mqtt_url": broker.url, "mqtt_version": "5.0"})


async def test_an_external_broker_that_refuses_anonymous_clients_gives_no_warning(
    logs: Logs, refusing_broker: EmbeddedBroker, service: Service
) -> None:
    body = await _probed(service)
    assert (body["status"], body["mqtt_anonymous"], body["warnings"]) == ("ok", False, [])
    assert not _warnings(logs, "anonymous")


async def test_the_probe_tells_an_open_broker_from_a_closed_one(
    mqtt_broker: EmbeddedBroker, refusing_broker: EmbeddedBroker
) -> None:
    assert await accepts_anonymous(mqtt_broker.url, version="5.0") is True
    assert await accepts_anonymous(mqtt_broker.url, version="3.1.1") is True
    # With the service's own credentials in the URL: the probe still logs in as nobody.
    assert await accepts_anonymous(refusing_broker.url, version="5.0") is False


def _defaults(tmp_path: Path, redis_url: str, **fields: Any) -> Settings:
    return Settings(redis_url=redis_url, data_dir=tmp_path / "data", **fields)


def test_without_mosquitto_the_embedded_broker_says_at_start_it_accepts_anonymous_clients(
    logs: Logs,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(embedded, "mosquitto_binary", lambda: None)
    with embedded_servers(_defaults(tmp_path, redis_url)) as resolved:
        assert resolved.mqtt_provision == "none"
        assert resolved.mqtt_version == "3.1.1"  # amqtt
        print_banner(resolved, embedded_redis=False, embedded_broker=True)
    [warning] = _warnings(logs, "the embedded MQTT broker accepts anonymous clients")
    assert "Mosquitto is not installed" in warning["event"]
    assert "publish results for any device" in warning["event"]
    assert "install Mosquitto" in warning["event"]
    banner = capsys.readouterr().err
    assert "ACCEPTS ANONYMOUS CLIENTS" in banner


async def test_provision_none_relaxes_the_embedded_broker_to_anonymous_and_says_so(
    logs: Logs, redis_url: str, tmp_path: Path
) -> None:
    with embedded_servers(_defaults(tmp_path, redis_url, mqtt_provision="none")) as resolved:
        assert resolved.mqtt_provision == "none"
        assert await accepts_anonymous(resolved.mqtt_url, version="5.0") is True
    [warning] = _warnings(logs, "the embedded MQTT broker accepts anonymous clients")
    assert "OTA_MQTT_PROVISION=none" in warning["event"]


async def test_by_default_the_embedded_broker_refuses_anonymous_clients_and_hides_its_password(
    logs: Logs, redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with embedded_servers(_defaults(tmp_path, redis_url)) as resolved:
        assert resolved.mqtt_provision == "dynsec"
        assert await accepts_anonymous(resolved.mqtt_url, version="5.0") is False
        password = resolved.mqtt_url.split("@")[0].rsplit(":", 1)[1]
        print_banner(resolved, embedded_redis=False, embedded_broker=True)
    banner = capsys.readouterr().err
    assert "devices log in with user name and client id = device id" in banner
    assert password not in banner
    assert not _warnings(logs, "anonymous")
    assert all(password not in str(event) for event in logs)
