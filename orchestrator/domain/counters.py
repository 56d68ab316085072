"""The names of a rollout's counters, defined once.

A rollout keeps one Redis hash of counters, moved by the same scripts that move its devices:

- `all:{state}`: devices of the rollout in a device state;
- `{wave}:{state}`: devices of wave number `wave` in a state;
- `fail:{failure_type}`: failures counted by the policy, by type;
- `base:{counter}`: a counter's value when the failure policy was last rebased (resuming a
  halted rollout judges only what finished after that).

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


def summed(counts: Mapping[str, int], names: Iterable[str]) -> int:
    """The sum of the named counters (absent ones are 0)."""
    get = counts.get
    return sum([get(name, 0) for name in names])


def by_state(counts: Mapping[str, int], wave: int | None = None) -> dict[str, int]:
    """`{state: n}` for every device state, of the whole rollout or of wave number `wave`."""
    name = total if wave is None else functools.partial(in_wave, wave)
    return {state.value: counts.get(name(state), 0) for state in DeviceState}


_SUCCEEDED = total(DeviceState.SUCCEEDED)
_SINCE_BASE = (
    (_SUCCEEDED, base(_SUCCEEDED)),
    *((failures(kind), base(failures(kind))) for kind in FailureType),
)
_KINDS = tuple(FailureType)
# What a rebase keeps: each counter the failure policy judges, and where its value goes.
REBASED: dict[str, str] = dict(_SINCE_BASE)


def tally_of(counts: Mapping[str, int]) -> Tally:
    """What the failure policy judges: devices finished since the last rebase."""
    get = counts.get
    succeeded, *by_kind = (max(0, get(name, 0) - get(rebased, 0)) for name, rebased in _SINCE_BASE)
    return Tally(
        succeeded=succeeded,
        failures={kind: n for kind, n in zip(_KINDS, by_kind, strict=True) if n},
    )
