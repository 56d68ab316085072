"""One error body for every failure: `{success, status, action, message, errors}`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match, Route
from starlette.types import Scope

from orchestrator.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    OrchestratorError,
    PayloadTooLarge,
    RangeNotSatisfiable,
    StoreUnavailable,
    TransportUnavailable,
    Unauthorized,
)

log = structlog.get_logger(__name__)


class ErrorItem(BaseModel):
    """One thing wrong with a request: where, and what."""

    loc: str
    msg: str


class ErrorBody(BaseModel):
    """The body of every error response."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    success: Literal[False] = False
    status: int
    action: str
    message: str
    errors: list[ErrorItem] = []


# The status each kind of error answers with; a kind not listed answers as its nearest listed
# ancestor, and an error of none of them is the service's own fault (500).
STATUS: dict[type[OrchestratorError], int] = {
    InvalidInput: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    PayloadTooLarge: 413,
    RangeNotSatisfiable: 416,
    StoreUnavailable: 503,
    TransportUnavailable: 503,
}


def status_of(exc: OrchestratorError) -> int:
    """The HTTP status `exc` answers with."""
    for kind in type(exc).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return 500


RETRY_AFTER_S = 2  # a 503's Retry-After: Redis or the broker away, as in a restart or failover
NEUTRAL_ACTION = "request"  # what any request is: the action when no route or resource is named


def action_of(request: Request) -> str:
    """The route's action in words ('send command'), from its name ('send_command')."""
    route = request.scope.get("route")
    name = getattr(route, "name", None)
    return name.replace("_", " ") if name else NEUTRAL_ACTION


_VERBS = {"POST": "create", "PUT": "replace", "PATCH": "update", "DELETE": "delete"}


def _singular(noun: str) -> str:
    if noun.endswith("ies"):
        return noun[:-3] + "y"
    return noun[:-1] if noun.endswith("s") and not noun.endswith("ss") else noun


def method_action(method: str, routes: Sequence[Route]) -> str:
    """The action `method` would be on the resource the path's `routes` serve, for a 405.

    The resource and its noun come from the path's GET route: `get_project` (an item:
    'delete project'), `list_hook_deliveries` (a collection: 'create hook delivery', 'replace
    hook deliveries'). A path without one is not a resource but an action (`…/pause`) or a
    probe (`/healthz`), and a method outside create, replace, update and delete does nothing
    to a resource: the action is then NEUTRAL_ACTION, never another method's action.
    """
    verb = _VERBS.get(method)
    for route in routes:
        kind, _, noun = route.name.partition("_")
        route_methods = route.methods or set()
        if verb is None or not noun or kind not in ("get", "list") or "GET" not in route_methods:
            continue
        words = noun.split("_")
        if kind == "list" and method == "POST":
            words[-1] = _singular(words[-1])
        return f"{verb} {' '.join(words)}"
    return NEUTRAL_ACTION


def routes_of_path(routes: Sequence[BaseRoute], scope: Scope) -> list[Route]:
    """The routes whose path matches the request's, whatever their methods."""
    return [
        route
        for route in routes
        if isinstance(route, Route) and route.methods and route.matches(scope)[0] is not Match.NONE
    ]


def error_response(
    request: Request,
    status: int,
    message: str,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
    action: str | None = None,
) -> JSONResponse:
    """A JSON error response in the house shape."""
    body = ErrorBody(
        status=status,
        action=action or action_of(request),
        message=message,
        errors=[ErrorItem(**item) for item in errors or []],
    )
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def orchestrator_error_response(
    request: Request, exc: OrchestratorError, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The error body of `exc`, with its status and the headers its kind calls for."""
    headers = dict(headers or {})
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = exc.challenge
    if isinstance(exc, RangeNotSatisfiable):
        headers["Content-Range"] = f"bytes */{exc.size}"
    if status_of(exc) == 503:
        headers["Retry-After"] = str(RETRY_AFTER_S)
    return error_response(request, status_of(exc), exc.message, exc.errors, headers)


def _loc(parts: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in parts)


def _validation_message(errors: list[dict[str, Any]]) -> str:
    sentences = []
    for error in errors[:5]:
        where = _loc(error.get("loc", ()))
        sentences.append(f"{where}: {error.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "the request is invalid: " + "; ".join(sentences) + more + "; fix these and retry"


def install_error_handlers(app: FastAPI, routes: Sequence[BaseRoute]) -> None:
    """Map every exception to the house error body; no traceback ever reaches a caller.

    `routes` are the API's routes (FastAPI keeps included routers apart from `app.routes`),
    from which a 405 learns every method of its path.
    """

    async def orchestrator_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, OrchestratorError)
        if status_of(exc) >= 500:
            log.warning("request failed", action=action_of(request), error=exc.message)
        return orchestrator_error_response(request, exc)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = list(exc.errors())
        items = [{"loc": _loc(e.get("loc", ())), "msg": str(e.get("msg", ""))} for e in errors]
        return error_response(request, 400, _validation_message(errors), items)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        message = str(exc.detail)
        headers = dict(exc.headers) if exc.headers else {}
        action = None
        if exc.status_code == 404 and request.scope.get("route") is None:
            message = f"no route {request.method} {request.url.path}; see /docs for the API"
        elif exc.status_code == 405:
            # Starlette names only the first route of the path, which may have several; and
            # the app's own routes (/openapi.json, /docs) are there beside the API's.
            matched = routes_of_path([*routes, *request.app.routes], request.scope)
            allow = sorted({method for each in matched for method in each.methods or ()})
            headers["Allow"] = ", ".join(allow)
            message = (
                f"{request.method} is not allowed on {request.url.path}; use "
                f"{' or '.join(allow)} (see /docs)"
            )
            action = method_action(request.method, matched)
        return error_response(
            request, exc.status_code, message, headers=headers or None, action=action
        )

    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", action=action_of(request))
        return error_response(
            request, 500, "an internal error occurred; the server log has the details"
        )

    app.add_exception_handler(OrchestratorError, orchestrator_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected_error)


def _error_content() -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}


_DESCRIPTIONS = {
    400: "Invalid body or parameter, or a query parameter the operation does not list; "
    "`errors` says where",
    401: "Missing or unknown credentials",
    403: "Not allowed: the key lacks the scope or the project, or the device refuses the command",
    404: "Not found",
    409: "Conflict with the current state; the message names it",
    413: "The body is too large",
    416: "The Range asks for bytes past the end of the file",
    503: "Redis or the MQTT broker is unreachable; retry later",
}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {
        "WWW-Authenticate": {
            "description": "The scheme to authenticate with",
            "schema": {"type": "string"},
        }
    },
    503: {
        "Retry-After": {
            "description": "Seconds to wait before trying again",
            "schema": {"type": "string"},
        }
    },
    416: {
        "Content-Range": {
            "description": "`bytes */{size}`: the file's size",
            "schema": {"type": "string"},
        }
    },
}

# The errors routes share: an API key (401); with a scope (403); in a project the key may use,
# which must exist (404) and not be being deleted (409); and Redis or the broker away (503).
KEYED = (401, 503)
SCOPED = (401, 403, 503)
IN_PROJECT = (401, 403, 404, 409, 503)


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the given error codes, each with the ErrorBody schema."""
    responses: dict[int | str, dict[str, Any]] = {}
    for code in sorted(set(codes)):
        entry: dict[str, Any] = {
            "description": _DESCRIPTIONS.get(code, "Error"),
            "content": _error_content(),
        }
        if code in _HEADERS:
            entry["headers"] = _HEADERS[code]
        responses[code] = entry
    return responses
