"""Rollout leases: which engine replica drives a rollout, for how long.

A replica takes a rollout's lease before it steps the rollout and renews it at every look; one
that stops renewing loses it when it lapses, and another replica takes the rollout over.
"""

from __future__ import annotations

from orchestrator.store.keys import RedisKeys
from orchestrator.store.redis import Redis, translated

# Compare and act in one step: only the owner renews or gives back its lease.
_RENEW = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then "
    "return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end"
)
_RELEASE = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then "
    "return redis.call('DEL', KEYS[1]) else return 0 end"
)


class LeaseStore:
    """Take, renew and give back rollout leases."""

    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self._redis = redis
        self._keys = keys

    @translated
    async def acquire(self, rollout_id: str, owner: str, ttl_ms: int) -> bool:
        """Take or renew the right to drive the rollout."""
        key = self._keys.rollout_lease(rollout_id)
        if await self._redis.set(key, owner, nx=True, px=ttl_ms):
            return True
        return bool(await self._redis.eval(_RENEW, 1, key, owner, ttl_ms))

    @translated
    async def release(self, rollout_id: str, owner: str) -> None:
        """Give the rollout back (on shutdown) so another replica takes it at once."""
        await self._redis.eval(_RELEASE, 1, self._keys.rollout_lease(rollout_id), owner)

    @translated
    async def owner(self, rollout_id: str) -> str | None:
        """The instance id of the replica that drives the rollout now, or None."""
        owner = await self._redis.get(self._keys.rollout_lease(rollout_id))
        return None if owner is None else str(owner)
