"""Session servers (real redis-server and mosquitto on free ports) and a per-test service.

Each test gets its own Redis key prefix and data directory; device ids are random UUIDs,
so MQTT topics never collide between tests either.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from orchestrator.domain.auth import Scope
from orchestrator.domain.devices import DeviceSource
from orchestrator.embedded import EmbeddedBroker, EmbeddedRedis, free_port
from orchestrator.embedded_nginx import EmbeddedNginx, nginx_binary, render_template
from orchestrator.service import start_serving
from orchestrator.settings import Settings
from orchestrator.store import Stores
from orchestrator.store.devices import Device
from orchestrator.store.redis import connect
from orchestrator.transport.dynsec import DynsecClient


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server from the machine (the system package), on a free port."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed; `make test` installs it from the system packages"
    with EmbeddedRedis(
        tmp_path_factory.mktemp("redis"), binary=binary, appendonly=False
    ).start() as server:
        yield server.url


@pytest.fixture(scope="session")
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A real mosquitto from the machine, on a free port."""
    with EmbeddedBroker(tmp_path_factory.mktemp("mqtt"), kind="mosquitto").start() as broker:
        yield broker


@pytest.fixture(scope="module")
def dynsec_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """Mosquitto with the dynamic-security plugin; the service account is in its `url`."""
    data_dir = tmp_path_factory.mktemp("dynsec")
    with EmbeddedBroker(data_dir, kind="mosquitto", dynsec=True).start() as broker:
        yield broker


def on_dynsec(settings: Settings, broker: EmbeddedBroker) -> Settings:
    """`settings` on the dynamic-security broker, with provisioning on."""
    return settings.model_copy(
        update={"mqtt_url": broker.url, "mqtt_version": "5.0", "mqtt_provision": "dynsec"}
    )


@pytest.fixture
async def dynsec_admin(dynsec_broker: EmbeddedBroker) -> AsyncIterator[DynsecClient]:
    """A plugin client of the test's own, to look at what the service did on the broker."""
    client = DynsecClient(dynsec_broker.url, client_id=f"test-admin-{uuid.uuid4().hex[:8]}")
    await client.start()
    assert await client.wait_ready(10.0)
    yield client
    await client.stop()


@pytest.fixture
def settings(redis_url: str, mqtt_broker: EmbeddedBroker, tmp_path: Path) -> Settings:
    """Settings for one test: its own key prefix, data directory and HTTP port."""
    port = free_port()
    return Settings(
        redis_url=redis_url,
        redis_prefix=f"{{test-{uuid.uuid4().hex[:12]}}}:",  # one hash tag: Cluster-ready
        mqtt_url=mqtt_broker.url,
        mqtt_version=mqtt_broker.mqtt_version,
        http_port=port,
        data_dir=tmp_path / "data",
        log_format="json",
        instance_id=f"test-{uuid.uuid4().hex[:8]}",
        role="api",  # tests that need the rollout engine ask for it (tests/e2e)
    )


@pytest.fixture
async def stores(settings: Settings) -> AsyncIterator[Stores]:
    """Stores on the test's key prefix."""
    redis = connect(settings.redis_url)
    yield Stores.build(redis, settings.redis_prefix)
    await redis.aclose()


@pytest.fixture
async def clean(stores: Stores) -> AsyncIterator[Stores]:
    """The stores; every key under the test's prefix is deleted afterwards."""
    yield stores
    stale = [key async for key in stores.redis.scan_iter(match=f"{stores.keys.prefix}*")]
    if stale:
        await stores.redis.delete(*stale)


@dataclass
class Service:
    """A running API (real uvicorn on a free port) with an admin key and one project."""

    settings: Settings
    stores: Stores
    base_url: str
    admin_key: str
    project_id: str
    client: httpx.AsyncClient  # authenticated as admin, base_url set

    async def create_key(self, *scopes: Scope, projects: frozenset[str] = frozenset()) -> str:
        """A new API key with these scopes."""
        plain, _ = await self.stores.api_keys.create("test", frozenset(scopes), projects)
        return plain

    async def create_device(self, **fields: Any) -> dict[str, Any]:
        """A device in the test project (mqtt unless said otherwise); returns `data`."""
        body = {"name": "dev", "source": "mqtt", **fields}
        response = await self.client.post(f"/v2/projects/{self.project_id}/devices", json=body)
        assert response.status_code == 201, response.text
        data: dict[str, Any] = response.json()["data"]
        return data

    async def upload(
        self, name: str, content: bytes, file_type: str = "firmware", description: str = ""
    ) -> httpx.Response:
        """Upload a file to the test project."""
        return await self.client.post(
            f"/v2/projects/{self.project_id}/files",
            files={"file": (name, content, "application/octet-stream")},
            data={"type": file_type, "description": description},
        )


async def _serve(settings: Settings) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    return await start_serving(settings, start_timeout_s=15)


@pytest.fixture
async def service(settings: Settings, stores: Stores) -> AsyncIterator[Service]:
    """The API on real Redis and mosquitto, with an admin key and a project."""
    admin_key, _ = await stores.api_keys.create("admin", frozenset({Scope.ADMIN}))
    project = await stores.projects.create("test")
    server, task = await _serve(settings)
    base_url = f"http://{settings.http_host}:{settings.http_port}"
    async with httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=30
    ) as client:
        yield Service(
            settings=settings,
            stores=stores,
            base_url=base_url,
            admin_key=admin_key,
            project_id=project.id,
            client=client,
        )
    server.should_exit = True
    await asyncio.wait_for(task, 30)


OFFLOAD_TEMPLATE = Path(__file__).parents[1] / "deploy" / "nginx" / "ota-offload.conf.template"


def offload_site(settings: Settings) -> str:
    """deploy/nginx's offload config for the service of `settings` (`${LISTEN}` left to fill)."""
    return render_template(
        OFFLOAD_TEMPLATE.read_text(),
        {
            "API_UPSTREAM": f"{settings.http_host}:{settings.http_port}",
            "FILES_DIR": str(settings.files_dir.resolve()),
            "OTA_DOWNLOAD_OFFLOAD_PREFIX": settings.download_offload_prefix,
            "OTA_DOWNLOAD_OFFLOAD_SECRET": settings.download_offload_secret,
            "LISTEN": "${LISTEN}",  # EmbeddedNginx fills in the free port it picks
        },
    )


@pytest.fixture
def nginx(service: Service, tmp_path: Path) -> Iterator[EmbeddedNginx]:
    """A real nginx from the machine on a free port in front of `service`, running the shipped
    offload config (deploy/nginx/ota-offload.conf.template), as the current user, no daemon."""
    assert nginx_binary(), (
        "nginx is not installed; `make test` installs it from the system packages"
    )
    with EmbeddedNginx(tmp_path / "nginx", offload_site(service.settings)).start() as server:
        yield server


async def stored_device(
    stores: Stores, project_id: str, name: str, source: DeviceSource = DeviceSource.MQTT
) -> tuple[Device, str]:
    """A device and its token written straight to Redis, bypassing the API (and the broker)."""
    return await stores.devices.create(
        project_id,
        name=name,
        description="",
        source=source,
        brand="Custom",
        model="Custom",
        tags=[],
    )


async def wait_for(
    condition: Callable[[], Awaitable[bool]], timeout_s: float = 10.0, interval_s: float = 0.02
) -> None:
    """Poll `condition` until it holds; fail the test after `timeout_s`."""
    async with asyncio.timeout(timeout_s):
        while not await condition():  # noqa: ASYNC110 - polls state in Redis, not in this loop
            await asyncio.sleep(interval_s)


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """What reaches the event loop's exception handler (where unretrieved task errors go)."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: seen.append(context))
    yield seen
    loop.set_exception_handler(previous)


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost (openssl, installed by make system-deps)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key
