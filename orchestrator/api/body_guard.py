"""Refusing a request body before it is read: no API key (401), or too large (413).

FastAPI reads and parses a route's body before it resolves the route's dependencies, so
without this an anonymous caller could make the service hold and parse hundreds of MiB before
the API key check answered 401. This ASGI middleware runs first: for a request that carries a
body to a route that takes an API key, it checks the key before a byte of the body is read;
it refuses a declared `Content-Length` over the route's limit at once, and stops a body sent
without one (chunked) at the first byte past the limit.
"""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.api.auth import authenticate
from orchestrator.api.context import AppContext
from orchestrator.api.errors import orchestrator_error_response
from orchestrator.errors import OrchestratorError, PayloadTooLarge
from orchestrator.numerals import whole_number

MiB = 1024 * 1024
BODY_LIMIT_BYTES = 1 * MiB  # a JSON body, a plan, a hook delivery
UPLOAD_OVERHEAD_BYTES = 1 * MiB  # the multipart framing and text fields around an upload
UPLOAD = "upload_file"
# Paths whose callers prove who they are otherwise: a hook's signature, a device's token,
# nginx's shared secret. Their handlers bound what they read.
NO_API_KEY = re.compile(r"/v2/(?:hooks/[^/]+|device/.*|internal/.*)")
# The routes that take a body, by path, for the error body's action (the routes' own names).
ACTIONS: tuple[tuple[str, re.Pattern[str], str], ...] = tuple(
    (method, re.compile(pattern), name)
    for method, pattern, name in (
        ("POST", r"/v2/projects/[^/]+/files", UPLOAD),
        ("POST", r"/v2/projects/[^/]+/rollouts", "create_rollout"),
        ("POST", r"/v2/projects/[^/]+/devices", "create_device"),
        ("PATCH", r"/v2/projects/[^/]+/devices/[^/]+", "update_device"),
        ("POST", r"/v2/projects/[^/]+/devices/[^/]+/communication/command", "send_command"),
        ("POST", r"/v2/projects/[^/]+/hooks", "create_hook"),
        ("POST", r"/v2/projects/[^/]+/notifications", "create_notification"),
        ("POST", r"/v2/projects", "create_project"),
        ("PATCH", r"/v2/projects/[^/]+", "update_project"),
    )
)


def _route_name(scope: Scope) -> str | None:
    path = str(scope.get("path", ""))
    for method, pattern, name in ACTIONS:
        if scope.get("method") == method and pattern.fullmatch(path):
            return name
    return None


def _needs_api_key(scope: Scope) -> bool:
    path = str(scope.get("path", ""))
    return path.startswith("/v2/") and NO_API_KEY.fullmatch(path) is None


def _has_body(scope: Scope) -> bool:
    headers = dict(scope.get("headers") or [])
    length = headers.get(b"content-length")
    return b"transfer-encoding" in headers or (length is not None and length.strip() != b"0")


class BodyGuard:
    """ASGI middleware: API key checked and body size bounded before the body is read."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _has_body(scope):
            await self.app(scope, receive, send)
            return
        name = _route_name(scope)
        request = Request(scope)
        context: AppContext | None = getattr(request.app.state, "context", None)
        limit = BODY_LIMIT_BYTES
        if name == UPLOAD and context is not None:
            limit = context.settings.max_file_size_bytes + UPLOAD_OVERHEAD_BYTES
        too_large = PayloadTooLarge(
            f"the request body is over {limit} bytes, the limit for this route; "
            + (
                "raise OTA_MAX_FILE_SIZE or upload a smaller file"
                if name == UPLOAD
                else "send a smaller body"
            )
        )
        try:
            if context is not None and _needs_api_key(scope):
                await authenticate(request.headers.get("authorization", ""), context)
            declared = whole_number(request.headers.get("content-length", ""))
            if declared is not None and declared > limit:
                raise too_large
        except OrchestratorError as exc:
            await self._refuse(scope, receive, send, exc, name)
            return

        received = 0

        async def bounded() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise too_large
            return message

        await self.app(scope, bounded, send)

    @staticmethod
    async def _refuse(
        scope: Scope, receive: Receive, send: Send, exc: OrchestratorError, name: str | None
    ) -> None:
        headers = {"Connection": "close"}  # the unread body is not waited for
        request = Request({**scope, "route": _Named(name)} if name else scope)
        response = orchestrator_error_response(request, exc, headers)
        await response(scope, receive, send)


class _Named:
    """Stands for the matched route, so the error body's action names it."""

    def __init__(self, name: str) -> None:
        self.name = name
