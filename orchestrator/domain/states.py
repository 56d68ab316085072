"""Rollout and device states, and the one transition table the engine and the API consult.

Rollout (ARCHITECTURE §6):

    pending ─start─▶ running ⇄ paused            (pause / resume)
    running ─wait_approval─▶ waiting_approval ─promote─▶ running
    running ─halt─▶ halted ─resume─▶ running
    running | halted ─rollback─▶ rolling_back ─▶ rolled_back | rollback_failed
    running ─complete─▶ completed
    any active state ─abort─▶ aborted

Device in a rollout:

    pending ─sent─▶ sent ─claimed─▶ downloading ─delivered─▶ installing ─▶ succeeded
    sent | downloading | installing ─▶ failed | rejected | timed_out
    with policy.health, a success is watched first (the soak):
    sent | downloading | installing ─verify─▶ verifying ─soaked─▶ succeeded
    verifying ─unhealthy (or silent) | reverted─▶ failed
    pending | sent ─cancel─▶ cancelled
    (downloaded the new firmware) ─rollback_sent─▶ rollback_sent ─▶ rolled_back | rollback_failed
    any state not final ─end─▶ cancelled      (the rollout ended: completed, rolled back, aborted)
"""

from __future__ import annotations

from enum import StrEnum

from orchestrator.domain.plans import FailureType
from orchestrator.errors import Conflict


class RolloutState(StrEnum):
    """Where a rollout is in its life."""

    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    WAITING_APPROVAL = "waiting_approval"
    HALTED = "halted"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"
    COMPLETED = "completed"
    ABORTED = "aborted"


TERMINAL_ROLLOUT_STATES = frozenset(
    {
        RolloutState.COMPLETED,
        RolloutState.ROLLED_BACK,
        RolloutState.ROLLBACK_FAILED,
        RolloutState.ABORTED,
    }
)
ACTIVE_ROLLOUT_STATES = frozenset(RolloutState) - TERMINAL_ROLLOUT_STATES


class RolloutAction(StrEnum):
    """What moves a rollout: an operator's action or the engine's finding."""

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


# The actions a person takes (API routes, CLI verbs), in the order they are shown, with what
# each does.
OPERATOR_ACTIONS: dict[RolloutAction, str] = {
    RolloutAction.PAUSE: (
        "Stop sending to more devices; devices already sent go on (running → paused)."
    ),
    RolloutAction.RESUME: "Carry on sending (paused or halted → running).",
    RolloutAction.PROMOTE: (
        "Start the wave that waits for manual approval (waiting_approval → running)."
    ),
    RolloutAction.ABORT: (
        "Stop for good: unused download keys are revoked, devices not yet sent are "
        "cancelled, devices keep the firmware they have (→ aborted)."
    ),
    RolloutAction.ROLLBACK: (
        "Send the plan's rollback firmware to every device that took the new one "
        "(running, halted or waiting_approval → rolling_back)."
    ),
}

_R = RolloutState
_A = RolloutAction
# Each action, with the state it moves a rollout to from each state it is allowed in.
ROLLOUT_TRANSITIONS: dict[RolloutAction, dict[RolloutState, RolloutState]] = {
    _A.START: {_R.PENDING: _R.RUNNING},
    _A.PAUSE: {_R.RUNNING: _R.PAUSED},
    _A.RESUME: {_R.PAUSED: _R.RUNNING, _R.HALTED: _R.RUNNING},
    _A.PROMOTE: {_R.WAITING_APPROVAL: _R.RUNNING},
    _A.ABORT: dict.fromkeys(sorted(ACTIVE_ROLLOUT_STATES), _R.ABORTED),
    # from waiting_approval too: an inconclusive wave end (policy.confidence) asks a person to
    # go on or roll back
    _A.ROLLBACK: dict.fromkeys((_R.RUNNING, _R.HALTED, _R.WAITING_APPROVAL), _R.ROLLING_BACK),
    _A.WAIT_APPROVAL: {_R.RUNNING: _R.WAITING_APPROVAL},
    _A.HALT: {_R.RUNNING: _R.HALTED},
    _A.COMPLETE: {_R.RUNNING: _R.COMPLETED},
    _A.ROLLBACK_DONE: {_R.ROLLING_BACK: _R.ROLLED_BACK},
    _A.ROLLBACK_INCOMPLETE: {_R.ROLLING_BACK: _R.ROLLBACK_FAILED},
}


class InvalidTransition(Conflict):
    """An action the rollout's state does not allow (a Conflict, naming the state)."""


def allowed_actions(state: RolloutState) -> list[RolloutAction]:
    """The operator actions valid in `state`, in a stable order."""
    return [a for a in RolloutAction if a in OPERATOR_ACTIONS and state in ROLLOUT_TRANSITIONS[a]]


def next_rollout_state(state: RolloutState, action: RolloutAction) -> RolloutState:
    """The state after `action`; InvalidTransition names the state and what it allows."""
    try:
        return ROLLOUT_TRANSITIONS[action][state]
    except KeyError:
        valid = ", ".join(allowed_actions(state)) or "none (it is finished)"
        raise InvalidTransition(
            f"cannot {action} a rollout that is {state}; actions allowed now: {valid}"
        ) from None


class DeviceState(StrEnum):
    """Where one device is in one rollout."""

    PENDING = "pending"
    SENT = "sent"
    DOWNLOADING = "downloading"
    INSTALLING = "installing"
    VERIFYING = "verifying"  # reported success; watched until the health soak has passed
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    ROLLBACK_SENT = "rollback_sent"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"


FAILED_DEVICE_STATES = frozenset({DeviceState.FAILED, DeviceState.REJECTED, DeviceState.TIMED_OUT})
# A device that reaches one has its firmware: its download key has done its work.
KEY_SPENT_DEVICE_STATES = frozenset({DeviceState.SUCCEEDED, DeviceState.VERIFYING})
FINISHED_DEVICE_STATES = FAILED_DEVICE_STATES | {DeviceState.SUCCEEDED}  # count in the failure rate
FINAL_DEVICE_STATES = FINISHED_DEVICE_STATES | {
    DeviceState.CANCELLED,
    DeviceState.ROLLED_BACK,
    DeviceState.ROLLBACK_FAILED,
}
IN_FLIGHT_DEVICE_STATES = frozenset(
    {DeviceState.SENT, DeviceState.DOWNLOADING, DeviceState.INSTALLING}
)
# Not final, and not in flight either: the device has installed the firmware and is watched
# through the soak. max_in_flight does not count it (the soak would throttle dispatch for its
# whole length), but its wave is not done until it is final.
SOAKING_DEVICE_STATES = frozenset({DeviceState.VERIFYING})


class DeviceEvent(StrEnum):
    """What happens to a device: the engine's acts, its results, its key use, its deadlines."""

    SEND = "send"
    KEY_CLAIMED = "key_claimed"
    KEY_DELIVERED = "key_delivered"
    RECEIVED = "received"
    DOWNLOADING = "downloading"
    INSTALLING = "installing"
    SUCCESS = "success"
    WRONG_VERSION = "wrong_version"
    VERIFY = "verify"  # a success under a health soak: watched before it counts
    HEALTHY = "healthy"  # a health report during the soak: the device is well
    UNHEALTHY = "unhealthy"  # a health report of trouble, or silence past the heartbeat
    REVERTED = "reverted"  # a report of another version than the firmware's during the soak
    SOAKED = "soaked"  # the soak passed with the device well
    FAILED = "failed"
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"
    CANCEL = "cancel"
    RETRY = "retry"
    ROLLBACK_SEND = "rollback_send"
    ROLLBACK_SUCCESS = "rollback_success"
    ROLLBACK_FAILURE = "rollback_failure"
    END = "end"  # the rollout reached a terminal state while the device was not final


_D = DeviceState
_E = DeviceEvent
_WORKING = (_D.SENT, _D.DOWNLOADING, _D.INSTALLING)

DEVICE_TRANSITIONS: dict[DeviceEvent, dict[DeviceState, DeviceState]] = {
    _E.SEND: {_D.PENDING: _D.SENT},
    # An acknowledgement keeps the state but moves the device from its ack deadline to its
    # device deadline. Progress only moves forward: "downloading" after "installing" is ignored.
    _E.RECEIVED: {_D.SENT: _D.SENT},
    _E.KEY_CLAIMED: {_D.SENT: _D.DOWNLOADING},
    _E.DOWNLOADING: {_D.SENT: _D.DOWNLOADING},
    _E.KEY_DELIVERED: {_D.SENT: _D.INSTALLING, _D.DOWNLOADING: _D.INSTALLING},
    _E.INSTALLING: {_D.SENT: _D.INSTALLING, _D.DOWNLOADING: _D.INSTALLING},
    _E.SUCCESS: {state: _D.SUCCEEDED for state in _WORKING},
    _E.VERIFY: {state: _D.VERIFYING for state in _WORKING},
    # A health report keeps the state but moves the device's heartbeat deadline.
    _E.HEALTHY: {_D.VERIFYING: _D.VERIFYING},
    _E.UNHEALTHY: {_D.VERIFYING: _D.FAILED},
    # Under a soak a success naming another version is the bootloader's fallback too.
    _E.REVERTED: {state: _D.FAILED for state in (*_WORKING, _D.VERIFYING)},
    _E.SOAKED: {_D.VERIFYING: _D.SUCCEEDED},
    _E.WRONG_VERSION: {state: _D.FAILED for state in _WORKING},
    _E.FAILED: {state: _D.FAILED for state in _WORKING},
    _E.REJECTED: {state: _D.REJECTED for state in _WORKING},
    _E.TIMED_OUT: {state: _D.TIMED_OUT for state in _WORKING},
    _E.CANCEL: {_D.PENDING: _D.CANCELLED, _D.SENT: _D.CANCELLED},
    _E.RETRY: {_D.FAILED: _D.PENDING, _D.TIMED_OUT: _D.PENDING},
    _E.ROLLBACK_SEND: {
        _D.DOWNLOADING: _D.ROLLBACK_SENT,
        _D.INSTALLING: _D.ROLLBACK_SENT,
        _D.VERIFYING: _D.ROLLBACK_SENT,
        _D.SUCCEEDED: _D.ROLLBACK_SENT,
        _D.FAILED: _D.ROLLBACK_SENT,
        _D.TIMED_OUT: _D.ROLLBACK_SENT,
    },
    _E.ROLLBACK_SUCCESS: {_D.ROLLBACK_SENT: _D.ROLLED_BACK},
    _E.ROLLBACK_FAILURE: {_D.ROLLBACK_SENT: _D.ROLLBACK_FAILED},
    # A finished rollout tracks nothing: what it never reached, or still waited for, is
    # cancelled in the same step as the terminal state, and a later result is ignored as late.
    _E.END: {
        state: _D.CANCELLED
        for state in (
            _D.PENDING,
            _D.SENT,
            _D.DOWNLOADING,
            _D.INSTALLING,
            _D.VERIFYING,
            _D.ROLLBACK_SENT,
        )
    },
}

RESULT_EVENTS: dict[str, DeviceEvent] = {
    "received": DeviceEvent.RECEIVED,
    "downloading": DeviceEvent.DOWNLOADING,
    "installing": DeviceEvent.INSTALLING,
    "success": DeviceEvent.SUCCESS,
    "failed": DeviceEvent.FAILED,
    "rejected": DeviceEvent.REJECTED,
}
# Health reports (policy.health), on the same result topic as the command's results.
HEALTH_EVENTS: dict[str, DeviceEvent] = {
    "healthy": DeviceEvent.HEALTHY,
    "unhealthy": DeviceEvent.UNHEALTHY,
}
SILENT = "silent"  # the error of a device that fell silent during its soak

FAILURE_TYPES: dict[DeviceEvent, FailureType] = {
    DeviceEvent.FAILED: FailureType.FAILED,
    DeviceEvent.REJECTED: FailureType.REJECTED,
    DeviceEvent.TIMED_OUT: FailureType.TIMED_OUT,
    DeviceEvent.WRONG_VERSION: FailureType.WRONG_VERSION,
    DeviceEvent.UNHEALTHY: FailureType.UNHEALTHY,
    DeviceEvent.REVERTED: FailureType.REVERTED,
}


# A failure the plan's retries allow goes where the retry event takes it: back to pending,
# where it waits in the rollout's retry line to be dispatched again. Rejections are final.
RETRIED_FAILURES: dict[DeviceState, DeviceState] = DEVICE_TRANSITIONS[DeviceEvent.RETRY]
QUEUED_DEVICE_STATES = frozenset(RETRIED_FAILURES.values())  # entered: join the retry line


def next_device_state(state: DeviceState, event: DeviceEvent) -> DeviceState | None:
    """The state after `event`, or None when the event changes nothing (late, duplicate)."""
    return DEVICE_TRANSITIONS[event].get(state)


def sends_allowed(retries: int) -> int:
    """How often a failing device may be sent its command: once and once per retry the plan
    allows (`retries` -1: the event is never retried). Fewer sends so far: it is retried."""
    return retries + 1 if retries >= 0 else 0


def failure_of(reached: DeviceState, failure_type: str = "") -> str:
    """The failure type of a device that reached the failed state `reached`: the type its
    event gives, else the state's own name."""
    return failure_type or reached.value


def deadline_event(state: DeviceState, *, soak_over: bool = False) -> DeviceEvent:
    """What a passed deadline means to a device in `state`: its rollback failed, or it timed out;
    in its soak (`soak_over`: the deadline was the soak's end) it soaked, or it fell silent."""
    if state is DeviceState.ROLLBACK_SENT:
        return DeviceEvent.ROLLBACK_FAILURE
    if state in SOAKING_DEVICE_STATES:
        return DeviceEvent.SOAKED if soak_over else DeviceEvent.UNHEALTHY
    return DeviceEvent.TIMED_OUT


# The transitions a passed deadline makes, whatever the device's state. A device in its soak
# has a deadline of its own meaning: the sooner of its next heartbeat and its soak's end, so
# passed at the soak's end it soaked, passed before it the device fell silent (deadline_event).
DEADLINE_TRANSITIONS: dict[DeviceState, DeviceState] = {
    state: after
    for state in DeviceState
    if state not in SOAKING_DEVICE_STATES
    and (after := next_device_state(state, deadline_event(state))) is not None
}


def result_event(
    status: str, *, version: str | None, expected_version: str | None, soak: bool = False
) -> DeviceEvent:
    """The event a device's result (or health report) means; a success with another version is
    a failure. With a soak (`soak`) a success is watched first, and any report naming another
    version than the expected one means the device went back to another image (reverted)."""
    event = RESULT_EVENTS.get(status) or HEALTH_EVENTS[status]
    other = bool(expected_version) and version is not None and version != expected_version
    if soak:
        if other and event in (DeviceEvent.SUCCESS, *HEALTH_EVENTS.values()):
            return DeviceEvent.REVERTED
        if event is DeviceEvent.SUCCESS and expected_version and not version:
            return DeviceEvent.WRONG_VERSION  # it must still say what it runs
        return DeviceEvent.VERIFY if event is DeviceEvent.SUCCESS else event
    if event is DeviceEvent.SUCCESS and expected_version and version != expected_version:
        return DeviceEvent.WRONG_VERSION
    return event
