"""The download kit: a firmware file and a key for one device, fetched as that device."""

from __future__ import annotations

import os
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace

import httpx
import pytest

from tests.api.fleet import basic
from tests.conftest import Service, wait_for

MiB = 1024 * 1024
URL = "/v2/device/download"
# Larger than what loopback socket buffers take in while a client does not read, so a
# transfer the client holds open (or drops) cannot finish on the server side.
LARGE = 16 * MiB


@dataclass
class Download:
    """An uploaded firmware file and a download key for it, issued to one device."""

    service: Service
    device_id: str
    token: str
    name: str
    content: bytes
    key: str
    via: httpx.AsyncClient | None = None  # None: straight to the service

    @property
    def headers(self) -> dict[str, str]:
        return basic(self.token)

    @property
    def client(self) -> httpx.AsyncClient:
        return self.service.client if self.via is None else self.via

    def through(self, client: httpx.AsyncClient) -> Download:
        """The same download, fetched through `client` (a proxy in front of the service)."""
        return replace(self, via=client)

    async def get(self, headers: dict[str, str] | None = None) -> httpx.Response:
        return await self.client.get(
            URL, params={"key": self.key}, headers=self.headers if headers is None else headers
        )

    async def head(self, headers: dict[str, str] | None = None) -> httpx.Response:
        return await self.client.head(
            URL, params={"key": self.key}, headers=self.headers if headers is None else headers
        )

    def stream(
        self, headers: dict[str, str] | None = None
    ) -> AbstractAsyncContextManager[httpx.Response]:
        return self.client.stream(
            "GET", URL, params={"key": self.key}, headers={**self.headers, **(headers or {})}
        )

    async def state(self) -> str | None:
        return await self.service.stores.download_keys.state(self.key)

    async def wait_state(self, expected: str, timeout_s: float = 10.0) -> None:
        """Wait for the key's state: the server releases its claim just after the last byte."""

        async def reached() -> bool:
            return await self.state() == expected

        await wait_for(reached, timeout_s=timeout_s)

    async def covered(self) -> int:
        stores = self.service.stores
        return int(await stores.redis.hget(stores.keys.download_key(self.key), "covered") or -1)


CreateDownload = Callable[..., Awaitable[Download]]
Entry = tuple[str, dict[str, str]]  # a stream entry: id, fields


async def issue_key(service: Service, device_id: str, name: str, size: int) -> str:
    stored = await service.stores.files.get(service.project_id, name)
    assert stored is not None
    [key] = await service.stores.download_keys.issue(
        [(device_id, uuid.uuid4().hex)],
        sha256=stored.sha256,
        project_id=service.project_id,
        file_name=name,
        size=size,
        ttl_s=service.settings.download_key_ttl_s,
    )
    return key.key


@pytest.fixture
def create_download(service: Service) -> CreateDownload:
    """`create(size)`: a new device, a firmware file of `size` random bytes and a key."""
    count = 0

    async def create(size: int = 100_000) -> Download:
        nonlocal count
        count += 1
        device = await service.create_device(name=f"dev-{count}")
        name = f"fw-{count}.bin"
        content = os.urandom(size)
        assert (await service.upload(name, content)).status_code == 201
        device_id = device["metadata"]["device_id"]
        key = await issue_key(service, device_id, name, size)
        token = device["metadata"]["device_token"]
        return Download(service, device_id, token, name, content, key)

    return create


def assert_error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False
    assert body["status"] == status
    assert body["action"] == "download file"


def assert_head_error(response: httpx.Response, status: int) -> None:
    """A HEAD refused as GET would be: the same status, and no body."""
    assert response.request.method == "HEAD"
    assert response.status_code == status, response.headers
    assert response.content == b""
