"""An engine killed (kill -9) during a health soak: the soak resumes on restart, no device is
judged twice, and reports sent while no engine listened are not taken for silence."""

from __future__ import annotations

from collections import Counter

import pytest

from orchestrator.settings import Settings
from tests.conftest import Service, wait_for
from tests.e2e.engines import Engines
from tests.e2e.fleet import Fleet
from tests.e2e.test_health import devices_of, wait_canary_verifying
from tests.e2e.test_rollouts import start, upload_both, wait_state


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Only the API runs in the test's process; the engine is a child process (`engines`)."""
    return settings.model_copy(update={"role": "api"})


PLAN = """
name: soak-crash
firmware: {file: fw_2.1.0.bin, version: 2.1.0}
waves:
  - {name: canary, devices: 2}
  - percent: 100
policy: {max_failure_rate: 5%, health: {soak: 4s, heartbeat: 1s}}
"""


async def test_an_engine_killed_mid_soak_resumes_it_and_judges_each_device_once(
    service: Service, fleet: Fleet, engines: Engines
) -> None:
    await upload_both(service)
    devices = await fleet.add(5)
    engine = await engines.start("engine-a")
    rollout = await start(service, PLAN)
    await wait_canary_verifying(service, rollout["id"])
    await engines.kill(engine)
    canaries = [d["device_id"] for d in await devices_of(service, rollout["id"], "verifying")]
    assert len(canaries) == 2
    heard = {device_id: len(fleet.results[device_id]) for device_id in canaries}

    async def silent_past_a_heartbeat() -> bool:
        # Each canary has reported three more times (every half heartbeat) with no engine to
        # hear it: longer than the heartbeat allows, had the reports been lost.
        return all(len(fleet.results[d]) >= heard[d] + 3 for d in canaries)

    await wait_for(silent_past_a_heartbeat, timeout_s=10, interval_s=0.05)
    restarted = await engines.start("engine-a")
    done = await wait_state(service, rollout["id"], "completed", "halted", timeout_s=40)
    assert done["state"] == "completed", done["reason"]
    assert done["counts"]["succeeded"] == 5
    assert sum(done["counts"].values()) == done["total"] == 5
    judged = Counter(
        event["device_id"]
        for process in (engine, restarted)
        for event in process.log_events()
        if event.get("event") == "device soak ended"
    )
    assert set(judged) == {d.id for d in devices}, judged
    assert max(judged.values()) == 1, judged
    # The canaries' soaks were ended by the restarted engine, as well as they went.
    soaked_after = {
        event["device_id"]: event["state"]
        for event in restarted.log_events()
        if event.get("event") == "device soak ended"
    }
    assert {soaked_after[d] for d in canaries} == {"succeeded"}
