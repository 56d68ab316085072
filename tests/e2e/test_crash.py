"""Engine crashes and restarts: the engine runs as its own `ota serve --role engine` process.

The in-process service is the API only; the engine is a child process the tests kill
(SIGKILL), stop in order (SIGTERM) and start again, on the same Redis and mosquitto. Devices
download from the in-process API (OTA_PUBLIC_URL points at it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import aiomqtt
import pytest

from orchestrator.domain.states import RolloutAction, RolloutState
from orchestrator.embedded import EmbeddedBroker
from orchestrator.engine.commands import file_command_payload
from orchestrator.settings import Settings
from orchestrator.store.rollout_devices import Grant
from orchestrator.timeutil import isoformat_z, utc_now
from orchestrator.transport.topics import command_topic
from tests.conftest import Service, wait_for
from tests.e2e.engines import EngineProcess, Engines
from tests.e2e.fleet import Fleet
from tests.e2e.test_rollouts import download_commands, start, upload_both, view, wait_state


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Only the API runs in the test's process; the engine is a child process (`engines`)."""
    return settings.model_copy(update={"role": "api"})


# --- helpers ---------------------------------------------------------------------------


def in_flight(counts: Mapping[str, int]) -> int:
    return counts["sent"] + counts["downloading"] + counts["installing"]


def command_ids(fleet: Fleet, device_id: str) -> set[str]:
    """The distinct command ids of the firmware commands the device received."""
    return {c["command_id"] for c in download_commands(fleet, device_id)}


def assert_one_command_id_each(fleet: Fleet) -> None:
    """Every device saw exactly one command id (perhaps twice: the allowed re-publish)."""
    seen = {device_id: command_ids(fleet, device_id) for device_id in fleet.devices}
    several = {device_id: ids for device_id, ids in seen.items() if len(ids) != 1}
    assert not several, f"devices with other than one command id: {several}"


async def wait_mid_second_wave(
    service: Service, rollout_id: str, *, pending: int, working: int
) -> dict[str, Any]:
    """Until the second wave is being dispatched: some devices still pending, some working."""
    seen: dict[str, Any] = {}

    async def mid_wave() -> bool:
        seen.update(await view(service, rollout_id))
        counts = seen["counts"]
        return bool(
            seen["wave_index"] == 1
            and counts["pending"] >= pending
            and in_flight(counts) >= working
        )

    try:
        await wait_for(mid_wave, timeout_s=20, interval_s=0.05)
    except TimeoutError:
        pytest.fail(f"never caught the rollout mid-wave: {seen.get('state')} {seen.get('counts')}")
    return seen


async def wait_finished_by(engine: EngineProcess, rollout_id: str) -> None:
    """Until `engine` logs that it wrapped the rollout up (freed its devices)."""

    async def finished() -> bool:
        return any(
            e.get("event") == "rollout finished" and e.get("rollout_id") == rollout_id
            for e in engine.log_events()
        )

    try:
        await wait_for(finished, timeout_s=10, interval_s=0.1)
    except TimeoutError:
        pytest.fail(f"{engine.instance_id} did not finish {rollout_id}:\n{engine.log_tail()}")


async def end_mqtt_session(broker: EmbeddedBroker, settings: Settings, client_id: str) -> None:
    """Discard the broker's persistent session of `client_id` (what its expiry would do)."""
    if settings.mqtt_version == "5.0":
        client = aiomqtt.Client(
            "127.0.0.1",
            broker.port,
            identifier=client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=True,  # with no session expiry: the session ends at disconnect
        )
    else:
        client = aiomqtt.Client("127.0.0.1", broker.port, identifier=client_id, clean_session=True)
    async with client:
        pass


CRASH_PLAN = """
name: {name}
firmware: {{file: fw_2.1.0.bin, version: 2.1.0}}
waves:
  - {{name: canary, devices: 5}}
  - percent: 100
policy: {{max_failure_rate: 5%, rate: 5/s, ack_timeout: 30s, device_timeout: 60s}}
"""


# --- tests -----------------------------------------------------------------------------


async def test_an_engine_killed_mid_wave_and_restarted_with_its_id_finishes_the_rollout(
    service: Service, fleet: Fleet, engines: Engines
) -> None:
    """kill -9 while commands go out and results are in flight; the same id resumes it all."""
    await upload_both(service)
    devices = await fleet.add(30)
    for device in devices:
        device.latency_s = 0.15  # about 0.6 s per device: results are in flight at the kill
    engine = await engines.start("engine-a")
    rollout = await start(service, CRASH_PLAN.format(name="crash-kill"))
    await wait_mid_second_wave(service, rollout["id"], pending=5, working=3)
    await engines.kill(engine)
    reported_at_kill = sum(len(r) for r in fleet.results.values())
    assert fleet.busy  # devices are still at work: their results go out while no engine runs

    restarted = await engines.start("engine-a")
    done = await wait_state(service, rollout["id"], "completed", timeout_s=30)
    assert done["counts"]["succeeded"] == 30, done["counts"]
    assert sum(done["counts"].values()) == done["total"] == 30
    assert sum(sum(w["counts"].values()) for w in done["waves"]) == 30
    assert_one_command_id_each(fleet)
    assert await service.stores.rollout_devices.unpublished(rollout["id"]) == []
    reported_since = sum(len(r) for r in fleet.results.values()) - reported_at_kill
    assert await restarted.results_handled() >= reported_since
    await wait_finished_by(restarted, rollout["id"])


async def test_another_replica_takes_the_rollout_over_once_the_dead_ones_lease_lapses(
    service: Service,
    fleet: Fleet,
    engines: Engines,
    mqtt_broker: EmbeddedBroker,
) -> None:
    """A different instance id drives nothing while the lease lives, then finishes the rollout.

    Takes about LEASE_MS (15 s). Mosquitto hands a share of every result to each member of
    the shared subscription, connected or not: the dead replica's session would swallow
    about half of the results until it expires (3600 s). The test therefore holds the
    devices' results around the kill and ends that session, as its expiry would.
    """
    await upload_both(service)
    devices = await fleet.add(20)
    for device in devices:
        device.latency_s = 0.1
    engine_a = await engines.start("engine-a")
    rollout = await start(service, CRASH_PLAN.format(name="crash-takeover"))
    rollout_id = rollout["id"]
    await wait_mid_second_wave(service, rollout_id, pending=5, working=2)

    fleet.hold()
    rollout_devices = service.stores.rollout_devices

    async def every_result_applied() -> bool:
        """Each device's last published result is in Redis (a lost `received` is harmless)."""
        for device in devices:
            reports = fleet.results.get(device.id)
            if not reports:
                continue
            state = (await rollout_devices.device(rollout_id, device.id)).get("state")
            last = reports[-1]["status"]
            if last == "success" and state != "succeeded":
                return False
            if last == "installing" and state not in ("installing", "succeeded"):
                return False
        return True

    await wait_for(every_result_applied, timeout_s=10)
    await engines.kill(engine_a)
    await end_mqtt_session(mqtt_broker, service.settings, "engine-a-results")
    pending_at_kill = (await view(service, rollout_id))["counts"]["pending"]
    assert pending_at_kill >= 1

    engine_b = await engines.start("engine-b")
    fleet.release()
    lease = service.stores.keys.rollout_lease(rollout_id)

    async def lease_lapsed() -> bool:
        owner = await service.stores.redis.get(lease)
        if owner == "engine-a":
            # The dead replica still holds the lease: nobody dispatches.
            assert (await view(service, rollout_id))["counts"]["pending"] == pending_at_kill
            return False
        return True

    await wait_for(lease_lapsed, timeout_s=20, interval_s=0.2)
    done = await wait_state(service, rollout_id, "completed", timeout_s=20)
    assert done["counts"]["succeeded"] == 20, done["counts"]
    assert sum(done["counts"].values()) == done["total"] == 20
    assert_one_command_id_each(fleet)
    await wait_finished_by(engine_b, rollout_id)


async def test_results_sent_while_the_engine_is_stopped_are_handled_when_it_returns(
    service: Service, fleet: Fleet, engines: Engines
) -> None:
    """SIGTERM keeps the broker session: results published meanwhile arrive on restart."""
    await upload_both(service)
    for device in await fleet.add(12):
        device.latency_s = 0.15
    engine = await engines.start("engine-a")
    rollout = await start(
        service,
        """
name: orderly-restart
firmware: {file: fw_2.1.0.bin, version: 2.1.0}
waves:
  - {name: canary, devices: 4}
  - percent: 100
policy: {max_failure_rate: 5%, rate: 4/s, ack_timeout: 20s, device_timeout: 30s}
""",
    )
    rollout_id = rollout["id"]
    await wait_mid_second_wave(service, rollout_id, pending=2, working=2)
    fleet.hold()  # devices take their commands and keep their results until the engine is down
    await engines.terminate(engine)
    stopped = [e for e in engine.log_events() if e.get("event") == "engine stopped"]
    assert stopped, engine.log_tail()  # an orderly stop, not a crash
    assert stopped[0]["rollouts_handed_back"] == 1
    assert await service.stores.redis.get(service.stores.keys.rollout_lease(rollout_id)) is None

    before = sum(len(r) for r in fleet.results.values())
    fleet.release()

    async def all_reported() -> bool:
        return fleet.busy == 0

    await wait_for(all_reported, timeout_s=10)
    sent_while_down = sum(len(r) for r in fleet.results.values()) - before
    assert sent_while_down >= 2 * 4  # received, installing, success for every working device

    restarted = await engines.start("engine-a")
    # Well inside ack_timeout (20 s): a lost result would leave the rollout running here.
    done = await wait_state(service, rollout_id, "completed", timeout_s=15)
    assert done["counts"]["timed_out"] == 0
    assert done["counts"]["succeeded"] == 12, done["counts"]
    assert sum(done["counts"].values()) == done["total"] == 12
    assert_one_command_id_each(fleet)
    assert await restarted.results_handled() >= sent_while_down


async def _running_with_unpublished(
    service: Service, plan: str, count: int
) -> tuple[str, list[tuple[str, str]]]:
    """A running rollout with `count` devices moved to `sent` and never published.

    That is the state a crash between the dispatch script (which wrote each device's key and
    command record) and the publish leaves: it is made here through the store, with no engine
    running.
    """
    rollout = await start(service, plan)
    assert rollout["state"] == "pending"
    rollouts = service.stores.rollouts
    _, changed = await rollouts.change_state(
        rollout["id"],
        allowed_from=[RolloutState.PENDING],
        to=RolloutState.RUNNING,
        reason="started by the test",
        actor="test",
        action=RolloutAction.START,
        at=isoformat_z(utc_now()),
    )
    assert changed
    record = await rollouts.get(rollout["id"])
    assert record is not None
    stored = await service.stores.files.get(service.project_id, record.plan["firmware"]["file"])
    assert stored is not None
    sent = await service.stores.rollout_devices.dispatch(
        rollout["id"],
        count=count,
        reach=record.reach[0],
        ack_deadline_ms=int(time.time() * 1000) + 60_000,
        grant=Grant(
            project_id=service.project_id,
            file_name=stored.name,
            size=stored.size,
            key_ttl_s=600,
        ),
    )
    assert len(sent) == count
    assert set(await service.stores.rollout_devices.unpublished(rollout["id"])) == {
        d.device_id for d in sent
    }
    return rollout["id"], [(d.device_id, d.command_id) for d in sent]


async def test_a_crash_between_sent_and_publish_is_repaired_with_the_same_command_id(
    service: Service, fleet: Fleet, engines: Engines
) -> None:
    await upload_both(service)
    await fleet.add(6)
    rollout_id, sent = await _running_with_unpublished(
        service,
        """
name: unpublished
firmware: {file: fw_2.1.0.bin, version: 2.1.0}
waves: [{percent: 100}]
""",
        count=3,
    )
    assert not any(device.commands for device in fleet.devices.values())  # no engine runs

    await engines.start("engine-a")
    done = await wait_state(service, rollout_id, "completed")
    assert done["counts"]["succeeded"] == 6, done["counts"]
    assert sum(done["counts"].values()) == done["total"] == 6
    for device_id, command_id in sent:
        stored = await service.stores.rollout_devices.device(rollout_id, device_id)
        assert stored["command_id"] == command_id
        assert command_ids(fleet, device_id) == {command_id}
    assert_one_command_id_each(fleet)
    assert await service.stores.rollout_devices.unpublished(rollout_id) == []


async def test_a_device_that_got_the_command_before_the_crash_can_still_download(
    service: Service, fleet: Fleet, engines: Engines, mqtt_broker: EmbeddedBroker
) -> None:
    """The crash lands after the broker took the command but before it was marked published.

    The device has the command and its key; the next engine re-publishes with the same
    command id, which a device that drops duplicates ignores (§5): the key it holds must
    still work.
    """
    await upload_both(service)
    [device] = await fleet.add(1)
    device.dedupe = True
    rollout_id, [(device_id, command_id)] = await _running_with_unpublished(
        service,
        """
name: published-not-marked
firmware: {file: fw_2.1.0.bin, version: 2.1.0}
waves: [{percent: 100}]
policy: {max_failure_rate: 100%}
""",
        count=1,
    )
    # What the crashed engine did before dying: the key, the command record, the publish.
    stores = service.stores
    record = await stores.rollouts.get(rollout_id)
    assert record is not None
    payload = await file_command_payload(
        stores,
        public_url=service.base_url,
        key_ttl_s=600,
        project_id=service.project_id,
        device_id=device_id,
        command="download_firmware",
        data={"file_name": "fw_2.1.0.bin"},
        command_id=command_id,
        rollout_id=rollout_id,
        version="2.1.0",
    )
    await stores.rollout_devices.set_device_fields(
        rollout_id, device_id, key=payload["url"].rsplit("key=", 1)[1]
    )
    await stores.commands.record(
        [(device_id, command_id)],
        project_id=service.project_id,
        command="download_firmware",
        sent_at=isoformat_z(utc_now()),
        rollout_id=rollout_id,
        kind="update",
    )
    fleet.hold()  # the device is slow to start its download
    async with aiomqtt.Client("127.0.0.1", mqtt_broker.port) as client:
        await client.publish(
            command_topic(device_id, "download_firmware"), json.dumps(payload), qos=2
        )

    async def got(copies: int) -> bool:
        return len(download_commands(fleet, device_id)) >= copies

    await wait_for(lambda: got(1))
    await engines.start("engine-a")
    await wait_for(lambda: got(2))  # the re-publish, with the same command id
    assert command_ids(fleet, device_id) == {command_id}
    fleet.release()

    done = await wait_state(service, rollout_id, "completed")
    assert done["counts"]["succeeded"] == 1, (done["counts"], fleet.results[device_id])
