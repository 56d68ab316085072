"""The OpenAPI document is part of the contract: every route, 400 (never 422), ErrorBody."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.routing import APIRoute

from orchestrator.api.app import ROUTE_MODULES
from orchestrator.domain.auth import Scope
from orchestrator.domain.commands import ALLOWED_COMMANDS, COMMAND_NAME
from orchestrator.domain.devices import MAX_METADATA_ENTRIES, METADATA_KEY, TAG
from orchestrator.domain.files import FILE_NAME
from orchestrator.domain.notices import Notice
from orchestrator.domain.states import DeviceState, RolloutState
from tests.conftest import Service

ERROR_BODY_REF = {"$ref": "#/components/schemas/ErrorBody"}

CONTRACT_ROUTES = {
    ("POST", "/v2/projects"),
    ("GET", "/v2/projects"),
    ("GET", "/v2/projects/{project_id}"),
    ("PATCH", "/v2/projects/{project_id}"),
    ("DELETE", "/v2/projects/{project_id}"),
    ("POST", "/v2/projects/{project_id}/devices"),
    ("GET", "/v2/projects/{project_id}/devices"),
    ("GET", "/v2/projects/{project_id}/devices/{device_id}"),
    ("PATCH", "/v2/projects/{project_id}/devices/{device_id}"),
    ("DELETE", "/v2/projects/{project_id}/devices/{device_id}"),
    ("POST", "/v2/projects/{project_id}/files"),
    ("GET", "/v2/projects/{project_id}/files"),
    ("GET", "/v2/files"),
    ("DELETE", "/v2/projects/{project_id}/files/{name}"),
    ("POST", "/v2/projects/{project_id}/devices/{device_id}/communication/command"),
    ("GET", "/v2/device/download"),
    ("HEAD", "/v2/device/download"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("POST", "/v2/projects/{project_id}/hooks"),
    ("POST", "/v2/hooks/{hook_id}"),
}


@pytest.fixture
async def openapi(service: Service) -> dict[str, Any]:
    """The document the running service serves."""
    response = await service.client.get("/openapi.json")
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }


def app_routes() -> set[tuple[str, str]]:
    """Every (method, path) the API's routers define."""
    return {
        (method, route.path)
        for module in ROUTE_MODULES
        for route in module.router.routes
        if isinstance(route, APIRoute) and route.include_in_schema
        for method in route.methods or ()
    }


async def test_every_route_is_documented(openapi: dict[str, Any]) -> None:
    documented = set(operations(openapi))
    assert app_routes() == documented
    assert documented >= CONTRACT_ROUTES


async def test_path_parameters_are_listed_once_each_in_the_order_of_the_path(
    openapi: dict[str, Any],
) -> None:
    # Generated clients take path parameters in this order (get_device(project_id, device_id)).
    for path, operations in openapi["paths"].items():
        for method, operation in operations.items():
            listed = [p["name"] for p in operation.get("parameters", []) if p["in"] == "path"]
            assert listed == re.findall(r"{(\w+)}", path), (method, path)


async def test_no_operation_documents_422(openapi: dict[str, Any]) -> None:
    for key, operation in operations(openapi).items():
        assert "422" not in operation["responses"], key
    schemas = openapi["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert "ValidationError" not in schemas


@pytest.mark.parametrize(
    "route",
    [
        ("POST", "/v2/projects/{project_id}/devices"),
        ("POST", "/v2/projects/{project_id}/devices/{device_id}/communication/command"),
    ],
)
async def test_device_create_and_command_document_400_with_error_body(
    openapi: dict[str, Any], route: tuple[str, str]
) -> None:
    responses = operations(openapi)[route]["responses"]
    assert responses["400"]["content"]["application/json"]["schema"] == ERROR_BODY_REF
    for code in ("401", "403", "404"):
        assert responses[code]["content"]["application/json"]["schema"] == ERROR_BODY_REF


async def test_project_bodies_follow_the_qubitro_docs(openapi: dict[str, Any]) -> None:
    """docs.qubitro.com's project: name, description, tags; `created` for early SDK versions."""
    schemas = openapi["components"]["schemas"]
    tag = {"type": "string", "pattern": TAG.pattern}
    for body in ("ProjectCreate", "ProjectPatch"):
        assert set(schemas[body]["properties"]) == {"name", "description", "tags"}
    assert schemas["ProjectCreate"]["required"] == ["name"]
    assert schemas["ProjectCreate"]["properties"]["tags"]["items"] == tag
    assert schemas["ProjectCreate"]["properties"]["description"]["maxLength"] == 500
    assert set(schemas["ProjectOut"]["required"]) == {
        "id",
        "name",
        "description",
        "tags",
        "created_at",
        "created",
        "deleting",
    }


async def test_the_error_body_schema_has_the_house_fields(openapi: dict[str, Any]) -> None:
    schemas = openapi["components"]["schemas"]
    error_body = schemas["ErrorBody"]
    assert set(error_body["properties"]) == {"success", "status", "action", "message", "errors"}
    assert error_body["properties"]["errors"]["items"] == {"$ref": "#/components/schemas/ErrorItem"}
    assert set(schemas["ErrorItem"]["properties"]) == {"loc", "msg"}
    assert "$defs" not in error_body


async def test_bodies_and_parameters_follow_the_seeds(openapi: dict[str, Any]) -> None:
    """Seed 003's device body (and metadata), seed 000's command body and the required file
    `type`."""
    ops = operations(openapi)
    schemas = openapi["components"]["schemas"]
    create = ops[("POST", "/v2/projects/{project_id}/devices")]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/DeviceCreate"
    }
    device_create = schemas["DeviceCreate"]
    assert set(device_create["properties"]) == {
        "name",
        "description",
        "source",
        "tags",
        "brand",
        "model",
        "metadata",
    }
    assert device_create["properties"]["source"]["enum"] == ["http", "mqtt"]
    assert set(device_create["required"]) == {"name", "source"}
    assert "201" in create["responses"]
    assert set(schemas["CommandRequest"]["properties"]) == {"command", "data"}
    for path in ("/v2/projects/{project_id}/files", "/v2/files"):
        [type_parameter] = [p for p in ops[("GET", path)]["parameters"] if p["name"] == "type"]
        assert type_parameter["in"] == "query"
        assert type_parameter["required"] is True
    upload = ops[("POST", "/v2/projects/{project_id}/files")]
    form = upload["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(form["required"]) == {"file", "type"}
    assert {"409", "413"} <= set(upload["responses"])


@pytest.mark.parametrize(
    ("method", "path", "allow", "action"),
    [
        ("OPTIONS", "/v2/projects", "GET, POST", "request"),
        ("DELETE", "/v2/projects", "GET, POST", "delete projects"),
        ("PATCH", "/v2/projects", "GET, POST", "update projects"),
        ("PUT", "/v2/projects/{pid}", "DELETE, GET, PATCH", "replace project"),
        ("POST", "/v2/projects/{pid}", "DELETE, GET, PATCH", "create project"),
        ("OPTIONS", "/v2/projects/{pid}", "DELETE, GET, PATCH", "request"),
        ("GET", "/v2/projects/{pid}/devices/d-1/token", "POST", "request"),
        ("POST", "/v2/projects/{pid}/rollouts/r-1/devices", "GET", "create rollout device"),
        ("PUT", "/v2/projects/{pid}/hooks/h-1/deliveries", "GET", "replace hook deliveries"),
        ("PUT", "/v2/projects/{pid}/devices/d-1", "DELETE, GET, PATCH", "replace device"),
        ("OPTIONS", "/v2/projects/{pid}/devices", "GET, POST", "request"),
        ("GET", "/v2/projects/{pid}/rollouts/r-1/pause", "POST", "request"),
        ("POST", "/v2/files", "GET", "create file"),
        ("DELETE", "/healthz", "GET", "request"),
        ("POST", "/metrics", "GET", "request"),
        ("OPTIONS", "/openapi.json", "GET, HEAD", "request"),
    ],
)
async def test_a_method_the_path_lacks_is_405_with_allow_and_its_own_action(
    service: Service, method: str, path: str, allow: str, action: str
) -> None:
    """405 lists every method of the path in Allow and names what the method would do to the
    path's resource, or the neutral 'request' where the path is no resource (an action, a
    probe) or the method changes nothing; never another method's action (a DELETE of a project
    was once 'get project')."""
    response = await service.client.request(method, path.format(pid=service.project_id))
    assert response.status_code == 405, response.text
    assert response.headers["allow"] == allow
    body = response.json()
    assert body["action"] == action
    assert body["status"] == 405
    assert body["success"] is False
    assert method in body["message"]


async def test_allow_lists_exactly_the_documented_methods_of_every_path(
    service: Service, openapi: dict[str, Any]
) -> None:
    """For every documented path, an undocumented method's 405 carries the documented methods."""
    for path, item in openapi["paths"].items():
        url = path.replace("{", "").replace("}", "")
        documented = sorted(method.upper() for method in item)
        response = await service.client.request("OPTIONS", url)
        assert response.status_code == 405, (path, response.text)
        assert response.headers["allow"] == ", ".join(documented), path


def parameter(operation: dict[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [p for p in operation["parameters"] if p["name"] == name]
    [only] = found
    return only


async def test_every_error_response_is_the_error_body(openapi: dict[str, Any]) -> None:
    for key, operation in operations(openapi).items():
        for code, response in operation["responses"].items():
            if key[0] == "HEAD":  # GET's statuses and headers, never a body
                assert "content" not in response, (key, code)
            elif int(code) >= 400 and key != ("GET", "/readyz"):
                assert response["content"]["application/json"]["schema"] == ERROR_BODY_REF, (
                    key,
                    code,
                )
    error_body = openapi["components"]["schemas"]["ErrorBody"]
    assert error_body["properties"]["success"]["const"] is False
    assert set(error_body["required"]) == {"success", "status", "action", "message", "errors"}


async def test_operations_document_the_errors_they_answer(openapi: dict[str, Any]) -> None:
    """400 everywhere (a query parameter the operation does not list); 401/403 with an API
    key; 404 under a project."""
    for (method, path), operation in operations(openapi).items():
        codes = set(operation["responses"])
        assert "400" in codes, (method, path)
        security = operation.get("security", [])
        if security:
            assert {"401", "503"} <= codes, (method, path)
        if any(scopes for requirement in security for scopes in requirement.values()):
            assert "403" in codes, (method, path)
        if path.startswith("/v2/projects/{project_id}"):
            assert {"403", "404"} <= codes, (method, path)
        assert "422" not in codes


async def test_each_operation_names_its_credentials_and_scope(openapi: dict[str, Any]) -> None:
    ops = operations(openapi)
    schemes = openapi["components"]["securitySchemes"]
    assert schemes["ApiKey"]["scheme"] == "bearer"
    assert schemes["DeviceToken"]["scheme"] == "basic"
    for scope in Scope:
        assert f"`{scope}`" in schemes["ApiKey"]["description"]
    expected = {
        ("POST", "/v2/projects"): {"ApiKey": ["admin"]},
        ("GET", "/v2/projects"): {"ApiKey": []},
        ("PATCH", "/v2/projects/{project_id}"): {"ApiKey": ["admin"]},
        ("DELETE", "/v2/projects/{project_id}"): {"ApiKey": ["admin"]},
        ("GET", "/v2/projects/{project_id}/devices"): {"ApiKey": ["devices:read"]},
        ("PATCH", "/v2/projects/{project_id}/devices/{device_id}"): {"ApiKey": ["devices:write"]},
        ("POST", "/v2/projects/{project_id}/files"): {"ApiKey": ["files:write"]},
        ("GET", "/v2/files"): {"ApiKey": ["files:read"]},
        ("POST", "/v2/projects/{project_id}/devices/{device_id}/communication/command"): {
            "ApiKey": ["send-commands"]
        },
        ("GET", "/v2/projects/{project_id}/rollouts"): {"ApiKey": ["rollouts:read"]},
        ("POST", "/v2/projects/{project_id}/rollouts/{rollout_id}/pause"): {
            "ApiKey": ["rollouts:write"]
        },
        ("POST", "/v2/projects/{project_id}/hooks"): {"ApiKey": ["hooks:write", "rollouts:write"]},
        ("GET", "/v2/device/download"): {"DeviceToken": []},
    }
    for key, requirement in expected.items():
        assert ops[key]["security"] == [requirement], key
    for public in (("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")):
        assert "security" not in ops[public]
    assert "security" not in ops[("POST", "/v2/hooks/{hook_id}")]  # signed instead
    signature = parameter(ops[("POST", "/v2/hooks/{hook_id}")], "X-Hub-Signature-256")
    assert signature["in"] == "header"


async def test_query_parameters_carry_their_enums_patterns_and_bounds(
    openapi: dict[str, Any],
) -> None:
    ops = operations(openapi)
    for path in ("/v2/projects/{project_id}/files", "/v2/files"):
        assert parameter(ops[("GET", path)], "type")["schema"]["enum"] == ["firmware", "logo"]
    rollouts = ops[("GET", "/v2/projects/{project_id}/rollouts")]
    assert parameter(rollouts, "state")["schema"]["enum"] == [s.value for s in RolloutState]
    devices = ops[("GET", "/v2/projects/{project_id}/rollouts/{rollout_id}/devices")]
    assert parameter(devices, "state")["schema"]["enum"] == [s.value for s in DeviceState]
    assert parameter(devices, "cursor")["schema"]["pattern"] == "^([0-9]{1,15})?$"
    limit = parameter(devices, "limit")["schema"]
    assert (limit["minimum"], limit["maximum"]) == (1, 1000)
    download = ops[("GET", "/v2/device/download")]
    assert parameter(download, "key")["schema"]["pattern"] == "^dk_[A-Za-z0-9_-]{32}$"
    assert parameter(download, "Range")["in"] == "header"
    delete_file = ops[("DELETE", "/v2/projects/{project_id}/files/{name}")]
    assert parameter(delete_file, "name")["schema"]["pattern"] == FILE_NAME.pattern
    for (method, path), operation in ops.items():
        for p in operation.get("parameters", []):
            assert "anyOf" not in p["schema"], (method, path, p["name"])  # never null


async def test_bodies_carry_their_patterns_and_media_types(openapi: dict[str, Any]) -> None:
    ops = operations(openapi)
    schemas = openapi["components"]["schemas"]
    command = schemas["CommandRequest"]
    assert command["properties"]["command"]["pattern"] == COMMAND_NAME.pattern
    assert command["then"]["properties"]["data"]["required"] == ["file_name"]
    tag = {"type": "string", "pattern": TAG.pattern}
    assert schemas["DeviceCreate"]["properties"]["tags"]["items"] == tag
    for body, nullable in (("DeviceCreate", False), ("DevicePatch", True)):
        metadata = schemas[body]["properties"]["metadata"]
        metadata = metadata["anyOf"][0] if nullable else metadata
        allowed = metadata["properties"]["allowed_commands"]
        assert allowed["pattern"] == ALLOWED_COMMANDS.pattern
        assert metadata["propertyNames"]["pattern"] == METADATA_KEY.pattern
        assert metadata["else"] == {"maxProperties": MAX_METADATA_ENTRIES}
    events = schemas["NotificationCreate"]["properties"]["events"]["anyOf"][0]["items"]
    assert events["enum"] == [notice.value for notice in Notice]
    assert schemas["RolloutOut"]["properties"]["state"] == {
        "$ref": "#/components/schemas/RolloutState"
    }
    create = ops[("POST", "/v2/projects/{project_id}/rollouts")]
    media_types = create["requestBody"]["content"]
    assert {"application/yaml", "application/json"} <= set(media_types)
    assert media_types["application/yaml"]["schema"] == {"$ref": "#/components/schemas/RolloutPlan"}
    assert set(create["responses"]) >= {"200", "201", "409", "413"}
    download = ops[("GET", "/v2/device/download")]["responses"]
    assert set(download) >= {"200", "206", "401", "403", "404", "409", "416"}
    assert download["206"]["headers"]["Content-Range"]["required"] is True
    assert "application/octet-stream" in download["200"]["content"]
    head = ops[("HEAD", "/v2/device/download")]
    assert set(head["responses"]) == set(download)
    for code in ("200", "206"):
        assert head["responses"][code]["headers"] == download[code]["headers"]
        assert "ETag" in download[code]["headers"]
    assert head["parameters"] == ops[("GET", "/v2/device/download")]["parameters"]
    assert head["security"] == [{"DeviceToken": []}]


# The answers that keep the seed's own shape (and the liveness probe's); every other JSON
# answer is the envelope, and every delete answers the seed's delete body.
OWN_SHAPES = {
    ("GET", "/v2/projects/{project_id}/files"): "FileList",
    ("GET", "/v2/files"): "FileList",
    ("POST", "/v2/projects/{project_id}/devices/{device_id}/communication/command"): (
        "CommandResponse"
    ),
    ("GET", "/healthz"): "Health",
}


async def test_every_json_answer_is_the_envelope_but_the_seeds_own_shapes(
    openapi: dict[str, Any],
) -> None:
    schemas = openapi["components"]["schemas"]
    enveloped = 0
    for (method, path), operation in operations(openapi).items():
        for code, response in operation["responses"].items():
            schema = response.get("content", {}).get("application/json", {}).get("schema")
            if not code.startswith("2") or not schema:
                continue  # errors (checked above), binary bodies, /readyz's two shapes
            name = schema["$ref"].rsplit("/", 1)[-1]
            if method == "DELETE":
                assert name == "Done", (method, path)
            elif (method, path) in OWN_SHAPES:
                assert name == OWN_SHAPES[(method, path)], (method, path)
            else:
                answer = schemas[name]
                fields = ["success", "status", "action", "message", "data"]
                assert list(answer["properties"])[:5] == fields, (method, path, name)
                assert set(answer["required"]) >= set(fields), (method, path, name)
                assert answer["properties"]["success"]["const"] is True
                enveloped += 1
    assert enveloped >= 25  # rollouts, hooks, notifications, devices, projects, uploads


async def test_a_rollouts_answer_documents_its_data_and_a_listing_its_cursor(
    openapi: dict[str, Any],
) -> None:
    schemas = openapi["components"]["schemas"]
    ops = operations(openapi)

    def answer(method: str, path: str, code: str = "200") -> dict[str, Any]:
        content = ops[(method, path)]["responses"][code]["content"]
        ref: str = content["application/json"]["schema"]["$ref"]
        found: dict[str, Any] = schemas[ref.rsplit("/", 1)[-1]]
        return found

    one = "/v2/projects/{project_id}/rollouts/{rollout_id}"
    rollout = {"$ref": "#/components/schemas/RolloutOut"}
    assert answer("GET", one)["properties"]["data"] == rollout
    assert answer("POST", f"{one}/pause")["properties"]["data"] == rollout
    assert answer("POST", "/v2/projects/{project_id}/rollouts", "201")["properties"]["data"] == (
        rollout
    )
    devices = answer("GET", f"{one}/devices")
    assert devices["properties"]["data"]["items"] == {
        "$ref": "#/components/schemas/RolloutDeviceOut"
    }
    assert "next_cursor" in devices["required"]
    listing = answer("GET", "/v2/projects/{project_id}/rollouts")
    assert listing["properties"]["data"]["items"] == rollout
    assert "next_cursor" not in listing["properties"]
