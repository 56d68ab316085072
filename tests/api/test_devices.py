"""`/v2/projects/{pid}/devices`: seed 003's create, and list, read, update and delete."""

from __future__ import annotations

import base64
from typing import Any, cast

import httpx

from orchestrator.domain.auth import Scope
from orchestrator.domain.devices import NEVER_SEEN
from orchestrator.store import Stores
from orchestrator.timeutil import epoch_ms, isoformat_z, utc_now
from tests.conftest import Service

SEED_DATA_KEYS = {
    "id",
    "name",
    "description",
    "brand",
    "model",
    "avatar",
    "last_seen",
    "tags",
    "metadata",
}


def devices_url(service: Service, device_id: str = "") -> str:
    url = f"/v2/projects/{service.project_id}/devices"
    return f"{url}/{device_id}" if device_id else url


async def redis_dump(stores: Stores) -> str:
    """Every key, field, member and value under the test's prefix, as one string."""
    redis = stores.redis
    parts: list[str] = []
    async for key in redis.scan_iter(match=f"{stores.keys.prefix}*"):
        parts.append(str(key))
        kind = str(await redis.type(key))
        if kind == "string":
            parts.append(str(await redis.get(key)))
        elif kind == "hash":
            for field, value in (await redis.hgetall(key)).items():
                parts.extend([str(field), str(value)])
        elif kind == "set":
            parts.extend(str(m) for m in await redis.smembers(key))
        elif kind == "zset":
            parts.extend(str(m) for m in await redis.zrange(key, 0, -1))
        elif kind == "list":
            parts.extend(str(m) for m in await redis.lrange(key, 0, -1))
        elif kind == "stream":
            entries: list[tuple[str, dict[str, str]]] = cast(Any, await redis.xrange(key))
            for _, entry in entries:
                parts.extend(f"{k}={v}" for k, v in entry.items())
        else:
            raise AssertionError(f"unexpected Redis type {kind} at {key}")
    return "\n".join(parts)


async def test_create_answers_exactly_seed_003s_shape(service: Service) -> None:
    body = {
        "name": "sensor-1",
        "description": "roof",
        "source": "mqtt",
        "tags": ["roof", "v2"],
        "brand": "Acme",
        "model": "X1",
    }
    response = await service.client.post(devices_url(service), json=body)
    assert response.status_code == 201, response.text
    reply = response.json()
    assert set(reply) == {"success", "action", "status", "message", "data"}
    assert reply["success"] is True
    assert reply["action"] == "create device"
    assert reply["status"] == 201
    assert reply["message"] == "Device created successfully."
    data = reply["data"]
    assert set(data) >= SEED_DATA_KEYS
    assert data["name"] == "sensor-1"
    assert data["description"] == "roof"
    assert data["brand"] == "Acme"
    assert data["model"] == "X1"
    assert data["tags"] == ["roof", "v2"]
    assert data["avatar"] == "https://static.qubitro.com/portal/device/avatar/default.png"
    assert data["last_seen"] == "0001-01-01T00:00:00Z"
    assert data["metadata"]["device_id"] == data["id"]
    assert isinstance(data["metadata"]["device_token"], str)
    assert len(data["metadata"]["device_token"]) >= 24


async def test_every_device_answer_has_the_node_sdks_projectid_and_lastseen(
    service: Service,
) -> None:
    """The Node.js SDK's Device declares `projectId` and `lastSeen`, and its delete() builds
    the URL from `projectId`: create, read and list answer both, beside `last_seen`."""
    created = await service.create_device(name="a")
    read = (await service.client.get(devices_url(service, created["id"]))).json()["data"]
    listed = (await service.client.get(devices_url(service))).json()["data"]
    for data in (created, read, *listed):
        assert data["projectId"] == service.project_id
        assert data["lastSeen"] == data["last_seen"] == "0001-01-01T00:00:00Z"


async def test_brand_and_model_default_to_custom(service: Service) -> None:
    omitted = await service.create_device(name="a")
    assert (omitted["brand"], omitted["model"]) == ("Custom", "Custom")
    nulls = await service.create_device(name="b", brand=None, model=None)
    assert (nulls["brand"], nulls["model"]) == ("Custom", "Custom")
    assert omitted["description"] == ""
    assert omitted["tags"] == []


async def test_a_source_other_than_http_or_mqtt_is_400_naming_source(service: Service) -> None:
    response = await service.client.post(devices_url(service), json={"name": "d", "source": "coap"})
    assert response.status_code == 400, response.text
    body = response.json()
    assert "body.source" in body["message"]
    assert [e["loc"] for e in body["errors"]] == ["body.source"]
    assert "'http' or 'mqtt'" in body["errors"][0]["msg"]


async def test_a_missing_name_is_400(service: Service) -> None:
    response = await service.client.post(devices_url(service), json={"source": "http"})
    assert response.status_code == 400, response.text
    assert response.json()["errors"] == [{"loc": "body.name", "msg": "Field required"}]


async def test_an_unknown_field_is_400_naming_it(service: Service) -> None:
    response = await service.client.post(
        devices_url(service), json={"name": "d", "source": "mqtt", "colour": "red"}
    )
    assert response.status_code == 400, response.text
    assert "body.colour" in response.json()["message"]


async def test_a_body_that_is_not_json_is_400(service: Service) -> None:
    response = await service.client.post(
        devices_url(service), content=b"{name", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["action"] == "create device"


async def test_a_bad_tag_is_400_naming_it(service: Service) -> None:
    response = await service.client.post(
        devices_url(service), json={"name": "d", "source": "mqtt", "tags": ["ok", "no space"]}
    )
    assert response.status_code == 400, response.text
    assert "tags[1]" in response.json()["message"]


async def test_list_filters_by_tag(service: Service) -> None:
    roof = await service.create_device(name="r", tags=["roof"])
    both = await service.create_device(name="rb", tags=["roof", "basement"])
    await service.create_device(name="b", tags=["basement"])
    response = await service.client.get(devices_url(service), params={"tag": "roof"})
    assert response.status_code == 200, response.text
    assert {d["id"] for d in response.json()["data"]} == {roof["id"], both["id"]}
    nobody = await service.client.get(devices_url(service), params={"tag": "attic"})
    assert nobody.json()["data"] == []
    assert nobody.json()["next_cursor"] is None


async def test_cursor_pagination_returns_every_device_exactly_once(service: Service) -> None:
    created = {(await service.create_device(name=f"d{i}", tags=["t"]))["id"] for i in range(5)}
    for params in ({}, {"tag": "t"}):
        seen: list[str] = []
        pages: list[int] = []
        cursor: str | None = None
        while True:
            query: dict[str, Any] = {**params, "limit": 2}
            if cursor:
                query["cursor"] = cursor
            response = await service.client.get(devices_url(service), params=query)
            assert response.status_code == 200, response.text
            page = response.json()
            pages.append(len(page["data"]))
            seen.extend(d["id"] for d in page["data"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert pages == [2, 2, 1]
        assert sorted(seen) == sorted(created)
        assert len(seen) == len(set(seen))


async def test_get_returns_the_device_without_its_token(service: Service) -> None:
    created = await service.create_device(name="d", tags=["x"])
    token = created["metadata"]["device_token"]
    response = await service.client.get(devices_url(service, created["id"]))
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["id"] == created["id"]
    assert data["name"] == "d"
    assert data["tags"] == ["x"]
    assert data["metadata"]["device_id"] == created["id"]
    assert data["metadata"].get("device_token") is None
    assert token not in response.text
    listed = await service.client.get(devices_url(service))
    assert token not in listed.text


async def test_patch_updates_name_description_and_tags_with_the_tag_index(
    service: Service,
) -> None:
    device = await service.create_device(name="old", tags=["a", "b"])
    response = await service.client.patch(
        devices_url(service, device["id"]),
        json={"name": "new", "description": "moved", "tags": ["b", "c"]},
    )
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert (data["name"], data["description"], data["tags"]) == ("new", "moved", ["b", "c"])
    again = (await service.client.get(devices_url(service, device["id"]))).json()["data"]
    assert (again["name"], again["description"], again["tags"]) == ("new", "moved", ["b", "c"])

    async def tagged(tag: str) -> list[str]:
        reply = await service.client.get(devices_url(service), params={"tag": tag})
        return [d["id"] for d in reply.json()["data"]]

    assert await tagged("a") == []
    assert await tagged("b") == [device["id"]]
    assert await tagged("c") == [device["id"]]


async def test_patch_sets_allowed_commands_and_reads_them_back(service: Service) -> None:
    device = await service.create_device()
    url = devices_url(service, device["id"])
    response = await service.client.patch(
        url, json={"metadata": {"allowed_commands": "configuration;reboot"}}
    )
    assert response.status_code == 200, response.text
    assert response.json()["data"]["metadata"]["allowed_commands"] == "configuration;reboot"
    read = (await service.client.get(url)).json()["data"]
    assert read["metadata"]["allowed_commands"] == "configuration;reboot"
    assert read["name"] == device["name"]

    cleared = await service.client.patch(url, json={"metadata": {"allowed_commands": ""}})
    assert cleared.json()["data"]["metadata"]["allowed_commands"] == ""


async def test_patch_with_a_bad_command_name_is_400_and_changes_nothing(service: Service) -> None:
    device = await service.create_device()
    url = devices_url(service, device["id"])
    response = await service.client.patch(
        url, json={"name": "renamed", "metadata": {"allowed_commands": "reboot;fw/update"}}
    )
    assert response.status_code == 400, response.text
    assert "'fw/update'" in response.json()["message"]
    [error] = response.json()["errors"]
    assert error["loc"] == "body.metadata.allowed_commands"
    read = (await service.client.get(url)).json()["data"]
    assert read["name"] == device["name"]
    assert read["metadata"]["allowed_commands"] == ""


async def test_patch_of_an_unknown_field_is_400(service: Service) -> None:
    device = await service.create_device()
    response = await service.client.patch(
        devices_url(service, device["id"]), json={"source": "http"}
    )
    assert response.status_code == 400, response.text
    assert "body.source" in response.json()["message"]


async def test_delete_answers_the_seed_body_then_the_device_is_gone(service: Service) -> None:
    device = await service.create_device(tags=["t"])
    url = devices_url(service, device["id"])
    response = await service.client.delete(url)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "action": "delete device",
        "message": "Operation completed successfully",
        "success": True,
    }
    assert (await service.client.get(url)).status_code == 404
    listed = await service.client.get(devices_url(service), params={"tag": "t"})
    assert listed.json()["data"] == []
    again = await service.client.delete(url)
    assert again.status_code == 404
    assert again.json()["action"] == "delete device"


async def test_a_deleted_devices_token_no_longer_authenticates_a_download(
    service: Service,
) -> None:
    device = await service.create_device()
    token = device["metadata"]["device_token"]
    pair = base64.b64encode(f"{device['id']}:{token}".encode()).decode()
    async with httpx.AsyncClient(base_url=service.base_url) as device_client:

        async def download(credential: str) -> httpx.Response:
            return await device_client.get(
                "/v2/device/download",
                params={"key": "dk_anything"},
                headers={"Authorization": f"Basic {credential}"},
            )

        for credential in (token, pair):
            alive = await download(credential)
            assert alive.status_code == 401
            assert "download key" in alive.json()["message"]  # the token itself was accepted

        assert (await service.client.delete(devices_url(service, device["id"]))).status_code == 200
        for credential in (token, pair):
            dead = await download(credential)
            assert dead.status_code == 401
            assert "unknown device token" in dead.json()["message"]
    assert await service.stores.devices.by_token(token) is None


async def test_a_device_of_another_project_is_404(service: Service) -> None:
    other = await service.stores.projects.create("other")
    created = await service.client.post(
        f"/v2/projects/{other.id}/devices", json={"name": "elsewhere", "source": "mqtt"}
    )
    assert created.status_code == 201, created.text
    device_id = created.json()["data"]["id"]
    url = devices_url(service, device_id)
    assert (await service.client.get(url)).status_code == 404
    assert (await service.client.patch(url, json={"name": "stolen"})).status_code == 404
    assert (await service.client.delete(url)).status_code == 404
    assert (await service.client.get(devices_url(service))).json()["data"] == []
    still = await service.client.get(f"/v2/projects/{other.id}/devices/{device_id}")
    assert still.json()["data"]["name"] == "elsewhere"


async def test_devices_of_an_unknown_project_are_404(service: Service) -> None:
    response = await service.client.post(
        "/v2/projects/no-such-project/devices", json={"name": "d", "source": "mqtt"}
    )
    assert response.status_code == 404
    assert "no-such-project" in response.json()["message"]


async def test_device_tokens_and_api_keys_are_stored_only_as_hashes(
    service: Service, stores: Stores
) -> None:
    """Neither a device token nor an API key appears anywhere in Redis in plain text."""
    tokens = [
        (await service.create_device(name=f"d{i}"))["metadata"]["device_token"] for i in range(3)
    ]
    api_keys = [service.admin_key, await service.create_key(Scope.DEVICES_READ)]
    dump = await redis_dump(stores)
    assert service.project_id in dump  # the dump does see the test's data
    for secret in (*tokens, *api_keys):
        assert secret not in dump
        assert secret.removeprefix("QB_") not in dump


async def test_a_device_calling_with_its_token_is_seen_and_get_shows_when(
    service: Service,
) -> None:
    device = await service.create_device()
    url = devices_url(service, device["id"])
    assert (await service.client.get(url)).json()["data"]["last_seen"] == NEVER_SEEN
    before = epoch_ms(isoformat_z(utc_now()))
    async with httpx.AsyncClient(base_url=service.base_url) as device_client:
        answer = await device_client.get(
            "/v2/device/download",
            params={"key": "dk_" + "k" * 32},
            headers={"Authorization": f"Basic {device['metadata']['device_token']}"},
        )
    assert answer.status_code == 401  # the key is unknown; the token was accepted
    last_seen = (await service.client.get(url)).json()["data"]["last_seen"]
    seen_ms = epoch_ms(last_seen)
    assert before is not None
    assert seen_ms is not None
    assert before <= seen_ms <= before + 60_000
    listed = (await service.client.get(devices_url(service))).json()["data"]
    assert [d["last_seen"] for d in listed] == [last_seen]


# --- custom metadata ------------------------------------------------------------------------


async def test_create_takes_custom_metadata_next_to_allowed_commands_and_reads_return_it(
    service: Service,
) -> None:
    metadata = {"site": "berlin", "floor": "2", "allowed_commands": "reboot;download_firmware"}
    created = await service.create_device(name="m", metadata=metadata)
    assert created["metadata"] == {
        "device_id": created["id"],
        "device_token": created["metadata"]["device_token"],
        **metadata,
    }
    url = devices_url(service, created["id"])
    read = (await service.client.get(url)).json()["data"]["metadata"]
    assert read == {"device_id": created["id"], "device_token": None, **metadata}
    [listed] = (await service.client.get(devices_url(service))).json()["data"]
    assert listed["metadata"] == read


async def test_patch_merges_metadata_and_null_removes_a_key(service: Service) -> None:
    created = await service.create_device(
        metadata={"site": "berlin", "floor": "2", "allowed_commands": "reboot"}
    )
    url = devices_url(service, created["id"])
    response = await service.client.patch(
        url, json={"metadata": {"site": "paris", "floor": None, "room": "1"}}
    )
    assert response.status_code == 200, response.text
    expected = {
        "device_id": created["id"],
        "device_token": None,
        "allowed_commands": "reboot",
        "site": "paris",
        "room": "1",
    }
    assert response.json()["data"]["metadata"] == expected
    assert (await service.client.get(url)).json()["data"]["metadata"] == expected
    renamed = await service.client.patch(url, json={"name": "other"})
    assert renamed.json()["data"]["metadata"] == expected


async def test_metadata_past_its_limits_is_400_naming_the_key_and_the_limit(
    service: Service,
) -> None:
    refused: list[tuple[dict[str, Any], str, str]] = [
        ({"k" * 65: "v"}, "k" * 65, "64 characters"),
        ({"site": "v" * 257}, "site", "256 characters"),
        ({f"key-{i}": "v" for i in range(65)}, "key-64", "64 keys"),
        ({"device_token": "mine"}, "device_token", "set by the service"),
        ({"has space": "v"}, "has space", "without spaces"),
        ({"site": 7}, "site", "string"),
    ]
    for metadata, key, limit in refused:
        response = await service.client.post(
            devices_url(service), json={"name": "d", "source": "mqtt", "metadata": metadata}
        )
        assert response.status_code == 400, (metadata, response.text)
        body = response.json()
        assert key in body["message"], body
        assert limit in body["message"] + str(body["errors"]), body
    assert (await service.client.get(devices_url(service))).json()["data"] == []


async def test_a_patch_that_would_hold_too_many_keys_is_400_and_changes_nothing(
    service: Service,
) -> None:
    created = await service.create_device(metadata={f"key-{i}": "v" for i in range(60)})
    url = devices_url(service, created["id"])
    response = await service.client.patch(
        url, json={"name": "new", "metadata": {f"more-{i}": "v" for i in range(5)}}
    )
    assert response.status_code == 400, response.text
    assert "64" in response.json()["message"]
    read = (await service.client.get(url)).json()["data"]
    assert read["name"] == created["name"]
    assert len(read["metadata"]) == 60 + 3  # device_id, device_token, allowed_commands


async def test_list_filters_by_metadata_and_several_filters_must_all_hold(
    service: Service,
) -> None:
    berlin_2 = await service.create_device(metadata={"site": "berlin", "floor": "2"}, tags=["t"])
    berlin_3 = await service.create_device(metadata={"site": "berlin", "floor": "3"})
    await service.create_device(metadata={"site": "paris", "floor": "2"}, tags=["t"])
    await service.create_device()

    async def listed(*filters: str, **params: Any) -> list[str]:
        ids: list[str] = []
        cursor = None
        while True:
            query = [("metadata", f) for f in filters] + list(params.items())
            if cursor:
                query.append(("cursor", cursor))
            response = await service.client.get(devices_url(service), params=query)
            assert response.status_code == 200, response.text
            ids += [d["id"] for d in response.json()["data"]]
            cursor = response.json()["next_cursor"]
            if cursor is None:
                return ids

    assert sorted(await listed("site:berlin")) == sorted([berlin_2["id"], berlin_3["id"]])
    assert await listed("site:berlin", limit=1) == sorted([berlin_2["id"], berlin_3["id"]])
    assert await listed("site:berlin", "floor:2") == [berlin_2["id"]]
    assert await listed("floor:2", tag="t") == sorted(
        d["id"]
        for d in (await service.client.get(devices_url(service), params={"tag": "t"})).json()[
            "data"
        ]
    )
    assert await listed("site:rome") == []
    assert await listed("site:berlin:east") == []  # the value may hold ':'


async def test_a_malformed_metadata_filter_is_400_naming_it(service: Service) -> None:
    for bad in ("site", ":berlin", "device_id:x"):
        response = await service.client.get(devices_url(service), params={"metadata": bad})
        assert response.status_code == 400, response.text
        assert repr(bad) in response.json()["message"]
        assert response.json()["errors"][0]["loc"] == "query.metadata"


async def test_a_device_without_metadata_stores_nothing_for_it(service: Service) -> None:
    created = await service.create_device(metadata={})
    record = await service.stores.redis.hgetall(service.stores.keys.device(created["id"]))
    assert not [name for name in record if str(name).startswith("@")]
    assert set(record) == {"p", "n", "c", "k"}


# --- the credentials Qubitro clients read ---------------------------------------------------


async def test_create_answers_device_credentials_and_reads_never_a_token(
    service: Service,
) -> None:
    response = await service.client.post(devices_url(service), json={"name": "q", "source": "mqtt"})
    data = response.json()["data"]
    assert data["device_credentials"] == {
        "device_id": data["id"],
        "device_token": data["metadata"]["device_token"],
    }
    token = data["device_credentials"]["device_token"]
    url = devices_url(service, data["id"])
    read = await service.client.get(url)
    assert "device_credentials" not in read.json()["data"]
    assert token not in read.text
    rotated = (await service.client.post(f"{url}/token")).json()["data"]
    assert rotated["device_credentials"] == {
        "device_id": data["id"],
        "device_token": rotated["metadata"]["device_token"],
    }
    assert rotated["device_credentials"]["device_token"] != token
