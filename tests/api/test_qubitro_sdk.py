"""Qubitro's own Node.js SDK (`@qubitro/client`) against the service, unchanged.

`qubitro_sdk/client/` is the SDK's compiled JavaScript as published on GitHub (Apache-2.0),
byte for byte; `qubitro_sdk/scenario.js` runs it under `node` with its requests sent here
instead of to https://api.qubitro.com (see qubitro_sdk/README.md). The SDK sends the key as
a Bearer token, reads `data` of the envelope (every device in one answer: it has no paging),
deletes through its `Device` and `Project` classes built from what it read, and turns an error
body into its `Err` from `status` and `message`. It has no create: the project and the device
are made with docs.qubitro.com's bodies, sent with fetch as the docs' samples do.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.api.test_listing import stored_fleet
from tests.api.test_projects import DOCS_BODY
from tests.conftest import Service

NODE = shutil.which("node")
SCENARIO = Path(__file__).parent / "qubitro_sdk" / "scenario.js"
FLEET = 105  # more than a page of the store (100): the SDK must still get every device
DELETED = "Operation completed successfully"
# Seed 003's body with the values of docs.qubitro.com's device example.
DEVICE_BODY = {
    "name": "Temperature Sensor 01",
    "description": "Temperature sensor in warehouse zone A",
    "source": "mqtt",
    "tags": ["warehouse", "zone_a", "temperature"],
    "brand": "Custom",
    "model": "Custom",
}

pytestmark = pytest.mark.skipif(
    NODE is None, reason="node is not installed (`make system-deps` installs nodejs)"
)


async def run_sdk(service: Service, **given: Any) -> dict[str, Any]:
    """What every SDK call of scenario.js gave, run against `service`.

    QUBITRO_SDK_AXIOS, when set, is passed on: the SDK then runs on that installed axios.
    """
    assert NODE is not None
    scenario_input = {"api_url": service.base_url, "api_key": service.admin_key, **given}
    process = await asyncio.create_subprocess_exec(
        NODE,
        str(SCENARIO),
        json.dumps(scenario_input),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "QUBITRO_API_URL": service.base_url},
    )
    async with asyncio.timeout(60):
        stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    out: dict[str, Any] = json.loads(stdout)
    print("SDK transport:", out["transport"])
    return out


def sdk_error(result: dict[str, Any], status: int, *words: str) -> None:
    """The SDK rejected with its Err, holding the error body's status and message."""
    assert "error" in result, result
    error = result["error"]
    assert (error["type"], error["status"]) == ("Err", status), error
    for word in words:
        assert word in error["message"], error


async def test_the_sdk_reads_lists_deletes_and_reports_errors(service: Service) -> None:
    """Projects newest first, one project, all 105 devices of a project, one device; its
    classes delete a device and a project; 404 and 401 arrive as status and message."""
    fleet = service.project_id
    ids = await stored_fleet(service, FLEET)
    second = await service.client.post("/v2/projects", json={"name": "second"})
    assert second.status_code == 201, second.text
    second_id = second.json()["data"]["id"]
    unknown = str(uuid.uuid4())

    out = await run_sdk(
        service,
        wrong_key="QB_" + "x" * 40,
        fleet_project_id=fleet,
        device_id=ids[7],
        other_device_id=ids[8],
        unknown_project_id=unknown,
        project_body=DOCS_BODY,
        device_body=DEVICE_BODY,
    )

    # Made with the docs' bodies.
    assert out["created_project"]["status"] == 201, out["created_project"]
    created = out["created_project"]["body"]["data"]
    assert out["created_device"]["status"] == 201, out["created_device"]
    assert out["created_device"]["body"]["data"]["metadata"]["device_token"]

    # getProjects: newest first; getProjectById: the project as it was created.
    projects = out["projects"]["value"]
    assert [p["id"] for p in projects] == [created["id"], second_id, fleet]
    assert out["project"]["value"] == created
    assert created["created_at"] == projects[0]["created_at"]  # the SDK's Project field

    # getDevices: every device, no paging; getDeviceById: one, with the SDK's Device fields.
    devices = out["devices"]["value"]
    assert len(devices) == FLEET
    assert sorted(d["id"] for d in devices) == sorted(ids)
    device = out["device"]["value"]
    assert device["id"] == ids[7]
    assert device["projectId"] == fleet
    assert device["lastSeen"] == device["last_seen"]
    for name in ("name", "description", "brand", "model", "avatar"):
        assert isinstance(device[name], str), name

    # Device.delete and Project.delete resolve with the message; the things are gone.
    assert out["device_delete"] == {"value": DELETED}
    sdk_error(out["device_after_delete"], 404, ids[7])
    assert sorted(out["devices_after_delete"]["value"]) == sorted(set(ids) - {ids[7]})
    assert out["project_delete"] == {"value": DELETED}
    sdk_error(out["project_after_delete"], 404, created["id"])
    assert out["projects_after_delete"]["value"] == [second_id, fleet]

    # Errors: the body's status and message, never the SDK's 418 (an answer without a body).
    sdk_error(out["unknown_project_devices"], 404, unknown)
    sdk_error(out["device_data"], 404, "/data")
    sdk_error(out["wrong_key"], 401)
    sdk_error(out["no_key"], 401)
