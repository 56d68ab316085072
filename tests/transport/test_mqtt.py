"""CommandTransport: what reaches a device is standard JSON, whatever the payload held."""

from __future__ import annotations

import asyncio
import json
import math
import uuid

import aiomqtt
import pytest

from orchestrator.embedded import EmbeddedBroker
from orchestrator.errors import InvalidInput
from orchestrator.transport.mqtt import CommandTransport

WAIT_S = 10.0


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
async def test_a_payload_with_nan_or_infinity_is_refused_and_never_published(
    mqtt_broker: EmbeddedBroker, number: float
) -> None:
    transport = CommandTransport(mqtt_broker.url, client_id=f"test-cmd-{uuid.uuid4().hex[:8]}")
    device = f"dev-{uuid.uuid4().hex[:8]}"
    async with aiomqtt.Client(mqtt_broker.host, mqtt_broker.port) as device_client:
        await device_client.subscribe(f"{device}/control/+", qos=2)
        await transport.start()
        try:
            assert await transport.wait_connected(WAIT_S)
            with pytest.raises(InvalidInput, match=r"payload\.limits\.1 is (NaN|Infinity)"):
                await transport.publish_command(
                    device, "configuration", {"command_id": "c-1", "limits": [1, number]}
                )
            await transport.publish_command(device, "reboot", {"command_id": "c-2"})
            async with asyncio.timeout(WAIT_S):
                message = await anext(aiter(device_client.messages))
        finally:
            await transport.stop()
    # The first message the device hears is the one sent after the refused one.
    assert str(message.topic) == f"{device}/control/reboot"
    assert isinstance(message.payload, bytes)
    assert json.loads(message.payload) == {"command_id": "c-2"}
