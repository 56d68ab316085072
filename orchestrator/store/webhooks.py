"""What deploy hooks and notification subscriptions share: webhooks a project owns.

A hook takes signed deliveries in (CI posts a release, a rollout starts); a subscription
sends signed notices out (a rollout's events, to a team's URL). Each is a hash holding its
secret, listed in an index of its project's (a sorted set by id), with an index of its
deliveries scored by time (epoch ms), read newest first. The kinds differ in what a record
holds and in what a delivery is; `WebhookStore` is the rest, written once.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Self, TypeVar

from orchestrator.store.keys import RedisKeys
from orchestrator.store.projects import project_write
from orchestrator.store.redis import Pipeline, Redis, fields, members, translated


@dataclass(frozen=True)
class Webhook:
    """What every webhook record holds: whose it is, its secret (kept as written: an HMAC
    needs it), and who made it when."""

    id: str
    project_id: str
    secret: str
    created_at: str
    created_by: str

    def stored(self) -> dict[str, str]:
        """The record's hash fields."""
        return {name: str(value) for name, value in dataclasses.asdict(self).items()}

    @classmethod
    def _common(cls, raw: Mapping[str, str]) -> dict[str, Any]:
        """The shared fields of a stored record (older records lack created_by)."""
        return {
            "id": raw["id"],
            "project_id": raw["project_id"],
            "secret": raw["secret"],
            "created_at": raw["created_at"],
            "created_by": raw.get("created_by", ""),
        }

    @classmethod
    @abstractmethod
    def of_stored(cls, raw: Mapping[str, str]) -> Self:
        """The record from its hash fields."""


W = TypeVar("W", bound=Webhook)
D = TypeVar("D")


class WebhookStore(ABC, Generic[W, D]):
    """Add, read, list and delete one kind of webhook record, and read its deliveries."""

    record_type: type[W]
    kept: int  # deliveries kept per record, newest

    def __init__(
        self,
        redis: Redis,
        keys: RedisKeys,
        *,
        record: Callable[[str], str],
        index: Callable[[str], str],
        deliveries: Callable[[str], str],
        delivery: Callable[[str, str], str],
    ) -> None:
        """`record(id)` names a record's hash, `index(project_id)` the sorted set of the
        project's record ids, `deliveries(id)` the sorted set of a record's delivery ids by
        time, `delivery(id, delivery_id)` one delivery's hash."""
        self._redis = redis
        self._keys = keys
        self._key = record
        self._index = index
        self._deliveries_index = deliveries
        self._delivery_key = delivery

    @abstractmethod
    def _delivery(self, delivery_id: str, raw: Mapping[str, str]) -> D:
        """One delivery from its hash fields."""

    async def _owned_besides(self, record: W, delivery_ids: list[str]) -> list[str]:
        """Keys the record's deliveries own besides their own records (none)."""
        return []

    def _unlist(self, pipe: Pipeline, delivery_ids: list[str]) -> None:
        """Take the deliveries out of any index besides the record's own (none)."""

    async def _add(self, record: W) -> W:
        """Store a new record and list it in its project, in one transaction; ProjectDeleting
        once the project's deletion has begun."""
        async with project_write(self._redis, self._keys, record.project_id) as pipe:
            pipe.hset(
                self._key(record.id),
                mapping={name: value for name, value in record.stored().items()},
            )
            pipe.zadd(self._index(record.project_id), {record.id: 0})
        return record

    @translated
    async def get(self, record_id: str) -> W | None:
        """The record, or None."""
        raw = fields(await self._redis.hgetall(self._key(record_id)))
        return self.record_type.of_stored(raw) if raw else None

    @translated
    async def of_project(self, project_id: str) -> list[W]:
        """The project's records, by id."""
        ids = members(await self._redis.zrange(self._index(project_id), 0, -1))
        async with self._redis.pipeline(transaction=False) as pipe:
            for record_id in ids:
                pipe.hgetall(self._key(record_id))
            replies = await pipe.execute()
        return [self.record_type.of_stored(fields(raw)) for raw in replies if raw]

    @translated
    async def delete(self, record: W) -> None:
        """Forget the record with its deliveries and what they own, in one transaction."""
        index = self._deliveries_index(record.id)
        ids = members(await self._redis.zrange(index, 0, -1))
        doomed = [self._key(record.id), index]
        doomed += [self._delivery_key(record.id, delivery_id) for delivery_id in ids]
        doomed += await self._owned_besides(record, ids)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(*doomed)
            pipe.zrem(self._index(record.project_id), record.id)
            self._unlist(pipe, ids)
            await pipe.execute()

    @translated
    async def deliveries(self, record_id: str, limit: int = 100) -> list[D]:
        """The record's deliveries still kept, newest first."""
        index = self._deliveries_index(record_id)
        ids = members(await self._redis.zrevrange(index, 0, limit - 1))
        async with self._redis.pipeline(transaction=False) as pipe:
            for delivery_id in ids:
                pipe.hgetall(self._delivery_key(record_id, delivery_id))
            replies = await pipe.execute()
        found = [
            (delivery_id, fields(reply)) for delivery_id, reply in zip(ids, replies, strict=True)
        ]
        return [self._delivery(delivery_id, raw) for delivery_id, raw in found if raw]
