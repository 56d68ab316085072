"""Rollouts in Redis: the rollout, its cohort, every device's state and the counters.

Every change that must not race is one Lua script: creation (name and devices must be free),
dispatch (pending → sent only while running), a device's transition with its counters, and a
rollout's state change with its audit event.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.exceptions import RedisError

from orchestrator.domain.devices import LAST_SEEN_EVERY_S
from orchestrator.domain.states import (
    DEVICE_TRANSITIONS,
    TERMINAL_ROLLOUT_STATES,
    DeviceEvent,
    DeviceState,
    RolloutState,
)
from orchestrator.store.commands import COMMAND_RECORD_TTL_S
from orchestrator.store.devices import LAST_SEEN_FIELD
from orchestrator.store.download_keys import new_download_key
from orchestrator.store.keys import RedisKeys
from orchestrator.store.redis import (
    Redis,
    fields,
    hgetall_many,
    load_script,
    members,
    translated,
)
from orchestrator.store.rollout_archive import RolloutArchive
from orchestrator.timeutil import epoch_ms, isoformat_z, utc_now

RELEASE_CHUNK = 1000  # device locks freed per script call
NOTICES_KEPT = 100_000  # audit entries kept in the notices stream (approximately)
RULES_CACHE_SIZE = 64  # rollouts whose results rules are kept encoded


def now_ms() -> int:
    """Epoch milliseconds."""
    return int(time.time() * 1000)


def finished_at_ms(updated_at: str) -> int:
    """When a rollout changed at `updated_at` finished, for retention (now if unreadable)."""
    at_ms = epoch_ms(updated_at)
    return now_ms() if at_ms is None else at_ms


@dataclass(frozen=True)
class RolloutRecord:
    """A rollout as stored."""

    id: str
    project_id: str
    name: str
    state: RolloutState
    reason: str
    plan: dict[str, Any]  # the plan, by its YAML names
    wave: int
    cursor: int
    reach: list[int]
    total: int
    created_at: str
    updated_at: str
    created_by: str
    wave_done_at_ms: int  # when the current wave's last device became final (0: not yet)
    last_result_ms: int = 0  # when a device last reported a result about it (0: never)
    # The bytes the rollout announces, pinned at creation: file name -> (sha256, size).
    pins: dict[str, tuple[str, int]] = field(default_factory=dict)

    @property
    def wave_count(self) -> int:
        """How many waves the plan has."""
        return len(self.reach)


@dataclass(frozen=True)
class CreateOutcome:
    """What creation found: ok, or the name or the devices already taken."""

    created: bool
    name_taken_by: str | None = None
    devices_taken: tuple[str, ...] = ()
    exists: bool = False  # a rollout with the given id was made already (a request redone)
    project_deleting: bool = False  # the project's deletion has begun


@dataclass(frozen=True)
class Transition:
    """The result of a transition attempt: applied, or why not."""

    old: str
    new: str  # the new state, or '' when not applied
    refused: str = ""  # missing | rollout_state | command_mismatch | no_transition
    key: str = field(default="", compare=False)  # the device's download key, when applied

    @property
    def applied(self) -> bool:
        """True when the state changed (or stayed, by a retry, but was recorded)."""
        return not self.refused


@dataclass(frozen=True, slots=True)
class Grant:
    """What every device of a dispatch is sent: a download key for this file, for this long."""

    project_id: str
    file_name: str
    size: int
    key_ttl_s: int
    sha256: str = ""  # of the bytes announced; the key serves no others
    command: str = "download_firmware"


@dataclass(frozen=True, slots=True)
class Dispatched:
    """A device moved to `sent`: its command id and its download key."""

    device_id: str
    command_id: str
    key: str
    key_expires_at_ms: int


@dataclass(frozen=True, slots=True)
class TransitionRequest:
    """One device event to apply (see RolloutStore.transitions)."""

    rollout_id: str
    device_id: str
    event: DeviceEvent
    rollout_states: Sequence[RolloutState] = ()
    deadline_ms: int | None = None  # a new deadline (epoch ms)
    deadline_after_sent_ms: int | None = None  # or a deadline this long after the device's send
    drop_deadline: bool = False
    failure_type: str = ""
    command_id: str = ""  # the command the event answers ('' = no check)
    command_field: str = "command_id"
    extra: Mapping[str, str | int] | None = None
    retries: int = -1  # retries the plan allows (-1: no retry for this event)

    def deadline_arg(self) -> str:
        """ARGV[5] of rollout_device.lua."""
        if self.drop_deadline:
            return "-"
        if self.deadline_after_sent_ms is not None:
            return f"+{self.deadline_after_sent_ms}"
        return "" if self.deadline_ms is None else str(self.deadline_ms)


class ReportedResult(Protocol):
    """A result a device reported about a command (what RolloutStore.apply_results reads)."""

    @property
    def command_id(self) -> str:
        """The command answered."""

    @property
    def device_id(self) -> str:
        """The device that answered (from the topic)."""

    @property
    def status(self) -> str:
        """One of the result statuses."""

    @property
    def version(self) -> str | None:
        """The firmware version the device reported, if any."""


@dataclass(frozen=True)
class StatusRules:
    """The event each result status means, for one kind of command of a rollout.

    The events are TransitionRequest templates: their rollout, device and command ids are
    ignored (each result brings its own) and they may not require rollout states.
    """

    expected_version: str  # a result reporting it (or any, when '') counts as matched
    matched: Mapping[str, TransitionRequest]  # status → event when the version matches
    mismatched: Mapping[str, TransitionRequest]  # status → event when it reports another


@dataclass(frozen=True)
class ResultRules:
    """How results about one rollout move its devices, by the kind of the command answered."""

    default: StatusRules
    kinds: Mapping[str, StatusRules] = field(default_factory=dict)  # command kind → rules


@dataclass(frozen=True, slots=True)
class ResultOutcome:
    """What RolloutStore.apply_results did with one result.

    `outcome` is `applied`, a refusal of Transition (`detail`: the device's state), or:
    `unknown_command` (no record), `wrong_device` (`detail`: where the command went),
    `no_rollout` (a command outside rollouts), `unknown_rollout` (its rollout is gone) or
    `no_event` (the status moves nothing, e.g. the progress of a rollback).
    """

    outcome: str
    command: str  # from the command's record ('' when unknown or from another device)
    sent_at: str  # from the command's record (ISO 8601)
    rollout_id: str
    event: str  # the event applied or refused ('' when none)
    detail: str

    @property
    def matched(self) -> bool:
        """True when the result answers a known command of the device that sent it."""
        return self.outcome not in _UNMATCHED


@dataclass(frozen=True, slots=True)
class AppliedResults:
    """The outcome of each result, or the rollouts whose rules are needed first."""

    outcomes: list[ResultOutcome]
    needed: list[str]  # rollouts not in the rules given; nothing was applied when not empty


# The transition table of each event, as rollout_device.lua reads it.
_TABLES = {
    event: json.dumps({old.value: new.value for old, new in table.items()})
    for event, table in DEVICE_TRANSITIONS.items()
}
_TRANSITIONS = {
    event: {old.value: new.value for old, new in table.items()}
    for event, table in DEVICE_TRANSITIONS.items()
}
_REFUSALS = frozenset({"missing", "rollout_state", "command_mismatch", "no_transition"})
_UNMATCHED = frozenset({"unknown_command", "wrong_device"})


def _event_rule(request: TransitionRequest) -> dict[str, Any]:
    if request.rollout_states:
        raise ValueError(
            f"the {request.event.value} rule of a result requires rollout states "
            f"{[state.value for state in request.rollout_states]}; results apply in any state"
        )
    return {
        "transitions": _TRANSITIONS[request.event],
        "deadline": request.deadline_arg(),
        "failure": request.failure_type,
        "field": request.command_field,
        "extra": {k: str(v) for k, v in (request.extra or {}).items()},
        "retries": request.retries,
    }


def _record(rollout_id: str, raw: dict[str, str]) -> RolloutRecord:
    return RolloutRecord(
        id=rollout_id,
        project_id=raw["project_id"],
        name=raw["name"],
        state=RolloutState(raw["state"]),
        reason=raw.get("reason", ""),
        plan=json.loads(raw["plan"]),
        wave=int(raw.get("wave", "0")),
        cursor=int(raw.get("cursor", "0")),
        reach=json.loads(raw["reach"]),
        total=int(raw["total"]),
        created_at=raw["created_at"],
        updated_at=raw["updated_at"],
        created_by=raw.get("created_by", ""),
        wave_done_at_ms=int(raw.get("wave_done_at_ms", "0")),
        last_result_ms=int(raw.get("last_result_ms", "0")),
        pins={
            name: (str(pin["sha256"]), int(pin["size"]))
            for name, pin in json.loads(raw.get("pins") or "{}").items()
        },
    )


class Announcements:
    """The channel on which a new rollout's id is published as it is created."""

    def __init__(self, redis: Redis, channel: str) -> None:
        self._channel = channel
        self._pubsub = redis.pubsub(ignore_subscribe_messages=True)

    async def wait(self, timeout_s: float) -> None:
        """Return once a rollout is announced or `timeout_s` has passed.

        Subscribes at the first call; call it after another command, since a cluster client
        learns its slots from its first command.
        """
        if not self._pubsub.subscribed:
            await self._pubsub.subscribe(self._channel)
        await self._pubsub.get_message(timeout=timeout_s)

    async def close(self) -> None:
        """Unsubscribe and give the connection back."""
        with contextlib.suppress(RedisError):
            # untyped before redis-py 8.2
            await self._pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]


class RolloutStore:
    """Read and change rollouts atomically."""

    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self._redis = redis
        self._keys = keys
        self._create = load_script(redis, "rollout_create")
        self._dispatch = load_script(redis, "rollout_dispatch")
        self._device = load_script(redis, "rollout_device")
        self._hgetall_many = load_script(redis, "hgetall_many")
        self._state = load_script(redis, "rollout_state")
        self._release = load_script(redis, "rollout_release")
        self._archive = RolloutArchive(redis, keys)  # where a finished rollout's devices go
        # Rules JSON by rollout id, for the rules object it was made from (sent with each batch).
        self._rules_json_cache: dict[str, tuple[ResultRules, str]] = {}

    @translated
    async def create(
        self,
        *,
        project_id: str,
        name: str,
        plan: Mapping[str, Any],
        device_ids: Sequence[str],
        reach: Sequence[int],
        created_at: str,
        created_by: str,
        rollout_id: str | None = None,
        pins: Mapping[str, tuple[str, int]] | None = None,
    ) -> tuple[str, CreateOutcome]:
        """A new `pending` rollout over `device_ids` (in wave order); its id and the outcome.

        With `rollout_id` (a hook delivery promised it), a rollout already made under that id
        is left as it is and reported as `exists`.
        """
        rollout_id = rollout_id or str(uuid.uuid4())
        record = {
            "id": rollout_id,
            "project_id": project_id,
            "name": name,
            "state": RolloutState.PENDING.value,
            "reason": "created; waiting for the engine to start it",
            "plan": json.dumps(plan),
            "wave": 0,
            "cursor": 0,
            "reach": json.dumps(list(reach)),
            "total": len(device_ids),
            "created_at": created_at,
            "updated_at": created_at,
            "created_by": created_by,
            "wave_done_at_ms": 0,
            "pins": json.dumps(
                {name: {"sha256": sha, "size": size} for name, (sha, size) in (pins or {}).items()}
            ),
        }
        event = {
            "at": created_at,
            "actor": created_by,
            "action": "create",
            "to": RolloutState.PENDING.value,
            "reason": f"{len(device_ids)} devices in {len(reach)} waves",
        }
        reply = await self._create(
            keys=[
                self._keys.rollout(rollout_id),
                self._keys.rollout_order(rollout_id),
                self._keys.rollout_counts(rollout_id),
                self._keys.project_rollouts(project_id),
                self._keys.active_rollouts(),
                self._keys.rollout_name(project_id, name),
                self._keys.rollout_events(rollout_id),
                self._keys.project_deletion(project_id),
            ],
            args=[
                rollout_id,
                self._keys.rollout_device_prefix(rollout_id),
                self._keys.device_rollout_prefix(),
                now_ms(),
                json.dumps(record),
                json.dumps(list(reach)),
                json.dumps(event),
                *device_ids,
            ],
        )
        verdict = [str(part) for part in reply]
        if verdict[0] == "exists":
            return rollout_id, CreateOutcome(created=False, exists=True)
        if verdict[0] == "project_deleting":
            return rollout_id, CreateOutcome(created=False, project_deleting=True)
        if verdict[0] == "name_taken":
            return rollout_id, CreateOutcome(created=False, name_taken_by=verdict[1])
        if verdict[0] == "devices_taken":
            return rollout_id, CreateOutcome(created=False, devices_taken=tuple(verdict[1:]))
        await self._redis.publish(self._keys.rollouts_channel(), rollout_id)
        return rollout_id, CreateOutcome(created=True)

    @translated
    async def get(self, rollout_id: str) -> RolloutRecord | None:
        """The rollout, or None."""
        raw = fields(await self._redis.hgetall(self._keys.rollout(rollout_id)))
        return _record(rollout_id, raw) if raw else None

    @translated
    async def ids(self, project_id: str) -> list[str]:
        """The project's rollout ids, newest first."""
        return members(await self._redis.zrevrange(self._keys.project_rollouts(project_id), 0, -1))

    @translated
    async def active_ids(self) -> list[str]:
        """Ids of every rollout the engine still has work on (until it deactivates them)."""
        return sorted(members(await self._redis.smembers(self._keys.active_rollouts())))

    @translated
    async def counts(self, rollout_id: str) -> dict[str, int]:
        """Raw counters: `{wave}:{state}`, `all:{state}` and `fail:{type}`."""
        raw = fields(await self._redis.hgetall(self._keys.rollout_counts(rollout_id)))
        return {name: int(value) for name, value in raw.items()}

    @translated
    async def state_times(self, rollout_ids: Sequence[str]) -> list[tuple[str, str] | None]:
        """(state, updated_at) of each rollout, None for an unknown one, in one round trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for rollout_id in rollout_ids:
                pipe.hmget(self._keys.rollout(rollout_id), ["state", "updated_at"])
            replies = await pipe.execute()
        return [
            (str(state), str(updated_at or "")) if state else None for state, updated_at in replies
        ]

    @translated
    async def snapshots(
        self, rollout_ids: Sequence[str]
    ) -> list[tuple[RolloutRecord, dict[str, int]]]:
        """Each existing rollout with its raw counters, all read in one MULTI so they agree."""
        async with self._redis.pipeline(transaction=True) as pipe:
            for rollout_id in rollout_ids:
                pipe.hgetall(self._keys.rollout(rollout_id))
                pipe.hgetall(self._keys.rollout_counts(rollout_id))
            replies = await pipe.execute()
        found = []
        for rollout_id, raw, counts in zip(rollout_ids, replies[0::2], replies[1::2], strict=True):
            if raw:
                counters = {name: int(value) for name, value in fields(counts).items()}
                found.append((_record(rollout_id, fields(raw)), counters))
        return found

    @translated
    async def set_fields(self, rollout_id: str, **values: str | int) -> None:
        """Set bookkeeping fields of the rollout (wave, wave_done_at_ms); not its state."""
        await self._redis.hset(
            self._keys.rollout(rollout_id), mapping={k: str(v) for k, v in values.items()}
        )

    @translated
    async def change_state(
        self,
        rollout_id: str,
        *,
        allowed_from: Iterable[RolloutState],
        to: RolloutState,
        reason: str,
        actor: str,
        action: str,
        at: str,
        details: Mapping[str, Any] | None = None,
        extra: Mapping[str, str | int] | None = None,
        rebase_policy: bool = False,
    ) -> tuple[str, bool]:
        """Move the rollout to `to` if it is in `allowed_from`; (the old state, changed?).

        With `rebase_policy`, devices finished so far stop counting in the failure rate. A
        terminal `to` ends the rollout in the same step: every device not final is cancelled
        (its download keys revoked), every device is freed for other rollouts, and the rollout
        leaves the engine's active set.
        """
        event = {
            "at": at,
            "actor": actor,
            "action": action,
            "to": to.value,
            "reason": reason,
            **({"details": dict(details)} if details else {}),
        }
        record = await self._redis.hget(self._keys.rollout(rollout_id), "project_id")
        project_id = str(record or "")
        name = await self._redis.hget(self._keys.rollout(rollout_id), "name")
        reply = await self._state(
            keys=[
                self._keys.rollout(rollout_id),
                self._keys.rollout_events(rollout_id),
                self._keys.active_rollouts(),
                self._keys.rollout_name(project_id, str(name or "")),
                self._keys.rollout_counts(rollout_id),
                self._keys.rollout_notices(),
                self._keys.rollout_order(rollout_id),
                self._keys.rollout_deadlines(rollout_id),
                self._keys.rollout_retry(rollout_id),
                self._keys.rollout_unpublished(rollout_id),
                self._keys.finished_rollouts(),
            ],
            args=[
                json.dumps([state.value for state in allowed_from]),
                to.value,
                reason,
                json.dumps(event),
                at,
                "1" if to in TERMINAL_ROLLOUT_STATES else "0",
                rollout_id,
                json.dumps({k: str(v) for k, v in (extra or {}).items()}),
                "1" if rebase_policy else "0",
                NOTICES_KEPT,
                _TABLES[DeviceEvent.END],
                self._keys.rollout_device_prefix(rollout_id),
                self._keys.download_key(""),
                self._keys.device_rollout_prefix(),
                now_ms(),
                finished_at_ms(at),
            ],
        )
        return str(reply[0]), bool(reply[1])

    @translated
    async def dispatch(
        self,
        rollout_id: str,
        *,
        count: int,
        reach: int,
        ack_deadline_ms: int,
        grant: Grant,
    ) -> list[Dispatched]:
        """Move up to `count` devices pending → sent (retries first), each with a new command
        id, a download key for `grant` and the command's record, in one step."""
        if count <= 0:
            return []
        now = now_ms()
        expires_at_ms = now + grant.key_ttl_s * 1000
        pairs: list[str] = []
        for _ in range(count):
            pairs += (uuid.uuid4().hex, new_download_key())
        key_prefix, key_suffix = self._keys.device_download_keys("\n").split("\n")
        reply = await self._dispatch(
            keys=[
                self._keys.rollout(rollout_id),
                self._keys.rollout_order(rollout_id),
                self._keys.rollout_retry(rollout_id),
                self._keys.rollout_counts(rollout_id),
                self._keys.rollout_deadlines(rollout_id),
                self._keys.rollout_unpublished(rollout_id),
            ],
            args=[
                self._keys.rollout_device_prefix(rollout_id),
                now,
                ack_deadline_ms,
                reach,
                self._keys.download_key(""),
                key_prefix,
                key_suffix,
                self._keys.command(""),
                json.dumps(
                    {
                        "project_id": grant.project_id,
                        "file_name": grant.file_name,
                        "size": grant.size,
                        "sha256": grant.sha256,
                        "rollout_id": rollout_id,
                    }
                ),
                expires_at_ms,
                grant.key_ttl_s,
                json.dumps(
                    {
                        "project_id": grant.project_id,
                        "command": grant.command,
                        "sent_at": isoformat_z(utc_now()),
                        "rollout_id": rollout_id,
                        "kind": "update",
                    }
                ),
                COMMAND_RECORD_TTL_S,
                *pairs,
            ],
        )
        flat = [str(part) for part in reply]
        return [
            Dispatched(device_id, command_id, key, expires_at_ms)
            for device_id, command_id, key in zip(flat[0::3], flat[1::3], flat[2::3], strict=True)
        ]

    async def transition(
        self,
        rollout_id: str,
        device_id: str,
        event: DeviceEvent,
        *,
        rollout_states: Iterable[RolloutState] = (),
        deadline_ms: int | None = None,
        drop_deadline: bool = False,
        failure_type: str = "",
        command_id: str = "",
        command_field: str = "command_id",
        extra: Mapping[str, str | int] | None = None,
        retries: int = -1,
    ) -> Transition:
        """Apply `event` to the device by the domain's transition table, counters included."""
        request = TransitionRequest(
            rollout_id,
            device_id,
            event,
            rollout_states=tuple(rollout_states),
            deadline_ms=deadline_ms,
            drop_deadline=drop_deadline,
            failure_type=failure_type,
            command_id=command_id,
            command_field=command_field,
            extra=extra,
            retries=retries,
        )
        return (await self.transitions([request]))[0]

    @translated
    async def transitions(self, requests: Sequence[TransitionRequest]) -> list[Transition]:
        """Apply several device events in one script call, in order.

        Events of the same device are applied in the order given, each seeing the state the
        one before it left. A device that reaches `succeeded` loses its download key: the
        device says it has the firmware, so the key has done its work.
        """
        if not requests:
            return []
        keys = self._keys
        args: list[str | int] = ["events", now_ms(), keys.download_key("")]
        for request in requests:
            rid = request.rollout_id
            args += (
                keys.rollout(rid),
                keys.rollout_device(rid, request.device_id),
                keys.rollout_counts(rid),
                keys.rollout_deadlines(rid),
                keys.rollout_retry(rid),
                request.device_id,
                _TABLES[request.event],
                json.dumps([state.value for state in request.rollout_states])
                if request.rollout_states
                else "[]",
                request.deadline_arg(),
                request.failure_type,
                request.command_id,
                request.command_field,
                json.dumps({k: str(v) for k, v in request.extra.items()})
                if request.extra
                else "{}",
                request.retries,
            )
        # KEYS only routes the call (Redis Cluster): every key shares the prefix's slot.
        replies = await self._device(keys=[self._keys.active_rollouts()], args=args)
        outcomes = []
        for reply in replies:
            old_state, result = str(reply[0]), str(reply[1])
            if result in _REFUSALS:
                outcomes.append(Transition(old=old_state, new="", refused=result))
            else:
                outcomes.append(Transition(old=old_state, new=result, key=str(reply[2])))
        return outcomes

    def _rules_json(self, rollout_id: str, rules: ResultRules) -> str:
        cached = self._rules_json_cache.get(rollout_id)
        if cached is not None and cached[0] is rules:
            return cached[1]
        if len(self._rules_json_cache) >= RULES_CACHE_SIZE:
            self._rules_json_cache.clear()
        encoded = self._encode_rules(rollout_id, rules)
        self._rules_json_cache[rollout_id] = (rules, encoded)
        return encoded

    def _encode_rules(self, rollout_id: str, rules: ResultRules) -> str:
        events: dict[str, dict[str, Any]] = {}

        def names(by_status: Mapping[str, TransitionRequest]) -> dict[str, str]:
            for request in by_status.values():
                rule = _event_rule(request)
                if events.setdefault(request.event.value, rule) != rule:
                    raise ValueError(
                        f"the rules of rollout {rollout_id} give the {request.event.value} "
                        "event two meanings; give each event one template"
                    )
            return {status: request.event.value for status, request in by_status.items()}

        def statuses(status_rules: StatusRules) -> dict[str, Any]:
            return {
                "version": status_rules.expected_version,
                "matched": names(status_rules.matched),
                "mismatched": names(status_rules.mismatched),
            }

        keys = self._keys
        encoded = {
            "keys": {
                "rollout": keys.rollout(rollout_id),
                "device": keys.rollout_device_prefix(rollout_id),
                "counts": keys.rollout_counts(rollout_id),
                "deadlines": keys.rollout_deadlines(rollout_id),
                "retry": keys.rollout_retry(rollout_id),
            },
            "default": statuses(rules.default),
            "kinds": {kind: statuses(by_kind) for kind, by_kind in rules.kinds.items()},
        }
        encoded["events"] = events
        return json.dumps(encoded)

    @translated
    async def apply_results(
        self,
        results: Sequence[ReportedResult],
        rules: Mapping[str, ResultRules | None],
        *,
        at_ms: int | None = None,
    ) -> AppliedResults:
        """Match results to their commands and apply the events they mean, in one script call.

        `rules` holds the rules of the rollouts the results are likely about (None: no such
        rollout). When a result is about a rollout not in `rules`, nothing is written and
        `needed` names the rollouts to add. Otherwise every event is applied in order (as
        `transitions` applies them), each rollout heard from gets `last_result_ms = at_ms`,
        each device that answered a command sent to it gets its registry last_seen (at most
        once every LAST_SEEN_EVERY_S), and `outcomes` says what became of each result.
        """
        if not results:
            return AppliedResults([], [])
        keys = self._keys
        reported = [(r.command_id, r.device_id, r.status, r.version or "") for r in results]
        args: list[str | int] = [
            "results",
            now_ms() if at_ms is None else at_ms,
            keys.download_key(""),
            keys.command(""),
            json.dumps(reported, ensure_ascii=False),
            # A result is word from its device: the registry's last_seen (store/devices.py).
            keys.device(""),
            LAST_SEEN_FIELD,
            LAST_SEEN_EVERY_S,
        ]
        for rollout_id, rollout_rules in rules.items():
            args += (
                rollout_id,
                "" if rollout_rules is None else self._rules_json(rollout_id, rollout_rules),
            )
        # KEYS only routes the call (Redis Cluster): every key shares the prefix's slot.
        reply = await self._device(keys=[self._keys.active_rollouts()], args=args)
        if reply and reply[0] == "needed":
            return AppliedResults([], [str(rollout_id) for rollout_id in reply[1:]])
        return AppliedResults([ResultOutcome(*row) for row in reply], [])

    @translated
    async def device(self, rollout_id: str, device_id: str) -> dict[str, str]:
        """The device's record in the rollout ({} when it is not in it), hash or packed."""
        record = fields(await self._redis.hgetall(self._keys.rollout_device(rollout_id, device_id)))
        return record or (await self._archive.find(rollout_id, [device_id]))[0]

    @translated
    async def set_device_fields(self, rollout_id: str, device_id: str, **values: str | int) -> None:
        """Bookkeeping on a device record; never its state."""
        await self._redis.hset(
            self._keys.rollout_device(rollout_id, device_id),
            mapping={k: str(v) for k, v in values.items()},
        )

    @translated
    async def mark_published(self, rollout_id: str, *device_ids: str) -> None:
        """These devices' commands reached the broker."""
        if device_ids:
            await self._redis.srem(self._keys.rollout_unpublished(rollout_id), *device_ids)

    @translated
    async def note_resends(self, rollout_id: str, device_ids: Sequence[str], *, at_ms: int) -> None:
        """These devices are about to be sent their command again (`resends` + 1, `resent_at`)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for device_id in device_ids:
                device = self._keys.rollout_device(rollout_id, device_id)
                pipe.hincrby(device, "resends", 1)
                pipe.hset(device, "resent_at", str(at_ms))
            await pipe.execute()

    @translated
    async def set_keys(self, rollout_id: str, field: str, keys: Mapping[str, str]) -> None:
        """Record each device's download key (`key` or `rollback_key`) in one round trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for device_id, key in keys.items():
                pipe.hset(self._keys.rollout_device(rollout_id, device_id), field, key)
            await pipe.execute()

    @translated
    async def unpublished(self, rollout_id: str) -> list[str]:
        """Devices marked sent whose publish may not have happened (a crash in between)."""
        return sorted(
            members(await self._redis.smembers(self._keys.rollout_unpublished(rollout_id)))
        )

    @translated
    async def due(self, rollout_id: str, *, at_ms: int, limit: int = 500) -> list[str]:
        """Devices whose deadline has passed."""
        return members(
            await self._redis.zrangebyscore(
                self._keys.rollout_deadlines(rollout_id), "-inf", at_ms, start=0, num=limit
            )
        )

    @translated
    async def order_slice(self, rollout_id: str, start: int, stop: int) -> list[str]:
        """Device ids at positions [start, stop) of the cohort order."""
        if stop <= start:
            return []
        ids = members(
            await self._redis.lrange(self._keys.rollout_order(rollout_id), start, stop - 1)
        )
        if ids:
            return ids
        # A compacted rollout has no order list: its packed records are in cohort order.
        return [device_id for _, device_id, _ in await self._archive.rows(rollout_id, start, stop)]

    @translated
    async def device_states(
        self, rollout_id: str, device_ids: Sequence[str]
    ) -> list[dict[str, str]]:
        """The records of these devices, in order (hashes in one call, then any packed)."""
        keys = [self._keys.rollout_device(rollout_id, device_id) for device_id in device_ids]
        rows = await hgetall_many(self._hgetall_many, keys)
        # In this order: a compaction moves a record from its hash to the archive, never back.
        missing = [i for i, row in enumerate(rows) if not row]
        if missing:
            found = await self._archive.find(rollout_id, [device_ids[i] for i in missing])
            for i, row in zip(missing, found, strict=True):
                rows[i] = row
        return rows

    @translated
    async def events(self, rollout_id: str) -> list[dict[str, Any]]:
        """The audit trail, oldest first."""
        raw = members(await self._redis.lrange(self._keys.rollout_events(rollout_id), 0, -1))
        return [json.loads(entry) for entry in raw]

    @translated
    async def add_event(
        self,
        rollout_id: str,
        event: Mapping[str, Any],
        *,
        fields: Mapping[str, str | int] | None = None,
    ) -> None:
        """Append to the audit trail without a state change (e.g. a wave passing).

        `fields` of the rollout are set in the same transaction, and the entry goes to the
        notices stream, so the trail, the rollout and its subscribers never disagree.
        """
        entry = json.dumps(dict(event))
        async with self._redis.pipeline(transaction=True) as pipe:
            if fields:
                pipe.hset(
                    self._keys.rollout(rollout_id), mapping={k: str(v) for k, v in fields.items()}
                )
            pipe.rpush(self._keys.rollout_events(rollout_id), entry)
            pipe.xadd(
                self._keys.rollout_notices(),
                {"rollout_id": rollout_id, "event": entry},
                maxlen=NOTICES_KEPT,
                approximate=True,
            )
            await pipe.execute()

    @translated
    async def release_devices(self, rollout_id: str) -> int:
        """Free every device of a finished rollout for other rollouts; how many were freed."""
        freed = 0
        total = int(await self._redis.llen(self._keys.rollout_order(rollout_id)))
        for start in range(0, total, RELEASE_CHUNK):
            ids = await self.order_slice(rollout_id, start, start + RELEASE_CHUNK)
            freed += int(
                await self._release(
                    keys=[self._keys.active_rollouts()],  # routes the call (Redis Cluster)
                    args=[self._keys.device_rollout_prefix(), rollout_id, *ids],
                )
            )
        return freed

    @translated
    async def device_rollout(self, device_id: str) -> str | None:
        """The active rollout holding the device, if any."""
        value = await self._redis.get(self._keys.device_rollout(device_id))
        return str(value) if value is not None else None

    @translated
    async def device_rollouts(self, device_ids: Sequence[str]) -> list[str | None]:
        """The active rollout of each device (None when free)."""
        if not device_ids:
            return []
        values = await self._redis.mget([self._keys.device_rollout(d) for d in device_ids])
        return [str(v) if v is not None else None for v in values]

    @translated
    async def acquire_lease(self, rollout_id: str, owner: str, ttl_ms: int) -> bool:
        """Take or renew the right to drive the rollout."""
        key = self._keys.rollout_lease(rollout_id)
        if await self._redis.set(key, owner, nx=True, px=ttl_ms):
            return True
        # Renew only our own lease: compare and extend in one step.
        script = (
            "if redis.call('GET', KEYS[1]) == ARGV[1] then "
            "return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end"
        )
        return bool(await self._redis.eval(script, 1, key, owner, ttl_ms))

    @translated
    async def release_lease(self, rollout_id: str, owner: str) -> None:
        """Give the rollout back (on shutdown) so another replica takes it at once."""
        script = (
            "if redis.call('GET', KEYS[1]) == ARGV[1] then "
            "return redis.call('DEL', KEYS[1]) else return 0 end"
        )
        await self._redis.eval(script, 1, self._keys.rollout_lease(rollout_id), owner)

    @translated
    async def lease_owner(self, rollout_id: str) -> str | None:
        """The instance id of the replica that drives the rollout now, or None."""
        owner = await self._redis.get(self._keys.rollout_lease(rollout_id))
        return None if owner is None else str(owner)

    @translated
    async def rollback_cursor(self, rollout_id: str) -> int:
        """How far along the rollout's order the rollback has sent its firmware."""
        return int(await self._redis.hget(self._keys.rollout(rollout_id), "rollback_cursor") or 0)

    def announcements(self) -> Announcements:
        """New rollouts as they are created (to be closed by the listener)."""
        return Announcements(self._redis, self._keys.rollouts_channel())

    @translated
    async def is_active(self, rollout_id: str) -> bool:
        """True while the rollout is in the engine's active set."""
        return bool(await self._redis.sismember(self._keys.active_rollouts(), rollout_id))

    @translated
    async def deactivate(self, rollout_id: str) -> None:
        """The engine is done with a finished rollout: no replica needs to look at it again."""
        await self._redis.srem(self._keys.active_rollouts(), rollout_id)

    @translated
    async def mark_unpublished(self, rollout_id: str, device_id: str) -> None:
        """A command is about to be published to the device (repaired by takeover if not)."""
        await self._redis.sadd(self._keys.rollout_unpublished(rollout_id), device_id)

    @translated
    async def drop_deadline(self, rollout_id: str, device_id: str) -> None:
        """Forget a deadline that no longer applies (the device moved on meanwhile)."""
        await self._redis.zrem(self._keys.rollout_deadlines(rollout_id), device_id)

    @translated
    async def with_deadlines(self, rollout_id: str) -> list[str]:
        """Every device that has a deadline (all those sent and not yet final)."""
        return members(await self._redis.zrange(self._keys.rollout_deadlines(rollout_id), 0, -1))


def device_state(record: Mapping[str, str]) -> DeviceState | None:
    """The state in a device record, or None for an empty record."""
    value = record.get("state")
    return DeviceState(value) if value else None
