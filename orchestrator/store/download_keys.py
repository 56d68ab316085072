"""Download keys: one delivery of one file to one device, within a TTL.

A key is `issued`, `claimed` by exactly one transfer at a time (with a lease the transfer
renews), or `spent` once every byte has been delivered. A transfer that breaks off releases
its claim so the same device can resume with Range. The key hash expires at its TTL.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from orchestrator.store.keys import RedisKeys
from orchestrator.store.redis import Pipeline, Redis, fields, load_script, members, translated

DOWNLOAD_KEY_PREFIX = "dk_"
CLAIM_LEASE_MS = 60_000  # a transfer that stops renewing loses its claim after this
EVENTS_MAXLEN = 100_000  # approximate cap on the download events stream


class ClaimVerdict(StrEnum):
    """What a claim attempt found."""

    OK = "ok"
    UNKNOWN = "unknown"  # never issued, expired or revoked
    WRONG_DEVICE = "wrong_device"
    SPENT = "spent"
    BUSY = "busy"  # another transfer holds the claim
    EXHAUSTED = "exhausted"  # the transfer would take the key past what it may ever send


@dataclass(frozen=True)
class DownloadKey:
    """What a key grants: one file of one project to one device."""

    key: str
    device_id: str
    project_id: str
    file_name: str
    size: int
    command_id: str
    rollout_id: str
    expires_at_ms: int
    sha256: str = ""  # of the bytes the command announced ("" for keys from before pinning)


@dataclass(frozen=True)
class Claim:
    """A transfer's hold on a key; `covered` bytes of the file were delivered before, and the
    key's transfers sent `delivered` bytes in all (overlaps included)."""

    claim_id: str
    covered: int
    delivered: int = 0


def new_download_key() -> str:
    """`dk_` and 32 url-safe random characters."""
    return DOWNLOAD_KEY_PREFIX + secrets.token_urlsafe(24)


def _now_ms() -> int:
    return int(time.time() * 1000)


class DownloadKeyStore:
    """Issue, look up, claim, renew, release and revoke download keys."""

    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self._redis = redis
        self._keys = keys
        self._claim = load_script(redis, "dk_claim")
        self._renew = load_script(redis, "dk_renew")
        self._release = load_script(redis, "dk_release")

    @property
    def claim_lease_ms(self) -> int:
        """How long a claim holds without renewal (CLAIM_LEASE_MS, read at each use)."""
        return CLAIM_LEASE_MS

    @translated
    async def issue(
        self,
        device_commands: Sequence[tuple[str, str]],
        *,
        project_id: str,
        file_name: str,
        size: int,
        ttl_s: int,
        rollout_id: str = "",
        sha256: str = "",
    ) -> list[DownloadKey]:
        """One key per (device id, command id), each for one device and one file, dying after
        `ttl_s` seconds; written in one round trip."""
        expires_at_ms = _now_ms() + ttl_s * 1000
        records = [
            DownloadKey(
                key=new_download_key(),
                device_id=device_id,
                project_id=project_id,
                file_name=file_name,
                size=size,
                command_id=command_id,
                rollout_id=rollout_id,
                expires_at_ms=expires_at_ms,
                sha256=sha256,
            )
            for device_id, command_id in device_commands
        ]
        async with self._redis.pipeline(transaction=False) as pipe:
            for record in records:
                self._write(pipe, record, ttl_s)
            await pipe.execute()
        return records

    def _write(self, pipe: Pipeline, record: DownloadKey, ttl_s: int) -> None:
        hash_key = self._keys.download_key(record.key)
        device_keys = self._keys.device_download_keys(record.device_id)
        pipe.hset(
            hash_key,
            mapping={
                "device_id": record.device_id,
                "project_id": record.project_id,
                "file_name": record.file_name,
                "size": str(record.size),
                "sha256": record.sha256,
                "command_id": record.command_id,
                "rollout_id": record.rollout_id,
                "expires_at_ms": str(record.expires_at_ms),
                "state": "issued",
                "covered": "0",
                "claims": "0",
            },
        )
        pipe.pexpireat(hash_key, record.expires_at_ms)
        pipe.sadd(device_keys, record.key)
        file_keys = self._keys.file_download_keys(record.project_id, record.file_name)
        pipe.sadd(file_keys, record.key)
        pipe.expire(file_keys, ttl_s)
        # Every key lives ttl_s, so the newest decides how long the set is needed.
        pipe.expire(device_keys, ttl_s)

    @translated
    async def get(self, key: str) -> DownloadKey | None:
        """The key's binding, or None when unknown, expired or revoked."""
        record = fields(await self._redis.hgetall(self._keys.download_key(key)))
        if not record:
            return None
        return DownloadKey(
            key=key,
            device_id=record["device_id"],
            project_id=record["project_id"],
            file_name=record["file_name"],
            size=int(record["size"]),
            command_id=record.get("command_id", ""),
            rollout_id=record.get("rollout_id", ""),
            expires_at_ms=int(record["expires_at_ms"]),
            sha256=record.get("sha256", ""),
        )

    @translated
    async def live_for_file(self, project_id: str, name: str) -> list[str]:
        """Keys issued for the file by commands that may still send it (not spent or dead)."""
        keys = sorted(
            members(await self._redis.smembers(self._keys.file_download_keys(project_id, name)))
        )
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hget(self._keys.download_key(key), "state")
            states = await pipe.execute()
        return [
            key for key, state in zip(keys, states, strict=True) if state not in (None, "spent")
        ]

    @translated
    async def revoke_for_file(self, project_id: str, name: str) -> None:
        """Forget the keys issued for the file by commands (they die with the file)."""
        index = self._keys.file_download_keys(project_id, name)
        keys = members(await self._redis.smembers(index))
        await self._redis.delete(index, *(self._keys.download_key(key) for key in keys))

    @translated
    async def state(self, key: str) -> str | None:
        """`issued`, `claimed` or `spent`; None when the key is gone."""
        value = await self._redis.hget(self._keys.download_key(key), "state")
        return str(value) if value is not None else None

    @translated
    async def claim(
        self,
        key: str,
        device_id: str,
        *,
        span_bytes: int = 0,
        budget_bytes: int | None = None,
        lease_ms: int | None = None,
    ) -> tuple[ClaimVerdict, Claim | None]:
        """Try to take the key for one transfer by `device_id` of `span_bytes` bytes.

        EXHAUSTED when the key's transfers would then have sent more than `budget_bytes` in
        all (None: no bound; the download route always gives one).
        The claim lapses after `lease_ms` (default CLAIM_LEASE_MS) unless renewed.
        """
        claim_id = secrets.token_hex(8)
        lease = self.claim_lease_ms if lease_ms is None else lease_ms
        verdict, covered, delivered = await self._run_claim(
            key, device_id, claim_id, lease, span_bytes, budget_bytes, check_only=False
        )
        if verdict is not ClaimVerdict.OK:
            return verdict, None
        return verdict, Claim(claim_id=claim_id, covered=covered, delivered=delivered)

    @translated
    async def check(
        self, key: str, device_id: str, *, span_bytes: int = 0, budget_bytes: int | None = None
    ) -> ClaimVerdict:
        """The verdict `claim` would give now, with nothing claimed, spent or recorded (HEAD)."""
        verdict, _, _ = await self._run_claim(
            key, device_id, "", 0, span_bytes, budget_bytes, check_only=True
        )
        return verdict

    async def _run_claim(
        self,
        key: str,
        device_id: str,
        claim_id: str,
        lease_ms: int,
        span_bytes: int,
        budget_bytes: int | None,
        *,
        check_only: bool,
    ) -> tuple[ClaimVerdict, int, int]:
        # One script for both, so a check can never disagree with the claim it foretells.
        verdict, covered, delivered = await self._claim(
            keys=[self._keys.download_key(key), self._keys.download_events()],
            args=[
                device_id,
                claim_id,
                _now_ms(),
                lease_ms,
                EVENTS_MAXLEN,
                span_bytes,
                -1 if budget_bytes is None else budget_bytes,
                "1" if check_only else "0",
            ],
        )
        return ClaimVerdict(verdict), int(covered), int(delivered)

    @translated
    async def renew(self, key: str, claim: Claim) -> bool:
        """Extend the claim; False when it was lost (revoked, expired or taken over)."""
        held = await self._renew(
            keys=[self._keys.download_key(key)],
            args=[claim.claim_id, _now_ms(), self.claim_lease_ms],
        )
        return bool(held)

    @translated
    async def release(self, key: str, claim_id: str, *, first: int, end: int) -> str:
        """End the transfer (claim `claim_id`) that sent bytes [first, end).

        Returns the key's state after it: issued, spent, or lost when the claim was no longer
        held (revoked, expired, taken over after its lease).
        """
        state = await self._release(
            keys=[self._keys.download_key(key), self._keys.download_events()],
            args=[claim_id, first, end, EVENTS_MAXLEN],
        )
        return str(state)

    @translated
    async def revoke(self, key: str) -> bool:
        """Kill the key at once; True when it existed."""
        return bool(await self._redis.delete(self._keys.download_key(key)))
