"""`/v2/projects`: create, read, list, update and delete, driven the way Qubitro's clients do.

The Node.js SDK and code written from docs.qubitro.com send `Authorization: Bearer QB_…`, read
`data` from the envelope (`id`, `name`, `description`, `created_at`, `tags`; early SDK versions
named it `created`) and, on an error, `status` and `message`. Every test runs with the broker's
dynamic security on, so a device is an MQTT account whose removal can be seen. The 405 of the
project paths are in test_openapi.py with every other path's.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from orchestrator.client import ApiClient, ApiError
from orchestrator.domain.auth import Scope
from orchestrator.domain.devices import DeviceSource
from orchestrator.domain.hooks import sign_github
from orchestrator.embedded import EmbeddedBroker
from orchestrator.errors import ProjectDeleting
from orchestrator.settings import Settings
from orchestrator.transport.dynsec import DynsecClient, device_role
from tests.conftest import Service, on_dynsec, stored_device, wait_for

# The body of docs.qubitro.com's "Create a new project".
DOCS_BODY = {
    "name": "Production IoT Fleet",
    "description": "Production environment IoT devices",
    "tags": ["production", "fleet", "monitoring"],
}
FIRMWARE = "fw_2.0.0.bin"
PLAN = f"""\
name: fw-2.0.0
firmware:
  file: {FIRMWARE}
waves:
  - percent: 100
"""
YAML = {"Content-Type": "application/yaml"}
# A delivery is accepted but starts nothing where an engine runs (tests/e2e): no device matches.
HOOK_TEMPLATE = PLAN.replace("fw-2.0.0", "fw-${version}") + "target:\n  tags: [nowhere]\n"


@pytest.fixture
def settings(settings: Settings, dynsec_broker: EmbeddedBroker) -> Settings:
    """Devices get broker accounts, as with `ota serve`'s embedded broker."""
    return on_dynsec(settings, dynsec_broker)


async def create(service: Service, body: dict[str, Any]) -> dict[str, Any]:
    response = await service.client.post("/v2/projects", json=body)
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def refused(response: httpx.Response, status: int, *words: str) -> str:
    """The error's message, after checking the status the SDK reads and the words in it."""
    assert response.status_code == status, response.text
    body = response.json()
    assert (body["success"], body["status"]) == (False, status)
    message: str = body["message"]
    for word in words:
        assert word in message, message
    return message


# --- create, read, list ----------------------------------------------------------------------


async def test_create_project_is_201_with_a_uuid_id(service: Service) -> None:
    response = await service.client.post("/v2/projects", json={"name": "fleet"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["success"] is True
    assert body["status"] == 201
    assert body["action"] == "create project"
    assert body["data"]["name"] == "fleet"
    assert str(uuid.UUID(body["data"]["id"])) == body["data"]["id"]


async def test_the_docs_body_is_created_and_answered_in_data(service: Service) -> None:
    data = await create(service, DOCS_BODY)
    assert {name: data[name] for name in DOCS_BODY} == DOCS_BODY
    assert data["created_at"].endswith("Z")
    assert data["created"] == data["created_at"]  # early Node.js SDK versions read `created`
    assert data["deleting"] is False


async def test_description_and_tags_may_be_left_out(service: Service) -> None:
    data = await create(service, {"name": "bare"})
    assert (data["description"], data["tags"]) == ("", [])


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"tags": ["has space"]}, ("tags[0]", "'has space'", "without spaces")),
        ({"tags": ["ok", "a;b"]}, ("tags[1]", "'a;b'", "';'")),
        ({"tags": [f"t{n}" for n in range(101)]}, ("body.tags", "at most 100")),
        ({"tags": "production"}, ("body.tags", "list")),
        ({"description": "d" * 501}, ("body.description", "at most 500")),
        ({"name": ""}, ("body.name", "at least 1")),
        ({"owner": "me"}, ("body.owner", "not permitted")),
    ],
)
async def test_a_bad_field_is_400_naming_the_value_and_the_fix(
    service: Service, body: dict[str, Any], words: tuple[str, ...]
) -> None:
    response = await service.client.post("/v2/projects", json={"name": "x", **body})
    refused(response, 400, *words)
    assert await service.stores.projects.ids() == [service.project_id]


async def test_a_created_project_can_be_read_back(service: Service) -> None:
    created = await create(service, DOCS_BODY)
    response = await service.client.get(f"/v2/projects/{created['id']}")
    assert response.status_code == 200, response.text
    assert response.json()["data"] == created
    assert response.json()["action"] == "get project"


async def test_the_list_is_newest_first(service: Service) -> None:
    """As the docs say; the fixture's project is the oldest."""
    made = [(await create(service, {"name": f"p{n}"}))["id"] for n in range(3)]
    response = await service.client.get("/v2/projects")
    assert response.status_code == 200, response.text
    assert [p["id"] for p in response.json()["data"]] == [*reversed(made), service.project_id]


async def test_a_project_stored_before_descriptions_and_tags_reads_and_lists_by_its_age(
    service: Service,
) -> None:
    keys, redis = service.stores.keys, service.stores.redis
    old = str(uuid.uuid4())
    await redis.hset(
        keys.project(old), mapping={"id": old, "name": "old", "created_at": "2020-01-01T00:00:00Z"}
    )
    await redis.zadd(keys.projects(), {old: 0})  # how the index held every project then
    newer = (await create(service, {"name": "newer"}))["id"]
    listed = (await service.client.get("/v2/projects")).json()["data"]
    assert [p["id"] for p in listed] == [newer, service.project_id, old]
    assert listed[-1] | {"description": "", "tags": []} == listed[-1]


async def test_a_non_admin_key_cannot_create_a_project(service: Service) -> None:
    key = await service.create_key(*[scope for scope in Scope if scope is not Scope.ADMIN])
    response = await service.client.post(
        "/v2/projects", json={"name": "x"}, headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 403, response.text
    assert "'admin'" in response.json()["message"]
    assert await service.stores.projects.ids() == [service.project_id]


async def test_the_list_shows_only_the_projects_a_limited_key_may_use(service: Service) -> None:
    other = await service.stores.projects.create("other")
    third = await service.stores.projects.create("third")
    admin_list = await service.client.get("/v2/projects")
    assert admin_list.status_code == 200
    assert {p["id"] for p in admin_list.json()["data"]} == {
        service.project_id,
        other.id,
        third.id,
    }

    key = await service.create_key(Scope.DEVICES_READ, projects=frozenset({other.id, third.id}))
    limited = await service.client.get("/v2/projects", headers={"Authorization": f"Bearer {key}"})
    assert limited.status_code == 200
    assert {p["id"] for p in limited.json()["data"]} == {other.id, third.id}
    assert {p["name"] for p in limited.json()["data"]} == {"other", "third"}


async def test_a_limited_key_cannot_read_another_project(service: Service) -> None:
    other = await service.stores.projects.create("other")
    key = await service.create_key(Scope.DEVICES_READ, projects=frozenset({other.id}))
    response = await service.client.get(
        f"/v2/projects/{service.project_id}", headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 403
    assert service.project_id in response.json()["message"]


async def test_an_unknown_project_is_404(service: Service) -> None:
    missing = str(uuid.uuid4())
    response = await service.client.get(f"/v2/projects/{missing}")
    assert response.status_code == 404
    body = response.json()
    assert body["action"] == "get project"
    assert missing in body["message"]


async def test_a_project_limited_admin_key_cannot_create_projects(service: Service) -> None:
    key = await service.create_key(Scope.ADMIN, projects=frozenset({service.project_id}))
    response = await service.client.post(
        "/v2/projects", json={"name": "x"}, headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 403
    assert "limited to some projects" in response.json()["message"]


# --- update -------------------------------------------------------------------------------


async def test_patch_changes_what_it_names_and_keeps_the_rest(service: Service) -> None:
    created = await create(service, DOCS_BODY)
    url = f"/v2/projects/{created['id']}"
    response = await service.client.patch(
        url, json={"description": "Staging fleet", "tags": ["staging", "staging", "eu_west"]}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["action"], body["status"]) == ("update project", 200)
    expected = {**created, "description": "Staging fleet", "tags": ["staging", "eu_west"]}
    assert body["data"] == expected
    assert (await service.client.get(url)).json()["data"] == expected

    renamed = await service.client.patch(url, json={"name": "Staging", "description": None})
    assert renamed.json()["data"] == {**expected, "name": "Staging"}
    unchanged = await service.client.patch(url, json={})
    assert unchanged.json()["data"] == {**expected, "name": "Staging"}


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"tags": ["no spaces please"]}, ("tags[0]", "'no spaces please'")),
        ({"description": "d" * 501}, ("body.description", "at most 500")),
        ({"name": ""}, ("body.name", "at least 1")),
        ({"id": "mine"}, ("body.id", "not permitted")),
    ],
)
async def test_a_bad_patch_is_400_naming_the_value_and_changes_nothing(
    service: Service, body: dict[str, Any], words: tuple[str, ...]
) -> None:
    created = await create(service, DOCS_BODY)
    url = f"/v2/projects/{created['id']}"
    response = await service.client.patch(url, json=body)
    assert refused(response, 400, *words)
    assert response.json()["action"] == "update project"
    assert (await service.client.get(url)).json()["data"] == created


async def test_patching_an_unknown_project_is_404(service: Service) -> None:
    missing = str(uuid.uuid4())
    response = await service.client.patch(f"/v2/projects/{missing}", json={"name": "x"})
    refused(response, 404, missing)


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
async def test_changing_or_deleting_a_project_needs_an_admin_key_that_may_use_it(
    service: Service, method: str
) -> None:
    other = await service.stores.projects.create("other")
    url = f"/v2/projects/{service.project_id}"
    body: dict[str, Any] = {"json": {"name": "x"}} if method == "PATCH" else {}
    writer = await service.create_key(*[scope for scope in Scope if scope is not Scope.ADMIN])
    response = await service.client.request(
        method, url, headers={"Authorization": f"Bearer {writer}"}, **body
    )
    refused(response, 403, "'admin'", "--scope admin")
    elsewhere = await service.create_key(Scope.ADMIN, projects=frozenset({other.id}))
    response = await service.client.request(
        method, url, headers={"Authorization": f"Bearer {elsewhere}"}, **body
    )
    refused(response, 403, service.project_id)
    assert (await service.stores.projects.get(service.project_id)) is not None


# --- delete -------------------------------------------------------------------------------


async def _fill(service: Service, project_id: str) -> dict[str, Any]:
    """Something of every kind in the project, made through the API; the ids to look for."""
    prefix = f"/v2/projects/{project_id}"
    client = service.client

    async def made(path: str, **options: Any) -> dict[str, Any]:
        response = await client.post(f"{prefix}/{path}", **options)
        assert response.status_code == 201, response.text
        data: dict[str, Any] = response.json()["data"]
        return data

    devices = [await made("devices", json={"name": f"d{n}", "source": "mqtt"}) for n in range(3)]
    http_device = await made("devices", json={"name": "h", "source": "http", "tags": ["lab"]})
    await made("files", files={"file": (FIRMWARE, b"\x7fELF" * 64)}, data={"type": "firmware"})
    await made("files", files={"file": ("logo.png", b"\x89PNG" * 8)}, data={"type": "logo"})
    sent = await client.post(
        f"{prefix}/devices/{devices[0]['id']}/communication/command",
        json={"command": "download_firmware", "data": {"file_name": FIRMWARE}},
    )
    assert sent.status_code == 200, sent.text
    rollout = await made("rollouts", content=PLAN, headers=YAML)
    async with asyncio.timeout(10):  # where an engine runs it may start the rollout meanwhile
        while (
            aborted := await client.post(f"{prefix}/rollouts/{rollout['id']}/abort")
        ).status_code == 409:
            assert "meanwhile" in aborted.text, aborted.text
    assert aborted.status_code == 200, aborted.text
    hook = await made("hooks", json={"name": "release", "plan": HOOK_TEMPLATE})
    delivery = json.dumps({"version": "2.1.0", "file": FIRMWARE}).encode()
    async with httpx.AsyncClient(timeout=30) as anonymous:
        accepted = await anonymous.post(
            hook["url"],
            content=delivery,
            headers={
                "Content-Type": "application/json",
                "X-Hub-Signature-256": sign_github(hook["secret"], delivery),
                "X-GitHub-Delivery": "gh-1",
            },
        )
    assert accepted.status_code == 202, accepted.text
    subscription = await made("notifications", json={"url": "http://93.184.215.14:8080/ota"})
    notice = f"notice-{uuid.uuid4().hex}"
    await service.stores.notifications.enqueue([(notice, subscription["id"], {"type": "x"})])
    return {
        "devices": [d["id"] for d in devices],
        "tokens": [d["metadata"]["device_token"] for d in [*devices, http_device]],
        "ids": [
            project_id,
            *(d["id"] for d in [*devices, http_device]),
            rollout["id"],
            hook["id"],
            subscription["id"],
            notice,
        ],
        "rollout": rollout["id"],
    }


async def _client_of(admin: DynsecClient, device_id: str) -> str | None:
    """The plugin's error for the device's client (None: it exists)."""
    return (await admin.execute([{"command": "getClient", "username": device_id}]))[0].error


async def test_delete_takes_everything_of_the_project_with_it(
    service: Service, dynsec_admin: DynsecClient
) -> None:
    doomed = (await create(service, DOCS_BODY))["id"]
    kept = await service.create_device(name="kept")
    made = await _fill(service, doomed)
    only_doomed = await service.create_key(Scope.DEVICES_READ, projects=frozenset({doomed}))
    both = await service.create_key(
        Scope.DEVICES_READ, projects=frozenset({doomed, service.project_id})
    )
    for device_id in made["devices"]:
        assert await _client_of(dynsec_admin, device_id) is None

    response = await service.client.delete(f"/v2/projects/{doomed}")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "action": "delete project",
        "message": "Operation completed successfully",
        "success": True,
    }

    refused(await service.client.get(f"/v2/projects/{doomed}"), 404, doomed)
    listed = (await service.client.get("/v2/projects")).json()["data"]
    assert [p["id"] for p in listed] == [service.project_id]
    stores, keys = service.stores, service.stores.keys
    left = [
        key
        async for key in stores.redis.scan_iter(match=f"{keys.prefix}*")
        if any(name in key for name in made["ids"])
    ]
    assert left == [keys.project_deletion(doomed)]  # the audit record, kept for a while
    record = await stores.redis.hgetall(keys.project_deletion(doomed))
    assert record["by"] == "admin"
    assert (record["devices"], record["files"], record["rollouts"]) == ("4", "2", "1")
    assert await stores.redis.ttl(keys.project_deletion(doomed)) > 0
    for token in made["tokens"]:
        assert await stores.devices.by_token(token) is None
    assert not [m for m in await stores.redis.zrange(keys.all_files(), 0, -1) if doomed in m]
    for index in (keys.finished_rollouts(), keys.archived_rollouts()):
        assert await stores.redis.zscore(index, made["rollout"]) is None
    assert not await stores.redis.sismember(keys.active_rollouts(), made["rollout"])
    assert not await stores.redis.zrange(keys.notices_due(), 0, -1)
    assert not (service.settings.files_dir / doomed).exists()
    for device_id in made["devices"]:
        assert await _client_of(dynsec_admin, device_id) == "Client not found"
        role = [{"command": "getRole", "rolename": device_role(device_id)}]
        assert (await dynsec_admin.execute(role))[0].error == "Role not found"

    # A key limited to the project alone is revoked (it could reach nothing); a key limited
    # to it and another keeps the other.
    gone = await service.client.get(
        "/v2/projects", headers={"Authorization": f"Bearer {only_doomed}"}
    )
    refused(gone, 401, "unknown API key")
    narrowed = await service.stores.api_keys.authenticate(both)
    assert narrowed is not None
    assert narrowed.projects == frozenset({service.project_id})

    # The other project is untouched.
    assert await _client_of(dynsec_admin, kept["id"]) is None
    assert (await service.client.get(f"/v2/projects/{service.project_id}/devices")).json()["data"][
        0
    ]["id"] == kept["id"]

    again = await service.client.delete(f"/v2/projects/{doomed}")
    refused(again, 404, doomed)


async def test_delete_is_409_naming_the_active_rollouts_and_changes_nothing(
    service: Service,
) -> None:
    project = service.project_id
    device = await service.create_device()
    assert (await service.upload(FIRMWARE, b"\x7fELF" * 64)).status_code == 201
    created = await service.client.post(
        f"/v2/projects/{project}/rollouts", content=PLAN, headers=YAML
    )
    assert created.status_code == 201, created.text
    rollout_id = created.json()["data"]["id"]

    response = await service.client.delete(f"/v2/projects/{project}")
    message = refused(response, 409, rollout_id, "fw-2.0.0", "pending", "abort")
    assert response.json()["action"] == "delete project"
    assert message.startswith(f"project {project} has active rollout")

    read = await service.client.get(f"/v2/projects/{project}")
    assert read.status_code == 200
    assert read.json()["data"]["deleting"] is False
    assert (
        await service.client.get(f"/v2/projects/{project}/devices/{device['id']}")
    ).status_code == 200
    assert (await service.create_device(name="still welcome"))["name"] == "still welcome"

    assert (
        await service.client.post(f"/v2/projects/{project}/rollouts/{rollout_id}/abort")
    ).status_code == 200
    deleted = await service.client.delete(f"/v2/projects/{project}")
    assert deleted.status_code == 200, deleted.text
    assert await service.stores.rollouts.get(rollout_id) is None


async def test_a_deletion_cut_short_refuses_new_things_and_a_repeated_delete_finishes_it(
    service: Service,
) -> None:
    """As if the service died right after marking the project: nothing new can be made in it,
    also by a request that checked the project before the mark; DELETE again completes it.
    (Also run on a Redis Cluster, by tests/e2e/test_redis_cluster.py.)"""
    project = (await create(service, DOCS_BODY))["id"]
    prefix = f"/v2/projects/{project}"
    made = await _fill(service, project)
    begun = await service.stores.projects.begin_delete(project, by="crashed")
    assert begun.active == ()

    read = await service.client.get(prefix)
    assert read.status_code == 200
    assert read.json()["data"]["deleting"] is True
    listed = (await service.client.get("/v2/projects")).json()["data"]
    assert [p["deleting"] for p in listed if p["id"] == project] == [True]
    hint = f"DELETE /v2/projects/{project}"
    attempts = [
        service.client.post(f"{prefix}/devices", json={"name": "late", "source": "mqtt"}),
        service.client.post(
            f"{prefix}/rollouts", content=PLAN.replace("fw-2", "again"), headers=YAML
        ),
        service.client.post(
            f"{prefix}/files", files={"file": ("late.bin", b"x")}, data={"type": "firmware"}
        ),
        service.client.post(f"{prefix}/hooks", json={"name": "late", "plan": HOOK_TEMPLATE}),
        service.client.post(f"{prefix}/notifications", json={"url": "http://93.184.215.14/x"}),
        service.client.patch(prefix, json={"name": "late"}),
        service.client.get(f"{prefix}/devices"),
    ]
    for attempt in attempts:
        refused(await attempt, 409, "being deleted", hint)

    # Requests that passed the project check before the mark reach the stores: refused there.
    with pytest.raises(ProjectDeleting):
        await stored_device(service.stores, project, "late", DeviceSource.HTTP)
    _, outcome = await service.stores.rollouts.create(
        project_id=project,
        name="late",
        plan={},
        device_ids=[str(uuid.uuid4())],
        reach=[1],
        created_at="2030-01-01T00:00:00Z",
        created_by="late",
    )
    assert outcome.project_deleting
    assert not outcome.created

    response = await service.client.delete(prefix)
    assert response.status_code == 200, response.text
    left = [
        key
        async for key in service.stores.redis.scan_iter(match=f"{service.stores.keys.prefix}*")
        if any(name in key for name in made["ids"])
    ]
    assert left == [service.stores.keys.project_deletion(project)]
    record = await service.stores.redis.hgetall(service.stores.keys.project_deletion(project))
    assert record["by"] == "crashed"  # who began it


async def test_an_upload_under_way_when_the_project_is_deleted_is_409_and_leaves_nothing(
    service: Service,
) -> None:
    """The upload passed its project check before the deletion began: its bytes lose their
    directory and it is refused, with no file record left behind."""
    project = (await create(service, {"name": "doomed"}))["id"]
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="type"\r\n\r\nfirmware\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="late.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + b"x" * 4096
    rest = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield head
        await rest.wait()
        yield b"y" * 4096 + f"\r\n--{boundary}--\r\n".encode()

    upload = asyncio.create_task(
        service.client.post(
            f"/v2/projects/{project}/files",
            content=body(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
    )
    directory = service.settings.files_dir / project

    async def streaming() -> bool:
        return directory.is_dir() and any(directory.iterdir())

    await wait_for(streaming)
    deleted = await service.client.delete(f"/v2/projects/{project}")
    assert deleted.status_code == 200, deleted.text
    rest.set()
    refused(await upload, 409, "being deleted")
    assert not directory.exists()
    assert await service.stores.files.get(project, "late.bin") is None


async def test_deleting_an_unknown_project_is_404(service: Service) -> None:
    missing = str(uuid.uuid4())
    response = await service.client.delete(f"/v2/projects/{missing}")
    refused(response, 404, missing)
    assert response.json()["action"] == "delete project"


async def test_the_client_creates_lists_reads_changes_and_deletes_projects(
    service: Service,
) -> None:
    async with ApiClient(service.base_url, service.admin_key) as api:
        made = await api.create_project("fleet", description="Fleet", tags=["eu_west"])
        assert (made.description, made.tags) == ("Fleet", ["eu_west"])
        assert [p.id for p in await api.projects()] == [made.id, service.project_id]
        changed = await api.update_project(made.id, tags=["us_east"])
        assert changed == made.model_copy(update={"tags": ["us_east"]})
        assert await api.project(made.id) == changed
        answer = await api.delete_project(made.id)
        assert answer.action == "delete project"
        with pytest.raises(ApiError) as raised:
            await api.project(made.id)
    assert raised.value.status == 404
