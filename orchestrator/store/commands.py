"""Records of sent commands, kept a day so results can be matched to them."""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.store.keys import RedisKeys
from orchestrator.store.redis import Redis, fields, translated

COMMAND_RECORD_TTL_S = 24 * 3600


class CommandStore:
    """Remember which device a command id went to."""

    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self._redis = redis
        self._keys = keys

    @translated
    async def record(
        self,
        sent: Sequence[tuple[str, str]],
        *,
        project_id: str,
        command: str,
        sent_at: str,
        rollout_id: str = "",
        kind: str = "",
    ) -> None:
        """Record (device id, command id) sends of one command, in one round trip, for
        COMMAND_RECORD_TTL_S seconds."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for device_id, command_id in sent:
                key = self._keys.command(command_id)
                pipe.hset(
                    key,
                    mapping={
                        "device_id": device_id,
                        "project_id": project_id,
                        "command": command,
                        "sent_at": sent_at,
                        "rollout_id": rollout_id,
                        "kind": kind,
                    },
                )
                pipe.expire(key, COMMAND_RECORD_TTL_S)
            await pipe.execute()

    @translated
    async def get(self, command_id: str) -> dict[str, str] | None:
        """The command's record, or None once unknown or expired."""
        return fields(await self._redis.hgetall(self._keys.command(command_id))) or None
