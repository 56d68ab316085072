"""Retention: finished rollouts are compacted, then deleted once OTA_ROLLOUT_RETENTION has passed.

Every engine replica sweeps, once a minute, a bounded number of device records per pass (sooner
again while there is more to do). A pass first deletes the rollouts past their retention, then
compacts the finished rollouts that have settled (ARCHIVE_AFTER_S after their end, no engine
holding them): their per-device hashes and order list become one packed hash, a few times
smaller (store/rollout_archive.py). Two replicas sweeping at once, or a sweep cut short by a
crash, are both fine: each deletion or compaction step is one script, a rollout leaves the
finished index only with its last key, and a compaction resumes where it stopped. At start the
sweep first indexes rollouts that finished before the index existed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from orchestrator.engine.context import EngineContext
from orchestrator.errors import OrchestratorError

log = structlog.get_logger(__name__)

SWEEP_EVERY_S = 60.0  # between passes that found nothing more to delete
BUSY_EVERY_S = 1.0  # between passes while rollouts past their retention remain
PASS_DEVICES = 20_000  # device records deleted per pass, about (500 per script call)
PASS_ROLLOUTS = 100  # rollouts past their retention (or to compact) looked at per pass
PASS_COMPACTED = 10_000  # device records packed per pass, about (128 per script call)
# A finished rollout is compacted this long after its end: by then no step of an engine that was
# driving it when it ended can still write to its devices (its lease is checked as well).
ARCHIVE_AFTER_S = 60.0


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
    compacted: list[str] = field(default_factory=list)  # rollouts whose records are all packed
    packed: int = 0  # device records packed
    busy: bool = False  # stopped at its bound with more to do


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

    async def sweep(
        self, *, max_devices: int = PASS_DEVICES, max_packed: int = PASS_COMPACTED
    ) -> SweepReport:
        """One pass: delete rollouts past their retention (about `max_devices` records at most),
        then compact settled finished rollouts (about `max_packed` records at most)."""
        report = SweepReport()
        now_ms = self._context.clock_ms()
        cutoff_ms = retention_cutoff_ms(now_ms, self._context.settings.rollout_retention_s)
        if cutoff_ms is not None:
            await self._delete(report, cutoff_ms, max_devices)
        if not report.busy:
            await self._compact(report, now_ms, cutoff_ms, max_packed)
        return report

    async def _delete(self, report: SweepReport, cutoff_ms: int, max_devices: int) -> None:
        store = self._context.stores.retention
        report.deleted, report.devices, report.busy = await _bounded(
            await store.finished_before(cutoff_ms, PASS_ROLLOUTS),
            lambda rollout_id, budget: store.purge(rollout_id, max_devices=budget),
            max_devices,
            ("deleted", "rollout deleted after its retention"),
        )

    async def _compact(
        self, report: SweepReport, now_ms: int, cutoff_ms: int | None, max_packed: int
    ) -> None:
        archive = self._context.stores.archive
        # Those past their retention are left to the deletion: no use packing them first.
        due = await archive.due(
            after_ms=cutoff_ms,
            settled_ms=now_ms - int(ARCHIVE_AFTER_S * 1000),
            limit=PASS_ROLLOUTS,
        )
        report.compacted, report.packed, report.busy = await _bounded(
            due,
            lambda rollout_id, budget: archive.compact(
                rollout_id, max_devices=budget, at_ms=now_ms
            ),
            max_packed,
            ("done", "finished rollout compacted"),
        )


class _Progress(Protocol):
    """What a chunked step on one rollout did: a Purged (store/retention.py) or a Compacted
    (store/rollout_archive.py)."""

    @property
    def outcome(self) -> str: ...

    @property
    def devices(self) -> int: ...

    @property
    def done(self) -> bool: ...


async def _bounded(
    rollout_ids: list[str],
    step: Callable[[str, int], Awaitable[_Progress]],
    max_devices: int,
    finished: tuple[str, str],
) -> tuple[list[str], int, bool]:
    """`step` each rollout with the device records left of `max_devices`, until one is left
    unfinished or the bound is reached. (The rollouts whose outcome is `finished[0]`, each
    logged with `finished[1]`; the device records; whether it stopped with work left.)"""
    ended: list[str] = []
    devices = 0
    for rollout_id in rollout_ids:
        progress = await step(rollout_id, max_devices - devices)
        devices += progress.devices
        if progress.outcome == finished[0]:
            ended.append(rollout_id)
            log.info(finished[1], rollout_id=rollout_id)
        if not progress.done or devices >= max_devices:
            return ended, devices, True
    return ended, devices, False
