"""Counts and times HTTP requests by route template, never by raw path (ids stay out of labels)."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.metrics import HTTP_METHODS, UNMATCHED_ROUTE, Metrics


class HttpMetricsMiddleware:
    """ASGI middleware filling `ota_http_requests_total` and `ota_http_request_duration_seconds`.

    The route label is the matched route's path template (`/v2/projects/{project_id}/…`),
    which the router leaves in `scope["route"]`; a request no route matched is `unmatched`.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets when the app fails before it answers

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) if route is not None else None
            label = template if isinstance(template, str) else UNMATCHED_ROUTE
            method = scope["method"] if scope["method"] in HTTP_METHODS else "other"
            self._metrics.http_requests.labels(method, label, str(status)).inc()
            self._metrics.http_request_duration.labels(method, label).observe(
                time.perf_counter() - started
            )
