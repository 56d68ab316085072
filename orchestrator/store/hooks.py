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
from typing import Self

from orchestrator.errors import NotFound
from orchestrator.store.keys import RedisKeys
from orchestrator.store.redis import Redis, load_script, translated
from orchestrator.store.webhooks import Webhook, WebhookStore
from orchestrator.timeutil import now_ms

DELIVERY_TTL_S = 24 * 3600
DELIVERIES_KEPT = 1000  # per hook, newest
REQUESTS_KEPT = 100_000  # deploy requests kept in the stream (approximately)


@dataclass(frozen=True)
class Hook(Webhook):
    """A deploy hook: a plan template and the secret deliveries are signed with."""

    name: str
    plan: str

    @classmethod
    def of_stored(cls, raw: Mapping[str, str]) -> Self:
        """The hook from its hash fields."""
        return cls(**cls._common(raw), name=raw["name"], plan=raw["plan"])


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


DELIVERY_FIELDS = tuple(field.name for field in dataclasses.fields(Delivery) if field.name != "id")


@dataclass(frozen=True)
class DeployRequest:
    """An accepted delivery on its way to an engine."""

    hook_id: str
    delivery_id: str
    project_id: str
    rollout_id: str
    plan: str  # the rendered plan text
    actor: str


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


class HookStore(WebhookStore[Hook, Delivery]):
    """Register hooks, accept deliveries once, record what each delivery started."""

    record_type = Hook
    kept = DELIVERIES_KEPT

    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        super().__init__(
            redis,
            keys,
            record=keys.hook,
            index=keys.project_hooks,
            deliveries=keys.hook_deliveries,
            delivery=keys.hook_delivery,
        )
        self._accept = load_script(redis, "hook_accept")
        self._settle = load_script(redis, "hook_settle")

    def _delivery(self, delivery_id: str, raw: Mapping[str, str]) -> Delivery:
        return Delivery(id=delivery_id, **{name: raw.get(name, "") for name in DELIVERY_FIELDS})

    @translated
    async def create(
        self, *, project_id: str, name: str, plan: str, secret: str, created_at: str, by: str
    ) -> Hook:
        """A new hook with a random id; ProjectDeleting once the project's deletion has begun."""
        hook = Hook(
            id=str(uuid.uuid4()),
            project_id=project_id,
            secret=secret,
            created_at=created_at,
            created_by=by,
            name=name,
            plan=plan,
        )
        return await self._add(hook)

    async def _owned_besides(self, record: Hook, delivery_ids: list[str]) -> list[str]:
        """The signed bodies recorded for the hook's deliveries."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for delivery_id in delivery_ids:
                pipe.hget(self._keys.hook_delivery(record.id, delivery_id), "body_digest")
            digests = await pipe.execute()
        return [self._keys.hook_body(record.id, str(digest)) for digest in digests if digest]

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
