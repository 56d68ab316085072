"""A device's health soak in rollout_device.lua: its soak's end and heartbeat deadlines, and what
a passed one means (soaked, or silent), on a real Redis."""

from __future__ import annotations

from orchestrator.domain.states import DeviceEvent
from orchestrator.store import Stores
from orchestrator.store.device_events import TransitionRequest
from orchestrator.store.rollout_devices import SOAK_UNTIL_FIELD
from orchestrator.timeutil import now_ms
from tests.store.test_rollouts import (
    CreateRollout,
    deadlines,
    dispatch,
    nonzero_counts,
    state_of,
)

LATER_MS = 10**8  # past every deadline the test sets, whatever the clock did meanwhile


def verify(
    rollout_id: str, device_id: str, *, soak_ms: int, heartbeat_ms: int
) -> TransitionRequest:
    return TransitionRequest(
        rollout_id, device_id, DeviceEvent.VERIFY, soak_ms=soak_ms, heartbeat_ms=heartbeat_ms
    )


async def test_a_success_starts_the_soak_with_the_next_heartbeat_as_its_deadline(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    made = await create_rollout(2, [2], running=True)
    [(short, _), (long, _)] = await dispatch(stores, made, 2, 2)
    before = now_ms()
    await stores.rollout_devices.transitions(
        [
            verify(made.id, long, soak_ms=60_000, heartbeat_ms=10_000),
            verify(made.id, short, soak_ms=5_000, heartbeat_ms=10_000),
        ]
    )
    after = now_ms()
    due = await deadlines(stores, made.id)
    soak_until = {
        d: int((await stores.rollout_devices.device(made.id, d))[SOAK_UNTIL_FIELD])
        for d in (short, long)
    }
    assert before + 60_000 <= soak_until[long] <= after + 60_000
    assert before + 10_000 <= due[long] <= after + 10_000  # the heartbeat comes first
    assert due[short] == soak_until[short]  # the soak ends before the heartbeat
    assert await nonzero_counts(stores, made.id) == {"all:verifying": 2, "0:verifying": 2}


async def test_a_passed_soak_deadline_is_soaked_at_the_soaks_end_and_silent_before_it(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    made = await create_rollout(3, [3], running=True)
    [(silent, _), (soaked, _), (healthy, command_id)] = await dispatch(stores, made, 3, 3)
    devices = stores.rollout_devices
    await devices.transitions(
        [
            verify(made.id, silent, soak_ms=60_000, heartbeat_ms=10_000),
            verify(made.id, soaked, soak_ms=5_000, heartbeat_ms=10_000),
            verify(made.id, healthy, soak_ms=60_000, heartbeat_ms=10_000),
            # a health report moves the heartbeat on, but never past the soak's end
            TransitionRequest(
                made.id, healthy, DeviceEvent.HEALTHY, heartbeat_ms=600_000, command_id=command_id
            ),
        ]
    )
    record = await devices.device(made.id, healthy)
    assert (await deadlines(stores, made.id))[healthy] == int(record[SOAK_UNTIL_FIELD])

    held = await devices.expire(made.id, at_ms=now_ms() + LATER_MS, retries=3, hold_soaks=True)
    assert held == []  # a replica that has not listened a heartbeat long judges no soak
    assert set(await deadlines(stores, made.id)) == {silent, soaked, healthy}

    expired = dict(await devices.expire(made.id, at_ms=now_ms() + LATER_MS, retries=3))
    assert {d: t.new for d, t in expired.items()} == {
        silent: "failed",
        soaked: "succeeded",
        healthy: "succeeded",
    }
    failed = await devices.device(made.id, silent)
    assert (failed["failure"], failed["error"]) == ("unhealthy", "silent")
    assert await state_of(stores, made.id, silent) == "failed"  # not retried, retries or not
    assert await deadlines(stores, made.id) == {}
    assert await nonzero_counts(stores, made.id) == {
        "all:succeeded": 2,
        "0:succeeded": 2,
        "all:failed": 1,
        "0:failed": 1,
        "fail:unhealthy": 1,
    }
    again = await devices.expire(made.id, at_ms=now_ms() + LATER_MS, retries=3)
    assert again == []  # judged once
