"""`python -m bench.listing_memory`: what listing every device of a big fleet costs in memory.

Seeds a fleet (20,000 devices by default) on a redis-server of its own, starts the app in this
process (with a mosquitto of its own for its lifespan) and, under tracemalloc, measures the
peak of Python memory while answering `GET /v2/projects/{pid}/devices` without `limit`:

- streamed: the route as it is, driven through ASGI by a client that drops the bytes as they
  arrive (so the client's copy is not counted);
- whole: the same devices read the same way and answered in one piece, as a route returning
  its envelope would (every `DeviceOut` in memory, then FastAPI's JSONResponse body).

It prints one line per way and the ratio. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from fastapi.responses import JSONResponse
from starlette.types import Message

from orchestrator.api.app import create_app
from orchestrator.api.devices import device_out
from orchestrator.api.listing import PAGE_SIZE
from orchestrator.api.schemas import DeviceListEnvelope, DeviceOut
from orchestrator.domain.auth import Scope
from orchestrator.domain.devices import DeviceSource
from orchestrator.embedded import EmbeddedBroker, EmbeddedRedis, free_port
from orchestrator.settings import Settings
from orchestrator.store import Stores
from orchestrator.store.redis import connect

MiB = 1024 * 1024


async def seed(stores: Stores, count: int) -> tuple[str, str]:
    """A project with `count` devices and an admin key: (project id, key)."""
    project = await stores.projects.create("bench")
    key, _ = await stores.api_keys.create("bench", frozenset({Scope.ADMIN}))
    for start in range(0, count, 100):  # a hundred at a time: one round trip's wait each
        await asyncio.gather(
            *(
                stores.devices.create(
                    project.id,
                    name=f"device-{i}",
                    description="a device of the bench fleet",
                    source=DeviceSource.MQTT,
                    brand="Acme",
                    model="TH-200",
                    tags=["bench", f"group-{i % 10}"],
                )
                for i in range(start, min(start + 100, count))
            )
        )
    return project.id, key


async def streamed(app: Any, project_id: str, key: str) -> tuple[int, int]:
    """Peak traced bytes and body bytes of the route, its body dropped as it arrives."""
    received = 0
    status = 0
    done = asyncio.Event()

    async def receive() -> Message:
        if not done.is_set():
            done.set()
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # no disconnect: the response ends on its own
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        nonlocal received, status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            received += len(message.get("body", b""))

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": f"/v2/projects/{project_id}/devices",
        "raw_path": f"/v2/projects/{project_id}/devices".encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"authorization", f"Bearer {key}".encode()), (b"host", b"bench")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    await app(scope, receive, send)
    peak = tracemalloc.get_traced_memory()[1] - base
    assert status == 200, status
    return peak, received


async def whole(stores: Stores, project_id: str) -> tuple[int, int]:
    """Peak traced bytes and body bytes of the same listing built whole, then rendered."""
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    devices: list[DeviceOut] = []
    cursor: str | None = None
    while True:
        page = await stores.devices.page(project_id, cursor=cursor, limit=PAGE_SIZE)
        devices += [device_out(device) for device in page.devices]
        cursor = page.next_cursor
        if cursor is None:
            break
    envelope = DeviceListEnvelope(
        status=200, action="list devices", message="Devices listed.", data=devices, next_cursor=None
    )
    body = JSONResponse(envelope.model_dump(mode="json")).body
    peak = tracemalloc.get_traced_memory()[1] - base
    return peak, len(body)


async def measure(redis_url: str, broker: EmbeddedBroker, work: Path, count: int) -> None:
    settings = Settings(
        redis_url=redis_url,
        redis_prefix="bench:",
        mqtt_url=broker.url,
        mqtt_version=broker.mqtt_version,
        http_port=free_port(),
        data_dir=work / "data",
        log_format="json",
        role="api",
    )
    redis = connect(redis_url)
    stores = Stores.build(redis, settings.redis_prefix)
    started = time.perf_counter()
    project_id, key = await seed(stores, count)
    print(f"seeded {count} devices in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        await streamed(app, project_id, key)  # warm: the OpenAPI table, imports, caches
        tracemalloc.start()
        stream_peak, stream_bytes = await streamed(app, project_id, key)
        whole_peak, whole_bytes = await whole(stores, project_id)
        tracemalloc.stop()
    await redis.aclose()
    print(f"devices={count} body={stream_bytes / MiB:.1f}MiB (whole: {whole_bytes / MiB:.1f}MiB)")
    print(f"streamed: peak {stream_peak / MiB:.2f} MiB")
    print(f"whole:    peak {whole_peak / MiB:.2f} MiB")
    print(f"ratio whole/streamed: {whole_peak / max(stream_peak, 1):.1f}")


def main(argv: list[str] | None = None) -> int:
    """Run the measurement; 0 when it ran."""
    parser = argparse.ArgumentParser(prog="python -m bench.listing_memory", description=__doc__)
    parser.add_argument("--devices", type=int, default=20_000)
    args = parser.parse_args(argv)
    binary = shutil.which("redis-server")
    if binary is None:
        print("redis-server is not installed; `make system-deps` installs it", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="ota-listing-") as tmp:
        work = Path(tmp)
        with (
            EmbeddedRedis(work / "redis", binary=binary, appendonly=False).start() as server,
            EmbeddedBroker(work / "mqtt", kind="mosquitto").start() as broker,
        ):
            asyncio.run(measure(server.url, broker, work, args.devices))
    return 0


if __name__ == "__main__":
    sys.exit(main())
