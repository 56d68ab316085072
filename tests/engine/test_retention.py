"""The engine's retention sweep on real Redis, with a short retention and an injected clock:
what a pass deletes and keeps, its bound, two engines at once, a pass cut short, the start-up
backfill, and what the API answers about a deleted rollout; what a pass compacts and leaves,
and the device listing of a rollout before and after its compaction."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from orchestrator.domain.states import DeviceState
from orchestrator.engine.context import EngineContext
from orchestrator.engine.retention import (
    ARCHIVE_AFTER_S,
    RetentionSweeper,
    SweepReport,
    retention_cutoff_ms,
)
from orchestrator.metrics import Metrics
from orchestrator.settings import Settings
from orchestrator.store import Stores
from orchestrator.store.redis import connect
from orchestrator.store.retention import PURGE_CHUNK
from orchestrator.store.rollout_archive import ARCHIVE_CHUNK, LEFT_OUT
from orchestrator.transport.mqtt import CommandTransport
from tests.conftest import Service, wait_for
from tests.store.test_retention import (
    FINISHED_MS,
    assert_gone,
    dump,
    finished_rollout,
    running_rollout,
)
from tests.store.test_rollout_archive import varied_rollout

RETENTION_S = 3600
HOUR_MS = 3_600_000
PAST_RETENTION_MS = FINISHED_MS + RETENTION_S * 1000 + 1  # just past FINISHED_AT's retention

SweeperOf = Callable[..., RetentionSweeper]


@pytest.fixture
def clock() -> list[int]:
    """The engines' clock (epoch ms): set clock[0] to move it."""
    return [PAST_RETENTION_MS]


@pytest.fixture
def sweeper_of(settings: Settings, clock: list[int]) -> SweeperOf:
    """A sweeper over the given stores, with a 1 h retention (or `retention_s`) and the clock."""

    def build(stores: Stores, retention_s: float | None = RETENTION_S) -> RetentionSweeper:
        context = EngineContext(
            settings.model_copy(update={"rollout_retention_s": retention_s}),
            stores,
            CommandTransport(settings.mqtt_url),  # never started: the sweep sends nothing
            Metrics(CollectorRegistry()),
            clock_ms=lambda: clock[0],
        )
        return RetentionSweeper(context)

    return build


async def sweep_until_idle(sweeper: RetentionSweeper, **bounds: int) -> list[SweepReport]:
    """Passes with these bounds until one is not busy (10 at most)."""
    reports: list[SweepReport] = []
    while not reports or reports[-1].busy:
        assert len(reports) < 10
        reports.append(await sweeper.sweep(**bounds))
    return reports


def test_the_cutoff_is_the_retention_before_now_and_none_keeps_everything() -> None:
    assert retention_cutoff_ms(10_000_000, 3600) == 10_000_000 - 3_600_000
    assert retention_cutoff_ms(10_000_000, 0.5) == 10_000_000 - 500
    assert retention_cutoff_ms(10_000_000, None) is None


async def test_a_pass_deletes_what_is_past_retention_and_keeps_newer_and_unfinished_rollouts(
    clean: Stores, sweeper_of: SweeperOf, clock: list[int]
) -> None:
    old, old_devices = await finished_rollout(clean, 30)
    newer, newer_devices = await finished_rollout(clean, 30, at="2030-01-02T05:04:05Z")  # +2 h
    running, _ = await running_rollout(clean, 30)
    unfinished, unfinished_devices = await finished_rollout(clean, 30, left_active=True)
    kept = {rid: await dump(clean, rid) for rid in (newer, running, unfinished)}
    sweeper = sweeper_of(clean)

    report = await sweeper.sweep()

    assert (report.deleted, report.devices, report.busy) == ([old], 30, False)
    await assert_gone(clean, old, old_devices)
    assert {rid: await dump(clean, rid) for rid in kept} == kept
    assert await clean.rollouts.get(newer) is not None

    clock[0] += 2 * HOUR_MS  # the newer one is past its retention too
    assert (await sweeper.sweep()).deleted == [newer]
    await assert_gone(clean, newer, newer_devices)
    assert (
        await dump(clean, unfinished) == kept[unfinished]
    )  # an older version ended it: the engine still cleans up

    await clean.rollout_devices.release_devices(unfinished)
    await clean.rollouts.deactivate(unfinished)
    assert (await sweeper.sweep()).deleted == [unfinished]
    await assert_gone(clean, unfinished, unfinished_devices)
    assert await dump(clean, running) == kept[running]


async def test_with_retention_forever_a_pass_deletes_nothing(
    clean: Stores, sweeper_of: SweeperOf, clock: list[int]
) -> None:
    rollout_id, _ = await finished_rollout(clean, 5)
    before = await dump(clean, rollout_id)
    clock[0] += 10_000 * 24 * HOUR_MS
    report = await sweeper_of(clean, retention_s=None).sweep()
    assert (report.deleted, report.devices) == ([], 0)
    assert await dump(clean, rollout_id) == before


async def test_a_pass_stops_near_its_bound_and_the_next_passes_finish_the_work(
    clean: Stores, sweeper_of: SweeperOf
) -> None:
    made = [await finished_rollout(clean, 700) for _ in range(3)]
    reports = await sweep_until_idle(sweeper_of(clean), max_devices=1000)

    assert reports[0].busy
    assert all(report.devices <= 1000 + PURGE_CHUNK for report in reports)
    assert sum(report.devices for report in reports) == 3 * 700
    assert sorted(rid for report in reports for rid in report.deleted) == sorted(
        rid for rid, _ in made
    )
    for rollout_id, devices in made:
        await assert_gone(clean, rollout_id, devices)


async def test_two_engines_sweeping_at_once_delete_everything_once_and_keep_the_rest(
    clean: Stores, sweeper_of: SweeperOf, settings: Settings
) -> None:
    made = [await finished_rollout(clean, 600) for _ in range(4)]
    running, _ = await running_rollout(clean, 20)
    before = await dump(clean, running)
    other_redis = connect(settings.redis_url)
    try:
        other = sweeper_of(Stores.build(other_redis, clean.keys.prefix))
        reports = await asyncio.gather(sweeper_of(clean).sweep(), other.sweep())
    finally:
        await other_redis.aclose()

    assert sum(report.devices for report in reports) == 4 * 600
    assert {rid for report in reports for rid in report.deleted} == {rid for rid, _ in made}
    for rollout_id, devices in made:
        await assert_gone(clean, rollout_id, devices)
    assert await dump(clean, running) == before


async def test_a_pass_finishes_a_deletion_that_a_crash_cut_short(
    clean: Stores, sweeper_of: SweeperOf
) -> None:
    rollout_id, devices = await finished_rollout(clean, 1_200)
    # The engine died after the first chunks of its pass.
    cut = await clean.retention.purge(rollout_id, max_devices=500, chunk=250)
    assert (cut.outcome, cut.devices) == ("more", 500)

    report = await sweeper_of(clean).sweep()  # the restarted engine's first pass

    assert (report.deleted, report.devices) == ([rollout_id], 700)
    await assert_gone(clean, rollout_id, devices)


async def test_the_sweep_loop_first_indexes_rollouts_finished_before_the_index_then_deletes_them(
    clean: Stores, sweeper_of: SweeperOf
) -> None:
    project = (await clean.projects.create("retention")).id
    rollout_id, devices = await finished_rollout(clean, 10, project_id=project)
    await clean.redis.zrem(clean.keys.finished_rollouts(), rollout_id)  # as before this version
    stopping = asyncio.Event()
    task = asyncio.create_task(sweeper_of(clean).sweep_forever(stopping))

    async def gone() -> bool:
        return await clean.rollouts.get(rollout_id) is None

    try:
        await wait_for(gone)
    finally:
        stopping.set()
        await asyncio.wait_for(task, 10)
    assert await clean.redis.keys(f"{clean.keys.prefix}*{rollout_id}*") == []
    assert await clean.rollout_devices.device_rollouts(devices) == [None] * len(devices)


async def test_a_deleted_rollout_is_404_and_no_longer_listed(
    service: Service, sweeper_of: SweeperOf
) -> None:
    stores = service.stores
    rollout_id, _ = await finished_rollout(stores, 3, project_id=service.project_id)
    base = f"/v2/projects/{service.project_id}/rollouts"

    async def listed() -> list[str]:
        response = await service.client.get(base)
        assert response.status_code == 200
        return [rollout["id"] for rollout in response.json()["data"]]

    assert (await service.client.get(f"{base}/{rollout_id}")).status_code == 200
    assert await listed() == [rollout_id]

    assert (await sweeper_of(stores).sweep()).deleted == [rollout_id]

    for path in ("", "/events", "/devices"):
        response = await service.client.get(f"{base}/{rollout_id}{path}")
        assert response.status_code == 404, path
        assert response.json()["success"] is False
    assert await listed() == []


# --- compaction -----------------------------------------------------------------------------

SETTLED_MS = FINISHED_MS + int(ARCHIVE_AFTER_S * 1000)  # FINISHED_AT's rollouts have settled


async def test_a_pass_compacts_settled_finished_rollouts_and_leaves_the_rest(
    clean: Stores, sweeper_of: SweeperOf, clock: list[int]
) -> None:
    clock[0] = SETTLED_MS
    settled, _ = await varied_rollout(clean, 200)
    before = await clean.archive.rows(settled, 0, 200)
    fresh, _ = await varied_rollout(clean, 20)
    await clean.redis.zadd(clean.keys.finished_rollouts(), {fresh: FINISHED_MS + 1}, xx=True)
    leased, _ = await finished_rollout(clean, 20)  # an engine's last step may still write
    running, _ = await running_rollout(clean, 20)
    kept = {rid: await dump(clean, rid) for rid in (fresh, leased, running)}

    report = await sweeper_of(clean).sweep()

    assert (report.compacted, report.packed, report.deleted, report.busy) == (
        [settled],
        200,
        [],
        False,
    )
    assert await clean.redis.exists(clean.keys.rollout_order(settled)) == 0
    assert [
        (at, device_id, {k: v for k, v in row.items() if k not in LEFT_OUT})
        for at, device_id, row in before
    ] == await clean.archive.rows(settled, 0, 200)
    assert {rid: await dump(clean, rid) for rid in kept} == kept

    clock[0] += 1  # the fresh one has settled too; nothing is done twice
    report = await sweeper_of(clean).sweep()
    assert (report.compacted, report.packed) == ([fresh], 20)


async def test_compaction_passes_stop_near_their_bound_and_the_next_ones_finish(
    clean: Stores, sweeper_of: SweeperOf, clock: list[int]
) -> None:
    clock[0] = SETTLED_MS
    made = [(await varied_rollout(clean, 300))[0] for _ in range(3)]
    reports = await sweep_until_idle(sweeper_of(clean), max_packed=400)

    assert reports[0].busy
    assert all(report.packed <= 400 + ARCHIVE_CHUNK for report in reports)
    assert sum(report.packed for report in reports) == 3 * 300
    assert sorted(rid for report in reports for rid in report.compacted) == sorted(made)


async def test_a_rollout_past_its_retention_is_deleted_not_compacted_and_so_is_a_compacted_one(
    clean: Stores, sweeper_of: SweeperOf, clock: list[int]
) -> None:
    clock[0] = SETTLED_MS
    compacted, compacted_devices = await varied_rollout(clean, 50)
    assert (await sweeper_of(clean).sweep()).compacted == [compacted]
    old, old_devices = await varied_rollout(clean, 50)

    clock[0] = PAST_RETENTION_MS
    report = await sweeper_of(clean).sweep()

    assert (sorted(report.deleted), report.compacted, report.packed) == (
        sorted([compacted, old]),
        [],
        0,
    )
    await assert_gone(clean, compacted, compacted_devices)
    await assert_gone(clean, old, old_devices)
    assert await clean.redis.zcard(clean.keys.archived_rollouts()) == 0


async def test_a_finished_rollouts_device_listing_is_the_same_after_its_compaction(
    service: Service, sweeper_of: SweeperOf, clock: list[int]
) -> None:
    stores = service.stores
    rollout_id, _ = await varied_rollout(stores, 120, project_id=service.project_id)
    url = f"/v2/projects/{service.project_id}/rollouts/{rollout_id}"

    async def listing(**params: str | int) -> list[dict[str, Any]]:
        pages = []
        cursor = None
        while True:
            query = {**params, **({"cursor": cursor} if cursor else {})}
            response = await service.client.get(f"{url}/devices", params=query)
            assert response.status_code == 200, response.text
            pages.append(response.json())
            cursor = response.json()["next_cursor"]
            if cursor is None:
                return pages

    queries: list[dict[str, str | int]] = [
        {"limit": 7},
        {"limit": 1000},
        *({"state": state.value, "limit": 5} for state in DeviceState),
    ]
    before = [await listing(**query) for query in queries]
    assert sum(len(page["data"]) for page in before[1]) == 120
    view = (await service.client.get(url)).json()
    cursor = before[0][3]["next_cursor"]  # given before the compaction

    clock[0] = SETTLED_MS
    assert (await sweeper_of(stores).sweep()).compacted == [rollout_id]

    assert await stores.redis.exists(stores.keys.rollout_order(rollout_id)) == 0
    assert [await listing(**query) for query in queries] == before
    assert (await service.client.get(url)).json() == view
    page = await service.client.get(f"{url}/devices", params={"limit": 7, "cursor": cursor})
    assert page.json() == before[0][4]
