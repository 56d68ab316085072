"""The driver moves many devices in a few round trips: deadlines passing, a halt's cancels and
the rollback's sends take one script call per batch, not a few calls per device, and a step
killed half-way neither loses nor repeats a device's move.

Real Redis and mosquitto; round trips are counted by wrapping the Redis client's
`execute_command` (scripts, plain commands) and its pipelines' `execute`.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from orchestrator.domain import counters
from orchestrator.domain.plans import Plan
from orchestrator.domain.states import DeviceEvent, DeviceState, RolloutAction, RolloutState
from orchestrator.engine.context import EngineContext
from orchestrator.engine.driver import RolloutDriver
from orchestrator.metrics import Metrics
from orchestrator.settings import Settings
from orchestrator.store import Stores
from orchestrator.store.device_events import TransitionRequest
from orchestrator.store.rollout_devices import EXPIRE_BATCH, Dispatched, Grant
from orchestrator.store.rollouts import RolloutRecord
from orchestrator.transport.mqtt import CommandTransport
from tests.engine.conftest import FIRMWARE, stored_rollout
from tests.store.test_rollouts import start

DEVICES = 1000
PAST_MS = 1  # a deadline long gone
LATER_MS = 4_000_000_000_000  # a deadline far ahead


class RoundTrips:
    """Counts what a Redis client sends, by command (a pipeline counts once, as PIPELINE)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, stores: Stores) -> None:
        self.sent: Counter[str] = Counter()
        self.scripts: Counter[str] = Counter()  # EVALSHA calls by script sha
        redis: Any = stores.redis  # redis-py leaves execute_command untyped
        execute_command = redis.execute_command
        pipeline = redis.pipeline

        async def counted(*args: Any, **options: Any) -> Any:
            name = str(args[0]).upper()
            self.sent[name] += 1
            if name == "EVALSHA":
                self.scripts[str(args[1])] += 1
            return await execute_command(*args, **options)

        def counted_pipeline(*args: Any, **options: Any) -> Any:
            pipe: Any = pipeline(*args, **options)
            execute = pipe.execute

            async def counted_execute(*args: Any, **options: Any) -> Any:
                self.sent["PIPELINE"] += 1
                return await execute(*args, **options)

            pipe.execute = counted_execute
            return pipe

        monkeypatch.setattr(redis, "execute_command", counted)
        monkeypatch.setattr(redis, "pipeline", counted_pipeline)

    def clear(self) -> None:
        """Start counting again."""
        self.sent.clear()
        self.scripts.clear()

    def total(self) -> int:
        """Round trips so far."""
        return sum(self.sent.values())


@pytest.fixture
async def driven(
    settings: Settings, clean: Stores, transport: CommandTransport
) -> AsyncIterator[Callable[[str], RolloutDriver]]:
    """A `create(rollout_id)` of drivers that share one engine context (stepped by hand)."""
    context = EngineContext(settings, clean, transport, Metrics(CollectorRegistry()))
    made: list[RolloutDriver] = []

    def create(rollout_id: str) -> RolloutDriver:
        made.append(RolloutDriver(rollout_id, context))
        return made[-1]

    yield create
    for driver in made:
        await driver._sender.drain()


async def dispatched(
    stores: Stores, n: int, *, ack_deadline_ms: int
) -> tuple[RolloutRecord, Plan, list[Dispatched]]:
    """A running rollout of `n` devices, every one sent its command."""
    run = uuid.uuid4().hex[:8]
    rollout_id, project_id = await stored_rollout(stores, [f"{run}-{i:04d}" for i in range(n)])
    await start(stores, rollout_id)
    sent = await stores.rollout_devices.dispatch(
        rollout_id,
        count=n,
        reach=n,
        ack_deadline_ms=ack_deadline_ms,
        grant=Grant(project_id=project_id, file_name=FIRMWARE, size=4096, key_ttl_s=600),
    )
    assert len(sent) == n
    await stores.rollout_devices.mark_published(rollout_id, *(item.device_id for item in sent))
    record = await stores.rollouts.get(rollout_id)
    assert record is not None
    return record, Plan.model_validate(record.plan), sent


async def move_all(stores: Stores, rollout_id: str, devices: list[str], **request: Any) -> None:
    """Apply one event to each device, in one call."""
    await stores.rollout_devices.transitions(
        [TransitionRequest(rollout_id, device_id, **request) for device_id in devices]
    )


async def halt(stores: Stores, rollout_id: str, reason: str, **fields: int) -> None:
    """What a halt's own step writes: the state change, with `fields` of the rollout."""
    old, changed = await stores.rollouts.change_state(
        rollout_id,
        allowed_from=[RolloutState.RUNNING],
        to=RolloutState.HALTED,
        reason=reason,
        actor="engine",
        action=RolloutAction.HALT,
        at="2030-01-02T03:04:05Z",
        extra=fields,
    )
    assert (old, changed) == ("running", True)


async def states(stores: Stores, rollout_id: str, devices: list[Dispatched]) -> Counter[str]:
    rows = await stores.rollout_devices.device_states(rollout_id, [d.device_id for d in devices])
    return Counter(row["state"] for row in rows)


async def live_keys(stores: Stores, devices: list[Dispatched]) -> int:
    found = [await stores.download_keys.get(item.key) for item in devices]
    return sum(key is not None for key in found)


async def test_a_sweep_of_a_thousand_late_devices_is_three_script_calls(
    clean: Stores, driven: Callable[[str], RolloutDriver], monkeypatch: pytest.MonkeyPatch
) -> None:
    record, plan, sent = await dispatched(clean, DEVICES, ack_deadline_ms=PAST_MS)
    rolling_back = [item.device_id for item in sent[:10]]
    await move_all(clean, record.id, rolling_back, event=DeviceEvent.KEY_CLAIMED)
    await move_all(
        clean, record.id, rolling_back, event=DeviceEvent.ROLLBACK_SEND, deadline_ms=PAST_MS
    )
    trips = RoundTrips(monkeypatch, clean)
    await driven(record.id)._sweep(record, plan)
    # Two full batches, then one that finds nobody left.
    assert DEVICES // EXPIRE_BATCH == 2
    assert trips.sent == {"EVALSHA": 3}
    assert await states(clean, record.id, sent) == {"timed_out": 990, "rollback_failed": 10}
    counts = await clean.rollouts.counts(record.id)
    assert counts[counters.failures("timed_out")] == 990
    assert await clean.rollout_devices.with_deadlines(record.id) == []
    assert await live_keys(clean, sent) == 0


async def test_a_halt_cancels_a_thousand_unstarted_devices_in_three_round_trips(
    clean: Stores, driven: Callable[[str], RolloutDriver], monkeypatch: pytest.MonkeyPatch
) -> None:
    record, _, sent = await dispatched(clean, DEVICES, ack_deadline_ms=LATER_MS)
    started = sent[:100]
    await move_all(
        clean, record.id, [item.device_id for item in started], event=DeviceEvent.KEY_CLAIMED
    )
    trips = RoundTrips(monkeypatch, clean)
    await driven(record.id)._cancel_unstarted()
    assert trips.sent == {"ZRANGE": 1, "EVALSHA": 2, "HSET": 1}  # HSET: the halt's note, done
    assert await states(clean, record.id, sent) == {"cancelled": 900, "downloading": 100}
    assert await live_keys(clean, sent) == 100  # the downloading devices keep theirs
    assert sorted(await clean.rollout_devices.with_deadlines(record.id)) == sorted(
        item.device_id for item in started
    )


async def test_a_rollback_batch_of_a_thousand_devices_moves_them_in_one_script_call(
    clean: Stores, driven: Callable[[str], RolloutDriver], monkeypatch: pytest.MonkeyPatch
) -> None:
    record, plan, sent = await dispatched(clean, DEVICES, ack_deadline_ms=LATER_MS)
    took = [item.device_id for item in sent[:600]]
    await move_all(clean, record.id, took, event=DeviceEvent.KEY_CLAIMED, marks={"downloaded": 1})
    await move_all(clean, record.id, took, event=DeviceEvent.SUCCESS, drop_deadline=True)
    trips = RoundTrips(monkeypatch, clean)
    driver = driven(record.id)
    await driver._send_rollback(record, plan, 0, DEVICES)
    await driver._sender.drain()
    device_script = clean.rollout_devices._device.sha
    # The 400 unstarted are cancelled in one call, the 600 sent the rollback in another.
    assert trips.scripts[device_script] == math.ceil(400 / 500) + 1
    assert trips.total() <= 15, trips.sent  # whatever the number of devices
    assert await states(clean, record.id, sent) == {"rollback_sent": 600, "cancelled": 400}
    assert await clean.rollout_devices.unpublished(record.id) == []
    assert await clean.rollouts.rollback_cursor(record.id) == DEVICES


async def test_a_halt_killed_before_its_cancels_has_them_done_by_the_next_step(
    clean: Stores, driven: Callable[[str], RolloutDriver]
) -> None:
    """The policy's halt notes the cancels with the state change; an engine killed right after
    it leaves the note, and the next step (this replica or another) cancels and clears it."""
    record, _, sent = await dispatched(clean, 20, ack_deadline_ms=LATER_MS)
    started = [item.device_id for item in sent[:5]]
    await move_all(clean, record.id, started, event=DeviceEvent.KEY_CLAIMED)
    await halt(clean, record.id, "failure rate over the limit", cancel_unstarted=1)
    assert await states(clean, record.id, sent) == {"sent": 15, "downloading": 5}

    again = driven(record.id)  # the engine died there: the next one steps the rollout
    assert await again.step()
    assert await states(clean, record.id, sent) == {"cancelled": 15, "downloading": 5}
    assert await live_keys(clean, sent) == 5
    halted = await clean.rollouts.get(record.id)
    assert halted is not None
    assert (halted.state, halted.cancel_unstarted) == (RolloutState.HALTED, False)


async def test_a_halt_without_the_note_leaves_its_sent_devices_to_their_deadlines(
    clean: Stores, driven: Callable[[str], RolloutDriver]
) -> None:
    record, _, sent = await dispatched(clean, 4, ack_deadline_ms=LATER_MS)
    await halt(clean, record.id, "the firmware file is gone")  # by no failure policy
    assert await driven(record.id).step()
    assert await states(clean, record.id, sent) == {"sent": 4}


async def test_a_rollback_step_killed_before_publishing_is_finished_by_the_next_one(
    clean: Stores, driven: Callable[[str], RolloutDriver], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing lost: the moved devices wait as unpublished. Nothing twice: each keeps its one
    rollback command, and the step done again moves nobody."""
    record, plan, sent = await dispatched(clean, 20, ack_deadline_ms=LATER_MS)
    took = [item.device_id for item in sent[:12]]
    await move_all(clean, record.id, took, event=DeviceEvent.KEY_CLAIMED, marks={"downloaded": 1})
    crashed = driven(record.id)

    async def killed(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the engine was killed here")

    monkeypatch.setattr(crashed._sender, "publish", killed)
    with pytest.raises(RuntimeError, match="killed"):
        await crashed._send_rollback(record, plan, 0, 20)
    assert await clean.rollout_devices.unpublished(record.id) == sorted(took)
    assert await clean.rollouts.rollback_cursor(record.id) == 0
    rows = await clean.rollout_devices.device_states(record.id, took)
    commands = {
        device_id: row["rollback_command_id"] for device_id, row in zip(took, rows, strict=True)
    }
    assert {row["state"] for row in rows} == {DeviceState.ROLLBACK_SENT.value}

    again = driven(record.id)  # the next engine to hold the rollout
    await again._sender.republish(record, plan)  # every step starts with it
    await again._send_rollback(record, plan, 0, 20)
    await again._sender.drain()
    rows = await clean.rollout_devices.device_states(record.id, took)
    assert {d: row["rollback_command_id"] for d, row in zip(took, rows, strict=True)} == commands
    assert await clean.rollout_devices.unpublished(record.id) == []
    assert await clean.rollouts.rollback_cursor(record.id) == 20
    assert await states(clean, record.id, sent) == {"rollback_sent": 12, "cancelled": 8}
