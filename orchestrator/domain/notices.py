"""Rollout notices: which changes of a rollout a project's subscribers hear about."""

from __future__ import annotations

from enum import StrEnum

from orchestrator.domain.audit import AuditNote
from orchestrator.domain.states import RolloutState

CLOUDEVENT_TYPE_PREFIX = "io.ota.rollout."


class Notice(StrEnum):
    """An event a notification subscription may ask for."""

    STARTED = "started"
    WAVE_COMPLETED = "wave_completed"
    PAUSED = "paused"
    RESUMED = "resumed"
    WAITING_APPROVAL = "waiting_approval"
    HALTED = "halted"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"
    COMPLETED = "completed"
    ABORTED = "aborted"


_STATES = frozenset(RolloutState)
_BY_NAME = {notice.value: notice for notice in Notice}


def notice_of(action: str, from_state: str, to_state: str) -> Notice | None:
    """The notice an audit entry gives, or None (a note that changes nothing to report).

    Entering `running` is `started` or `resumed`; entering any other state but `pending` is
    the notice of that state's name.
    """
    if action == AuditNote.WAVE_STARTED:
        return Notice.WAVE_COMPLETED
    if not to_state or to_state == from_state or to_state not in _STATES:
        return None
    if to_state == RolloutState.RUNNING:
        return Notice.STARTED if from_state == RolloutState.PENDING else Notice.RESUMED
    return _BY_NAME.get(to_state)


def cloudevent_type(notice: Notice) -> str:
    """The CloudEvents `type` of a notice, reverse-DNS as that spec asks."""
    return CLOUDEVENT_TYPE_PREFIX + notice.value
