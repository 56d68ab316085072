"""Results that must change nothing: counted in ota_results_ignored_total{reason}, then ignored.

Each test holds one device of a running rollout (it acknowledges and stops), publishes
something wrong on a result topic, checks that the counter moved and that no device state
did, then lets the held device succeed: the rollout still completes and its counts add up.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Service, wait_for
from tests.e2e.fleet import Device, Fleet
from tests.e2e.test_rollouts import download_commands, start, upload_both, view, wait_state

COMMAND = "download_firmware"
# Reasons nothing in a healthy rollout produces (a "duplicate" is the normal race between a
# device's "installing" result and its download-delivered event, so it is left out).
WATCHED = ("malformed", "unknown_command", "wrong_device", "late", "unknown_device")


async def ignored(service: Service) -> dict[str, float]:
    """`ota_results_ignored_total` by reason, scraped from GET /metrics."""
    response = await service.client.get("/metrics")
    assert response.status_code == 200, response.text
    return {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == "ota_results_ignored_total"
    }


async def wait_ignored(service: Service, before: dict[str, float], reason: str) -> None:
    """Until the counter of `reason` has gone up by one."""
    now: dict[str, float] = {}

    async def counted() -> bool:
        now.update(await ignored(service))
        return now.get(reason, 0) >= before.get(reason, 0) + 1

    try:
        await wait_for(counted, timeout_s=10, interval_s=0.05)
    except TimeoutError:
        pytest.fail(f"ota_results_ignored_total{{reason={reason!r}}} never went up: {now}")


def moved(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The watched reasons whose counter changed, with the change."""
    return {
        reason: after.get(reason, 0) - before.get(reason, 0)
        for reason in WATCHED
        if after.get(reason, 0) != before.get(reason, 0)
    }


@dataclass
class Held:
    """A running rollout with one device that acknowledged its command and stopped there."""

    rollout_id: str
    held: Device
    command_id: str  # of the held device's command
    others: list[Device]  # succeeded


async def held_rollout(service: Service, fleet: Fleet, *, others: int = 3) -> Held:
    """Start a rollout; wait until every device but the held one has succeeded."""
    await upload_both(service)
    done = await fleet.add(others)
    [held] = await fleet.add(1, behaviour="ack_only")
    rollout = await start(
        service,
        f"""
name: ignored-{uuid.uuid4().hex[:8]}
firmware: {{file: fw_2.1.0.bin, version: 2.1.0}}
waves: [{{percent: 100}}]
""",
    )

    async def all_but_one() -> bool:
        counts = (await view(service, rollout["id"]))["counts"]
        return bool(counts["succeeded"] == others and counts["sent"] == 1)

    await wait_for(all_but_one)
    [command] = download_commands(fleet, held.id)
    assert fleet.results[held.id][-1] == {"command_id": command["command_id"], "status": "received"}
    return Held(rollout["id"], held, command["command_id"], done)


async def finish(service: Service, fleet: Fleet, state: Held) -> dict[str, Any]:
    """Let the held device succeed; the completed rollout's view, its counts checked."""
    await fleet.report(
        state.held,
        COMMAND,
        {"command_id": state.command_id, "status": "success", "version": "2.1.0"},
    )
    done = await wait_state(service, state.rollout_id, "completed")
    total = len(state.others) + 1
    assert done["counts"]["succeeded"] == total, done["counts"]
    assert sum(done["counts"].values()) == done["total"] == total
    assert sum(sum(wave["counts"].values()) for wave in done["waves"]) == total
    assert done["failure_rate"] == 0
    return done


async def state_of(service: Service, rollout_id: str, device_id: str) -> str:
    return (await service.stores.rollout_devices.device(rollout_id, device_id))["state"]


async def test_a_result_that_is_not_json_is_ignored_as_malformed(
    service: Service, fleet: Fleet
) -> None:
    state = await held_rollout(service, fleet)
    before = await ignored(service)
    await fleet.publish_raw(state.held.id, COMMAND, b"\xff not json {")
    await wait_ignored(service, before, "malformed")
    assert moved(before, await ignored(service)) == {"malformed": 1}
    assert await state_of(service, state.rollout_id, state.held.id) == "sent"
    await finish(service, fleet, state)


async def test_a_result_with_a_status_outside_the_contract_is_ignored_as_malformed(
    service: Service, fleet: Fleet
) -> None:
    state = await held_rollout(service, fleet)
    before = await ignored(service)
    await fleet.report(state.held, COMMAND, {"command_id": state.command_id, "status": "exploded"})
    await wait_ignored(service, before, "malformed")
    assert moved(before, await ignored(service)) == {"malformed": 1}
    assert await state_of(service, state.rollout_id, state.held.id) == "sent"
    await finish(service, fleet, state)


async def test_a_result_naming_an_unknown_command_id_is_ignored(
    service: Service, fleet: Fleet
) -> None:
    state = await held_rollout(service, fleet)
    before = await ignored(service)
    await fleet.report(
        state.held, COMMAND, {"command_id": uuid.uuid4().hex, "status": "failed", "error": "x"}
    )
    await wait_ignored(service, before, "unknown_command")
    assert moved(before, await ignored(service)) == {"unknown_command": 1}
    assert await state_of(service, state.rollout_id, state.held.id) == "sent"
    await finish(service, fleet, state)


async def test_a_result_forged_on_another_devices_topic_is_ignored_and_changes_nothing(
    service: Service, fleet: Fleet
) -> None:
    """Device B answers with device A's command id: A stays where it was."""
    state = await held_rollout(service, fleet)
    forger = state.others[0]
    before = await ignored(service)
    record_before = await service.stores.rollout_devices.device(state.rollout_id, state.held.id)
    counts_before = (await view(service, state.rollout_id))["counts"]
    await fleet.publish_raw(
        forger.id,
        COMMAND,
        json.dumps(
            {"command_id": state.command_id, "status": "failed", "error": "forged"}
        ).encode(),
    )
    await wait_ignored(service, before, "wrong_device")
    assert moved(before, await ignored(service)) == {"wrong_device": 1}
    assert (
        await service.stores.rollout_devices.device(state.rollout_id, state.held.id)
        == record_before
    )
    assert await state_of(service, state.rollout_id, forger.id) == "succeeded"
    assert (await view(service, state.rollout_id))["counts"] == counts_before
    await finish(service, fleet, state)


async def assert_late_failure_ignored(
    service: Service, fleet: Fleet, state: Held, device: Device
) -> None:
    """A `failed` result from a device that succeeded is counted as late and changes nothing."""
    [command] = download_commands(fleet, device.id)
    before = await ignored(service)
    await fleet.report(
        device, COMMAND, {"command_id": command["command_id"], "status": "failed", "error": "x"}
    )
    await wait_ignored(service, before, "late")
    assert moved(before, await ignored(service)) == {"late": 1}
    assert await state_of(service, state.rollout_id, device.id) == "succeeded"


async def test_a_second_final_result_after_success_is_ignored_as_late(
    service: Service, fleet: Fleet
) -> None:
    state = await held_rollout(service, fleet)
    await assert_late_failure_ignored(service, fleet, state, state.others[0])
    await finish(service, fleet, state)


async def test_a_success_with_another_version_is_a_wrong_version_failure(
    service: Service, fleet: Fleet
) -> None:
    await upload_both(service)
    await fleet.add(3)
    [wrong] = await fleet.add(1, behaviour="wrong_version")
    before = await ignored(service)
    rollout = await start(
        service,
        """
name: wrong-version
firmware: {file: fw_2.1.0.bin, version: 2.1.0}
waves: [{percent: 100}]
policy: {max_failure_rate: 50%}
""",
    )
    done = await wait_state(service, rollout["id"], "completed")
    assert done["counts"]["succeeded"] == 3
    assert done["counts"]["failed"] == 1
    assert sum(done["counts"].values()) == done["total"] == 4
    assert done["failure_rate"] == pytest.approx(0.25)
    assert fleet.results[wrong.id][-1] == {
        "command_id": download_commands(fleet, wrong.id)[0]["command_id"],
        "status": "success",
        "version": "0.0.0-wrong",
    }
    response = await service.client.get(
        f"/v2/projects/{service.project_id}/rollouts/{rollout['id']}/devices",
        params={"state": "failed"},
    )
    assert response.status_code == 200, response.text
    [failed] = response.json()["data"]
    assert failed["device_id"] == wrong.id
    assert failed["failure"] == "wrong_version"
    assert moved(before, await ignored(service)) == {}  # a failure, not an ignored result


async def test_a_result_about_a_compacted_rollout_is_ignored_as_late(
    service: Service, fleet: Fleet
) -> None:
    """Its devices have no hash left (store/rollout_archive.py): still late, not unknown."""
    state = await held_rollout(service, fleet)
    await finish(service, fleet, state)

    async def compacted() -> bool:  # once the engine has let go of the finished rollout
        done = await service.stores.archive.compact(state.rollout_id, max_devices=100, at_ms=0)
        return done.outcome == "done"

    await wait_for(compacted)
    await assert_late_failure_ignored(service, fleet, state, state.others[0])
