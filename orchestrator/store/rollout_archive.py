"""Finished rollouts' device records, packed: what a rollout keeps per device once it is over.

While a rollout runs, each device has a hash (`rollout:{id}:dev:{device}`, about 360 B) and an
entry in the cohort order list (about 40 B). Once the rollout is terminal and no engine holds
it, `compact` packs those records, a chunk of ARCHIVE_CHUNK devices per script call, into one
hash per rollout (`rollout:{id}:archive`, about 75 B per device): chunks of records in cohort
order, so a page of the device listing is a slice of a chunk and its cursor (a cohort position)
means the same before and after, plus lookup buckets to find one device by its id. Each call
packs its chunk and deletes the hashes it packed in one step, so a compaction killed at any
point resumes where it stopped: nothing lost, nothing packed twice.

`rows` and `find` read both forms in one script call, so a compaction under way never shows a
device twice or not at all; RolloutStore's device reads read the hashes, then `find` those
missing (safe in that order: a compaction moves records out of hashes, never back). A packed
record leaves out the fields that only steer a running rollout (LEFT_OUT): the download keys
(revoked when the rollout ended, or expired) and the re-send bookkeeping. The Lua script
(lua/rollout_archive.lua) documents the encoding.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.domain.states import TERMINAL_ROLLOUT_STATES
from orchestrator.store.keys import RedisKeys
from orchestrator.store.redis import Redis, load_script, members, translated

ARCHIVE_CHUNK = 128  # device records per chunk, and per compaction call (a few ms each)
BUCKET_DEVICES = 64  # devices per lookup bucket, about
# Fields a packed record leaves out: download keys (revoked with the rollout's end, or expired
# by then) and the bookkeeping of re-sends to silent devices, which only a running rollout uses.
LEFT_OUT = ("key", "rollback_key", "seen_at", "resends", "resent_at")


@dataclass(frozen=True, slots=True)
class Compacted:
    """What one `compact` did: its last outcome and how many device records it packed."""

    outcome: str  # active | leased | gone | not_finished | more | done
    devices: int

    @property
    def done(self) -> bool:
        """True when nothing is left for a later call: packed, or not to be packed now."""
        return self.outcome != "more"


def _row(flat: Sequence[str]) -> dict[str, str]:
    return dict(zip(flat[0::2], flat[1::2], strict=True))


class RolloutArchive:
    """Packs finished rollouts' device records and reads a rollout's devices in either form."""

    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self._redis = redis
        self._keys = keys
        self._terminal = json.dumps(sorted(state.value for state in TERMINAL_ROLLOUT_STATES))
        self._left_out = json.dumps(list(LEFT_OUT))
        self._script = load_script(redis, "rollout_archive")

    async def _call(self, *args: str | int) -> list[Any]:
        # KEYS only routes the call (Redis Cluster): every key shares the prefix's slot.
        reply: list[Any] = await self._script(keys=[self._keys.active_rollouts()], args=args)
        return reply

    @translated
    async def compact(
        self, rollout_id: str, *, max_devices: int, at_ms: int, chunk: int = ARCHIVE_CHUNK
    ) -> Compacted:
        """Pack the rollout's device records, `chunk` per call, until done or about `max_devices`.

        Does nothing to a rollout an engine may still write to (in the active set, or its lease
        held) or one that is not terminal. `chunk` counts only on the first call: a
        compaction under way keeps the chunk it started with. `at_ms` scores the rollout in the
        archived index when the finished index has lost it.
        """
        keys = self._keys
        packed = 0
        while True:
            outcome, count = await self._call(
                "compact",
                rollout_id,
                self._terminal,
                chunk,
                BUCKET_DEVICES,
                self._left_out,
                keys.active_rollouts(),
                keys.rollout_lease(rollout_id),
                keys.rollout(rollout_id),
                keys.rollout_order(rollout_id),
                keys.rollout_device_prefix(rollout_id),
                keys.device_rollout_prefix(),
                keys.rollout_archive(rollout_id),
                keys.archived_rollouts(),
                keys.finished_rollouts(),
                at_ms,
            )
            packed += int(count)
            compacted = Compacted(str(outcome), packed)
            if compacted.done or packed >= max_devices:
                return compacted

    @translated
    async def rows(
        self, rollout_id: str, start: int, stop: int, *, state: str = ""
    ) -> list[tuple[int, str, dict[str, str]]]:
        """(cohort position, device id, record) of the devices at positions [start, stop), only
        those in `state` unless it is '' ({} for a device without a record), hashes or packed
        alike, in one call."""
        if stop <= start:
            return []
        keys = self._keys
        positions, ids, rows = await self._call(
            "slice",
            keys.rollout_archive(rollout_id),
            keys.rollout_order(rollout_id),
            keys.rollout_device_prefix(rollout_id),
            start,
            stop,
            state,
        )
        return [
            (int(position), str(device_id), _row(row))
            for position, device_id, row in zip(positions, ids, rows, strict=True)
        ]

    @translated
    async def find(self, rollout_id: str, device_ids: Sequence[str]) -> list[dict[str, str]]:
        """Each device's record in the rollout, hash or packed ({} when it is not in it)."""
        if not device_ids:
            return []
        keys = self._keys
        rows = await self._call(
            "find",
            keys.rollout_archive(rollout_id),
            keys.rollout_device_prefix(rollout_id),
            *device_ids,
        )
        return [_row(row) for row in rows]

    @translated
    async def due(self, *, after_ms: int | None, settled_ms: int, limit: int) -> list[str]:
        """Up to `limit` rollouts, oldest first, that finished after `after_ms` (None: any time)
        and at or before `settled_ms` and are not packed yet."""
        keys = self._keys
        reply = await self._call(
            "due",
            keys.finished_rollouts(),
            keys.archived_rollouts(),
            "-inf" if after_ms is None else f"({after_ms}",
            settled_ms,
            limit,
        )
        return members(reply)

    @translated
    async def archived(self, rollout_ids: Sequence[str]) -> set[str]:
        """Those of the rollouts whose device records are packed, all or in part."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for rollout_id in rollout_ids:
                pipe.exists(self._keys.rollout_archive(rollout_id))
            replies = await pipe.execute()
        return {rollout_id for rollout_id, found in zip(rollout_ids, replies, strict=True) if found}
