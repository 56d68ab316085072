"""`make bench`: a 10,000-device rollout against a local mosquitto, next to the raw MQTT rates.

Everything runs on this machine, on servers of its own: a redis-server and a mosquitto on free
ports in a temporary directory (never 6379/1883), the service in this process (API and engine,
as `ota serve` runs them), and a fast simulated fleet in a second process (bench/fleet.py).
See bench/README.md for what each number means. Exit status 0 whatever the numbers: this is a
measurement, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import resource
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from bench import raw
from bench.fleet_client import FleetClient
from bench.raw import Rate
from bench.report import (
    CREATE_BATCH,
    OVERSHOOT_MAX_FAILURE_RATE,
    OVERSHOOT_MAX_IN_FLIGHT,
    OVERSHOOT_MIN_DEVICES,
    Results,
    Round,
    bursts,
    log_problems,
    per_device,
    report,
)
from orchestrator.domain import counters
from orchestrator.domain.auth import Scope
from orchestrator.domain.devices import DeviceSource
from orchestrator.domain.states import DeviceState
from orchestrator.embedded import EmbeddedBroker, EmbeddedRedis, free_port, mosquitto_binary
from orchestrator.logs import configure_logging
from orchestrator.service import run_on_service_loop, start_serving
from orchestrator.settings import Settings
from orchestrator.store import Stores
from orchestrator.store.devices import Device
from orchestrator.store.redis import Redis, connect
from orchestrator.transport.clients import end_session
from orchestrator.transport.results import results_client_id

SUCCEEDED = counters.total(DeviceState.SUCCEEDED)
POLL_S = 0.01  # how often the rollout's counters are read from Redis (one HGET)
FIRMWARE = hashlib.sha256(b"bench").digest() * 128  # 4 KiB
FIRMWARE_FILE = "fw_bench.bin"
VERSION = "2.1.0"
RUN_TIMEOUT_S = 120.0
STALL_S = 10.0  # a count that has not moved for this long will not move any more
PREFIX = "bench:"


# --- the service ------------------------------------------------------------------------------


@dataclass
class Service:
    """The service running in this process, with an admin client."""

    settings: Settings
    stores: Stores
    client: httpx.AsyncClient
    server: uvicorn.Server
    task: asyncio.Task[None]

    async def stop(self, *, drop_session: bool = False) -> None:
        """Shut the service down as uvicorn does on SIGTERM.

        `drop_session`: then end the engine's persistent MQTT session, which an orderly stop
        keeps; otherwise the broker would queue (and, in the shared group, route) results to it.
        """
        await self.client.aclose()
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 60)
        if drop_session:
            await end_session(
                self.settings.mqtt_url,
                client_id=results_client_id(self.settings.instance_id),
                version=self.settings.mqtt_version,
            )


async def start_service(settings: Settings, stores: Stores, admin_key: str) -> Service:
    """Uvicorn on a free port in this process, as tests/conftest.py runs it."""
    server, task = await start_serving(settings)
    client = httpx.AsyncClient(
        base_url=settings.public_url,
        headers={"Authorization": f"Bearer {admin_key}"},
        timeout=120,
    )
    return Service(settings, stores, client, server, task)


async def create_device(
    stores: Stores, project_id: str, i: int, *, tags: int = 0, metadata: int = 0
) -> tuple[Device, str]:
    """The bench's device number `i` (`bench-{i}`, brand `bench`, model `b1`), with `tags`
    tags and `metadata` custom metadata keys."""
    return await stores.devices.create(
        project_id,
        name=f"bench-{i}",
        description="",
        source=DeviceSource.MQTT,
        brand="bench",
        model="b1",
        tags=[f"tag-{t}" for t in range(tags)],
        metadata={f"key-{k}": f"value-{i % 10}" for k in range(metadata)},
    )


async def create_devices(stores: Stores, project_id: str, n: int) -> dict[str, str]:
    """`n` mqtt devices straight through the store (the HTTP API would take minutes); id: token."""
    tokens: dict[str, str] = {}
    for start in range(0, n, CREATE_BATCH):
        made = await asyncio.gather(
            *(
                create_device(stores, project_id, i)
                for i in range(start, min(n, start + CREATE_BATCH))
            )
        )
        tokens.update((device.id, token) for device, token in made)
    return tokens


async def upload_firmware(client: httpx.AsyncClient, project_id: str) -> None:
    """The 4 KiB firmware file every rollout of the bench ships (`client`: the admin's)."""
    response = await client.post(
        f"/v2/projects/{project_id}/files",
        files={"file": (FIRMWARE_FILE, FIRMWARE, "application/octet-stream")},
        data={"type": "firmware", "description": "bench"},
    )
    if response.status_code != 201:
        raise RuntimeError(f"firmware upload failed: {response.status_code} {response.text}")


async def start_rollout(client: httpx.AsyncClient, project_id: str, plan: str) -> str:
    """POST the plan; the rollout's id once the API has created it (pending)."""
    response = await client.post(
        f"/v2/projects/{project_id}/rollouts",
        content=plan,
        headers={"Content-Type": "application/yaml"},
    )
    if response.status_code != 201:
        raise RuntimeError(f"rollout not created: {response.status_code} {response.text}")
    return str(response.json()["data"]["id"])


def plan(name: str, policy: str) -> str:
    """One wave of 100%, the bench firmware and version, and `policy`."""
    return (
        f"name: {name}\n"
        f"firmware: {{file: {FIRMWARE_FILE}, version: {VERSION}}}\n"
        "waves:\n  - percent: 100\n"
        f"policy: {policy}\n"
    )


async def wait_until(
    condition: Callable[[], Awaitable[bool]], timeout_s: float, interval_s: float = POLL_S
) -> float:
    """Poll `condition` until it holds; the time.time() at which it was seen to hold."""
    async with asyncio.timeout(timeout_s):
        while not await condition():  # noqa: ASYNC110 - polls state in Redis, not in this loop
            await asyncio.sleep(interval_s)
    return time.time()


async def counter(stores: Stores, rollout_id: str, name: str) -> int:
    """One of the rollout's counters, straight from Redis."""
    value = await stores.redis.hget(stores.keys.rollout_counts(rollout_id), name)
    return int(value or 0)


async def wait_count(
    stores: Stores, rollout_id: str, name: str, n: int, stall_s: float = STALL_S
) -> tuple[float, int]:
    """Poll a counter until it reaches `n`, or stops growing for `stall_s`.

    Returns (the time it reached `n`, or last grew; its value then).
    """
    last_value, last_change = -1, time.time()
    deadline = last_change + RUN_TIMEOUT_S
    while True:
        value, now = await counter(stores, rollout_id, name), time.time()
        if value != last_value:
            last_value, last_change = value, now
        if value >= n:
            return now, value
        if now - last_change > stall_s or now > deadline:
            return last_change, value
        await asyncio.sleep(POLL_S)


async def finish(service: Service, project_id: str, rollout_id: str, results: Results) -> None:
    """Until the engine has let go of the rollout (its devices free again); abort it if stuck."""
    stores = service.stores

    async def gone() -> bool:
        return rollout_id not in await stores.rollouts.active_ids()

    try:
        await wait_until(gone, STALL_S, 0.1)
    except TimeoutError:
        record = await stores.rollouts.get(rollout_id)
        state = record.state.value if record else "?"
        results.notes.append(f"rollout {rollout_id} stayed {state}; the bench aborted it")
        await service.client.post(
            f"/v2/projects/{project_id}/rollouts/{rollout_id}/abort",
            json={"reason": "the bench stopped waiting"},
        )
        await wait_until(gone, RUN_TIMEOUT_S, 0.1)


def lost(results: Results, run: str, counted: int, n: int) -> None:
    """Note results that were published but never counted."""
    if counted < n:
        results.notes.append(
            f"{run}: {n - counted} of {n} results were never counted (the rate is over the "
            f"{counted} that were); see the service log lines below"
        )


async def command_stats(redis: Redis) -> dict[str, int]:
    """Calls per Redis command so far (INFO commandstats)."""
    info: dict[str, Any] = await redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(stats["calls"]) for name, stats in info.items()}


def cpu_s() -> float:
    """CPU seconds this process (the service, the bench's client side) has used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- the runs ---------------------------------------------------------------------------------


async def run_interleaved(
    service: Service, fleet: FleetClient, project_id: str, n: int, results: Results, tokens: str
) -> None:
    """The fleet answers each command at once: dispatch and ingest at the same time."""
    stores = service.stores
    await fleet.call("expect", mode="reply", n=n, download=results.download, tokens=tokens)
    rollout_id = await start_rollout(service.client, project_id, plan("bench-at-once", "{}"))
    started = time.time()
    before = await command_stats(stores.redis)  # after creation: the engine only starts it later
    cpu_before = cpu_s()
    (succeeded_at, succeeded), seen = await asyncio.gather(
        wait_count(stores, rollout_id, SUCCEEDED, n),
        fleet.call("wait", timeout_s=RUN_TIMEOUT_S, stall_s=STALL_S),
    )
    results.cpu_busy["run 1, dispatch and ingest"] = (cpu_s() - cpu_before) / (
        max(succeeded_at, float(seen["last_command_at"])) - started
    )
    results.redis_calls["dispatch + ingest, per device"] = per_device(
        before, await command_stats(stores.redis), n
    )
    results.bursts["run 1 (answers at once)"] = bursts(seen["arrivals"])
    results.arrivals["run1"] = [t - started for t in seen["arrivals"]]
    received = int(seen["received"])
    results.dispatch = Rate(received, float(seen["last_command_at"]) - started)
    results.dispatch_first_command_s = float(seen["first_command_at"]) - started
    results.engine_bytes_per_command = int(seen["payload_bytes"]) / max(1, received)
    results.ingest_interleaved = Rate(succeeded, succeeded_at - float(seen["first_result_at"]))
    lost(results, "run 1 (answers at once)", succeeded, n)
    if received != n:
        results.notes.append(f"run 1: the fleet received {received} commands for {n} devices")
    if results.download:
        results.notes.append(
            f"--download: {seen['downloads']} downloads, {seen['download_errors']} failed"
        )
    await finish(service, project_id, rollout_id, results)


async def run_separate(
    service: Service,
    fleet: FleetClient,
    project_id: str,
    n: int,
    results: Results,
    measured: Round,
    label: str,
) -> None:
    """The fleet holds its answers until every command arrived, then publishes them at once."""
    stores = service.stores
    await fleet.call("expect", mode="hold", n=n)
    rollout_id = await start_rollout(service.client, project_id, plan("bench-held", "{}"))
    started = time.time()
    before = await command_stats(stores.redis)
    cpu_before = cpu_s()
    seen = await fleet.call("wait", timeout_s=RUN_TIMEOUT_S, stall_s=STALL_S)
    dispatched_at = float(seen["last_command_at"])
    results.cpu_busy[f"{label}, dispatch alone"] = (cpu_s() - cpu_before) / (time.time() - started)
    measured.dispatch_alone = Rate(int(seen["received"]), dispatched_at - started)
    results.bursts[f"{label} (answers held)"] = bursts(seen["arrivals"])
    results.arrivals[label] = [t - started for t in seen["arrivals"]]

    async def all_published() -> bool:
        return await stores.redis.scard(stores.keys.rollout_unpublished(rollout_id)) == 0

    with contextlib.suppress(TimeoutError):  # the engine's bookkeeping after the last publish
        await wait_until(all_published, STALL_S)
    middle = await command_stats(stores.redis)
    results.redis_calls["dispatch only, per device"] = per_device(before, middle, n)
    cpu_before, clock = cpu_s(), time.time()
    released = await fleet.call("release")
    succeeded_at, succeeded = await wait_count(stores, rollout_id, SUCCEEDED, n)
    burst_cpu_s = cpu_s() - cpu_before
    results.cpu_busy[f"{label}, ingest burst"] = burst_cpu_s / (succeeded_at - clock)
    measured.engine_cpu_us = burst_cpu_s / max(succeeded, 1) * 1e6
    measured.ingest_burst = Rate(succeeded, succeeded_at - float(released["first_result_at"]))
    lost(results, f"{label} (answers held)", succeeded, n)
    results.redis_calls["ingest only, per device"] = per_device(
        middle, await command_stats(stores.redis), n
    )
    await finish(service, project_id, rollout_id, results)


async def run_overshoot(
    service: Service, fleet: FleetClient, project_id: str, m: int, results: Results
) -> None:
    """Every device fails: how many commands still arrive after the threshold is crossed."""
    stores = service.stores
    await fleet.call(
        "expect",
        mode="fail",
        n=0,
        max_failure_rate=OVERSHOOT_MAX_FAILURE_RATE,
        min_devices=OVERSHOOT_MIN_DEVICES,
    )
    policy = (
        f"{{max_failure_rate: {OVERSHOOT_MAX_FAILURE_RATE:.0%}, "
        f"min_devices: {OVERSHOOT_MIN_DEVICES}, max_in_flight: {OVERSHOOT_MAX_IN_FLIGHT}, "
        "on_failure: halt}"
    )
    rollout_id = await start_rollout(service.client, project_id, plan("bench-overshoot", policy))

    async def stopped() -> bool:
        record = await stores.rollouts.get(rollout_id)
        return record is not None and record.state.value not in ("pending", "running")

    await wait_until(stopped, RUN_TIMEOUT_S)
    seen = await fleet.call("quiet", quiet_s=1.0, timeout_s=30)
    record = await stores.rollouts.get(rollout_id)
    results.overshoot_state = record.state.value if record else "?"
    results.overshoot_sent = int(seen["received"])
    if seen["crossed_at"]:
        results.overshoot = int(seen["received"]) - int(seen["received_at_crossing"])
    else:
        results.notes.append("overshoot run: the failures never crossed the threshold")


# --- the whole bench --------------------------------------------------------------------------


async def bench(
    redis_server: EmbeddedRedis, broker: EmbeddedBroker, work: Path, results: Results, rounds: int
) -> None:
    """aiomqtt and batched zmqtt once, the rounds (zmqtt baselines, then run 2), runs 1 and 3.

    Every raw baseline runs while the service is stopped and its MQTT session is gone, so
    the broker carries nothing else.
    """
    n = results.devices
    fleet = await FleetClient.start(broker.port)
    try:
        messages = raw.command_messages(n, f"http://127.0.0.1:{free_port()}")
        results.raw_bytes_per_command = sum(len(body) for _, body, _ in messages) / n
        results.aiomqtt_publish = await raw.aiomqtt_publish(
            "127.0.0.1", broker.port, fleet, messages
        )
        results.zmqtt_batched_publish = await raw.zmqtt_publish(
            broker.url, fleet, messages, batched=True
        )
        results.aiomqtt_receive, _ = await raw.aiomqtt_receive("127.0.0.1", broker.port, fleet, n)
        results.zmqtt_batched_receive, _ = await raw.zmqtt_receive(
            "127.0.0.1", broker.port, fleet, n, batched=True
        )

        async def zmqtt_baselines(measured: Round) -> None:
            measured.zmqtt_publish = await raw.zmqtt_publish(broker.url, fleet, messages)
            cpu_before = cpu_s()
            measured.zmqtt_receive, measured.result_publisher = await raw.zmqtt_receive(
                "127.0.0.1", broker.port, fleet, n
            )
            # Connecting and subscribing included: a few ms next to the receiving.
            measured.raw_cpu_us = (cpu_s() - cpu_before) / n * 1e6

        await engine_runs(redis_server, broker, work, fleet, results, rounds, zmqtt_baselines)
    finally:
        await fleet.stop()


async def engine_runs(
    redis_server: EmbeddedRedis,
    broker: EmbeddedBroker,
    work: Path,
    fleet: FleetClient,
    results: Results,
    rounds: int,
    baselines: Callable[[Round], Awaitable[None]],
) -> None:
    """The devices, then the service in this process for each round and for runs 1 and 3."""
    # JSON logs at info, as in production, into a file rather than over the table.
    configure_logging("json", "info")
    log_file = (work / "service.log").open("a")
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(log_file)
    redis = connect(redis_server.url)
    stores = Stores.build(redis, PREFIX)

    def settings() -> Settings:
        # A new instance id each time: a new MQTT session, the last one having been ended.
        return Settings(
            redis_url=redis_server.url,
            redis_prefix=PREFIX,
            mqtt_url=broker.url,
            mqtt_version=broker.mqtt_version,
            http_port=free_port(),
            data_dir=work / "data",
            log_format="json",
            instance_id=f"bench-{uuid.uuid4().hex[:8]}",
            role="all",
        )

    try:
        clock = time.time()
        admin_key, _ = await stores.api_keys.create("bench", frozenset({Scope.ADMIN}))
        main_project = await stores.projects.create("bench")
        overshoot_project = await stores.projects.create("bench-overshoot")
        tokens = await create_devices(stores, main_project.id, results.devices)
        await create_devices(stores, overshoot_project.id, results.overshoot_devices)
        results.setup_s["devices created through the store"] = time.time() - clock
        tokens_path = ""
        if results.download:
            tokens_path = str(work / "tokens.json")
            await asyncio.to_thread(Path(tokens_path).write_text, json.dumps(tokens))
        for number in range(1, rounds + 1):
            measured = Round()
            results.rounds.append(measured)
            await baselines(measured)
            service = await start_service(settings(), stores, admin_key)
            try:
                if number == 1:
                    for project in (main_project, overshoot_project):
                        await upload_firmware(service.client, project.id)
                clock = time.time()
                await run_separate(
                    service,
                    fleet,
                    main_project.id,
                    results.devices,
                    results,
                    measured,
                    f"run 2, round {number}",
                )
                results.setup_s[f"run 2, round {number}"] = time.time() - clock
            finally:
                await service.stop(drop_session=True)
        service = await start_service(settings(), stores, admin_key)
        try:
            clock = time.time()
            await run_interleaved(
                service, fleet, main_project.id, results.devices, results, tokens_path
            )
            results.setup_s["run 1 (answers at once)"] = time.time() - clock
            clock = time.time()
            await run_overshoot(
                service, fleet, overshoot_project.id, results.overshoot_devices, results
            )
            results.setup_s["run 3 (overshoot)"] = time.time() - clock
        finally:
            await service.stop(drop_session=True)
    finally:
        await redis.aclose()
        log_file.close()


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run the bench, print the table.

    Exit status 0 whatever the rates (a measurement, not a test); 1 when the bench itself broke.
    """
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=10_000, help="devices in the rollout")
    parser.add_argument("--quick", action="store_true", help="1,000 devices: a smoke run")
    parser.add_argument(
        "--overshoot-devices", type=int, default=None, help="devices in the overshoot run (2,000)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="rounds of the zmqtt baselines and run 2; the summary takes their medians (5)",
    )
    parser.add_argument(
        "--download", action="store_true", help="the fleet downloads the firmware before answering"
    )
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="an empty directory to keep the servers' data, the service log and arrivals.json in",
    )
    args = parser.parse_args(argv)
    devices = 1000 if args.quick else args.devices
    overshoot_devices = args.overshoot_devices or min(2000, devices)
    if devices < 1 or overshoot_devices <= OVERSHOOT_MIN_DEVICES:
        parser.error(
            f"--devices must be at least 1 and the overshoot run over {OVERSHOOT_MIN_DEVICES}"
        )
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    redis_binary = shutil.which("redis-server")
    if redis_binary is None or mosquitto_binary() is None:
        print("bench: redis-server and mosquitto are needed (make system-deps)", file=sys.stderr)
        return 2
    command = shlex.join(["python", "-m", "bench", *(argv if argv is not None else sys.argv[1:])])
    results = Results(devices=devices, overshoot_devices=overshoot_devices, download=args.download)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="ota-bench-") as tmp:
        work = Path(tmp)
        if args.keep is not None:
            work = args.keep.resolve()
            work.mkdir(parents=True, exist_ok=True)
        with (
            EmbeddedRedis(
                work / "redis", binary=redis_binary, appendonly=False
            ).start() as redis_server,
            EmbeddedBroker(work / "mqtt", kind="mosquitto").start() as broker,
        ):
            broke = False
            try:
                run_on_service_loop(bench(redis_server, broker, work, results, args.rounds))
            except Exception as exc:  # still print what was measured before it broke
                results.notes.append(f"the bench broke: {exc!r}")
                broke = True
            results.notes.extend(log_problems(work / "service.log"))
            if args.keep is not None:
                (work / "arrivals.json").write_text(json.dumps(results.arrivals))
    print(report(results, time.time() - started, command, redis_binary))
    return 1 if broke else 0
