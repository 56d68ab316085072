"""A rollout's audit trail: the list of what happened to it, and the notices stream.

State changes write their entry in their own script (RolloutStore.change_state); this store
reads the trail and appends the entries that change no state (a wave passing, the engine
giving up), each with the rollout fields it records, in one transaction.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from orchestrator.store.keys import RedisKeys
from orchestrator.store.redis import Redis, members, translated

NOTICES_KEPT = 100_000  # audit entries kept in the notices stream (approximately)


class AuditTrail:
    """Read and append to rollouts' audit trails."""

    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self._redis = redis
        self._keys = keys

    @translated
    async def events(self, rollout_id: str) -> list[dict[str, Any]]:
        """The audit trail, oldest first."""
        raw = members(await self._redis.lrange(self._keys.rollout_events(rollout_id), 0, -1))
        return [json.loads(entry) for entry in raw]

    @translated
    async def add(
        self,
        rollout_id: str,
        event: Mapping[str, Any],
        *,
        fields: Mapping[str, str | int] | None = None,
    ) -> None:
        """Append to the audit trail without a state change (e.g. a wave passing).

        `fields` of the rollout are set in the same transaction, and the entry goes to the
        notices stream, so the trail, the rollout and its subscribers never disagree.
        """
        entry = json.dumps(dict(event))
        async with self._redis.pipeline(transaction=True) as pipe:
            if fields:
                pipe.hset(
                    self._keys.rollout(rollout_id), mapping={k: str(v) for k, v in fields.items()}
                )
            pipe.rpush(self._keys.rollout_events(rollout_id), entry)
            pipe.xadd(
                self._keys.rollout_notices(),
                {"rollout_id": rollout_id, "event": entry},
                maxlen=NOTICES_KEPT,
                approximate=True,
            )
            await pipe.execute()
