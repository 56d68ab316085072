"""One path for state changes: an action, or an action and the one it leads on to, in one step."""

from __future__ import annotations

import uuid

from orchestrator.domain.states import RolloutAction, RolloutState
from orchestrator.engine import actions
from orchestrator.store import Stores
from tests.engine.conftest import stored_rollout


async def test_a_start_that_goes_on_to_wait_for_approval_is_one_step_with_both_entries(
    stores: Stores,
) -> None:
    rollout_id, _ = await stored_rollout(stores, [f"dev-{uuid.uuid4().hex[:8]}"])
    record = await stores.rollouts.get(rollout_id)
    assert record is not None
    assert record.state is RolloutState.PENDING
    applied = await actions.apply(
        stores,
        record,
        RolloutAction.START,
        actor="engine",
        reason="started by the engine",
        then=(RolloutAction.WAIT_APPROVAL, "wave canary waits for approval"),
    )
    assert (applied.old, applied.new, applied.changed) == (
        "pending",
        RolloutState.WAITING_APPROVAL,
        True,
    )
    after = await stores.rollouts.get(rollout_id)
    assert after is not None
    assert (after.state, after.reason) == ("waiting_approval", "wave canary waits for approval")
    trail = [
        (event["action"], event.get("from"), event["to"], event["reason"])
        for event in await stores.audit.events(rollout_id)
        if event.get("to")
    ]
    assert trail[-2:] == [
        ("start", "pending", "running", "started by the engine"),
        ("wait_approval", "running", "waiting_approval", "wave canary waits for approval"),
    ]


async def test_a_chain_from_a_state_the_rollout_has_left_changes_nothing(stores: Stores) -> None:
    rollout_id, _ = await stored_rollout(stores, [f"dev-{uuid.uuid4().hex[:8]}"])
    pending = await stores.rollouts.get(rollout_id)
    assert pending is not None
    await actions.apply(stores, pending, RolloutAction.START, actor="engine", reason="started")
    before = await stores.audit.events(rollout_id)
    # A second engine still holding the pending record: its chain must not apply.
    applied = await actions.apply(
        stores,
        pending,
        RolloutAction.START,
        actor="engine",
        reason="started again",
        then=(RolloutAction.WAIT_APPROVAL, "waits"),
    )
    assert (applied.old, applied.changed) == ("running", False)
    after = await stores.rollouts.get(rollout_id)
    assert after is not None
    assert after.state is RolloutState.RUNNING
    assert await stores.audit.events(rollout_id) == before
