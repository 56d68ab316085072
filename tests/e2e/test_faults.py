"""Rollouts under faults: engine kill -9s, broker and Redis restarts, a device that stalls
mid-download, garbage on result topics.

One broker restart keeps its saved sessions and queues, another comes back without them (the
file lost): the engine sends the same command again to devices that went silent, and devices
answer a repeated command id with their last result, so nothing lost there becomes a timeout.

The API runs in the test's process; the engine is an `ota serve --role engine` child process
that is killed and started again under its instance id. The devices are the product's own
simulator: one persistent MQTT session each, results at QoS 1, downloads from the API with
resume, a repeated command id answered with its last result (ARCHITECTURE §5). Redis (AOF on)
and Mosquitto (persistence on) are the test's own, restarted in order on their ports.

A device stalls mid-download: it stops reading part-way through the firmware and either holds
its connection open or hangs up, for seconds. The service ends the stalled transfer and frees
the key's claim without spending it; the device resumes with Range on the same key.

Each run is seeded: the order of the faults and the pauses between them follow the seed, and
so do which device stalls (its place in the rollout's order, so when), how far it gets, how
long it stalls and whether it hangs up. CI runs one; `make soak` runs OTA_FAULT_RUNS of them
(OTA_FAULT_DEVICES devices each).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import random
from collections.abc import Sequence
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.client import ApiClient
from orchestrator.domain.cohorts import order_key
from orchestrator.embedded import EmbeddedBroker
from orchestrator.settings import Settings
from orchestrator.simulator.behaviour import Behaviour, Stall
from orchestrator.simulator.device import SimulatedDevice
from orchestrator.simulator.fleet import Fleet as SimulatedFleet
from orchestrator.simulator.mqtt_client import Client
from orchestrator.store import download_keys
from tests.conftest import Service, wait_for
from tests.e2e.engines import EngineProcess, Engines
from tests.e2e.servers import RestartableRedis, own_redis, redis_url
from tests.e2e.test_rollouts import view, wait_state
from tests.e2e.test_stalls import FIRMWARE, STALL_LEASE_MS, key_events

__all__ = ["own_redis", "redis_url"]  # every part of the service on the restartable Redis

pytestmark = pytest.mark.faults

RUNS = int(os.environ.get("OTA_FAULT_RUNS", "1"))
DEVICES = int(os.environ.get("OTA_FAULT_DEVICES", "30"))
PLAN = """
name: {name}
firmware: {{file: fw_3.0.0.bin, version: 3.0.0}}
waves: [{{name: canary, percent: 20}}, {{percent: 100}}]
policy:
  max_failure_rate: 5%
  ack_timeout: 40s
  device_timeout: 60s
  rate: 15/s
  max_in_flight: 8
"""
GARBAGE: list[tuple[str, bytes]] = [
    ("own", b"not json at all"),
    ("own", b'{"command_id": 7, "status": ["success"]}'),
    ("own", b'{"command_id": "' + b"x" * (1024 * 1024) + b'", "status": "success"}'),
    ("own", json.dumps({"command_id": "forged-0001", "status": "success"}).encode()),
    ("unknown", json.dumps({"command_id": "forged-0002", "status": "success"}).encode()),
]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Only the API runs in the test's process; the engine is a child process (`engines`)."""
    return settings.model_copy(update={"role": "api"})


async def publish_garbage(broker: EmbeddedBroker, device_id: str) -> int:
    """Publish every kind of bad result once; how many were published."""
    async with Client("127.0.0.1", broker.port, identifier=None) as client:
        for whose, payload in GARBAGE:
            owner = device_id if whose == "own" else "no-such-device"
            await client.publish(f"{owner}/control/download_firmware/result", payload, qos=1)
    return len(GARBAGE)


def seeded_stall(
    seed: int, rollout_name: str, devices: Sequence[SimulatedDevice]
) -> tuple[int, SimulatedDevice, Stall]:
    """The device at a place in the rollout's order the seed picks, and how it stalls."""
    rng = random.Random(f"{seed}:stall")  # its own draws: the other faults keep theirs
    order = sorted(devices, key=lambda device: order_key(rollout_name, device.id))
    position = rng.randrange(len(order))
    stall = Stall(at=rng.uniform(0.1, 0.3), for_s=rng.uniform(3.0, 5.0), hangup=rng.random() < 0.5)
    return position, order[position], stall


def wipe_persistence(broker: EmbeddedBroker) -> None:
    """Delete the stopped broker's saved sessions and queues."""
    for saved in broker.data_dir.glob("*.db"):
        saved.unlink()


def reconnections(engine: EngineProcess) -> int:
    """How many times the engine's MQTT clients reconnected (zmqtt logs each)."""
    return sum(1 for e in engine.log_events() if e.get("event") == "Successfully reconnected")


async def ignored_results(engine: EngineProcess) -> dict[str, float]:
    """The engine's ota_results_ignored_total by reason."""
    async with httpx.AsyncClient(base_url=engine.base_url, timeout=10) as client:
        exposition = (await client.get("/metrics")).text
    return {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == "ota_results_ignored_total" and sample.value
    }


async def stacks_of_unfinished(
    service: Service, rollout_id: str, fleet: SimulatedFleet
) -> dict[str, str]:
    """Where the task of each simulated device that did not succeed is waiting, for the report
    of a failure: a device that never answers shows the await it is stuck in."""
    ids = [device.id for device in fleet.devices]
    records = await service.stores.rollout_devices.device_states(rollout_id, ids)
    unfinished = {
        device_id
        for device_id, record in zip(ids, records, strict=True)
        if record.get("state") != "succeeded"
    }
    return {
        task.get_name().removeprefix("device "): awaiting(task.get_coro())
        for task in fleet._tasks
        if task.get_name().removeprefix("device ") in unfinished
    }


def awaiting(awaitable: object) -> str:
    """The chain of awaits a suspended coroutine is in, outermost first (a task's own stack
    shows only its outermost frame)."""
    lines = []
    while awaitable is not None:
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "ag_frame", None)
        if frame is None:
            lines.append(repr(awaitable)[:200])  # a future, a task or a generator-based await
            break
        lines.append(f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "ag_await", None)
        if type(awaitable).__name__ == "async_generator_asend":
            # an asend hides its generator; an async context manager's __aenter__ holds it
            owner = frame.f_locals.get("self")
            awaitable = getattr(owner, "gen", awaitable)
    return "\n".join(lines)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("seed", range(RUNS))
async def test_a_rollout_under_faults_ends_completed_with_every_result_counted(
    seed: int,
    service: Service,
    mqtt_broker: EmbeddedBroker,
    own_redis: RestartableRedis,
    engines: Engines,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(seed)
    name = f"under-faults-{seed}"
    monkeypatch.setattr(download_keys, "CLAIM_LEASE_MS", STALL_LEASE_MS)
    assert (await service.upload("fw_3.0.0.bin", FIRMWARE)).status_code == 201
    api = ApiClient(service.base_url, service.admin_key, service.project_id)
    fleet = SimulatedFleet(
        api,
        "127.0.0.1",
        mqtt_broker.port,
        Behaviour(latency_s=(0.1, 0.8), seed=seed),
        name_prefix=f"fault-{seed}",
    )
    async with api, fleet:
        await fleet.start(DEVICES)
        position, stalled, stall = seeded_stall(seed, name, fleet.devices)
        stalled.stall_next_download(stall)
        engine = await engines.start(f"fault-{seed}")
        response = await service.client.post(
            f"/v2/projects/{service.project_id}/rollouts",
            content=PLAN.format(name=name),
            headers={"Content-Type": "application/yaml"},
        )
        assert response.status_code == 201, response.text
        rollout_id = response.json()["data"]["id"]

        faults = ["kill", "kill", "kill", "broker", "broker-wiped", "redis"]
        rng.shuffle(faults)
        done_faults: list[str] = []
        reconnected_at_least = 0  # the current engine's reconnections the broker restart makes
        for fault in faults:
            await asyncio.sleep(rng.uniform(0.3, 2.5))
            if fault == "kill":
                await engines.kill(engine)
                await asyncio.sleep(rng.uniform(0.0, 1.0))
                engine = await engines.start(f"fault-{seed}")
                reconnected_at_least = 0
            elif fault.startswith("broker"):
                reconnected_at_least = reconnections(engine) + 2  # commands and results
                # SIGTERM: the queues are saved; unless the broker comes back without them
                # (its persistence file lost): sessions, queued commands and results gone.
                wipe = functools.partial(wipe_persistence, mqtt_broker)
                between = wipe if fault == "broker-wiped" else None
                await asyncio.to_thread(mqtt_broker.restart, between=between)
            else:
                await asyncio.to_thread(own_redis.restart)  # SIGTERM: the AOF is complete
            done_faults.append(fault)
        done = await wait_state(
            service, rollout_id, "completed", "halted", "rolled_back", timeout_s=150
        )
        stats = fleet.stats
        # A result published while the broker is back but the engine has not subscribed again
        # is dropped by Mosquitto (it does not restore shared subscriptions from its
        # persistence), so the garbage waits for the engine's reconnection.
        await wait_for(
            lambda: asyncio.sleep(0, reconnections(engine) >= reconnected_at_least),
            timeout_s=30,
            interval_s=0.1,
        )
        sent_garbage = await publish_garbage(mqtt_broker, fleet.devices[0].id)
        waiting = await stacks_of_unfinished(service, rollout_id, fleet)

    context: dict[str, Any] = {
        "faults": done_faults,
        "stall": {"position": position, "device": stalled.id, **dataclasses.asdict(stall)},
        "reason": done["reason"],
        "counts": {state: n for state, n in done["counts"].items() if n},
        "fleet": {"commands": stats.commands, "duplicates": stats.duplicates},
        "where the devices that did not succeed wait": waiting,
    }
    shown = json.dumps(context, indent=1, default=str)  # whole: pytest cuts a dict's repr short
    assert done["state"] == "completed", shown
    assert done["counts"]["succeeded"] == DEVICES, shown
    assert sum(done["counts"].values()) == done["total"] == DEVICES, shown
    assert sum(sum(wave["counts"].values()) for wave in done["waves"]) == DEVICES, shown
    records = await service.stores.rollout_devices.device_states(
        rollout_id, [device.id for device in fleet.devices]
    )
    several = {r.get("command_id"): r.get("attempts") for r in records if r.get("attempts") != "1"}
    assert not several, f"devices given more than one command id: {several}; {shown}"
    assert stats.commands == DEVICES, f"a device obeyed a command twice; {shown}"
    assert stats.stalled_downloads == 1, shown
    [stalled_record] = [r for d, r in zip(fleet.devices, records, strict=True) if d is stalled]
    events = await key_events(service, stalled_record["key"])
    # The service ended (or saw the end of) the stalled transfer without spending the key, and
    # the device came back to it: a second claim, and at most one delivery (a Redis restart
    # during the last transfer's release may leave it unspent; success revokes it then).
    assert events.count("claimed") >= 2, {**context, "key events": events}
    assert events.count("delivered") <= 1, {**context, "key events": events}
    ignored: dict[str, float] = {}

    async def garbage_counted() -> bool:
        ignored.update(await ignored_results(engine))
        reasons = ("malformed", "too_large", "unknown_command")
        return sum(ignored.get(reason, 0) for reason in reasons) >= sent_garbage

    with contextlib.suppress(TimeoutError):
        await wait_for(garbage_counted, timeout_s=20, interval_s=0.2)
    assert ignored.get("malformed", 0) >= 2, {**context, "ignored": ignored}
    assert ignored.get("too_large", 0) >= 1, {**context, "ignored": ignored}
    assert ignored.get("unknown_command", 0) >= 2, {**context, "ignored": ignored}
    final = await view(service, rollout_id)
    assert final["counts"] == done["counts"], "the counts moved after the rollout ended"
