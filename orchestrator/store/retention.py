"""Retention of finished rollouts: the index of when each finished, and their deletion.

A rollout enters the finished index (`rollouts:finished`, scored by when it finished, epoch ms)
in the same script as its terminal state change (rollout_state.lua). Once the retention has
passed, `purge` deletes it chunk by chunk (rollout_purge.lua): every key named after it, the
per-device records, its entry in the project's rollout index and the device locks it still
holds. A compacted rollout (store/rollout_archive.py) goes the same way: its packed records
are one key, deleted with the last chunk. Rollouts that finished before the index existed are
put in it by `backfill`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import cast

from orchestrator.domain.states import TERMINAL_ROLLOUT_STATES
from orchestrator.store.keys import RedisKeys
from orchestrator.store.redis import Redis, load_script, members, translated
from orchestrator.timeutil import epoch_ms

PURGE_CHUNK = 500  # device records deleted per script call
BACKFILL_CHUNK = 500  # rollouts read per round trip by the backfill


@dataclass(frozen=True, slots=True)
class Purged:
    """What one `purge` did: its last outcome and how many device records it deleted."""

    outcome: str  # active | not_finished | more | deleted
    devices: int

    @property
    def done(self) -> bool:
        """True when nothing is left for a later pass: deleted, or not to be deleted now."""
        return self.outcome != "more"


class RetentionStore:
    """The finished index and the deletion of rollouts past their retention."""

    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self._redis = redis
        self._keys = keys
        self._terminal = sorted(state.value for state in TERMINAL_ROLLOUT_STATES)
        self._purge = load_script(redis, "rollout_purge")

    @translated
    async def finished_before(self, cutoff_ms: int, limit: int) -> list[str]:
        """Up to `limit` rollouts that finished at or before `cutoff_ms`, oldest first."""
        return members(
            await self._redis.zrangebyscore(
                self._keys.finished_rollouts(), "-inf", cutoff_ms, start=0, num=limit
            )
        )

    @translated
    async def finished_at(self, rollout_id: str) -> int | None:
        """When the rollout finished (epoch ms) by the index; None when it is not in it."""
        score = await self._redis.zscore(self._keys.finished_rollouts(), rollout_id)
        return None if score is None else int(score)

    @translated
    async def purge(self, rollout_id: str, *, max_devices: int, chunk: int = PURGE_CHUNK) -> Purged:
        """Delete the rollout's device records, `chunk` per call, then the rest of it.

        Stops after about `max_devices` records ('more': a later call goes on). Does nothing to
        a rollout the engine has not deactivated yet; takes a rollout that is not terminal out
        of the finished index and leaves it alone.
        """
        keys = self._keys
        head = await self._redis.hmget(keys.rollout(rollout_id), ["project_id", "name"])
        project_id, name = (str(value or "") for value in head)
        fixed: list[str | int] = [
            rollout_id,
            json.dumps(self._terminal),
            chunk,
            keys.active_rollouts(),
            keys.finished_rollouts(),
            keys.project_rollouts(project_id) if project_id else "",
            keys.rollout_name(project_id, name) if project_id and name else "",
            keys.rollout_device_prefix(rollout_id),
            keys.device_rollout_prefix(),
            keys.rollout_order(rollout_id),
            keys.archived_rollouts(),
            keys.rollout(rollout_id),
            keys.rollout_counts(rollout_id),
            keys.rollout_events(rollout_id),
            keys.rollout_deadlines(rollout_id),
            keys.rollout_retry(rollout_id),
            keys.rollout_unpublished(rollout_id),
            keys.rollout_lease(rollout_id),
            keys.rollout_archive(rollout_id),
        ]
        deleted = 0
        while True:
            # KEYS only routes the call (Redis Cluster): every key shares the prefix's slot.
            outcome, count = await self._purge(keys=[keys.finished_rollouts()], args=fixed)
            deleted += int(count)
            purged = Purged(str(outcome), deleted)
            if purged.done or deleted >= max_devices:
                return purged

    @translated
    async def backfill(self, now_ms: int) -> int:
        """Put every terminal rollout missing from the finished index in it; how many.

        They are scored by their `updated_at` (a terminal rollout changes no more), or by
        `now_ms` when it cannot be read. Safe to run on several replicas at once.
        """
        keys = self._keys
        added = 0
        for project_id in members(await self._redis.zrange(keys.projects(), 0, -1)):
            # All at once: pages by rank would skip ids that a purge elsewhere takes out.
            ids = members(await self._redis.zrange(keys.project_rollouts(project_id), 0, -1))
            for start in range(0, len(ids), BACKFILL_CHUNK):
                chunk = ids[start : start + BACKFILL_CHUNK]
                async with self._redis.pipeline(transaction=False) as pipe:
                    for rollout_id in chunk:
                        pipe.hmget(keys.rollout(rollout_id), ["state", "updated_at"])
                    heads = await pipe.execute()
                finished: dict[str, int] = {}
                for rollout_id, (state, updated_at) in zip(chunk, heads, strict=True):
                    if state in self._terminal:
                        at_ms = epoch_ms(updated_at or "")
                        finished[rollout_id] = now_ms if at_ms is None else at_ms
                if finished:
                    reply = await self._redis.zadd(keys.finished_rollouts(), finished, nx=True)
                    added += cast(int, reply)  # members added (redis-py types it loosely)
        return added
