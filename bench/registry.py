"""`python -m bench.registry`: what a registered device costs in Redis, by key kind.

Creates devices through DeviceStore (the soak's: name `bench-N`, brand `bench`, model `b1`,
optionally tags and custom metadata) on its own redis-server, one at a time on one connection
(so that client buffers do not move `used_memory`), after a few warm-up devices in another
project (the script loaded, the dictionaries grown). Prints MEMORY USAGE per key kind of the
measured project and the growth of `used_memory`, both per device.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
from pathlib import Path

from bench.run import create_device
from bench.soak import PREFIX, key_kind, used_memory
from orchestrator.embedded import EmbeddedRedis
from orchestrator.store import Stores
from orchestrator.store.redis import connect

WARM_UP = 50


async def measure(url: str, devices: int, tags: int, metadata: int) -> None:
    redis = connect(url)
    stores = Stores.build(redis, PREFIX)
    warm = await stores.projects.create("warm-up")
    for i in range(WARM_UP):
        await create_device(stores, warm.id, i, tags=tags, metadata=metadata)
    project = await stores.projects.create("measured")
    before = await used_memory(redis)
    for i in range(devices):
        await create_device(stores, project.id, i, tags=tags, metadata=metadata)
    grown = await used_memory(redis) - before
    kinds: dict[str, tuple[int, int]] = {}
    async for key in redis.scan_iter(match=f"{PREFIX}*", count=1000):
        if key.startswith(PREFIX + "device:"):
            device = await stores.devices.by_id(key.removeprefix(PREFIX + "device:"))
            if device is None or device.project_id != project.id:
                continue
        elif project.id not in key or key == stores.keys.project(project.id):
            continue
        count, size = kinds.get(key_kind(key), (0, 0))
        kinds[key_kind(key)] = (count + 1, size + (await redis.memory_usage(key, samples=0) or 0))
    await redis.aclose()
    print(f"{devices:,} devices, {tags} tags and {metadata} custom metadata keys each")
    print("| key kind | keys | bytes/device |")
    print("| --- | --- | --- |")
    for kind, (count, size) in sorted(kinds.items(), key=lambda item: -item[1][1]):
        print(f"| `{kind}` | {count:,} | {size / devices:,.1f} |")
    total = sum(size for _, size in kinds.values())
    print(f"| **MEMORY USAGE, all** | | **{total / devices:,.1f}** |")
    print(f"| used_memory growth | | {grown / devices:,.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--tags", type=int, default=0)
    parser.add_argument("--metadata", type=int, default=0, help="custom metadata keys")
    args = parser.parse_args()
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed; make system-deps installs it")
    with (
        tempfile.TemporaryDirectory() as work,
        EmbeddedRedis(Path(work), binary=binary, appendonly=False).start() as server,
    ):
        asyncio.run(measure(server.url, args.devices, args.tags, args.metadata))


if __name__ == "__main__":
    main()
