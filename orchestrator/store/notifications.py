"""Notification subscriptions and the notices queued for them, with every attempt.

A notice is one rollout event for one subscriber. It lives 7 days; while it is `pending` its
id sits in a sorted set scored by when its next attempt is due. A sender claims due notices by
pushing them a visibility timeout into the future, so a sender that dies mid-attempt leaves
the notice to be tried again rather than lost.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

from orchestrator.store.keys import RedisKeys
from orchestrator.store.redis import Pipeline, Redis, load_script, translated
from orchestrator.store.webhooks import Webhook, WebhookStore
from orchestrator.timeutil import now_ms

NOTICE_TTL_S = 7 * 24 * 3600
NOTICES_KEPT = 1000  # per subscription, newest


@dataclass(frozen=True)
class Subscription(Webhook):
    """Where a project's rollout events go, which ones, and the secret they are signed with."""

    url: str
    events: tuple[str, ...]  # empty: every event

    def stored(self) -> dict[str, str]:
        """The record's hash fields (the events as a JSON list)."""
        return {**super().stored(), "events": json.dumps(list(self.events))}

    @classmethod
    def of_stored(cls, raw: Mapping[str, str]) -> Self:
        """The subscription from its hash fields."""
        events = tuple(json.loads(raw.get("events") or "[]"))
        return cls(**cls._common(raw), url=raw["url"], events=events)

    def wants(self, notice: str) -> bool:
        """True when the subscription asked for this event (or for every event)."""
        return not self.events or notice in self.events


@dataclass(frozen=True)
class NoticeDelivery:
    """One event queued for one subscriber, and its attempts so far."""

    id: str
    subscription_id: str
    type: str
    rollout_id: str
    body: str
    state: str  # pending | delivered | failed
    attempts: list[dict[str, Any]] = field(default_factory=list)
    created_ms: int = 0
    next_attempt_ms: int | None = None


def _notice(raw: Mapping[str, str]) -> NoticeDelivery:
    next_ms = raw.get("next_attempt_ms", "")
    return NoticeDelivery(
        id=raw["id"],
        subscription_id=raw["subscription_id"],
        type=raw.get("type", ""),
        rollout_id=raw.get("rollout_id", ""),
        body=raw.get("body", ""),
        state=raw.get("state", ""),
        attempts=json.loads(raw.get("attempts") or "[]"),
        created_ms=int(raw.get("created_ms") or 0),
        next_attempt_ms=int(next_ms) if next_ms else None,
    )


class NotificationStore(WebhookStore[Subscription, NoticeDelivery]):
    """Subscriptions, and the notices queued, claimed and recorded for them."""

    record_type = Subscription
    kept = NOTICES_KEPT

    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        super().__init__(
            redis,
            keys,
            record=keys.notification,
            index=keys.project_notifications,
            deliveries=keys.notification_deliveries,
            delivery=lambda _, notice_id: keys.notice_delivery(notice_id),
        )
        self._enqueue = load_script(redis, "notice_enqueue")
        self._claim = load_script(redis, "notice_claim")
        self._record = load_script(redis, "notice_record")

    def _delivery(self, delivery_id: str, raw: Mapping[str, str]) -> NoticeDelivery:
        return _notice(raw)

    @translated
    async def create(
        self,
        *,
        project_id: str,
        url: str,
        events: Sequence[str],
        secret: str,
        created_at: str,
        by: str,
    ) -> Subscription:
        """A new subscription with a random id; ProjectDeleting once the project's deletion
        has begun."""
        subscription = Subscription(
            id=str(uuid.uuid4()),
            project_id=project_id,
            secret=secret,
            created_at=created_at,
            created_by=by,
            url=url,
            events=tuple(events),
        )
        return await self._add(subscription)

    def _unlist(self, pipe: Pipeline, delivery_ids: list[str]) -> None:
        """Its notices are no longer due."""
        if delivery_ids:
            pipe.zrem(self._keys.notices_due(), *delivery_ids)

    @translated
    async def enqueue(self, notices: Sequence[tuple[str, str, Mapping[str, str]]]) -> int:
        """Queue (notice id, subscription id, fields) each once; how many were new."""
        if not notices:
            return 0
        args: list[str | int] = [
            now_ms(),
            NOTICE_TTL_S,
            self._keys.notice_delivery(""),
            self._keys.notification(""),
            NOTICES_KEPT,
        ]
        for notice_id, subscription_id, values in notices:
            args += [notice_id, subscription_id, json.dumps(dict(values))]
        return int(await self._enqueue(keys=[self._keys.notices_due()], args=args))

    @translated
    async def claim(self, *, now: int, visibility_ms: int, limit: int) -> list[NoticeDelivery]:
        """Due notices, each hidden from other senders for `visibility_ms`."""
        rows = await self._claim(
            keys=[self._keys.notices_due()],
            args=[now, visibility_ms, limit, self._keys.notice_delivery("")],
        )
        return [_notice(dict(zip(row[0::2], row[1::2], strict=True))) for row in rows]

    @translated
    async def record(
        self, notice_id: str, attempt: Mapping[str, Any], *, state: str, next_ms: int | None
    ) -> None:
        """Append an attempt; `next_ms` schedules another, None ends the notice."""
        await self._record(
            keys=[self._keys.notice_delivery(notice_id), self._keys.notices_due()],
            args=[notice_id, json.dumps(dict(attempt)), state, "" if next_ms is None else next_ms],
        )
