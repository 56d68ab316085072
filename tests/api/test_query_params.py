"""An unknown query parameter is 400 naming it and the accepted ones, on every route.

A script that filters devices before acting on them (`?tags=eu` for `?tag=eu`) must never act
on all of them because a misspelt filter was ignored. The accepted parameters of a route are
the query parameters its OpenAPI operation documents, so the document stays the truth.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from orchestrator.api.app import ROUTE_MODULES, create_app
from orchestrator.settings import Settings
from tests.conftest import Service

# The app as built, never started: the check runs before anything needs Redis or the broker.
APP = create_app(Settings(redis_url="redis://127.0.0.1:1", mqtt_url="mqtt://127.0.0.1:1"))
DOCUMENT = APP.openapi()
# Every (method, path) the app serves, from its routers: a new route is checked as it comes.
ROUTES = sorted(
    (method, route.path)
    for module in ROUTE_MODULES
    for route in module.router.routes
    if isinstance(route, APIRoute)
    for method in route.methods or ()
)


def accepted(method: str, path: str) -> list[str]:
    """The query parameters the document gives the operation, in its order."""
    operation = DOCUMENT["paths"][path][method.lower()]
    return [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"]


def assert_refused(response: Any, name: str, method: str, path: str) -> None:
    assert response.status_code == 400, response.text
    if method == "HEAD":  # the answer GET would give, without its body
        assert response.content == b""
        return
    body = response.json()
    assert body["success"] is False
    assert body["status"] == 400
    names = ", ".join(accepted(method, path))
    said = f"accepts {names}" if names else "takes no query parameters"
    assert body["message"] == f"unknown query parameter {name!r}; {method} {path} {said}"
    msg = "unknown query parameter; " + (f"accepted: {names}" if names else "none accepted")
    assert body["errors"] == [{"loc": f"query.{name}", "msg": msg}]


@pytest.fixture
async def unstarted() -> AsyncIterator[httpx.AsyncClient]:
    """A client of APP in this process: nothing behind it is running, so a request that got
    past the check would fail for want of Redis rather than be answered 400."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=APP), base_url="http://ota"
    ) as client:
        yield client


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
async def test_an_unknown_query_parameter_is_400_naming_it_on_every_route(
    unstarted: httpx.AsyncClient, method: str, path: str
) -> None:
    """Refused before anything is looked up or done, whatever the ids and the credentials."""
    url = re.sub(r"\{[^}]+\}", "x", path)
    response = await unstarted.request(method, url, params={"bogus": "1"})
    assert_refused(response, "bogus", method, path)


async def test_a_misspelt_device_filter_lists_nothing_and_says_so(service: Service) -> None:
    await service.create_device(tags=["eu"])
    path = "/v2/projects/{project_id}/devices"
    response = await service.client.get(
        path.format(project_id=service.project_id), params={"tags": "eu"}
    )
    assert_refused(response, "tags", "GET", path)
    assert "tag" in accepted("GET", path)
    assert "data" not in response.json()


async def test_parameter_names_are_case_sensitive(service: Service) -> None:
    path = "/v2/projects/{project_id}/devices"
    response = await service.client.get(
        path.format(project_id=service.project_id), params={"Limit": "5"}
    )
    assert_refused(response, "Limit", "GET", path)


async def test_several_unknown_parameters_are_all_named(service: Service) -> None:
    response = await service.client.get("/v2/projects", params={"b": "1", "a": "2"})
    assert response.status_code == 400
    body = response.json()
    assert body["message"].startswith("unknown query parameters 'b', 'a'; GET /v2/projects")
    assert [error["loc"] for error in body["errors"]] == ["query.b", "query.a"]


async def test_a_delete_with_an_unknown_parameter_deletes_nothing(service: Service) -> None:
    device = await service.create_device()
    url = f"/v2/projects/{service.project_id}/devices/{device['id']}"
    response = await service.client.delete(url, params={"force": "true"})
    assert response.status_code == 400
    assert (await service.client.get(url)).status_code == 200


async def test_known_parameters_pass_also_when_empty(service: Service) -> None:
    url = f"/v2/projects/{service.project_id}/devices"
    response = await service.client.get(url, params={"cursor": "", "tag": "x"})
    assert response.status_code == 200, response.text


async def test_the_download_key_is_known_and_nothing_else_is(service: Service) -> None:
    """A device's download URL carries `?key=` only; the key is checked as before."""
    key = "dk_" + "k" * 32
    response = await service.client.get("/v2/device/download", params={"key": key})
    assert response.status_code == 401  # an unknown key, past the parameter check
    response = await service.client.get("/v2/device/download", params={"key": key, "v": "2"})
    assert_refused(response, "v", "GET", "/v2/device/download")


@pytest.mark.parametrize(
    "url",
    ["/openapi.json?x=1", "/docs?x=1", "/docs/oauth2-redirect?code=c&state=s"],
)
async def test_the_documentation_pages_are_left_alone(service: Service, url: str) -> None:
    """Not API routes: Swagger UI's OAuth redirect takes whatever its provider sends."""
    assert (await service.client.get(url)).status_code == 200
