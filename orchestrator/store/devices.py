"""Devices: records, tag indexes, and device tokens stored as digests."""

from __future__ import annotations

import json
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any, cast

from redis.exceptions import WatchError

from orchestrator.domain.devices import DEFAULT_AVATAR, NEVER_SEEN, DeviceSource
from orchestrator.store.api_keys import digest
from orchestrator.store.keys import RedisKeys
from orchestrator.store.redis import Redis, fields, members, translated
from orchestrator.timeutil import isoformat_z, utc_now


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
    token_digest: str = field(default="", repr=False)


@dataclass(frozen=True)
class DevicePage:
    """One page of a device listing and the cursor of the next (None at the end)."""

    devices: list[Device]
    next_cursor: str | None


def new_token() -> str:
    """A fresh device token: the device's HTTP credential and its MQTT password."""
    return secrets.token_urlsafe(24)


def _decode(record: dict[str, str]) -> Device:
    allowed = record.get("allowed_commands", "")
    return Device(
        id=record["id"],
        project_id=record["project_id"],
        name=record["name"],
        description=record.get("description", ""),
        source=DeviceSource(record["source"]),
        brand=record["brand"],
        model=record["model"],
        tags=json.loads(record.get("tags", "[]")),
        allowed_commands=[c for c in allowed.split(";") if c],
        created_at=record["created_at"],
        avatar=record.get("avatar", DEFAULT_AVATAR),
        last_seen=record.get("last_seen", NEVER_SEEN),
        token_digest=record.get("token_digest", ""),
    )


class DeviceStore:
    """Create, read, update and delete devices; find a device by its token."""

    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self._redis = redis
        self._keys = keys

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
    ) -> tuple[Device, str]:
        """A new device and its token (plain text, returned once, stored as a digest)."""
        token = new_token()
        device = Device(
            id=str(uuid.uuid4()),
            project_id=project_id,
            name=name,
            description=description,
            source=source,
            brand=brand,
            model=model,
            tags=tags,
            allowed_commands=[],
            created_at=isoformat_z(utc_now()),
            token_digest=digest(token),
        )
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                self._keys.device(device.id),
                mapping={
                    "id": device.id,
                    "project_id": project_id,
                    "name": name,
                    "description": description,
                    "source": source.value,
                    "brand": brand,
                    "model": model,
                    "tags": json.dumps(tags),
                    "allowed_commands": "",
                    "created_at": device.created_at,
                    "token_digest": device.token_digest,
                },
            )
            pipe.set(self._keys.device_token(device.token_digest), device.id)
            pipe.zadd(self._keys.project_devices(project_id), {device.id: 0})
            for tag in tags:
                pipe.zadd(self._keys.project_tag(project_id, tag), {device.id: 0})
            await pipe.execute()
        return device, token

    @translated
    async def get(self, project_id: str, device_id: str) -> Device | None:
        """The device if it exists in this project."""
        record = fields(await self._redis.hgetall(self._keys.device(device_id)))
        if not record or record["project_id"] != project_id:
            return None
        return _decode(record)

    @translated
    async def by_token(self, token: str) -> Device | None:
        """The device whose token this is, or None."""
        device_id = await self._redis.get(self._keys.device_token(digest(token)))
        if device_id is None:
            return None
        record = fields(await self._redis.hgetall(self._keys.device(str(device_id))))
        return _decode(record) if record else None

    @translated
    async def by_id(self, device_id: str) -> Device | None:
        """The device with this id in any project, or None."""
        record = fields(await self._redis.hgetall(self._keys.device(device_id)))
        return _decode(record) if record else None

    @translated
    async def page(
        self,
        project_id: str,
        *,
        tag: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> DevicePage:
        """Devices of a project in id order, optionally only those carrying `tag`."""
        index = (
            self._keys.project_tag(project_id, tag)
            if tag
            else self._keys.project_devices(project_id)
        )
        start = f"({cursor}" if cursor else "-"
        ids = members(await self._redis.zrangebylex(index, start, "+", start=0, num=limit + 1))
        page_ids, more = ids[:limit], len(ids) > limit
        async with self._redis.pipeline(transaction=False) as pipe:
            for device_id in page_ids:
                pipe.hgetall(self._keys.device(device_id))
            rows = await pipe.execute()
        devices = [_decode(fields(row)) for row in rows if row]
        return DevicePage(devices=devices, next_cursor=page_ids[-1] if more else None)

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
    ) -> Device | None:
        """Apply the given changes atomically (tag indexes included); None if it is gone."""
        key = self._keys.device(device_id)
        while True:
            async with self._redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    record = fields(await pipe.hgetall(key))
                    if not record or record["project_id"] != project_id:
                        return None
                    changes: dict[str, str] = {}
                    if name is not None:
                        changes["name"] = name
                    if description is not None:
                        changes["description"] = description
                    if allowed_commands is not None:
                        changes["allowed_commands"] = ";".join(allowed_commands)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    if tags is not None:
                        changes["tags"] = json.dumps(tags)
                        old = set(json.loads(record.get("tags", "[]")))
                        for tag in old - set(tags):
                            pipe.zrem(self._keys.project_tag(project_id, tag), device_id)
                        for tag in set(tags) - old:
                            pipe.zadd(self._keys.project_tag(project_id, tag), {device_id: 0})
                    if changes:
                        pipe.hset(key, mapping=cast(Any, changes))
                    await pipe.execute()
                    return _decode({**record, **changes})
                except WatchError:
                    continue

    @translated
    async def delete(self, project_id: str, device_id: str) -> bool:
        """Delete the device, its token and indexes, and revoke its download keys."""
        key = self._keys.device(device_id)
        keys_set = self._keys.device_download_keys(device_id)
        while True:
            async with self._redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key, keys_set)
                    record = fields(await pipe.hgetall(key))
                    if not record or record["project_id"] != project_id:
                        return False
                    download_keys = members(await pipe.smembers(keys_set))
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.delete(key, keys_set)
                    pipe.delete(self._keys.device_token(record.get("token_digest", "")))
                    pipe.zrem(self._keys.project_devices(project_id), device_id)
                    for tag in json.loads(record.get("tags", "[]")):
                        pipe.zrem(self._keys.project_tag(project_id, tag), device_id)
                    for download_key in download_keys:
                        pipe.delete(self._keys.download_key(download_key))
                    await pipe.execute()
                    return True
                except WatchError:
                    continue

    @translated
    async def rotate_token(self, project_id: str, device_id: str, token: str) -> Device | None:
        """Make `token` the device's only token (the old one stops working); None if gone."""
        key = self._keys.device(device_id)
        while True:
            async with self._redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    record = fields(await pipe.hgetall(key))
                    if not record or record["project_id"] != project_id:
                        return None
                    token_digest = digest(token)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.delete(self._keys.device_token(record.get("token_digest", "")))
                    pipe.set(self._keys.device_token(token_digest), device_id)
                    pipe.hset(key, "token_digest", token_digest)
                    await pipe.execute()
                    return _decode({**record, "token_digest": token_digest})
                except WatchError:
                    continue

    @translated
    async def mqtt_device_ids(self) -> list[str]:
        """The id of every mqtt device of every project (for keeping the broker in step)."""
        project_ids = members(await self._redis.zrange(self._keys.projects(), 0, -1))
        device_ids: list[str] = []
        for project_id in project_ids:
            device_ids += members(
                await self._redis.zrange(self._keys.project_devices(project_id), 0, -1)
            )
        sources: list[str | None] = []
        for start in range(0, len(device_ids), 1000):
            async with self._redis.pipeline(transaction=False) as pipe:
                for device_id in device_ids[start : start + 1000]:
                    pipe.hget(self._keys.device(device_id), "source")
                sources += await pipe.execute()
        return [
            device_id
            for device_id, source in zip(device_ids, sources, strict=True)
            if source == DeviceSource.MQTT.value
        ]
