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
from typing import Any

from orchestrator.store.keys import RedisKeys
from orchestrator.store.projects import project_write
from orchestrator.store.redis import Redis, fields, load_script, members, translated
from orchestrator.timeutil import now_ms

NOTICE_TTL_S = 7 * 24 * 3600
NOTICES_KEPT = 1000  # per subscription, newest


@dataclass(frozen=True)
class Subscription:
    """Where a project's rollout events go, which ones, and the secret they are signed with."""

    id: str
    project_id: str
    url: str
    events: tuple[str, ...]  # empty: every event
    secret: str
    created_at: str
    created_by: str

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


def _subscription(raw: Mapping[str, str]) -> Subscription:
    return Subscription(
        id=raw["id"],
        project_id=raw["project_id"],
        url=raw["url"],
        events=tuple(json.loads(raw.get("events") or "[]")),
        secret=raw["secret"],
        created_at=raw["created_at"],
        created_by=raw.get("created_by", ""),
    )


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


class NotificationStore:
    """Subscriptions, and the notices queued, claimed and recorded for them."""

    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self._redis = redis
        self._keys = keys
        self._enqueue = load_script(redis, "notice_enqueue")
        self._claim = load_script(redis, "notice_claim")
        self._record = load_script(redis, "notice_record")

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
            str(uuid.uuid4()), project_id, url, tuple(events), secret, created_at, by
        )
        async with project_write(self._redis, self._keys, project_id) as pipe:
            pipe.hset(
                self._keys.notification(subscription.id),
                mapping={
                    "id": subscription.id,
                    "project_id": project_id,
                    "url": url,
                    "events": json.dumps(list(events)),
                    "secret": secret,
                    "created_at": created_at,
                    "created_by": by,
                },
            )
            pipe.zadd(self._keys.project_notifications(project_id), {subscription.id: 0})
        return subscription

    @translated
    async def get(self, subscription_id: str) -> Subscription | None:
        """The subscription, or None."""
        raw = fields(await self._redis.hgetall(self._keys.notification(subscription_id)))
        return _subscription(raw) if raw else None

    @translated
    async def of_project(self, project_id: str) -> list[Subscription]:
        """The project's subscriptions, by id."""
        index = self._keys.project_notifications(project_id)
        ids = members(await self._redis.zrange(index, 0, -1))
        async with self._redis.pipeline(transaction=False) as pipe:
            for subscription_id in ids:
                pipe.hgetall(self._keys.notification(subscription_id))
            replies = await pipe.execute()
        return [_subscription(fields(raw)) for raw in replies if raw]

    @translated
    async def delete(self, subscription: Subscription) -> None:
        """Forget the subscription and its notices, sent or not."""
        keys = self._keys
        index = keys.notification_deliveries(subscription.id)
        ids = members(await self._redis.zrange(index, 0, -1))
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(
                keys.notification(subscription.id),
                index,
                *(keys.notice_delivery(notice_id) for notice_id in ids),
            )
            pipe.zrem(keys.project_notifications(subscription.project_id), subscription.id)
            if ids:
                pipe.zrem(keys.notices_due(), *ids)
            await pipe.execute()

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

    @translated
    async def notices(self, subscription_id: str, limit: int = 100) -> list[NoticeDelivery]:
        """The subscription's notices of the last 7 days, newest first."""
        index = self._keys.notification_deliveries(subscription_id)
        ids = members(await self._redis.zrevrange(index, 0, limit - 1))
        async with self._redis.pipeline(transaction=False) as pipe:
            for notice_id in ids:
                pipe.hgetall(self._keys.notice_delivery(notice_id))
            replies = await pipe.execute()
        return [_notice(fields(raw)) for raw in replies if raw]
