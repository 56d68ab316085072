"""API keys at the HTTP edge: the header forms, the scopes each route needs, project limits,
and the one error body every failure has."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from orchestrator.domain.auth import Scope
from tests.conftest import Service

ERROR_KEYS = {"success", "status", "action", "message", "errors"}


def assert_error(response: httpx.Response, status: int, action: str | None) -> dict[str, Any]:
    """The response is the house error body with this status (and action); returns it."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == ERROR_KEYS
    assert body["success"] is False
    assert body["status"] == status
    assert isinstance(body["action"], str)
    assert body["action"]
    if action is not None:
        assert body["action"] == action
    assert isinstance(body["message"], str)
    assert body["message"]
    assert isinstance(body["errors"], list)
    return body


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_bearer_and_bare_key_both_authenticate(service: Service) -> None:
    url = f"/v2/projects/{service.project_id}/devices"
    for header in (
        f"Bearer {service.admin_key}",
        service.admin_key,
        f"bearer  {service.admin_key}",
    ):
        response = await service.client.get(url, headers={"Authorization": header})
        assert response.status_code == 200, (header, response.text)


async def test_a_missing_header_is_401_with_www_authenticate(service: Service) -> None:
    async with httpx.AsyncClient(base_url=service.base_url) as anonymous:
        response = await anonymous.get(f"/v2/projects/{service.project_id}/devices")
    body = assert_error(response, 401, "list devices")
    assert response.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in body["message"]


@pytest.mark.parametrize(
    "header", ["Bearer QB_not-a-real-key", "QB_not-a-real-key", "Bearer nope", "Basic abc"]
)
async def test_an_unknown_key_is_401(service: Service, header: str) -> None:
    response = await service.client.get(
        f"/v2/projects/{service.project_id}/devices", headers={"Authorization": header}
    )
    body = assert_error(response, 401, "list devices")
    assert "unknown API key" in body["message"]
    assert response.headers["www-authenticate"] == "Bearer"


async def test_devices_read_can_list_but_not_create(service: Service) -> None:
    key = await service.create_key(Scope.DEVICES_READ)
    url = f"/v2/projects/{service.project_id}/devices"
    listed = await service.client.get(url, headers=bearer(key))
    assert listed.status_code == 200, listed.text
    created = await service.client.post(
        url, json={"name": "d", "source": "mqtt"}, headers=bearer(key)
    )
    body = assert_error(created, 403, "create device")
    assert "'devices:write'" in body["message"]


async def test_devices_write_alone_cannot_read(service: Service) -> None:
    key = await service.create_key(Scope.DEVICES_WRITE)
    response = await service.client.get(
        f"/v2/projects/{service.project_id}/devices", headers=bearer(key)
    )
    body = assert_error(response, 403, "list devices")
    assert "'devices:read'" in body["message"]


async def test_files_read_can_list_but_not_upload_or_delete(service: Service) -> None:
    assert (await service.upload("fw.bin", b"x")).status_code == 201
    key = await service.create_key(Scope.FILES_READ)
    base = f"/v2/projects/{service.project_id}/files"
    listed = await service.client.get(base, params={"type": "firmware"}, headers=bearer(key))
    assert listed.status_code == 200, listed.text
    org_wide = await service.client.get("/v2/files?type=firmware", headers=bearer(key))
    assert org_wide.status_code == 200, org_wide.text
    upload = await service.client.post(
        base,
        files={"file": ("other.bin", b"y")},
        data={"type": "firmware"},
        headers=bearer(key),
    )
    assert "'files:write'" in assert_error(upload, 403, "upload file")["message"]
    delete = await service.client.delete(f"{base}/fw.bin", headers=bearer(key))
    assert "'files:write'" in assert_error(delete, 403, "delete file")["message"]


async def test_files_write_alone_cannot_list(service: Service) -> None:
    key = await service.create_key(Scope.FILES_WRITE)
    response = await service.client.get(
        f"/v2/projects/{service.project_id}/files?type=firmware", headers=bearer(key)
    )
    assert "'files:read'" in assert_error(response, 403, "list files")["message"]


async def test_the_command_route_needs_send_commands(service: Service) -> None:
    device = await service.create_device()
    url = f"/v2/projects/{service.project_id}/devices/{device['id']}/communication/command"
    every_other = [s for s in Scope if s not in {Scope.ADMIN, Scope.SEND_COMMANDS}]
    key = await service.create_key(*every_other)
    response = await service.client.post(
        url, json={"command": "reboot", "data": {}}, headers=bearer(key)
    )
    body = assert_error(response, 403, "send command")
    assert "'send-commands'" in body["message"]


async def test_a_key_limited_to_project_a_is_403_on_project_b(service: Service) -> None:
    project_a = await service.stores.projects.create("a")
    key = await service.create_key(Scope.ADMIN, projects=frozenset({project_a.id}))
    own = await service.client.get(f"/v2/projects/{project_a.id}/devices", headers=bearer(key))
    assert own.status_code == 200, own.text
    requests = [
        ("GET", f"/v2/projects/{service.project_id}/devices", None, "list devices"),
        (
            "POST",
            f"/v2/projects/{service.project_id}/devices",
            {"name": "d", "source": "mqtt"},
            "create device",
        ),
        ("GET", f"/v2/projects/{service.project_id}/files?type=logo", None, "list files"),
    ]
    for method, url, body, action in requests:
        response = await service.client.request(method, url, json=body, headers=bearer(key))
        assert service.project_id in assert_error(response, 403, action)["message"]
    assert (await service.stores.devices.page(service.project_id)).devices == []


async def test_org_wide_files_list_only_the_projects_a_limited_key_may_use(
    service: Service,
) -> None:
    assert (await service.upload("main.bin", b"m")).status_code == 201
    project_a = await service.stores.projects.create("a")
    uploaded = await service.client.post(
        f"/v2/projects/{project_a.id}/files",
        files={"file": ("a.bin", b"a")},
        data={"type": "firmware"},
    )
    assert uploaded.status_code == 201, uploaded.text
    key = await service.create_key(Scope.FILES_READ, projects=frozenset({project_a.id}))
    limited = await service.client.get("/v2/files?type=firmware", headers=bearer(key))
    assert [f["name"] for f in limited.json()["files"]] == ["a.bin"]
    everything = await service.client.get("/v2/files?type=firmware")
    assert sorted(f["name"] for f in everything.json()["files"]) == ["a.bin", "main.bin"]


async def test_every_kind_of_error_has_the_house_body(service: Service) -> None:
    """400, 401, 403, 404, 405 and 409 all answer {success, status, action, message, errors}."""
    pid = service.project_id
    client = service.client
    read_only = bearer(await service.create_key(Scope.DEVICES_READ))
    assert (await service.upload("fw.bin", b"x")).status_code == 201

    invalid = await client.post(f"/v2/projects/{pid}/devices", json={"source": "mqtt"})
    body = assert_error(invalid, 400, "create device")
    assert body["errors"] == [{"loc": "body.name", "msg": "Field required"}]

    unknown_key = await client.get(f"/v2/projects/{pid}/files?type=logo", headers=bearer("QB_x"))
    assert_error(unknown_key, 401, "list files")

    forbidden = await client.delete(f"/v2/projects/{pid}/devices/x", headers=read_only)
    assert_error(forbidden, 403, "delete device")

    missing = await client.get(f"/v2/projects/{pid}/devices/no-such-device")
    assert_error(missing, 404, "get device")

    conflict = await service.upload("fw.bin", b"y")
    assert_error(conflict, 409, "upload file")

    not_allowed = await client.put(f"/v2/projects/{pid}")
    assert_error(not_allowed, 405, None)

    no_route = await client.get("/v2/nothing-here")
    assert "no route GET /v2/nothing-here" in assert_error(no_route, 404, "request")["message"]


async def test_a_device_route_challenges_for_basic_auth(service: Service) -> None:
    response = await service.client.get(
        "/v2/device/download", params={"key": "dk_x"}, headers={"Authorization": ""}
    )
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Basic realm="devices"'
