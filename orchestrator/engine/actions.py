"""One way to change a rollout's state, for people (the API) and for the engine alike.

The transition table (domain.states) says whether the action is allowed and where it leads; the
domain says what else the change means (a terminal state ends the rollout, resuming a halt
rebases the failure policy); the store applies it in one atomic step with its audit entry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.domain.audit import rebases_policy
from orchestrator.domain.plans import shown_plan
from orchestrator.domain.states import RolloutAction, RolloutState, next_rollout_state
from orchestrator.errors import Conflict
from orchestrator.store import Stores
from orchestrator.store.rollouts import RolloutRecord
from orchestrator.timeutil import isoformat_z, utc_now


@dataclass(frozen=True)
class Applied:
    """What became of an action: the state before it, the state it leads to, and whether the
    rollout was still in the expected state (else nothing changed)."""

    old: str  # "" when the rollout is gone
    new: RolloutState
    changed: bool


async def apply(
    stores: Stores,
    record: RolloutRecord,
    action: RolloutAction,
    *,
    actor: str,
    reason: str,
    details: Mapping[str, Any] | None = None,
    extra: Mapping[str, str | int] | None = None,
    notes: Sequence[Mapping[str, Any]] = (),
    then: tuple[RolloutAction, str] | None = None,
) -> Applied:
    """Move `record`'s rollout by `action` if it is still in the state `record` shows.

    InvalidTransition (409) when its state does not allow the action; Conflict when it asks
    for a rollback the plan gives no firmware for. `extra` fields of the rollout are set, and
    the audit entries `notes` written before the change's own, in the same step. `then` is a
    second action, with its reason, taken in that same step from the state the first leads to
    (a start whose first wave waits for approval): the trail records both.
    """
    at = isoformat_z(utc_now())
    new = next_rollout_state(record.state, action)
    passed_through = None
    if then is not None:
        passed_through = new
        first = {"at": at, "actor": actor, "action": action, "reason": reason}
        notes = [*notes, {**first, "from": record.state, "to": new}]
        action, reason = then
        new = next_rollout_state(passed_through, action)
    if action is RolloutAction.ROLLBACK and shown_plan(record.plan).rollback is None:
        raise Conflict(
            f"rollout {record.id} has no rollback section, so there is no firmware to send "
            "back; abort it to stop it (devices keep the firmware they have), or start a "
            "new rollout of the previous firmware"
        )
    old, changed = await stores.rollouts.change_state(
        record.id,
        allowed_from=[record.state],
        to=new,
        reason=reason,
        actor=actor,
        action=action,
        at=at,
        details=details,
        extra=extra,
        notes=notes,
        recorded_from=passed_through,
        rebase_policy=rebases_policy(record.state, new),
    )
    return Applied(old, new, changed)
