"""How long the service stops answering while it checks a big plan.

`python -m bench.plan_check` starts its own redis-server and mosquitto, serves the API (role
`api`: no engine) in this process, and for each case posts a plan to
`POST /v2/projects/{pid}/rollouts` while another process polls `GET /healthz` one request after
the other. It prints, per case, the plan's size, how long the POST took alone and with the
polling, and the /healthz latencies of the requests made while the POST ran (count, median,
p99 and the longest). A measurement, not a test.

Cases (`parse` alone runs against a project of 2 devices, the others of 150,000): `parse`
names 150,000 devices (short ids, most unknown to the project) in
`target.devices`; `listed` names 25,000 of the project's 150,000 devices by id (their UUIDs fill
about 1 MB); `fleet` targets all 150,000 devices of the project by a tag.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from orchestrator.domain.auth import Scope
from orchestrator.domain.devices import DeviceSource
from orchestrator.embedded import EmbeddedBroker, EmbeddedRedis, free_port
from orchestrator.service import serving
from orchestrator.settings import Settings
from orchestrator.store import Stores
from orchestrator.store.redis import connect

FIRMWARE = "fw_bench.bin"
FLEET = 150_000
POLLER = """
import json, select, sys, time, httpx
samples = []
with httpx.Client(timeout=60) as client:
    print("ready", flush=True)
    while not select.select([sys.stdin], [], [], 0)[0]:
        started = time.time()
        client.get(sys.argv[1])
        samples.append((started, time.time() - started))
print(json.dumps(samples))
"""


def plan_text(name: str, target: str) -> str:
    return (
        f"name: {name}\nfirmware: {{file: {FIRMWARE}}}\ntarget:\n{target}\n"
        "waves:\n  - devices: 10\n  - percent: 100\n"
    )


def _short_id(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    while True:
        number, rest = divmod(number, 36)
        text = digits[rest] + text
        if not number:
            return text


async def make_fleet(stores: Stores, project_id: str, count: int) -> list[str]:
    """`count` mqtt devices tagged `bench`, made straight in the store; their ids."""
    ids: list[str] = []
    for start in range(0, count, 2000):
        made = await asyncio.gather(
            *(
                stores.devices.create(
                    project_id,
                    name="bench",
                    description="",
                    source=DeviceSource.MQTT,
                    brand="Acme",
                    model="B-1",
                    tags=["bench"],
                )
                for _ in range(start, min(count, start + 2000))
            )
        )
        ids += [device.id for device, _ in made]
        print(f"{len(ids)} devices made", file=sys.stderr, flush=True)
    return ids


async def measure(
    client: httpx.AsyncClient, url: str, health_url: str, plan: str
) -> dict[str, object]:
    poller = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        POLLER,
        health_url,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert poller.stdout is not None
    assert poller.stdin is not None
    await poller.stdout.readline()
    await asyncio.sleep(1.0)  # the poller's latencies before the POST, for the baseline
    started = time.time()
    response = await client.post(url, content=plan, headers={"Content-Type": "application/yaml"})
    ended = time.time()
    await asyncio.sleep(0.5)
    poller.stdin.write(b"stop\n")
    await poller.stdin.drain()
    poller.stdin.close()
    samples = json.loads(await poller.stdout.read())
    await poller.wait()
    during = sorted(latency for at, latency in samples if at + latency >= started and at <= ended)
    return {
        "status": response.status_code,
        "plan_bytes": len(plan.encode()),
        "post_polled_s": round(ended - started, 2),
        "healthz_during": len(during),
        "healthz_median_ms": round(statistics.median(during) * 1000, 1) if during else None,
        "healthz_p99_ms": round(during[int(len(during) * 0.99)] * 1000, 1) if during else None,
        "healthz_max_ms": round(during[-1] * 1000, 1) if during else None,
    }


async def main(cases: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        redis_server = EmbeddedRedis(root / "redis", binary="redis-server", appendonly=False)
        with (
            redis_server.start() as redis,
            EmbeddedBroker(root / "mqtt", kind="mosquitto").start() as broker,
        ):
            settings = Settings(
                redis_url=redis.url,
                mqtt_url=broker.url,
                mqtt_version=broker.mqtt_version,
                http_port=free_port(),
                data_dir=root / "data",
                log_format="json",
                log_level="warning",
                role="api",
                instance_id=f"bench-{uuid.uuid4().hex[:6]}",
            )
            stores = Stores.build(connect(settings.redis_url), settings.redis_prefix)
            admin, _ = await stores.api_keys.create("bench", frozenset({Scope.ADMIN}))
            project = await stores.projects.create("bench")
            base = f"http://{settings.http_host}:{settings.http_port}"
            url = f"/v2/projects/{project.id}/rollouts"
            async with (
                serving(settings),
                httpx.AsyncClient(
                    base_url=base, headers={"Authorization": f"Bearer {admin}"}, timeout=600
                ) as client,
            ):
                upload = await client.post(
                    f"/v2/projects/{project.id}/files",
                    files={"file": (FIRMWARE, b"\x7fELF bench", "application/octet-stream")},
                    data={"type": "firmware"},
                )
                assert upload.status_code == 201, upload.text
                fleet = await make_fleet(stores, project.id, FLEET if set(cases) - {"parse"} else 2)
                plans = {
                    "parse": plan_text(
                        "parse",
                        "  devices: ["
                        + ",".join([*fleet[:2], *(_short_id(n) for n in range(150_000))])
                        + "]",
                    ),
                    "listed": plan_text("listed", f"  devices: [{','.join(fleet[:25_000])}]"),
                    "fleet": plan_text("fleet", "  tags: [bench]"),
                }

                async def abort_all() -> None:  # free the name and devices for the next POST
                    for view in (await client.get(url)).json()["data"]:
                        if view["state"] != "aborted":
                            await client.post(f"{url}/{view['id']}/abort")
                            await stores.rollout_devices.release_devices(view["id"])

                for case in cases:
                    headers = {"Content-Type": "application/yaml"}
                    started = time.time()
                    alone = await client.post(url, content=plans[case], headers=headers)
                    post_alone_s = round(time.time() - started, 2)
                    assert alone.status_code == 201, alone.text
                    await abort_all()
                    result = await measure(client, url, f"{base}/healthz", plans[case])
                    print(json.dumps({"case": case, "post_alone_s": post_alone_s, **result}))
                    await abort_all()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", default=["parse", "listed", "fleet"])
    asyncio.run(main(parser.parse_args().cases))
