"""Deleting a project with everything in it (`DELETE /v2/projects/{pid}`).

The deletion begins with the project's deletion record, made in one script with the check that
the engine has no rollout of the project left to drive (store/projects.py); from then on
nothing new is made in the project. Then, batch by batch: devices (their broker accounts first,
as a device delete does, then the records, their tokens and download keys), files (blobs too),
hooks, notification subscriptions and finished rollouts (by the retention's purge), and the
project is taken out of the API keys limited to it. Last the project itself goes.

Every step is idempotent, so a deletion cut short (a crash, the broker away: 503) is finished by
repeating the DELETE, and two DELETEs at once do no harm.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog

from orchestrator.api.context import AppContext
from orchestrator.domain.devices import DeviceSource
from orchestrator.domain.files import FileType
from orchestrator.errors import Conflict, NotFound
from orchestrator.store.projects import ActiveRollout

log = structlog.get_logger(__name__)

DEVICE_BATCH = 100  # devices deleted per step (one broker message of 200 commands)
PARALLEL_DELETES = 8  # device records deleted at once; each takes a pooled connection
UNLIMITED = 2**62  # a rollout's device records are all purged in one step


@dataclass
class Removed:
    """How many of each kind one run of the deletion removed."""

    devices: int = 0
    files: int = 0
    hooks: int = 0
    notifications: int = 0
    rollouts: int = 0
    keys_revoked: int = 0
    keys_narrowed: int = 0


def active_conflict(project_id: str, active: tuple[ActiveRollout, ...]) -> Conflict:
    """409 naming the rollouts that keep the project from being deleted."""
    named = ", ".join(f"{r.id} ({r.name}, {r.state})" for r in active)
    return Conflict(
        f"project {project_id} has active rollout(s) {named}; abort them or wait until they "
        "finish and the engine lets them go, then delete the project"
    )


async def delete_project(context: AppContext, project_id: str, *, by: str) -> Removed:
    """Delete the project and everything in it; NotFound, or Conflict while rollouts run."""
    start = await context.stores.projects.begin_delete(project_id, by=by)
    if not start.found:
        raise NotFound(f"project {project_id} not found")
    if start.active:
        raise active_conflict(project_id, start.active)
    removed = Removed()
    await _devices(context, project_id, removed)
    await _files(context, project_id, removed)
    await _hooks_and_notifications(context, project_id, removed)
    await _rollouts(context, project_id, removed)
    removed.keys_revoked, removed.keys_narrowed = await context.stores.api_keys.unscope(project_id)
    await context.stores.projects.count_deleted(
        project_id, keys_revoked=removed.keys_revoked, keys_narrowed=removed.keys_narrowed
    )
    await context.stores.projects.finish_delete(project_id)
    log.info("project deleted", project_id=project_id, by=by, **vars(removed))
    return removed


async def _devices(context: AppContext, project_id: str, removed: Removed) -> None:
    stores = context.stores
    cursor: str | None = None
    while True:
        page = await stores.devices.page(project_id, cursor=cursor, limit=DEVICE_BATCH)
        mqtt = [d.id for d in page.devices if d.source is DeviceSource.MQTT]
        if context.provisioner is not None and mqtt:
            # First, so that a broker that cannot take it leaves these devices whole (503).
            await context.provisioner.deprovision(*mqtt)
        for start in range(0, len(page.devices), PARALLEL_DELETES):
            batch = page.devices[start : start + PARALLEL_DELETES]
            await asyncio.gather(*(stores.devices.delete(project_id, d.id) for d in batch))
        removed.devices += len(page.devices)
        await stores.projects.count_deleted(project_id, devices=len(page.devices))
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


async def _files(context: AppContext, project_id: str, removed: Removed) -> None:
    stores = context.stores
    for file_type in FileType:
        for stored in await stores.files.of_type([project_id], file_type):
            await stores.download_keys.revoke_for_file(project_id, stored.name)
            relative = await stores.files.delete(project_id, stored.name)
            if relative is not None:
                await context.blobs.remove(relative)
                removed.files += 1
                await stores.projects.count_deleted(project_id, files=1)
    await context.blobs.remove_project(project_id)  # partial uploads, blobs of nothing


async def _hooks_and_notifications(context: AppContext, project_id: str, removed: Removed) -> None:
    stores = context.stores
    for hook in await stores.hooks.of_project(project_id):
        await stores.hooks.delete(hook)
        removed.hooks += 1
    for subscription in await stores.notifications.of_project(project_id):
        await stores.notifications.delete(subscription)
        removed.notifications += 1
    await stores.projects.count_deleted(
        project_id, hooks=removed.hooks, notifications=removed.notifications
    )


async def _rollouts(context: AppContext, project_id: str, removed: Removed) -> None:
    stores = context.stores
    kept: list[str] = []
    for rollout_id in await stores.rollouts.ids(project_id):
        purged = await stores.retention.purge(rollout_id, max_devices=UNLIMITED)
        if purged.outcome == "deleted":
            removed.rollouts += 1
            await stores.projects.count_deleted(project_id, rollouts=1)
        else:  # not terminal yet out of the engine's hands: nothing drives it, look at it
            kept.append(f"{rollout_id} ({purged.outcome})")
    if kept:
        raise Conflict(
            f"project {project_id} keeps rollout(s) {', '.join(kept)} that are neither active "
            "nor finished; look at them (GET …/rollouts/{id}), then repeat the DELETE"
        )
