"""Hook deploys and notifications end to end: the API, the engine, Redis, mosquitto, a fleet.

The notification receiver is a real HTTP server (uvicorn) in the test, checking every request
the way a subscriber would: the Standard Webhooks signature over the raw body.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn

from orchestrator.domain.hooks import sign_github
from orchestrator.embedded import free_port
from orchestrator.settings import Settings
from tests.conftest import Service, wait_for
from tests.e2e.fleet import Fleet
from tests.e2e.test_rollouts import view, wait_state

FIRMWARE = "fw-3.0.0.bin"
TEMPLATE = """name: hooked-${version}
firmware: {file: "${file}", version: "${version}"}
waves:
  - {name: canary, devices: 1}
  - percent: 100
policy: {max_failure_rate: 10%, min_devices: 1}
"""


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Failed notifications are tried again after 50 ms, doubling; the receiver on loopback
    is allowed explicitly (by default the service posts to public addresses only)."""
    return settings.model_copy(update={"notify_retry_s": 0.05, "notify_allow_hosts": "127.0.0.1"})


@dataclass
class Receiver:
    """An ASGI app that records every request and fails the first `failures` of them."""

    failures: int
    requests: list[tuple[dict[str, str], bytes, int]] = field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        status = 503 if len(self.requests) < self.failures else 204
        self.requests.append((headers, body, status))
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    """The receiver on a free port, and its URL."""
    app = Receiver(failures=2)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_config=None)
    )
    task = asyncio.create_task(server.serve())

    async def serving() -> bool:
        return server.started

    await wait_for(serving, timeout_s=10, interval_s=0.01)
    yield app, f"http://127.0.0.1:{port}/ota-events"
    server.should_exit = True
    await asyncio.wait_for(task, 10)


async def register(service: Service) -> dict[str, Any]:
    response = await service.client.post(
        f"/v2/projects/{service.project_id}/hooks", json={"name": "ci", "plan": TEMPLATE}
    )
    assert response.status_code == 201, response.text
    hook: dict[str, Any] = response.json()["data"]
    return hook


async def deliver(service: Service, hook: dict[str, Any], delivery: str) -> dict[str, Any]:
    body = json.dumps({"version": "3.0.0", "file": FIRMWARE}).encode()
    response = await service.client.post(
        hook["url"],
        content=body,
        headers={
            "Content-Type": "application/json",
            "X-Hub-Signature-256": sign_github(hook["secret"], body),
            "X-GitHub-Delivery": delivery,
            "Authorization": "",
        },
    )
    assert response.status_code == 202, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


async def started(service: Service, rollout_id: str) -> None:
    """Wait for the engine to create the rollout a delivery was promised."""
    path = f"/v2/projects/{service.project_id}/rollouts/{rollout_id}"

    async def exists() -> bool:
        return (await service.client.get(path)).status_code == 200

    await wait_for(exists, timeout_s=15, interval_s=0.05)


async def test_a_signed_delivery_starts_a_rollout_that_completes_and_a_repeat_starts_nothing(
    service: Service, fleet: Fleet
) -> None:
    assert (await service.upload(FIRMWARE, b"\x7fELF-3" * 500)).status_code == 201
    devices = await fleet.add(5)
    hook = await register(service)
    delivery = str(uuid.uuid4())
    accepted = await deliver(service, hook, delivery)
    await started(service, accepted["rollout_id"])
    done = await wait_state(service, accepted["rollout_id"], "completed")
    assert done["name"] == "hooked-3.0.0"
    assert done["counts"]["succeeded"] == 5
    assert done["created_by"] == "hook ci"
    repeat = await deliver(service, hook, delivery)
    assert repeat == {**accepted, "duplicate": True}
    rollouts = await service.client.get(f"/v2/projects/{service.project_id}/rollouts")
    assert [r["id"] for r in rollouts.json()["rollouts"]] == [accepted["rollout_id"]]
    for device in devices:
        sent = [c for c in fleet.devices[device.id].commands if c["command"] == "download_firmware"]
        assert len(sent) == 1
    deliveries = await service.client.get(
        f"/v2/projects/{service.project_id}/hooks/{hook['id']}/deliveries"
    )
    [record] = deliveries.json()["data"]
    assert record["status"] == "started"
    assert record["reason"] == "rollout started over 5 devices"


async def test_a_delivery_the_engine_cannot_start_is_recorded_as_failed(
    service: Service, fleet: Fleet
) -> None:
    assert (await service.upload(FIRMWARE, b"\x7fELF-3" * 500)).status_code == 201
    hook = await register(service)  # no device in the project: the target matches nothing
    accepted = await deliver(service, hook, "no-devices")
    path = f"/v2/projects/{service.project_id}/hooks/{hook['id']}/deliveries"
    seen: dict[str, Any] = {}

    async def settled() -> bool:
        seen.update((await service.client.get(path)).json()["data"][0])
        return bool(seen["status"] != "accepted")

    await wait_for(settled, timeout_s=15, interval_s=0.1)
    assert seen["status"] == "failed"
    assert "matches no eligible device" in seen["reason"]
    missing = await service.client.get(
        f"/v2/projects/{service.project_id}/rollouts/{accepted['rollout_id']}"
    )
    assert missing.status_code == 404


def signature_holds(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The check a subscriber makes, written out from the Standard Webhooks spec."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(
        hmac.compare_digest(part.removeprefix("v1,"), expected)
        for part in headers["webhook-signature"].split()
    )


async def test_subscribers_get_one_signed_delivery_per_event_despite_failures(
    service: Service, fleet: Fleet, receiver: tuple[Receiver, str]
) -> None:
    app, url = receiver
    subscribed = await service.client.post(
        f"/v2/projects/{service.project_id}/notifications",
        json={"url": url, "events": ["started", "wave_completed", "completed"]},
    )
    assert subscribed.status_code == 201, subscribed.text
    subscription = subscribed.json()["data"]
    assert (await service.upload(FIRMWARE, b"\x7fELF-3" * 500)).status_code == 201
    await fleet.add(4)
    hook = await register(service)
    rollout_id = (await deliver(service, hook, "release-3"))["rollout_id"]
    await started(service, rollout_id)
    await wait_state(service, rollout_id, "completed")

    def delivered() -> list[str]:
        return [h["webhook-id"] for h, _, status in app.requests if status == 204]

    async def all_three() -> bool:
        return len(delivered()) == 3

    await wait_for(all_three, timeout_s=20, interval_s=0.05)
    assert len(set(delivered())) == 3  # one successful delivery per event
    assert [status for _, _, status in app.requests].count(503) == 2
    failed_ids = {h["webhook-id"] for h, _, status in app.requests if status == 503}
    assert failed_ids <= set(delivered())  # retries reuse the id: receivers can deduplicate
    types = []
    for headers, body, _ in app.requests:
        assert signature_holds(subscription["secret"], headers, body)
        event = json.loads(body)
        assert event["specversion"] == "1.0"
        assert event["id"] == headers["webhook-id"]
        assert event["subject"] == rollout_id
        assert event["data"]["rollout"]["id"] == rollout_id
        types.append(event["type"])
    assert set(types) == {
        "io.ota.rollout.started",
        "io.ota.rollout.wave_completed",
        "io.ota.rollout.completed",
    }
    completed = next(
        json.loads(body)
        for _, body, status in app.requests
        if status == 204 and json.loads(body)["type"] == "io.ota.rollout.completed"
    )
    assert completed["data"]["rollout"]["counts"]["succeeded"] == 4
    assert completed["data"]["rollout"]["state"] == "completed"

    path = f"/v2/projects/{service.project_id}/notifications/{subscription['id']}/deliveries"
    notices = (await service.client.get(path)).json()["data"]
    assert {n["state"] for n in notices} == {"delivered"}
    attempts = [a["status_code"] for n in notices for a in n["attempts"]]
    assert sorted(attempts) == [204, 204, 204, 503, 503]
    assert (await view(service, rollout_id))["state"] == "completed"
    metrics = (await service.client.get("/metrics")).text
    assert 'ota_notifications_total{result="delivered"} 3.0' in metrics
    assert 'ota_notifications_total{result="retrying"} 2.0' in metrics
