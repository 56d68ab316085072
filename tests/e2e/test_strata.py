"""Strata end to end: one model failing while the fleet-wide rate is within the limit."""

from __future__ import annotations

from tests.conftest import Service
from tests.e2e.fleet import Fleet
from tests.e2e.test_rollouts import download_commands, start, upload_both, wait_state

# 40 devices, 4 of model TH-300 whose install always fails: 10% of the fleet.
# The canary of 20, filled in proportion to the models, holds 2 TH-300. Mid-wave the whole is
# judged from 10 finished devices: at worst 2 of 10 failed, 20%, within 25%; TH-300 never has
# min_devices finished mid-wave, so the wave's end judges it: 2 of 2 failed.
PLAN = """
name: strata-2.1.0
firmware: {file: fw_2.1.0.bin, version: 2.1.0}
waves:
  - {name: canary, devices: 20}
  - percent: 100
policy: {max_failure_rate: 25%, min_devices: 10, by: [model]}
"""


async def test_one_model_failing_halts_by_its_stratum_inside_the_stratified_canary(
    service: Service, fleet: Fleet
) -> None:
    await upload_both(service)
    good = await fleet.add(36, model="TH-200")
    bad = await fleet.add(4, "fail", model="TH-300")
    preview = await service.client.post(
        f"/v2/projects/{service.project_id}/rollouts",
        params={"dry_run": "true"},
        content=PLAN,
        headers={"Content-Type": "application/yaml"},
    )
    assert preview.status_code == 200, preview.text
    rollout = await start(service, PLAN)
    halted = await wait_state(service, rollout["id"], "halted")
    assert halted["reason"] == (
        "model=TH-300: failure rate 100.0% (2 of 2 finished devices) is over max_failure_rate 25.0%"
    )
    assert halted["wave"] == "canary"
    assert halted["failure_rate"] == 0.1  # the whole rollout: 2 of 20, within the limit
    assert halted["counts"]["succeeded"] == 18
    assert halted["counts"]["failed"] == 2
    assert halted["counts"]["pending"] == 20  # the next wave never started
    reached_bad = [d.id for d in bad if download_commands(fleet, d.id)]
    reached_good = [d.id for d in good if download_commands(fleet, d.id)]
    assert (len(reached_bad), len(reached_good)) == (2, 18)
    events = (
        await service.client.get(
            f"/v2/projects/{service.project_id}/rollouts/{rollout['id']}/events"
        )
    ).json()["data"]
    halt = next(e for e in events if e["action"] == "halt")
    assert halt["details"]["stratum"] == "model=TH-300"
    assert halt["details"]["rollout_failure_rate"] == 0.1
    assert halt["reason"] == halted["reason"]
    # The registry took the version each device reported with its success.
    shown = (
        await service.client.get(f"/v2/projects/{service.project_id}/devices/{reached_good[0]}")
    ).json()["data"]
    assert shown["firmware_version"] == "2.1.0"
    assert shown["firmware_version_at"] is not None
    never = (
        await service.client.get(f"/v2/projects/{service.project_id}/devices/{bad[0].id}")
    ).json()["data"]
    assert (never["firmware_version"], never["firmware_version_at"]) == (None, None)
