"""The engine re-sends what a crash left unpublished, and nothing its own sends delivered.

Real Redis and mosquitto; the driver is stepped by hand to place a send's end exactly while
the unpublished devices are being read.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import aiomqtt
import pytest
from prometheus_client import CollectorRegistry

from orchestrator.domain.plans import Plan
from orchestrator.domain.states import DeviceState
from orchestrator.embedded import EmbeddedBroker
from orchestrator.engine.context import EngineContext
from orchestrator.engine.sender import RESENDABLE, CommandSender
from orchestrator.metrics import Metrics
from orchestrator.settings import Settings
from orchestrator.store import Stores
from orchestrator.store.download_keys import DownloadKey
from orchestrator.store.redis import members
from orchestrator.store.rollout_devices import Grant
from orchestrator.store.rollouts import RolloutRecord
from orchestrator.transport.mqtt import CommandTransport
from tests.engine.conftest import WAIT_S, stored_rollout
from tests.store.test_rollouts import start


async def sent_rollout(stores: Stores, devices: list[str]) -> str:
    """A running rollout whose devices were all dispatched (sent, not yet marked published)."""
    rollout_id, project_id = await stored_rollout(stores, devices)
    await start(stores, rollout_id)
    sent = await stores.rollout_devices.dispatch(
        rollout_id,
        count=len(devices),
        reach=len(devices),
        ack_deadline_ms=4_000_000_000_000,
        grant=Grant(project_id=project_id, file_name="fw_2.1.0.bin", size=4096, key_ttl_s=600),
    )
    assert sorted(item.device_id for item in sent) == sorted(devices)
    return rollout_id


async def commands_before_marker(
    broker: EmbeddedBroker, transport: CommandTransport, run: str, republish: asyncio.Task[None]
) -> list[str]:
    """Device ids of the commands that arrive before a marker published after `republish`."""
    arrived: list[str] = []
    async with aiomqtt.Client(broker.host, broker.port) as device_side:
        await device_side.subscribe("+/control/+", qos=2)
        await republish
        # One publisher, one subscriber: the broker keeps the order, so the marker comes last.
        await transport.publish_command(f"{run}-marker", "reboot", {"command_id": "marker"})
        async with asyncio.timeout(WAIT_S):
            async for message in device_side.messages:
                device_id = str(message.topic).split("/")[0]
                if device_id == f"{run}-marker":
                    return arrived
                if device_id.startswith(run):  # another test's commands are not this one's
                    arrived.append(device_id)
    raise AssertionError("the marker never came")


async def never_halt(record: RolloutRecord, reason: str) -> bool:
    raise AssertionError(f"the rollout was halted: {reason}")


async def test_a_send_that_ends_while_the_unpublished_are_read_is_not_sent_again(
    settings: Settings,
    stores: Stores,
    mqtt_broker: EmbeddedBroker,
    transport: CommandTransport,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = f"dev-{uuid.uuid4().hex[:8]}"
    devices = [f"{run}-{i}" for i in range(3)]
    rollout_id = await sent_rollout(stores, devices)
    context = EngineContext(settings, stores, transport, Metrics(CollectorRegistry()))
    sender = CommandSender(rollout_id, context, halt=never_halt)
    sender._in_flight.update(devices)  # their publish is under way, as start_sending leaves it
    read_unpublished = stores.rollout_devices.unpublished

    async def read_while_the_send_ends(rollout: str) -> list[str]:
        found = await read_unpublished(rollout)
        # The send ends now: its devices are published and leave _in_flight.
        await stores.rollout_devices.mark_published(rollout, *devices)
        sender._in_flight.difference_update(devices)
        return found

    monkeypatch.setattr(stores.rollout_devices, "unpublished", read_while_the_send_ends)
    record = await stores.rollouts.get(rollout_id)
    assert record is not None

    async def republish() -> None:
        await sender.republish(record, Plan.model_validate(record.plan))
        await sender.drain()  # sends run on in the background

    stepping = asyncio.create_task(republish())
    arrived = await commands_before_marker(mqtt_broker, transport, run, stepping)

    assert arrived == []


async def test_a_device_left_unpublished_is_sent_again_with_its_command_id(
    settings: Settings, stores: Stores, mqtt_broker: EmbeddedBroker, transport: CommandTransport
) -> None:
    run = f"dev-{uuid.uuid4().hex[:8]}"
    devices = [f"{run}-{i}" for i in range(2)]
    rollout_id = await sent_rollout(stores, devices)
    command_ids = {
        d: (await stores.rollout_devices.device(rollout_id, d))["command_id"] for d in devices
    }
    context = EngineContext(settings, stores, transport, Metrics(CollectorRegistry()))
    sender = CommandSender(rollout_id, context, halt=never_halt)  # a new engine: nothing in flight
    record = await stores.rollouts.get(rollout_id)
    assert record is not None
    received: dict[str, str] = {}
    async with aiomqtt.Client(mqtt_broker.host, mqtt_broker.port) as device_side:
        await device_side.subscribe("+/control/+", qos=2)
        await sender.republish(record, Plan.model_validate(record.plan))
        async with asyncio.timeout(WAIT_S):
            async for message in device_side.messages:
                device_id = str(message.topic).split("/")[0]
                if device_id.startswith(run):
                    received[device_id] = json.loads(bytes(message.payload))["command_id"]
                if len(received) == len(devices):
                    break
        await sender.drain()  # the sends run on in the background

    assert received == command_ids
    assert await stores.rollout_devices.unpublished(rollout_id) == []


async def test_a_device_that_finishes_while_its_command_is_sent_again_keeps_its_key_record(
    settings: Settings,
    stores: Stores,
    mqtt_broker: EmbeddedBroker,
    transport: CommandTransport,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A silent device is sent its command again; its success lands (which revokes its key)
    after its state was read but before the sender looked at that key. The sender must not
    give the finished device a new live key, nor write it over the key the device used."""
    run = f"dev-{uuid.uuid4().hex[:8]}"
    [device] = devices = [f"{run}-0"]
    rollout_id = await sent_rollout(stores, devices)
    before = await stores.rollout_devices.device(rollout_id, device)
    context = EngineContext(settings, stores, transport, Metrics(CollectorRegistry()))
    sender = CommandSender(rollout_id, context, halt=never_halt)
    record = await stores.rollouts.get(rollout_id)
    assert record is not None
    get_key = stores.download_keys.get

    async def success_lands_first(key: str) -> DownloadKey | None:
        # What applying the device's success does to it: final, its key revoked.
        await stores.redis.hset(
            stores.keys.rollout_device(rollout_id, device), "state", DeviceState.SUCCEEDED.value
        )
        await stores.download_keys.revoke(key)
        return await get_key(key)

    monkeypatch.setattr(stores.download_keys, "get", success_lands_first)
    await sender._send_again(
        record, Plan.model_validate(record.plan), {device: before}, waiting=RESENDABLE
    )
    await sender.drain()

    after = await stores.rollout_devices.device(rollout_id, device)
    assert after["key"] == before["key"]
    live = [
        key
        for key in members(await stores.redis.smembers(stores.keys.device_download_keys(device)))
        if await stores.download_keys.state(key) is not None
    ]
    assert live == [], "a finished device was given a new live download key"
