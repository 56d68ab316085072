"""The notifier: a subscription whose URL httpx cannot post to fails its notice, and only it.

Real Redis; the URL is refused by httpx before any connection is tried, so no server is needed.
A subscription stored before the API checked URLs with httpx can hold such a URL.
"""

from __future__ import annotations

import uuid

import httpx
from prometheus_client import CollectorRegistry

from orchestrator.engine.context import EngineContext
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
    [notice] = await stores.notifications.notices(subscription_id)
    assert notice.state == "failed"
    assert "InvalidURL" in notice.attempts[0]["error"]
