"""Strata end to end: one model failing while the fleet-wide rate is within the limit."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Service
from tests.e2e.fleet import Fleet
from tests.e2e.test_cli import ota, write
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
    dry = preview.json()["data"]
    assert [wave["strata"] for wave in dry["waves"]] == [
        {"model=TH-200": 18, "model=TH-300": 2},
        {"model=TH-200": 18, "model=TH-300": 2},
    ]
    assert dry["versions"] == {"(none)": 40}
    assert dry["warnings"] == []
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
    assert halted["strata"] == [
        {"stratum": "model=TH-200", "finished": 18, "failed": 0, "failure_rate": 0.0},
        {"stratum": "model=TH-300", "finished": 2, "failed": 2, "failure_rate": 1.0},
    ]
    status = await ota(service, "status", rollout["id"])
    assert "model=TH-300: 2 of 2 failed (100.0%)" in status.out
    assert "model=TH-200: 0 of 18 failed (0.0%)" in status.out
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


async def test_the_dry_run_shows_strata_per_wave_warns_of_an_unreached_one_and_the_version_mix(
    service: Service, fleet: Fleet, tmp_path: Path
) -> None:
    """`ota plan` as a user runs it; then a target on the version the devices reported."""
    await upload_both(service)
    await fleet.add(6, model="TH-200")
    await fleet.add(2, model="TH-300")
    tiny_canary = PLAN.replace("devices: 20", "devices: 1").replace("strata-2.1.0", "tiny")
    path = write(tmp_path, "tiny.yaml", tiny_canary)
    ran = await ota(service, "plan", path)
    assert ran.code == 0, ran.err
    assert "strata" in ran.out
    assert "firmware versions: (none) 8" in ran.out
    assert "warning: stratum model=TH-" in ran.out
    assert "give wave canary at least 2 devices" in ran.out
    shown = (await ota(service, "plan", path, "--json")).json()
    [(canary_label, in_canary)] = shown["waves"][0]["strata"].items()  # of either model
    assert in_canary == 1
    [unreached] = {"model=TH-200", "model=TH-300"} - {canary_label}
    rest = {"model=TH-200": 6, "model=TH-300": 2}
    rest[canary_label] -= 1
    assert shown["waves"][1]["strata"] == rest
    [warning] = shown["warnings"]
    assert warning.startswith(f"stratum {unreached} (")

    everyone = PLAN.replace("max_failure_rate: 25%", "max_failure_rate: 100%")
    done = await wait_state(service, (await start(service, everyone))["id"], "completed")
    assert done["counts"]["succeeded"] == 8
    versions = """
name: from-2.1.0
firmware: {file: fw_2.0.3.bin}
target: {versions: ["2.1.0"]}
waves: [{percent: 100}]
"""
    preview = await ota(service, "plan", write(tmp_path, "versions.yaml", versions), "--json")
    assert preview.json()["total"] == 8
    assert preview.json()["versions"] == {"2.1.0": 8}
