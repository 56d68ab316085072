"""A rollout's devices in Redis: dispatch, transitions, results, deadlines, and the bookkeeping
of publishing (the unpublished set) and of retries (the retry list).

Every change that must not race is one Lua script: dispatch (pending → sent only while the
rollout runs, with each device's download key and command record), and device events with
their counters, whether named one by one, chosen by a passed deadline, or meant by results.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from orchestrator.domain.devices import LAST_SEEN_EVERY_S, VERSION_REPORTS
from orchestrator.domain.states import (
    DEADLINE_TRANSITIONS,
    FAILURE_TYPES,
    SILENT,
    SOAKING_DEVICE_STATES,
    DeviceEvent,
    RolloutState,
    deadline_event,
)
from orchestrator.store.commands import COMMAND_RECORD_TTL_S
from orchestrator.store.device_events import (
    EncodedRules,
    ResultRules,
    TransitionRequest,
    encode_events,
    rollout_keys,
    spec,
)
from orchestrator.store.devices import LAST_SEEN_FIELD, VERSION_AT_FIELD, VERSION_FIELD
from orchestrator.store.download_keys import DownloadKey, new_download_key
from orchestrator.store.keys import RedisKeys
from orchestrator.store.redis import Redis, fields, hgetall_many, load_script, members, translated
from orchestrator.store.rollout_archive import RolloutArchive
from orchestrator.store.script_rules import COUNTER_NAMES, DEVICE_RULES, DISPATCH
from orchestrator.timeutil import isoformat_z, now_ms, utc_now

RELEASE_CHUNK = 1000  # device locks freed per script call
EXPIRE_BATCH = 500  # devices past their deadline handled per script call
ERROR_CHARS = 200  # of a device's error, kept on its record


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


class ReportedResult(Protocol):
    """A result a device reported about a command (what apply_results reads)."""

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

    @property
    def error(self) -> str | None:
        """What went wrong, in the device's words, if it said."""


@dataclass(frozen=True, slots=True)
class ResultOutcome:
    """What apply_results did with one result.

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


_REFUSALS = frozenset({"missing", "rollout_state", "command_mismatch", "no_transition"})
_UNMATCHED = frozenset({"unknown_command", "wrong_device"})
_TIMED_OUT = FAILURE_TYPES[DeviceEvent.TIMED_OUT].value
# Of a device in its soak: when the soak ends (epoch ms); the name rollout_device.lua writes.
SOAK_UNTIL_FIELD = "soak_until"


def _soak_deadlines() -> dict[str, Any]:
    """What a passed deadline means to a device in its soak, as the 'due' entry takes it: at
    or after its soak's end it soaked, before it the device fell silent (unhealthy, not
    retried)."""
    [state] = SOAKING_DEVICE_STATES
    over, silent = (deadline_event(state, soak_over=over) for over in (True, False))
    return {
        "states": {soaking.value: True for soaking in SOAKING_DEVICE_STATES},
        "field": SOAK_UNTIL_FIELD,
        "over": spec(TransitionRequest("", "", over, drop_deadline=True)),
        "silent": spec(
            TransitionRequest(
                "",
                "",
                silent,
                drop_deadline=True,
                failure_type=FAILURE_TYPES[silent].value,
                extra={"error": SILENT},
            ),
            with_extra=True,
        ),
    }


_SOAK_DEADLINES = _soak_deadlines()


def _transition(reply: Sequence[Any]) -> Transition:
    old_state, result = str(reply[0]), str(reply[1])
    if result in _REFUSALS:
        return Transition(old=old_state, new="", refused=result)
    return Transition(old=old_state, new=result, key=str(reply[2]))


class RolloutDeviceStore:
    """Read and move the devices of rollouts atomically."""

    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self._redis = redis
        self._keys = keys
        self._dispatch = load_script(redis, "rollout_dispatch")
        self._device = load_script(redis, "rollout_device")
        self._hgetall_many = load_script(redis, "hgetall_many")
        self._release = load_script(redis, "rollout_release")
        self._set_keys = load_script(redis, "rollout_set_keys")
        self._archive = RolloutArchive(redis, keys)  # where a finished rollout's devices go
        self._rules = EncodedRules(keys)

    async def _call_device(self, entry: str, now: int, work: Sequence[str]) -> Any:
        """rollout_device.lua's `entry` point with its work (ARGV[5..])."""
        # KEYS only routes the call (Redis Cluster): every key shares the prefix's slot.
        return await self._device(
            keys=[self._keys.active_rollouts()],
            args=[entry, now, self._keys.download_key(""), DEVICE_RULES, *work],
        )

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
                COUNTER_NAMES,
                DISPATCH,
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
        marks: Mapping[str, str | int] | None = None,
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
            marks=marks,
            retries=retries,
        )
        return (await self.transitions([request]))[0]

    @translated
    async def transitions(self, requests: Sequence[TransitionRequest]) -> list[Transition]:
        """Apply several device events in one script call, in order.

        Events of the same device are applied in the order given, each seeing the state the
        one before it left. A device that reaches a state that spends its download key
        (`succeeded`: the device says it has the firmware) loses the key in the same step.
        """
        if not requests:
            return []
        replies = await self._call_device("events", now_ms(), encode_events(self._keys, requests))
        return [_transition(reply) for reply in replies]

    @translated
    async def expire(
        self,
        rollout_id: str,
        *,
        at_ms: int,
        retries: int,
        limit: int = EXPIRE_BATCH,
        hold_soaks: bool = False,
    ) -> list[tuple[str, Transition]]:
        """Deal with up to `limit` devices whose deadline is at or before `at_ms`, soonest
        first, in one step; (device id, what happened) for each.

        Each device gets the event its state gives a passed deadline (domain.states.
        deadline_event: it times out, with `retries`, or its rollback fails) and loses its
        deadline and, when the event applies, its download key. A device in its soak soaked
        (its deadline was the soak's end) or fell silent; with `hold_soaks` it is left for a
        later call. Fewer than `limit` back: no device was left past its deadline.
        """
        request = TransitionRequest(
            rollout_id,
            "",
            DeviceEvent.TIMED_OUT,
            drop_deadline=True,
            failure_type=_TIMED_OUT,
            retries=retries,
            revoke_key=True,
        )
        work = {
            "spec": spec(request, table=DEADLINE_TRANSITIONS),
            "at": str(at_ms),
            "limit": limit,
            "soak": {**_SOAK_DEADLINES, "hold": hold_soaks},
        }
        rollout = {"keys": rollout_keys(self._keys, rollout_id)}
        replies = await self._call_device(
            "due", now_ms(), [json.dumps(work), rollout_id, json.dumps(rollout)]
        )
        return [(str(reply[0]), _transition(reply[1:])) for reply in replies]

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
        reported = [
            (r.command_id, r.device_id, r.status, r.version or "", (r.error or "")[:ERROR_CHARS])
            for r in results
        ]
        work = [
            json.dumps(
                {
                    "commands": self._keys.command(""),
                    "results": reported,
                    # A result is word from its device: the registry's last_seen (devices.py).
                    "registry": self._keys.device(""),
                    "seen_field": LAST_SEEN_FIELD,
                    "seen_every_s": LAST_SEEN_EVERY_S,
                    # and, from a report of the firmware it runs, that version (devices.py).
                    "version_field": VERSION_FIELD,
                    "version_at_field": VERSION_AT_FIELD,
                    "version_statuses": dict.fromkeys(VERSION_REPORTS, True),
                },
                ensure_ascii=False,
            )
        ]
        for rollout_id, rollout_rules in rules.items():
            work += (
                rollout_id,
                "" if rollout_rules is None else self._rules.get(rollout_id, rollout_rules),
            )
        reply = await self._call_device("results", now_ms() if at_ms is None else at_ms, work)
        if reply and reply[0] == "needed":
            return AppliedResults([], [str(rollout_id) for rollout_id in reply[1:]])
        return AppliedResults([ResultOutcome(*row) for row in reply], [])

    @translated
    async def device(self, rollout_id: str, device_id: str) -> dict[str, str]:
        """The device's record in the rollout ({} when it is not in it), hash or packed."""
        record = fields(await self._redis.hgetall(self._keys.rollout_device(rollout_id, device_id)))
        return record or (await self._archive.find(rollout_id, [device_id]))[0]

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
    async def set_device_fields(self, rollout_id: str, device_id: str, **values: str | int) -> None:
        """Bookkeeping on a device record; never its state."""
        await self._redis.hset(
            self._keys.rollout_device(rollout_id, device_id),
            mapping={k: str(v) for k, v in values.items()},
        )

    @translated
    async def set_keys(
        self,
        rollout_id: str,
        keys: Sequence[DownloadKey],
        *,
        rollback: bool,
        waiting: Collection[str],
    ) -> list[DownloadKey]:
        """Record each device's new download key (`key`, or `rollback_key`) where the device is
        still in a `waiting` state for the key's command, in one step; the keys recorded.

        A device that finished meanwhile (its success revoked the key it used) is left as it
        is: the caller revokes the keys not recorded and sends nothing to those devices.
        """
        if not keys:
            return []
        field, command_field = (
            ("rollback_key", "rollback_command_id")
            if rollback
            else (
                "key",
                "command_id",
            )
        )
        args: list[str] = [field, command_field, json.dumps(sorted(waiting))]
        for key in keys:
            args += (key.command_id, key.key)
        recorded = await self._set_keys(
            keys=[self._keys.rollout_device(rollout_id, key.device_id) for key in keys],
            args=args,
        )
        return [key for key, done in zip(keys, recorded, strict=True) if int(done)]

    @translated
    async def note_resends(self, rollout_id: str, device_ids: Sequence[str], *, at_ms: int) -> None:
        """These devices are about to be sent their command again (`resends` + 1, `resent_at`)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for device_id in device_ids:
                device = self._keys.rollout_device(rollout_id, device_id)
                pipe.hincrby(device, "resends", 1)
                pipe.hset(device, "resent_at", str(at_ms))
            await pipe.execute()

    # --- publishing ------------------------------------------------------------------------

    @translated
    async def unpublished(self, rollout_id: str) -> list[str]:
        """Devices marked sent whose publish may not have happened (a crash in between)."""
        return sorted(
            members(await self._redis.smembers(self._keys.rollout_unpublished(rollout_id)))
        )

    @translated
    async def mark_unpublished(self, rollout_id: str, device_id: str) -> None:
        """A command is about to be published to the device (repaired by takeover if not)."""
        await self._redis.sadd(self._keys.rollout_unpublished(rollout_id), device_id)

    @translated
    async def mark_published(self, rollout_id: str, *device_ids: str) -> None:
        """These devices' commands reached the broker."""
        if device_ids:
            await self._redis.srem(self._keys.rollout_unpublished(rollout_id), *device_ids)

    # --- deadlines -------------------------------------------------------------------------

    @translated
    async def due(self, rollout_id: str, *, at_ms: int, limit: int = 500) -> list[str]:
        """Devices whose deadline has passed."""
        return members(
            await self._redis.zrangebyscore(
                self._keys.rollout_deadlines(rollout_id), "-inf", at_ms, start=0, num=limit
            )
        )

    @translated
    async def with_deadlines(self, rollout_id: str) -> list[str]:
        """Every device that has a deadline (all those sent and not yet final)."""
        return members(await self._redis.zrange(self._keys.rollout_deadlines(rollout_id), 0, -1))

    @translated
    async def drop_deadline(self, rollout_id: str, device_id: str) -> None:
        """Forget a deadline that no longer applies (the device moved on meanwhile)."""
        await self._redis.zrem(self._keys.rollout_deadlines(rollout_id), device_id)

    # --- which rollout holds a device ------------------------------------------------------

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
