"""The engine: takes rollouts by lease, follows results and download events, stops cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import Any

import structlog
from redis.exceptions import RedisError, ResponseError

from orchestrator.engine.context import EngineContext
from orchestrator.engine.driver import RolloutDriver
from orchestrator.engine.tracker import Tracker
from orchestrator.errors import OrchestratorError
from orchestrator.store.redis import fields
from orchestrator.transport.results import ResultSubscriber

log = structlog.get_logger(__name__)

SCHEDULE_EVERY_S = 0.5  # how often the engine looks for rollouts it could drive
EVENTS_GROUP = "ota-engine"
EVENTS_BLOCK_MS = 1000
STOP_GRACE_S = 10.0
RECLAIM_EVERY_S = 15.0
RECLAIM_IDLE_MS = 30_000


class Engine:
    """Every rollout driver of this replica, the result subscriber and the events consumer."""

    def __init__(self, context: EngineContext) -> None:
        self.context = context
        self.tracker = Tracker(context)
        settings = context.settings
        self.results = ResultSubscriber(
            settings.mqtt_url,
            version=settings.mqtt_version,
            client_id=f"{settings.instance_id}-results",
            handler=self.tracker.on_results,
            shared=settings.mqtt_version == "5.0",
        )
        self._drivers: dict[str, tuple[RolloutDriver, asyncio.Task[None]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        """Subscribe to results, then start scheduling rollouts and reading key events."""
        await self.results.start()
        self._tasks = [
            asyncio.create_task(self._schedule(), name="engine-schedule"),
            asyncio.create_task(self._consume_download_events(), name="engine-download-events"),
        ]
        log.info("engine started", instance_id=self.context.settings.instance_id)

    async def stop(self) -> None:
        """Stop taking work, let drivers finish their step and hand back their leases."""
        self._stopping.set()
        for driver, _ in self._drivers.values():
            driver.stop()
        tasks = [task for _, task in self._drivers.values()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=STOP_GRACE_S)
            for task in pending:
                task.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Without unsubscribing: results published while we are down wait in our session.
        await self.results.stop()
        log.info("engine stopped", rollouts_handed_back=len(tasks))

    @property
    def driving(self) -> list[str]:
        """Ids of the rollouts this replica drives now."""
        return sorted(self._drivers)

    async def _schedule(self) -> None:
        rollouts = self.context.stores.rollouts
        # A new rollout is announced on a channel, so it starts at once; the poll finds the
        # rest (a takeover, an announcement missed while Redis was away).
        created = self.context.stores.redis.pubsub(ignore_subscribe_messages=True)
        try:
            while not self._stopping.is_set():
                try:
                    if not created.subscribed:
                        await created.subscribe(self.context.stores.keys.rollouts_channel())
                    for rollout_id in await rollouts.active_ids():
                        if rollout_id in self._drivers or self._stopping.is_set():
                            continue
                        driver = RolloutDriver(rollout_id, self.context)
                        task = asyncio.create_task(driver.run(), name=f"rollout-{rollout_id}")
                        self._drivers[rollout_id] = (driver, task)
                        task.add_done_callback(functools.partial(self._forget, rollout_id))
                    await created.get_message(timeout=SCHEDULE_EVERY_S)
                except (OrchestratorError, RedisError) as exc:
                    log.warning("cannot list active rollouts", error=str(exc))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), SCHEDULE_EVERY_S)
        finally:
            with contextlib.suppress(RedisError):
                await created.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped

    def _forget(self, rollout_id: str, _: asyncio.Task[None]) -> None:
        self._drivers.pop(rollout_id, None)

    async def _consume_download_events(self) -> None:
        """Read key claims and deliveries with a consumer group: each is handled once."""
        stores = self.context.stores
        stream = stores.keys.download_events()
        consumer = self.context.settings.instance_id
        redis = stores.redis
        with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists already
            await redis.xgroup_create(stream, EVENTS_GROUP, id="$", mkstream=True)
        # First our own entries left unacknowledged by a crash mid-handling (read from an id,
        # moving past each one so a failing entry cannot loop), then new ones (">").
        position: str | None = "0"
        last_claim = 0.0
        while not self._stopping.is_set():
            try:
                reply: Any = await redis.xreadgroup(
                    EVENTS_GROUP,
                    consumer,
                    {stream: position or ">"},
                    count=500,
                    block=None if position else EVENTS_BLOCK_MS,
                )
                # RESP2 reply: [[stream, [(entry id, {field: value}), ...]]]
                entries: list[tuple[str, dict[str, str]]] = reply[0][1] if reply else []
                if position and not entries:
                    position = None
                    continue
                now = asyncio.get_running_loop().time()
                if not position and now - last_claim >= RECLAIM_EVERY_S:
                    # Entries read but never acknowledged, by us (a failed handling) or by a
                    # replica that died: take them over once they have been idle long enough.
                    last_claim = now
                    claimed: Any = await redis.xautoclaim(
                        stream, EVENTS_GROUP, consumer, min_idle_time=RECLAIM_IDLE_MS, count=500
                    )
                    entries = [*entries, *claimed[1]]
                for entry_id, raw in entries:
                    if position:
                        position = str(entry_id)
                    try:
                        await self.tracker.on_download_event(fields(raw))
                    except OrchestratorError as exc:
                        log.warning("download event not handled", error=exc.message)
                        continue
                    await redis.xack(stream, EVENTS_GROUP, entry_id)
            except (RedisError, OrchestratorError) as exc:
                log.warning("download events unavailable; retrying", error=str(exc))
                await asyncio.sleep(1)
