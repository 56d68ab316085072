"""The rollout store on real Redis: creation, state changes, dispatch, device transitions with
their counters, races between callers, leases and device locks."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from orchestrator.domain import counters
from orchestrator.domain.states import (
    DEVICE_TRANSITIONS,
    FAILED_DEVICE_STATES,
    ROLLOUT_TRANSITIONS,
    DeviceEvent,
    DeviceState,
    RolloutAction,
    RolloutState,
)
from orchestrator.store import Stores
from orchestrator.store.device_events import ResultRules, StatusRules, TransitionRequest
from orchestrator.store.rollout_devices import Grant, ResultOutcome, Transition
from orchestrator.store.rollouts import CreateOutcome
from tests.conftest import wait_for

PROJECT = "proj-1"
AT = "2030-01-02T03:04:05Z"
PLAN: dict[str, Any] = {"name": "fw-2.1.0", "firmware": {"file": "fw.bin", "version": "2.1.0"}}
ACK_DEADLINE_MS = 4_000_000_000_000
D = DeviceState


@dataclass(frozen=True)
class Made:
    """A rollout the factory created: its id and its devices in wave order."""

    id: str
    devices: list[str]


class CreateRollout(Protocol):
    async def __call__(
        self,
        n: int = 10,
        reach: Sequence[int] = (10,),
        *,
        name: str | None = None,
        project_id: str = PROJECT,
        devices: Sequence[str] | None = None,
        running: bool = False,
        strata: Sequence[Sequence[str]] = (),
        stratum_of: Sequence[int] = (),
    ) -> Made: ...


def device_ids(n: int) -> list[str]:
    """Fresh device ids that sort in the order given (every rollout locks its devices)."""
    run = uuid.uuid4().hex[:8]
    return [f"dev-{run}-{i:03d}" for i in range(n)]


async def start(stores: Stores, rollout_id: str) -> None:
    old, changed = await stores.rollouts.change_state(
        rollout_id,
        allowed_from=[RolloutState.PENDING],
        to=RolloutState.RUNNING,
        reason="started",
        actor="engine",
        action=RolloutAction.START,
        at=AT,
    )
    assert (old, changed) == ("pending", True)


async def move(
    stores: Stores, rollout_id: str, frm: RolloutState, to: RolloutState
) -> tuple[str, bool]:
    return await stores.rollouts.change_state(
        rollout_id,
        allowed_from=[frm],
        to=to,
        reason=f"to {to}",
        actor="alice",
        action=next(a for a, moves in ROLLOUT_TRANSITIONS.items() if moves.get(frm) == to),
        at=AT,
    )


@pytest.fixture
async def create_rollout(stores: Stores) -> AsyncIterator[CreateRollout]:
    """A `create(...)` for rollouts that must be created; deletes the test's keys afterwards."""

    async def create(
        n: int = 10,
        reach: Sequence[int] = (10,),
        *,
        name: str | None = None,
        project_id: str = PROJECT,
        devices: Sequence[str] | None = None,
        running: bool = False,
        strata: Sequence[Sequence[str]] = (),
        stratum_of: Sequence[int] = (),
    ) -> Made:
        ids = list(devices) if devices is not None else device_ids(n)
        rollout_id, outcome = await stores.rollouts.create(
            project_id=project_id,
            name=name or f"ro-{uuid.uuid4().hex[:8]}",
            plan=PLAN,
            device_ids=ids,
            reach=reach,
            created_at=AT,
            created_by="alice",
            strata=strata,
            stratum_of=stratum_of,
        )
        assert outcome == CreateOutcome(created=True)
        if running:
            await start(stores, rollout_id)
        return Made(rollout_id, ids)

    yield create
    stale = [key async for key in stores.redis.scan_iter(match=f"{stores.keys.prefix}*")]
    if stale:
        await stores.redis.delete(*stale)


async def nonzero_counts(stores: Stores, rollout_id: str) -> dict[str, int]:
    return {name: n for name, n in (await stores.rollouts.counts(rollout_id)).items() if n}


async def retry_list(stores: Stores, rollout_id: str) -> list[str]:
    return [str(d) for d in await stores.redis.lrange(stores.keys.rollout_retry(rollout_id), 0, -1)]


async def deadlines(stores: Stores, rollout_id: str) -> dict[str, int]:
    rows = await stores.redis.zrange(
        stores.keys.rollout_deadlines(rollout_id), 0, -1, withscores=True
    )
    return {member: int(score) for member, score in cast(list[tuple[str, float]], rows)}


async def keys_naming(stores: Stores, rollout_id: str) -> list[str]:
    return [str(key) async for key in stores.redis.scan_iter(match=f"*{rollout_id}*")]


GRANT = Grant(project_id="p-test", file_name="fw_2.0.0.bin", size=4096, key_ttl_s=600)


async def dispatch(stores: Stores, made: Made, count: int, reach: int) -> list[tuple[str, str]]:
    """(device id, command id) of each device sent."""
    sent = await stores.rollout_devices.dispatch(
        made.id, count=count, reach=reach, ack_deadline_ms=ACK_DEADLINE_MS, grant=GRANT
    )
    return [(item.device_id, item.command_id) for item in sent]


async def state_of(stores: Stores, rollout_id: str, device_id: str) -> str:
    return (await stores.rollout_devices.device(rollout_id, device_id)).get("state", "")


# --- create ------------------------------------------------------------------------------


async def test_create_writes_a_pending_rollout_with_pending_devices_split_by_reach(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    made = await create_rollout(10, [2, 5, 10], name="thermostat")
    record = await stores.rollouts.get(made.id)
    assert record is not None
    assert (record.state, record.name, record.project_id) == ("pending", "thermostat", PROJECT)
    assert (record.wave, record.cursor, record.reach, record.total) == (0, 0, [2, 5, 10], 10)
    assert (record.plan, record.created_at, record.created_by) == (PLAN, AT, "alice")
    assert await nonzero_counts(stores, made.id) == {
        "all:pending": 10,
        "0:pending": 2,
        "1:pending": 3,
        "2:pending": 5,
    }
    rows = await stores.rollout_devices.device_states(made.id, made.devices)
    assert [row["wave"] for row in rows] == ["0"] * 2 + ["1"] * 3 + ["2"] * 5
    assert {(row["state"], row["attempts"]) for row in rows} == {("pending", "0")}
    assert await stores.rollout_devices.order_slice(made.id, 0, 10) == made.devices
    assert await stores.rollouts.ids(PROJECT) == [made.id]
    assert made.id in await stores.rollouts.active_ids()
    assert await stores.rollout_devices.device_rollouts(made.devices) == [made.id] * 10
    assert await stores.audit.events(made.id) == [
        {
            "at": AT,
            "actor": "alice",
            "action": "create",
            "to": "pending",
            "reason": "10 devices in 3 waves",
        }
    ]


async def test_create_with_a_name_active_in_the_project_names_the_holder_and_writes_nothing(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    first = await create_rollout(3, name="same")
    others = device_ids(3)
    second, outcome = await stores.rollouts.create(
        project_id=PROJECT,
        name="same",
        plan=PLAN,
        device_ids=others,
        reach=[3],
        created_at=AT,
        created_by="bob",
    )
    assert outcome == CreateOutcome(created=False, name_taken_by=first.id)
    assert await keys_naming(stores, second) == []
    assert await stores.rollouts.get(second) is None
    assert await stores.rollout_devices.device_rollouts(others) == [None] * 3
    assert await stores.rollouts.active_ids() == [first.id]
    assert await stores.rollouts.ids(PROJECT) == [first.id]


async def test_the_same_name_in_another_project_is_free(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    await create_rollout(2, [2], name="same", project_id="proj-a")
    await create_rollout(2, [2], name="same", project_id="proj-b")


async def test_create_over_devices_of_an_active_rollout_lists_exactly_those_and_writes_nothing(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    first = await create_rollout(6)
    fresh = device_ids(4)
    wanted = [fresh[0], first.devices[4], fresh[1], first.devices[1], fresh[2], fresh[3]]
    second, outcome = await stores.rollouts.create(
        project_id=PROJECT,
        name="other",
        plan=PLAN,
        device_ids=wanted,
        reach=[6],
        created_at=AT,
        created_by="bob",
    )
    assert outcome == CreateOutcome(
        created=False, devices_taken=(first.devices[4], first.devices[1])
    )
    assert await keys_naming(stores, second) == []
    assert await stores.rollout_devices.device_rollouts(fresh) == [None] * 4
    assert await stores.rollout_devices.device_rollouts(first.devices) == [first.id] * 6
    assert await stores.redis.get(stores.keys.rollout_name(PROJECT, "other")) is None
    assert await stores.rollouts.active_ids() == [first.id]


async def test_a_terminal_state_frees_the_name_and_the_devices_in_the_same_step(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    first = await create_rollout(5, name="again", running=True)
    assert await move(stores, first.id, RolloutState.RUNNING, RolloutState.ABORTED) == (
        "running",
        True,
    )
    assert await stores.redis.get(stores.keys.rollout_name(PROJECT, "again")) is None
    assert await stores.rollout_devices.device_rollouts(first.devices) == [None] * 5
    assert await stores.rollouts.active_ids() == []
    assert await stores.rollout_devices.release_devices(first.id) == 0  # nothing left to release
    second = await create_rollout(name="again", devices=first.devices, reach=[5])
    assert await stores.rollout_devices.device_rollouts(first.devices) == [second.id] * 5
    assert await stores.rollouts.active_ids() == [second.id]
    assert set(await stores.rollouts.ids(PROJECT)) == {first.id, second.id}


async def test_a_terminal_state_cancels_every_device_not_final_and_revokes_its_key(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    made = await create_rollout(5, [5], running=True)
    sent = await stores.rollout_devices.dispatch(
        made.id, count=3, reach=5, ack_deadline_ms=ACK_DEADLINE_MS, grant=GRANT
    )
    claimed, delivered, _ = (item.device_id for item in sent)
    await stores.rollout_devices.transition(made.id, claimed, DeviceEvent.KEY_CLAIMED)
    await stores.rollout_devices.transition(made.id, delivered, DeviceEvent.KEY_DELIVERED)
    await stores.rollout_devices.transition(made.id, delivered, DeviceEvent.SUCCESS)
    assert await move(stores, made.id, RolloutState.RUNNING, RolloutState.ABORTED) == (
        "running",
        True,
    )
    assert await nonzero_counts(stores, made.id) == {
        "all:cancelled": 4,
        "0:cancelled": 4,
        "all:succeeded": 1,
        "0:succeeded": 1,
    }
    for item in sent:
        assert await stores.download_keys.get(item.key) is None
    assert await deadlines(stores, made.id) == {}
    assert await stores.rollout_devices.unpublished(made.id) == []
    assert await retry_list(stores, made.id) == []
    assert await state_of(stores, made.id, delivered) == "succeeded"  # final stays as it was


async def test_release_frees_only_the_locks_the_rollout_still_holds(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    first = await create_rollout(3, running=True)
    # A rollout ended by an older version: its locks were left for release_devices.
    for device_id in first.devices[:2]:
        await stores.redis.delete(stores.keys.device_rollout(device_id))
    second = await create_rollout(devices=first.devices[:2], reach=[2])
    assert await stores.rollout_devices.release_devices(first.id) == 1
    assert await stores.rollout_devices.release_devices(first.id) == 0
    assert await stores.rollout_devices.device_rollouts(first.devices) == [
        second.id,
        second.id,
        None,
    ]


async def test_concurrent_creates_over_the_same_devices_let_exactly_one_through(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    shared = device_ids(8)
    results = await asyncio.gather(
        *(
            stores.rollouts.create(
                project_id=PROJECT,
                name=f"racer-{i}",
                plan=PLAN,
                device_ids=shared,
                reach=[8],
                created_at=AT,
                created_by="bob",
            )
            for i in range(5)
        )
    )
    winners = [rollout_id for rollout_id, outcome in results if outcome.created]
    assert len(winners) == 1
    losers = [outcome for _, outcome in results if not outcome.created]
    assert all(outcome.devices_taken == tuple(shared) for outcome in losers)
    assert await stores.rollout_devices.device_rollouts(shared) == winners * 8
    assert await stores.rollouts.active_ids() == winners


# --- change_state ------------------------------------------------------------------------


async def test_change_state_applies_from_an_allowed_state_and_records_who_and_why(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    made = await create_rollout(2, [2])
    details: dict[str, Any] = {
        "failure_rate": 1 / 3,
        "failed_devices": [],
        "failures": {"timed_out": 2},
        "at_ms": 12_345_678_901_234_567,
    }
    result = await stores.rollouts.change_state(
        made.id,
        allowed_from=[RolloutState.PENDING, RolloutState.PAUSED],
        to=RolloutState.RUNNING,
        reason="operator said so",
        actor="alice",
        action=RolloutAction.START,
        at="2030-02-02T00:00:00Z",
        details=details,
        extra={"wave": 1},
    )
    assert result == ("pending", True)
    record = await stores.rollouts.get(made.id)
    assert record is not None
    assert (record.state, record.reason) == ("running", "operator said so")
    assert (record.updated_at, record.wave) == ("2030-02-02T00:00:00Z", 1)
    assert (await stores.audit.events(made.id))[-1] == {
        "from": "pending",
        "to": "running",
        "actor": "alice",
        "action": "start",
        "reason": "operator said so",
        "at": "2030-02-02T00:00:00Z",
        "details": details,  # exactly: [] stays a list, numbers keep every digit
    }
    # Not terminal: still active, still holding its name.
    assert made.id in await stores.rollouts.active_ids()
    name = record.name
    assert await stores.redis.get(stores.keys.rollout_name(PROJECT, name)) == made.id


async def test_change_state_from_a_state_not_allowed_changes_nothing(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    made = await create_rollout(2, [2])
    before = await stores.audit.events(made.id)
    assert await move(stores, made.id, RolloutState.RUNNING, RolloutState.PAUSED) == (
        "pending",
        False,
    )
    record = await stores.rollouts.get(made.id)
    assert record is not None
    assert (record.state, record.updated_at) == ("pending", AT)
    assert await stores.audit.events(made.id) == before


async def test_change_state_writes_its_notes_and_fields_with_the_change_or_none_of_them(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    # A wave passed into a wave that waits for approval: the wave, the note and the wait are one
    # step, so no crash between them can send the next wave without its approval.
    made = await create_rollout(4, [2, 4])
    await start(stores, made.id)
    note = {"at": AT, "actor": "engine", "action": "wave_start", "reason": "canary passed"}

    async def wait(allowed: RolloutState) -> tuple[str, bool]:
        return await stores.rollouts.change_state(
            made.id,
            allowed_from=[allowed],
            to=RolloutState.WAITING_APPROVAL,
            reason="wave rest waits for approval",
            actor="engine",
            action=RolloutAction.WAIT_APPROVAL,
            at=AT,
            extra={"wave": 1, "wave_done_at_ms": 0},
            notes=[note],
        )

    before = await stores.audit.events(made.id)
    assert await wait(RolloutState.PAUSED) == ("running", False)
    record = await stores.rollouts.get(made.id)
    assert record is not None
    assert (record.state, record.wave) == ("running", 0)
    assert await stores.audit.events(made.id) == before

    assert await wait(RolloutState.RUNNING) == ("running", True)
    record = await stores.rollouts.get(made.id)
    assert record is not None
    assert (record.state, record.wave, record.wave_done_at_ms) == ("waiting_approval", 1, 0)
    events = await stores.audit.events(made.id)
    assert events[len(before) :] == [
        note,
        {
            "from": "running",
            "to": "waiting_approval",
            "actor": "engine",
            "action": "wait_approval",
            "reason": "wave rest waits for approval",
            "at": AT,
        },
    ]
    notices: Any = await stores.redis.xrange(stores.keys.rollout_notices())
    told = [json.loads(fields["event"])["action"] for _, fields in notices]
    assert told[-2:] == ["wave_start", "wait_approval"]  # the subscribers hear both, in order


async def test_change_state_of_an_unknown_rollout_changes_nothing(stores: Stores) -> None:
    unknown = str(uuid.uuid4())
    assert await move(stores, unknown, RolloutState.PENDING, RolloutState.RUNNING) == ("", False)
    assert await keys_naming(stores, unknown) == []


@pytest.mark.parametrize(
    ("path", "terminal"),
    [
        ([RolloutState.RUNNING, RolloutState.COMPLETED], True),
        ([RolloutState.RUNNING, RolloutState.ROLLING_BACK, RolloutState.ROLLBACK_FAILED], True),
        ([RolloutState.RUNNING, RolloutState.HALTED], False),
    ],
)
async def test_only_a_terminal_change_frees_the_name_and_leaves_the_active_set(
    stores: Stores,
    create_rollout: CreateRollout,
    path: list[RolloutState],
    terminal: bool,
) -> None:
    made = await create_rollout(2, [2], name="named", running=True)
    for frm, to in itertools.pairwise(path):
        assert await move(
            stores,
            made.id,
            frm,
            to,
        ) == (frm, True)
    holder = await stores.redis.get(stores.keys.rollout_name(PROJECT, "named"))
    assert holder == (None if terminal else made.id)
    assert (made.id in await stores.rollouts.active_ids()) is not terminal
    assert [e["to"] for e in await stores.audit.events(made.id)] == ["pending", *path]


async def test_deactivate_takes_the_rollout_off_the_active_list_only(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    done = await create_rollout(2, [2], running=True)
    other = await create_rollout(2, [2])
    await move(stores, done.id, RolloutState.RUNNING, RolloutState.COMPLETED)
    await stores.rollouts.deactivate(done.id)
    await stores.rollouts.deactivate(done.id)  # again: nothing more to do
    assert await stores.rollouts.active_ids() == [other.id]
    record = await stores.rollouts.get(done.id)
    assert record is not None
    assert record.state == "completed"
    assert set(await stores.rollouts.ids(PROJECT)) == {done.id, other.id}


# --- dispatch ----------------------------------------------------------------------------


@pytest.mark.parametrize("state", [RolloutState.PENDING, RolloutState.PAUSED])
async def test_dispatch_sends_nothing_unless_the_rollout_is_running(
    stores: Stores, create_rollout: CreateRollout, state: RolloutState
) -> None:
    made = await create_rollout(4, [4])
    if state is RolloutState.PAUSED:
        await start(stores, made.id)
        await move(stores, made.id, RolloutState.RUNNING, RolloutState.PAUSED)
    assert await dispatch(stores, made, 4, 4) == []
    assert await nonzero_counts(stores, made.id) == {"all:pending": 4, "0:pending": 4}
    record = await stores.rollouts.get(made.id)
    assert record is not None
    assert record.cursor == 0
    assert await stores.rollout_devices.unpublished(made.id) == []


async def test_dispatch_moves_at_most_count_devices_in_order_and_never_past_the_reach(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    made = await create_rollout(10, [2, 5, 10], running=True)
    dev = made.devices

    async def sent(count: int, reach: int) -> list[str]:
        return [device_id for device_id, _ in await dispatch(stores, made, count, reach)]

    async def cursor() -> int:
        record = await stores.rollouts.get(made.id)
        assert record is not None
        return record.cursor

    assert await sent(0, 2) == []
    assert await sent(1, 2) == [dev[0]]
    assert await sent(5, 2) == [dev[1]]
    assert await cursor() == 2
    assert await sent(5, 2) == []
    assert await cursor() == 2
    assert await sent(2, 5) == dev[2:4]
    assert await sent(10, 5) == [dev[4]]
    assert await cursor() == 5
    assert await nonzero_counts(stores, made.id) == {
        "all:sent": 5,
        "all:pending": 5,
        "0:sent": 2,
        "1:sent": 3,
        "2:pending": 5,
    }


async def test_dispatch_marks_each_device_sent_with_its_own_command_and_ack_deadline(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    made = await create_rollout(5, [5], running=True)
    sent = await dispatch(stores, made, 3, 5)
    ids = [device_id for device_id, _ in sent]
    assert ids == made.devices[:3]
    assert len({command_id for _, command_id in sent}) == 3
    for device_id, command_id in sent:
        record = await stores.rollout_devices.device(made.id, device_id)
        assert record["state"] == "sent"
        assert record["command_id"] == command_id
        assert record["attempts"] == "1"
        assert int(record["sent_at"]) > 0
    assert await stores.rollout_devices.unpublished(made.id) == sorted(ids)
    assert await deadlines(stores, made.id) == dict.fromkeys(ids, ACK_DEADLINE_MS)
    await stores.rollout_devices.mark_published(made.id, ids[1])
    assert await stores.rollout_devices.unpublished(made.id) == sorted([ids[0], ids[2]])
    # A re-send (the rollback firmware) is unpublished again until its publish is confirmed.
    await stores.rollout_devices.mark_unpublished(made.id, ids[1])
    assert await stores.rollout_devices.unpublished(made.id) == sorted(ids)


# --- transition --------------------------------------------------------------------------


async def test_a_pending_device_moves_only_by_dispatch_then_by_the_domain_table_to_success(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    made = await create_rollout(2, [2], running=True)
    device_id = made.devices[0]
    for event in (DeviceEvent.KEY_CLAIMED, DeviceEvent.SUCCESS, DeviceEvent.FAILED):
        assert await stores.rollout_devices.transition(made.id, device_id, event) == Transition(
            old="pending", new="", refused="no_transition"
        )
    await dispatch(stores, made, 1, 2)
    # Sending happened by dispatch; SEND again is not a transition of a sent device.
    assert (
        await stores.rollout_devices.transition(made.id, device_id, DeviceEvent.SEND)
    ).refused == ("no_transition")
    steps = [
        (DeviceEvent.KEY_CLAIMED, "sent", "downloading"),
        (DeviceEvent.KEY_DELIVERED, "downloading", "installing"),
        (DeviceEvent.SUCCESS, "installing", "succeeded"),
    ]
    for event, old, new in steps:
        result = await stores.rollout_devices.transition(made.id, device_id, event)
        assert result == Transition(old=old, new=new)
        assert result.applied
    assert await nonzero_counts(stores, made.id) == {
        "all:succeeded": 1,
        "all:pending": 1,
        "0:succeeded": 1,
        "0:pending": 1,
    }


@pytest.mark.parametrize(
    "event", [DeviceEvent.FAILED, DeviceEvent.SUCCESS, DeviceEvent.TIMED_OUT, DeviceEvent.CANCEL]
)
async def test_a_late_result_for_a_final_device_is_refused_and_changes_nothing(
    stores: Stores, create_rollout: CreateRollout, event: DeviceEvent
) -> None:
    made = await create_rollout(1, [1], running=True)
    device_id = made.devices[0]
    await dispatch(stores, made, 1, 1)
    await stores.rollout_devices.transition(made.id, device_id, DeviceEvent.SUCCESS)
    before = await stores.rollouts.counts(made.id)
    result = await stores.rollout_devices.transition(made.id, device_id, event, retries=3)
    assert result == Transition(old="succeeded", new="", refused="no_transition")
    assert not result.applied
    assert await stores.rollouts.counts(made.id) == before
    assert await state_of(stores, made.id, device_id) == "succeeded"


async def test_a_late_key_claim_still_marks_that_the_device_took_the_firmware(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    """The claim event can trail the device's failure result; a rollback must still reach it."""
    made = await create_rollout(1, [1], running=True)
    device_id = made.devices[0]
    await dispatch(stores, made, 1, 1)
    await stores.rollout_devices.transition(made.id, device_id, DeviceEvent.FAILED)
    late = await stores.rollout_devices.transition(
        made.id, device_id, DeviceEvent.KEY_CLAIMED, marks={"downloaded": 1}
    )
    assert late.refused == "no_transition"
    device = await stores.rollout_devices.device(made.id, device_id)
    assert (device["state"], device.get("downloaded")) == ("failed", "1")


async def test_an_event_for_another_command_is_refused_as_command_mismatch(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    made = await create_rollout(1, [1], running=True)
    [(device_id, command_id)] = await dispatch(stores, made, 1, 1)
    stale = await stores.rollout_devices.transition(
        made.id, device_id, DeviceEvent.KEY_CLAIMED, command_id="an-old-command"
    )
    assert stale == Transition(old="sent", new="", refused="command_mismatch")
    other_field = await stores.rollout_devices.transition(
        made.id,
        device_id,
        DeviceEvent.KEY_CLAIMED,
        command_id=command_id,
        command_field="rollback_command_id",
    )
    assert other_field.refused == "command_mismatch"
    assert await state_of(stores, made.id, device_id) == "sent"
    assert await stores.rollout_devices.transition(
        made.id, device_id, DeviceEvent.KEY_CLAIMED, command_id=command_id
    ) == Transition(old="sent", new="downloading")


async def test_an_event_for_a_device_not_in_the_rollout_is_refused_as_missing(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    made = await create_rollout(1, [1], running=True)
    before = await stores.rollouts.counts(made.id)
    result = await stores.rollout_devices.transition(made.id, "dev-stranger", DeviceEvent.SUCCESS)
    assert result == Transition(old="", new="", refused="missing")
    assert await stores.rollout_devices.device(made.id, "dev-stranger") == {}
    assert await stores.rollouts.counts(made.id) == before


async def test_an_event_requiring_other_rollout_states_is_refused_as_rollout_state(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    made = await create_rollout(1, [1], running=True)
    [(device_id, _)] = await dispatch(stores, made, 1, 1)
    await move(stores, made.id, RolloutState.RUNNING, RolloutState.PAUSED)
    refused = await stores.rollout_devices.transition(
        made.id, device_id, DeviceEvent.KEY_CLAIMED, rollout_states=[RolloutState.RUNNING]
    )
    assert refused == Transition(old="sent", new="", refused="rollout_state")
    assert await state_of(stores, made.id, device_id) == "sent"
    applied = await stores.rollout_devices.transition(
        made.id,
        device_id,
        DeviceEvent.KEY_CLAIMED,
        rollout_states=[RolloutState.RUNNING, RolloutState.PAUSED],
    )
    assert applied == Transition(old="sent", new="downloading")


async def test_fail_counts_hold_the_devices_now_failed_by_failure_type(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    made = await create_rollout(4, [4], running=True)
    await dispatch(stores, made, 4, 4)
    wrong, failed, rejected, late = made.devices
    rollout_devices = stores.rollout_devices
    result = await rollout_devices.transition(
        made.id, wrong, DeviceEvent.WRONG_VERSION, failure_type="wrong_version"
    )
    assert result == Transition(old="sent", new="failed")
    await rollout_devices.transition(made.id, failed, DeviceEvent.FAILED)
    await rollout_devices.transition(made.id, rejected, DeviceEvent.REJECTED)
    await rollout_devices.transition(made.id, late, DeviceEvent.TIMED_OUT, failure_type="timed_out")
    assert await nonzero_counts(stores, made.id) == {
        "all:failed": 2,
        "all:rejected": 1,
        "all:timed_out": 1,
        "0:failed": 2,
        "0:rejected": 1,
        "0:timed_out": 1,
        "fail:wrong_version": 1,
        "fail:failed": 1,
        "fail:rejected": 1,
        "fail:timed_out": 1,
    }
    assert (await rollout_devices.device(made.id, wrong))["failure"] == "wrong_version"
    # Leaving a failed state (the rollback firmware goes out) takes it out of its fail count.
    await rollout_devices.transition(made.id, wrong, DeviceEvent.ROLLBACK_SEND)
    counts = await stores.rollouts.counts(made.id)
    assert (counts["fail:wrong_version"], counts["all:rollback_sent"]) == (0, 1)
    assert "failure" not in await rollout_devices.device(made.id, wrong)


@pytest.mark.parametrize("event", [DeviceEvent.FAILED, DeviceEvent.TIMED_OUT])
async def test_with_one_retry_the_first_failure_goes_back_to_pending_and_the_second_is_final(
    stores: Stores, create_rollout: CreateRollout, event: DeviceEvent
) -> None:
    made = await create_rollout(4, [4], running=True)
    [(device_id, first_command), _] = await dispatch(stores, made, 2, 4)
    retried = await stores.rollout_devices.transition(
        made.id, device_id, event, retries=1, drop_deadline=True
    )
    assert retried == Transition(old="sent", new="pending")
    assert await nonzero_counts(stores, made.id) == {
        "all:pending": 3,
        "all:sent": 1,
        "0:pending": 3,
        "0:sent": 1,
    }
    assert await retry_list(stores, made.id) == [device_id]
    record = await stores.rollout_devices.device(made.id, device_id)
    assert (record["state"], record["last_failure"]) == ("pending", event.value)
    # The retried device goes before the next new one, as a new command.
    [(again, second_command)] = await dispatch(stores, made, 1, 4)
    assert again == device_id
    assert second_command != first_command
    record = await stores.rollout_devices.device(made.id, device_id)
    assert (record["state"], record["attempts"], record["command_id"]) == (
        "sent",
        "2",
        second_command,
    )
    assert await retry_list(stores, made.id) == []
    final = await stores.rollout_devices.transition(made.id, device_id, event, retries=1)
    assert final == Transition(old="sent", new=event.value)
    counts = await nonzero_counts(stores, made.id)
    assert (counts[f"all:{event.value}"], counts[f"fail:{event.value}"]) == (1, 1)
    assert await retry_list(stores, made.id) == []
    assert [d for d, _ in await dispatch(stores, made, 5, 4)] == made.devices[2:]


async def test_without_retries_the_first_failure_is_final(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    made = await create_rollout(1, [1], running=True)
    [(device_id, _)] = await dispatch(stores, made, 1, 1)
    result = await stores.rollout_devices.transition(
        made.id, device_id, DeviceEvent.FAILED, retries=0
    )
    assert result == Transition(old="sent", new="failed")
    assert await retry_list(stores, made.id) == []


async def test_a_rejection_is_never_retried(stores: Stores, create_rollout: CreateRollout) -> None:
    made = await create_rollout(1, [1], running=True)
    [(device_id, _)] = await dispatch(stores, made, 1, 1)
    result = await stores.rollout_devices.transition(
        made.id, device_id, DeviceEvent.REJECTED, retries=5
    )
    assert result == Transition(old="sent", new="rejected")
    assert await retry_list(stores, made.id) == []
    assert (await nonzero_counts(stores, made.id))["fail:rejected"] == 1


async def test_the_retry_event_puts_a_failed_device_back_in_line_for_dispatch(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    made = await create_rollout(2, [2], running=True)
    [(device_id, _), _] = await dispatch(stores, made, 2, 2)
    await stores.rollout_devices.transition(made.id, device_id, DeviceEvent.FAILED)
    result = await stores.rollout_devices.transition(made.id, device_id, DeviceEvent.RETRY)
    assert result == Transition(old="failed", new="pending")
    assert (await stores.rollouts.counts(made.id))["fail:failed"] == 0
    assert await retry_list(stores, made.id) == [device_id]
    # The cursor is past it: only the retry list brings it back.
    assert [d for d, _ in await dispatch(stores, made, 5, 2)] == [device_id]


async def test_dispatch_writes_each_device_its_download_key_and_command_record(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    made = await create_rollout(3, [3], running=True)
    sent = await stores.rollout_devices.dispatch(
        made.id, count=2, reach=3, ack_deadline_ms=ACK_DEADLINE_MS, grant=GRANT
    )
    assert len({item.key for item in sent}) == 2
    for item in sent:
        assert (await stores.rollout_devices.device(made.id, item.device_id))["key"] == item.key
        key = await stores.download_keys.get(item.key)
        assert key is not None
        assert (key.device_id, key.command_id, key.rollout_id) == (
            item.device_id,
            item.command_id,
            made.id,
        )
        assert (key.project_id, key.file_name, key.size) == ("p-test", "fw_2.0.0.bin", 4096)
        assert key.expires_at_ms == item.key_expires_at_ms
        ttl_ms = await stores.redis.pttl(stores.keys.download_key(item.key))
        assert 0 < ttl_ms <= GRANT.key_ttl_s * 1000
        assert await stores.redis.sismember(
            stores.keys.device_download_keys(item.device_id), item.key
        )
        command = await stores.commands.get(item.command_id)
        assert command is not None
        assert (command["device_id"], command["rollout_id"], command["kind"]) == (
            item.device_id,
            made.id,
            "update",
        )
        assert command["command"] == "download_firmware"


async def test_counters_add_up_when_one_call_moves_a_device_several_times(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    made = await create_rollout(3, [1, 3], running=True)
    await dispatch(stores, made, 3, 3)
    first, second, third = made.devices
    outcomes = await stores.rollout_devices.transitions(
        [
            TransitionRequest(made.id, first, DeviceEvent.KEY_CLAIMED),
            TransitionRequest(made.id, first, DeviceEvent.KEY_DELIVERED),
            TransitionRequest(made.id, first, DeviceEvent.FAILED, retries=0),
            TransitionRequest(made.id, second, DeviceEvent.REJECTED),
            TransitionRequest(made.id, third, DeviceEvent.FAILED),
            TransitionRequest(made.id, third, DeviceEvent.RETRY),
        ]
    )
    assert [(o.old, o.new) for o in outcomes] == [
        ("sent", "downloading"),
        ("downloading", "installing"),
        ("installing", "failed"),
        ("sent", "rejected"),
        ("sent", "failed"),
        ("failed", "pending"),
    ]
    assert await nonzero_counts(stores, made.id) == {
        "all:failed": 1,
        "all:rejected": 1,
        "all:pending": 1,
        "0:failed": 1,
        "1:rejected": 1,
        "1:pending": 1,
        "fail:failed": 1,
        "fail:rejected": 1,
    }
    assert (await stores.rollout_devices.device(made.id, third)).get("failure") is None


async def test_success_revokes_the_device_key_and_other_outcomes_keep_it(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    made = await create_rollout(2, [2], running=True)
    done, failed = await stores.rollout_devices.dispatch(
        made.id, count=2, reach=2, ack_deadline_ms=ACK_DEADLINE_MS, grant=GRANT
    )
    outcomes = await stores.rollout_devices.transitions(
        [
            TransitionRequest(made.id, done.device_id, DeviceEvent.SUCCESS),
            TransitionRequest(made.id, failed.device_id, DeviceEvent.FAILED),
        ]
    )
    assert [(o.new, o.key) for o in outcomes] == [
        ("succeeded", done.key),
        ("failed", failed.key),
    ]
    assert await stores.download_keys.get(done.key) is None
    assert await stores.download_keys.get(failed.key) is not None


# --- apply_results ------------------------------------------------------------------------


@dataclass(frozen=True)
class Reported:
    """A device's result as apply_results reads it."""

    command_id: str
    device_id: str
    status: str = "success"
    version: str | None = "2.1.0"
    error: str | None = None


def template(event: DeviceEvent, **fields: Any) -> TransitionRequest:
    """An event for a results rule: each result brings its rollout, device and command."""
    return TransitionRequest("", "", event, **fields)


UPDATE = StatusRules(
    expected_version="2.1.0",
    matched={
        "installing": template(DeviceEvent.INSTALLING, extra={"downloaded": 1}),
        "success": template(DeviceEvent.SUCCESS, drop_deadline=True),
    },
    mismatched={
        "installing": template(DeviceEvent.INSTALLING, extra={"downloaded": 1}),
        "success": template(
            DeviceEvent.WRONG_VERSION, drop_deadline=True, failure_type="wrong_version"
        ),
    },
)
BACK = template(DeviceEvent.ROLLBACK_SUCCESS, command_field="rollback_command_id")
ROLLBACK = StatusRules(expected_version="", matched={"success": BACK}, mismatched={})
RULES = ResultRules(default=UPDATE, kinds={"rollback": ROLLBACK})


async def test_results_are_matched_to_their_commands_and_moved_by_the_rollouts_rules(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    made = await create_rollout(4, [4], running=True)
    sent = await stores.rollout_devices.dispatch(
        made.id, count=4, reach=4, ack_deadline_ms=ACK_DEADLINE_MS, grant=GRANT
    )
    good, wrong, busy, robbed = sent
    applied = await stores.rollout_devices.apply_results(
        [
            Reported(good.command_id, good.device_id),
            Reported(wrong.command_id, wrong.device_id, version="9.9.9"),
            Reported(busy.command_id, busy.device_id, "installing", None),
            Reported("no-such-command", good.device_id),
            Reported(robbed.command_id, good.device_id),  # forged on another device's topic
            Reported(good.command_id, good.device_id),  # delivered twice
        ],
        {made.id: RULES},
        at_ms=1234,
    )
    assert applied.needed == []
    assert [(o.outcome, o.event, o.detail) for o in applied.outcomes] == [
        ("applied", "success", "succeeded"),
        ("applied", "wrong_version", "failed"),
        ("applied", "installing", "installing"),
        ("unknown_command", "", ""),
        ("wrong_device", "", robbed.device_id),
        ("no_transition", "success", "succeeded"),
    ]
    assert [o.matched for o in applied.outcomes] == [True, True, True, False, False, True]
    assert applied.outcomes[0] == ResultOutcome(
        "applied",
        "download_firmware",
        applied.outcomes[0].sent_at,
        made.id,
        "success",
        "succeeded",
    )
    assert applied.outcomes[0].sent_at.endswith("Z")
    assert await nonzero_counts(stores, made.id) == {
        "all:succeeded": 1,
        "all:failed": 1,
        "all:installing": 1,
        "all:sent": 1,
        "0:succeeded": 1,
        "0:failed": 1,
        "0:installing": 1,
        "0:sent": 1,
        "fail:wrong_version": 1,
    }
    assert (await stores.rollout_devices.device(made.id, busy.device_id))["downloaded"] == "1"
    assert await stores.download_keys.get(good.key) is None
    assert await stores.download_keys.get(wrong.key) is not None
    assert await deadlines(stores, made.id) == {
        busy.device_id: ACK_DEADLINE_MS,
        robbed.device_id: ACK_DEADLINE_MS,
    }
    record = await stores.rollouts.get(made.id)
    assert record is not None
    assert record.last_result_ms == 1234


async def test_results_keep_any_text_of_ids_and_versions_intact(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    odd = f"dev-é-😀-{uuid.uuid4().hex[:6]}"
    made = await create_rollout(devices=[odd], reach=[1], running=True)
    [(device_id, command_id)] = await dispatch(stores, made, 1, 1)
    applied = await stores.rollout_devices.apply_results(
        [
            Reported('cmd-"quoted"\\back\nline\u0000nul', odd),
            Reported(command_id, device_id, version="2.1.0\u0000"),
            Reported(command_id, device_id, version="2.1.0"),
        ],
        {made.id: RULES},
    )
    assert [(o.outcome, o.event) for o in applied.outcomes] == [
        ("unknown_command", ""),
        ("applied", "wrong_version"),
        ("no_transition", "success"),
    ]
    assert await state_of(stores, made.id, odd) == "failed"


async def test_results_about_a_rollout_without_rules_write_nothing_and_name_it(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    made = await create_rollout(2, [2], running=True)
    other = await create_rollout(1, [1], running=True)
    [(device_id, command_id)] = await dispatch(stores, made, 1, 2)
    [(other_device, other_command)] = await dispatch(stores, other, 1, 1)
    before = await stores.rollouts.counts(made.id)
    results = [Reported(command_id, device_id), Reported(other_command, other_device)]
    applied = await stores.rollout_devices.apply_results(results, {made.id: RULES})
    assert (applied.outcomes, applied.needed) == ([], [other.id])
    assert await stores.rollouts.counts(made.id) == before
    assert await state_of(stores, made.id, device_id) == "sent"
    record = await stores.rollouts.get(made.id)
    assert record is not None
    assert record.last_result_ms == 0
    applied = await stores.rollout_devices.apply_results(results, {made.id: RULES, other.id: RULES})
    assert [o.outcome for o in applied.outcomes] == ["applied", "applied"]


async def test_results_outside_rollouts_or_about_a_gone_rollout_move_nothing(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    made = await create_rollout(1, [1], running=True)
    [(device_id, command_id)] = await dispatch(stores, made, 1, 1)
    await stores.commands.record(
        [(device_id, "cmd-reboot")], project_id=PROJECT, command="reboot", sent_at=AT
    )
    applied = await stores.rollout_devices.apply_results(
        [Reported("cmd-reboot", device_id), Reported(command_id, device_id)], {made.id: None}
    )
    assert applied.outcomes == [
        ResultOutcome("no_rollout", "reboot", AT, "", "", ""),
        ResultOutcome(
            "unknown_rollout", "download_firmware", applied.outcomes[1].sent_at, made.id, "", ""
        ),
    ]
    assert await state_of(stores, made.id, device_id) == "sent"


async def test_a_rollback_result_follows_the_rules_of_its_command_kind(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    made = await create_rollout(1, [1], running=True)
    [(device_id, _)] = await dispatch(stores, made, 1, 1)
    await stores.rollout_devices.transition(made.id, device_id, DeviceEvent.SUCCESS)
    await stores.rollout_devices.transition(made.id, device_id, DeviceEvent.ROLLBACK_SEND)
    await stores.rollout_devices.set_device_fields(
        made.id, device_id, rollback_command_id="cmd-back"
    )
    await stores.commands.record(
        [(device_id, "cmd-back")],
        project_id=PROJECT,
        command="download_firmware",
        sent_at=AT,
        rollout_id=made.id,
        kind="rollback",
    )
    applied = await stores.rollout_devices.apply_results(
        [
            Reported("cmd-back", device_id, "installing", None),
            Reported("cmd-back", device_id, "success", "1.0.0"),
        ],
        {made.id: RULES},
    )
    assert [(o.outcome, o.event, o.detail) for o in applied.outcomes] == [
        ("no_event", "", ""),
        ("applied", "rollback_success", "rolled_back"),
    ]


async def test_rules_giving_one_event_two_meanings_are_refused(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    made = await create_rollout(1, [1], running=True)
    [(device_id, command_id)] = await dispatch(stores, made, 1, 1)
    twice = StatusRules(
        expected_version="",
        matched={"success": template(DeviceEvent.SUCCESS)},
        mismatched={"success": template(DeviceEvent.SUCCESS, drop_deadline=True)},
    )
    with pytest.raises(ValueError, match="two meanings"):
        await stores.rollout_devices.apply_results(
            [Reported(command_id, device_id)], {made.id: ResultRules(default=twice)}
        )


async def test_deadlines_are_set_kept_or_dropped_by_the_transition_and_due_finds_late_ones(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    made = await create_rollout(4, [4], running=True)
    a, b, c, d = made.devices
    await stores.rollout_devices.dispatch(
        made.id, count=4, reach=4, ack_deadline_ms=1_000, grant=GRANT
    )
    assert await deadlines(stores, made.id) == dict.fromkeys(made.devices, 1_000)
    await stores.rollout_devices.transition(made.id, a, DeviceEvent.KEY_CLAIMED, deadline_ms=5_000)
    await stores.rollout_devices.transition(made.id, b, DeviceEvent.KEY_CLAIMED)
    await stores.rollout_devices.transition(made.id, c, DeviceEvent.SUCCESS, drop_deadline=True)
    await stores.rollout_devices.transition(made.id, d, DeviceEvent.INSTALLING, deadline_ms=3_000)
    assert await deadlines(stores, made.id) == {a: 5_000, b: 1_000, d: 3_000}
    assert await stores.rollout_devices.due(made.id, at_ms=999) == []
    assert await stores.rollout_devices.due(made.id, at_ms=1_000) == [b]
    assert await stores.rollout_devices.due(made.id, at_ms=4_000) == [b, d]
    assert await stores.rollout_devices.due(made.id, at_ms=9_000, limit=2) == [b, d]
    assert await stores.rollout_devices.due(made.id, at_ms=9_000) == [b, d, a]
    # A refused transition leaves the deadline as it was.
    refused = await stores.rollout_devices.transition(
        made.id, a, DeviceEvent.SEND, drop_deadline=True
    )
    assert refused.refused == "no_transition"
    assert (await deadlines(stores, made.id))[a] == 5_000
    assert await stores.rollout_devices.with_deadlines(made.id) == [b, d, a]
    await stores.rollout_devices.drop_deadline(made.id, b)
    assert await stores.rollout_devices.due(made.id, at_ms=9_000) == [d, a]
    assert await stores.rollout_devices.with_deadlines(made.id) == [d, a]


# --- counters under any sequence of events ----------------------------------------------

REACH = [1, 2, 4]  # few devices, so random events often hit the same one again
WAVE_SIZES = [1, 1, 2]
# Drawn as often as all the other events together: fail, time out and retry need each other.
RETRY_CYCLE = [DeviceEvent.FAILED, DeviceEvent.TIMED_OUT, DeviceEvent.RETRY]


@dataclass(frozen=True)
class Dispatch:
    count: int
    wave: int


@dataclass(frozen=True)
class Apply:
    device: int
    event: DeviceEvent
    retries: int


@dataclass
class Model:
    """What the store should hold: a plain-Python reading of the domain table and the scripts."""

    states: list[DeviceState]
    waves: list[int]
    failure: list[str]
    attempts: list[int]
    retry: list[int] = field(default_factory=list)
    cursor: int = 0

    def dispatch(self, count: int, reach: int) -> list[int]:
        sent: list[int] = []

        def send(i: int) -> None:
            if self.states[i] is D.PENDING:
                self.states[i] = D.SENT
                self.attempts[i] += 1
                sent.append(i)

        while len(sent) < count and self.retry:
            send(self.retry.pop(0))
        while len(sent) < count and self.cursor < reach:
            self.cursor += 1
            send(self.cursor - 1)
        return sent

    def apply(self, i: int, event: DeviceEvent, retries: int, failure_type: str) -> Transition:
        old = self.states[i]
        new = DEVICE_TRANSITIONS[event].get(old)
        if new is None:
            return Transition(old=old.value, new="", refused="no_transition")
        if new in {D.FAILED, D.TIMED_OUT} and retries >= 0 and self.attempts[i] <= retries:
            new = D.PENDING
        if new is D.PENDING:
            self.retry.append(i)
        if old in FAILED_DEVICE_STATES:
            self.failure[i] = ""
        if new in FAILED_DEVICE_STATES:
            self.failure[i] = failure_type or new.value
        self.states[i] = new
        return Transition(old=old.value, new=new.value)

    def counts(self) -> dict[str, int]:
        tally: Counter[str] = Counter()
        for state, wave, failure in zip(self.states, self.waves, self.failure, strict=True):
            tally[counters.total(state)] += 1
            tally[counters.in_wave(wave, state)] += 1
            if failure:
                tally[counters.failures(failure)] += 1
        return dict(tally)


steps = st.lists(
    st.one_of(
        st.builds(Dispatch, count=st.integers(1, 4), wave=st.integers(0, len(REACH) - 1)),
        st.builds(
            Apply,
            device=st.integers(0, sum(WAVE_SIZES) - 1),
            event=st.sampled_from(list(DeviceEvent)) | st.sampled_from(RETRY_CYCLE),
            retries=st.integers(-1, 2),
        ),
    ),
    min_size=10,
    max_size=50,
)


@hypothesis_settings(
    database=None,
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=steps)
async def test_counters_always_add_up_to_the_devices_whatever_the_events(
    stores: Stores, create_rollout: CreateRollout, steps: list[Dispatch | Apply]
) -> None:
    made = await create_rollout(sum(WAVE_SIZES), REACH, running=True)
    n = len(made.devices)
    model = Model(
        states=[D.PENDING] * n,
        waves=[w for w, size in enumerate(WAVE_SIZES) for _ in range(size)],
        failure=[""] * n,
        attempts=[0] * n,
    )
    for step in steps:
        if isinstance(step, Dispatch):
            sent = await dispatch(stores, made, step.count, REACH[step.wave])
            expected = model.dispatch(step.count, REACH[step.wave])
            assert [device_id for device_id, _ in sent] == [made.devices[i] for i in expected]
        else:
            failure_type = "wrong_version" if step.event is DeviceEvent.WRONG_VERSION else ""
            result = await stores.rollout_devices.transition(
                made.id,
                made.devices[step.device],
                step.event,
                retries=step.retries,
                failure_type=failure_type,
            )
            assert result == model.apply(step.device, step.event, step.retries, failure_type)
        counts = await stores.rollouts.counts(made.id)
        assert sum(counters.by_state(counts).values()) == n
        for wave, size in enumerate(WAVE_SIZES):
            assert sum(counters.by_state(counts, wave).values()) == size
        assert {k: v for k, v in counts.items() if v} == model.counts()
        assert await retry_list(stores, made.id) == [made.devices[i] for i in model.retry]
    rows = await stores.rollout_devices.device_states(made.id, made.devices)
    assert [row["state"] for row in rows] == [state.value for state in model.states]
    record = await stores.rollouts.get(made.id)
    assert record is not None
    assert record.cursor == model.cursor


# --- concurrency -------------------------------------------------------------------------


async def test_fifty_concurrent_copies_of_one_event_apply_exactly_once(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    made = await create_rollout(1, [1], running=True)
    [(device_id, command_id)] = await dispatch(stores, made, 1, 1)
    results = await asyncio.gather(
        *(
            stores.rollout_devices.transition(
                made.id, device_id, DeviceEvent.KEY_CLAIMED, command_id=command_id
            )
            for _ in range(50)
        )
    )
    assert results.count(Transition(old="sent", new="downloading")) == 1
    assert results.count(Transition(old="downloading", new="", refused="no_transition")) == 49
    assert await nonzero_counts(stores, made.id) == {"all:downloading": 1, "0:downloading": 1}


@pytest.mark.parametrize(("devices", "reach"), [(40, 40), (100, 100), (100, 50)])
async def test_concurrent_dispatches_send_every_device_at_most_once_up_to_the_reach(
    stores: Stores, create_rollout: CreateRollout, devices: int, reach: int
) -> None:
    made = await create_rollout(devices, [reach, devices], running=True)
    batches = await asyncio.gather(*(dispatch(stores, made, 7, reach) for _ in range(10)))
    sent = [device_id for batch in batches for device_id, _ in batch]
    expected = min(70, reach)
    assert len(sent) == len(set(sent)) == expected
    assert sorted(sent) == made.devices[:expected]
    commands = [command_id for batch in batches for _, command_id in batch]
    assert len(set(commands)) == expected
    assert (await stores.rollouts.counts(made.id))["all:sent"] == expected
    record = await stores.rollouts.get(made.id)
    assert record is not None
    assert record.cursor == expected


# --- leases and device locks -------------------------------------------------------------


async def test_a_lease_is_held_by_one_owner_who_can_renew_it_until_released(
    stores: Stores,
) -> None:
    rollout_id = str(uuid.uuid4())
    lease = stores.keys.rollout_lease(rollout_id)
    leases = stores.leases
    assert await leases.acquire(rollout_id, "A", 1_000)
    assert not await leases.acquire(rollout_id, "B", 60_000)
    assert await leases.acquire(rollout_id, "A", 60_000)
    assert await stores.redis.pttl(lease) > 1_000  # renewed to the new ttl
    await leases.release(rollout_id, "B")  # not B's to give back
    assert await stores.redis.get(lease) == "A"
    await leases.release(rollout_id, "A")
    assert await leases.acquire(rollout_id, "B", 60_000)
    assert not await leases.acquire(rollout_id, "A", 60_000)


async def test_a_lapsed_lease_can_be_taken_by_another_owner(stores: Stores) -> None:
    rollout_id = str(uuid.uuid4())
    leases = stores.leases
    assert await leases.acquire(rollout_id, "A", 150)
    assert not await leases.acquire(rollout_id, "B", 60_000)
    await wait_for(lambda: leases.acquire(rollout_id, "B", 60_000), timeout_s=5)
    assert await stores.redis.get(stores.keys.rollout_lease(rollout_id)) == "B"
    assert not await leases.acquire(rollout_id, "A", 60_000)


async def test_device_rollouts_name_the_rollout_holding_each_device(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    first = await create_rollout(2, [2], running=True)
    second = await create_rollout(2, [2])
    free = device_ids(1)[0]
    query = [first.devices[0], second.devices[1], free, first.devices[1]]
    assert await stores.rollout_devices.device_rollouts(query) == [
        first.id,
        second.id,
        None,
        first.id,
    ]
    assert await stores.rollout_devices.device_rollouts([]) == []
    assert await stores.rollout_devices.device_rollout(second.devices[0]) == second.id
    assert await stores.rollout_devices.device_rollout(free) is None
    await move(stores, first.id, RolloutState.RUNNING, RolloutState.ABORTED)
    await stores.rollout_devices.release_devices(first.id)
    assert await stores.rollout_devices.device_rollouts(query) == [None, second.id, None, None]
