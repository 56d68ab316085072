"""`GET /v2/device/download`: one delivery per key, bound to one device, resumable, bounded."""

from __future__ import annotations

import asyncio
import functools
import gc
import hashlib
import time
from pathlib import Path
from typing import cast

import httpx
import pytest

from orchestrator.api import downloads
from orchestrator.blobs import CHUNK_SIZE
from orchestrator.embedded import EmbeddedBroker
from orchestrator.errors import StoreUnavailable
from orchestrator.settings import Settings
from orchestrator.store import download_keys
from orchestrator.store.download_keys import Claim, DownloadKeyStore
from tests.api.conftest import (
    LARGE,
    URL,
    CreateDownload,
    Download,
    Entry,
    MiB,
    assert_error,
    assert_head_error,
    issue_key,
)
from tests.api.fleet import basic, device_inbox, payload_of, standard_basic
from tests.conftest import Service, wait_for


async def test_full_download_serves_the_exact_bytes_with_seed_headers(
    create_download: CreateDownload,
) -> None:
    download = await create_download(3 * CHUNK_SIZE + 123)
    response = await download.get()
    assert response.status_code == 200
    assert response.content == download.content
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"] == f"attachment; filename={download.name}"
    assert response.headers["content-length"] == str(len(download.content))
    assert response.headers["x-content-sha256"] == hashlib.sha256(download.content).hexdigest()
    assert response.headers["etag"] == f'"{hashlib.sha256(download.content).hexdigest()}"'
    assert "content-range" not in response.headers


async def test_second_full_get_after_a_complete_download_is_401(
    create_download: CreateDownload,
) -> None:
    download = await create_download()
    assert (await download.get()).status_code == 200
    await download.wait_state("spent")
    assert_error(await download.get(), 401)
    assert_error(await download.get(headers={**download.headers, "Range": "bytes=10-"}), 401)


async def test_missing_or_wrong_device_credentials_are_401_and_leave_the_key(
    create_download: CreateDownload,
) -> None:
    download = await create_download()
    other = await create_download()
    async with httpx.AsyncClient(base_url=download.service.base_url) as anonymous:
        assert_error(await anonymous.get(URL, params={"key": download.key}), 401)
    for headers in (
        {"Authorization": ""},
        basic("not-a-token"),
        {"Authorization": "Basic"},
        {"Authorization": f"Bearer {download.token}"},
        {"Authorization": f"Bearer {download.service.admin_key}"},
        standard_basic(download.device_id, "wrong"),
        standard_basic(download.device_id, other.token),  # a real token of another device
    ):
        response = await download.get(headers=headers)
        assert_error(response, 401)
    assert await download.state() == "issued"
    assert (await download.get()).content == download.content


async def test_another_devices_token_is_403_and_the_key_still_works_for_its_device(
    create_download: CreateDownload,
) -> None:
    download = await create_download()
    other = await create_download()
    assert_error(await download.get(headers=other.headers), 403)
    assert_error(await download.get(headers=standard_basic(other.device_id, other.token)), 403)
    assert await download.state() == "issued"
    response = await download.get()
    assert response.status_code == 200
    assert response.content == download.content


async def test_unknown_key_is_401_and_a_missing_key_is_400(
    create_download: CreateDownload,
) -> None:
    download = await create_download()
    client = download.service.client
    response = await client.get(URL, params={"key": "dk_" + "x" * 32}, headers=download.headers)
    assert_error(response, 401)
    response = await client.get(URL, headers=download.headers)
    assert response.status_code == 400, response.text


async def test_file_deleted_after_the_command_is_404(create_download: CreateDownload) -> None:
    """A file forgotten behind the API's back (the API refuses while a key is live)."""
    download = await create_download()
    service = download.service
    assert await service.stores.files.delete(service.project_id, download.name) is not None
    assert_error(await download.get(), 404)
    assert_head_error(await download.head(), 404)


async def test_deleting_the_device_kills_its_download_keys(
    create_download: CreateDownload,
) -> None:
    download = await create_download()
    service = download.service
    second = await issue_key(service, download.device_id, download.name, len(download.content))
    response = await service.client.delete(
        f"/v2/projects/{service.project_id}/devices/{download.device_id}"
    )
    assert response.status_code == 200, response.text
    for key in (download.key, second):
        assert await service.stores.redis.exists(service.stores.keys.download_key(key)) == 0
    assert await service.stores.download_keys.get(download.key) is None
    assert_error(await download.get(), 401)


async def test_of_eight_concurrent_gets_exactly_one_streams_and_the_others_get_409(
    create_download: CreateDownload,
) -> None:
    download = await create_download(LARGE)
    statuses: list[int] = []
    everyone_answered = asyncio.Event()
    bodies: list[bytes] = []

    async def fetch() -> None:
        async with download.stream() as response:
            statuses.append(response.status_code)
            if len(statuses) == 8:
                everyone_answered.set()
            if response.status_code != 200:
                await response.aread()
                assert_error(response, 409)
                return
            # Hold the claim: take one chunk, then wait until every other request is answered.
            chunks = response.aiter_bytes()
            body = bytearray(await anext(chunks))
            async with asyncio.timeout(20):
                await everyone_answered.wait()
            async for chunk in chunks:
                body += chunk
            bodies.append(bytes(body))

    await asyncio.gather(*(fetch() for _ in range(8)))
    assert sorted(statuses) == [200] + [409] * 7
    assert len(bodies) == 1
    assert bodies[0] == download.content
    await download.wait_state("spent")


async def test_dropped_transfer_resumes_with_range_and_then_the_key_is_spent(
    create_download: CreateDownload,
) -> None:
    download = await create_download(LARGE)
    received = bytearray()
    async with download.stream() as response:
        assert response.status_code == 200
        async for chunk in response.aiter_raw():
            received += chunk
            if len(received) >= 4 * CHUNK_SIZE:
                break  # leaving the block closes the connection mid-body

    await download.wait_state("issued")
    # The server may count bytes still in socket buffers, never fewer than the client got.
    assert len(received) <= await download.covered() < LARGE
    offset = len(received)
    resumed = await download.get(headers={**download.headers, "Range": f"bytes={offset}-"})
    assert resumed.status_code == 206
    assert resumed.headers["content-range"] == f"bytes {offset}-{LARGE - 1}/{LARGE}"
    assert resumed.headers["content-length"] == str(LARGE - offset)
    assert resumed.content == download.content[offset:]
    assert bytes(received) + resumed.content == download.content
    await download.wait_state("spent")
    assert_error(await download.get(), 401)


async def test_a_transfer_that_ends_while_redis_is_away_frees_its_claim_once_redis_answers(
    create_download: CreateDownload, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis is away as a broken transfer ends (a restart): its claim is freed once Redis
    answers again, not left to lapse with its lease (60 s), so the device's resume is not
    refused as busy (409) meanwhile and the bytes it got are counted."""
    download = await create_download(LARGE)
    release = DownloadKeyStore.release
    refused: list[str] = []

    async def release_after_an_outage(
        self: DownloadKeyStore, key: str, claim_id: str, *, first: int, end: int
    ) -> str:
        if not refused:
            refused.append(key)
            raise StoreUnavailable("Redis is unreachable (Connection refused)")
        return await release(self, key, claim_id, first=first, end=end)

    monkeypatch.setattr(DownloadKeyStore, "release", release_after_an_outage)
    received = bytearray()
    async with download.stream() as response:
        assert response.status_code == 200
        async for chunk in response.aiter_raw():
            received += chunk
            if len(received) >= 4 * CHUNK_SIZE:
                break  # leaving the block closes the connection mid-body

    await download.wait_state("issued")
    assert refused == [download.key]
    assert len(received) <= await download.covered() < LARGE
    offset = len(received)
    resumed = await download.get(headers={**download.headers, "Range": f"bytes={offset}-"})
    assert resumed.status_code == 206, resumed.text
    assert bytes(received) + resumed.content == download.content
    await download.wait_state("spent")


async def test_a_transfer_streams_on_when_one_renewal_of_its_claim_finds_redis_away(
    create_download: CreateDownload, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A renewal that meets Redis away does not end a moving transfer: its claim still holds
    until its lease ends, and the next renewal extends it."""
    monkeypatch.setattr(download_keys, "CLAIM_LEASE_MS", 3000)  # renewed every 0.5 s
    download = await create_download(LARGE)
    renew = DownloadKeyStore.renew
    refused: list[str] = []

    async def renew_after_an_outage(self: DownloadKeyStore, key: str, claim: Claim) -> bool:
        if not refused:
            refused.append(key)
            raise StoreUnavailable("Redis is unreachable (Connection refused)")
        return await renew(self, key, claim)

    monkeypatch.setattr(DownloadKeyStore, "renew", renew_after_an_outage)
    received = bytearray()
    async with download.stream() as response:
        assert response.status_code == 200
        async for chunk in response.aiter_raw():
            received += chunk
            if not refused:
                await asyncio.sleep(0.01)  # slow until a renewal has met the outage
    assert refused == [download.key]
    assert bytes(received) == download.content
    await download.wait_state("spent")


@pytest.mark.xfail(
    strict=True,
    reason="known limit: ASGI shows no TCP acknowledgements, so the key is spent once the last "
    "bytes are in socket buffers; a device that drops then cannot resume (ARCHITECTURE §4 "
    "also allows spending on the device's success result)",
)
async def test_key_is_not_spent_while_the_device_still_lacks_bytes(
    create_download: CreateDownload,
) -> None:
    download = await create_download(CHUNK_SIZE // 2)  # fits in the socket buffers at once
    async with download.stream() as response:
        assert response.status_code == 200
        # The device reads no byte of the body (and would lose them all if it dropped now).
        with pytest.raises(TimeoutError):
            await download.wait_state("spent", timeout_s=1.0)


async def test_range_starting_past_the_end_is_416_and_does_not_use_the_key(
    create_download: CreateDownload,
) -> None:
    download = await create_download(1000)
    for header in ("bytes=1000-", "bytes=5000-6000"):
        response = await download.get(headers={**download.headers, "Range": header})
        assert_error(response, 416)
        assert response.headers["content-range"] == "bytes */1000"
    assert await download.state() == "issued"
    assert (await download.get()).status_code == 200


async def test_suffix_range_serves_the_last_bytes(create_download: CreateDownload) -> None:
    download = await create_download(1000)
    response = await download.get(headers={**download.headers, "Range": "bytes=-100"})
    assert response.status_code == 206
    assert response.headers["content-range"] == "bytes 900-999/1000"
    assert response.content == download.content[900:]
    # The prefix before byte 900 was never delivered, so the key is not spent.
    await download.wait_state("issued")


async def test_revoking_a_key_mid_transfer_stops_the_stream(
    create_download: CreateDownload, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(downloads, "RENEW_EVERY_S", 0.02)  # notice a loss at once
    download = await create_download(LARGE)
    received = 0

    async def read_and_revoke_after_the_first_chunk() -> None:
        nonlocal received
        async with download.stream() as response:
            assert response.status_code == 200
            async for chunk in response.aiter_raw():
                if received == 0:
                    assert await download.service.stores.download_keys.revoke(download.key)
                received += len(chunk)

    with pytest.raises(httpx.RemoteProtocolError):  # the server closes before the last byte
        await read_and_revoke_after_the_first_chunk()
    assert 0 < received < LARGE
    assert await download.state() is None  # the ended transfer did not bring it back
    assert_error(await download.get(), 401)


async def test_a_completed_download_is_a_claimed_then_a_delivered_event(
    create_download: CreateDownload,
) -> None:
    download = await create_download()
    assert (await download.get()).status_code == 200
    await download.wait_state("spent")
    stores = download.service.stores
    entries = cast(list[Entry], await stores.redis.xrange(stores.keys.download_events()))
    ours = [event for _, event in entries if event["key"] == download.key]
    assert [event["event"] for event in ours] == ["claimed", "delivered"]
    for event in ours:
        assert event["device_id"] == download.device_id
        assert event["file_name"] == download.name


class TestShortLivedKeys:
    """Keys issued by the command API with OTA_DOWNLOAD_KEY_TTL=1."""

    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return settings.model_copy(update={"download_key_ttl_s": 1})

    async def test_key_is_refused_after_its_ttl(
        self, service: Service, mqtt_broker: EmbeddedBroker
    ) -> None:
        device = await service.create_device()
        device_id = device["metadata"]["device_id"]
        assert (await service.upload("fw.bin", b"firmware")).status_code == 201
        async with device_inbox(mqtt_broker, device_id) as inbox:
            response = await service.client.post(
                f"/v2/projects/{service.project_id}/devices/{device_id}/communication/command",
                json={"command": "download_firmware", "data": {"file_name": "fw.bin"}},
            )
            assert response.status_code == 200, response.text
            payload = payload_of(await inbox.next())
        key = payload["url"].rsplit("key=", 1)[1]
        assert await service.stores.download_keys.state(key) == "issued"

        async def expired() -> bool:
            return await service.stores.download_keys.state(key) is None

        await wait_for(expired, timeout_s=5)
        refused = await service.client.get(
            payload["url"], headers=basic(device["metadata"]["device_token"])
        )
        assert_error(refused, 401)


def vm_rss() -> int:
    """This process's resident set size in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


async def test_streaming_a_large_file_does_not_hold_it_in_memory(
    create_download: CreateDownload,
) -> None:
    """The server runs in this process: its RSS must not grow by anything near the file."""
    size = 64 * MiB
    download = await create_download(size)
    expected = hashlib.sha256(download.content).hexdigest()
    gc.collect()
    before = peak = vm_rss()
    digest = hashlib.sha256()
    async with download.stream() as response:
        assert response.status_code == 200
        async for chunk in response.aiter_raw():
            digest.update(chunk)
            peak = max(peak, vm_rss())
    assert digest.hexdigest() == expected
    assert peak - before < size // 4, f"RSS grew by {(peak - before) / MiB:.1f} MiB"


async def send_request(
    download: Download, request_line: str, *headers: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the service with one request of the device written on it, raw."""
    service = download.service
    reader, writer = await asyncio.open_connection(
        service.settings.http_host, service.settings.http_port
    )
    lines = [
        request_line,
        "Host: ota",
        *headers,
        f"Authorization: {download.headers['Authorization']}",
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    return reader, writer


async def read_exactly_and_close(download: Download) -> bytes:
    """A device that closes its connection the moment it holds Content-Length body bytes."""
    reader, writer = await send_request(download, f"GET {URL}?key={download.key} HTTP/1.1")
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        return await reader.readexactly(length)
    finally:
        writer.close()


async def test_a_fully_sent_response_spends_the_key_even_when_the_device_closes_at_once(
    create_download: CreateDownload,
) -> None:
    """Every byte went out: the key is spent, however fast the device hangs up after them."""
    for _ in range(30):
        download = await create_download(3 * CHUNK_SIZE + 123)
        assert await read_exactly_and_close(download) == download.content
        await wait_for(functools.partial(_released, download), timeout_s=10)
        assert await download.state() == "spent", await download.covered()
        assert_error(await download.get(), 401)


async def _released(download: Download) -> bool:
    return await download.state() != "claimed"


async def test_a_stalled_transfer_never_shares_its_key_with_a_second_one(
    create_download: CreateDownload, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device that stops reading: once its first claim would have lapsed, a second request
    with the key may stream only if the server has ended the stalled transfer."""
    monkeypatch.setattr(download_keys, "CLAIM_LEASE_MS", 1500)
    download = await create_download(LARGE)
    stores = download.service.stores
    async with download.stream() as stalled:
        assert stalled.status_code == 200
        chunks = stalled.aiter_raw()
        await anext(chunks)  # then the device reads nothing more
        first_lease_end_ms = int(
            await stores.redis.hget(stores.keys.download_key(download.key), "claim_until") or 0
        )

        async def first_lease_over() -> bool:
            return time.time() * 1000 > first_lease_end_ms + 500

        await wait_for(first_lease_over)
        second = await download.get()
        if second.status_code != 200:
            assert_error(second, 409)  # the stalled transfer still holds the key
            return
        assert second.content == download.content
        with pytest.raises(httpx.RemoteProtocolError):  # the stalled transfer was ended
            async for _ in chunks:
                pass


async def test_a_key_never_sends_more_than_twice_the_file_whatever_the_ranges(
    create_download: CreateDownload,
) -> None:
    """`Range: bytes=1-` over and over never spends the key; the key's budget ends it."""
    download = await create_download(100_000)
    size = len(download.content)
    served = 0
    for _ in range(10):
        response = await download.get(headers={**download.headers, "Range": "bytes=1-"})
        if response.status_code != 206:
            assert_error(response, 401)
            assert "at most 200000 bytes" in response.json()["message"]
            break
        served += len(response.content)
        await download.wait_state("issued")
    assert 0 < served <= 2 * size
    assert_error(await download.get(), 401)  # the whole file would go past the budget too


def described(response: httpx.Response) -> dict[str, str]:
    """A response's headers but those that change from one response to the next."""
    return {name: value for name, value in response.headers.items() if name not in {"date"}}


async def key_events(download: Download) -> list[str]:
    stores = download.service.stores
    entries = cast(list[Entry], await stores.redis.xrange(stores.keys.download_events()))
    return [event["event"] for _, event in entries if event["key"] == download.key]


async def test_head_sends_gets_headers_without_a_body_and_never_uses_the_key(
    create_download: CreateDownload,
) -> None:
    """Three HEADs, then exactly one GET delivers; afterwards both answer 401."""
    download = await create_download(3 * CHUNK_SIZE + 123)
    heads = [await download.head() for _ in range(3)]
    for head in heads:
        assert head.status_code == 200
        assert head.content == b""
        assert described(head) == described(heads[0])
    assert await download.state() == "issued"
    assert await key_events(download) == []

    response = await download.get()
    assert response.status_code == 200
    assert response.content == download.content
    assert described(heads[0]) == described(response)
    digest = hashlib.sha256(download.content).hexdigest()
    assert heads[0].headers["etag"] == f'"{digest}"'
    assert heads[0].headers["content-length"] == str(len(download.content))
    await download.wait_state("spent")
    assert await key_events(download) == ["claimed", "delivered"]
    assert_error(await download.get(), 401)
    assert_head_error(await download.head(), 401)


@pytest.mark.parametrize(
    ("header", "span"), [("bytes=100-", "bytes 100-999/1000"), ("bytes=-10", "bytes 990-999/1000")]
)
async def test_head_with_a_range_sends_the_206_headers_get_would(
    create_download: CreateDownload, header: str, span: str
) -> None:
    download = await create_download(1000)
    ranged = {**download.headers, "Range": header}
    head = await download.head(headers=ranged)
    assert head.status_code == 206
    assert head.headers["content-range"] == span
    assert head.content == b""
    response = await download.get(headers=ranged)
    assert response.status_code == 206
    assert described(head) == described(response)


async def test_head_with_a_range_past_the_end_is_416_like_get(
    create_download: CreateDownload,
) -> None:
    download = await create_download(1000)
    past = {**download.headers, "Range": "bytes=1000-"}
    head = await download.head(headers=past)
    assert_head_error(head, 416)
    assert head.headers["content-range"] == "bytes */1000"
    get = await download.get(headers=past)
    assert_error(get, 416)
    assert described(head) == described(get)
    assert await download.state() == "issued"


async def test_head_is_refused_like_get_and_the_key_stays_for_its_device(
    create_download: CreateDownload,
) -> None:
    download = await create_download()
    other = await create_download()
    client = download.service.client
    for headers, status in (
        ({"Authorization": ""}, 401),
        (basic("not-a-token"), 401),
        (standard_basic(download.device_id, other.token), 401),
        (other.headers, 403),
        (standard_basic(other.device_id, other.token), 403),
    ):
        head, get = await download.head(headers=headers), await download.get(headers=headers)
        assert_head_error(head, status)
        assert_error(get, status)
        assert described(head) == described(get)
    assert (
        "basic"
        in (await download.head(headers={"Authorization": ""})).headers["www-authenticate"].lower()
    )
    unknown = {"key": "dk_" + "x" * 32}
    assert_head_error(await client.head(URL, params=unknown, headers=download.headers), 401)
    assert_head_error(await client.head(URL, headers=download.headers), 400)
    assert await download.state() == "issued"
    assert (await download.get()).content == download.content


async def test_head_while_a_transfer_holds_the_key_is_409_like_get(
    create_download: CreateDownload,
) -> None:
    download = await create_download(LARGE)
    async with download.stream() as response:
        assert response.status_code == 200
        chunks = response.aiter_raw()  # held: a dropped iterator would close the response
        await anext(chunks)
        assert_head_error(await download.head(), 409)
        assert_error(await download.get(), 409)
    await download.wait_state("issued")


async def raw_exchange(download: Download, request_line: str) -> bytes:
    """Everything the server writes for one request on a connection it then closes."""
    reader, writer = await send_request(download, request_line, "Connection: close")
    try:
        async with asyncio.timeout(10):
            return await reader.read(-1)
    finally:
        writer.close()


async def test_no_body_goes_on_the_wire_after_a_head_answer_or_refusal(
    create_download: CreateDownload,
) -> None:
    """httpx never reads a HEAD body, so read the raw bytes: headers and nothing after them."""
    download = await create_download()
    for key, status in ((download.key, b"200"), ("dk_" + "x" * 32, b"401")):
        answer = await raw_exchange(download, f"HEAD {URL}?key={key} HTTP/1.1")
        head, _, rest = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 " + status), head
        assert rest == b""
    assert await download.state() == "issued"


async def test_if_range_with_the_files_etag_resumes_and_with_another_sends_the_whole_file(
    create_download: CreateDownload,
) -> None:
    download = await create_download(1000)
    tag = f'"{hashlib.sha256(download.content).hexdigest()}"'
    same = await download.get(headers={**download.headers, "Range": "bytes=900-", "If-Range": tag})
    assert same.status_code == 206
    assert same.content == download.content[900:]
    await download.wait_state("issued")
    other = {**download.headers, "Range": "bytes=900-", "If-Range": '"' + "0" * 64 + '"'}
    head = await download.head(headers=other)
    assert head.status_code == 200
    assert head.headers["content-length"] == "1000"
    whole = await download.get(headers=other)
    assert whole.status_code == 200
    assert whole.content == download.content
    await download.wait_state("spent")
