"""The rollout and device state machines."""

from __future__ import annotations

import pytest

from orchestrator.domain.audit import AuditNote
from orchestrator.domain.plans import FailureType
from orchestrator.domain.states import (
    ACTIVE_ROLLOUT_STATES,
    DEADLINE_TRANSITIONS,
    DEVICE_TRANSITIONS,
    FAILURE_TYPES,
    FINAL_DEVICE_STATES,
    IN_FLIGHT_DEVICE_STATES,
    KEY_SPENT_DEVICE_STATES,
    TERMINAL_ROLLOUT_STATES,
    DeviceEvent,
    DeviceState,
    InvalidTransition,
    RolloutAction,
    RolloutState,
    allowed_actions,
    deadline_event,
    next_device_state,
    next_rollout_state,
    result_event,
)
from orchestrator.errors import Conflict

R = RolloutState
A = RolloutAction


@pytest.mark.parametrize(
    ("state", "action", "after"),
    [
        (R.PENDING, A.START, R.RUNNING),
        (R.RUNNING, A.PAUSE, R.PAUSED),
        (R.PAUSED, A.RESUME, R.RUNNING),
        (R.RUNNING, A.WAIT_APPROVAL, R.WAITING_APPROVAL),
        (R.WAITING_APPROVAL, A.PROMOTE, R.RUNNING),
        (R.RUNNING, A.HALT, R.HALTED),
        (R.HALTED, A.RESUME, R.RUNNING),
        (R.RUNNING, A.ROLLBACK, R.ROLLING_BACK),
        (R.HALTED, A.ROLLBACK, R.ROLLING_BACK),
        (R.WAITING_APPROVAL, A.ROLLBACK, R.ROLLING_BACK),
        (R.ROLLING_BACK, A.ROLLBACK_DONE, R.ROLLED_BACK),
        (R.ROLLING_BACK, A.ROLLBACK_INCOMPLETE, R.ROLLBACK_FAILED),
        (R.RUNNING, A.COMPLETE, R.COMPLETED),
    ],
)
def test_the_documented_rollout_transitions(
    state: RolloutState, action: RolloutAction, after: RolloutState
) -> None:
    assert next_rollout_state(state, action) is after


@pytest.mark.parametrize("state", sorted(ACTIVE_ROLLOUT_STATES))
def test_every_active_rollout_can_be_aborted(state: RolloutState) -> None:
    assert next_rollout_state(state, A.ABORT) is R.ABORTED


@pytest.mark.parametrize("state", sorted(TERMINAL_ROLLOUT_STATES))
def test_a_finished_rollout_takes_no_action_and_says_so(state: RolloutState) -> None:
    assert allowed_actions(state) == []
    for action in RolloutAction:
        with pytest.raises(InvalidTransition, match=f"is {state}; actions allowed now: none"):
            next_rollout_state(state, action)


def test_a_refused_action_names_the_state_and_the_allowed_ones() -> None:
    with pytest.raises(InvalidTransition) as caught:
        next_rollout_state(R.PAUSED, A.PROMOTE)
    assert isinstance(caught.value, Conflict)
    assert caught.value.message == (
        "cannot promote a rollout that is paused; actions allowed now: resume, abort"
    )


def test_only_paused_and_halted_rollouts_resume() -> None:
    resumable = {state for state in RolloutState if A.RESUME in allowed_actions(state)}
    assert resumable == {R.PAUSED, R.HALTED}


def test_a_device_walks_the_happy_path() -> None:
    state = DeviceState.PENDING
    for event in (
        DeviceEvent.SEND,
        DeviceEvent.KEY_CLAIMED,
        DeviceEvent.KEY_DELIVERED,
        DeviceEvent.SUCCESS,
    ):
        after = next_device_state(state, event)
        assert after is not None
        state = after
    assert state is DeviceState.SUCCEEDED


@pytest.mark.parametrize(
    "final",
    sorted(
        FINAL_DEVICE_STATES - {DeviceState.SUCCEEDED, DeviceState.FAILED, DeviceState.TIMED_OUT}
    ),
)
def test_a_final_device_ignores_results(final: DeviceState) -> None:
    for event in (
        DeviceEvent.SUCCESS,
        DeviceEvent.FAILED,
        DeviceEvent.INSTALLING,
        DeviceEvent.KEY_CLAIMED,
        DeviceEvent.TIMED_OUT,
    ):
        assert next_device_state(final, event) is None


def test_progress_never_moves_backwards() -> None:
    assert next_device_state(DeviceState.INSTALLING, DeviceEvent.DOWNLOADING) is None
    assert next_device_state(DeviceState.INSTALLING, DeviceEvent.KEY_CLAIMED) is None
    assert next_device_state(DeviceState.SUCCEEDED, DeviceEvent.FAILED) is None


def test_only_unstarted_devices_are_cancelled() -> None:
    assert next_device_state(DeviceState.PENDING, DeviceEvent.CANCEL) is DeviceState.CANCELLED
    assert next_device_state(DeviceState.SENT, DeviceEvent.CANCEL) is DeviceState.CANCELLED
    assert next_device_state(DeviceState.DOWNLOADING, DeviceEvent.CANCEL) is None


def test_retries_put_failed_and_timed_out_devices_back_to_pending() -> None:
    assert next_device_state(DeviceState.FAILED, DeviceEvent.RETRY) is DeviceState.PENDING
    assert next_device_state(DeviceState.TIMED_OUT, DeviceEvent.RETRY) is DeviceState.PENDING
    assert next_device_state(DeviceState.REJECTED, DeviceEvent.RETRY) is None


def test_a_success_with_another_version_is_a_wrong_version_failure() -> None:
    event = result_event("success", version="2.0.9", expected_version="2.1.0")
    assert event is DeviceEvent.WRONG_VERSION
    assert FAILURE_TYPES[event] is FailureType.WRONG_VERSION
    assert next_device_state(DeviceState.INSTALLING, event) is DeviceState.FAILED
    assert result_event("success", version="2.1.0", expected_version="2.1.0") is DeviceEvent.SUCCESS
    assert result_event("success", version=None, expected_version=None) is DeviceEvent.SUCCESS


def test_every_event_has_a_transition_entry() -> None:
    assert set(DEVICE_TRANSITIONS) == set(DeviceEvent)


# --- the health soak ------------------------------------------------------------------------

V = DeviceState.VERIFYING


@pytest.mark.parametrize(
    "working", [DeviceState.SENT, DeviceState.DOWNLOADING, DeviceState.INSTALLING]
)
def test_under_a_soak_a_success_is_verifying_not_succeeded(working: DeviceState) -> None:
    event = result_event("success", version="2.1.0", expected_version="2.1.0", soak=True)
    assert event is DeviceEvent.VERIFY
    assert next_device_state(working, event) is V
    assert V not in FINAL_DEVICE_STATES
    assert V not in IN_FLIGHT_DEVICE_STATES  # max_in_flight does not count it
    assert V in KEY_SPENT_DEVICE_STATES


@pytest.mark.parametrize(
    ("status", "version", "event", "after", "failure"),
    [
        ("healthy", "2.1.0", DeviceEvent.HEALTHY, V, None),
        ("healthy", None, DeviceEvent.HEALTHY, V, None),
        ("unhealthy", "2.1.0", DeviceEvent.UNHEALTHY, DeviceState.FAILED, FailureType.UNHEALTHY),
        ("unhealthy", None, DeviceEvent.UNHEALTHY, DeviceState.FAILED, FailureType.UNHEALTHY),
        ("healthy", "2.0.3", DeviceEvent.REVERTED, DeviceState.FAILED, FailureType.REVERTED),
        ("unhealthy", "2.0.3", DeviceEvent.REVERTED, DeviceState.FAILED, FailureType.REVERTED),
        ("success", "2.0.3", DeviceEvent.REVERTED, DeviceState.FAILED, FailureType.REVERTED),
    ],
)
def test_a_report_during_the_soak(
    status: str,
    version: str | None,
    event: DeviceEvent,
    after: DeviceState,
    failure: FailureType | None,
) -> None:
    """healthy keeps it verifying, unhealthy fails it, another version is a revert."""
    got = result_event(status, version=version, expected_version="2.1.0", soak=True)
    assert got is event
    assert next_device_state(V, got) is after
    assert FAILURE_TYPES.get(got) is failure


def test_under_a_soak_a_success_of_another_version_is_reverted_and_of_none_wrong_version() -> None:
    other = result_event("success", version="2.0.3", expected_version="2.1.0", soak=True)
    assert next_device_state(DeviceState.INSTALLING, other) is DeviceState.FAILED
    assert FAILURE_TYPES[other] is FailureType.REVERTED
    none = result_event("success", version=None, expected_version="2.1.0", soak=True)
    assert none is DeviceEvent.WRONG_VERSION
    anything = result_event("healthy", version="9.9.9", expected_version=None, soak=True)
    assert anything is DeviceEvent.HEALTHY  # without firmware.version nothing is reverted


def test_a_passed_soak_deadline_means_soaked_at_the_soaks_end_else_silent() -> None:
    assert next_device_state(V, deadline_event(V, soak_over=True)) is DeviceState.SUCCEEDED
    silent = deadline_event(V, soak_over=False)
    assert next_device_state(V, silent) is DeviceState.FAILED
    assert FAILURE_TYPES[silent] is FailureType.UNHEALTHY
    assert V not in DEADLINE_TRANSITIONS  # its deadline has a meaning of its own


def test_a_verifying_device_is_rolled_back_or_cancelled_and_ignores_install_results() -> None:
    assert next_device_state(V, DeviceEvent.ROLLBACK_SEND) is DeviceState.ROLLBACK_SENT
    assert next_device_state(V, DeviceEvent.END) is DeviceState.CANCELLED
    assert next_device_state(V, DeviceEvent.CANCEL) is None  # a halt leaves it to its soak
    assert next_device_state(V, DeviceEvent.VERIFY) is None  # a repeated success: no new soak
    assert next_device_state(V, DeviceEvent.TIMED_OUT) is None
    assert next_device_state(DeviceState.SUCCEEDED, DeviceEvent.UNHEALTHY) is None  # too late
    assert next_device_state(DeviceState.SUCCEEDED, DeviceEvent.HEALTHY) is None


def test_an_audit_entrys_action_names_a_state_change_or_a_note_never_both() -> None:
    changes = {action.value for action in RolloutAction}
    notes = {note.value for note in AuditNote}
    assert changes.isdisjoint(notes), changes & notes
    # an entry read back from Redis names exactly one of them
    assert {RolloutAction(v) for v in changes} | {AuditNote(v) for v in notes} == set(
        RolloutAction
    ) | set(AuditNote)
