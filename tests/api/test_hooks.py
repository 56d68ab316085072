"""Hook routes: registering templates, and what a delivery is answered before any engine runs.

No engine runs here (role "api"): an accepted delivery waits on the deploy stream, which these
tests read to check what was queued.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import httpx
import pytest

from orchestrator.domain.auth import Scope
from orchestrator.domain.hooks import sign_github, sign_standard
from tests.conftest import Service

FIRMWARE = "fw-2.1.0.bin"
TEMPLATE = """name: thermostat-${version}
firmware:
  file: ${file}
  version: "${version}"
waves:
  - {name: canary, devices: 1}
  - percent: 100
policy: {max_failure_rate: 10%}
"""


async def create_hook(service: Service, **body: Any) -> dict[str, Any]:
    response = await service.client.post(
        f"/v2/projects/{service.project_id}/hooks",
        json={"name": "release", "plan": TEMPLATE, **body},
    )
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def github(
    secret: str, body: bytes, delivery: str | None = None, event: str = ""
) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "X-Hub-Signature-256": sign_github(secret, body),
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
    }
    if event:
        headers["X-GitHub-Event"] = event
    return headers


def standard(
    secret: str, body: bytes, delivery: str, timestamp: int | None = None
) -> dict[str, str]:
    at = int(time.time()) if timestamp is None else timestamp
    return {
        "Content-Type": "application/json",
        "webhook-id": delivery,
        "webhook-timestamp": str(at),
        "webhook-signature": sign_standard(secret, delivery, at, body),
    }


async def deliver(
    service: Service, hook: dict[str, Any], body: bytes, headers: dict[str, str]
) -> httpx.Response:
    # Deliveries carry no API key: the signature is the credential.
    async with httpx.AsyncClient(timeout=30) as anonymous:
        return await anonymous.post(hook["url"], content=body, headers=headers)


async def queued(service: Service) -> list[dict[str, str]]:
    entries: Any = await service.stores.redis.xrange(service.stores.keys.deploy_requests())
    return [dict(fields) for _, fields in entries]


@pytest.fixture
async def hook(service: Service) -> dict[str, Any]:
    """A registered hook, with the firmware it deploys uploaded and one device to target."""
    assert (await service.upload(FIRMWARE, b"\x7fELF" * 100)).status_code == 201
    await service.create_device(name="t1")
    return await create_hook(service)


async def test_a_hook_is_registered_with_a_url_and_a_generated_secret(
    service: Service, hook: dict[str, Any]
) -> None:
    assert hook["url"] == f"{service.base_url}/v2/hooks/{hook['id']}"
    assert hook["secret"].startswith("whsec_")
    listed = (await service.client.get(f"/v2/projects/{service.project_id}/hooks")).json()
    assert [h["id"] for h in listed["data"]] == [hook["id"]]
    assert listed["data"][0]["secret"] is None  # shown once, at creation
    one = await service.client.get(f"/v2/projects/{service.project_id}/hooks/{hook['id']}")
    assert one.json()["data"]["plan"] == TEMPLATE


async def test_a_given_secret_is_kept(service: Service) -> None:
    made = await create_hook(service, secret="a-long-enough-secret-0123")
    assert made["secret"] == "a-long-enough-secret-0123"


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        (
            "name: fixed\nfirmware: {file: a.bin}\nwaves: [{percent: 100}]\n",
            r"never uses \$\{version\}",
        ),
        ("name: a-${version}\nfirmware: {file: ${build}}\n", r"plan:2:18: \$\{build\}"),
        ("name: a-${version}\nfirmware: {file: a.bin}\nwaves: [{percent: 120}]\n", "plan:3:"),
    ],
)
async def test_a_bad_template_is_refused_with_a_located_error(
    service: Service, plan: str, message: str
) -> None:
    response = await service.client.post(
        f"/v2/projects/{service.project_id}/hooks", json={"name": "x", "plan": plan}
    )
    assert response.status_code == 400
    assert re.search(message, response.json()["message"]), response.json()
    assert (await service.client.get(f"/v2/projects/{service.project_id}/hooks")).json()[
        "data"
    ] == []


async def test_registering_needs_the_hooks_scope(service: Service) -> None:
    key = await service.create_key(Scope.ROLLOUTS_WRITE)
    response = await service.client.post(
        f"/v2/projects/{service.project_id}/hooks",
        json={"name": "x", "plan": TEMPLATE},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code == 403
    assert "hooks:write" in response.json()["message"]


async def test_a_github_signed_delivery_is_accepted_and_queued_once(
    service: Service, hook: dict[str, Any]
) -> None:
    body = json.dumps({"version": "2.1.0", "file": FIRMWARE}).encode()
    headers = github(hook["secret"], body, delivery="gh-1")
    first = await deliver(service, hook, body, headers)
    assert first.status_code == 202, first.text
    data = first.json()["data"]
    assert data["duplicate"] is False
    repeat = await deliver(service, hook, body, headers)
    assert repeat.status_code == 202
    assert repeat.json()["data"] == {**data, "duplicate": True}
    requests = await queued(service)
    assert len(requests) == 1
    assert requests[0]["rollout_id"] == data["rollout_id"]
    assert "name: thermostat-2.1.0" in requests[0]["plan"]
    assert f"file: {FIRMWARE}" in requests[0]["plan"]
    deliveries = await service.client.get(
        f"/v2/projects/{service.project_id}/hooks/{hook['id']}/deliveries"
    )
    [listed] = deliveries.json()["data"]
    assert listed["id"] == "gh-1"
    assert (listed["scheme"], listed["status"], listed["version"]) == (
        "github",
        "accepted",
        "2.1.0",
    )


async def test_a_standard_webhooks_delivery_is_accepted(
    service: Service, hook: dict[str, Any]
) -> None:
    body = json.dumps({"version": "2.1.0", "file": FIRMWARE}).encode()
    response = await deliver(service, hook, body, standard(hook["secret"], body, "msg_1"))
    assert response.status_code == 202, response.text
    assert len(await queued(service)) == 1


async def test_a_github_release_event_deploys_its_tag(
    service: Service, hook: dict[str, Any]
) -> None:
    body = json.dumps(
        {
            "action": "published",
            "release": {"tag_name": "v2.1.0", "assets": [{"name": FIRMWARE}]},
            "repository": {"full_name": "acme/thermostat"},
        }
    ).encode()
    response = await deliver(service, hook, body, github(hook["secret"], body, event="release"))
    assert response.status_code == 202, response.text
    [request] = await queued(service)
    assert 'version: "2.1.0"' in request["plan"]


async def test_a_ping_is_answered_and_starts_nothing(
    service: Service, hook: dict[str, Any]
) -> None:
    body = b'{"zen": "Design for failure.", "hook_id": 1}'
    response = await deliver(service, hook, body, github(hook["secret"], body, event="ping"))
    assert response.status_code == 200
    assert response.json()["data"]["rollout_id"] is None
    assert await queued(service) == []


@pytest.mark.parametrize(
    "tamper",
    ["no signature", "wrong secret", "stale", "changed body"],
)
async def test_bad_or_stale_signatures_are_401_and_start_nothing(
    service: Service, hook: dict[str, Any], tamper: str
) -> None:
    body = json.dumps({"version": "2.1.0", "file": FIRMWARE}).encode()
    sent = body
    if tamper == "no signature":
        headers = {"Content-Type": "application/json"}
    elif tamper == "wrong secret":
        headers = github("another-secret-of-some-length", body)
    elif tamper == "stale":
        headers = standard(hook["secret"], body, "msg_old", timestamp=int(time.time()) - 301)
    else:
        headers = github(hook["secret"], body)
        sent = body.replace(b"2.1.0", b"6.6.6")
    response = await deliver(service, hook, sent, headers)
    assert response.status_code == 401, response.text
    assert response.json()["success"] is False
    assert await queued(service) == []
    metrics = (await service.client.get("/metrics")).text
    assert 'ota_webhook_deliveries_total{result="unauthorized"} 1.0' in metrics


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"action": "opened"}', 'no "version"'),
        (b'{"version": "2.1.0"}', "names no firmware file"),
        (
            b'{"version": "2.1.0", "file": "fw-9.9.9.bin"}',
            "names 'fw-9.9.9.bin' but the project has no firmware file",
        ),
        (b'{"version": "2.1.0 bad", "file": "fw-2.1.0.bin"}', "version '2.1.0 bad'"),
        (b'{"version": "2.1.0", "file": "fw-2.1.0.bin", "n": NaN}', "body.n is NaN"),
        (b'{"version": "2.1.0", "n": ' + b"1" * 5000 + b"}", "body.n is a number of 5000"),
        (b'{"version": "2.1.0", "n": ' + b"[" * 9000 + b"]" * 9000 + b"}", "nested too deeply"),
    ],
)
async def test_a_signed_body_that_is_not_a_deploy_is_400(
    service: Service, hook: dict[str, Any], body: bytes, message: str
) -> None:
    response = await deliver(service, hook, body, github(hook["secret"], body))
    assert response.status_code == 400, response.text
    assert message in response.json()["message"]
    assert await queued(service) == []


async def test_an_unknown_or_deleted_hook_is_404(service: Service, hook: dict[str, Any]) -> None:
    deleted = await service.client.delete(f"/v2/projects/{service.project_id}/hooks/{hook['id']}")
    assert deleted.status_code == 200
    body = json.dumps({"version": "2.1.0", "file": FIRMWARE}).encode()
    response = await deliver(service, hook, body, github(hook["secret"], body))
    assert response.status_code == 404
    assert (await service.client.get(f"/v2/projects/{service.project_id}/hooks")).json()[
        "data"
    ] == []


async def test_a_captured_github_delivery_replayed_with_a_new_id_starts_nothing(
    service: Service, hook: dict[str, Any]
) -> None:
    """GitHub's signature does not cover X-GitHub-Delivery: the signed body is deduplicated."""
    body = json.dumps({"version": "2.1.0", "file": FIRMWARE}).encode()
    first = await deliver(service, hook, body, github(hook["secret"], body, delivery="gh-1"))
    assert first.status_code == 202, first.text
    replayed = github(hook["secret"], body, delivery="gh-replayed")
    again = await deliver(service, hook, body, replayed)
    assert again.status_code == 202, again.text
    assert again.json()["data"]["duplicate"] is True
    assert again.json()["data"]["rollout_id"] == first.json()["data"]["rollout_id"]
    assert len(await queued(service)) == 1
    listed = await service.client.get(
        f"/v2/projects/{service.project_id}/hooks/{hook['id']}/deliveries"
    )
    assert [d["id"] for d in listed.json()["data"]] == ["gh-1"]


async def test_the_same_body_signed_for_another_hook_is_not_a_repeat(
    service: Service, hook: dict[str, Any]
) -> None:
    """The signed-body record is per hook: a second hook deploys the same release too."""
    other = await create_hook(service, name="second")
    body = json.dumps({"version": "2.1.0", "file": FIRMWARE}).encode()
    first = await deliver(service, hook, body, github(hook["secret"], body))
    second = await deliver(service, other, body, github(other["secret"], body))
    assert (first.status_code, second.status_code) == (202, 202)
    assert second.json()["data"]["duplicate"] is False


async def test_creating_a_hook_needs_rollouts_write_too(service: Service) -> None:
    """A hooks:write-only key would otherwise start rollouts with a secret of its own."""
    key = await service.create_key(Scope.HOOKS_WRITE)
    response = await service.client.post(
        f"/v2/projects/{service.project_id}/hooks",
        json={"name": "x", "plan": TEMPLATE, "secret": "a-secret-the-caller-chose"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code == 403, response.text
    assert "'rollouts:write'" in response.json()["message"]
    assert await service.stores.hooks.of_project(service.project_id) == []
    both = await service.create_key(Scope.HOOKS_WRITE, Scope.ROLLOUTS_WRITE)
    allowed = await service.client.post(
        f"/v2/projects/{service.project_id}/hooks",
        json={"name": "x", "plan": TEMPLATE},
        headers={"Authorization": f"Bearer {both}"},
    )
    assert allowed.status_code == 201, allowed.text


async def test_hooks_read_lists_hooks_and_deliveries_but_cannot_change_them(
    service: Service, hook: dict[str, Any]
) -> None:
    reader = {"Authorization": f"Bearer {await service.create_key(Scope.HOOKS_READ)}"}
    base = f"/v2/projects/{service.project_id}/hooks"
    assert (await service.client.get(base, headers=reader)).status_code == 200
    one = await service.client.get(f"{base}/{hook['id']}", headers=reader)
    assert one.status_code == 200
    assert one.json()["data"]["secret"] is None
    deliveries = await service.client.get(f"{base}/{hook['id']}/deliveries", headers=reader)
    assert deliveries.status_code == 200
    refused = await service.client.delete(f"{base}/{hook['id']}", headers=reader)
    assert refused.status_code == 403
    assert "hooks:write" in refused.json()["message"]
    made = await service.client.post(base, json={"name": "x", "plan": TEMPLATE}, headers=reader)
    assert made.status_code == 403
