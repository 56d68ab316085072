"""Without Mosquitto the embedded broker is amqtt (MQTT 3.1.1 only): commands still flow."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiomqtt
import pytest

from orchestrator.embedded import EmbeddedBroker
from orchestrator.settings import Settings
from tests.conftest import Service


@pytest.fixture
def amqtt_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(tmp_path / "amqtt", kind="amqtt").start() as broker:
        yield broker


@pytest.fixture
def settings(settings: Settings, amqtt_broker: EmbeddedBroker) -> Settings:
    """The test's settings, on the amqtt broker with the version it speaks."""
    assert amqtt_broker.mqtt_version == "3.1.1"
    return settings.model_copy(
        update={"mqtt_url": amqtt_broker.url, "mqtt_version": amqtt_broker.mqtt_version}
    )


@pytest.fixture
async def device_client(amqtt_broker: EmbeddedBroker) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client(
        "127.0.0.1", amqtt_broker.port, protocol=aiomqtt.ProtocolVersion.V311
    ) as client:
        yield client


async def test_a_command_reaches_a_device_through_amqtt_with_qos_2(
    service: Service, device_client: aiomqtt.Client
) -> None:
    assert (await service.client.get("/readyz")).json()["mqtt"] is True
    device = await service.create_device(name="on-amqtt")
    device_id = device["metadata"]["device_id"]
    await device_client.subscribe(f"{device_id}/control/#", qos=2)

    response = await service.client.post(
        f"/v2/projects/{service.project_id}/devices/{device_id}/communication/command",
        json={"command": "reboot", "data": {}},
    )
    assert response.status_code == 200, response.text

    async with asyncio.timeout(10):
        message = await anext(aiter(device_client.messages))
    assert str(message.topic) == f"{device_id}/control/reboot"
    assert message.qos == 2
    assert json.loads(message.payload) == {"command_id": response.json()["data"]["command_id"]}
