"""Notification subscriptions: a project's rollout events posted, signed, to a team's URL."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpcore
import httpx
import structlog
from fastapi import APIRouter, Depends

from orchestrator.api.auth import InProject, in_project
from orchestrator.api.bodies import JSONRoute
from orchestrator.api.errors import IN_PROJECT, error_responses
from orchestrator.api.schemas import (
    Envelope,
    NoticeAttemptOut,
    NoticeOut,
    NotificationCreate,
    NotificationOut,
)
from orchestrator.api.webhooks import WebhookKind, add_routes
from orchestrator.domain.auth import Scope
from orchestrator.domain.destinations import (
    ALLOW_SETTING,
    AllowList,
    literal_address,
    masked_url,
    url_refusal,
)
from orchestrator.domain.hooks import secret_or_new
from orchestrator.domain.notices import Notice
from orchestrator.engine.egress import RefusedDestination, checked_addresses
from orchestrator.errors import InvalidInput
from orchestrator.store.notifications import NoticeDelivery, Subscription
from orchestrator.timeutil import iso_of_ms, isoformat_z, utc_now

log = structlog.get_logger(__name__)
router = APIRouter(tags=["notifications"], route_class=JSONRoute)


def _out(subscription: Subscription, *, with_secret: bool = False) -> NotificationOut:
    return NotificationOut(
        id=subscription.id,
        url=subscription.url,
        events=list(subscription.events),
        created_at=subscription.created_at,
        created_by=subscription.created_by,
        secret=subscription.secret if with_secret else None,
    )


def _notice_out(notice: NoticeDelivery) -> NoticeOut:
    return NoticeOut(
        id=notice.id,
        type=notice.type,
        rollout_id=notice.rollout_id,
        created_at=iso_of_ms(notice.created_ms),
        state=notice.state,
        attempts=[NoticeAttemptOut.model_validate(attempt) for attempt in notice.attempts],
        next_attempt_at=iso_of_ms(notice.next_attempt_ms)
        if notice.state == "pending" and notice.next_attempt_ms
        else None,
    )


async def check_url(url: str, allow: AllowList) -> str:
    """An http(s) URL with a host that the notifier can post to; InvalidInput naming it otherwise.

    Parsed by urllib and by httpx (the client that posts), so a URL either refuses is
    refused here, with the reason, rather than failing at every delivery. A URL with
    credentials, or whose host is or resolves to an address that is not public (and not in
    OTA_NOTIFY_ALLOW_HOSTS), is refused too; the notifier checks the addresses again at every
    attempt, since a name may resolve elsewhere later.
    """
    example = "like https://chat.example.com/hooks/ota"
    try:
        if any(char.isspace() or not char.isprintable() for char in url):
            raise ValueError("it holds a space or a control character")
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not 0 to 65535
        httpx.URL(url).host  # noqa: B018 - raises for a host httpx cannot read (bad IDNA)
    except (ValueError, httpx.InvalidURL) as exc:  # IDNAError is a ValueError too
        raise InvalidInput(
            f"url {url!r} cannot be parsed ({exc}); write an http:// or https:// URL, {example}",
            errors=[{"loc": "body.url", "msg": "not a URL"}],
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(
            f"url {url!r} must be an http:// or https:// URL with a host, {example}",
            errors=[{"loc": "body.url", "msg": "not an http(s) URL"}],
        )
    reason = url_refusal(url, allow)
    host = parts.hostname
    if reason is None and literal_address(host) is None and not allow.allows_host(host):
        try:
            await checked_addresses(host, parts.port or 80, allow)  # the port matters not
        except RefusedDestination as exc:
            reason = str(exc)
        except httpcore.ConnectError:
            pass  # not resolvable from here now; every attempt checks it again
    if reason is not None:
        raise InvalidInput(
            f"url {url!r} is refused: {reason}. The service posts only to public addresses; "
            f"an operator can allow an on-premises host or range with {ALLOW_SETTING}",
            errors=[{"loc": "body.url", "msg": "destination not allowed"}],
        )
    return url


def check_events(events: list[str] | None) -> list[str]:
    """The named events, each known; empty for every event."""
    known = {notice.value for notice in Notice}
    for event in events or []:
        if event not in known:
            valid = ", ".join(notice.value for notice in Notice)
            raise InvalidInput(
                f"event {event!r} is not a rollout event; use some of: {valid} (or leave "
                "events out for all of them)",
                errors=[{"loc": "body.events", "msg": f"unknown event {event!r}"}],
            )
    return sorted(set(events or []))


NOTIFICATIONS = WebhookKind(
    noun="notification",
    title="Subscription",
    called="notification subscription",
    id_name="subscription_id",
    read=Scope.NOTIFICATIONS_READ,
    write=Scope.NOTIFICATIONS_WRITE,
    store=lambda stores: stores.notifications,
    model=NotificationOut,
    out=lambda context, subscription: _out(subscription),
    delivery_model=NoticeOut,
    delivery_out=_notice_out,
    delete_doc="Stop sending events to this URL; notices still queued are given up.",
    deliveries_doc=(
        "The notices of the last 7 days (the newest 1000 at most), newest first, with every "
        "attempt and the next one."
    ),
)


@router.post(
    "/v2/projects/{project_id}/notifications",
    status_code=201,
    responses=error_responses(400, *IN_PROJECT),
)
async def create_notification(
    body: NotificationCreate, at: InProject = Depends(in_project(Scope.NOTIFICATIONS_WRITE))
) -> Envelope[NotificationOut]:
    """Send the project's rollout events to a URL, signed (Standard Webhooks), with retries."""
    context, principal, project_id = at.context, at.principal, at.record.id
    url = await check_url(body.url, context.settings.notify_allow)
    events = check_events(body.events)
    secret = secret_or_new(body.secret)
    subscription = await context.stores.notifications.create(
        project_id=project_id,
        url=url,
        events=events,
        secret=secret,
        created_at=isoformat_z(utc_now()),
        by=principal.name,
    )
    log.info(
        "notification subscription created",
        subscription_id=subscription.id,
        url=masked_url(url),
    )
    return Envelope(
        status=201,
        action="create notification",
        message="Subscription created; verify deliveries with data.secret.",
        data=_out(subscription, with_secret=True),
    )


add_routes(router, NOTIFICATIONS)
