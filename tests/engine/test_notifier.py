"""The notifier: what it posts to, what it keeps of an answer, and what it logs.

Real Redis, and a bare HTTP listener of the tests' own on loopback where one is needed. A
subscription stored before the API checked URLs can hold any URL, so the notifier checks the
addresses again when it sends.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from orchestrator.embedded import free_port
from orchestrator.engine.context import EngineContext
from orchestrator.engine.egress import checked_client
from orchestrator.engine.notifier import Notifier
from orchestrator.metrics import Metrics
from orchestrator.settings import Settings
from orchestrator.store import Stores
from orchestrator.transport.mqtt import CommandTransport

AT = "2030-01-02T03:04:05Z"


async def queued_notice(stores: Stores, url: str) -> str:
    """A subscription to `url` and one notice queued for it; the subscription's id."""
    subscription = await stores.notifications.create(
        project_id=f"p-{uuid.uuid4().hex[:8]}",
        url=url,
        events=[],
        secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        created_at=AT,
        by="test",
    )
    notice = {"type": "started", "rollout_id": "r-1", "body": "{}"}
    assert await stores.notifications.enqueue(
        [(f"msg_{uuid.uuid4().hex}", subscription.id, notice)]
    )
    return subscription.id


async def test_a_url_httpx_refuses_is_a_failed_attempt_not_a_dead_sender(
    settings: Settings, stores: Stores
) -> None:
    settings = settings.model_copy(update={"notify_attempts": 1})
    context = EngineContext(
        settings, stores, CommandTransport(settings.mqtt_url), Metrics(CollectorRegistry())
    )
    subscription_id = await queued_notice(stores, "http://[::1]x/")
    async with httpx.AsyncClient() as http:
        assert await Notifier(context).send_due(http) == 1
    [notice] = await stores.notifications.deliveries(subscription_id)
    assert notice.state == "failed"
    assert "InvalidURL" in notice.attempts[0]["error"]


class Receiver:
    """A bare HTTP listener on loopback answering every request with one fixed response."""

    def __init__(self, response: bytes) -> None:
        self.response = response
        self.requests = 0
        self.port = free_port()

    async def __aenter__(self) -> Receiver:
        self._server = await asyncio.start_server(self._answer, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.requests += 1
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        await reader.readexactly(length)
        writer.write(self.response)
        await writer.drain()
        writer.close()


def answer(status: str, body: bytes = b"", extra: str = "") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n"
    return head.encode() + body


async def send_once(settings: Settings, stores: Stores, url: str) -> dict[str, Any]:
    """Queue one notice for `url`, send it with the notifier's own client; its one attempt."""
    settings = settings.model_copy(update={"notify_attempts": 1})
    context = EngineContext(
        settings, stores, CommandTransport(settings.mqtt_url), Metrics(CollectorRegistry())
    )
    subscription_id = await queued_notice(stores, url)
    async with checked_client(settings.notify_allow, timeout_s=10, user_agent="test") as http:
        assert await Notifier(context).send_due(http) == 1
    [notice] = await stores.notifications.deliveries(subscription_id)
    assert notice.state in ("delivered", "failed")
    attempt: dict[str, Any] = notice.attempts[0]
    return attempt


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_a_stored_url_to_loopback_is_not_posted_to(
    settings: Settings, stores: Stores, host: str
) -> None:
    """Checked when sending too: a name (or a URL stored earlier) that leads inside is refused."""
    async with Receiver(answer("200 OK", b"internal")) as receiver:
        attempt = await send_once(settings, stores, f"http://{host}:{receiver.port}/admin")
    assert receiver.requests == 0
    assert "loopback" in attempt["error"]
    assert attempt["status_code"] is None


async def test_an_allowed_host_is_posted_to_and_its_answer_body_is_never_kept(
    settings: Settings, stores: Stores
) -> None:
    allowed = settings.model_copy(update={"notify_allow_hosts": "127.0.0.1"})
    secret = b"INTERNAL-ADMIN-PAGE root:hunter2"
    async with Receiver(answer("500 Internal Server Error", secret)) as receiver:
        attempt = await send_once(allowed, stores, f"http://127.0.0.1:{receiver.port}/x")
    assert receiver.requests == 1
    assert attempt["status_code"] == 500
    assert attempt["error"] == "HTTP 500 Internal Server Error"


async def test_a_redirect_is_not_followed(settings: Settings, stores: Stores) -> None:
    allowed = settings.model_copy(update={"notify_allow_hosts": "127.0.0.1"})
    async with Receiver(answer("200 OK")) as target:
        moved = answer("302 Found", extra=f"Location: http://127.0.0.1:{target.port}/in\r\n")
        async with Receiver(moved) as receiver:
            attempt = await send_once(allowed, stores, f"http://127.0.0.1:{receiver.port}/x")
    assert (receiver.requests, target.requests) == (1, 0)
    assert attempt["status_code"] == 302
    assert "redirects are not followed" in attempt["error"]


async def test_the_log_shows_the_url_without_its_query_or_credentials(
    settings: Settings, stores: Stores
) -> None:
    allowed = settings.model_copy(update={"notify_allow_hosts": "127.0.0.1"})
    async with Receiver(answer("204 No Content")) as receiver:
        url = f"http://127.0.0.1:{receiver.port}/hooks/ota?token=s3cr3t-token"
        with capture_logs() as logs:
            attempt = await send_once(allowed, stores, url)
    assert attempt["error"] is None
    [sent] = [entry for entry in logs if entry["event"] == "notice sent"]
    assert sent["url"] == f"http://127.0.0.1:{receiver.port}/hooks/ota"
    assert "s3cr3t" not in repr(logs)
