"""The soak's downloads: one firmware file to many concurrent clients, three ways, same run.

- **nginx alone**: nginx serves the stored file from a plain static location: the reference.
- **service**: the clients ask the service itself (`GET /v2/device/download?key=`, each with its
  own device's token and key); Python streams every byte.
- **service + x-accel**: the same requests through nginx running the shipped offload config:
  the service checks and claims, nginx sends, and reports back to spend the keys.

Each way runs twice: with every client reading at a capped pace (slow devices), then with
every client reading as fast as it can (what the server can give). The clients run in a
process of their own (bench/download_clients.py); the service's RSS and CPU are sampled from
/proc while they read.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

import httpx

from bench.soak_report import DownloadFigures, DownloadRun
from orchestrator.embedded import free_port
from orchestrator.embedded_nginx import EmbeddedNginx, render_template
from orchestrator.store import Stores

TEMPLATE = Path(__file__).parents[1] / "deploy" / "nginx" / "ota-offload.conf.template"
FIRMWARE_NAME = "fw_soak.bin"
SAMPLE_S = 0.2  # how often the service's RSS is read during a run
RUN_TIMEOUT_S = 600.0
SPENT_WAIT_S = 30.0  # nginx's reports arrive just after the last byte


class Sampled(Protocol):
    """The service process as the downloads see it."""

    base_url: str

    def rss_bytes(self) -> int: ...

    def cpu_s(self) -> float: ...


def nginx_site(service_port: int, files_dir: Path, static_port: int, secret: str) -> str:
    """The shipped offload config, plus a server that serves the files plainly (the reference)."""
    offload = render_template(
        TEMPLATE.read_text(),
        {
            "API_UPSTREAM": f"127.0.0.1:{service_port}",
            "FILES_DIR": str(files_dir),
            "OTA_DOWNLOAD_OFFLOAD_PREFIX": "/_ota_files/",
            "OTA_DOWNLOAD_OFFLOAD_SECRET": secret,
            "LISTEN": "${LISTEN}",
        },
    )
    static = (
        "server {\n"
        f"    listen 127.0.0.1:{static_port};\n"
        f"    location /static/ {{ alias {files_dir}/; sendfile on; tcp_nopush on; }}\n"
        "}\n"
    )
    return offload + "\n" + static


async def run_clients(
    service: Sampled, host: str, port: int, requests: list[dict[str, Any]], pace_bytes_s: float
) -> tuple[list[dict[str, Any]], int, int, float]:
    """The clients' outcomes, the service's RSS before and at its peak, its CPU share."""
    spec = {
        "host": host,
        "port": port,
        "requests": requests,
        "pace_bytes_s": pace_bytes_s,
        "timeout_s": RUN_TIMEOUT_S,
    }
    before = peak = service.rss_bytes()
    cpu_before, clock = service.cpu_s(), time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.download_clients",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    process.stdin.write(json.dumps(spec).encode())
    process.stdin.close()
    reading = asyncio.ensure_future(process.stdout.read())
    while not reading.done():
        peak = max(peak, service.rss_bytes())
        await asyncio.wait([reading], timeout=SAMPLE_S)
    await process.wait()
    cpu_share = (service.cpu_s() - cpu_before) / (time.monotonic() - clock)
    return json.loads(await reading), before, peak, cpu_share


def summarise(label: str, pace: float, outcomes: list[dict[str, Any]], sha256: str) -> DownloadRun:
    """One run's figures from its clients' outcomes."""
    started = min(o["started_at"] for o in outcomes)
    ended = max(o["ended_at"] for o in outcomes)
    ok = [
        o
        for o in outcomes
        if not o["error"] and o["status"] == 200 and o["received"] == o["expected"]
    ]
    rates = sorted(o["received"] / max(o["ended_at"] - o["first_byte_at"], 1e-6) for o in ok)
    waits = sorted(o["first_byte_at"] - o["started_at"] for o in outcomes if o["first_byte_at"])
    errors = sorted({o["error"] or f"status {o['status']}" for o in outcomes if o not in ok})
    return DownloadRun(
        label=label,
        pace_bytes_s=pace,
        clients=len(outcomes),
        ok=len(ok),
        bytes=sum(o["received"] for o in outcomes),
        wall_s=ended - started,
        client_median_bytes_s=rates[len(rates) // 2] if rates else 0.0,
        first_byte_p50_s=waits[len(waits) // 2] if waits else 0.0,
        first_byte_p95_s=waits[int(len(waits) * 0.95)] if waits else 0.0,
        sha256_ok=outcomes[0]["sha256"] == sha256,
        errors=errors[:3],
    )


async def spent_count(stores: Stores, keys: list[str]) -> int:
    """How many of `keys` are spent, once nginx's reports have had time to arrive."""
    deadline = time.monotonic() + SPENT_WAIT_S
    while True:
        async with stores.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hget(stores.keys.download_key(key), "state")
            states = await pipe.execute()
        spent = sum(1 for state in states if state == "spent")
        if spent == len(keys) or time.monotonic() > deadline:
            return spent
        await asyncio.sleep(0.2)


async def run_downloads(
    service: Sampled,
    stores: Stores,
    client: httpx.AsyncClient,
    project_id: str,
    devices: list[tuple[str, str]],
    work: Path,
    figures: DownloadFigures,
    secret: str,
) -> None:
    """Upload the firmware, start nginx, then each way with slow clients and with fast ones."""
    content = os.urandom(figures.firmware_bytes)
    sha256 = hashlib.sha256(content).hexdigest()
    response = await client.post(
        f"/v2/projects/{project_id}/files",
        files={"file": (FIRMWARE_NAME, content, "application/octet-stream")},
        data={"type": "firmware", "description": "soak"},
    )
    if response.status_code != 201:
        raise RuntimeError(f"firmware upload failed: {response.status_code} {response.text}")
    del content
    stored = await stores.files.get(project_id, FIRMWARE_NAME)
    assert stored is not None
    service_port = int(service.base_url.rsplit(":", 1)[1])
    files_dir = (work / "data" / "files").resolve()
    static_port = free_port()
    site = nginx_site(service_port, files_dir, static_port, secret)
    with EmbeddedNginx(work / "nginx", site).start() as nginx:
        for pace in (figures.pace_bytes_s, 0.0):
            static = [{"path": f"/static/{stored.path}"}] * len(devices)
            outcomes, before, peak, cpu = await run_clients(
                service, "127.0.0.1", static_port, static, pace
            )
            run = summarise("nginx alone", pace, outcomes, sha256)
            figures.runs.append(run)
            for label, port in (("service", service_port), ("service + x-accel", nginx.port)):
                keys = await stores.download_keys.issue(
                    [(device_id, uuid.uuid4().hex) for device_id, _ in devices],
                    project_id=project_id,
                    file_name=FIRMWARE_NAME,
                    size=stored.size,
                    ttl_s=3600,
                )
                tokens = dict(devices)
                requests = [
                    {
                        "path": f"/v2/device/download?key={key.key}",
                        "headers": {"Authorization": f"Basic {tokens[key.device_id]}"},
                    }
                    for key in keys
                ]
                outcomes, before, peak, cpu = await run_clients(
                    service, "127.0.0.1", port, requests, pace
                )
                run = summarise(label, pace, outcomes, sha256)
                run.service_rss_before = before
                run.service_rss_peak = peak
                run.service_cpu = cpu
                run.keys_spent = await spent_count(stores, [key.key for key in keys])
                figures.runs.append(run)
