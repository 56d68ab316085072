"""A request body is refused before it is read: without an API key (401), or too large (413).

The client declares a body far larger than it sends and waits for the answer: the service
answers while the body is still unsent, so it read neither the body nor a large part of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx

from orchestrator.domain.auth import Scope
from tests.conftest import Service

DECLARED = 200 * 1024 * 1024
SENT = 64 * 1024
ANSWER_DEADLINE_S = 20.0


async def answer_before_body(service: Service, path: str, headers: dict[str, str]) -> bytes:
    """Declare a 200 MiB body, send 64 KiB of it, and read the answer's head."""
    url = urlsplit(service.base_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    lines = [f"POST {path} HTTP/1.1", f"Host: {url.netloc}", f"Content-Length: {DECLARED}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + b"{" + b" " * SENT)
    await writer.drain()
    try:
        async with asyncio.timeout(ANSWER_DEADLINE_S):
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            return head + await reader.readexactly(length)
    finally:
        writer.close()


async def test_a_large_body_without_an_api_key_is_401_before_it_is_read(
    service: Service,
) -> None:
    """A route with a JSON body model: FastAPI itself would read the body before the key."""
    path = f"/v2/projects/{service.project_id}/devices"
    answer = await answer_before_body(service, path, {"Content-Type": "application/json"})
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b'"success":false' in answer
    assert b'"action":"create device"' in answer


async def test_a_large_upload_with_an_unknown_key_is_401_before_it_is_read(
    service: Service,
) -> None:
    path = f"/v2/projects/{service.project_id}/files"
    headers = {"Authorization": "Bearer QB_not-a-key", "Content-Type": "multipart/form-data"}
    answer = await answer_before_body(service, path, headers)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]


async def test_a_declared_body_over_the_route_limit_is_413_before_it_is_read(
    service: Service,
) -> None:
    key = await service.create_key(Scope.DEVICES_WRITE)
    path = f"/v2/projects/{service.project_id}/devices"
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    answer = await answer_before_body(service, path, headers)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"action":"create device"' in answer


async def test_a_chunked_json_body_is_stopped_at_the_limit_with_413(service: Service) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"name": "'
        for _ in range(64):  # 4 MiB in all, over the 1 MiB limit
            yield b"x" * 65536
        yield b'"}'

    response = await service.client.post(
        f"/v2/projects/{service.project_id}/devices",
        content=chunks(),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 413, response.text
    assert response.json()["success"] is False


async def test_a_small_body_with_a_key_is_served_as_before(service: Service) -> None:
    device = await service.create_device(name="small")
    assert device["name"] == "small"


async def test_an_upload_with_many_form_fields_is_refused(service: Service) -> None:
    fields = {f"f{i}": "x" for i in range(50)}
    response = await service.client.post(
        f"/v2/projects/{service.project_id}/files",
        files={"file": ("fw.bin", b"\x7fELF", "application/octet-stream")},
        data={"type": "firmware", **fields},
    )
    assert response.status_code == 400, response.text
    assert "more than 8 parts" in response.json()["message"]


async def test_a_hook_delivery_needs_no_api_key(service: Service) -> None:
    """Signed routes are not asked for an API key: an unknown hook is still 404."""
    async with httpx.AsyncClient(base_url=service.base_url) as anonymous:
        response = await anonymous.post("/v2/hooks/nope", content=b"{}")
    assert response.status_code == 404
