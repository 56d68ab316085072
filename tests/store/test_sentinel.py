"""OTA_REDIS_URL with Redis Sentinel: the stores reach the primary that a real Sentinel names."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from orchestrator.embedded import free_port
from orchestrator.settings import Settings
from orchestrator.store import Stores
from orchestrator.store.redis import connect

SERVICE = "ota-primary"


@pytest.fixture
def sentinel_url(redis_url: str, tmp_path: Path) -> Iterator[str]:
    """A redis-server in Sentinel mode watching the session's Redis as `ota-primary`."""
    binary = shutil.which("redis-server")
    assert binary
    primary = redis_url.removeprefix("redis://").split("/")[0]
    host, port = primary.split(":")
    sentinel_port = free_port()
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor {SERVICE} {host} {port} 1\n"
    )
    process = subprocess.Popen(
        [binary, str(config), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        client = redis.Redis(port=sentinel_port, socket_connect_timeout=1)
        deadline = time.monotonic() + 15
        while True:  # until the Sentinel answers with the primary's address
            try:
                if client.sentinel_get_master_addr_by_name(SERVICE):
                    break
            except redis.ConnectionError:
                pass
            assert time.monotonic() < deadline, "the Sentinel never came up"
            time.sleep(0.05)
        client.close()
        yield f"redis+sentinel://127.0.0.1:{sentinel_port}/{SERVICE}"
    finally:
        process.terminate()
        process.wait(10)


async def test_the_stores_work_through_a_sentinel_url(sentinel_url: str) -> None:
    settings = Settings(redis_url=sentinel_url)
    client = connect(settings.redis_url)
    try:
        stores = Stores.build(client, f"test:{uuid.uuid4().hex[:12]}:")
        project = await stores.projects.create("through-sentinel")  # a MULTI
        assert await stores.projects.get(project.id) == project
        assert await stores.ping()
        made = await stores.hooks.create(  # a Lua script through the same client
            project_id=project.id,
            name="h",
            plan="name: x-${version}",
            secret="s" * 20,
            created_at="2026-12-01T00:00:00Z",
            by="test",
        )
        assert (await stores.hooks.get(made.id)) == made
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://127.0.0.1:26379",
        "redis+sentinel://127.0.0.1/primary",
        "redis+sentinel://h:x/p",
        "redis+sentinel://h:\u00b3/p",  # isdigit() takes '³', int() does not
        "redis+sentinel://h:26379/p/\u00b3",
    ],
)
def test_a_sentinel_url_without_hosts_or_service_is_refused_with_the_form(url: str) -> None:
    with pytest.raises(ValueError, match=r"redis\+sentinel://\[:password@\]host:26379"):
        connect(url)
