"""The compaction of finished rollouts on real Redis: every read of a rollout's devices the same
before, during and after it; a compaction cut short and resumed by another replica; rollouts it
must leave alone; any field value read back as written; late results; the retention purge of a
compacted rollout; and what a compacted rollout costs per device (MEMORY USAGE)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from bench.rollout_memory import bytes_per_device, finished_rollout, rollout_bytes
from orchestrator.domain.states import DeviceEvent, DeviceState, RolloutState
from orchestrator.store import Stores
from orchestrator.store.device_events import TransitionRequest
from orchestrator.store.rollout_archive import LEFT_OUT
from orchestrator.store.rollout_devices import Grant
from tests.store.test_retention import (
    FINISHED_AT,
    FINISHED_MS,
    assert_gone,
    dump,
    keys_of,
    running_rollout,
)
from tests.store.test_retention import finished_rollout as aborted_rollout
from tests.store.test_rollouts import RULES, Reported, move, start

PROJECT = "proj-retention"  # what tests.store.test_retention's rollouts belong to
GRANT = Grant(project_id=PROJECT, file_name="fw_2.1.0.bin", size=4096, key_ttl_s=600)
PLAN = {
    "name": "fw-2.1.0",
    "firmware": {"file": "fw_2.1.0.bin", "version": "2.1.0"},
    "waves": [{"percent": 25}, {"percent": 100}],
}
FAR_MS = 4_000_000_000_000
EVERYTHING = 10**9  # a bound no test reaches


async def abort(stores: Stores, rollout_id: str) -> tuple[str, bool]:
    """Abort a running rollout: it ends, and enters the finished index at FINISHED_MS (`move`
    changes states at FINISHED_AT)."""
    return await move(stores, rollout_id, RolloutState.RUNNING, RolloutState.ABORTED)


def mixed_ids(n: int) -> list[str]:
    """Device ids as the API makes them (UUIDs), and other shapes the store accepts."""
    run = uuid.uuid4().hex[:8]
    shapes = [
        lambda i: str(uuid.uuid4()),
        lambda i: f"dev-{run}-{i:04d}",
        lambda i: str(uuid.uuid4()).upper(),
        lambda i: f"{run}{i}",  # digits and letters
        lambda i: f"пристрій-{run}-{i}",  # not ASCII
    ]
    return [shapes[i % len(shapes)](i) for i in range(n)]


async def varied_rollout(
    stores: Stores, n: int = 300, *, project_id: str = PROJECT
) -> tuple[str, list[str]]:
    """An aborted rollout of `n` devices in every final state a device can end in: succeeded,
    failed (by type), rejected, timed out, rolled back, rollback failed, cancelled while sent or
    downloading, never sent; two waves; no engine holds it."""
    devices = mixed_ids(n)
    rollout_id, _ = await stores.rollouts.create(
        project_id=project_id,
        name=f"ro-{uuid.uuid4().hex[:8]}",
        plan=PLAN,
        device_ids=devices,
        reach=[n // 4, n],
        created_at="2030-01-01T00:00:00Z",
        created_by="alice",
    )
    await start(stores, rollout_id)
    sent = await stores.rollout_devices.dispatch(
        rollout_id, count=n - 10, reach=n, ack_deadline_ms=FAR_MS, grant=GRANT
    )
    steps: dict[int, list[tuple[DeviceEvent, dict[str, Any]]]] = {
        0: [(DeviceEvent.SUCCESS, {"extra": {"downloaded": 1}})],
        1: [(DeviceEvent.FAILED, {"failure_type": "failed"})],
        2: [(DeviceEvent.REJECTED, {"failure_type": "rejected"})],
        3: [(DeviceEvent.TIMED_OUT, {"failure_type": "timed_out"})],
        4: [(DeviceEvent.WRONG_VERSION, {"failure_type": "wrong_version"})],
        5: [(DeviceEvent.KEY_CLAIMED, {"extra": {"downloaded": 1}})],
        6: [],  # stays sent
        7: [
            (DeviceEvent.SUCCESS, {"extra": {"downloaded": 1}}),
            (DeviceEvent.ROLLBACK_SEND, {"extra": {"rollback_command_id": uuid.uuid4().hex}}),
            (DeviceEvent.ROLLBACK_SUCCESS, {}),
        ],
        8: [
            (DeviceEvent.FAILED, {"failure_type": "failed", "extra": {"downloaded": 1}}),
            (DeviceEvent.ROLLBACK_SEND, {"extra": {"rollback_command_id": uuid.uuid4().hex}}),
            (DeviceEvent.ROLLBACK_FAILURE, {}),
        ],
    }
    requests = [
        TransitionRequest(rollout_id, item.device_id, event, drop_deadline=True, **fields)
        for i, item in enumerate(sent)
        for event, fields in steps[i % len(steps)]
    ]
    assert all(t.applied for t in await stores.rollout_devices.transitions(requests))
    assert await abort(stores, rollout_id) == ("running", True)
    return rollout_id, devices


def kept(record: dict[str, str]) -> dict[str, str]:
    """A device record without the fields a packed record leaves out."""
    return {name: value for name, value in record.items() if name not in LEFT_OUT}


async def reads(stores: Stores, rollout_id: str, devices: list[str]) -> dict[str, Any]:
    """Every read of the rollout's devices, packed fields only: equal reads, equal views."""
    n = len(devices)
    archive, rollouts, devices_of = stores.archive, stores.rollouts, stores.rollout_devices
    pages = [
        (at, device_id, kept(row))
        for start in range(0, n, 7)  # pages that cross chunks
        for at, device_id, row in await archive.rows(rollout_id, start, min(n, start + 7))
    ]
    return {
        "rows": pages,
        "by_state": {
            state.value: [
                (at, device_id, kept(row))
                for at, device_id, row in await archive.rows(rollout_id, 0, n, state=state.value)
            ]
            for state in DeviceState
        },
        "found": [kept(row) for row in await archive.find(rollout_id, [*devices, "nobody"])],
        "device_states": [kept(row) for row in await devices_of.device_states(rollout_id, devices)],
        "device": [kept(await devices_of.device(rollout_id, d)) for d in devices[:20]],
        "order": await devices_of.order_slice(rollout_id, 0, n),
        "record": await rollouts.get(rollout_id),
        "counts": await rollouts.counts(rollout_id),
        "events": await stores.audit.events(rollout_id),
    }


async def lookup_entries(stores: Stores, rollout_id: str) -> int:
    """Devices in the archive's lookup buckets (8 bytes each): one per device packed once."""
    archive = stores.keys.rollout_archive(rollout_id)
    fields = [str(field) for field in await stores.redis.hkeys(archive)]
    sizes = [await stores.redis.hstrlen(archive, f) for f in fields if f.startswith("b:")]
    return sum(sizes) // 8


async def compact(stores: Stores, rollout_id: str, **bounds: int) -> tuple[str, int]:
    compacted = await stores.archive.compact(
        rollout_id, max_devices=bounds.pop("max_devices", EVERYTHING), at_ms=1, **bounds
    )
    return compacted.outcome, compacted.devices


# --- compaction ----------------------------------------------------------------------------


async def test_compaction_keeps_every_read_and_drops_the_hashes_and_the_order_list(
    clean: Stores,
) -> None:
    rollout_id, devices = await varied_rollout(clean)
    before = await reads(clean, rollout_id, devices)
    assert {row["state"] for _, _, row in before["rows"]} == {
        "succeeded", "failed", "rejected", "timed_out", "cancelled", "rolled_back",
        "rollback_failed",
    }  # fmt: skip
    assert before["found"][-1] == {}  # not in the rollout
    assert before["order"] == devices

    assert await compact(clean, rollout_id, chunk=64) == ("done", 300)

    assert await reads(clean, rollout_id, devices) == before
    kinds = {key.removeprefix(clean.keys.prefix) for key in await keys_of(clean, rollout_id)}
    assert kinds == {
        f"rollout:{rollout_id}{kind}" for kind in ("", ":counts", ":events", ":archive")
    }
    assert await clean.redis.zscore(clean.keys.archived_rollouts(), rollout_id) == FINISHED_MS
    assert await clean.archive.archived([rollout_id, "other"]) == {rollout_id}


async def test_compacting_again_changes_nothing(clean: Stores) -> None:
    rollout_id, _ = await varied_rollout(clean, 50)
    assert await compact(clean, rollout_id) == ("done", 50)
    packed = await dump(clean, rollout_id)
    assert await compact(clean, rollout_id) == ("done", 0)
    assert await dump(clean, rollout_id) == packed


async def test_a_compaction_cut_short_reads_the_same_and_another_replica_finishes_it(
    clean: Stores, replica: Stores
) -> None:
    rollout_id, devices = await varied_rollout(clean, 300)
    before = await reads(clean, rollout_id, devices)

    # Two chunks, then the process dies: the devices are half hashes, half packed.
    assert await compact(clean, rollout_id, chunk=64, max_devices=100) == ("more", 128)
    assert await clean.redis.llen(clean.keys.rollout_order(rollout_id)) == 300
    hashes = await clean.redis.exists(
        *(clean.keys.rollout_device(rollout_id, device_id) for device_id in devices)
    )
    assert hashes == 300 - 128
    assert await reads(clean, rollout_id, devices) == before
    assert await replica.archive.due(after_ms=None, settled_ms=FINISHED_MS, limit=10) == [
        rollout_id
    ]

    # Another replica, with another chunk size in mind, goes on where it stopped.
    assert await compact(replica, rollout_id, chunk=100) == ("done", 300 - 128)

    assert await reads(clean, rollout_id, devices) == before
    archive = clean.keys.rollout_archive(rollout_id)
    meta = json.loads(str(await clean.redis.hget(archive, "meta")))
    assert (meta["chunk"], meta["packed"], meta["total"]) == (64, 300, 300)
    fields = [str(field) for field in await clean.redis.hkeys(archive)]
    assert sorted(f for f in fields if f.startswith("c:")) == sorted(f"c:{n}" for n in range(5))
    assert await lookup_entries(clean, rollout_id) == 300
    assert await replica.archive.due(after_ms=None, settled_ms=FINISHED_MS, limit=10) == []


async def test_two_replicas_compacting_at_once_pack_each_device_once(
    clean: Stores, replica: Stores
) -> None:
    made = [await varied_rollout(clean, 200) for _ in range(2)]
    before = [await reads(clean, rollout_id, devices) for rollout_id, devices in made]

    outcomes = await asyncio.gather(
        *(
            compact(stores, rollout_id, chunk=16)
            for rollout_id, _ in made
            for stores in (clean, replica)
        )
    )

    assert {outcome for outcome, _ in outcomes} == {"done"}
    assert sum(packed for _, packed in outcomes) == 2 * 200
    for (rollout_id, devices), read in zip(made, before, strict=True):
        assert await reads(clean, rollout_id, devices) == read
        assert await lookup_entries(clean, rollout_id) == 200


@pytest.mark.parametrize("case", ["active", "leased", "running"])
async def test_compaction_leaves_a_rollout_an_engine_may_still_write_to_untouched(
    clean: Stores, case: str
) -> None:
    if case == "running":
        rollout_id, _ = await running_rollout(clean, 5)
        await clean.leases.release(rollout_id, "engine-a")
        await clean.rollouts.deactivate(rollout_id)  # even off the active list
        outcome = "not_finished"
    elif case == "active":  # an older version ended it; the engine still cleans up
        rollout_id, _ = await aborted_rollout(clean, 5, left_active=True)
        await clean.leases.release(rollout_id, "engine-a")
        outcome = "active"
    else:  # the driver's last step may still be writing
        rollout_id, _ = await aborted_rollout(clean, 5)
        outcome = "leased"
    before = await dump(clean, rollout_id)
    assert await compact(clean, rollout_id) == (outcome, 0)
    assert await dump(clean, rollout_id) == before


async def test_due_lists_settled_finished_rollouts_not_yet_compacted_oldest_first(
    clean: Stores,
) -> None:
    newer, _ = await varied_rollout(clean, 3)
    await clean.redis.zadd(clean.keys.finished_rollouts(), {newer: FINISHED_MS + 10})
    older, _ = await varied_rollout(clean, 3)
    done, _ = await varied_rollout(clean, 3)
    assert await compact(clean, done) == ("done", 3)
    archive = clean.archive

    assert await archive.due(after_ms=None, settled_ms=FINISHED_MS + 10, limit=10) == [
        older,
        newer,
    ]
    assert await archive.due(after_ms=None, settled_ms=FINISHED_MS + 10, limit=1) == [older]
    assert await archive.due(after_ms=None, settled_ms=FINISHED_MS + 9, limit=10) == [older]
    assert await archive.due(after_ms=FINISHED_MS, settled_ms=FINISHED_MS + 10, limit=10) == [newer]


# --- what a packed record holds ------------------------------------------------------------

# Values of every shape the encoding tells apart: whole numbers (and look-alikes it must not
# turn into numbers), hex digits, UUIDs in both cases, short and long text, any character.
values = st.one_of(
    st.integers(min_value=0, max_value=10**15).map(str),
    st.from_regex(r"0[0-9]{1,5}|-[0-9]{1,5}|[0-9]{16,20}", fullmatch=True),
    st.uuids().map(lambda u: u.hex),
    st.uuids().map(lambda u: u.hex.upper()),
    st.uuids().map(str),
    st.uuids().map(lambda u: str(u).upper()),
    st.sampled_from(["", "succeeded", "failed", "a" * 32, "b" * 33]),
    st.text(max_size=60),
)
names = st.text(min_size=1, max_size=12).filter(lambda name: name not in LEFT_OUT)


@hypothesis_settings(
    database=None,
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    records=st.lists(
        st.tuples(
            st.one_of(st.uuids().map(str), st.text(min_size=1, max_size=40)),
            st.dictionaries(names, values, max_size=40),
        ),
        min_size=1,
        max_size=6,
        unique_by=lambda record: record[0],
    )
)
async def test_a_packed_record_reads_back_exactly_as_its_hash_held_it(
    clean: Stores, records: list[tuple[str, dict[str, str]]]
) -> None:
    devices = [device_id for device_id, _ in records]
    rollout_id, _ = await clean.rollouts.create(
        project_id=PROJECT,
        name=f"ro-{uuid.uuid4().hex[:8]}",
        plan=PLAN,
        device_ids=devices,
        reach=[1, len(devices)],
        created_at=FINISHED_AT,
        created_by="alice",
    )
    await start(clean, rollout_id)
    await abort(clean, rollout_id)
    for device_id, fields in records:
        if fields:
            await clean.rollout_devices.set_device_fields(rollout_id, device_id, **fields)
    before = await clean.rollout_devices.device_states(rollout_id, devices)

    assert (await compact(clean, rollout_id, chunk=4))[0] == "done"

    assert await clean.archive.find(rollout_id, devices) == [kept(row) for row in before]
    assert await clean.archive.rows(rollout_id, 0, len(devices)) == [
        (at, device_id, kept(row))
        for at, (device_id, row) in enumerate(zip(devices, before, strict=True))
    ]


async def test_a_value_list_that_is_full_writes_further_values_out(clean: Stores) -> None:
    rollout_id, devices = await varied_rollout(clean, 40)
    for i, device_id in enumerate(devices):  # 400 short values, more than the list takes
        await clean.rollout_devices.set_device_fields(
            rollout_id, device_id, **{f"note{j}": f"n{i}-{j}" for j in range(10)}
        )
    before = await clean.rollout_devices.device_states(rollout_id, devices)
    assert await compact(clean, rollout_id, chunk=16) == ("done", 40)
    assert await clean.rollout_devices.device_states(rollout_id, devices) == [
        kept(r) for r in before
    ]


# --- writers after the end -----------------------------------------------------------------


async def test_a_late_result_for_a_packed_device_is_refused_as_missing_and_writes_nothing(
    clean: Stores,
) -> None:
    rollout_id, devices = await running_rollout(clean, 3)
    commands = [(await clean.rollout_devices.device(rollout_id, d))["command_id"] for d in devices]
    await abort(clean, rollout_id)
    await clean.leases.release(rollout_id, "engine-a")
    assert await compact(clean, rollout_id) == ("done", 3)
    packed = await dump(clean, rollout_id)

    applied = await clean.rollout_devices.apply_results(
        [
            Reported(command, device_id)
            for command, device_id in zip(commands, devices, strict=True)
        ],
        {rollout_id: RULES},
    )

    assert [outcome.outcome for outcome in applied.outcomes] == ["missing"] * 3
    after = await dump(clean, rollout_id)
    del packed[clean.keys.rollout(rollout_id)], after[clean.keys.rollout(rollout_id)]
    assert after == packed  # only the rollout's last_result_ms moved: no hash came back


# --- retention ------------------------------------------------------------------------------


@pytest.mark.parametrize("packed", [128, 300])
async def test_the_retention_purge_deletes_a_compacted_or_half_compacted_rollout(
    clean: Stores, packed: int
) -> None:
    rollout_id, devices = await varied_rollout(clean, 300)
    other, _ = await varied_rollout(clean, 5)
    assert await compact(clean, other) == ("done", 5)
    kept_before = await dump(clean, other)
    await compact(clean, rollout_id, chunk=64, max_devices=packed - 1)

    purged = await clean.retention.purge(rollout_id, max_devices=EVERYTHING, chunk=100)

    assert purged.outcome == "deleted"
    await assert_gone(clean, rollout_id, devices)
    assert await clean.redis.zscore(clean.keys.archived_rollouts(), rollout_id) is None
    assert await clean.archive.rows(rollout_id, 0, 300) == []
    assert await dump(clean, other) == kept_before
    assert await clean.redis.zscore(clean.keys.archived_rollouts(), other) == FINISHED_MS


# --- memory ---------------------------------------------------------------------------------


async def test_a_compacted_rollout_of_1000_devices_costs_under_90_bytes_per_device(
    clean: Stores,
) -> None:
    """Measured by `python -m bench.rollout_memory`: about 420 B per device finished, 76 B
    compacted (Redis 7.0, jemalloc); the bound leaves room for other allocators and versions."""
    rollout_id = await finished_rollout(clean, 1000)
    before = bytes_per_device(await rollout_bytes(clean, rollout_id), 1000)

    assert await compact(clean, rollout_id) == ("done", 1000)

    after = bytes_per_device(await rollout_bytes(clean, rollout_id), 1000)
    assert after < 90, after
    assert before > 4 * after, (before, after)
