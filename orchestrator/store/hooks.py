"""Deploy hooks and their deliveries.

A hook's secret is kept as written: verifying an HMAC needs it (unlike API keys, which are
stored hashed). A delivery is recorded for 24 hours under its delivery id, so a repeat gets
the rollout id of the first one and starts nothing. A GitHub-signed delivery is recorded under
its body's sha256 as well: its signature does not cover the delivery id, so the same signed
body under a new id is a repeat too.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from orchestrator.errors import NotFound
from orchestrator.store.keys import RedisKeys
from orchestrator.store.projects import project_write
from orchestrator.store.redis import Redis, fields, load_script, members, translated
from orchestrator.timeutil import now_ms

DELIVERY_TTL_S = 24 * 3600
DELIVERIES_KEPT = 1000  # per hook, newest
REQUESTS_KEPT = 100_000  # deploy requests kept in the stream (approximately)


@dataclass(frozen=True)
class Hook:
    """A deploy hook: a plan template and the secret deliveries are signed with."""

    id: str
    project_id: str
    name: str
    plan: str
    secret: str
    created_at: str
    created_by: str


@dataclass(frozen=True)
class Delivery:
    """One accepted delivery and what became of it."""

    id: str
    received_at: str
    scheme: str
    version: str
    file: str
    rollout_id: str
    status: str  # accepted | started | failed
    reason: str


@dataclass(frozen=True)
class DeployRequest:
    """An accepted delivery on its way to an engine."""

    hook_id: str
    delivery_id: str
    project_id: str
    rollout_id: str
    plan: str  # the rendered plan text
    actor: str


def _hook(raw: Mapping[str, str]) -> Hook:
    return Hook(
        id=raw["id"],
        project_id=raw["project_id"],
        name=raw["name"],
        plan=raw["plan"],
        secret=raw["secret"],
        created_at=raw["created_at"],
        created_by=raw.get("created_by", ""),
    )


def request_of(raw: Mapping[str, str]) -> DeployRequest:
    """A deploy request from its stream entry; KeyError when a field is missing."""
    return DeployRequest(
        hook_id=raw["hook_id"],
        delivery_id=raw["delivery_id"],
        project_id=raw["project_id"],
        rollout_id=raw["rollout_id"],
        plan=raw["plan"],
        actor=raw.get("actor", "hook"),
    )


class HookStore:
    """Register hooks, accept deliveries once, record what each delivery started."""

    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self._redis = redis
        self._keys = keys
        self._accept = load_script(redis, "hook_accept")
        self._settle = load_script(redis, "hook_settle")

    @translated
    async def create(
        self, *, project_id: str, name: str, plan: str, secret: str, created_at: str, by: str
    ) -> Hook:
        """A new hook with a random id; ProjectDeleting once the project's deletion has begun."""
        hook = Hook(str(uuid.uuid4()), project_id, name, plan, secret, created_at, by)
        async with project_write(self._redis, self._keys, project_id) as pipe:
            pipe.hset(
                self._keys.hook(hook.id),
                mapping={k: str(v) for k, v in dataclasses.asdict(hook).items()},
            )
            pipe.zadd(self._keys.project_hooks(project_id), {hook.id: 0})
        return hook

    @translated
    async def get(self, hook_id: str) -> Hook | None:
        """The hook, or None."""
        raw = fields(await self._redis.hgetall(self._keys.hook(hook_id)))
        return _hook(raw) if raw else None

    @translated
    async def of_project(self, project_id: str) -> list[Hook]:
        """The project's hooks, by id."""
        ids = members(await self._redis.zrange(self._keys.project_hooks(project_id), 0, -1))
        async with self._redis.pipeline(transaction=False) as pipe:
            for hook_id in ids:
                pipe.hgetall(self._keys.hook(hook_id))
            replies = await pipe.execute()
        return [_hook(fields(raw)) for raw in replies if raw]

    @translated
    async def delete(self, hook: Hook) -> None:
        """Forget the hook and the records of its deliveries; deliveries already accepted
        still start their rollouts (their deploy requests are queued)."""
        keys = self._keys
        ids = members(await self._redis.zrange(keys.hook_deliveries(hook.id), 0, -1))
        async with self._redis.pipeline(transaction=False) as pipe:
            for delivery_id in ids:
                pipe.hget(keys.hook_delivery(hook.id, delivery_id), "body_digest")
            digests = await pipe.execute()
        doomed = [keys.hook(hook.id), keys.hook_deliveries(hook.id)]
        doomed += [keys.hook_delivery(hook.id, delivery_id) for delivery_id in ids]
        doomed += [keys.hook_body(hook.id, str(d)) for d in digests if d]
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(*doomed)
            pipe.zrem(keys.project_hooks(hook.project_id), hook.id)
            await pipe.execute()

    @translated
    async def accept(
        self, hook: Hook, delivery: Delivery, *, plan: str, actor: str, body_digest: str | None
    ) -> tuple[str, bool]:
        """Record the delivery and queue its deploy, once; (rollout id, True when new).

        With `body_digest` (the sha256 hex of a body whose signature does not cover the
        delivery id), a body accepted in the last 24 hours is a repeat whatever its id.
        NotFound when the hook was deleted meanwhile.
        """
        record = {
            "id": delivery.id,
            "received_at": delivery.received_at,
            "scheme": delivery.scheme,
            "version": delivery.version,
            "file": delivery.file,
            "status": delivery.status,
            "reason": delivery.reason,
            "body_digest": body_digest or "",  # so that `delete` finds the body's record
        }
        request = {
            "hook_id": hook.id,
            "delivery_id": delivery.id,
            "project_id": hook.project_id,
            "plan": plan,
            "actor": actor,
        }
        reply = await self._accept(
            keys=[
                self._keys.hook_delivery(hook.id, delivery.id),
                self._keys.hook_deliveries(hook.id),
                self._keys.deploy_requests(),
                *([self._keys.hook_body(hook.id, body_digest)] if body_digest else []),
            ],
            args=[
                delivery.rollout_id,
                DELIVERY_TTL_S,
                now_ms(),
                delivery.id,
                json.dumps(record),
                json.dumps(request),
                DELIVERIES_KEPT,
                REQUESTS_KEPT,
                self._keys.hook(hook.id),
            ],
        )
        if reply[1] == "gone":
            raise NotFound(f"hook {hook.id} not found; it was deleted meanwhile")
        return str(reply[0]), str(reply[1]) == "1"

    @translated
    async def known(self, hook_id: str, delivery_id: str, body_digest: str | None) -> str | None:
        """The rollout id given to this delivery (or this signed body) in the last 24 hours."""
        value = await self._redis.hget(self._keys.hook_delivery(hook_id, delivery_id), "rollout_id")
        if value is None and body_digest:
            value = await self._redis.get(self._keys.hook_body(hook_id, body_digest))
        return str(value) if value is not None else None

    @translated
    async def settle(self, hook_id: str, delivery_id: str, *, status: str, reason: str) -> None:
        """Record what the engine made of a delivery (only while the delivery is kept)."""
        await self._settle(
            keys=[self._keys.hook_delivery(hook_id, delivery_id)], args=[status, reason]
        )

    @translated
    async def deliveries(self, hook_id: str, limit: int = 100) -> list[Delivery]:
        """The hook's deliveries of the last 24 hours, newest first."""
        ids = members(
            await self._redis.zrevrange(self._keys.hook_deliveries(hook_id), 0, limit - 1)
        )
        async with self._redis.pipeline(transaction=False) as pipe:
            for delivery_id in ids:
                pipe.hgetall(self._keys.hook_delivery(hook_id, delivery_id))
            replies = await pipe.execute()
        found = []
        for delivery_id, reply in zip(ids, replies, strict=True):
            raw = fields(reply)
            if raw:
                found.append(
                    Delivery(
                        id=delivery_id,
                        received_at=raw.get("received_at", ""),
                        scheme=raw.get("scheme", ""),
                        version=raw.get("version", ""),
                        file=raw.get("file", ""),
                        rollout_id=raw.get("rollout_id", ""),
                        status=raw.get("status", ""),
                        reason=raw.get("reason", ""),
                    )
                )
        return found
