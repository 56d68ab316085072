"""The batched device moves on real Redis: devices past their deadline (`expire`), and
transitions limited to some states that revoke keys or mark commands unpublished with them."""

from __future__ import annotations

from orchestrator.domain.states import DeviceEvent, DeviceState
from orchestrator.store import Stores
from orchestrator.store.device_events import TransitionRequest
from orchestrator.store.rollout_devices import Transition
from tests.store.test_rollouts import (
    ACK_DEADLINE_MS,
    GRANT,
    CreateRollout,
    deadlines,
    nonzero_counts,
    retry_list,
    state_of,
)


async def test_expire_times_out_each_late_device_or_fails_its_rollback_and_revokes_its_key(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    made = await create_rollout(4, [4], running=True)
    devices = stores.rollout_devices
    late, back, moved_on, early = await devices.dispatch(
        made.id, count=4, reach=4, ack_deadline_ms=1_000, grant=GRANT
    )
    await devices.transitions(
        [
            TransitionRequest(made.id, back.device_id, DeviceEvent.KEY_CLAIMED),
            TransitionRequest(
                made.id, back.device_id, DeviceEvent.ROLLBACK_SEND, deadline_ms=1_500
            ),
            # Final without dropping its deadline: a passed deadline finds nothing to do.
            TransitionRequest(made.id, moved_on.device_id, DeviceEvent.SUCCESS),
            TransitionRequest(made.id, early.device_id, DeviceEvent.KEY_CLAIMED, deadline_ms=9_000),
        ]
    )
    expired = await devices.expire(made.id, at_ms=2_000, retries=0)
    assert expired == [
        (late.device_id, Transition(old="sent", new="timed_out")),
        (moved_on.device_id, Transition(old="succeeded", new="", refused="no_transition")),
        (back.device_id, Transition(old="rollback_sent", new="rollback_failed")),
    ]
    assert await nonzero_counts(stores, made.id) == {
        "all:timed_out": 1,
        "all:rollback_failed": 1,
        "all:succeeded": 1,
        "all:downloading": 1,
        "0:timed_out": 1,
        "0:rollback_failed": 1,
        "0:succeeded": 1,
        "0:downloading": 1,
        "fail:timed_out": 1,
    }
    assert (await devices.device(made.id, late.device_id))["failure"] == "timed_out"
    assert await stores.download_keys.get(late.key) is None
    assert await stores.download_keys.get(back.key) is None
    assert await stores.download_keys.get(early.key) is not None
    # Every deadline dealt with is gone, applied or not; a later one stays.
    assert await deadlines(stores, made.id) == {early.device_id: 9_000}
    assert await devices.expire(made.id, at_ms=2_000, retries=0) == []


async def test_expire_sends_a_late_device_back_to_pending_while_the_plan_allows_retries(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    made = await create_rollout(2, [2], running=True)
    devices = stores.rollout_devices
    first, _ = await devices.dispatch(made.id, count=2, reach=2, ack_deadline_ms=1_000, grant=GRANT)
    expired = dict(await devices.expire(made.id, at_ms=1_000, retries=1))
    assert expired[first.device_id] == Transition(old="sent", new="pending")
    assert await retry_list(stores, made.id) == sorted(expired)
    record = await devices.device(made.id, first.device_id)
    assert (record["state"], record["last_failure"]) == ("pending", "timed_out")
    assert await stores.download_keys.get(first.key) is None
    # The second send was its last allowed: the next deadline passing is final.
    [again] = await devices.dispatch(made.id, count=1, reach=2, ack_deadline_ms=1_000, grant=GRANT)
    assert again.device_id == first.device_id
    assert await devices.expire(made.id, at_ms=1_000, retries=1) == [
        (first.device_id, Transition(old="sent", new="timed_out"))
    ]


async def test_expire_takes_at_most_limit_devices_soonest_first(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    made = await create_rollout(5, [5], running=True)
    devices = stores.rollout_devices
    await devices.dispatch(made.id, count=5, reach=5, ack_deadline_ms=ACK_DEADLINE_MS, grant=GRANT)
    for at_ms, device_id in zip([50, 10, 40, 20, 30], made.devices, strict=True):
        await devices.transition(made.id, device_id, DeviceEvent.RECEIVED, deadline_ms=at_ms)
    batches = [
        [device_id for device_id, _ in await devices.expire(made.id, at_ms=100, retries=0, limit=2)]
        for _ in range(4)
    ]
    d = made.devices
    assert batches == [[d[1], d[3]], [d[4], d[2]], [d[0]], []]


async def test_a_limited_cancel_moves_only_devices_in_its_states_and_revokes_their_keys(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    made = await create_rollout(3, [3], running=True)
    devices = stores.rollout_devices
    unstarted, started = await devices.dispatch(
        made.id, count=2, reach=3, ack_deadline_ms=ACK_DEADLINE_MS, grant=GRANT
    )
    await devices.transition(made.id, started.device_id, DeviceEvent.KEY_CLAIMED)
    never_sent = made.devices[2]
    outcomes = await devices.transitions(
        [
            TransitionRequest(
                made.id,
                device_id,
                DeviceEvent.CANCEL,
                only_from=frozenset({DeviceState.SENT}),
                drop_deadline=True,
                revoke_key=True,
            )
            for device_id in (unstarted.device_id, started.device_id, never_sent)
        ]
    )
    assert outcomes == [
        Transition(old="sent", new="cancelled"),
        Transition(old="downloading", new="", refused="no_transition"),
        Transition(old="pending", new="", refused="no_transition"),  # CANCEL's, but not asked
    ]
    assert await stores.download_keys.get(unstarted.key) is None
    assert await stores.download_keys.get(started.key) is not None
    assert await deadlines(stores, made.id) == {started.device_id: ACK_DEADLINE_MS}


async def test_a_rollback_send_marks_its_command_unpublished_in_the_same_step(
    stores: Stores, create_rollout: CreateRollout
) -> None:
    made = await create_rollout(2, [2], running=True)
    devices = stores.rollout_devices
    took, skipped = await devices.dispatch(
        made.id, count=2, reach=2, ack_deadline_ms=ACK_DEADLINE_MS, grant=GRANT
    )
    await devices.transition(made.id, took.device_id, DeviceEvent.SUCCESS)
    await devices.mark_published(made.id, took.device_id, skipped.device_id)
    outcomes = await devices.transitions(
        [
            TransitionRequest(
                made.id,
                device_id,
                DeviceEvent.ROLLBACK_SEND,
                deadline_ms=5_000,
                extra={"rollback_command_id": f"back-{device_id}", "resends": 0},
                unpublished=True,
            )
            for device_id in (took.device_id, skipped.device_id)
        ]
    )
    assert [outcome.applied for outcome in outcomes] == [True, False]
    assert await devices.unpublished(made.id) == [took.device_id]
    record = await devices.device(made.id, took.device_id)
    assert (record["state"], record["rollback_command_id"]) == (
        "rollback_sent",
        f"back-{took.device_id}",
    )
    assert await state_of(stores, made.id, skipped.device_id) == "sent"
