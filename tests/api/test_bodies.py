"""JSON request bodies are standard JSON: what Python's json reads but JSON has not is a 400.

`NaN`, `Infinity`, `-Infinity`, `1e999` (read as infinity), numbers past int()'s digit limit,
lone surrogates and nesting past the recursion limit: each is refused naming where it is,
on every route that takes a JSON body, and nothing reaches a device or Redis.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from orchestrator.api.app import ROUTE_MODULES
from orchestrator.api.bodies import JSONRoute
from orchestrator.embedded import EmbeddedBroker
from tests.api.fleet import Inbox, device_inbox, payload_of
from tests.api.test_commands import assert_nothing_published, command_path
from tests.conftest import Service
from tests.domain.test_hooks import non_finite

JSON = {"Content-Type": "application/json"}
UNKNOWN_DEVICE = "00000000-0000-4000-8000-000000000000"


@pytest.fixture
async def inbox(service: Service, mqtt_broker: EmbeddedBroker) -> AsyncIterator[Inbox]:
    """An mqtt device's MQTT client, subscribed before the test sends anything."""
    device = await service.create_device(name="thermostat")
    async with device_inbox(mqtt_broker, device["metadata"]["device_id"]) as inbox:
        yield inbox


async def post_raw(
    service: Service, path: str, body: bytes, method: str = "POST"
) -> httpx.Response:
    return await service.client.request(method, path, content=body, headers=JSON)


def assert_refused_at(response: httpx.Response, loc: str, what: str) -> dict[str, Any]:
    """400 in the envelope, naming the place (`body.data.x`) and what is there."""
    assert response.status_code == 400, response.text
    body: dict[str, Any] = response.json()
    assert body["success"] is False
    assert body["status"] == 400
    assert f"{loc} {what}" in body["message"], body["message"]
    assert body["errors"][0]["loc"] == loc
    return body


@pytest.mark.parametrize(
    ("token", "what"),
    [
        ("NaN", "is NaN"),
        ("Infinity", "is Infinity"),
        ("-Infinity", "is -Infinity"),
        ("1e999", "is 1e999"),
        ("-1e999", "is -1e999"),
        ("1" * 5000, "is a number of 5000 digits"),
    ],
)
async def test_command_data_python_reads_but_json_has_not_is_400_and_never_published(
    service: Service, inbox: Inbox, token: str, what: str
) -> None:
    body = f'{{"command": "configuration", "data": {{"limits": [1, {token}]}}}}'.encode()
    response = await post_raw(service, command_path(service, inbox.device_id), body)
    refused = assert_refused_at(response, "body.data.limits.1", what)
    assert refused["action"] == "send command"
    assert "send" in refused["message"]  # and says what to send instead
    await assert_nothing_published(service, inbox)


async def test_a_lone_surrogate_in_command_data_is_400_and_never_published(
    service: Service, inbox: Inbox
) -> None:
    body = b'{"command": "configuration", "data": {"label": "\\ud800"}}'
    response = await post_raw(service, command_path(service, inbox.device_id), body)
    assert_refused_at(response, "body.data.label", "is not valid Unicode")
    await assert_nothing_published(service, inbox)


async def test_command_data_nested_past_the_recursion_limit_is_400(
    service: Service, inbox: Inbox
) -> None:
    body = b'{"command": "configuration", "data": {"x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}}"
    response = await post_raw(service, command_path(service, inbox.device_id), body)
    assert response.status_code == 400, response.text
    assert "nested too deeply" in response.json()["message"]
    await assert_nothing_published(service, inbox)


async def test_standard_json_with_a_surrogate_pair_still_reaches_the_device(
    service: Service, inbox: Inbox
) -> None:
    body = b'{"command": "configuration", "data": {"label": "\\ud83d\\ude00", "t": 21.5}}'
    response = await post_raw(service, command_path(service, inbox.device_id), body)
    assert response.status_code == 200, response.text
    payload = payload_of(await inbox.next())
    assert (payload["label"], payload["t"]) == ("\U0001f600", 21.5)


def json_routes(service: Service) -> list[tuple[str, str, str, str]]:
    """(method, path, body with NaN in one field, that field's loc) for every JSON body."""
    project = f"/v2/projects/{service.project_id}"
    device = f"{project}/devices/{UNKNOWN_DEVICE}"
    return [
        ("POST", "/v2/projects", '{"name": NaN}', "body.name"),
        ("POST", f"{project}/devices", '{"name": "d", "tags": [NaN]}', "body.tags.0"),
        ("PATCH", device, '{"description": Infinity}', "body.description"),
        ("POST", f"{device}/communication/command", '{"data": {"a": NaN}}', "body.data.a"),
        ("POST", f"{project}/rollouts/nothing/pause", '{"reason": -Infinity}', "body.reason"),
        ("POST", f"{project}/hooks", '{"name": "h", "secret": NaN}', "body.secret"),
        ("POST", f"{project}/notifications", '{"events": [NaN]}', "body.events.0"),
    ]


async def test_every_json_body_refuses_nan_naming_the_field(service: Service) -> None:
    for method, path, body, loc in json_routes(service):
        response = await post_raw(service, path, body.encode(), method)
        refused = assert_refused_at(response, loc, "is ")
        assert "NaN and Infinity are not JSON" in refused["message"], (path, refused)


async def test_a_lone_surrogate_in_a_device_name_is_400_not_a_500(service: Service) -> None:
    path = f"/v2/projects/{service.project_id}/devices"
    response = await post_raw(service, path, b'{"name": "\\udc80", "source": "mqtt"}')
    assert_refused_at(response, "body.name", "is not valid Unicode")


async def test_a_body_that_is_not_json_says_where_it_breaks(service: Service) -> None:
    path = f"/v2/projects/{service.project_id}/devices"
    response = await post_raw(service, path, b'{"name": "d",, "source": "mqtt"}')
    assert response.status_code == 400, response.text
    assert "is not JSON (" in response.json()["message"]
    assert "line 1 column 14" in response.json()["message"]
    assert response.json()["action"] == "create device"


def test_every_route_that_reads_a_json_body_reads_it_strictly() -> None:
    """A router added without route_class=JSONRoute would read NaN as a number again."""
    routes = [route for module in ROUTE_MODULES for route in module.router.routes]
    with_body = [route for route in routes if isinstance(route, APIRoute) and route.body_field]
    assert len(with_body) >= 7
    for route in with_body:
        assert isinstance(route, JSONRoute), f"{route.path} reads JSON with Python's json"


# The service fixture is made once for all examples: the refused bodies change nothing.
@hypothesis_settings(
    max_examples=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    data=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
        max_leaves=10,
    )
)
async def test_any_command_data_is_sent_or_refused_never_500(service: Service, data: Any) -> None:
    body = json.dumps({"command": "configuration", "data": {"d": data}}).encode()
    # To an unknown device: a body that passes is 404, and nothing is ever published.
    response = await post_raw(service, command_path(service, UNKNOWN_DEVICE), body)
    assert response.status_code in (400, 404), response.text
    if non_finite(data):
        assert response.status_code == 400
        assert response.json()["errors"][0]["loc"].startswith("body.data.d")
