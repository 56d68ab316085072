"""Listings: without `limit` every item, streamed a page at a time; with `limit`, pages.

Qubitro's Node.js SDK (`@qubitro/client`) has no paging: it sends its key as a Bearer token,
reads `data` of one answer and expects every device of the project ("Retrieves all devices").
So a listing without `limit` holds every item, and a next cursor, where the listing has one,
is null. The body is written as the store is read, a page at a time, so the service holds one
page whatever the fleet's size; a store failing half-way cuts the connection, and the client
sees an unfinished body rather than a complete-looking one with items missing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import structlog
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute

from orchestrator import client
from orchestrator.api import listing
from orchestrator.api.app import ROUTE_MODULES
from orchestrator.api.rollout_schemas import RolloutDeviceOut, RolloutEvent
from orchestrator.api.schemas import Envelope, FileList, FileListItem, Paged
from orchestrator.client import ApiClient
from orchestrator.domain.devices import DeviceSource
from orchestrator.domain.files import FileType
from orchestrator.domain.plans import parse_plan
from orchestrator.store.files import StoredFile
from orchestrator.store.hooks import Delivery
from tests.conftest import Service, stored_device

PAGE = listing.PAGE_SIZE  # what a listing without `limit` reads from a store per step (100)
OVER_A_PAGE = PAGE + 1
PLAN = parse_plan("name: fw\nfirmware:\n  file: fw_1.bin\nwaves:\n  - percent: 100\n")


def devices_url(service: Service) -> str:
    return f"/v2/projects/{service.project_id}/devices"


async def stored_fleet(service: Service, count: int) -> list[str]:
    """`count` devices written straight to Redis (fast); their ids."""
    project = service.project_id
    return [(await stored_device(service.stores, project, f"d{i}"))[0].id for i in range(count)]


# The device store reads a page of devices in one call of its script (store/lua/devices.lua).
DEVICE_READS = "evalsha"


async def commandstat_calls(service: Service, command: str) -> int:
    """How many times Redis has run `command` (all clients; only this test runs now)."""
    stats = await service.stores.redis.info("commandstats")
    entry = stats.get(f"cmdstat_{command}", {})
    return int(entry.get("calls", 0)) if isinstance(entry, dict) else 0


# --- the helpers, without servers ------------------------------------------------------------


async def body_of(response: StreamingResponse) -> bytes:
    chunks = [chunk async for chunk in response.body_iterator]
    assert all(isinstance(chunk, bytes) for chunk in chunks)
    return b"".join(chunk for chunk in chunks if isinstance(chunk, bytes))


def in_pages(items: list[Any], size: int) -> AsyncGenerator[Sequence[Any], None]:
    async def fetch(start: int | None, _: int) -> tuple[list[Any], int | None]:
        at = start or 0
        return items[at : at + size], at + size if at + size < len(items) else None

    return listing.pages(fetch)


@pytest.mark.parametrize("count", [0, 1, 2, 5])
async def test_a_streamed_body_is_the_envelope_with_every_item_in_order(count: int) -> None:
    """The bytes FastAPI writes for the envelope with its items in it (aliases, field order)."""
    events = [
        RolloutEvent.model_validate({"from": "pending", "to": "running", "reason": "ça ✓", "n": i})
        for i in range(count)
    ]
    whole = Envelope[list[RolloutEvent]](
        action="list rollout events", message="Listed.", data=events
    )
    response = await listing.listed("list rollout events", "Listed.", in_pages(events, 2))
    body = await body_of(response)
    assert body == JSONResponse(whole.model_dump(mode="json", by_alias=True)).body


async def test_the_envelopes_fields_before_and_after_the_items_are_kept() -> None:
    outs = [
        RolloutDeviceOut(
            device_id=f"d{i}",
            state="pending",
            wave="w",
            command_id=None,
            attempts=0,
            failure=None,
            updated_at=None,
        )
        for i in range(3)
    ]
    response = await listing.listed_page("list", "Listed.", in_pages(outs, 2), next_cursor="7")
    body = await body_of(response)
    assert body.startswith(
        b'{"success":true,"status":200,"action":"list","message":"Listed.","data":[{"device_id":'
    )
    assert body.endswith(b'],"next_cursor":"7"}')
    whole = Paged[RolloutDeviceOut](action="list", message="Listed.", data=outs, next_cursor="7")
    assert body == JSONResponse(whole.model_dump(mode="json")).body


async def test_the_seeds_file_listing_streams_as_its_own_shape() -> None:
    """`{"files": [...]}` (seed 000) is streamed through the same writer."""
    items = [
        FileListItem(
            description="",
            name=f"f{i}.bin",
            size=i,
            time="t",
            sha256="s",
            type="firmware",
            project_id="p",
        )
        for i in range(3)
    ]
    body = await body_of(await listing.streamed(FileList(files=[]), "files", in_pages(items, 2)))
    assert body == JSONResponse(FileList(files=items).model_dump(mode="json")).body


async def test_pages_follow_the_cursor_until_it_runs_out() -> None:
    seen = [page async for page in in_pages(list(range(7)), 3)]
    assert seen == [[0, 1, 2], [3, 4, 5], [6]]


async def test_the_sdk_way_gets_all_105_devices_in_data(service: Service) -> None:
    """Bearer key, no paging parameter, `data` read: every device, and next_cursor null."""
    await stored_fleet(service, 105)
    async with httpx.AsyncClient(base_url=service.base_url) as sdk:
        response = await sdk.get(
            devices_url(service), headers={"Authorization": f"Bearer {service.admin_key}"}
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["data"]) == 105
    assert len({device["id"] for device in body["data"]}) == 105
    assert body["next_cursor"] is None
    assert {k: body[k] for k in ("success", "status", "action")} == {
        "success": True,
        "status": 200,
        "action": "list devices",
    }
    assert response.headers["content-type"] == "application/json"


async def test_with_limit_devices_come_a_page_at_a_time_with_a_cursor(service: Service) -> None:
    ids = await stored_fleet(service, 105)
    seen: list[str] = []
    cursor = ""
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 40, **({"cursor": cursor} if cursor else {})}
        response = await service.client.get(devices_url(service), params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        pages += 1
        assert len(body["data"]) <= 40
        seen += [device["id"] for device in body["data"]]
        cursor = body["next_cursor"] or ""
        if not cursor:
            break
    assert pages == 3
    assert seen == sorted(ids)


async def test_a_cursor_without_limit_gives_every_device_after_it(service: Service) -> None:
    ids = sorted(await stored_fleet(service, 105))
    response = await service.client.get(devices_url(service), params={"cursor": ids[9]})
    body = response.json()
    assert [device["id"] for device in body["data"]] == ids[10:]
    assert body["next_cursor"] is None


async def test_250_devices_are_read_from_the_store_a_page_at_a_time(service: Service) -> None:
    """The listing reads the device index in pages of 100 (3 reads), and streams its body."""
    ids = await stored_fleet(service, 250)
    before = await commandstat_calls(service, DEVICE_READS)
    response = await service.client.get(devices_url(service))
    reads = await commandstat_calls(service, DEVICE_READS) - before
    assert response.status_code == 200, response.text
    assert [device["id"] for device in response.json()["data"]] == sorted(ids)
    assert reads == 3
    assert "content-length" not in response.headers  # written as it is read
    assert response.headers["transfer-encoding"] == "chunked"


async def test_a_tag_filter_without_limit_gives_every_matching_device(service: Service) -> None:
    for i in range(OVER_A_PAGE + 4):
        await service.stores.devices.create(
            service.project_id,
            name=f"t{i}",
            description="",
            source=DeviceSource.MQTT,
            brand="Custom",
            model="Custom",
            tags=["eu"] if i % 2 else ["us"],
        )
    response = await service.client.get(devices_url(service), params={"tag": "eu"})
    body = response.json()
    assert len(body["data"]) == (OVER_A_PAGE + 4) // 2
    assert all(device["tags"] == ["eu"] for device in body["data"])


async def test_the_clients_device_iteration_pages_with_limit(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ota devices list` and the simulator iterate a page of `limit` at a time."""
    monkeypatch.setattr(client, "DEVICE_PAGE", 40)
    ids = await stored_fleet(service, 105)
    before = await commandstat_calls(service, DEVICE_READS)
    async with ApiClient(service.base_url, service.admin_key, service.project_id) as api:
        seen = [device.id async for device in api.devices()]
    assert seen == sorted(ids)
    assert await commandstat_calls(service, DEVICE_READS) - before == 3  # one read a request


async def test_a_rollouts_devices_are_each_read_about_once(service: Service) -> None:
    """Without a filter, a page reads the records of its own devices (and the next one's
    first), not a whole scan chunk: 300 devices cost about 300 record reads, not 600."""
    ids = await _rollout_devices(service, 3 * PAGE)
    url = "/v2/projects/{project_id}/rollouts/{rollout_id}/devices".format(**ids)
    before = (await service.stores.redis.info("stats"))["keyspace_hits"]
    response = await service.client.get(url)
    hits = (await service.stores.redis.info("stats"))["keyspace_hits"] - before
    assert len(response.json()["data"]) == 3 * PAGE
    assert hits < 3 * PAGE + 50, hits  # the key, project, rollout and its counters besides


# --- every list route ----------------------------------------------------------------------


@dataclass(frozen=True)
class Listing:
    """How to fill a list route with `count` items, and where its items are in the body."""

    items: str  # the body's key holding the items
    fill: Callable[[Service, int], Awaitable[dict[str, str]]]  # path ids; makes `count` items
    query: tuple[tuple[str, str], ...] = ()
    extra: int = 0  # items there before the test made any (the service's own project)


async def _nothing(service: Service, count: int) -> dict[str, str]:
    return {"project_id": service.project_id}


async def _projects(service: Service, count: int) -> dict[str, str]:
    for i in range(count):
        await service.stores.projects.create(f"p{i}")
    return {}


async def _devices(service: Service, count: int) -> dict[str, str]:
    await stored_fleet(service, count)
    return {"project_id": service.project_id}


async def _files(service: Service, count: int) -> dict[str, str]:
    for i in range(count):
        name = f"fw_{i}.bin"
        created = await service.stores.files.create(
            StoredFile(
                project_id=service.project_id,
                name=name,
                type=FileType.FIRMWARE,
                description="",
                size=1,
                sha256="0" * 64,
                time="2026-01-01T00:00:00Z",
                path=f"{service.project_id}/{name}",
            )
        )
        assert created
    return {"project_id": service.project_id}


async def _rollout(service: Service, device_ids: list[str], name: str = "fw") -> str:
    rollout_id, outcome = await service.stores.rollouts.create(
        project_id=service.project_id,
        name=name,
        plan={**PLAN.model_dump(mode="json", by_alias=True), "name": name},
        device_ids=device_ids,
        reach=[len(device_ids)],
        created_at="2026-01-01T00:00:00Z",
        created_by="test",
    )
    assert outcome.created, outcome
    return rollout_id


async def _rollouts(service: Service, count: int) -> dict[str, str]:
    for i in range(count):
        await _rollout(service, [str(uuid.uuid4())], name=f"fw-{i}")
    return {"project_id": service.project_id}


async def _rollout_devices(service: Service, count: int) -> dict[str, str]:
    rollout_id = await _rollout(service, [str(uuid.uuid4()) for _ in range(count)])
    return {"project_id": service.project_id, "rollout_id": rollout_id}


async def _rollout_events(service: Service, count: int) -> dict[str, str]:
    rollout_id = await _rollout(service, [str(uuid.uuid4())])  # its first event: create
    for i in range(count - 1):
        await service.stores.audit.add(rollout_id, {"action": "note", "reason": str(i)})
    return {"project_id": service.project_id, "rollout_id": rollout_id}


async def _hook(service: Service, i: int = 0) -> Any:
    return await service.stores.hooks.create(
        project_id=service.project_id,
        name=f"h{i}",
        plan="name: fw\n",
        secret="s" * 32,
        created_at="2026-01-01T00:00:00Z",
        by="test",
    )


async def _hooks(service: Service, count: int) -> dict[str, str]:
    for i in range(count):
        await _hook(service, i)
    return {"project_id": service.project_id}


async def _hook_deliveries(service: Service, count: int) -> dict[str, str]:
    hook = await _hook(service)
    for i in range(count):
        await service.stores.hooks.accept(
            hook,
            Delivery(
                id=f"delivery-{i}",
                received_at="2026-01-01T00:00:00Z",
                scheme="standard",
                version=f"1.0.{i}",
                file="",
                rollout_id=str(uuid.uuid4()),
                status="accepted",
                reason="",
            ),
            plan="name: fw\n",
            actor="test",
            body_digest=None,
        )
    return {"project_id": service.project_id, "hook_id": hook.id}


async def _subscription(service: Service) -> Any:
    return await service.stores.notifications.create(
        project_id=service.project_id,
        url="https://chat.example.com/hooks/ota",
        events=[],
        secret="s" * 32,
        created_at="2026-01-01T00:00:00Z",
        by="test",
    )


async def _notifications(service: Service, count: int) -> dict[str, str]:
    for _ in range(count):
        await _subscription(service)
    return {"project_id": service.project_id}


async def _notification_deliveries(service: Service, count: int) -> dict[str, str]:
    subscription = await _subscription(service)
    notices = [
        (str(uuid.uuid4()), subscription.id, {"type": "rollout.halted", "rollout_id": "r"})
        for _ in range(count)
    ]
    assert await service.stores.notifications.enqueue(notices) == count
    return {"project_id": service.project_id, "subscription_id": subscription.id}


FIRMWARE = (("type", "firmware"),)
LISTINGS = {
    "/v2/projects": Listing("data", _projects, extra=1),
    "/v2/projects/{project_id}/devices": Listing("data", _devices),
    "/v2/projects/{project_id}/files": Listing("files", _files, FIRMWARE),
    "/v2/files": Listing("files", _files, FIRMWARE),
    "/v2/projects/{project_id}/rollouts": Listing("data", _rollouts),
    "/v2/projects/{project_id}/rollouts/{rollout_id}/devices": Listing("data", _rollout_devices),
    "/v2/projects/{project_id}/rollouts/{rollout_id}/events": Listing("data", _rollout_events),
    "/v2/projects/{project_id}/hooks": Listing("data", _hooks),
    "/v2/projects/{project_id}/hooks/{hook_id}/deliveries": Listing("data", _hook_deliveries),
    "/v2/projects/{project_id}/notifications": Listing("data", _notifications),
    "/v2/projects/{project_id}/notifications/{subscription_id}/deliveries": Listing(
        "data", _notification_deliveries
    ),
}


def api_routes() -> list[APIRoute]:
    """Every route the app serves (new routes are in here too)."""
    return [
        route
        for module in ROUTE_MODULES
        for route in module.router.routes
        if isinstance(route, APIRoute)
    ]


def route_named(path: str) -> APIRoute:
    [route] = [
        route for route in api_routes() if route.path == path and "GET" in (route.methods or ())
    ]
    return route


def test_every_list_route_of_the_app_is_checked_here() -> None:
    """A new `list_…` route must join LISTINGS, so it is checked to list everything."""
    listed = {route.path for route in api_routes() if route.name.startswith("list_")}
    assert listed == set(LISTINGS)


@pytest.mark.parametrize("template", sorted(LISTINGS))
async def test_every_list_route_without_limit_returns_every_item(
    service: Service, template: str
) -> None:
    listing = LISTINGS[template]
    ids = await listing.fill(service, OVER_A_PAGE)
    response = await service.client.get(template.format(**ids), params=dict(listing.query))
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body[listing.items]) == OVER_A_PAGE + listing.extra
    if listing.items == "data":  # the envelope; the seed's file listing is its own shape
        assert (body["success"], body["status"]) == (True, 200)
        assert body["action"] == route_named(template).name.replace("_", " ")
    if "next_cursor" in body:
        assert body["next_cursor"] is None


async def test_an_empty_listing_is_a_complete_body(service: Service) -> None:
    response = await service.client.get(devices_url(service))
    assert response.status_code == 200, response.text
    assert response.json()["data"] == []
    assert response.json()["next_cursor"] is None


async def test_events_keep_their_field_names_when_streamed(service: Service) -> None:
    """An event's `from` (an alias in the model) is written as `from`, as before."""
    ids = await _rollout_events(service, 1)
    template = "/v2/projects/{project_id}/rollouts/{rollout_id}/events"
    await service.client.post(template.format(**ids).replace("events", "pause"))
    await service.client.post(template.format(**ids).replace("events", "abort"))
    events = (await service.client.get(template.format(**ids))).json()["data"]
    assert events[-1]["from"] == "pending"
    assert events[-1]["to"] == "aborted"


# --- errors before the first byte, and a store failing mid-way -----------------------------

POISON = "ffffffff-ffff-4fff-8fff-ffffffffffff"  # sorts after every other device id


async def poison_device_index(service: Service, project_id: str) -> None:
    """A device id in the project's index whose record is not a hash: Redis refuses to read it
    (WRONGTYPE), the way a store fails whatever the cause."""
    keys, redis = service.stores.keys, service.stores.redis
    # Into the leaf of the project's id set that holds the last ids (store/lua/devices.lua).
    last = await redis.zrange(keys.project_devices_bounds(project_id), -1, -1)
    leaf = keys.project_devices(project_id) + "".join(f":{first!s}" for first in last)
    await redis.zadd(leaf, {POISON: 0})
    await redis.set(keys.device(POISON), "not a hash")


async def read_into(response: httpx.Response, received: bytearray) -> None:
    async for chunk in response.aiter_bytes():
        received += chunk


async def test_a_store_failing_mid_listing_cuts_the_body_short(service: Service) -> None:
    """Two pages are sent, the third fails: the client gets an unfinished body, never a
    complete-looking one, and the service logs why."""
    await stored_fleet(service, 2 * PAGE + 10)
    await poison_device_index(service, service.project_id)
    received = bytearray()
    with structlog.testing.capture_logs() as logs:
        async with service.client.stream("GET", devices_url(service)) as response:
            assert response.status_code == 200
            with pytest.raises(httpx.RemoteProtocolError):
                await read_into(response, received)
    assert received.startswith(b'{"success":true,')
    assert received.count(b'"metadata"') == 2 * PAGE  # the first two pages, whole
    with pytest.raises(json.JSONDecodeError):
        json.loads(received)
    [cut] = [entry for entry in logs if entry["event"] == "listing cut off"]
    assert cut["items_sent"] == 2 * PAGE
    assert "Redis refused" in cut["error"]


async def test_a_store_failing_on_the_first_page_is_a_json_error(service: Service) -> None:
    await poison_device_index(service, service.project_id)
    response = await service.client.get(devices_url(service))
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["success"] is False
    assert body["action"] == "list devices"


@pytest.mark.parametrize(
    ("headers", "status"),
    [({"Authorization": "Bearer QB_nope"}, 401), ({}, 401)],
)
async def test_a_bad_key_is_a_json_error_before_any_listing(
    service: Service, headers: dict[str, str], status: int
) -> None:
    async with httpx.AsyncClient(base_url=service.base_url, headers=headers) as anonymous:
        response = await anonymous.get(devices_url(service))
    assert response.status_code == status
    assert response.json()["success"] is False


async def test_an_unknown_project_is_a_json_404(service: Service) -> None:
    response = await service.client.get(f"/v2/projects/{uuid.uuid4()}/devices")
    assert response.status_code == 404
    assert response.json()["action"] == "list devices"
