"""The device registry on real Redis: short records, self-describing tokens, id sets cut into
leaves, and what earlier versions wrote (long records, `devtoken:` keys, one sorted set per
index) still read, authenticate and convert."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import uuid
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from bench.run import create_devices
from orchestrator.domain.devices import LAST_SEEN_EVERY_S, DeviceSource
from orchestrator.settings import Settings
from orchestrator.store import Stores
from orchestrator.store.devices import (
    TOKEN_CHARS,
    Device,
    decode,
    encode,
    new_token,
    token_device_id,
)
from orchestrator.store.redis import connect, members
from tests.store.test_rollouts import Reported

PROJECT = "proj-devices"
LEAF_MAX = 128  # ids per leaf at most (devices.lua MAX: Redis's zset-max-listpack-entries)
# Bytes per device without tags or metadata (record and its share of the project's id set) by
# MEMORY USAGE on Redis 7: about 310 measured; earlier versions took 744.
BUDGET_BYTES = 360


async def create(
    stores: Stores, name: str = "d", tags: list[str] | None = None, project_id: str = PROJECT
) -> tuple[Device, str]:
    return await stores.devices.create(
        project_id,
        name=name,
        description="",
        source=DeviceSource.MQTT,
        brand="Custom",
        model="Custom",
        tags=tags or [],
    )


async def write_as_earlier_versions(
    stores: Stores, project_id: str, *, name: str, tags: list[str]
) -> tuple[str, str]:
    """A device as versions before the short record wrote it (long hash, `devtoken:` key, one
    sorted set per index); its id and token."""
    device_id, token = str(uuid.uuid4()), secrets.token_urlsafe(24)
    hex_digest = hashlib.sha256(token.encode()).hexdigest()
    keys, redis = stores.keys, stores.redis
    await redis.hset(
        keys.device(device_id),
        mapping={
            "id": device_id,
            "project_id": project_id,
            "name": name,
            "description": "old",
            "source": "mqtt",
            "brand": "Acme",
            "model": "TH-1",
            "tags": json.dumps(tags),
            "allowed_commands": "reboot;download_firmware",
            "created_at": "2025-03-04T05:06:07Z",
            "token_digest": hex_digest,
        },
    )
    await redis.set(keys.device_token(hex_digest), device_id)
    await redis.zadd(keys.project_devices(project_id), {device_id: 0})
    for tag in tags:
        await redis.zadd(keys.project_tag(project_id, tag), {device_id: 0})
    return device_id, token


async def every_id(
    stores: Stores, project_id: str, tag: str | None = None, limit: int = 100
) -> list[str]:
    ids: list[str] = []
    cursor: str | None = None
    while True:
        page = await stores.devices.page(project_id, tag=tag, cursor=cursor, limit=limit)
        ids += [device.id for device in page.devices]
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor


async def leaves(stores: Stores, project_id: str) -> list[str]:
    keys = stores.keys
    base = keys.project_devices(project_id)
    bounds = members(await stores.redis.zrange(keys.project_devices_bounds(project_id), 0, -1))
    return [base] + [f"{base}:{first}" for first in bounds]


# --- tokens and records -----------------------------------------------------------------------


def test_a_token_carries_its_device_id_and_nothing_else_passes_for_one() -> None:
    device_id = str(uuid.uuid4())
    token = new_token(device_id)
    assert len(token) == TOKEN_CHARS
    assert token_device_id(token) == device_id
    assert token != new_token(device_id)
    for other in ("", secrets.token_urlsafe(24), token[:-1], token + "A", "!" * TOKEN_CHARS):
        assert token_device_id(other) is None


@given(
    name=st.text(min_size=1, max_size=20),
    description=st.text(max_size=20),
    source=st.sampled_from(list(DeviceSource)),
    brand=st.sampled_from(["Custom", "Acme", ""]),
    tags=st.lists(st.from_regex(r"[a-z0-9-]{1,8}", fullmatch=True), max_size=3, unique=True),
    allowed=st.lists(st.sampled_from(["reboot", "download_firmware"]), unique=True),
    metadata=st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=8), max_size=3),
    seen_s=st.sampled_from([0, 1_900_000_000]),
)
def test_a_short_record_reads_back_as_the_device_it_was_written_from(
    name: str,
    description: str,
    source: DeviceSource,
    brand: str,
    tags: list[str],
    allowed: list[str],
    metadata: dict[str, str],
    seen_s: int,
) -> None:
    device = Device(
        id=str(uuid.uuid4()),
        project_id=PROJECT,
        name=name,
        description=description,
        source=source,
        brand=brand or "Custom",
        model="Custom",
        tags=tags,
        allowed_commands=allowed,
        created_at="2026-11-22T10:00:00Z",
        last_seen="2030-03-17T17:46:40Z" if seen_s else "0001-01-01T00:00:00Z",
        metadata=metadata,
        token_digest="x" * 43,
    )
    record = encode(device)
    assert "id" not in record
    assert "p" in record
    assert decode(device.id, record) == device


def test_a_record_of_defaults_holds_only_what_the_key_does_not_say() -> None:
    device = Device(
        id=str(uuid.uuid4()),
        project_id=PROJECT,
        name="d",
        description="",
        source=DeviceSource.MQTT,
        brand="Custom",
        model="Custom",
        tags=[],
        allowed_commands=[],
        created_at="2026-11-22T10:00:00Z",
        token_digest="x" * 43,
    )
    assert encode(device) == {"p": PROJECT, "n": "d", "c": "1795341600", "k": "x" * 43}


async def test_a_new_device_has_a_short_record_and_no_token_key(clean: Stores) -> None:
    device, token = await create(clean)
    record = await clean.redis.hgetall(clean.keys.device(device.id))
    assert set(record) == {"p", "n", "c", "k"}
    assert token not in json.dumps(record)
    assert [
        key async for key in clean.redis.scan_iter(match=f"{clean.keys.prefix}devtoken:*")
    ] == []
    found = await clean.devices.by_token(token)
    assert found == device


async def test_a_token_naming_a_device_but_holding_another_secret_is_refused(
    clean: Stores,
) -> None:
    device, token = await create(clean)
    assert await clean.devices.by_token(new_token(device.id)) is None
    assert await clean.devices.by_token(new_token(str(uuid.uuid4()))) is None
    assert await clean.devices.by_token(token[:-2] + ("AA" if token[-2:] != "AA" else "BA")) is None


async def test_a_rotated_token_replaces_the_old_one(clean: Stores) -> None:
    device, old = await create(clean)
    new = new_token(device.id)
    assert await clean.devices.rotate_token(PROJECT, device.id, new) is not None
    assert await clean.devices.by_token(old) is None
    found = await clean.devices.by_token(new)
    assert found is not None
    assert found.id == device.id


# --- what earlier versions wrote ----------------------------------------------------------------


async def test_a_device_written_by_an_earlier_version_reads_and_authenticates(
    clean: Stores,
) -> None:
    device_id, token = await write_as_earlier_versions(clean, PROJECT, name="old", tags=["eu"])
    device = await clean.devices.get(PROJECT, device_id)
    assert device is not None
    assert (device.name, device.description, device.brand, device.model) == (
        "old",
        "old",
        "Acme",
        "TH-1",
    )
    assert device.tags == ["eu"]
    assert device.allowed_commands == ["reboot", "download_firmware"]
    assert device.created_at == "2025-03-04T05:06:07Z"
    assert device.last_seen == "0001-01-01T00:00:00Z"
    assert device.metadata == {}
    assert await clean.devices.by_token(token) == device
    assert await clean.devices.by_token(token + "x") is None
    assert await every_id(clean, PROJECT) == [device_id]
    assert await every_id(clean, PROJECT, tag="eu") == [device_id]


async def test_a_change_rewrites_an_earlier_record_short_and_its_token_still_works(
    clean: Stores,
) -> None:
    device_id, token = await write_as_earlier_versions(clean, PROJECT, name="old", tags=["eu"])
    before = await clean.devices.get(PROJECT, device_id)
    changed = await clean.devices.update(PROJECT, device_id, name="renamed", tags=["eu", "v2"])
    assert changed is not None
    record = await clean.redis.hgetall(clean.keys.device(device_id))
    assert "project_id" not in record
    assert record["p"] == PROJECT
    assert await clean.devices.get(PROJECT, device_id) == changed
    assert before is not None
    assert changed.created_at == before.created_at
    assert await clean.devices.by_token(token) == changed
    assert await every_id(clean, PROJECT, tag="v2") == [device_id]


async def test_rotating_an_earlier_token_removes_its_token_key(clean: Stores) -> None:
    device_id, old = await write_as_earlier_versions(clean, PROJECT, name="old", tags=[])
    old_key = clean.keys.device_token(hashlib.sha256(old.encode()).hexdigest())
    new = new_token(device_id)
    await clean.devices.rotate_token(PROJECT, device_id, new)
    assert not await clean.redis.exists(old_key)
    assert await clean.devices.by_token(old) is None
    found = await clean.devices.by_token(new)
    assert found is not None
    assert found.id == device_id


async def test_deleting_a_device_of_an_earlier_version_leaves_no_key(clean: Stores) -> None:
    device_id, token = await write_as_earlier_versions(clean, PROJECT, name="old", tags=["eu"])
    assert await clean.devices.delete(PROJECT, device_id)
    assert [key async for key in clean.redis.scan_iter(match=f"{clean.keys.prefix}*")] == []
    assert await clean.devices.by_token(token) is None


async def test_an_earlier_index_of_many_ids_is_cut_into_leaves_at_the_next_device(
    clean: Stores,
) -> None:
    """The first device created after the upgrade splits the one big sorted set."""
    old = [str(uuid.uuid4()) for _ in range(300)]
    await clean.redis.zadd(clean.keys.project_devices(PROJECT), dict.fromkeys(old, 0))
    for device_id in old:
        await clean.redis.hset(
            clean.keys.device(device_id), mapping={"p": PROJECT, "n": "x", "c": "0", "k": "k"}
        )
    assert await clean.redis.object("encoding", clean.keys.project_devices(PROJECT)) == "skiplist"
    device, _ = await create(clean)
    assert await every_id(clean, PROJECT, limit=7) == sorted([*old, device.id])
    for leaf in await leaves(clean, PROJECT):
        assert await clean.redis.zcard(leaf) <= LEAF_MAX
        assert await clean.redis.object("encoding", leaf) == "listpack"


# --- id sets cut into leaves --------------------------------------------------------------------


@hypothesis_settings(
    database=None,
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    steps=st.lists(
        st.tuples(st.integers(0, 160), st.floats(0, 1), st.integers(1, 300)),
        min_size=1,
        max_size=4,
    )
)
async def test_leaves_list_every_device_once_in_id_order_whatever_is_added_and_removed(
    clean: Stores, steps: list[tuple[int, float, int]]
) -> None:
    """Steps of (devices created, share of devices deleted, page size)."""
    project_id = f"proj-{uuid.uuid4().hex[:8]}"
    alive: dict[str, bool] = {}  # id: tagged
    for created, share, limit in steps:
        made = await asyncio.gather(
            *(
                create(clean, tags=["t"] if i % 2 else [], project_id=project_id)
                for i in range(created)
            )
        )
        alive.update((device.id, bool(device.tags)) for device, _ in made)
        doomed = list(alive)[: int(len(alive) * share)]
        for device_id in doomed:
            assert await clean.devices.delete(project_id, device_id)
            del alive[device_id]
        assert await every_id(clean, project_id, limit=limit) == sorted(alive)
        tagged = sorted(device_id for device_id, tagged in alive.items() if tagged)
        assert await every_id(clean, project_id, tag="t", limit=limit) == tagged
        for leaf in await leaves(clean, project_id):
            assert await clean.redis.zcard(leaf) <= LEAF_MAX


async def test_concurrent_creations_and_deletions_lose_no_device(clean: Stores) -> None:
    made = await asyncio.gather(*(create(clean, name=f"d{i}") for i in range(400)))
    ids = sorted(device.id for device, _ in made)
    doomed = ids[::3]
    results = await asyncio.gather(*(clean.devices.delete(PROJECT, d) for d in doomed))
    assert all(results)
    kept = sorted(set(ids) - set(doomed))
    assert await every_id(clean, PROJECT, limit=1000) == kept


# --- cost ---------------------------------------------------------------------------------------


@pytest.fixture
async def short_prefix_stores(settings: Settings) -> AsyncIterator[Stores]:
    """Stores on a prefix as short as the default `ota:` (key names count in the bytes)."""
    redis = connect(settings.redis_url)
    stores = Stores.build(redis, f"m{uuid.uuid4().hex[:6]}:")
    yield stores
    stale = [key async for key in redis.scan_iter(match=f"{stores.keys.prefix}*")]
    if stale:
        await redis.delete(*stale)
    await redis.aclose()


async def test_a_device_without_tags_costs_at_most_the_budget_in_redis(
    short_prefix_stores: Stores,
) -> None:
    """MEMORY USAGE of the device records and of the project's id set, per device."""
    stores = short_prefix_stores
    project = await stores.projects.create("memory")  # a real id: 36 characters in each record
    n = 1000
    await create_devices(stores, project.id, n)  # the soak's devices
    total = 0
    async for key in stores.redis.scan_iter(match=f"{stores.keys.prefix}*", count=1000):
        total += int(await stores.redis.memory_usage(key, samples=0) or 0)
    assert total / n <= BUDGET_BYTES


# --- last_seen ----------------------------------------------------------------------------------

T = 1_900_000_000  # epoch seconds
T_ISO = "2030-03-17T17:46:40Z"


async def test_last_seen_is_written_at_most_once_a_minute(clean: Stores) -> None:
    device, _ = await create(clean)
    assert device.last_seen == "0001-01-01T00:00:00Z"
    assert await clean.devices.touch(device.id, now_s=T)
    assert not await clean.devices.touch(device.id, now_s=T + LAST_SEEN_EVERY_S - 1)
    found = await clean.devices.by_id(device.id)
    assert found is not None
    assert found.last_seen == T_ISO
    assert await clean.devices.touch(device.id, now_s=T + LAST_SEEN_EVERY_S)
    assert found.last_seen_s == T


async def test_hearing_from_a_deleted_device_writes_nothing(clean: Stores) -> None:
    assert not await clean.devices.touch(str(uuid.uuid4()), now_s=T)
    assert [key async for key in clean.redis.scan_iter(match=f"{clean.keys.prefix}*")] == []


async def test_a_result_answering_a_command_marks_its_device_seen(clean: Stores) -> None:
    """In the script that applies results: a result on the topic of the device the command
    went to; not a result forged on another device's topic, nor one for an unknown command."""
    device, _ = await create(clean, name="answers")
    other, _ = await create(clean, name="forges")
    await clean.commands.record(
        [(device.id, "cmd-1")], project_id=PROJECT, command="reboot", sent_at=T_ISO
    )

    async def report(device_id: str, at_s: int, command_id: str = "cmd-1") -> None:
        applied = await clean.rollout_devices.apply_results(
            [Reported(command_id, device_id, "received")], {}, at_ms=at_s * 1000
        )
        assert applied.needed == []

    async def last_seen(device_id: str) -> int:
        found = await clean.devices.by_id(device_id)
        assert found is not None
        return found.last_seen_s

    await report(device.id, T)
    await report(other.id, T)
    await report(other.id, T, command_id="no-such-command")
    assert (await last_seen(device.id), await last_seen(other.id)) == (T, 0)
    await report(device.id, T + 10)
    assert await last_seen(device.id) == T
    await report(device.id, T + 10 + LAST_SEEN_EVERY_S)
    assert await last_seen(device.id) == T + 10 + LAST_SEEN_EVERY_S


# --- firmware version ---------------------------------------------------------------------------


async def test_a_success_carrying_a_version_records_it_as_the_devices_firmware(
    clean: Stores,
) -> None:
    """In the script that applies results, like last_seen: only a status that reports the
    running firmware, only on the topic of the device the command went to."""
    device, _ = await create(clean, name="reports")
    other, _ = await create(clean, name="forges")
    assert (device.firmware_version, device.firmware_version_at) == ("", None)
    await clean.commands.record(
        [(device.id, "cmd-v")], project_id=PROJECT, command="reboot", sent_at=T_ISO
    )

    async def report(device_id: str, status: str, version: str | None, at_s: int) -> None:
        applied = await clean.rollout_devices.apply_results(
            [Reported("cmd-v", device_id, status, version)], {}, at_ms=at_s * 1000
        )
        assert applied.needed == []

    async def firmware(device_id: str) -> tuple[str, str | None]:
        found = await clean.devices.by_id(device_id)
        assert found is not None
        return found.firmware_version, found.firmware_version_at

    await report(device.id, "received", "9.9.9", T)
    await report(device.id, "success", None, T)
    await report(other.id, "success", "6.6.6", T)
    assert await firmware(device.id) == await firmware(other.id) == ("", None)
    await report(device.id, "success", "2.0.4", T)
    assert await firmware(device.id) == ("2.0.4", T_ISO)
    assert await firmware(other.id) == ("", None)
    # A health report names the image running after the reboot: the old one, when it reverted.
    await report(device.id, "healthy", "2.0.3", T + 1)
    assert (await firmware(device.id))[0] == "2.0.3"
    await report(device.id, "unhealthy", "2.0.5", T + 2)
    assert (await firmware(device.id))[0] == "2.0.5"


async def test_a_reported_version_is_kept_unless_a_later_report_is_held(clean: Stores) -> None:
    device, _ = await create(clean)
    versions = clean.devices
    assert await versions.record_reported_version(device.id, "2.0.3", T * 1000)
    assert not await versions.record_reported_version(device.id, "1.0.0", (T - 5) * 1000)
    found = await versions.by_id(device.id)
    assert found is not None
    assert (found.firmware_version, found.firmware_version_at_s) == ("2.0.3", T)
    assert await versions.record_reported_version(device.id, "2.1.0", (T + 5) * 1000)
    renamed = await versions.update(PROJECT, device.id, name="kept")  # a rewrite keeps it
    assert renamed is not None
    assert (renamed.firmware_version, renamed.firmware_version_at_s) == ("2.1.0", T + 5)
    assert not await versions.record_reported_version(str(uuid.uuid4()), "2.1.0", T * 1000)
