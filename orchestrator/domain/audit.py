"""The actions a rollout's audit trail records."""

from __future__ import annotations

from enum import StrEnum

from orchestrator.domain.states import RolloutAction, RolloutState


class AuditNote(StrEnum):
    """An audit entry that records no state change."""

    CREATE = "create"  # the rollout was created (pending)
    WAVE_DONE = "wave_done"  # every device of the wave is final; it bakes, then is judged
    WAVE_STARTED = "wave_start"  # the wave before passed its judgement: the next one is sent
    ENGINE_GAVE_UP = "engine_gave_up"  # the engine cannot drive the rollout (the reason says why)


# What an audit entry says happened: a state change (the RolloutAction that made it) or a note.
# The two enums share no value, so an entry's action names one of them alone.
AuditAction = RolloutAction | AuditNote


def rebases_policy(old: RolloutState, new: RolloutState) -> bool:
    """Whether the change judges only devices that finish from now on.

    Resuming a halted rollout accepts the failures that halted it: a person looked at them.
    """
    return old is RolloutState.HALTED and new is RolloutState.RUNNING
