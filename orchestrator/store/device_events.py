"""Device events as rollout_device.lua takes them: the arguments' one JSON format.

A TransitionRequest is one event for one device; ResultRules say which event each result about
a rollout means. Both become event specs (the script's lua file documents the format): the
event's transitions from the domain's table, its failure type, deadline, fields and the sends a
failing device may have had and still be retried. No I/O here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.domain.states import (
    DEVICE_TRANSITIONS,
    FAILED_DEVICE_STATES,
    DeviceEvent,
    DeviceState,
    RolloutState,
    failure_of,
    sends_allowed,
)
from orchestrator.store.keys import RedisKeys
from orchestrator.store.script_rules import values

RULES_CACHE_SIZE = 64  # rollouts whose results rules are kept encoded

Spec = dict[str, Any]


@dataclass(frozen=True, slots=True)
class TransitionRequest:
    """One device event to apply (see RolloutDeviceStore.transitions)."""

    rollout_id: str
    device_id: str
    event: DeviceEvent
    rollout_states: Sequence[RolloutState] = ()
    deadline_ms: int | None = None  # a new deadline (epoch ms)
    deadline_after_sent_ms: int | None = None  # or a deadline this long after the device's send
    # or the next heartbeat of a device in its soak: this long from now, at most its soak's end
    heartbeat_ms: int | None = None
    soak_ms: int = 0  # applied: the device's soak starts now and ends this long after
    drop_deadline: bool = False
    failure_type: str = ""  # of a failed state reached ('' = the state's name)
    command_id: str = ""  # the command the event answers ('' = no check)
    command_field: str = "command_id"
    extra: Mapping[str, str | int] | None = None  # fields set when the event applies
    retries: int = -1  # retries the plan allows (-1: no retry for this event)
    # Fields set when the command matches, whether the event applies or not.
    marks: Mapping[str, str | int] | None = None
    only_from: frozenset[DeviceState] = frozenset()  # the event applies from these (empty: any)
    revoke_key: bool = False  # applied: the device's download key (`key`) is revoked with it
    unpublished: bool = False  # applied: the device's command waits to be published

    def deadline_arg(self) -> str:
        """The spec's deadline: '' keep, '-' drop, '+N' after the send, else epoch ms."""
        if self.drop_deadline:
            return "-"
        if self.deadline_after_sent_ms is not None:
            return f"+{self.deadline_after_sent_ms}"
        if self.heartbeat_ms is not None:
            return f"h{self.heartbeat_ms}"
        return "" if self.deadline_ms is None else str(self.deadline_ms)

    def spec_key(self) -> tuple[Any, ...]:
        """What the request's spec depends on (requests with one key share a spec)."""
        return (
            self.event,
            self.only_from,
            tuple(self.rollout_states),
            self.deadline_arg(),
            self.failure_type,
            self.command_field,
            tuple(sorted((self.marks or {}).items())),
            self.retries,
            self.revoke_key,
            self.unpublished,
            self.soak_ms,
        )


@dataclass(frozen=True)
class StatusRules:
    """The event each result status means, for one kind of command of a rollout.

    The events are TransitionRequest templates: their rollout, device and command ids are
    ignored (each result brings its own) and they may not require rollout states.
    """

    expected_version: str  # a result reporting it (or any, when '') counts as matched
    matched: Mapping[str, TransitionRequest]  # status → event when the version matches
    mismatched: Mapping[str, TransitionRequest]  # status → event when it reports another
    # status → event when it reports none (None: as mismatched)
    unversioned: Mapping[str, TransitionRequest] | None = None


@dataclass(frozen=True)
class ResultRules:
    """How results about one rollout move its devices, by the kind of the command answered."""

    default: StatusRules
    kinds: Mapping[str, StatusRules] = field(default_factory=dict)  # command kind → rules


def _text(fields: Mapping[str, str | int] | None) -> dict[str, str]:
    return {name: str(value) for name, value in (fields or {}).items()}


def spec(
    request: TransitionRequest,
    *,
    table: Mapping[DeviceState, DeviceState] | None = None,
    with_extra: bool = False,
) -> Spec:
    """The event spec of `request`: its event's transitions (or `table`), limited to
    `only_from`, with its extra fields when `with_extra` (else they go with each event)."""
    table = DEVICE_TRANSITIONS[request.event] if table is None else table
    if request.only_from:
        table = {old: new for old, new in table.items() if old in request.only_from}
    failed = sorted({new for new in table.values() if new in FAILED_DEVICE_STATES})
    if len(failed) > 1:
        raise ValueError(
            f"the {request.event.value} event leads to several failed states "
            f"({', '.join(failed)}); give each its own event"
        )
    return {
        "transitions": values(table),
        "states": [state.value for state in request.rollout_states],
        "deadline": request.deadline_arg(),
        "failure": failure_of(failed[0], request.failure_type) if failed else "",
        "field": request.command_field,
        "extra": _text(request.extra) if with_extra else {},
        "marks": _text(request.marks),
        "attempts": sends_allowed(request.retries),
        "revoke": request.revoke_key,
        "unpublished": request.unpublished,
        "soak": request.soak_ms,
    }


def rollout_keys(keys: RedisKeys, rollout_id: str) -> dict[str, str]:
    """The keys of a rollout the script writes to."""
    return {
        "rollout": keys.rollout(rollout_id),
        "device": keys.rollout_device_prefix(rollout_id),
        "counts": keys.rollout_counts(rollout_id),
        "deadlines": keys.rollout_deadlines(rollout_id),
        "retry": keys.rollout_retry(rollout_id),
        "unpublished": keys.rollout_unpublished(rollout_id),
    }


def encode_events(keys: RedisKeys, requests: Sequence[TransitionRequest]) -> list[str]:
    """ARGV[5..] of the script's 'events' entry point for `requests`, in order."""
    index: dict[tuple[Any, ...], int] = {}
    specs: list[Spec] = []
    rows: list[list[Any]] = []
    rollouts: dict[str, str] = {}
    for request in requests:
        key = request.spec_key()
        at = index.get(key)
        if at is None:
            at = index[key] = len(specs)
            specs.append(spec(request))
        row: list[Any] = [request.rollout_id, request.device_id, at, request.command_id]
        if request.extra:
            row.append(_text(request.extra))
        rows.append(row)
        if request.rollout_id not in rollouts:
            rollouts[request.rollout_id] = json.dumps(
                {"keys": rollout_keys(keys, request.rollout_id)}
            )
    args = [json.dumps({"specs": specs, "events": rows}, ensure_ascii=False)]
    for rollout_id, encoded in rollouts.items():
        args += (rollout_id, encoded)
    return args


def _event_spec(request: TransitionRequest) -> Spec:
    if request.rollout_states:
        raise ValueError(
            f"the {request.event.value} rule of a result requires rollout states "
            f"{[state.value for state in request.rollout_states]}; results apply in any state"
        )
    return spec(request, with_extra=True)


def encode_rules(keys: RedisKeys, rollout_id: str, rules: ResultRules) -> str:
    """The rollout JSON of the script's 'results' entry point: keys, event specs, statuses."""
    events: dict[str, Spec] = {}

    def names(by_status: Mapping[str, TransitionRequest]) -> dict[str, str]:
        for request in by_status.values():
            rule = _event_spec(request)
            if events.setdefault(request.event.value, rule) != rule:
                raise ValueError(
                    f"the rules of rollout {rollout_id} give the {request.event.value} "
                    "event two meanings; give each event one template"
                )
        return {status: request.event.value for status, request in by_status.items()}

    def statuses(status_rules: StatusRules) -> dict[str, Any]:
        encoded = {
            "version": status_rules.expected_version,
            "matched": names(status_rules.matched),
            "mismatched": names(status_rules.mismatched),
        }
        if status_rules.unversioned is not None:
            encoded["unversioned"] = names(status_rules.unversioned)
        return encoded

    encoded: dict[str, Any] = {
        "keys": rollout_keys(keys, rollout_id),
        "default": statuses(rules.default),
        "kinds": {kind: statuses(by_kind) for kind, by_kind in rules.kinds.items()},
    }
    encoded["events"] = events
    return json.dumps(encoded)


class EncodedRules:
    """Rules JSON by rollout id, for the rules object it was made from (sent with each batch)."""

    def __init__(self, keys: RedisKeys) -> None:
        self._keys = keys
        self._cache: dict[str, tuple[ResultRules, str]] = {}

    def get(self, rollout_id: str, rules: ResultRules) -> str:
        """The encoded rules, from the cache when `rules` is the object encoded last time."""
        cached = self._cache.get(rollout_id)
        if cached is not None and cached[0] is rules:
            return cached[1]
        if len(self._cache) >= RULES_CACHE_SIZE:
            self._cache.clear()
        encoded = encode_rules(self._keys, rollout_id, rules)
        self._cache[rollout_id] = (rules, encoded)
        return encoded
