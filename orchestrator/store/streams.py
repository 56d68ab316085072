"""Reading a Redis stream through a consumer group: each entry handled once, none lost.

At start, a replica first re-reads its own entries left unacknowledged by a crash mid-handling
(from an id, moving past each one so a failing entry cannot loop), then reads new ones (">").
Every so often it takes over entries that another replica read but never acknowledged (it
died) once they have been idle long enough. An entry is acknowledged only after its handler
returns; a handler that raises leaves it pending, to be taken over and tried again later
(an unexpected exception is logged with its traceback; the loop goes on with the next entry).

Why redis-py rather than FastStream's stream subscriber: FastStream reads either new entries
(XREADGROUP) or, given `min_idle_time`, only reclaimed ones (XAUTOCLAIM), never both, and does
not re-read a replica's own pending entries at start; this one loop does all three.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from enum import StrEnum
from typing import Any

import structlog
from redis.exceptions import RedisError, ResponseError

from orchestrator.errors import OrchestratorError
from orchestrator.store.keys import RedisKeys
from orchestrator.store.redis import Redis, fields

log = structlog.get_logger(__name__)

GROUP = "ota-engine"
BLOCK_MS = 1000
READ_COUNT = 500
RECLAIM_EVERY_S = 15.0
RECLAIM_IDLE_MS = 30_000

Handler = Callable[[str, Mapping[str, str]], Awaitable[None]]


class EngineStream(StrEnum):
    """The streams the engine reads (each the name of its RedisKeys method)."""

    DOWNLOAD_EVENTS = "download_events"  # download-key use, from the API
    DEPLOY_REQUESTS = "deploy_requests"  # deploys accepted from webhooks
    ROLLOUT_NOTICES = "rollout_notices"  # audit entries to notify subscribers of


class EngineStreams:
    """The engine's streams, each read by the replicas through one consumer group."""

    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self._redis = redis
        self._keys = keys

    async def consume(
        self,
        stream: EngineStream,
        consumer: str,
        handler: Handler,
        stopping: asyncio.Event,
        *,
        what: str,
        from_start: bool = True,
    ) -> None:
        """Hand every entry of `stream` to `handler(entry id, fields)` until `stopping` is set.

        The group is made on first use; `from_start` makes it take the entries written before
        that too (a deploy accepted before any engine ever ran), else only later ones.
        """
        redis = self._redis
        key = getattr(self._keys, stream.value)()
        with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists already
            await redis.xgroup_create(key, GROUP, id="0" if from_start else "$", mkstream=True)
        position: str | None = "0"
        last_claim = 0.0
        while not stopping.is_set():
            try:
                reply: Any = await redis.xreadgroup(
                    GROUP,
                    consumer,
                    {key: position or ">"},
                    count=READ_COUNT,
                    block=None if position else BLOCK_MS,
                )
                # RESP2 reply: [[stream, [(entry id, {field: value}), ...]]]
                entries: list[tuple[str, dict[str, str]]] = reply[0][1] if reply else []
                if position and not entries:
                    position = None
                    continue
                now = asyncio.get_running_loop().time()
                if not position and now - last_claim >= RECLAIM_EVERY_S:
                    last_claim = now
                    claimed: Any = await redis.xautoclaim(
                        key, GROUP, consumer, min_idle_time=RECLAIM_IDLE_MS, count=READ_COUNT
                    )
                    entries = [*entries, *claimed[1]]
                for entry_id, raw in entries:
                    if position:
                        position = str(entry_id)
                    if raw is None:  # trimmed from the stream while it was pending
                        await redis.xack(key, GROUP, entry_id)
                        continue
                    try:
                        await handler(str(entry_id), fields(raw))
                    except OrchestratorError as exc:
                        log.warning(
                            f"{what} not handled; it will be tried again", error=exc.message
                        )
                        continue
                    except Exception:  # a bug the entry meets: the entries after it still flow
                        log.exception(f"{what} failed; it will be tried again", entry_id=entry_id)
                        continue
                    await redis.xack(key, GROUP, entry_id)
            except (RedisError, OrchestratorError) as exc:
                log.warning(f"{what} unavailable; retrying", error=str(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), 1.0)
