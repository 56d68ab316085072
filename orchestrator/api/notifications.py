"""Notification subscriptions: a project's rollout events posted, signed, to a team's URL."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpcore
import httpx
import structlog
from fastapi import APIRouter, Depends, Response

from orchestrator.api.auth import check_project, require
from orchestrator.api.bodies import JSONRoute
from orchestrator.api.context import AppContext, get_context
from orchestrator.api.errors import IN_PROJECT, error_responses
from orchestrator.api.listing import one_page, streamed
from orchestrator.api.schemas import (
    Done,
    NoticeAttemptOut,
    NoticeListEnvelope,
    NoticeOut,
    NotificationCreate,
    NotificationEnvelope,
    NotificationListEnvelope,
    NotificationOut,
)
from orchestrator.domain.auth import Principal, Scope
from orchestrator.domain.destinations import (
    ALLOW_SETTING,
    AllowList,
    literal_address,
    masked_url,
    url_refusal,
)
from orchestrator.domain.hooks import check_secret, new_secret
from orchestrator.domain.notices import Notice
from orchestrator.engine.egress import RefusedDestination, checked_addresses
from orchestrator.errors import InvalidInput, NotFound
from orchestrator.store.notifications import NOTICES_KEPT, NoticeDelivery, Subscription
from orchestrator.timeutil import isoformat_z, utc_now

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


def _iso_ms(epoch_ms: int) -> str:
    return isoformat_z(datetime.fromtimestamp(epoch_ms / 1000, tz=UTC))


def _notice_out(notice: NoticeDelivery) -> NoticeOut:
    return NoticeOut(
        id=notice.id,
        type=notice.type,
        rollout_id=notice.rollout_id,
        created_at=_iso_ms(notice.created_ms),
        state=notice.state,
        attempts=[NoticeAttemptOut.model_validate(attempt) for attempt in notice.attempts],
        next_attempt_at=_iso_ms(notice.next_attempt_ms)
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


async def _subscription(context: AppContext, project_id: str, sid: str) -> Subscription:
    subscription = await context.stores.notifications.get(sid)
    if subscription is None or subscription.project_id != project_id:
        raise NotFound(
            f"notification subscription {sid} not found in project {project_id}; "
            "ota notifications list"
        )
    return subscription


@router.post(
    "/v2/projects/{project_id}/notifications",
    name="create_notification",
    status_code=201,
    responses=error_responses(400, *IN_PROJECT),
)
async def create_notification(
    project_id: str,
    body: NotificationCreate,
    context: AppContext = Depends(get_context),
    principal: Principal = Depends(require(Scope.NOTIFICATIONS_WRITE)),
) -> NotificationEnvelope:
    """Send the project's rollout events to a URL, signed (Standard Webhooks), with retries."""
    await check_project(context, principal, project_id)
    url = await check_url(body.url, context.settings.notify_allow)
    events = check_events(body.events)
    secret = check_secret(body.secret) if body.secret is not None else new_secret()
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
    return NotificationEnvelope(
        status=201,
        action="create notification",
        message="Subscription created; verify deliveries with data.secret.",
        data=_out(subscription, with_secret=True),
    )


@router.get(
    "/v2/projects/{project_id}/notifications",
    name="list_notifications",
    response_model=NotificationListEnvelope,
    responses=error_responses(*IN_PROJECT),
)
async def list_notifications(
    project_id: str,
    context: AppContext = Depends(get_context),
    principal: Principal = Depends(require(Scope.NOTIFICATIONS_READ)),
) -> Response:
    """The project's subscriptions (without their secrets)."""
    await check_project(context, principal, project_id)
    found = await context.stores.notifications.of_project(project_id)
    envelope = NotificationListEnvelope(
        status=200, action="list notifications", message="Subscriptions listed.", data=[]
    )
    return await streamed(envelope, "data", one_page([_out(each) for each in found]))


@router.get(
    "/v2/projects/{project_id}/notifications/{subscription_id}",
    name="get_notification",
    responses=error_responses(*IN_PROJECT),
)
async def get_notification(
    project_id: str,
    subscription_id: str,
    context: AppContext = Depends(get_context),
    principal: Principal = Depends(require(Scope.NOTIFICATIONS_READ)),
) -> NotificationEnvelope:
    """One subscription (without its secret)."""
    await check_project(context, principal, project_id)
    subscription = await _subscription(context, project_id, subscription_id)
    return NotificationEnvelope(
        status=200,
        action="get notification",
        message="Subscription found.",
        data=_out(subscription),
    )


@router.delete(
    "/v2/projects/{project_id}/notifications/{subscription_id}",
    name="delete_notification",
    responses=error_responses(*IN_PROJECT),
)
async def delete_notification(
    project_id: str,
    subscription_id: str,
    context: AppContext = Depends(get_context),
    principal: Principal = Depends(require(Scope.NOTIFICATIONS_WRITE)),
) -> Done:
    """Stop sending events to this URL; notices still queued are given up."""
    await check_project(context, principal, project_id)
    subscription = await _subscription(context, project_id, subscription_id)
    await context.stores.notifications.delete(subscription)
    return Done(action="delete notification")


@router.get(
    "/v2/projects/{project_id}/notifications/{subscription_id}/deliveries",
    name="list_notification_deliveries",
    response_model=NoticeListEnvelope,
    responses=error_responses(*IN_PROJECT),
)
async def list_notification_deliveries(
    project_id: str,
    subscription_id: str,
    context: AppContext = Depends(get_context),
    principal: Principal = Depends(require(Scope.NOTIFICATIONS_READ)),
) -> Response:
    """The notices of the last 7 days (the newest 1000 at most), newest first, with every
    attempt and the next one."""
    await check_project(context, principal, project_id)
    await _subscription(context, project_id, subscription_id)
    notices = await context.stores.notifications.notices(subscription_id, limit=NOTICES_KEPT)
    envelope = NoticeListEnvelope(
        status=200, action="list notification deliveries", message="Deliveries listed.", data=[]
    )
    return await streamed(envelope, "data", one_page([_notice_out(n) for n in notices]))
