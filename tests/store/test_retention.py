"""Retention in the store, on real Redis: the finished index written with the terminal state,
the chunked deletion of every key of a rollout, two deleters at once, a deletion cut short and
finished later, the backfill of rollouts that finished before the index, and late results."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from orchestrator.domain.states import DeviceEvent, RolloutAction, RolloutState
from orchestrator.store import Stores
from orchestrator.store.rollout_devices import Grant
from orchestrator.timeutil import epoch_ms
from tests.store.test_rollouts import RULES, Reported, move, start

PROJECT = "proj-retention"
FINISHED_AT = "2030-01-02T03:04:05Z"
FINISHED_MS = 1_893_553_445_000  # FINISHED_AT in epoch ms
PLAN = {
    "name": "fw-2.1.0",
    "firmware": {"file": "fw_2.1.0.bin", "version": "2.1.0"},
    "waves": [{"percent": 100}],
}
GRANT = Grant(project_id=PROJECT, file_name="fw_2.1.0.bin", size=4096, key_ttl_s=600)


async def keys_of(stores: Stores, rollout_id: str) -> set[str]:
    """Every key under the test's prefix whose name holds the rollout id (SCAN)."""
    pattern = f"{stores.keys.prefix}*{rollout_id}*"
    return {str(key) async for key in stores.redis.scan_iter(match=pattern, count=1000)}


async def dump(stores: Stores, rollout_id: str) -> dict[str, bytes | None]:
    """Each key of the rollout with its serialised value: equal dumps mean nothing changed."""
    return {key: await stores.redis.dump(key) for key in sorted(await keys_of(stores, rollout_id))}


async def running_rollout(
    stores: Stores, n: int, *, project_id: str = PROJECT, name: str | None = None
) -> tuple[str, list[str]]:
    """A running rollout of `n` devices, every one sent, with every kind of key it can have:
    succeeded, failed and retried (retry list), in-flight (deadlines) and unpublished devices,
    audit events and a lease."""
    devices = [f"dev-{uuid.uuid4().hex[:8]}-{i:05d}" for i in range(n)]
    rollout_id, _ = await stores.rollouts.create(
        project_id=project_id,
        name=name or f"ro-{uuid.uuid4().hex[:8]}",
        plan=PLAN,
        device_ids=devices,
        reach=[n],
        created_at="2030-01-01T00:00:00Z",
        created_by="alice",
    )
    await start(stores, rollout_id)
    sent = await stores.rollout_devices.dispatch(
        rollout_id, count=n, reach=n, ack_deadline_ms=4_000_000_000_000, grant=GRANT
    )
    await stores.rollout_devices.mark_published(rollout_id, *[item.device_id for item in sent[2:]])
    await stores.rollout_devices.transition(
        rollout_id, sent[0].device_id, DeviceEvent.SUCCESS, drop_deadline=True
    )
    await stores.rollout_devices.transition(
        rollout_id, sent[1].device_id, DeviceEvent.FAILED, retries=1
    )
    await stores.audit.add(rollout_id, {"at": FINISHED_AT, "action": "wave_done"})
    assert await stores.leases.acquire(rollout_id, "engine-a", 60_000)
    return rollout_id, devices


async def finished_rollout(
    stores: Stores,
    n: int = 5,
    *,
    at: str = FINISHED_AT,
    to: RolloutState = RolloutState.ABORTED,
    left_active: bool = False,
    project_id: str = PROJECT,
) -> tuple[str, list[str]]:
    """A rollout moved to the terminal `to` at `at`, which also ends it (devices freed, out of
    the active set); `left_active`: still active, as an older version left a finished rollout
    for the engine to clean up."""
    rollout_id, devices = await running_rollout(stores, n, project_id=project_id)
    assert await stores.rollouts.change_state(
        rollout_id,
        allowed_from=[RolloutState.RUNNING],
        to=to,
        reason="done",
        actor="engine",
        action=RolloutAction.COMPLETE if to is RolloutState.COMPLETED else RolloutAction.ABORT,
        at=at,
    ) == ("running", True)
    if left_active:
        await stores.redis.sadd(stores.keys.active_rollouts(), rollout_id)
    return rollout_id, devices


async def assert_gone(stores: Stores, rollout_id: str, devices: list[str]) -> None:
    """No key names the rollout; it is unlisted, unreadable, out of the index, devices free."""
    assert await keys_of(stores, rollout_id) == set()
    assert await stores.rollouts.get(rollout_id) is None
    assert rollout_id not in await stores.rollouts.ids(PROJECT)
    assert await stores.retention.finished_at(rollout_id) is None
    assert await stores.rollout_devices.device_rollouts(devices) == [None] * len(devices)


# --- the finished index ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "to",
    [
        RolloutState.COMPLETED,
        RolloutState.ABORTED,
    ],
)
async def test_a_terminal_change_indexes_the_rollout_at_its_terminal_time(
    clean: Stores, to: RolloutState
) -> None:
    rollout_id, _ = await finished_rollout(clean, to=to)
    assert await clean.retention.finished_at(rollout_id) == FINISHED_MS
    assert epoch_ms(FINISHED_AT) == FINISHED_MS


@pytest.mark.parametrize(
    "path",
    [
        [RolloutState.ROLLING_BACK, RolloutState.ROLLED_BACK],
        [RolloutState.ROLLING_BACK, RolloutState.ROLLBACK_FAILED],
    ],
)
async def test_a_rollback_end_indexes_the_rollout_and_the_states_before_it_do_not(
    clean: Stores, path: list[RolloutState]
) -> None:
    rollout_id, _ = await running_rollout(clean, 3)
    await move(clean, rollout_id, RolloutState.RUNNING, RolloutState.PAUSED)
    await move(clean, rollout_id, RolloutState.PAUSED, RolloutState.RUNNING)
    await move(clean, rollout_id, RolloutState.RUNNING, path[0])
    assert await clean.retention.finished_at(rollout_id) is None
    await move(clean, rollout_id, path[0], path[1])
    assert await clean.retention.finished_at(rollout_id) == epoch_ms("2030-01-02T03:04:05Z")


# --- purge --------------------------------------------------------------------------------


async def test_purge_deletes_every_key_of_the_rollout_in_chunks(clean: Stores) -> None:
    rollout_id, devices = await finished_rollout(clean, 1_234)
    # What a rollout ended by an older version kept (today the terminal step deletes them).
    await clean.redis.zadd(clean.keys.rollout_deadlines(rollout_id), {devices[5]: 1})
    await clean.redis.rpush(clean.keys.rollout_retry(rollout_id), devices[6])
    await clean.redis.sadd(clean.keys.rollout_unpublished(rollout_id), devices[7])
    kinds = {key.rsplit(":", 1)[-1] for key in await keys_of(clean, rollout_id)}
    assert {"order", "counts", "events", "deadlines", "retry", "unpublished", "lease"} <= kinds
    other, _ = await finished_rollout(clean, 3)
    before = await dump(clean, other)

    purged = await clean.retention.purge(rollout_id, max_devices=10_000, chunk=100)

    assert (purged.outcome, purged.devices) == ("deleted", 1_234)
    await assert_gone(clean, rollout_id, devices)
    assert await dump(clean, other) == before


async def test_purge_frees_a_device_lock_the_rollout_still_holds(clean: Stores) -> None:
    rollout_id, devices = await finished_rollout(clean, 3)
    for device_id in devices:  # as if the release had been lost
        await clean.redis.set(clean.keys.device_rollout(device_id), rollout_id)
    assert await clean.rollout_devices.device_rollouts(devices) == [rollout_id] * 3
    assert (await clean.retention.purge(rollout_id, max_devices=100)).outcome == "deleted"
    await assert_gone(clean, rollout_id, devices)


async def test_purge_leaves_a_terminal_rollout_the_engine_has_not_finished_untouched(
    clean: Stores,
) -> None:
    rollout_id, _ = await finished_rollout(clean, 4, left_active=True)
    before = await dump(clean, rollout_id)
    assert (await clean.retention.purge(rollout_id, max_devices=100)).outcome == "active"
    assert await dump(clean, rollout_id) == before
    assert await clean.retention.finished_at(rollout_id) == FINISHED_MS  # deleted later


async def test_purge_of_a_rollout_that_is_not_terminal_only_takes_it_out_of_the_index(
    clean: Stores,
) -> None:
    rollout_id, _ = await running_rollout(clean, 4)
    await clean.rollouts.deactivate(rollout_id)  # even off the active list
    await clean.redis.zadd(clean.keys.finished_rollouts(), {rollout_id: 1})
    before = await dump(clean, rollout_id)
    assert (await clean.retention.purge(rollout_id, max_devices=100)).outcome == "not_finished"
    assert await dump(clean, rollout_id) == before
    assert await clean.retention.finished_at(rollout_id) is None


async def test_a_purge_cut_short_is_unlisted_and_finished_by_the_next_one(clean: Stores) -> None:
    rollout_id, devices = await finished_rollout(clean, 1_050)

    first = await clean.retention.purge(rollout_id, max_devices=400, chunk=200)

    assert (first.outcome, first.devices) == ("more", 400)
    assert rollout_id not in await clean.rollouts.ids(PROJECT)
    assert await clean.retention.finished_at(rollout_id) == FINISHED_MS  # the work still to do
    left = await clean.redis.llen(clean.keys.rollout_order(rollout_id))
    assert left == 650
    records = await clean.rollout_devices.device_states(rollout_id, devices)
    assert sum(1 for record in records if record) == 650  # those not yet deleted are intact

    second = await clean.retention.purge(rollout_id, max_devices=10_000, chunk=200)

    assert (second.outcome, second.devices) == ("deleted", 650)
    await assert_gone(clean, rollout_id, devices)


async def test_two_replicas_purging_the_same_rollouts_at_once_delete_each_record_once(
    clean: Stores, replica: Stores
) -> None:
    made = [await finished_rollout(clean, 700) for _ in range(3)]
    kept, _ = await finished_rollout(clean, 5, left_active=True)
    before = await dump(clean, kept)

    outcomes = await asyncio.gather(
        *(
            stores.retention.purge(rollout_id, max_devices=10_000, chunk=50)
            for rollout_id, _ in made
            for stores in (clean, replica)
        )
    )

    assert {purged.outcome for purged in outcomes} == {"deleted"}
    assert sum(purged.devices for purged in outcomes) == 3 * 700
    for rollout_id, devices in made:
        await assert_gone(clean, rollout_id, devices)
    assert await dump(clean, kept) == before


async def test_a_late_result_after_the_deletion_brings_no_key_back(clean: Stores) -> None:
    rollout_id, devices = await running_rollout(clean, 3)
    commands = {
        device_id: (await clean.rollout_devices.device(rollout_id, device_id))["command_id"]
        for device_id in devices
    }
    await move(clean, rollout_id, RolloutState.RUNNING, RolloutState.ABORTED)
    assert (await clean.retention.purge(rollout_id, max_devices=100)).outcome == "deleted"

    # The tracker still has the rollout's rules; the command records live 24 h.
    applied = await clean.rollout_devices.apply_results(
        [Reported(commands[device_id], device_id) for device_id in devices], {rollout_id: RULES}
    )

    assert [outcome.outcome for outcome in applied.outcomes] == ["missing"] * 3
    await assert_gone(clean, rollout_id, devices)


# --- backfill -----------------------------------------------------------------------------


async def test_backfill_indexes_terminal_rollouts_missing_from_the_index_and_nothing_else(
    clean: Stores,
) -> None:
    await clean.projects.create("unused")  # a project without rollouts
    project = (await clean.projects.create("retention")).id
    old, _ = await finished_rollout(clean, 2, project_id=project)
    unfinished, _ = await finished_rollout(clean, 2, project_id=project, left_active=True)
    running, _ = await running_rollout(clean, 2, project_id=project)
    indexed, _ = await finished_rollout(clean, 2, project_id=project)
    # As the index was before this version: nothing in it, but for one rollout.
    await clean.redis.zrem(clean.keys.finished_rollouts(), old, unfinished)
    await clean.redis.zadd(clean.keys.finished_rollouts(), {indexed: 7}, xx=True)
    await clean.redis.hset(clean.keys.rollout(unfinished), "updated_at", "not a time")

    assert await clean.retention.backfill(now_ms=42) == 2
    assert await clean.retention.backfill(now_ms=43) == 0  # again: nothing new

    assert await clean.retention.finished_at(old) == FINISHED_MS
    assert await clean.retention.finished_at(unfinished) == 42
    assert await clean.retention.finished_at(indexed) == 7  # an entry is never moved
    assert await clean.retention.finished_at(running) is None
