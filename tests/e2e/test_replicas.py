"""Several engine replicas (`ota serve --role engine` processes) on one Redis and one mosquitto.

Results are shared among the replicas by the shared subscription; one replica at a time drives
the rollout, by its Redis lease. Each replica is killed (SIGKILL) in turn mid-rollout and comes
back under its instance id, as a supervisor (systemd, a Kubernetes StatefulSet) restarts it:
its MQTT session keeps the results that arrived meanwhile, and its lease is its own again.
"""

from __future__ import annotations

import asyncio
import sys

import httpx
import pytest

from orchestrator.settings import Settings
from tests.conftest import Service, wait_for
from tests.e2e.engines import EngineProcess, Engines
from tests.e2e.fleet import Fleet
from tests.e2e.test_crash import assert_one_command_id_each, wait_mid_second_wave
from tests.e2e.test_rollouts import start, upload_both, view, wait_state

PLAN = """
name: {name}
firmware: {{file: fw_2.1.0.bin, version: 2.1.0}}
waves:
  - {{name: canary, devices: 6}}
  - percent: 50
  - percent: 100
policy: {{max_failure_rate: 5%, rate: 8/s, ack_timeout: 30s, device_timeout: 60s}}
"""


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Only the API runs in the test's process; the engines are child processes."""
    return settings.model_copy(update={"role": "api"})


async def holder(service: Service, rollout_id: str) -> str:
    owner = await service.stores.redis.get(service.stores.keys.rollout_lease(rollout_id))
    return str(owner or "")


@pytest.mark.parametrize("replicas", [2, 3])
async def test_each_replica_killed_in_turn_the_rollout_completes_with_one_command_id_each(
    service: Service, fleet: Fleet, engines: Engines, replicas: int
) -> None:
    await upload_both(service)
    devices = await fleet.add(36)
    for device in devices:
        device.latency_s = 0.1
    running: dict[str, EngineProcess] = {}
    for n in range(replicas):
        instance_id = f"engine-{n}"
        running[instance_id] = await engines.start(instance_id)
    rollout = await start(service, PLAN.format(name=f"replicas-{replicas}"))
    rollout_id = rollout["id"]
    await wait_mid_second_wave(service, rollout_id, pending=4, working=2)

    handled = {i: await engine.results_handled() for i, engine in running.items()}
    assert all(n > 0 for n in handled.values()), f"results per replica: {handled}"

    # First the replica driving the rollout, then each of the others, mid-rollout.
    first = await holder(service, rollout_id)
    assert first in running
    order = [first, *sorted(set(running) - {first})]
    for instance_id in order:
        before = await view(service, rollout_id)
        if before["state"] == "completed":
            break
        await engines.kill(running[instance_id])
        running[instance_id] = await engines.start(instance_id)

    done = await wait_state(service, rollout_id, "completed", timeout_s=60)
    assert done["counts"]["succeeded"] == 36, done["counts"]
    assert sum(done["counts"].values()) == done["total"] == 36
    assert_one_command_id_each(fleet)
    assert await service.stores.rollout_devices.unpublished(rollout_id) == []
    async with httpx.AsyncClient(timeout=10) as client:
        for engine in running.values():
            api = await client.get(f"{engine.base_url}/v2/projects")
            assert api.status_code == 404  # an engine replica serves probes and metrics only
            assert (await client.get(f"{engine.base_url}/readyz")).status_code == 200


async def test_a_replica_gone_for_good_is_retired_and_the_results_it_was_given_are_applied(
    service: Service, fleet: Fleet, engines: Engines
) -> None:
    """The broker keeps routing a dead member its share; retiring it applies them and ends that."""
    await upload_both(service)
    devices = await fleet.add(30)
    for device in devices:
        device.latency_s = 0.1
    running = {i: await engines.start(i) for i in ("engine-a", "engine-b")}
    rollout_id = (await start(service, PLAN.format(name="retire")))["id"]
    await wait_mid_second_wave(service, rollout_id, pending=4, working=2)
    driver = await holder(service, rollout_id)
    gone = next(i for i in running if i != driver)  # its death stops no rollout: no lease wait
    await engines.kill(running[gone])

    retire = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orchestrator",
        "engines",
        "retire",
        gone,
        env=engines.env("retirer", 0),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(retire.communicate(), 120)
    assert retire.returncode == 0, err.decode()
    applied = int(out.decode().split(": ")[1].split()[0])
    assert applied > 0, out.decode()  # results the broker had routed to the dead replica

    done = await wait_state(service, rollout_id, "completed", timeout_s=60)
    # Every device succeeded: none was left to its timeouts (plan: ack 30 s, device 60 s).
    assert done["counts"]["succeeded"] == 30, done["counts"]
    assert_one_command_id_each(fleet)


async def test_retiring_a_replica_that_holds_a_lease_is_refused(
    service: Service, fleet: Fleet, engines: Engines
) -> None:
    await upload_both(service)
    await fleet.add(10)
    fleet.hold()  # no device answers: the rollout stays running, its lease held
    await engines.start("engine-a")
    rollout_id = (await start(service, PLAN.format(name="retire-live")))["id"]

    async def leased() -> bool:
        return await holder(service, rollout_id) == "engine-a"

    await wait_for(leased, timeout_s=20, interval_s=0.05)
    retire = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orchestrator",
        "engines",
        "retire",
        "engine-a",
        env=engines.env("retirer", 0),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(retire.communicate(), 60)
    assert retire.returncode == 1
    assert "holds the lease of rollout" in err.decode()
    assert "Traceback" not in err.decode()
