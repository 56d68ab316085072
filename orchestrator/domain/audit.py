"""The actions a rollout's audit trail records."""

from __future__ import annotations

from enum import StrEnum

from orchestrator.domain.states import RolloutAction, RolloutState


class AuditAction(StrEnum):
    """What an audit entry says happened: a state change (a RolloutAction) or a note."""

    CREATE = "create"
    START = "start"
    PAUSE = "pause"
    RESUME = "resume"
    PROMOTE = "promote"
    ABORT = "abort"
    ROLLBACK = "rollback"
    WAIT_APPROVAL = "wait_approval"
    HALT = "halt"
    COMPLETE = "complete"
    ROLLBACK_DONE = "rollback_done"
    ROLLBACK_INCOMPLETE = "rollback_incomplete"
    WAVE_DONE = "wave_done"  # every device of the wave is final; it bakes, then is judged
    WAVE_STARTED = "wave_start"  # the wave before passed its judgement: the next one is sent
    ENGINE_GAVE_UP = "engine_gave_up"  # the engine cannot drive the rollout (the reason says why)

    @classmethod
    def of(cls, action: RolloutAction) -> AuditAction:
        """The entry a state change by `action` records."""
        return cls(action.value)


def rebases_policy(old: RolloutState, new: RolloutState) -> bool:
    """Whether the change judges only devices that finish from now on.

    Resuming a halted rollout accepts the failures that halted it: a person looked at them.
    """
    return old is RolloutState.HALTED and new is RolloutState.RUNNING
