"""`make soak`: what a large fleet costs (Redis per device, service memory, time per wave; Redis
again once the finished rollout is compacted) and how fast firmware goes out to many slow
devices (the service, the service with nginx offload, nginx).

Everything runs on this machine, on servers of its own: a redis-server and a mosquitto on free
ports in a temporary directory, the service as `python -m orchestrator serve` in a process of
its own (so its memory is its own), the bench's fleet process (bench/fleet.py) answering the
rollout's commands, nginx running deploy/nginx/ota-offload.conf.template, and the download
clients in a process of their own (bench/download_clients.py). bench/README.md says what each
number means. Exit status 0 whatever the numbers; 1 when the soak itself broke.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from bench.fleet_client import FleetClient
from bench.report import log_problems
from bench.run import FIRMWARE_FILE, create_devices, start_rollout, upload_firmware
from bench.soak_downloads import run_downloads
from bench.soak_report import RolloutFigures, SoakResults, Wave, report
from orchestrator.domain import counters
from orchestrator.domain.auth import Scope
from orchestrator.domain.states import DeviceState
from orchestrator.embedded import (
    EmbeddedBroker,
    EmbeddedRedis,
    free_port,
    mosquitto_binary,
)
from orchestrator.embedded_nginx import nginx_binary
from orchestrator.service import run_on_service_loop
from orchestrator.store import Stores
from orchestrator.store.redis import Redis, connect

SUCCEEDED = counters.total(DeviceState.SUCCEEDED)
PREFIX = "soak:"
WAVE_PERCENTS = (1, 10, 50, 100)  # cumulative, as a plan's waves are
POLL_S = 0.1  # how often the rollout is read while it runs
ROLLOUT_TIMEOUT_S = 900.0
STALL_S = 30.0  # the rollout's counts have not moved for this long: it will not finish
COMPACT_TIMEOUT_S = 120.0  # the engine lets go of a finished rollout within its lease (15 s)
SCAN_BATCH = 1000  # keys per SCAN step and per pipeline of MEMORY USAGE
SECRET = secrets.token_hex(32)  # the offload secret of this run's service and nginx
_ID = re.compile(r"^(?:dk_)?[A-Za-z0-9_-]{16,}$")  # a key segment that is an id, not a word


# --- the service, in a process of its own ------------------------------------------------------


class ServiceProcess:
    """`python -m orchestrator serve` with the soak's settings; its RSS and CPU from /proc."""

    def __init__(self, process: subprocess.Popen[bytes], base_url: str) -> None:
        self.process = process
        self.base_url = base_url

    @classmethod
    async def start(cls, env: dict[str, str], log_path: Path, timeout_s: float = 60) -> Any:
        """Start it and wait for `/healthz`; the environment holds its OTA_ settings."""
        base_url = f"http://127.0.0.1:{env['OTA_HTTP_PORT']}"
        process = _spawn(env, log_path)
        service = cls(process, base_url)
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(base_url=base_url, timeout=2) as client:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"the service exited with {process.returncode}; {log_path}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get("/readyz")).status_code == 200:
                        return service
                if time.monotonic() > deadline:
                    await service.stop()
                    raise RuntimeError(f"the service was not ready within {timeout_s} s")
                await asyncio.sleep(0.1)

    def rss_bytes(self) -> int:
        """Resident set size now (VmRSS)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def cpu_s(self) -> float:
        """CPU seconds (user + system) used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def stop(self) -> None:
        """SIGTERM, as an orchestrator would; SIGKILL after 60 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.process.wait, 60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                await asyncio.to_thread(self.process.wait)


def _spawn(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "serve"],
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


# --- Redis memory ----------------------------------------------------------------------------


async def used_memory(redis: Redis) -> int:
    """INFO memory's used_memory, in bytes."""
    info: dict[str, Any] = await redis.info("memory")
    return int(info["used_memory"])


def key_kind(key: str) -> str:
    """The key's template: the prefix dropped, each id segment written `{id}`."""
    parts = key.removeprefix(PREFIX).split(":")
    return ":".join(
        "{id}" if _ID.match(part) and any(c.isdigit() for c in part) else part for part in parts
    )


async def memory_by_kind(redis: Redis) -> dict[str, tuple[int, int]]:
    """Keys and bytes (MEMORY USAGE, every element counted) per key kind under the prefix."""
    kinds: dict[str, tuple[int, int]] = {}
    batch: list[str] = []

    async def measure() -> None:
        async with redis.pipeline(transaction=False) as pipe:
            for key in batch:
                pipe.memory_usage(key, samples=0)
            sizes = await pipe.execute()
        for key, size in zip(batch, sizes, strict=True):
            count, total = kinds.get(key_kind(key), (0, 0))
            kinds[key_kind(key)] = (count + 1, total + int(size or 0))
        batch.clear()

    async for key in redis.scan_iter(match=f"{PREFIX}*", count=SCAN_BATCH):
        batch.append(str(key))
        if len(batch) >= SCAN_BATCH:
            await measure()
    if batch:
        await measure()
    return kinds


# --- the rollout -----------------------------------------------------------------------------


def soak_plan() -> str:
    """Every device, in waves of 1, 10, 50 and 100%; no bake, no rate limit."""
    waves = "".join(f"  - percent: {percent}\n" for percent in WAVE_PERCENTS)
    return f"name: soak\nfirmware: {{file: {FIRMWARE_FILE}, version: 2.1.0}}\nwaves:\n{waves}"


async def run_rollout(
    service: ServiceProcess,
    stores: Stores,
    client: httpx.AsyncClient,
    fleet: FleetClient,
    project_id: str,
    figures: RolloutFigures,
) -> str:
    """The rollout of every device, answered at once by the fleet; times and RSS per wave.
    Returns the rollout's id."""
    n = figures.devices
    await fleet.call("expect", mode="reply", n=n)
    rollout_id = await start_rollout(client, project_id, soak_plan())
    figures.service_rss_created = service.rss_bytes()  # the API resolved the cohort
    started = last_change = time.time()
    wave_index, wave_started, last_count = 0, started, -1
    record = None
    while time.time() - started < ROLLOUT_TIMEOUT_S:
        record = await stores.rollouts.get(rollout_id)
        now = time.time()
        if record is None:
            raise RuntimeError(f"rollout {rollout_id} vanished")
        finished = record.state.value not in ("pending", "running")
        if record.wave != wave_index or finished:
            reach = record.reach
            figures.waves.append(
                Wave(
                    devices=reach[wave_index] - (reach[wave_index - 1] if wave_index else 0),
                    seconds=now - wave_started,
                    service_rss=service.rss_bytes(),
                )
            )
            wave_index, wave_started = record.wave, now
        if finished:
            break
        count = int(await stores.redis.hget(stores.keys.rollout_counts(rollout_id), SUCCEEDED) or 0)
        if count != last_count:
            last_count, last_change = count, now
        elif now - last_change > STALL_S:
            figures.notes.append(f"the rollout stalled at {count} of {n} devices succeeded")
            break
        await asyncio.sleep(POLL_S)
    figures.rollout_s = time.time() - started
    figures.state = record.state.value if record else "?"
    counts = await stores.rollouts.counts(rollout_id)
    figures.succeeded = int(counts.get(SUCCEEDED, 0))
    seen = await fleet.call("wait", timeout_s=30, stall_s=5)
    figures.commands_received = int(seen["received"])
    return rollout_id


async def compact_rollout(stores: Stores, rollout_id: str, figures: RolloutFigures) -> None:
    """Compact the finished rollout now, as the engine's sweep does a minute after its end
    (store/rollout_archive.py); waits for the engine to let go of it first."""
    started = time.time()
    while time.time() - started < COMPACT_TIMEOUT_S:
        compacted = await stores.archive.compact(
            rollout_id, max_devices=figures.devices, at_ms=int(time.time() * 1000)
        )
        if compacted.outcome == "done":
            figures.compact_s = time.time() - started
            return
        if compacted.outcome != "leased" and compacted.outcome != "more":
            figures.notes.append(f"the rollout was not compacted: {compacted.outcome}")
            return
        await asyncio.sleep(POLL_S)
    figures.notes.append(f"the rollout was not compacted within {COMPACT_TIMEOUT_S:.0f} s")


# --- the whole soak --------------------------------------------------------------------------


def service_env(redis_url: str, mqtt_url: str, work: Path, port: int) -> dict[str, str]:
    """The service's settings: the soak's servers, offload on, JSON logs at info."""
    return {
        "OTA_REDIS_URL": redis_url,
        "OTA_REDIS_PREFIX": PREFIX,
        "OTA_MQTT_URL": mqtt_url,
        "OTA_HTTP_PORT": str(port),
        "OTA_DATA_DIR": str(work / "data"),
        "OTA_LOG_FORMAT": "json",
        "OTA_LOG_LEVEL": "info",
        "OTA_INSTANCE_ID": f"soak-{uuid.uuid4().hex[:8]}",
        "OTA_ROLE": "all",
        "OTA_DOWNLOAD_OFFLOAD": "x-accel",
        "OTA_DOWNLOAD_OFFLOAD_SECRET": SECRET,
        "OTA_DOWNLOAD_KEY_TTL": "3600",
    }


@contextlib.asynccontextmanager
async def admin_client(base_url: str, key: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the service with the admin key."""
    async with httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=300
    ) as client:
        yield client


async def soak(redis_url: str, broker: EmbeddedBroker, work: Path, results: SoakResults) -> None:
    """Devices, the service, the rollout, Redis memory, then the downloads."""
    figures = results.rollout
    redis = connect(redis_url)
    stores = Stores.build(redis, PREFIX)
    port = free_port()
    service: ServiceProcess | None = None
    fleet: FleetClient | None = None
    try:
        admin_key, _ = await stores.api_keys.create("soak", frozenset({Scope.ADMIN}))
        project = await stores.projects.create("soak")
        service = await ServiceProcess.start(
            service_env(redis_url, broker.url, work, port), work / "service.log"
        )
        figures.service_rss_start = service.rss_bytes()
        figures.redis_before = await used_memory(redis)
        clock = time.time()
        tokens = await create_devices(stores, project.id, figures.devices)
        figures.create_s = time.time() - clock
        figures.redis_registry = await used_memory(redis)
        fleet = await FleetClient.start(broker.port)
        async with admin_client(service.base_url, admin_key) as client:
            await upload_firmware(client, project.id)
            figures.service_rss_before_rollout = service.rss_bytes()
            rollout_id = await run_rollout(service, stores, client, fleet, project.id, figures)
            figures.service_rss_end = service.rss_bytes()
            figures.redis_after = await used_memory(redis)
            clock = time.time()
            figures.memory = await memory_by_kind(redis)
            figures.scan_s = time.time() - clock
            await compact_rollout(stores, rollout_id, figures)
            figures.redis_compacted = await used_memory(redis)
            figures.memory_compacted = await memory_by_kind(redis)
            if results.downloads.clients:
                chosen = list(tokens.items())[: results.downloads.clients]
                await run_downloads(
                    service, stores, client, project.id, chosen, work, results.downloads, SECRET
                )
    finally:
        if fleet is not None:
            await fleet.stop()
        if service is not None:
            await service.stop()
        await redis.aclose()


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run the soak, print the tables and the summary line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--devices", type=int, default=100_000, help="devices in the rollout")
    parser.add_argument(
        "--download-clients", type=int, default=200, help="concurrent downloads (0: none)"
    )
    parser.add_argument(
        "--firmware-mb", type=float, default=50.0, help="size of the downloaded file"
    )
    parser.add_argument(
        "--pace-mb-s", type=float, default=1.0, help="read pace of each slow client (MB/s)"
    )
    parser.add_argument("--keep", type=Path, default=None, help="a directory to keep the logs in")
    args = parser.parse_args(argv)
    if args.devices < args.download_clients or args.devices < 100:
        parser.error("--devices must be at least 100 and at least --download-clients")
    redis_binary = shutil.which("redis-server")
    if redis_binary is None or mosquitto_binary() is None or nginx_binary() is None:
        print(
            "soak: redis-server, mosquitto and nginx are needed (make system-deps)", file=sys.stderr
        )
        return 2
    results = SoakResults.new(
        devices=args.devices,
        clients=args.download_clients,
        firmware_bytes=int(args.firmware_mb * 1e6),
        pace_bytes_s=args.pace_mb_s * 1e6,
    )
    command = shlex.join(
        ["python", "-m", "bench.soak", *(argv if argv is not None else sys.argv[1:])]
    )
    started = time.time()
    broke = False
    with tempfile.TemporaryDirectory(prefix="ota-soak-") as tmp:
        work = Path(tmp) if args.keep is None else args.keep.resolve()
        work.mkdir(parents=True, exist_ok=True)
        with (
            EmbeddedRedis(
                work / "redis", binary=redis_binary, appendonly=False
            ).start() as redis_server,
            EmbeddedBroker(work / "mqtt", kind="mosquitto").start() as broker,
        ):
            try:
                run_on_service_loop(soak(redis_server.url, broker, work, results))
            except Exception as exc:  # still print what was measured before it broke
                results.notes.append(f"the soak broke: {exc!r}")
                broke = True
            results.notes.extend(log_problems(work / "service.log"))
    print(report(results, time.time() - started, command))
    return 1 if broke else 0


if __name__ == "__main__":
    sys.exit(main())
