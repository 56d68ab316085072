"""The download-key Lua scripts on real Redis: claim, renew, release, revoke, expiry."""

from __future__ import annotations

import asyncio
import uuid
from typing import cast

import pytest

from orchestrator.store import Stores
from orchestrator.store import download_keys as download_keys_module
from orchestrator.store.download_keys import Claim, ClaimVerdict, DownloadKey
from tests.conftest import wait_for

SIZE = 1000
Entry = tuple[str, dict[str, str]]  # a stream entry: id, fields


async def issue(stores: Stores, device_id: str = "dev-1", ttl_s: int = 60) -> DownloadKey:
    [key] = await stores.download_keys.issue(
        [(device_id, uuid.uuid4().hex)],
        project_id="proj-1",
        file_name="fw.bin",
        size=SIZE,
        ttl_s=ttl_s,
        rollout_id="ro-1",
    )
    return key


async def claim_ok(stores: Stores, key: str, device_id: str = "dev-1") -> Claim:
    verdict, claim = await stores.download_keys.claim(key, device_id)
    assert verdict is ClaimVerdict.OK
    assert claim is not None
    return claim


async def covered(stores: Stores, key: str) -> int:
    return int(await stores.redis.hget(stores.keys.download_key(key), "covered") or -1)


async def test_issue_makes_a_dk_key_bound_to_device_file_and_ttl(stores: Stores) -> None:
    key = await issue(stores, ttl_s=30)
    assert key.key.startswith("dk_")
    assert len(key.key) == 3 + 32
    assert await stores.download_keys.get(key.key) == key
    assert await stores.download_keys.state(key.key) == "issued"
    ttl_ms = await stores.redis.pttl(stores.keys.download_key(key.key))
    assert 25_000 < ttl_ms <= 30_000
    members = await stores.redis.smembers(stores.keys.device_download_keys("dev-1"))
    assert members == {key.key}


async def test_claim_of_an_issued_key_is_ok_and_marks_it_claimed(stores: Stores) -> None:
    key = await issue(stores)
    claim = await claim_ok(stores, key.key)
    assert claim.covered == 0
    assert await stores.download_keys.state(key.key) == "claimed"


async def test_claim_while_another_transfer_holds_it_is_busy(stores: Stores) -> None:
    key = await issue(stores)
    await claim_ok(stores, key.key)
    assert await stores.download_keys.claim(key.key, "dev-1") == (ClaimVerdict.BUSY, None)


async def test_claim_by_another_device_is_wrong_device_and_leaves_the_key(stores: Stores) -> None:
    key = await issue(stores)
    verdict, claim = await stores.download_keys.claim(key.key, "dev-2")
    assert (verdict, claim) == (ClaimVerdict.WRONG_DEVICE, None)
    assert await stores.download_keys.state(key.key) == "issued"
    await claim_ok(stores, key.key)


async def test_claim_of_an_unknown_or_revoked_key_is_unknown(stores: Stores) -> None:
    assert await stores.download_keys.claim("dk_nope", "dev-1") == (ClaimVerdict.UNKNOWN, None)
    key = await issue(stores)
    assert await stores.download_keys.revoke(key.key) is True
    assert await stores.download_keys.revoke(key.key) is False
    assert await stores.download_keys.claim(key.key, "dev-1") == (ClaimVerdict.UNKNOWN, None)
    assert await stores.download_keys.get(key.key) is None


async def test_release_of_every_byte_spends_the_key(stores: Stores) -> None:
    key = await issue(stores)
    claim = await claim_ok(stores, key.key)
    assert await stores.download_keys.release(key.key, claim.claim_id, first=0, end=SIZE) == "spent"
    assert await stores.download_keys.state(key.key) == "spent"
    assert await stores.download_keys.claim(key.key, "dev-1") == (ClaimVerdict.SPENT, None)


async def test_release_with_part_of_the_bytes_frees_the_key_and_records_covered(
    stores: Stores,
) -> None:
    key = await issue(stores)
    claim = await claim_ok(stores, key.key)
    assert await stores.download_keys.release(key.key, claim.claim_id, first=0, end=400) == "issued"
    assert await stores.download_keys.state(key.key) == "issued"
    assert await covered(stores, key.key) == 400
    resumed = await claim_ok(stores, key.key)
    assert resumed.covered == 400


async def test_resumed_range_reaching_the_end_spends_the_key(stores: Stores) -> None:
    key = await issue(stores)
    first = await claim_ok(stores, key.key)
    await stores.download_keys.release(key.key, first.claim_id, first=0, end=400)
    second = await claim_ok(stores, key.key)
    # The device had fewer bytes than the server counted: a range starting inside the
    # covered prefix still extends it.
    assert (
        await stores.download_keys.release(key.key, second.claim_id, first=300, end=SIZE) == "spent"
    )
    assert await covered(stores, key.key) == SIZE


async def test_range_beginning_after_the_covered_prefix_does_not_advance_it(
    stores: Stores,
) -> None:
    key = await issue(stores)
    claim = await claim_ok(stores, key.key)
    await stores.download_keys.release(key.key, claim.claim_id, first=0, end=100)
    claim = await claim_ok(stores, key.key)
    assert (
        await stores.download_keys.release(key.key, claim.claim_id, first=200, end=SIZE) == "issued"
    )
    assert await covered(stores, key.key) == 100


async def test_renew_holds_the_live_claim_and_refuses_a_stale_one(stores: Stores) -> None:
    key = await issue(stores)
    claim = await claim_ok(stores, key.key)
    assert await stores.download_keys.renew(key.key, claim) is True
    stale = Claim(claim_id="0" * 16, covered=0)
    assert await stores.download_keys.renew(key.key, stale) is False
    assert await stores.download_keys.release(key.key, stale.claim_id, first=0, end=SIZE) == "lost"
    assert await stores.download_keys.state(key.key) == "claimed"


async def test_renew_after_release_or_revoke_is_false(stores: Stores) -> None:
    key = await issue(stores)
    claim = await claim_ok(stores, key.key)
    await stores.download_keys.release(key.key, claim.claim_id, first=0, end=10)
    assert await stores.download_keys.renew(key.key, claim) is False
    claim = await claim_ok(stores, key.key)
    await stores.download_keys.revoke(key.key)
    assert await stores.download_keys.renew(key.key, claim) is False
    assert await stores.download_keys.release(key.key, claim.claim_id, first=0, end=SIZE) == "lost"
    # A release after a revoke must not bring the key back to life.
    assert await stores.redis.exists(stores.keys.download_key(key.key)) == 0


async def test_lapsed_claim_can_be_taken_over_and_the_old_release_is_lost(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(download_keys_module, "CLAIM_LEASE_MS", 100)
    key = await issue(stores)
    old = await claim_ok(stores, key.key)
    taken: list[Claim] = []

    async def taken_over() -> bool:
        verdict, claim = await stores.download_keys.claim(key.key, "dev-1")
        if claim is not None:
            taken.append(claim)
        return verdict is ClaimVerdict.OK

    await wait_for(taken_over, timeout_s=5)
    assert await stores.download_keys.renew(key.key, old) is False
    assert await stores.download_keys.release(key.key, old.claim_id, first=0, end=SIZE) == "lost"
    assert await stores.download_keys.state(key.key) == "claimed"
    assert (
        await stores.download_keys.release(key.key, taken[0].claim_id, first=0, end=SIZE) == "spent"
    )


async def test_twenty_concurrent_claims_give_exactly_one_ok(stores: Stores) -> None:
    key = await issue(stores)
    results = await asyncio.gather(
        *(stores.download_keys.claim(key.key, "dev-1") for _ in range(20))
    )
    verdicts = [verdict for verdict, _ in results]
    assert verdicts.count(ClaimVerdict.OK) == 1
    assert verdicts.count(ClaimVerdict.BUSY) == 19


async def test_claims_and_deliveries_are_events_on_the_stream(stores: Stores) -> None:
    key = await issue(stores)
    claim = await claim_ok(stores, key.key)
    await stores.download_keys.release(key.key, claim.claim_id, first=0, end=10)
    claim = await claim_ok(stores, key.key)
    await stores.download_keys.release(key.key, claim.claim_id, first=10, end=SIZE)
    entries = cast(list[Entry], await stores.redis.xrange(stores.keys.download_events()))
    events = [fields for _, fields in entries]
    assert [event["event"] for event in events] == ["claimed", "claimed", "delivered"]
    assert [event["claims"] for event in events[:2]] == ["1", "2"]
    record = await stores.download_keys.get(key.key)
    assert record is not None
    for event in events:
        assert event["key"] == key.key
        assert event["device_id"] == "dev-1"
        assert event["command_id"] == record.command_id
        assert event["rollout_id"] == "ro-1"
        assert event["file_name"] == "fw.bin"


async def test_key_dies_at_its_ttl(stores: Stores) -> None:
    key = await issue(stores, ttl_s=1)

    async def gone() -> bool:
        return await stores.download_keys.state(key.key) is None

    await wait_for(gone, timeout_s=5)
    assert await stores.download_keys.claim(key.key, "dev-1") == (ClaimVerdict.UNKNOWN, None)


async def test_check_foretells_each_claim_verdict_and_changes_nothing(stores: Stores) -> None:
    """`check` (HEAD) answers what `claim` would, and leaves the key and the events untouched."""
    keys = stores.download_keys
    key = await issue(stores)

    async def snapshot() -> tuple[dict[str, str], int]:
        record = await stores.redis.hgetall(stores.keys.download_key(key.key))
        return cast(dict[str, str], record), await stores.redis.xlen(stores.keys.download_events())

    async def check(device_id: str = "dev-1", span: int = SIZE) -> ClaimVerdict:
        before = await snapshot()
        verdict = await keys.check(key.key, device_id, span_bytes=span, budget_bytes=2 * SIZE)
        assert await snapshot() == before
        return verdict

    assert await check() is ClaimVerdict.OK
    assert await check("dev-2") is ClaimVerdict.WRONG_DEVICE
    assert await check(span=2 * SIZE + 1) is ClaimVerdict.EXHAUSTED
    assert await keys.check("dk_nope", "dev-1") is ClaimVerdict.UNKNOWN
    claim = await claim_ok(stores, key.key)
    assert await check() is ClaimVerdict.BUSY
    assert await keys.claim(key.key, "dev-1") == (ClaimVerdict.BUSY, None)
    assert await keys.release(key.key, claim.claim_id, first=0, end=SIZE) == "spent"
    assert await check() is ClaimVerdict.SPENT
