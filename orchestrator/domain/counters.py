"""The names of a rollout's counters, defined once.

A rollout keeps one Redis hash of counters, moved by the same scripts that move its devices:

- `all:{state}`: devices of the rollout in a device state;
- `{wave}:{state}`: devices of wave number `wave` in a state;
- `fail:{failure_type}`: failures counted by the policy, by type;
- `base:{counter}`: a counter's value when the failure policy was last rebased (resuming a
  halted rollout judges only what finished after that);
- with `policy.by`, for each stratum label (`model=TH-300`): `by:{state}:{label}`, its devices
  in a state the policy judges (STRATIFIED_STATES), and `byfail:{failure_type}:{label}`, its
  failures by type. A device's labels are fixed when the rollout is created.

The Lua scripts are given these families' prefixes (`store/script_rules.py`) rather than
spelling them; `tests/store/test_counter_names.py` checks the names they build are these.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping

from orchestrator.domain.plans import FailureType
from orchestrator.domain.policy import Tally
from orchestrator.domain.states import DeviceState

ALL = "all"
FAIL = "fail"
BASE = "base"
STRATUM = "by"
STRATUM_FAIL = "byfail"
SEPARATOR = ":"  # between a family (or a wave number) and the name within it


def total(state: str) -> str:
    """The counter of the rollout's devices in `state`."""
    return f"{ALL}{SEPARATOR}{state}"


def in_wave(wave: int, state: str) -> str:
    """The counter of wave number `wave`'s devices in `state`."""
    return f"{wave}{SEPARATOR}{state}"


def failures(failure_type: FailureType | str) -> str:
    """The counter of failures of one type."""
    return f"{FAIL}{SEPARATOR}{failure_type}"


def base(counter: str) -> str:
    """Where `counter`'s value at the last rebase is kept."""
    return f"{BASE}{SEPARATOR}{counter}"


def in_stratum(label: str, state: str) -> str:
    """The counter of stratum `label`'s devices in `state` (one of STRATIFIED_STATES)."""
    return f"{STRATUM}{SEPARATOR}{state}{SEPARATOR}{label}"


def stratum_failures(label: str, failure_type: FailureType | str) -> str:
    """The counter of stratum `label`'s failures of one type."""
    return f"{STRATUM_FAIL}{SEPARATOR}{failure_type}{SEPARATOR}{label}"


# The device states counted per stratum: those the failure policy judges besides failures.
STRATIFIED_STATES = frozenset({DeviceState.SUCCEEDED})
# A rebase keeps every counter whose name starts with one of these (the strata's).
REBASED_PREFIXES = (STRATUM + SEPARATOR, STRATUM_FAIL + SEPARATOR)


def summed(counts: Mapping[str, int], names: Iterable[str]) -> int:
    """The sum of the named counters (absent ones are 0)."""
    get = counts.get
    return sum([get(name, 0) for name in names])


def by_state(counts: Mapping[str, int], wave: int | None = None) -> dict[str, int]:
    """`{state: n}` for every device state, of the whole rollout or of wave number `wave`."""
    name = total if wave is None else functools.partial(in_wave, wave)
    return {state.value: counts.get(name(state), 0) for state in DeviceState}


_SUCCEEDED = total(DeviceState.SUCCEEDED)
_SUCCEEDED_BASE = base(_SUCCEEDED)
_SINCE_BASE = (
    (_SUCCEEDED, _SUCCEEDED_BASE),
    *((failures(kind), base(failures(kind))) for kind in FailureType),
)
_KINDS = tuple(FailureType)
# What a rebase keeps: each counter the failure policy judges, and where its value goes.
REBASED: dict[str, str] = dict(_SINCE_BASE)


_FAILURES_SINCE_BASE = tuple(zip(_KINDS, _SINCE_BASE[1:], strict=True))


def tally_of(counts: Mapping[str, int]) -> Tally:
    """What the failure policy judges: devices finished since the last rebase."""
    get = counts.get
    failures = {}
    for kind, (name, rebased) in _FAILURES_SINCE_BASE:
        n = get(name, 0) - get(rebased, 0)
        if n > 0:
            failures[kind] = n
    succeeded = get(_SUCCEEDED, 0) - get(_SUCCEEDED_BASE, 0)
    return Tally(succeeded=max(0, succeeded), failures=failures)


_STRATUM_SUCCEEDED = in_stratum("", DeviceState.SUCCEEDED)
_STRATUM_FAIL = STRATUM_FAIL + SEPARATOR
_FAILURE_TYPES = {kind.value: kind for kind in FailureType}


def strata_tallies(counts: Mapping[str, int]) -> dict[str, Tally]:
    """What the failure policy judges of each stratum, since the last rebase: {label: Tally}.

    Only strata with a device finished since then are listed.
    """
    get = counts.get
    succeeded: dict[str, int] = {}
    failed: dict[str, dict[FailureType, int]] = {}
    for name, value in counts.items():
        if name.startswith(_STRATUM_SUCCEEDED):
            n = value - get(base(name), 0)
            if n > 0:
                succeeded[name[len(_STRATUM_SUCCEEDED) :]] = n
        elif name.startswith(_STRATUM_FAIL):
            kind_name, _, label = name[len(_STRATUM_FAIL) :].partition(SEPARATOR)
            kind = _FAILURE_TYPES.get(kind_name)
            n = value - get(base(name), 0)
            if kind is not None and n > 0:
                failed.setdefault(label, {})[kind] = n
    return {
        label: Tally(succeeded=succeeded.get(label, 0), failures=failed.get(label, {}))
        for label in sorted(succeeded.keys() | failed.keys())
    }
