"""`OTA_DOWNLOAD_OFFLOAD=x-accel`: the service checks the key, a real nginx sends the bytes.

nginx runs deploy/nginx/ota-offload.conf.template as shipped, in front of the real service.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import structlog

from orchestrator.api.offload import REPORT_PATH, SECRET_HEADER
from orchestrator.embedded_nginx import EmbeddedNginx
from orchestrator.settings import Settings
from tests.api.conftest import LARGE, CreateDownload, Download, assert_error, assert_head_error
from tests.conftest import Service, wait_for

SECRET = secrets.token_hex(32)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"download_offload": "x-accel", "download_offload_secret": SECRET}
    )


@pytest.fixture
async def proxy(nginx: EmbeddedNginx) -> AsyncIterator[httpx.AsyncClient]:
    """A client of nginx, the way devices reach the service with offload on."""
    async with httpx.AsyncClient(base_url=nginx.url, timeout=30) as client:
        yield client


@pytest.fixture
def logs() -> Any:
    with structlog.testing.capture_logs() as captured:
        yield captured


def ended(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == "download ended"]


async def logged_end(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The `download ended` lines, once there is one: the service logs it just after the
    release that spends the key, so a test that saw the key spent may be there first."""

    async def logged() -> bool:
        return bool(ended(logs))

    await wait_for(logged)
    return ended(logs)


async def test_a_full_download_is_sent_by_nginx_matches_sha256_and_spends_the_key(
    create_download: CreateDownload, proxy: httpx.AsyncClient, logs: list[dict[str, Any]]
) -> None:
    download = (await create_download(3 * 1024 * 1024 + 17)).through(proxy)
    response = await download.get()
    assert response.status_code == 200, response.text
    digest = hashlib.sha256(response.content).hexdigest()
    assert digest == hashlib.sha256(download.content).hexdigest()
    assert response.headers["x-content-sha256"] == digest
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"] == f"attachment; filename={download.name}"
    assert response.headers["content-length"] == str(len(download.content))
    assert "x-accel-redirect" not in response.headers
    await download.wait_state("spent")
    assert [entry["sent_by"] for entry in await logged_end(logs)] == ["nginx"]
    assert_error(await download.get(), 401)


SAME_FROM_BOTH = (
    "content-type",
    "content-length",
    "content-disposition",
    "cache-control",
    "x-content-sha256",
    "etag",
    "content-range",
)


async def test_head_through_nginx_is_answered_by_the_service_and_uses_nothing(
    create_download: CreateDownload, proxy: httpx.AsyncClient, logs: list[dict[str, Any]]
) -> None:
    """HEAD is never handed to nginx: GET's headers, no claim, no report; GET then delivers."""
    download = (await create_download(100_000)).through(proxy)
    ranged = {**download.headers, "Range": "bytes=1000-"}
    heads = [await download.head(), await download.head(headers=ranged)]
    assert [head.status_code for head in heads] == [200, 206]
    assert all("x-accel-redirect" not in head.headers for head in heads)
    assert await download.state() == "issued"
    assert ended(logs) == []
    partial = await download.get(headers=ranged)
    assert partial.status_code == 206
    await download.wait_state("issued")
    whole = await download.get()
    assert whole.status_code == 200
    for head, get in zip(heads, (whole, partial), strict=True):
        for name in SAME_FROM_BOTH:
            assert head.headers.get(name) == get.headers.get(name), name
    # nginx says Accept-Ranges on its 200s only; the service says it on its 206s too.
    assert heads[0].headers["accept-ranges"] == whole.headers["accept-ranges"] == "bytes"
    digest = hashlib.sha256(download.content).hexdigest()
    assert whole.headers["etag"] == f'"{digest}"'
    await download.wait_state("spent")
    assert_head_error(await download.head(), 401)
    assert_head_error(await download.head(headers={"Authorization": ""}), 401)


async def test_if_range_with_the_etag_resumes_through_nginx_and_another_gets_the_file(
    create_download: CreateDownload, proxy: httpx.AsyncClient
) -> None:
    download = (await create_download(100_000)).through(proxy)
    tag = f'"{hashlib.sha256(download.content).hexdigest()}"'
    same = await download.get(
        headers={**download.headers, "Range": "bytes=99000-", "If-Range": tag}
    )
    assert same.status_code == 206, same.text
    assert same.content == download.content[99000:]
    await download.wait_state("issued")
    other = {**download.headers, "Range": "bytes=99000-", "If-Range": '"other"'}
    whole = await download.get(headers=other)
    assert whole.status_code == 200, whole.text
    assert whole.content == download.content
    await download.wait_state("spent")


async def test_a_download_broken_off_resumes_with_range_and_then_spends_the_key(
    create_download: CreateDownload, proxy: httpx.AsyncClient
) -> None:
    download = (await create_download(LARGE)).through(proxy)
    received = bytearray()
    async with download.stream() as response:
        assert response.status_code == 200
        async for chunk in response.aiter_raw():
            received += chunk
            if len(received) >= 256 * 1024:
                break  # leaving the block closes the connection mid-body

    await download.wait_state("issued")  # nginx's report released the claim
    # nginx counts what it handed to the kernel: never fewer bytes than the client got.
    assert len(received) <= await download.covered() < LARGE
    offset = len(received)
    resumed = await download.get(headers={**download.headers, "Range": f"bytes={offset}-"})
    assert resumed.status_code == 206, resumed.text
    assert resumed.headers["content-range"] == f"bytes {offset}-{LARGE - 1}/{LARGE}"
    assert bytes(received) + resumed.content == download.content
    await download.wait_state("spent")
    assert_error(await download.get(), 401)


async def test_a_key_of_another_device_is_403_and_stays_valid_for_its_own(
    create_download: CreateDownload, proxy: httpx.AsyncClient
) -> None:
    download = (await create_download()).through(proxy)
    other = await create_download()
    assert_error(await download.get(headers=other.headers), 403)
    assert await download.state() == "issued"
    response = await download.get()
    assert response.status_code == 200
    assert response.content == download.content


async def test_of_two_concurrent_gets_exactly_one_streams(
    create_download: CreateDownload, proxy: httpx.AsyncClient
) -> None:
    download = (await create_download(LARGE)).through(proxy)
    async with download.stream() as first:
        assert first.status_code == 200
        chunks = first.aiter_raw()
        body = bytearray(await anext(chunks))  # nginx is sending: the claim is held
        second = await download.get()
        assert_error(second, 409)
        async for chunk in chunks:
            body += chunk
    assert bytes(body) == download.content
    await download.wait_state("spent")


async def test_eight_concurrent_gets_give_one_stream_and_seven_409s(
    create_download: CreateDownload, proxy: httpx.AsyncClient
) -> None:
    download = (await create_download()).through(proxy)
    responses = await asyncio.gather(*(download.get() for _ in range(8)))
    statuses = sorted(response.status_code for response in responses)
    # A 401 is a request that came after the one stream had spent the key.
    assert statuses.count(200) == 1, statuses
    assert set(statuses) <= {200, 401, 409}
    [winner] = [response for response in responses if response.status_code == 200]
    assert winner.content == download.content


async def test_a_request_that_bypasses_nginx_is_streamed_by_the_service(
    create_download: CreateDownload, logs: list[dict[str, Any]]
) -> None:
    """Without nginx's secret the service sends the bytes itself (no empty X-Accel answer)."""
    download = await create_download()
    response = await download.get()
    assert response.status_code == 200
    assert "x-accel-redirect" not in response.headers
    assert response.content == download.content
    await download.wait_state("spent")
    assert [entry.get("sent_by") for entry in await logged_end(logs)] == [None]


async def test_a_forged_report_is_401_and_leaves_the_claim_alone(
    create_download: CreateDownload, proxy: httpx.AsyncClient
) -> None:
    download = await create_download()
    _, claim = await download.service.stores.download_keys.claim(download.key, download.device_id)
    assert claim is not None
    report = {
        "X-OTA-Status": "200",
        "X-OTA-Bytes-Sent": str(len(download.content)),
        "X-OTA-Completion": "OK",
    }
    params = {"key": download.key, "claim": claim.claim_id}
    for secret in ("", "not-the-secret"):
        response = await download.service.client.post(
            REPORT_PATH, params=params, headers={**report, SECRET_HEADER: secret}
        )
        assert response.status_code == 401, response.text
        assert response.json()["action"] == "report download"
    # Nor can a client reach the report route through nginx, secret or not.
    through_nginx = await proxy.post(REPORT_PATH, params=params, headers={SECRET_HEADER: SECRET})
    assert through_nginx.status_code == 404
    assert await download.state() == "claimed"
    # nginx's own report, with the secret, ends it.
    response = await download.service.client.post(
        REPORT_PATH, params=params, headers={**report, SECRET_HEADER: SECRET}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "success": True,
        "status": 200,
        "action": "report download",
        "message": "Download reported; the key is spent.",
        "data": {"key_state": "spent", "bytes_delivered": len(download.content)},
    }


async def test_a_report_with_a_bad_number_is_400(service: Service) -> None:
    response = await service.client.post(
        REPORT_PATH,
        params={"key": "dk_x", "claim": "c"},
        headers={SECRET_HEADER: SECRET, "X-OTA-Status": "200", "X-OTA-Bytes-Sent": "many"},
    )
    assert response.status_code == 400, response.text
    assert "X-OTA-Bytes-Sent" in response.json()["message"]


class TestOffloadOff:
    """Without OTA_DOWNLOAD_OFFLOAD the report route refuses and the secret header is ignored."""

    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return settings.model_copy(update={"download_offload": ""})

    async def test_the_report_route_is_404(self, create_download: CreateDownload) -> None:
        download: Download = await create_download()
        response = await download.service.client.post(
            REPORT_PATH,
            params={"key": download.key, "claim": "c"},
            headers={SECRET_HEADER: SECRET, "X-OTA-Status": "200", "X-OTA-Bytes-Sent": "1"},
        )
        assert response.status_code == 404, response.text
        assert "OTA_DOWNLOAD_OFFLOAD" in response.json()["message"]
        response = await download.get(headers={**download.headers, SECRET_HEADER: SECRET})
        assert response.status_code == 200
        assert response.content == download.content
