"""policy.confidence end to end: the engine judging with the sequential test on real Redis and
mosquitto, devices over MQTT."""

from __future__ import annotations

from typing import Any

from orchestrator.domain.cohorts import order_key
from tests.conftest import Service
from tests.e2e.fleet import Device, Fleet
from tests.e2e.test_rollouts import download_commands, start, upload_both, wait_state


def in_order(name: str, devices: list[Device]) -> list[Device]:
    """The devices in the order the rollout `name` sends them (its waves take them so)."""
    return sorted(devices, key=lambda device: order_key(name, device.id))


async def events(service: Service, rollout_id: str) -> list[dict[str, Any]]:
    response = await service.client.get(
        f"/v2/projects/{service.project_id}/rollouts/{rollout_id}/events"
    )
    found: list[dict[str, Any]] = response.json()["data"]
    return found


async def test_a_sixty_percent_failing_firmware_is_stopped_inside_the_canary(
    service: Service, fleet: Fleet
) -> None:
    await upload_both(service)
    devices = await fleet.add(30)
    for i, device in enumerate(in_order("bad-2.1.0", devices)):
        device.behaviour = "succeed" if i % 5 in (0, 3) else "fail"  # 60% fail
    rollout = await start(
        service,
        """
name: bad-2.1.0
firmware: {file: fw_2.1.0.bin, version: 2.1.0}
waves:
  - {name: canary, devices: 10}
  - percent: 100
policy: {max_failure_rate: 5%, confidence: 95%, max_in_flight: 3}
""",
    )
    halted = await wait_state(service, rollout["id"], "halted")
    assert halted["wave"] == "canary"
    assert "at 95% confidence: the test tells 10% from 2.5%" in halted["reason"]
    reached = [d for d in devices if download_commands(fleet, d.id)]
    halt = next(e for e in await events(service, rollout["id"]) if e["action"] == "halt")
    # at least three failures halt it; past the results it judged, only max_in_flight more
    # were under way, all inside the canary
    assert halt["details"]["failed"] >= 3
    assert len(reached) <= min(10, halt["details"]["finished"] + 3)
    assert halt["details"]["evidence"]["decision"] == "halt"
    assert halt["details"]["evidence"]["llr"] >= halt["details"]["evidence"]["halt_at"]


async def test_a_single_early_failure_no_longer_halts_a_healthy_rollout(
    service: Service, fleet: Fleet
) -> None:
    await upload_both(service)
    devices = in_order("healthy-2.1.0", await fleet.add(40))
    devices[0].behaviour = "fail"  # the very first result is a failure: 1 of 1, 100%
    rollout = await start(
        service,
        """
name: healthy-2.1.0
firmware: {file: fw_2.1.0.bin, version: 2.1.0}
waves:
  - {name: canary, devices: 20}
  - percent: 100
policy: {max_failure_rate: 5%, confidence: 95%, max_in_flight: 1}
""",
    )
    done = await wait_state(service, rollout["id"], "completed", "halted", timeout_s=60)
    assert done["state"] == "completed", done["reason"]
    assert done["counts"]["succeeded"] == 39
    assert done["counts"]["failed"] == 1
    started = [e for e in await events(service, rollout["id"]) if e["action"] == "wave_start"]
    assert started[0]["details"]["evidence"]["decision"] == "undecided"


async def test_an_inconclusive_canary_waits_for_a_person_and_promote_goes_on(
    service: Service, fleet: Fleet
) -> None:
    await upload_both(service)
    devices = in_order("unsure-2.1.0", await fleet.add(40))
    for device in devices[:2]:
        device.behaviour = "fail"  # 2 of the 20 canaries: 10%, twice the limit, not yet proof
    rollout = await start(
        service,
        """
name: unsure-2.1.0
firmware: {file: fw_2.1.0.bin, version: 2.1.0}
waves:
  - {name: canary, devices: 20}
  - percent: 100
policy: {max_failure_rate: 5%, confidence: 95%, max_in_flight: 1}
""",
    )
    waiting = await wait_state(service, rollout["id"], "waiting_approval", timeout_s=60)
    assert waiting["wave"] == "canary"
    assert waiting["reason"] == (
        "wave canary: 2 of 20 finished devices failed (10.0%, over max_failure_rate 5.0%); the "
        "test cannot yet tell 2.5% from 10% at 95% (log-likelihood ratio 1.33; halts at 3.00, "
        f"passes at -3.00); promote to continue or abort (ota promote {rollout['id']} / ota "
        f"abort {rollout['id']})"
    )
    assert waiting["counts"]["pending"] == 20
    assert waiting["evidence"].startswith("undecided: the test cannot yet tell 2.5% from 10%")
    response = await service.client.post(
        f"/v2/projects/{service.project_id}/rollouts/{rollout['id']}/promote"
    )
    assert response.status_code == 200, response.text
    done = await wait_state(service, rollout["id"], "completed", timeout_s=60)
    assert done["counts"]["succeeded"] == 38  # 2 of 40 is 5%: within the limit at the end
