"""A crash between accepting a delivery and starting its rollout loses nothing.

The API runs alone (role "api"). A replica that read the deploy request and died before
acknowledging it is played by a consumer that reads the entry and never answers; an engine
replica started afterwards takes the entry over and starts the promised rollout, once.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

from orchestrator.domain.hooks import sign_standard
from orchestrator.embedded import free_port
from orchestrator.settings import Settings
from orchestrator.store import streams
from tests.conftest import Service, _serve, wait_for

FIRMWARE = "fw-4.0.0.bin"
TEMPLATE = """name: crash-${version}
firmware: {file: "${file}", version: "${version}"}
waves: [{percent: 100}]
"""


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The API only: no engine reads the deploy stream until the test starts one."""
    return settings.model_copy(update={"role": "api"})


async def test_a_request_read_by_a_replica_that_died_is_started_by_another_once(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streams, "RECLAIM_IDLE_MS", 200)
    monkeypatch.setattr(streams, "RECLAIM_EVERY_S", 0.2)
    assert (await service.upload(FIRMWARE, b"\x7fELF-4" * 100)).status_code == 201
    await service.create_device(name="d1")
    made = await service.client.post(
        f"/v2/projects/{service.project_id}/hooks", json={"name": "ci", "plan": TEMPLATE}
    )
    hook: dict[str, Any] = made.json()["data"]
    body = json.dumps({"version": "4.0.0", "file": FIRMWARE}).encode()
    delivery = f"msg_{uuid.uuid4().hex}"
    at = int(time.time())
    response = await service.client.post(
        hook["url"],
        content=body,
        headers={
            "Content-Type": "application/json",
            "webhook-id": delivery,
            "webhook-timestamp": str(at),
            "webhook-signature": sign_standard(hook["secret"], delivery, at, body),
        },
    )
    assert response.status_code == 202, response.text
    rollout_id = response.json()["data"]["rollout_id"]

    redis, stream = service.stores.redis, service.stores.keys.deploy_requests()
    await redis.xgroup_create(stream, streams.GROUP, id="0", mkstream=True)
    taken: Any = await redis.xreadgroup(streams.GROUP, "replica-that-died", {stream: ">"})
    assert len(taken[0][1]) == 1  # read, never acknowledged: then the replica died
    path = f"/v2/projects/{service.project_id}/rollouts/{rollout_id}"
    assert (await service.client.get(path)).status_code == 404

    engine_settings = service.settings.model_copy(
        update={"role": "engine", "http_port": free_port(), "instance_id": "replacement"}
    )
    server, task = await _serve(engine_settings)
    try:

        async def started() -> bool:
            return (await service.client.get(path)).status_code == 200

        await wait_for(started, timeout_s=20, interval_s=0.05)

        async def acknowledged() -> bool:
            pending: Any = await redis.xpending(stream, streams.GROUP)
            return int(pending["pending"]) == 0

        await wait_for(acknowledged, timeout_s=10, interval_s=0.05)
    finally:
        server.should_exit = True
        await task
    rollouts = (await service.client.get(f"/v2/projects/{service.project_id}/rollouts")).json()
    assert [r["id"] for r in rollouts["rollouts"]] == [rollout_id]
    deliveries = await service.client.get(
        f"/v2/projects/{service.project_id}/hooks/{hook['id']}/deliveries"
    )
    assert deliveries.json()["data"][0]["status"] == "started"
