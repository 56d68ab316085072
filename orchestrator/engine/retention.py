"""Retention: finished rollouts are deleted once OTA_ROLLOUT_RETENTION has passed.

Every engine replica sweeps, once a minute, a bounded number of device records per pass (sooner
again while there is more to delete). Two replicas sweeping at once, or a sweep cut short by a
crash, are both fine: each deletion step is one script and a rollout leaves the finished index
only with its last key (store/retention.py). At start the sweep first indexes rollouts that
finished before the index existed.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import structlog

from orchestrator.engine.context import EngineContext
from orchestrator.errors import OrchestratorError

log = structlog.get_logger(__name__)

SWEEP_EVERY_S = 60.0  # between passes that found nothing more to delete
BUSY_EVERY_S = 1.0  # between passes while rollouts past their retention remain
PASS_DEVICES = 20_000  # device records deleted per pass, about (500 per script call)
PASS_ROLLOUTS = 100  # rollouts past their retention looked at per pass


def retention_cutoff_ms(now_ms: int, retention_s: float | None) -> int | None:
    """Rollouts that finished at or before this (epoch ms) are deleted; None keeps them all."""
    if retention_s is None:
        return None
    return now_ms - int(retention_s * 1000)


@dataclass
class SweepReport:
    """What one pass did."""

    deleted: list[str] = field(default_factory=list)  # rollouts gone for good
    devices: int = 0  # device records deleted
    busy: bool = False  # stopped at its bound with more to delete


class RetentionSweeper:
    """Deletes the rollouts past their retention, a bounded amount at a time."""

    def __init__(self, context: EngineContext) -> None:
        self._context = context

    async def sweep_forever(self, stopping: asyncio.Event) -> None:
        """Index what finished before the index existed, then sweep until `stopping` is set."""
        backfilled = False
        while not stopping.is_set():
            report = SweepReport()
            try:
                if not backfilled:
                    await self.backfill()
                    backfilled = True
                report = await self.sweep()
            except OrchestratorError as exc:
                log.warning("retention sweep unavailable; retrying", error=exc.message)
            with contextlib.suppress(TimeoutError):
                wait_s = BUSY_EVERY_S if report.busy else SWEEP_EVERY_S
                await asyncio.wait_for(stopping.wait(), wait_s)

    async def backfill(self) -> int:
        """Put terminal rollouts missing from the finished index in it; how many."""
        added = await self._context.stores.retention.backfill(self._context.clock_ms())
        if added:
            log.info("finished rollouts indexed for retention", rollouts=added)
        return added

    async def sweep(self, *, max_devices: int = PASS_DEVICES) -> SweepReport:
        """One pass: delete rollouts past their retention, about `max_devices` records at most."""
        report = SweepReport()
        cutoff_ms = retention_cutoff_ms(
            self._context.clock_ms(), self._context.settings.rollout_retention_s
        )
        if cutoff_ms is None:
            return report
        store = self._context.stores.retention
        for rollout_id in await store.finished_before(cutoff_ms, PASS_ROLLOUTS):
            purged = await store.purge(rollout_id, max_devices=max_devices - report.devices)
            report.devices += purged.devices
            if purged.outcome == "deleted":
                report.deleted.append(rollout_id)
                log.info("rollout deleted after its retention", rollout_id=rollout_id)
            if not purged.done or report.devices >= max_devices:
                report.busy = True
                break
        return report
