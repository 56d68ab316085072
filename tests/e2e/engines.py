"""`ota serve --role engine` child processes for the crash and replica tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.embedded import free_port
from tests.conftest import Service, wait_for

ENGINE_READY_TIMEOUT_S = 30.0
ENGINE_EXIT_TIMEOUT_S = 30.0


def _open_log(path: Path) -> IO[bytes]:
    return path.open("wb")


@dataclass
class EngineProcess:
    """One `ota serve --role engine` child process."""

    instance_id: str
    process: asyncio.subprocess.Process
    base_url: str
    log_path: Path
    log_file: IO[bytes]

    def log_tail(self, lines: int = 30) -> str:
        """The end of its log, for a failure message."""
        self.log_file.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def log_events(self) -> list[dict[str, Any]]:
        """Its JSON log lines."""
        self.log_file.flush()
        events = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    events.append(event)
        return events

    async def results_handled(self) -> int:
        """How many device results this process handled (its ota_command_results_total)."""
        async with httpx.AsyncClient(base_url=self.base_url, timeout=10) as client:
            response = await client.get("/metrics")
        assert response.status_code == 200, response.text
        return int(
            sum(
                sample.value
                for family in text_string_to_metric_families(response.text)
                for sample in family.samples
                if sample.name == "ota_command_results_total"
            )
        )


class Engines:
    """Starts engine processes for one test; kills whatever is left at teardown."""

    def __init__(self, service: Service, data_dir: Path) -> None:
        self.service = service
        self.data_dir = data_dir
        self.started: list[EngineProcess] = []

    def env(self, instance_id: str, port: int) -> dict[str, str]:
        """The environment of an `ota` process of this test as replica `instance_id`."""
        settings = self.service.settings
        env = {name: value for name, value in os.environ.items() if not name.startswith("OTA_")}
        env.update(
            OTA_REDIS_URL=settings.redis_url,
            OTA_REDIS_PREFIX=settings.redis_prefix,
            OTA_MQTT_URL=settings.mqtt_url,
            OTA_MQTT_VERSION=settings.mqtt_version,
            OTA_HTTP_PORT=str(port),
            OTA_DATA_DIR=str(self.data_dir / instance_id),
            OTA_PUBLIC_URL=self.service.base_url,
            OTA_INSTANCE_ID=instance_id,
            OTA_LOG_FORMAT="json",
        )
        return env

    async def start(self, instance_id: str) -> EngineProcess:
        """Start an engine with this instance id (its MQTT session and lease owner name)."""
        port = free_port()
        log_path = self.data_dir / f"{instance_id}-{len(self.started)}.log"
        log_file = _open_log(log_path)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "orchestrator",
            "serve",
            "--role",
            "engine",
            env=self.env(instance_id, port),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
        )
        engine = EngineProcess(instance_id, process, f"http://127.0.0.1:{port}", log_path, log_file)
        self.started.append(engine)
        async with httpx.AsyncClient(base_url=engine.base_url, timeout=5) as client:

            async def ready() -> bool:
                if process.returncode is not None:
                    pytest.fail(f"engine {instance_id} exited early:\n{engine.log_tail()}")
                try:
                    return (await client.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            try:
                await wait_for(ready, timeout_s=ENGINE_READY_TIMEOUT_S, interval_s=0.1)
            except TimeoutError:
                pytest.fail(f"engine {instance_id} never became ready:\n{engine.log_tail()}")
        return engine

    async def kill(self, engine: EngineProcess) -> None:
        """kill -9: no shutdown of any kind."""
        if engine.process.returncode is None:
            engine.process.send_signal(signal.SIGKILL)
        await asyncio.wait_for(engine.process.wait(), ENGINE_EXIT_TIMEOUT_S)

    async def terminate(self, engine: EngineProcess) -> int:
        """SIGTERM: an orderly stop; its exit code."""
        engine.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(engine.process.wait(), ENGINE_EXIT_TIMEOUT_S)
        except TimeoutError:
            pytest.fail(f"engine {engine.instance_id} ignored SIGTERM:\n{engine.log_tail()}")

    async def close(self) -> None:
        for engine in self.started:
            with contextlib.suppress(ProcessLookupError):
                if engine.process.returncode is None:
                    engine.process.send_signal(signal.SIGKILL)
            await asyncio.wait_for(engine.process.wait(), ENGINE_EXIT_TIMEOUT_S)
            engine.log_file.close()
