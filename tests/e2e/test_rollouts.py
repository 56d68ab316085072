"""Rollouts end to end: the API, the engine, real Redis and mosquitto, devices over MQTT."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.answers import data_of
from tests.conftest import Service, wait_for
from tests.e2e.fleet import Fleet

FIRMWARE = b"\x7fELF-new-firmware" * 1000
OLD_FIRMWARE = b"\x7fELF-old-firmware" * 1000


async def start(service: Service, plan: str) -> dict[str, Any]:
    """Create a rollout from YAML; returns its view."""
    response = await service.client.post(
        f"/v2/projects/{service.project_id}/rollouts",
        content=plan,
        headers={"Content-Type": "application/yaml"},
    )
    view: dict[str, Any] = data_of(response, 201)
    return view


async def view(service: Service, rollout_id: str) -> dict[str, Any]:
    response = await service.client.get(f"/v2/projects/{service.project_id}/rollouts/{rollout_id}")
    body: dict[str, Any] = data_of(response)
    return body


async def wait_state(
    service: Service, rollout_id: str, *states: str, timeout_s: float = 30
) -> dict[str, Any]:
    """Poll the rollout until it is in one of `states`; its view."""
    seen: dict[str, Any] = {}

    async def reached() -> bool:
        seen.update(await view(service, rollout_id))
        return seen["state"] in states

    try:
        await wait_for(reached, timeout_s=timeout_s, interval_s=0.1)
    except TimeoutError:
        pytest.fail(
            f"rollout stayed {seen.get('state')} ({seen.get('reason')}); "
            f"counts {seen.get('counts')}"
        )
    return seen


async def upload_both(service: Service) -> None:
    assert (await service.upload("fw_2.1.0.bin", FIRMWARE)).status_code == 201
    assert (await service.upload("fw_2.0.3.bin", OLD_FIRMWARE)).status_code == 201


def download_commands(fleet: Fleet, device_id: str) -> list[dict[str, Any]]:
    return [c for c in fleet.devices[device_id].commands if c["command"] == "download_firmware"]


async def test_a_good_firmware_completes_on_every_device_with_one_command_id_each(
    service: Service, fleet: Fleet
) -> None:
    await upload_both(service)
    devices = await fleet.add(12)
    rollout = await start(
        service,
        """
name: good-2.1.0
firmware: {file: fw_2.1.0.bin, version: 2.1.0}
waves:
  - {name: canary, devices: 2}
  - percent: 50
  - percent: 100
policy: {max_failure_rate: 5%, min_devices: 2}
""",
    )
    done = await wait_state(service, rollout["id"], "completed")
    assert done["counts"]["succeeded"] == 12
    assert sum(done["counts"].values()) == done["total"] == 12
    assert [w["target"] for w in done["waves"]] == [2, 6, 12]
    for device in devices:
        sent = download_commands(fleet, device.id)
        assert len(sent) == 1, f"{device.id} got {len(sent)} commands"
        assert sent[0]["rollout_id"] == rollout["id"]
        assert sent[0]["version"] == "2.1.0"
        assert device.installed == ["fw_2.1.0.bin"]
    command_ids = {download_commands(fleet, d.id)[0]["command_id"] for d in devices}
    assert len(command_ids) == 12
    actions = [
        e["action"]
        for e in (
            await service.client.get(
                f"/v2/projects/{service.project_id}/rollouts/{rollout['id']}/events"
            )
        ).json()["data"]
    ]
    assert actions[0] == "create"
    assert "start" in actions
    assert actions[-1] == "complete"


async def test_a_bad_firmware_halts_in_the_canary(service: Service, fleet: Fleet) -> None:
    await upload_both(service)
    fleet.broken_files.add("fw_2.1.0.bin")
    await fleet.add(20)
    rollout = await start(
        service,
        """
name: bad-2.1.0
firmware: {file: fw_2.1.0.bin, version: 2.1.0}
waves:
  - {name: canary, devices: 4}
  - percent: 100
policy: {max_failure_rate: 10%, min_devices: 2, max_in_flight: 4, on_failure: halt}
""",
    )
    halted = await wait_state(service, rollout["id"], "halted")
    assert "over max_failure_rate 10.0%" in halted["reason"]
    assert halted["wave"] == "canary"
    reached = [d for d in fleet.devices.values() if download_commands(fleet, d.id)]
    assert 2 <= len(reached) <= 4  # never past the canary, overshoot bounded by max_in_flight
    assert halted["counts"]["pending"] >= 16
    events = (
        await service.client.get(
            f"/v2/projects/{service.project_id}/rollouts/{rollout['id']}/events"
        )
    ).json()["data"]
    halt = next(e for e in events if e["action"] == "halt")
    assert halt["actor"] == "engine"
    assert halt["details"]["failure_rate"] > 0.1
    assert halt["from"] == "running"
    assert halt["to"] == "halted"


async def test_rollback_reaches_exactly_the_devices_that_took_the_bad_firmware(
    service: Service, fleet: Fleet
) -> None:
    await upload_both(service)
    fleet.broken_files.add("fw_2.1.0.bin")
    await fleet.add(10)
    rollout = await start(
        service,
        """
name: rollback-2.1.0
firmware: {file: fw_2.1.0.bin, version: 2.1.0}
waves:
  - {name: canary, devices: 3}
  - percent: 100
policy: {max_failure_rate: 20%, min_devices: 3, max_in_flight: 3, on_failure: rollback}
rollback: {file: fw_2.0.3.bin, version: 2.0.3}
""",
    )
    final = await wait_state(service, rollout["id"], "rolled_back", "rollback_failed")
    assert final["state"] == "rolled_back", final["reason"]
    took_new = {
        d.id
        for d in fleet.devices.values()
        if any(c["file_name"] == "fw_2.1.0.bin" for c in download_commands(fleet, d.id))
    }
    got_rollback = {
        d.id
        for d in fleet.devices.values()
        if any(c["file_name"] == "fw_2.0.3.bin" for c in download_commands(fleet, d.id))
    }
    assert took_new
    assert got_rollback == took_new
    assert final["counts"]["rolled_back"] == len(took_new)
    assert final["counts"]["cancelled"] == 10 - len(took_new)
    assert sum(final["counts"].values()) == 10


async def test_manual_approval_waits_for_promote(service: Service, fleet: Fleet) -> None:
    await upload_both(service)
    await fleet.add(6)
    rollout = await start(
        service,
        """
name: manual-2.1.0
firmware: {file: fw_2.1.0.bin}
waves:
  - {name: canary, devices: 2}
  - {name: rest, percent: 100, approval: manual}
""",
    )
    waiting = await wait_state(service, rollout["id"], "waiting_approval")
    assert waiting["counts"]["succeeded"] == 2
    assert waiting["counts"]["pending"] == 4
    response = await service.client.post(
        f"/v2/projects/{service.project_id}/rollouts/{rollout['id']}/promote"
    )
    assert response.status_code == 200, response.text
    done = await wait_state(service, rollout["id"], "completed")
    assert done["counts"]["succeeded"] == 6


async def test_a_manual_first_wave_waits_for_promote_before_sending_anything(
    service: Service, fleet: Fleet
) -> None:
    await upload_both(service)
    devices = await fleet.add(3)
    rollout = await start(
        service,
        """
name: manual-first
firmware: {file: fw_2.1.0.bin}
waves:
  - {name: canary, devices: 1, approval: manual}
  - percent: 100
""",
    )
    waiting = await wait_state(service, rollout["id"], "waiting_approval")
    assert waiting["counts"]["pending"] == 3
    assert "wave canary needs approval" in waiting["reason"]
    await asyncio.sleep(0.5)  # a few engine ticks: still nothing sent
    assert not any(download_commands(fleet, d.id) for d in devices)
    response = await service.client.post(
        f"/v2/projects/{service.project_id}/rollouts/{rollout['id']}/promote"
    )
    assert response.status_code == 200, response.text
    done = await wait_state(service, rollout["id"], "completed")
    assert done["counts"]["succeeded"] == 3


async def test_silent_devices_time_out_and_count_as_failures(
    service: Service, fleet: Fleet
) -> None:
    await upload_both(service)
    await fleet.add(2, behaviour="silent")
    await fleet.add(2)
    rollout = await start(
        service,
        """
name: timeouts
firmware: {file: fw_2.1.0.bin}
waves: [{percent: 100}]
policy: {max_failure_rate: 60%, ack_timeout: 1s, device_timeout: 3s}
""",
    )
    done = await wait_state(service, rollout["id"], "completed")
    assert done["counts"]["timed_out"] == 2
    assert done["counts"]["succeeded"] == 2
    assert done["failure_rate"] == pytest.approx(0.5)


async def test_a_failed_device_is_retried_with_a_new_command_id(
    service: Service, fleet: Fleet
) -> None:
    await upload_both(service)
    [device] = await fleet.add(1, behaviour="reject")
    # A rejected device is final at once; a failed one is retried.
    device.behaviour = "fail"
    rollout = await start(
        service,
        """
name: retries
firmware: {file: fw_2.1.0.bin}
waves: [{percent: 100}]
policy: {max_failure_rate: 100%, retries: 1}
""",
    )
    done = await wait_state(service, rollout["id"], "completed")
    sent = download_commands(fleet, device.id)
    assert len(sent) == 2
    assert sent[0]["command_id"] != sent[1]["command_id"]
    assert done["counts"]["failed"] == 1


async def test_pause_stops_dispatch_and_resume_continues(service: Service, fleet: Fleet) -> None:
    await upload_both(service)
    await fleet.add(6)
    rollout = await start(
        service,
        """
name: paced
firmware: {file: fw_2.1.0.bin}
waves: [{percent: 100}]
policy: {rate: 2/s}
""",
    )
    await wait_state(service, rollout["id"], "running")
    base = f"/v2/projects/{service.project_id}/rollouts/{rollout['id']}"
    assert (await service.client.post(f"{base}/pause")).status_code == 200
    paused = await view(service, rollout["id"])
    await asyncio.sleep(1.5)  # a window in which a running rollout would send 3 more commands
    later = await view(service, rollout["id"])
    assert later["counts"]["pending"] == paused["counts"]["pending"] > 0
    assert (await service.client.post(f"{base}/resume")).status_code == 200
    done = await wait_state(service, rollout["id"], "completed")
    assert done["counts"]["succeeded"] == 6


async def test_an_abort_cancels_what_never_started_and_frees_the_devices_in_the_same_step(
    service: Service, fleet: Fleet
) -> None:
    """The answer to abort already shows the end: nothing in flight, every device free."""
    await upload_both(service)
    devices = await fleet.add(4, behaviour="ack_only")  # they hold their keys, never finish
    rollout = await start(
        service,
        """
name: to-abort
firmware: {file: fw_2.1.0.bin}
waves: [{devices: 2}, {percent: 100}]
""",
    )
    await wait_state(service, rollout["id"], "running")
    base = f"/v2/projects/{service.project_id}/rollouts/{rollout['id']}"

    async def two_sent() -> bool:
        return bool((await view(service, rollout["id"]))["counts"]["sent"] == 2)

    await wait_for(two_sent)
    response = await service.client.post(f"{base}/abort", json={"reason": "wrong build"})
    aborted = data_of(response)
    assert aborted["state"] == "aborted"
    assert aborted["counts"]["cancelled"] == 4
    assert not any(aborted["counts"][state] for state in ("pending", "sent", "downloading"))
    # No wait: whoever reads "aborted" may start the next release on the same devices.
    assert (
        await service.stores.rollout_devices.device_rollouts([d.id for d in devices]) == [None] * 4
    )
    assert rollout["id"] not in await service.stores.rollouts.active_ids()
    dry_run = await service.client.post(
        f"/v2/projects/{service.project_id}/rollouts",
        params={"dry_run": "true"},
        content="name: next\nfirmware: {file: fw_2.1.0.bin}\nwaves: [{percent: 100}]\n",
        headers={"Content-Type": "application/yaml"},
    )
    assert data_of(dry_run)["exclusions"] == [], dry_run.text
    final = await view(service, rollout["id"])
    assert final["counts"]["cancelled"] == 4
    for device in devices:
        for command in download_commands(fleet, device.id):
            key = command["url"].rsplit("key=", 1)[1]
            assert await service.stores.download_keys.get(key) is None  # revoked
    abort = [
        e
        for e in (await service.client.get(f"{base}/events")).json()["data"]
        if e["action"] == "abort"
    ]
    assert abort[0]["reason"] == "wrong build"


async def test_a_lost_command_and_a_lost_result_are_repaired_by_sending_the_command_again(
    service: Service, fleet: Fleet
) -> None:
    """Silent devices get the same command again; one that handled it repeats its result."""
    await upload_both(service)
    deaf = await fleet.add(2)
    mute = await fleet.add(2)
    for device in deaf:
        device.lose_first_copy = device.dedupe = True
    for device in mute:
        device.lose_final_result = device.dedupe = True
    rollout = await start(
        service,
        """
name: lossy
firmware: {file: fw_2.1.0.bin, version: 2.1.0}
waves: [{percent: 100}]
policy: {ack_timeout: 8s, device_timeout: 12s}
""",
    )
    done = await wait_state(service, rollout["id"], "completed", "halted", timeout_s=40)
    assert done["state"] == "completed", done["reason"]
    assert done["counts"]["succeeded"] == 4
    for device in [*deaf, *mute]:
        assert device.lost, f"{device.id} lost nothing: the test did not test"
        assert len({c["command_id"] for c in download_commands(fleet, device.id)}) == 1
    for device in mute:
        assert len(download_commands(fleet, device.id)) >= 2  # sent again, same command id
    exposition = (await service.client.get("/metrics")).text
    resent = [
        sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == "ota_commands_resent_total"
    ]
    assert sum(resent) >= 4


async def test_resume_after_a_halt_judges_only_what_finishes_afterwards(
    service: Service, fleet: Fleet
) -> None:
    await upload_both(service)
    fleet.broken_files.add("fw_2.1.0.bin")
    await fleet.add(8)
    rollout = await start(
        service,
        """
name: resumed
firmware: {file: fw_2.1.0.bin}
waves: [{name: canary, devices: 2}, {percent: 100}]
policy: {max_failure_rate: 10%, min_devices: 2, max_in_flight: 2}
""",
    )
    halted = await wait_state(service, rollout["id"], "halted")
    assert halted["counts"]["failed"] == 2
    fleet.broken_files.clear()  # the person found the cause (say, a bad batch of devices)
    base = f"/v2/projects/{service.project_id}/rollouts/{rollout['id']}"
    response = await service.client.post(f"{base}/resume", json={"reason": "canary batch was bad"})
    assert data_of(response)["failure_rate"] == 0.0  # the two accepted failures are left out
    done = await wait_state(service, rollout["id"], "completed")
    assert done["counts"] == {**done["counts"], "failed": 2, "succeeded": 6}


async def test_a_firmware_file_holding_other_bytes_than_at_creation_halts_the_rollout(
    service: Service, fleet: Fleet
) -> None:
    """The next wave is never announced with bytes other than those the rollout was made with."""
    await upload_both(service)
    await fleet.add(4)
    rollout = await start(
        service,
        """
name: pinned
firmware: {file: fw_2.1.0.bin, version: 2.1.0}
waves: [{devices: 1, bake: 2s}, {percent: 100}]
""",
    )

    async def canary_done() -> bool:
        return bool((await view(service, rollout["id"]))["counts"]["succeeded"] == 1)

    await wait_for(canary_done, timeout_s=20)
    # The file record changes under the rollout during the bake (a delete and a new upload).
    file_key = service.stores.keys.file(service.project_id, "fw_2.1.0.bin")
    await service.stores.redis.hset(file_key, mapping={"sha256": "0" * 64, "size": "4000"})
    halted = await wait_state(service, rollout["id"], "halted", "completed", timeout_s=30)
    assert halted["state"] == "halted", halted["reason"]
    assert "now holds other bytes" in halted["reason"]
    assert halted["counts"]["succeeded"] == 1
    assert halted["counts"]["pending"] == 3  # the second wave was never sent
