"""A device made of a real MQTT client, and the headers a device downloads with."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiomqtt

from orchestrator.embedded import EmbeddedBroker


@dataclass
class Inbox:
    """What one device receives on `{device_id}/control/#` (subscribed with QoS 2)."""

    device_id: str
    client: aiomqtt.Client

    async def next(self, timeout_s: float = 5.0) -> aiomqtt.Message:
        """The next message, failing the test after `timeout_s`."""
        async with asyncio.timeout(timeout_s):
            return await anext(self.client.messages)


@asynccontextmanager
async def device_inbox(broker: EmbeddedBroker, device_id: str) -> AsyncIterator[Inbox]:
    """Connect as the device and subscribe to its control topics before anything is sent."""
    async with aiomqtt.Client(broker.host, broker.port, identifier=f"test-{device_id}") as client:
        await client.subscribe(f"{device_id}/control/#", qos=2)
        yield Inbox(device_id, client)


def payload_of(message: aiomqtt.Message) -> dict[str, Any]:
    """A command message's JSON object."""
    assert isinstance(message.payload, bytes)
    payload = json.loads(message.payload)
    assert isinstance(payload, dict)
    return payload


def basic(token: str) -> dict[str, str]:
    """The seed's device auth: `Authorization: Basic {device_token}`."""
    return {"Authorization": f"Basic {token}"}


def standard_basic(device_id: str, token: str) -> dict[str, str]:
    """RFC 7617 Basic auth: base64 of `device_id:token`."""
    credential = base64.b64encode(f"{device_id}:{token}".encode()).decode()
    return {"Authorization": f"Basic {credential}"}
