"""The engine gives up on a rollout it cannot drive, says why once, and never crash-loops.

Real Redis and mosquitto, a real Engine: the rollouts are written to the store the way an
older version (no maxima) or a bug would have left them.
"""

from __future__ import annotations

import asyncio
import gc
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from orchestrator.domain.audit import AuditNote
from orchestrator.domain.states import RolloutState
from orchestrator.embedded import EmbeddedBroker
from orchestrator.engine.context import EngineContext
from orchestrator.engine.driver import GIVE_UP_AFTER
from orchestrator.engine.engine import Engine
from orchestrator.metrics import Metrics
from orchestrator.settings import Settings
from orchestrator.store import Stores
from orchestrator.store.rollouts import RolloutRecord
from orchestrator.transport.mqtt import CommandTransport
from tests.conftest import wait_for
from tests.engine.conftest import PLAN, stored_rollout
from tests.store.test_rollouts import move, start

WAIT_S = 15.0
# What a plan could hold before durations had a maximum: the driver's int(inf) crashed on it.
ENDLESS = {**PLAN, "policy": {"ack_timeout": 1e306, "device_timeout": 1e306}}


@pytest.fixture
def mqtt_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A mosquitto of this test's own: the engine's persistent session in the shared group
    `ota-engine` would otherwise be handed a share of later tests' results."""
    with EmbeddedBroker(tmp_path / "mqtt", kind="mosquitto").start() as broker:
        yield broker


@pytest.fixture
async def engine(
    settings: Settings, stores: Stores, transport: CommandTransport
) -> AsyncIterator[Engine]:
    running = Engine(EngineContext(settings, stores, transport, Metrics(CollectorRegistry())))
    await running.start()
    yield running
    await running.stop()


def two_devices() -> list[str]:
    return [f"dev-{uuid.uuid4().hex[:8]}" for _ in range(2)]


async def record_of(stores: Stores, rollout_id: str) -> RolloutRecord:
    record = await stores.rollouts.get(rollout_id)
    assert record is not None
    return record


async def gave_up(stores: Stores, rollout_id: str) -> list[dict[str, Any]]:
    events = await stores.audit.events(rollout_id)
    return [e for e in events if e.get("action") == AuditNote.ENGINE_GAVE_UP]


async def lease_renewed_twice(stores: Stores, rollout_id: str) -> None:
    """Wait until the driver has renewed its lease twice: it went on looping, on purpose."""
    key = stores.keys.rollout_lease(rollout_id)
    renewals, last = 0, await stores.redis.pttl(key)
    async with asyncio.timeout(WAIT_S):
        while renewals < 2:
            await asyncio.sleep(0.02)
            now = await stores.redis.pttl(key)
            renewals += now > last
            last = now


async def test_a_rollout_whose_stored_plan_no_longer_validates_is_given_up_once_with_the_reason(
    stores: Stores, engine: Engine, loop_errors: list[dict[str, Any]]
) -> None:
    rollout_id, _ = await stored_rollout(stores, two_devices(), ENDLESS)
    with capture_logs() as logs:
        await wait_for(lambda: _has_gave_up(stores, rollout_id), timeout_s=WAIT_S)
        await lease_renewed_twice(stores, rollout_id)  # still driven, not given up again
        record = await record_of(stores, rollout_id)
        # Pending stays pending (a halt would let `resume` skip the first start); the reason
        # says why and what to do, and so does the audit event.
        assert record.state is RolloutState.PENDING
        assert record.reason == (
            "the engine cannot drive this rollout: its plan no longer validates: "
            "policy.ack_timeout must be at most 168h (7 days), got 1e+306s; "
            "policy.device_timeout must be at most 168h (7 days), got 1e+306s; "
            "abort it and apply a corrected plan"
        )
        [event] = await gave_up(stores, rollout_id)
        assert event["reason"] == record.reason
        assert event["details"] == {"state": "pending"}
        # A person aborts it: the engine finishes it like any other (no plan needed for that).
        assert await move(stores, rollout_id, RolloutState.PENDING, RolloutState.ABORTED) == (
            "pending",
            True,
        )
        await wait_for(lambda: _not_driven(engine, rollout_id), timeout_s=WAIT_S)
    assert len(await gave_up(stores, rollout_id)) == 1
    assert [e for e in logs if e["event"].startswith("background task failed")] == []
    assert [e["event"] for e in logs if e["log_level"] == "error"] == [
        "engine gave up on the rollout"
    ]
    gc.collect()
    assert loop_errors == []


async def test_a_running_rollout_whose_steps_keep_failing_is_halted_after_a_few_tries(
    stores: Stores, engine: Engine, loop_errors: list[dict[str, Any]]
) -> None:
    rollout_id, _ = await stored_rollout(stores, two_devices())
    await start(stores, rollout_id)
    # A bug's worth of state: the wave reaches are gone, so every step raises IndexError.
    await stores.redis.hset(stores.keys.rollout(rollout_id), "reach", "[]")
    with capture_logs() as logs:
        await wait_for(lambda: _in_state(stores, rollout_id, RolloutState.HALTED), WAIT_S)
        await lease_renewed_twice(stores, rollout_id)
    record = await record_of(stores, rollout_id)
    assert record.reason == (
        f"the engine cannot drive this rollout: a step failed {GIVE_UP_AFTER} times in a row "
        "(IndexError: list index out of range); the engine's log has the traceback; fix the "
        "cause, then resume it, or abort it"
    )
    halts = [e for e in await stores.audit.events(rollout_id) if e.get("action") == "halt"]
    assert [(e["from"], e["to"], e["actor"]) for e in halts] == [("running", "halted", "engine")]
    failed = [e for e in logs if e["event"] == "rollout step failed"]
    assert len(failed) == GIVE_UP_AFTER  # then it waits for a person: no more tries
    assert all(e["exc_info"] is True for e in failed)
    assert [e["retry_in_s"] for e in failed] == [0.1, 0.2, 0.4]
    assert [e for e in logs if e["event"].startswith("background task failed")] == []
    gc.collect()
    assert loop_errors == []


async def _has_gave_up(stores: Stores, rollout_id: str) -> bool:
    return bool(await gave_up(stores, rollout_id))


async def _in_state(stores: Stores, rollout_id: str, state: RolloutState) -> bool:
    return (await record_of(stores, rollout_id)).state is state


async def _not_driven(engine: Engine, rollout_id: str) -> bool:
    return rollout_id not in engine.driving
