"""Rollouts in Redis: the rollout's record, its creation, its state changes and the listing.

Every change that must not race is one Lua script: creation (the name and every device must be
free; the cohort's device records and counters are written with it) and a state change with its
audit entry (a terminal one also ends every device not final and frees them all). The devices'
own changes are RolloutDeviceStore's (rollout_devices.py).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from orchestrator.domain.audit import AuditAction, AuditNote
from orchestrator.domain.states import TERMINAL_ROLLOUT_STATES, RolloutState
from orchestrator.store.audit import NOTICES_KEPT
from orchestrator.store.keys import RedisKeys
from orchestrator.store.redis import Redis, fields, load_script, members, translated
from orchestrator.store.script_rules import (
    COUNTER_NAMES,
    CREATED_STATE,
    END_TRANSITIONS,
    REBASED,
    REBASED_PREFIXES,
)
from orchestrator.timeutil import epoch_ms, now_ms


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
    # the wave whose end a sequential test found inconclusive and put to a person (-1: none)
    inconclusive_wave: int = -1
    # A halt or rollback by the failure policy is still to cancel the devices sent but not yet
    # downloading (set with the state change, cleared once they are cancelled).
    cancel_unstarted: bool = False
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
        inconclusive_wave=int(raw.get("inconclusive_wave", "-1")),
        cancel_unstarted=raw.get("cancel_unstarted") == "1",
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
        self._state = load_script(redis, "rollout_state")

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
        strata: Sequence[Sequence[str]] = (),
        stratum_of: Sequence[int] = (),
    ) -> tuple[str, CreateOutcome]:
        """A new `pending` rollout over `device_ids` (in wave order); its id and the outcome.

        With `rollout_id` (a hook delivery promised it), a rollout already made under that id
        is left as it is and reported as `exists`. With strata (`policy.by`), `strata` lists
        the label lists and `stratum_of` gives each device's index into it (in device order):
        the results script counts each device's failures under its labels.
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
        if strata:
            record["strata"] = json.dumps([list(labels) for labels in strata])
        event = {
            "at": created_at,
            "actor": created_by,
            "action": AuditNote.CREATE,
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
                COUNTER_NAMES,
                CREATED_STATE,
                json.dumps(list(stratum_of)),
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
        action: AuditAction,
        at: str,
        details: Mapping[str, Any] | None = None,
        extra: Mapping[str, str | int] | None = None,
        rebase_policy: bool = False,
        notes: Sequence[Mapping[str, Any]] = (),
        recorded_from: RolloutState | None = None,
    ) -> tuple[str, bool]:
        """Move the rollout to `to` if it is in `allowed_from`; (the old state, changed?).

        `extra` fields of the rollout are set, and the audit entries `notes` written before
        the change's own, in the same step (or none of it, when the state does not allow it);
        the change's entry says it left `recorded_from` (default: the state it found).

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
                END_TRANSITIONS,
                self._keys.rollout_device_prefix(rollout_id),
                self._keys.download_key(""),
                self._keys.device_rollout_prefix(),
                now_ms(),
                finished_at_ms(at),
                COUNTER_NAMES,
                REBASED,
                REBASED_PREFIXES,
                json.dumps([json.dumps(dict(note)) for note in notes]),
                recorded_from.value if recorded_from else "",
            ],
        )
        return str(reply[0]), bool(reply[1])

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
