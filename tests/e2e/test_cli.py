"""The `ota` server verbs, run as a user runs them (a subprocess) against a live service.

The service runs the API and the engine on real Redis and mosquitto; the test fleet answers
the commands. Each test checks what the user sees: the exit code, stdout, and one clear line
on stderr for an error, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.embedded import free_port
from tests.conftest import Service
from tests.e2e.fleet import Fleet
from tests.e2e.test_rollouts import upload_both

GOOD_PLAN = """\
name: cli-good
firmware: {file: fw_2.1.0.bin, version: 2.1.0}
waves:
  - {name: canary, devices: 2}
  - percent: 100
policy: {max_failure_rate: 10%, min_devices: 2}
"""
BAD_PLAN = """\
name: cli-bad
firmware: {file: fw_2.1.0.bin, version: 2.1.0}
waves:
  - {name: canary, devices: 4}
  - percent: 100
policy: {max_failure_rate: 10%, min_devices: 4}
"""
MANUAL_PLAN = """\
name: cli-manual
firmware: {file: fw_2.1.0.bin, version: 2.1.0}
waves:
  - {name: canary, devices: 1}
  - {percent: 100, approval: manual}
"""


@dataclass
class Ran:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


async def ota(service: Service | None, *args: str, env: dict[str, str] | None = None) -> Ran:
    """`ota ARGS` in a subprocess, pointed at `service` through the environment only."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTA_")}
    if service is not None:
        clean |= {
            "OTA_API_URL": service.base_url,
            "OTA_API_KEY": service.admin_key,
            "OTA_PROJECT": service.project_id,
        }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orchestrator",
        *args,
        env={**clean, **(env or {}), "COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(90):
        out, err = await process.communicate()
    assert process.returncode is not None
    ran = Ran(process.returncode, out.decode(), err.decode())
    assert "Traceback" not in ran.err, ran.err
    return ran


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


async def test_plan_shows_waves_and_who_is_left_out_and_starts_nothing(
    service: Service, fleet: Fleet, tmp_path: Path
) -> None:
    await upload_both(service)
    await fleet.add(5)
    http_only = await service.create_device(name="web", source="http")
    ran = await ota(service, "plan", write(tmp_path, "good.yaml", GOOD_PLAN))
    assert ran.code == 0, ran.err
    assert "cli-good: 5 devices, nothing started" in ran.out
    assert "canary" in ran.out
    assert "excluded: 1 devices" in ran.out
    assert http_only["id"] in ran.out
    listed = await ota(service, "list", "--json")
    assert listed.json() == []

    preview = (await ota(service, "plan", write(tmp_path, "g.yaml", GOOD_PLAN), "--json")).json()
    assert [(w["name"], w["reach"]) for w in preview["waves"]] == [("canary", 2), ("wave-2", 5)]


async def test_apply_watch_exits_0_when_the_rollout_completes(
    service: Service, fleet: Fleet, tmp_path: Path
) -> None:
    await upload_both(service)
    await fleet.add(6)
    ran = await ota(service, "apply", write(tmp_path, "good.yaml", GOOD_PLAN), "--watch")
    assert ran.code == 0, ran.out + ran.err
    assert "started cli-good" in ran.out
    assert "completed" in ran.out
    assert "succeeded 6" in ran.out

    [rollout] = (await ota(service, "list", "--json")).json()
    assert rollout["state"] == "completed"
    status = await ota(service, "status", rollout["id"], "--json")
    assert status.json()["counts"]["succeeded"] == 6
    events = await ota(service, "events", rollout["id"])
    assert events.code == 0
    assert "create" in events.out
    assert "complete" in events.out


async def test_apply_watch_exits_1_and_shows_why_when_the_rollout_halts(
    service: Service, fleet: Fleet, tmp_path: Path
) -> None:
    await upload_both(service)
    fleet.broken_files.add("fw_2.1.0.bin")
    await fleet.add(10)
    ran = await ota(service, "apply", write(tmp_path, "bad.yaml", BAD_PLAN), "--watch")
    assert ran.code == 1, ran.out + ran.err
    assert "halted" in ran.out
    assert "reason:" in ran.out
    assert "ota rollback" in ran.out  # what to do next

    [rollout] = (await ota(service, "list", "--json")).json()
    events = (await ota(service, "events", rollout["id"], "--json")).json()
    halt = [e for e in events if e.get("to") == "halted"]
    assert halt
    assert halt[0]["details"]["failure_rate"] > 0.1


async def test_actions_change_the_state_and_a_refused_one_is_one_line_exit_1(
    service: Service, fleet: Fleet, tmp_path: Path
) -> None:
    await upload_both(service)
    await fleet.add(3)
    started = await ota(service, "apply", write(tmp_path, "m.yaml", MANUAL_PLAN), "--json")
    assert started.code == 0, started.err
    rollout_id = started.json()["id"]

    async def state() -> str:
        return str((await ota(service, "status", rollout_id, "--json")).json()["state"])

    for _ in range(100):
        if await state() == "waiting_approval":
            break
        await asyncio.sleep(0.2)
    assert await state() == "waiting_approval"
    refused = await ota(service, "resume", rollout_id)
    assert refused.code == 1
    assert refused.err.count("\n") == 1
    assert "409" in refused.err
    assert "waiting_approval" in refused.err

    promoted = await ota(service, "promote", rollout_id, "--reason", "canary looks fine")
    assert promoted.code == 0, promoted.err
    watched = await ota(service, "status", rollout_id, "--watch")
    assert watched.code == 0, watched.out
    events = (await ota(service, "events", rollout_id, "--json")).json()
    assert any(e.get("reason") == "canary looks fine" for e in events)


async def test_seed_verbs_create_list_upload_and_send(
    service: Service, fleet: Fleet, tmp_path: Path
) -> None:
    created = await ota(service, "devices", "create", "--name", "th-1", "--tag", "lab", "--json")
    assert created.code == 0, created.err
    device_id = created.json()["metadata"]["device_id"]
    assert created.json()["metadata"]["device_token"]
    listed = await ota(service, "devices", "list", "--tag", "lab", "--json")
    assert [d["id"] for d in listed.json()] == [device_id]

    firmware = tmp_path / "fw_9.9.9.bin"
    firmware.write_bytes(b"\x7fELF" + os.urandom(1000))
    uploaded = await ota(service, "files", "upload", str(firmware))
    assert uploaded.code == 0, uploaded.err
    assert "uploaded fw_9.9.9.bin  1004 bytes" in uploaded.out
    files = await ota(service, "files", "list", "--json")
    assert files.code == 0, files.err
    assert [f["name"] for f in files.json()] == ["fw_9.9.9.bin"]

    sent = await ota(service, "send", device_id, "reboot", "{}", "--json")
    assert sent.code == 0, sent.err
    assert sent.json()["command_id"]


async def test_device_metadata_is_set_filtered_changed_and_removed_from_the_shell(
    service: Service,
) -> None:
    made = await ota(
        service, "devices", "create", "--name", "meta-1", "--metadata", "site=north", "--json"
    )
    assert made.code == 0, made.err
    device_id = made.json()["metadata"]["device_id"]
    await ota(service, "devices", "create", "--name", "meta-2", "--metadata", "site=south")
    north = await ota(service, "devices", "list", "--metadata", "site:north", "--json")
    assert [d["id"] for d in north.json()] == [device_id]

    changed = await ota(
        service, "devices", "update", device_id, "--metadata", "rack=7", "--name", "m1", "--json"
    )
    assert changed.code == 0, changed.err
    assert (changed.json()["name"], changed.json()["metadata"]["site"]) == ("m1", "north")
    assert changed.json()["metadata"]["rack"] == "7"
    removed = await ota(service, "devices", "update", device_id, "--unset", "site", "--json")
    assert "site" not in removed.json()["metadata"]
    assert (
        await ota(service, "devices", "list", "--metadata", "site:north", "--json")
    ).json() == []

    unpaired = await ota(service, "devices", "create", "--name", "x", "--metadata", "site")
    assert (unpaired.code, unpaired.err.strip()) == (
        1,
        "error: --metadata must be KEY=VALUE, got 'site'",
    )
    nothing = await ota(service, "devices", "update", device_id)
    assert nothing.code == 1
    assert "nothing to change" in nothing.err


async def test_projects_are_listed_renamed_and_deleted_through_the_api(service: Service) -> None:
    answer = await service.client.post("/v2/projects", json={"name": "cli-doomed"})
    assert answer.status_code == 201, answer.text
    doomed = answer.json()["data"]["id"]
    listed = await ota(service, "projects", "list", "--json")
    assert listed.code == 0, listed.err
    assert doomed in [p["id"] for p in listed.json()]

    renamed = await ota(service, "projects", "update", doomed, "--name", "cli-kept", "--tag", "x")
    assert (renamed.code, renamed.out.strip()) == (0, f"updated {doomed}: cli-kept")
    shown = (await service.client.get(f"/v2/projects/{doomed}")).json()["data"]
    assert (shown["name"], shown["tags"]) == ("cli-kept", ["x"])

    unasked = await ota(service, "projects", "delete", doomed)
    assert unasked.code == 1
    assert "--yes" in unasked.err
    assert (await service.client.get(f"/v2/projects/{doomed}")).status_code == 200
    deleted = await ota(service, "projects", "delete", doomed, "--yes")
    assert (deleted.code, deleted.out.strip()) == (0, f"deleted {doomed}")
    assert (await service.client.get(f"/v2/projects/{doomed}")).status_code == 404


async def test_errors_are_one_line_with_the_fix(service: Service, tmp_path: Path) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    unreachable = await ota(service, "list", env={"OTA_API_URL": nobody})
    assert unreachable.code == 1
    assert unreachable.err.startswith(f"error: cannot reach the API at {nobody}")
    assert "OTA_API_URL" in unreachable.err

    bad_key = await ota(service, "list", env={"OTA_API_KEY": "QB_wrong"})
    assert bad_key.code == 1
    assert "401" in bad_key.err
    assert "OTA_API_KEY" in bad_key.err

    no_project = await ota(service, "list", env={"OTA_PROJECT": ""})
    assert no_project.code == 1
    assert "--project" in no_project.err

    broken = write(tmp_path, "broken.yaml", GOOD_PLAN.replace("percent: 100", "percent: 120"))
    located = await ota(service, "apply", broken)
    assert located.code == 1
    assert located.err.startswith(f"{broken}:5:")
    assert "percent" in located.err

    missing = await ota(service, "status", "no-such-rollout")
    assert missing.code == 1
    assert "404" in missing.err

    not_json = await ota(service, "send", "some-device", "reboot", "{oops")
    assert not_json.code == 2
    assert "not JSON" in not_json.err
