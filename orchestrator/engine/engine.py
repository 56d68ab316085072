"""The engine: takes rollouts by lease, follows results, key use, hook deploys and notices."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Mapping

import structlog
from redis.exceptions import RedisError

from orchestrator.engine.context import EngineContext
from orchestrator.engine.deploys import DeployStarter
from orchestrator.engine.driver import RolloutDriver
from orchestrator.engine.notifier import Notifier
from orchestrator.engine.retention import RetentionSweeper
from orchestrator.engine.tracker import Tracker
from orchestrator.errors import OrchestratorError
from orchestrator.store.streams import EngineStream, Handler
from orchestrator.supervisor import spawn
from orchestrator.transport.results import ResultSubscriber, results_client_id

log = structlog.get_logger(__name__)

SCHEDULE_EVERY_S = 0.5  # how often the engine looks for rollouts it could drive
STOP_GRACE_S = 10.0


class Engine:
    """Every rollout driver of this replica, the result subscriber and the events consumer."""

    def __init__(self, context: EngineContext) -> None:
        self.context = context
        self.tracker = Tracker(context)
        self.deploys = DeployStarter(context)
        self.notifier = Notifier(context)
        self.retention = RetentionSweeper(context)
        settings = context.settings
        self.results = ResultSubscriber(
            settings.mqtt_url,
            version=settings.mqtt_version,
            client_id=results_client_id(settings.instance_id),
            handler=self.tracker.on_results,
            shared=settings.mqtt_version == "5.0",
        )
        self._drivers: dict[str, tuple[RolloutDriver, asyncio.Task[None]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        """Subscribe to results, then schedule rollouts and read the engine's streams."""
        await self.results.start()
        self._tasks = [
            spawn(self._schedule, name="engine-schedule"),
            # Key use from before any engine ran concerns no rollout it could still change.
            self._consume(
                EngineStream.DOWNLOAD_EVENTS,
                self._on_download_event,
                "download event",
                from_start=False,
            ),
            self._consume(EngineStream.DEPLOY_REQUESTS, self.deploys.on_request, "deploy request"),
            self._consume(EngineStream.ROLLOUT_NOTICES, self.notifier.on_entry, "rollout notice"),
            spawn(
                functools.partial(self.notifier.send_forever, self._stopping), name="notify-send"
            ),
            spawn(
                functools.partial(self.retention.sweep_forever, self._stopping), name="retention"
            ),
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
        created = rollouts.announcements()
        try:
            while not self._stopping.is_set():
                try:
                    # A command first (before wait subscribes): a cluster client learns its
                    # slots on the first one.
                    active = await rollouts.active_ids()
                    for rollout_id in active:
                        if rollout_id in self._drivers or self._stopping.is_set():
                            continue
                        driver = RolloutDriver(rollout_id, self.context)
                        # A driver's run() fails only when Redis does something unforeseen
                        # (a step's failures it handles itself): it starts again after a pause.
                        task = spawn(driver.run, name=f"rollout-{rollout_id}")
                        self._drivers[rollout_id] = (driver, task)
                        task.add_done_callback(functools.partial(self._forget, rollout_id))
                    await created.wait(SCHEDULE_EVERY_S)
                except (OrchestratorError, RedisError) as exc:
                    log.warning("cannot list active rollouts", error=str(exc))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), SCHEDULE_EVERY_S)
        finally:
            await created.close()

    def _forget(self, rollout_id: str, _: asyncio.Task[None]) -> None:
        self._drivers.pop(rollout_id, None)

    def _consume(
        self, stream: EngineStream, handler: Handler, what: str, *, from_start: bool = True
    ) -> asyncio.Task[None]:
        consumer = self.context.settings.instance_id
        return spawn(
            functools.partial(
                self.context.stores.streams.consume,
                stream,
                consumer,
                handler,
                self._stopping,
                what=what,
                from_start=from_start,
            ),
            name=f"engine-{stream}",
        )

    async def _on_download_event(self, entry_id: str, raw: Mapping[str, str]) -> None:
        await self.tracker.on_download_event(dict(raw))
