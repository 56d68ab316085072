"""Devices: records, the id sets that list them, and device tokens stored as digests.

A record is a hash with one-letter field names, holding only what differs from the defaults
(listed below): a device of the seed's defaults without tags costs about 230 B, where
the long field names of earlier versions took 424 B. Records written by earlier versions (long
names, `id`, `created_at` as text, `token_digest` in hex, tags as JSON) are read as they are
and rewritten in the short form by the next change.

A device token is self-describing: url-safe base64 of the device id's 16 bytes and 24 random
bytes, so the record is found by the id it carries and the token is checked against the sha256
the record holds, in constant time. Tokens made by earlier versions carry no id: they are found
through their `devtoken:{sha256 hex}` key, which lives until the token is rotated or the device
deleted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from orchestrator.domain.devices import (
    DEFAULT_AVATAR,
    DEFAULT_BRAND,
    DEFAULT_MODEL,
    LAST_SEEN_EVERY_S,
    NEVER_SEEN,
    DeviceSource,
)
from orchestrator.errors import ProjectDeleting
from orchestrator.store.keys import RedisKeys
from orchestrator.store.redis import Redis, fields, load_script, translated
from orchestrator.timeutil import epoch_ms, isoformat_z, utc_now

TOKEN_SECRET_BYTES = 24
TOKEN_CHARS = 54  # url-safe base64, unpadded, of 16 id bytes and TOKEN_SECRET_BYTES
EARLIER_TOKEN_CHARS = 32  # secrets.token_urlsafe(24): tokens made by earlier versions
SCAN_BUDGET = 5000  # ids a filtered listing looks at per script call (each call is short)
TAG_SEPARATOR = ","  # tags never hold one (domain.devices.TAG)

# The short record, field by field (absent: the default in brackets):
#   p project id, n name, d description [''], s source [mqtt], b brand [Custom],
#   m model [Custom], t tags comma-separated [none], a allowed_commands semicolon-separated
#   [every command], c created_at in epoch seconds, k the token's sha256 (url-safe base64,
#   unpadded), l last_seen in epoch seconds [never], v the firmware version the device last
#   reported [none], w when it reported it, in epoch seconds [never], @{key} a custom metadata
#   entry.
METADATA_FIELD = "@"  # a custom metadata entry is the field `@{key}`
LAST_SEEN_FIELD = "l"
VERSION_FIELD = "v"
VERSION_AT_FIELD = "w"


@dataclass(frozen=True)
class Device:
    """A device as stored; the token itself is never kept, only its digest."""

    id: str
    project_id: str
    name: str
    description: str
    source: DeviceSource
    brand: str
    model: str
    tags: list[str]
    allowed_commands: list[str]
    created_at: str
    avatar: str = DEFAULT_AVATAR
    last_seen: str = NEVER_SEEN
    metadata: dict[str, str] = field(default_factory=dict)
    token_digest: str = field(default="", repr=False)  # sha256, url-safe base64 unpadded
    firmware_version: str = ""  # the version it last reported ('' = none yet)
    firmware_version_at_s: int = 0  # when it reported it, epoch seconds (0 = never)

    @property
    def firmware_version_at(self) -> str | None:
        """When the device reported firmware_version (ISO 8601), None for never."""
        return _iso(str(self.firmware_version_at_s)) if self.firmware_version_at_s else None

    @property
    def last_seen_s(self) -> int:
        """last_seen in epoch seconds; 0 for never."""
        if self.last_seen == NEVER_SEEN:
            return 0
        return (epoch_ms(self.last_seen) or 0) // 1000


@dataclass(frozen=True)
class DevicePage:
    """One page of a device listing and the cursor of the next (None at the end)."""

    devices: list[Device]
    next_cursor: str | None


@dataclass(frozen=True)
class _Write:
    """A device record to store (None: delete it), and the keys that change with it."""

    device: Device | None
    remove: Sequence[Sequence[str]] = ()  # id sets (base, bounds) the device leaves
    add: Sequence[Sequence[str]] = ()  # id sets (base, bounds) the device joins
    delete: Sequence[str] = ()  # keys deleted with it
    download_keys: bool = False  # revoke the device's download keys
    new_in: str = ""  # a project the device is made in: refused once its deletion has begun


# --- tokens -----------------------------------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def token_digest(token: str) -> str:
    """The sha256 of a token as stored: url-safe base64, unpadded."""
    return _b64(hashlib.sha256(token.encode()).digest())


def new_token(device_id: str) -> str:
    """A fresh token of the device: its HTTP credential and its MQTT password, carrying its id."""
    return _b64(uuid.UUID(device_id).bytes + secrets.token_bytes(TOKEN_SECRET_BYTES))


def token_device_id(token: str) -> str | None:
    """The device id a token carries; None for a token of an earlier version (or no token)."""
    if len(token) != TOKEN_CHARS:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "==")
    except (binascii.Error, ValueError):
        return None
    if len(raw) != 16 + TOKEN_SECRET_BYTES or _b64(raw) != token:
        return None
    return str(uuid.UUID(bytes=raw[:16]))


def _legacy_index_digest(digest: str) -> str:
    """A stored digest as the hex that names a token's `devtoken:` key (earlier versions)."""
    return base64.urlsafe_b64decode(digest + "=" * (-len(digest) % 4)).hex() if digest else ""


# --- the record -------------------------------------------------------------------------------


def _iso(epoch_s: str) -> str:
    return isoformat_z(datetime.fromtimestamp(int(epoch_s), UTC))


def _epoch_s(text: str) -> str:
    ms = epoch_ms(text)
    return str(ms // 1000) if ms is not None else text


def encode(device: Device) -> dict[str, str]:
    """The short record of `device`: the defaults and the id (the key's) left out."""
    if any(TAG_SEPARATOR in tag for tag in device.tags):
        raise ValueError(f"tags must not contain {TAG_SEPARATOR!r}: {device.tags!r}")
    record = {
        "p": device.project_id,
        "n": device.name,
        "d": device.description,
        "s": "" if device.source is DeviceSource.MQTT else device.source.value,
        "b": "" if device.brand == DEFAULT_BRAND else device.brand,
        "m": "" if device.model == DEFAULT_MODEL else device.model,
        "t": TAG_SEPARATOR.join(device.tags),
        "a": ";".join(device.allowed_commands),
        "c": _epoch_s(device.created_at),
        "k": device.token_digest,
        LAST_SEEN_FIELD: str(device.last_seen_s or ""),
        VERSION_FIELD: device.firmware_version,
        VERSION_AT_FIELD: str(device.firmware_version_at_s or ""),
    }
    record.update({METADATA_FIELD + key: value for key, value in device.metadata.items()})
    # "" is kept for a custom metadata value: it says the key is there.
    return {
        name: value for name, value in record.items() if value or name.startswith(METADATA_FIELD)
    }


def decode(device_id: str, record: Mapping[str, str]) -> Device:
    """The device in a record of either form (short, or the long one of earlier versions)."""
    seen = record.get(LAST_SEEN_FIELD)
    last_seen = _iso(seen) if seen else NEVER_SEEN
    if "p" not in record:
        return _decode_long(device_id, record, last_seen)
    created = record.get("c", "0")
    return Device(
        id=device_id,
        project_id=record["p"],
        name=record.get("n", ""),
        description=record.get("d", ""),
        source=DeviceSource(record.get("s") or DeviceSource.MQTT),
        brand=record.get("b") or DEFAULT_BRAND,
        model=record.get("m") or DEFAULT_MODEL,
        tags=[tag for tag in record.get("t", "").split(TAG_SEPARATOR) if tag],
        allowed_commands=[c for c in record.get("a", "").split(";") if c],
        created_at=_iso(created) if created.isdigit() else created,
        last_seen=last_seen,
        metadata={
            name[1:]: value for name, value in record.items() if name.startswith(METADATA_FIELD)
        },
        token_digest=record.get("k", ""),
        firmware_version=record.get(VERSION_FIELD, ""),
        firmware_version_at_s=int(record.get(VERSION_AT_FIELD) or 0),
    )


def _decode_long(device_id: str, record: Mapping[str, str], last_seen: str) -> Device:
    """A record as versions before the short form wrote it."""
    hex_digest = record.get("token_digest", "")
    return Device(
        id=record.get("id", device_id),
        project_id=record["project_id"],
        name=record["name"],
        description=record.get("description", ""),
        source=DeviceSource(record["source"]),
        brand=record["brand"],
        model=record["model"],
        tags=json.loads(record.get("tags", "[]")),
        allowed_commands=[c for c in record.get("allowed_commands", "").split(";") if c],
        created_at=record["created_at"],
        avatar=record.get("avatar", DEFAULT_AVATAR),
        last_seen=last_seen,
        token_digest=_b64(bytes.fromhex(hex_digest)) if hex_digest else "",
    )


# --- the store --------------------------------------------------------------------------------


class DeviceStore:
    """Create, read, update and delete devices; find a device by its token."""

    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self._redis = redis
        self._keys = keys
        self._script = load_script(redis, "devices")

    def _sets(self, project_id: str, tags: Sequence[str]) -> list[tuple[str, str]]:
        """The id sets (base, bounds) that list a device of the project with these tags."""
        keys = self._keys
        return [(keys.project_devices(project_id), keys.project_devices_bounds(project_id))] + [
            (keys.project_tag(project_id, tag), keys.project_tag_bounds(project_id, tag))
            for tag in tags
        ]

    async def _call(self, entry: str, route: str, args: Mapping[str, Any]) -> Any:
        # KEYS only routes the call (Redis Cluster): every key shares the prefix's slot.
        return await self._script(keys=[route], args=[entry, json.dumps(args, ensure_ascii=False)])

    async def _write(self, device_id: str, expect: Mapping[str, str], write: _Write) -> bool:
        """Carry out `write` if the record still is `expect`; False when it changed meanwhile."""
        key = self._keys.device(device_id)
        args: dict[str, Any] = {
            "key": key,
            "id": device_id,
            "expect": expect,
            "record": encode(write.device) if write.device is not None else {},
            "remove": [list(ids) for ids in write.remove],
            "add": [list(ids) for ids in write.add],
            "delete": list(write.delete),
        }
        if write.download_keys:
            args["download_keys"] = [
                self._keys.device_download_keys(device_id),
                self._keys.download_key(""),
            ]
        if write.new_in:
            args["unless"] = self._keys.project_deletion(write.new_in)
        verdict = await self._call("write", key, args)
        if verdict == "refused":
            raise ProjectDeleting(write.new_in)
        return bool(verdict == "ok")

    async def _replace(
        self, project_id: str, device_id: str, change: Callable[[Device], _Write]
    ) -> _Write | None:
        """Read the device, work out `change`, and write it unless the record changed
        meanwhile (then read again); None when the project has no such device."""
        while True:
            record = await self._read(device_id)
            if not record:
                return None
            device = decode(device_id, record)
            if device.project_id != project_id:
                return None
            write = change(device)
            if await self._write(device_id, record, write):
                return write

    async def _read(self, device_id: str) -> dict[str, str]:
        return fields(await self._redis.hgetall(self._keys.device(device_id)))

    @translated
    async def create(
        self,
        project_id: str,
        *,
        name: str,
        description: str,
        source: DeviceSource,
        brand: str,
        model: str,
        tags: list[str],
        allowed_commands: Sequence[str] = (),
        metadata: Mapping[str, str] | None = None,
    ) -> tuple[Device, str]:
        """A new device and its token (plain text, returned once, stored as a digest);
        ProjectDeleting once the project's deletion has begun."""
        while True:  # a random id already taken (never seen) takes another
            device_id = str(uuid.uuid4())
            token = new_token(device_id)
            device = Device(
                id=device_id,
                project_id=project_id,
                name=name,
                description=description,
                source=source,
                brand=brand,
                model=model,
                tags=tags,
                allowed_commands=list(allowed_commands),
                created_at=isoformat_z(utc_now()),
                metadata=dict(metadata or {}),
                token_digest=token_digest(token),
            )
            made = _Write(device, add=self._sets(project_id, tags), new_in=project_id)
            if await self._write(device_id, {}, made):
                return device, token

    @translated
    async def get(self, project_id: str, device_id: str) -> Device | None:
        """The device if it exists in this project."""
        device = await self.by_id(device_id)
        return device if device is not None and device.project_id == project_id else None

    @translated
    async def by_token(self, token: str) -> Device | None:
        """The device whose token this is, or None."""
        device_id = token_device_id(token)
        if device_id is None and len(token) != EARLIER_TOKEN_CHARS:
            return None
        if device_id is None:  # a token of an earlier version: its own index key
            hex_digest = hashlib.sha256(token.encode()).hexdigest()
            found = await self._redis.get(self._keys.device_token(hex_digest))
            if found is None:
                return None
            device_id = str(found)
        device = await self.by_id(device_id)
        if device is None or not hmac.compare_digest(device.token_digest, token_digest(token)):
            return None
        return device

    @translated
    async def by_id(self, device_id: str) -> Device | None:
        """The device with this id in any project, or None."""
        record = await self._read(device_id)
        return decode(device_id, record) if record else None

    @translated
    async def page(
        self,
        project_id: str,
        *,
        tag: str | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        cursor: str | None = None,
        limit: int = 100,
    ) -> DevicePage:
        """Devices of a project in id order, optionally only those carrying `tag` and holding
        every `metadata` key with its value (a scan of the listed devices, SCAN_BUDGET ids at
        a time)."""
        keys = self._keys
        if tag:
            base, bounds = (
                keys.project_tag(project_id, tag),
                keys.project_tag_bounds(project_id, tag),
            )
        else:
            base, bounds = keys.project_devices(project_id), keys.project_devices_bounds(project_id)
        match = {METADATA_FIELD + key: value for key, value in metadata}
        devices: list[Device] = []
        after = cursor or ""
        while True:
            want = limit + 1 - len(devices)
            done, last, rows = await self._call(
                "page",
                base,
                {
                    "base": base,
                    "bounds": bounds,
                    "after": after,
                    "want": want,
                    "budget": max(want, SCAN_BUDGET),
                    "record": keys.device(""),
                    "match": match,
                },
            )
            for device_id, row in zip(rows[0::2], rows[1::2], strict=True):
                record = dict(zip(row[0::2], row[1::2], strict=True))
                devices.append(decode(str(device_id), record))
            if len(devices) > limit:
                return DevicePage(devices[:limit], devices[limit - 1].id)
            if done:
                return DevicePage(devices, None)
            after = str(last)

    @translated
    async def update(
        self,
        project_id: str,
        device_id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        tags: list[str] | None = None,
        allowed_commands: list[str] | None = None,
        metadata: Callable[[dict[str, str]], dict[str, str]] | None = None,
    ) -> Device | None:
        """Apply the given changes atomically (tag indexes included); None if it is gone.

        `metadata` maps the device's custom metadata to the new one (it may raise to refuse).
        """

        def change(device: Device) -> _Write:
            changed = replace(
                device,
                name=device.name if name is None else name,
                description=device.description if description is None else description,
                tags=device.tags if tags is None else tags,
                allowed_commands=(
                    device.allowed_commands if allowed_commands is None else allowed_commands
                ),
                metadata=device.metadata if metadata is None else metadata(device.metadata),
            )
            old_tags, new_tags = set(device.tags), set(changed.tags)
            return _Write(
                changed,
                remove=self._sets(project_id, sorted(old_tags - new_tags))[1:],
                add=self._sets(project_id, sorted(new_tags - old_tags))[1:],
            )

        written = await self._replace(project_id, device_id, change)
        return written.device if written is not None else None

    @translated
    async def delete(self, project_id: str, device_id: str) -> bool:
        """Delete the device, its token and indexes, and revoke its download keys."""

        def change(device: Device) -> _Write:
            return _Write(
                None,
                remove=self._sets(project_id, device.tags),
                delete=self._legacy_token_keys(device),
                download_keys=True,
            )

        return await self._replace(project_id, device_id, change) is not None

    @translated
    async def rotate_token(self, project_id: str, device_id: str, token: str) -> Device | None:
        """Make `token` the device's only token (the old one stops working); None if gone."""

        def change(device: Device) -> _Write:
            rotated = replace(device, token_digest=token_digest(token))
            return _Write(rotated, delete=self._legacy_token_keys(device))

        written = await self._replace(project_id, device_id, change)
        return written.device if written is not None else None

    def _legacy_token_keys(self, device: Device) -> list[str]:
        """The `devtoken:` key a token of an earlier version may have (none for newer ones)."""
        hex_digest = _legacy_index_digest(device.token_digest)
        return [self._keys.device_token(hex_digest)] if hex_digest else []

    @translated
    async def touch(self, device_id: str, *, now_s: int | None = None) -> bool:
        """The service heard from the device: last_seen becomes now, unless it was written
        less than LAST_SEEN_EVERY_S ago (or the device is gone). True when written."""
        key = self._keys.device(device_id)
        args = {
            "key": key,
            "field": LAST_SEEN_FIELD,
            "now": str(int(utc_now().timestamp()) if now_s is None else now_s),
            "every": str(LAST_SEEN_EVERY_S),
        }
        return bool(await self._call("touch", key, args))

    @translated
    async def record_reported_versions(self, reports: Sequence[tuple[str, str, int]]) -> int:
        """Devices reported the firmware they run: (device id, version, at epoch ms) each.

        Each existing device's record keeps the version and when it was reported, unless it
        holds a later report already. Returns how many records were written.
        """
        if not reports:
            return 0
        keys = self._keys
        args = {
            "reports": [
                [keys.device(device_id), version, str(at_ms // 1000)]
                for device_id, version, at_ms in reports
            ],
            "field": VERSION_FIELD,
            "at_field": VERSION_AT_FIELD,
        }
        return int(await self._call("versions", keys.device(reports[0][0]), args))

    async def record_reported_version(self, device_id: str, version: str, at_ms: int) -> bool:
        """The device reported running `version` at `at_ms`; True when its record took it."""
        return bool(await self.record_reported_versions([(device_id, version, at_ms)]))

    @translated
    async def mqtt_device_ids(self) -> list[str]:
        """The id of every mqtt device of every project (for keeping the broker in step)."""
        project_ids = [str(p) for p in await self._redis.zrange(self._keys.projects(), 0, -1)]
        device_ids: list[str] = []
        for project_id in project_ids:
            cursor: str | None = None
            while True:
                page = await self.page(project_id, cursor=cursor, limit=1000)
                device_ids += [d.id for d in page.devices if d.source is DeviceSource.MQTT]
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
        return device_ids
