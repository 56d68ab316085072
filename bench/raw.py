"""Raw MQTT baselines: the client libraries alone, on the broker and with the fleet of the run.

Publishing: N QoS 2 messages shaped like a `download_firmware` command (topic
`{device_id}/control/download_firmware`, the same JSON fields and size), PUBLISH_BATCH in
flight at once (asyncio.gather per batch, as the engine's dispatch step does); timed from the
first publish until the fleet has received the last one (or the last PUBCOMP, if later).

Receiving: the fleet publishes N results (QoS 1) as fast as it can while a subscriber on the
shared filter counts them; timed from the first result published to the last one received.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aiomqtt
import zmqtt
from faststream.mqtt import MQTTBroker

from bench.fleet_client import FleetClient
from orchestrator.transport.batched import open_batched
from orchestrator.transport.clients import zmqtt_client

PUBLISH_BATCH = 500  # the engine's DISPATCH_BATCH: publishes in flight at once
WAIT_S = 120.0

# aiomqtt warns on every publish past 10 pending; 500 in flight is what we mean to do.
QUIET = logging.getLogger("bench.aiomqtt")
QUIET.setLevel(logging.ERROR)


@dataclass(frozen=True)
class Rate:
    """`count` messages in `seconds`."""

    count: int
    seconds: float
    note: str = ""

    @property
    def per_s(self) -> float:
        """Messages per second (0 when nothing was timed)."""
        return self.count / self.seconds if self.seconds > 0 else 0.0


def command_messages(n: int, public_url: str) -> list[tuple[str, bytes, str]]:
    """(topic, body, command id) like the engine's download_firmware commands."""
    messages = []
    for _ in range(n):
        command_id = uuid.uuid4().hex
        payload = {
            "file_name": "fw_bench.bin",
            "url": f"{public_url}/v2/device/download?key=dk_{secrets.token_urlsafe(24)}",
            "expires_at": "2026-11-22T12:30:00Z",
            "size": 4096,
            "sha256": secrets.token_hex(32),
            "command_id": command_id,
            "version": "2.1.0",
            "rollout_id": str(uuid.uuid4()),
        }
        body = json.dumps(payload, separators=(",", ":")).encode()
        messages.append((f"{uuid.uuid4()}/control/download_firmware", body, command_id))
    return messages


def _publish_rate(n: int, started: float, published: float, fleet: dict[str, Any]) -> Rate:
    end = max(published, float(fleet["last_command_at"]))
    note = "" if fleet["received"] == n else f"fleet received {fleet['received']} of {n}"
    return Rate(int(fleet["received"]), end - started, note)


async def zmqtt_publish(
    url: str, fleet: FleetClient, messages: list[tuple[str, bytes, str]], *, batched: bool = False
) -> Rate:
    """FastStream's MQTTBroker (zmqtt) publishing QoS 2, with CommandTransport's options.

    `batched`: zmqtt's client on the transport CommandTransport uses (writes sent once per
    loop turn), as CommandTransport publishes, rather than FastStream's MQTTBroker.
    """
    client_id = f"bench-zmqtt-pub-{uuid.uuid4().hex[:8]}"
    reconnect = zmqtt.ReconnectConfig(max_attempts=None, initial_delay=0.5, max_delay=10.0)
    if batched:  # as CommandTransport does: zmqtt's client on the batched transport
        client = zmqtt_client(
            url,
            client_id=client_id,
            version="5.0",
            reconnect=reconnect,
            mqtt_connect_timeout=10.0,
            transport_factory=open_batched,
        )

        async def publish(topic: str, body: bytes, command_id: str) -> None:
            properties = zmqtt.PublishProperties(correlation_data=command_id.encode())
            await client.publish(
                topic, body, qos=zmqtt.QoS.EXACTLY_ONCE, retain=False, properties=properties
            )

        start_client, stop_client = client.connect, client.disconnect
    else:
        broker = MQTTBroker(
            url,
            client_id=client_id,
            version="5.0",
            reconnect=reconnect,
            mqtt_connect_timeout=10.0,
            logger=None,
        )

        async def publish(topic: str, body: bytes, command_id: str) -> None:
            await broker.publish(
                body, topic, qos=zmqtt.QoS.EXACTLY_ONCE, retain=False, correlation_id=command_id
            )

        start_client, stop_client = broker.start, broker.stop
    await start_client()
    try:
        await fleet.call("expect", mode="count", n=len(messages))
        started = time.time()
        for start in range(0, len(messages), PUBLISH_BATCH):
            batch = messages[start : start + PUBLISH_BATCH]
            await asyncio.gather(*(publish(*message) for message in batch))
        published = time.time()
        seen = await fleet.call("wait", timeout_s=WAIT_S)
    finally:
        await stop_client()
    return _publish_rate(len(messages), started, published, seen)


async def aiomqtt_publish(
    host: str, port: int, fleet: FleetClient, messages: list[tuple[str, bytes, str]]
) -> Rate:
    """aiomqtt (paho-mqtt) publishing QoS 2 with the broker's in-flight window (1000)."""
    async with aiomqtt.Client(
        host,
        port,
        identifier=f"bench-aiomqtt-pub-{uuid.uuid4().hex[:8]}",
        protocol=aiomqtt.ProtocolVersion.V5,
        max_inflight_messages=1000,
        logger=QUIET,
        timeout=WAIT_S,
    ) as client:
        await fleet.call("expect", mode="count", n=len(messages))
        started = time.time()
        for start in range(0, len(messages), PUBLISH_BATCH):
            await asyncio.gather(
                *(
                    client.publish(topic, body, qos=2)
                    for topic, body, _ in messages[start : start + PUBLISH_BATCH]
                )
            )
        published = time.time()
        seen = await fleet.call("wait", timeout_s=WAIT_S)
    return _publish_rate(len(messages), started, published, seen)


class _Counter:
    """Counts received messages; sets `done` at the n-th."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0
        self.last_at = 0.0
        self.done = asyncio.Event()

    def hit(self) -> None:
        self.count += 1
        self.last_at = time.time()
        if self.count >= self.n:
            self.done.set()


async def _receive_rate(fleet: FleetClient, counter: _Counter) -> tuple[Rate, Rate]:
    """Have the fleet publish; (receive rate, the fleet's publish rate)."""
    sent = await fleet.call("publish_results", n=counter.n)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(counter.done.wait(), WAIT_S)
    started = float(sent["first_result_at"])
    note = "" if counter.count == counter.n else f"received {counter.count} of {counter.n}"
    publisher = Rate(int(sent["results_published"]), float(sent["last_result_acked_at"]) - started)
    return Rate(counter.count, counter.last_at - started, note), publisher


async def zmqtt_receive(
    host: str, port: int, fleet: FleetClient, n: int, *, batched: bool = False
) -> tuple[Rate, Rate]:
    """zmqtt alone on a shared filter, counting, with a persistent session as the engine's.

    `batched`: through the transport the engine's ResultSubscriber gives zmqtt (writes sent
    once per loop turn) rather than zmqtt's own.
    """
    counter = _Counter(n)
    client = zmqtt.MQTTClient(
        host,
        port,
        client_id=f"bench-zmqtt-sub-{uuid.uuid4().hex[:8]}",
        version="5.0",
        clean_session=False,
        session_expiry_interval=60,
        session_replay_buffer_size=0,
        transport_factory=open_batched if batched else None,
    )
    await client.connect()
    try:
        subscription = client.subscribe(
            "$share/bench/+/control/+/result", qos=zmqtt.QoS.AT_LEAST_ONCE
        )
        await subscription.start()

        async def count() -> None:
            async for _ in subscription:
                counter.hit()

        reader = asyncio.create_task(count())
        try:
            return await _receive_rate(fleet, counter)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await subscription.stop()  # UNSUBSCRIBE: the session keeps nothing for later runs
    finally:
        await client.disconnect()


async def aiomqtt_receive(host: str, port: int, fleet: FleetClient, n: int) -> tuple[Rate, Rate]:
    """aiomqtt on a shared filter (its own group), counting results."""
    counter = _Counter(n)
    async with aiomqtt.Client(
        host,
        port,
        identifier=f"bench-aiomqtt-sub-{uuid.uuid4().hex[:8]}",
        protocol=aiomqtt.ProtocolVersion.V5,
        max_inflight_messages=1000,
        logger=QUIET,
        timeout=WAIT_S,
    ) as client:
        await client.subscribe("$share/bench-aiomqtt/+/control/+/result", qos=1)

        async def count() -> None:
            async for _ in client.messages:
                counter.hit()

        reader = asyncio.create_task(count())
        try:
            return await _receive_rate(fleet, counter)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
