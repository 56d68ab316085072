"""`POST /v2/projects/{pid}/devices/{did}/token`: a new device token, the old one dead at once."""

from __future__ import annotations

import os

from orchestrator.domain.auth import Scope
from tests.api.conftest import issue_key
from tests.api.fleet import basic, standard_basic
from tests.conftest import Service

DOWNLOAD = "/v2/device/download"


def _token_url(service: Service, device_id: str) -> str:
    return f"/v2/projects/{service.project_id}/devices/{device_id}/token"


async def test_rotation_answers_200_with_the_new_token_where_creation_puts_it(
    service: Service,
) -> None:
    device = await service.create_device(name="rotating", tags=["a"])
    device_id = device["metadata"]["device_id"]

    response = await service.client.post(_token_url(service, device_id))

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    assert body["status"] == 200
    assert body["action"] == "rotate device token"
    data = body["data"]
    assert data["id"] == device_id
    assert data["name"] == "rotating"
    assert data["tags"] == ["a"]
    assert data["metadata"]["device_id"] == device_id
    new_token = data["metadata"]["device_token"]
    assert new_token
    assert new_token != device["metadata"]["device_token"]
    # Shown this once: reading the device never shows a token.
    shown = await service.client.get(f"/v2/projects/{service.project_id}/devices/{device_id}")
    assert shown.json()["data"]["metadata"]["device_token"] is None


async def test_old_token_stops_working_for_downloads_and_the_new_one_works(
    service: Service,
) -> None:
    device = await service.create_device()
    device_id, old_token = device["metadata"]["device_id"], device["metadata"]["device_token"]
    content = os.urandom(1000)
    assert (await service.upload("fw.bin", content)).status_code == 201
    key = await issue_key(service, device_id, "fw.bin", len(content))

    response = await service.client.post(_token_url(service, device_id))
    new_token = response.json()["data"]["metadata"]["device_token"]

    for headers in (basic(old_token), standard_basic(device_id, old_token)):
        refused = await service.client.get(DOWNLOAD, params={"key": key}, headers=headers)
        assert refused.status_code == 401, refused.text
    served = await service.client.get(DOWNLOAD, params={"key": key}, headers=basic(new_token))
    assert served.status_code == 200, served.text
    assert served.content == content
    assert await service.stores.devices.by_token(old_token) is None
    found = await service.stores.devices.by_token(new_token)
    assert found is not None
    assert found.id == device_id


async def test_each_rotation_replaces_the_token_before(service: Service) -> None:
    device_id = (await service.create_device())["metadata"]["device_id"]
    first = (await service.client.post(_token_url(service, device_id))).json()
    second = (await service.client.post(_token_url(service, device_id))).json()

    first_token = first["data"]["metadata"]["device_token"]
    second_token = second["data"]["metadata"]["device_token"]
    assert first_token != second_token
    assert await service.stores.devices.by_token(first_token) is None
    assert await service.stores.devices.by_token(second_token) is not None


async def test_http_devices_rotate_too(service: Service) -> None:
    device = await service.create_device(source="http")
    response = await service.client.post(_token_url(service, device["metadata"]["device_id"]))
    assert response.status_code == 200, response.text


async def test_unknown_device_is_404_with_the_error_body(service: Service) -> None:
    response = await service.client.post(_token_url(service, "no-such-device"))
    assert response.status_code == 404
    body = response.json()
    assert body["success"] is False
    assert body["action"] == "rotate device token"
    assert "no-such-device" in body["message"]


async def test_device_of_another_project_is_404(service: Service) -> None:
    device_id = (await service.create_device())["metadata"]["device_id"]
    other = await service.stores.projects.create("other")
    response = await service.client.post(f"/v2/projects/{other.id}/devices/{device_id}/token")
    assert response.status_code == 404


async def test_rotation_needs_devices_write(service: Service) -> None:
    device_id = (await service.create_device())["metadata"]["device_id"]
    url = _token_url(service, device_id)
    reader = await service.create_key(Scope.DEVICES_READ)
    writer = await service.create_key(Scope.DEVICES_WRITE)

    refused = await service.client.post(url, headers={"Authorization": f"Bearer {reader}"})
    assert refused.status_code == 403
    allowed = await service.client.post(url, headers={"Authorization": f"Bearer {writer}"})
    assert allowed.status_code == 200
    anonymous = await service.client.post(url, headers={"Authorization": ""})
    assert anonymous.status_code == 401


async def test_the_route_is_in_the_openapi_document(service: Service) -> None:
    schema = (await service.client.get("/openapi.json")).json()
    operation = schema["paths"]["/v2/projects/{project_id}/devices/{device_id}/token"]["post"]
    assert "200" in operation["responses"]
    assert "503" in operation["responses"]
