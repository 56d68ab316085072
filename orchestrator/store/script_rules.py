"""The domain's rules as the rollout scripts take them, compiled once from `domain/`.

The Lua scripts in `lua/` hold no rule of their own. Which transitions an event makes, which
states are failures and where a retried failure goes, which states queue a device for dispatch
or spend its download key, and how counters are named all reach them as arguments built here,
so a change to `domain/states.py` or `domain/counters.py` changes the scripts with it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from orchestrator.domain import counters
from orchestrator.domain.states import (
    DEVICE_TRANSITIONS,
    FAILED_DEVICE_STATES,
    KEY_SPENT_DEVICE_STATES,
    QUEUED_DEVICE_STATES,
    RETRIED_FAILURES,
    DeviceEvent,
    DeviceState,
    RolloutState,
)


def values(table: Mapping[DeviceState, DeviceState]) -> dict[str, str]:
    """A transition table as the scripts read it: {from state: to state}."""
    return {old.value: new.value for old, new in table.items()}


def _members(states: frozenset[DeviceState]) -> dict[str, bool]:
    return {state.value: True for state in sorted(states)}


# Each event's transitions, by event.
TRANSITIONS: dict[DeviceEvent, dict[str, str]] = {
    event: values(table) for event, table in DEVICE_TRANSITIONS.items()
}

# Counter names as the scripts build them: total .. state, wave number .. wave .. state,
# fail .. failure type, stratum .. state .. wave .. label for a state of `stratified`,
# stratum_fail .. failure type .. wave .. label (see domain/counters.py).
COUNTER_NAMES = json.dumps(
    {
        "total": counters.total(""),
        "wave": counters.SEPARATOR,
        "fail": counters.failures(""),
        "stratum": counters.STRATUM + counters.SEPARATOR,
        "stratum_fail": counters.STRATUM_FAIL + counters.SEPARATOR,
        "stratified": {state.value: True for state in sorted(counters.STRATIFIED_STATES)},
    }
)

# rollout_create.lua: the state every device of a new rollout starts in.
CREATED_STATE = DeviceState.PENDING.value

# rollout_dispatch.lua: a dispatch moves devices by the send event, only while the rollout runs.
[(_SEND_FROM, _SEND_TO)] = DEVICE_TRANSITIONS[DeviceEvent.SEND].items()
DISPATCH = json.dumps(
    {"rollout": RolloutState.RUNNING.value, "from": _SEND_FROM.value, "to": _SEND_TO.value}
)

# rollout_state.lua: what a rollout's end does to devices not final, and what a rebase keeps.
END_TRANSITIONS = json.dumps(TRANSITIONS[DeviceEvent.END])
REBASED = json.dumps(counters.REBASED)
# and the counters it keeps by the prefix of their names (the strata's), with where they go.
REBASED_PREFIXES = json.dumps(
    {"prefixes": list(counters.REBASED_PREFIXES), "base": counters.base("")}
)

# rollout_device.lua: what every device transition obeys, whoever asks for it.
DEVICE_RULES = json.dumps(
    {
        "failed": _members(FAILED_DEVICE_STATES),
        "retried": values(RETRIED_FAILURES),
        "queued": _members(QUEUED_DEVICE_STATES),
        "spent": _members(KEY_SPENT_DEVICE_STATES),
        "counters": json.loads(COUNTER_NAMES),
    }
)
