"""The health soak end to end: devices report after their success, on real Redis and mosquitto.

Soaks are 2 s with a 1 s heartbeat (devices report every half heartbeat), so each test takes
seconds; what is asserted is order and outcome, never a duration.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Service, wait_for
from tests.e2e.fleet import OLD_VERSION, Fleet
from tests.e2e.test_results_ignored import ignored, wait_ignored
from tests.e2e.test_rollouts import download_commands, start, upload_both, view, wait_state

SOAK_PLAN = """
name: {name}
firmware: {{file: fw_2.1.0.bin, version: 2.1.0}}
waves:
  - {{name: canary, devices: 2}}
  - percent: 100
policy:
  max_failure_rate: {limit}
  min_devices: 2
  on_failure: {on_failure}
  health: {{soak: 2s, heartbeat: 1s}}
rollback: {{file: fw_2.0.3.bin, version: 2.0.3}}
"""


async def devices_of(service: Service, rollout_id: str, state: str = "") -> list[dict[str, Any]]:
    """The rollout's devices (in `state`), as the API lists them."""
    response = await service.client.get(
        f"/v2/projects/{service.project_id}/rollouts/{rollout_id}/devices",
        params={"state": state} if state else {},
    )
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["data"]
    return found


async def events_of(service: Service, rollout_id: str) -> list[dict[str, Any]]:
    response = await service.client.get(
        f"/v2/projects/{service.project_id}/rollouts/{rollout_id}/events"
    )
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["data"]
    return found


async def wait_canary_verifying(service: Service, rollout_id: str) -> dict[str, Any]:
    """Until both canaries are verifying; the rollout's view at that moment."""
    seen: dict[str, Any] = {}

    async def verifying() -> bool:
        seen.update(await view(service, rollout_id))
        return bool(seen["waves"][0]["counts"]["verifying"] == 2)

    try:
        await wait_for(verifying, timeout_s=20, interval_s=0.05)
    except TimeoutError:
        pytest.fail(f"the canaries were never seen verifying: {seen.get('waves')}")
    return seen


async def test_a_healthy_fleet_passes_the_soak_and_the_next_wave_waits_for_it(
    service: Service, fleet: Fleet
) -> None:
    await upload_both(service)
    devices = await fleet.add(6)
    plan = SOAK_PLAN.format(name="soak-healthy", limit="5%", on_failure="halt")
    rollout = await start(service, plan)

    soaking = await wait_canary_verifying(service, rollout["id"])
    # The canaries reported success and are watched: they are not succeeded yet, and the next
    # wave has not been sent anything.
    assert soaking["state"] == "running"
    assert soaking["wave"] == "canary"
    assert soaking["counts"]["succeeded"] == 0
    assert soaking["waves"][1]["counts"]["pending"] == 4, soaking["waves"]
    listed = await devices_of(service, rollout["id"], "verifying")
    assert len(listed) == 2
    assert all(d["failure"] is None for d in listed)

    done = await wait_state(service, rollout["id"], "completed", "halted", timeout_s=30)
    assert done["state"] == "completed", done["reason"]
    assert done["counts"]["succeeded"] == 6
    assert done["counts"]["verifying"] == 0
    assert sum(done["counts"].values()) == done["total"] == 6
    for device in devices:
        [command] = download_commands(fleet, device.id)
        assert command["health"] == {"soak_s": 2.0, "heartbeat_s": 1.0}
        reports = [r["status"] for r in fleet.results[device.id]]
        assert "healthy" in reports[reports.index("success") :]
    # The second wave started only once the canaries' soak had passed (the wave was done).
    actions = [e["action"] for e in await events_of(service, rollout["id"])]
    assert actions.index("wave_done") < actions.index("wave_start")


async def test_a_reverting_image_is_rolled_back_as_reverted(service: Service, fleet: Fleet) -> None:
    """Every device says success, then reports the old version: the bootloader fell back."""
    await upload_both(service)
    devices = await fleet.add(6)
    for device in devices:
        device.health = "revert"
    plan = SOAK_PLAN.format(name="soak-revert", limit="10%", on_failure="rollback")
    rollout = await start(service, plan)

    done = await wait_state(
        service, rollout["id"], "rolled_back", "rollback_failed", "completed", timeout_s=30
    )
    assert done["state"] == "rolled_back", done["reason"]
    assert "over max_failure_rate 10.0%" in done["reason"]
    events = await events_of(service, rollout["id"])
    rollback = next(e for e in events if e["action"] == "rollback")
    assert rollback["details"]["failures"] == {"reverted": 2}
    assert rollback["details"]["wave"] == "canary"
    # The two canaries took the new image, reverted, and were sent the rollback image.
    reached = [d for d in devices if download_commands(fleet, d.id)]
    assert len(reached) == 2
    for device in reached:
        files = [c["file_name"] for c in download_commands(fleet, device.id)]
        assert files == ["fw_2.1.0.bin", "fw_2.0.3.bin"]
        assert any(r.get("version") == OLD_VERSION for r in fleet.results[device.id])
    assert done["counts"]["rolled_back"] == 2
    assert done["counts"]["cancelled"] == 4  # never sent: the rollout ended before them


async def test_devices_that_go_silent_after_their_success_fail_as_unhealthy_silent(
    service: Service, fleet: Fleet
) -> None:
    await upload_both(service)
    devices = await fleet.add(6)
    for device in devices:
        device.health = "die"
    plan = SOAK_PLAN.format(name="soak-silent", limit="10%", on_failure="halt")
    rollout = await start(service, plan)

    halted = await wait_state(service, rollout["id"], "halted", "completed", timeout_s=30)
    assert halted["state"] == "halted", halted["reason"]
    assert halted["wave"] == "canary"
    assert halted["counts"]["failed"] == 2
    assert halted["counts"]["succeeded"] == 0
    failed = await devices_of(service, rollout["id"], "failed")
    assert [(d["failure"], d["error"]) for d in failed] == [("unhealthy", "silent")] * 2
    halt = next(e for e in await events_of(service, rollout["id"]) if e["action"] == "halt")
    assert halt["details"]["failures"] == {"unhealthy": 2}


async def test_an_unhealthy_report_fails_the_device_and_a_late_report_is_ignored(
    service: Service, fleet: Fleet
) -> None:
    """A device's own `unhealthy` ends its soak at once; what it says after is ignored."""
    await upload_both(service)
    [sick, _well] = await fleet.add(2)
    sick.health = "unhealthy"
    plan = """
name: soak-unhealthy
firmware: {file: fw_2.1.0.bin, version: 2.1.0}
waves: [{percent: 100}]
policy: {max_failure_rate: 100%, health: {soak: 2s, heartbeat: 1s}}
"""
    rollout = await start(service, plan)
    done = await wait_state(service, rollout["id"], "completed", "halted", timeout_s=30)
    assert done["counts"]["failed"] == 1
    assert done["counts"]["succeeded"] == 1
    failed = await devices_of(service, rollout["id"], "failed")
    assert [(d["device_id"], d["failure"], d["error"]) for d in failed] == [
        (sick.id, "unhealthy", "watchdog reset")
    ]
    before = await ignored(service)
    [command] = download_commands(fleet, sick.id)
    await fleet.report(
        sick, "download_firmware", {"command_id": command["command_id"], "status": "healthy"}
    )
    await wait_ignored(service, before, "late")
    await fleet.publish_raw(sick.id, "download_firmware", b'{"status": "healthy"}')
    await wait_ignored(service, before, "malformed")
    again = await devices_of(service, rollout["id"], "failed")
    assert [d["failure"] for d in again] == ["unhealthy"]  # judged once


async def test_a_health_report_about_a_rollout_without_a_soak_is_counted_and_ignored(
    service: Service, fleet: Fleet
) -> None:
    await upload_both(service)
    [device] = await fleet.add(1)
    plan = """
name: no-soak
firmware: {file: fw_2.1.0.bin, version: 2.1.0}
waves: [{percent: 100}]
"""
    rollout = await start(service, plan)
    done = await wait_state(service, rollout["id"], "completed", timeout_s=30)
    assert done["counts"]["succeeded"] == 1  # no soak: a success counts at once
    [command] = download_commands(fleet, device.id)
    assert "health" not in command
    before = await ignored(service)
    await fleet.report(
        device,
        "download_firmware",
        {"command_id": command["command_id"], "status": "unhealthy", "version": "2.1.0"},
    )
    await wait_ignored(service, before, "no_soak")
    assert (await view(service, rollout["id"]))["counts"]["succeeded"] == 1
