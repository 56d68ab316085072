"""`ota simulate` as a user runs it: usage errors, a timed run, reuse, Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from orchestrator.cli import simulate
from orchestrator.embedded import EmbeddedBroker, free_port
from orchestrator.simulator import DeviceBook
from tests.conftest import Service

# The real `ota` entry point (its error printing included), with `simulate` registered.
OTA = """
from orchestrator import cli
from orchestrator.cli import simulate
if not any(command.name == "simulate" for command in cli.app.registered_commands):
    simulate.register(cli.app)
cli.main()
"""


def simulate_app() -> typer.Typer:
    app = typer.Typer()
    app.callback()(lambda: None)  # a group, so the verb is spelled out as in `ota simulate`
    simulate.register(app)
    return app


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--latency", "5..1"],
            "error: --latency must be MIN..MAX seconds with 0 <= MIN <= MAX, like 0.1..0.5, "
            "got '5..1'; write 1..5",
        ),
        (
            ["--fail-rate", "2"],
            "error: --fail-rate must be a fraction between 0 and 1, like 0.05 or 5%, got '2'",
        ),
        (["--offline", "half"], "error: --offline must be a fraction between 0 and 1"),
        (["--fail-version", "1.2.0"], "error: --fail-version must be VERSION=RATE"),
        (["--mqtt-url", "http://broker:1883"], "error: --mqtt-url 'http://broker:1883': MQTT"),
        (["--mqtt-url", "mqtt://broker:99999"], "error: --mqtt-url 'mqtt://broker:99999': Port"),
        (["--devices", "-1"], "error: --devices must be 0 or more, got -1"),
        (["--duration", "0"], "error: --duration must be a number of seconds above 0"),
        (["--mqtt-version", "4"], "error: --mqtt-version must be 5.0 or 3.1.1, got '4'"),
        (["--stall", "-5%"], "error: --stall must be a fraction between 0 and 1"),
        (["--stall-at", "100%"], "error: --stall-at must be below 1 (100%)"),
        (["--stall-for", "-1"], "error: --stall-for must be 0 or more seconds, like 90, got -1"),
    ],
)
def test_a_bad_option_is_one_line_naming_the_value_and_exit_2(
    args: list[str], expected: str, tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        simulate_app(), ["simulate", *args, "--state", str(tmp_path / "book.json")]
    )
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(expected)
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "book.json").exists()  # nothing was started


class Ota:
    """`ota simulate` in a child process, against the test's service and broker."""

    def __init__(self, service: Service, broker: EmbeddedBroker, book: Path) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("OTA_")}
        self.env.update(
            OTA_API_URL=service.base_url,
            OTA_API_KEY=service.admin_key,
            OTA_PROJECT=service.project_id,
            OTA_MQTT_URL=broker.url,
        )
        self.book = book

    async def start(self, *args: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            OTA,
            "simulate",
            "--state",
            str(self.book),
            "--json",
            *args,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

    async def run(self, *args: str) -> tuple[int, dict[str, Any], str]:
        """Exit code, final stats and stderr of a run (the service answers meanwhile)."""
        process = await self.start(*args)
        async with asyncio.timeout(60):
            stdout, stderr = await process.communicate()
        assert process.returncode is not None
        stats = json.loads(stdout) if process.returncode == 0 else {}
        return process.returncode, stats, stderr.decode()


@pytest.fixture
def ota(service: Service, mqtt_broker: EmbeddedBroker, tmp_path: Path) -> Ota:
    return Ota(service, mqtt_broker, tmp_path / "book.json")


async def test_a_timed_run_registers_devices_and_a_second_run_reuses_them(
    ota: Ota, service: Service
) -> None:
    code, stats, stderr = await ota.run(
        "--devices", "2", "--duration", "1", "--status-every", "0.3"
    )
    assert code == 0, stderr
    assert (stats["devices"], stats["connects"], stats["connected"]) == (2, 2, 0)
    assert "2/2 connected (0 offline)" in stderr  # the status lines
    first = [d.id for d in DeviceBook(ota.book).load(service.project_id)]
    assert len(first) == 2

    code, stats, stderr = await ota.run("--devices", "3", "--duration", "0.5")
    assert code == 0, stderr
    assert stats["devices"] == 3
    again = [d.id for d in DeviceBook(ota.book).load(service.project_id)]
    assert again[:2] == first
    assert len(again) == 3
    for device_id in again:
        assert await service.stores.devices.get(service.project_id, device_id) is not None


async def test_ctrl_c_stops_the_fleet_and_prints_the_stats(ota: Ota) -> None:
    process = await ota.start("--devices", "1", "--offline", "0%")
    assert process.stderr is not None
    async with asyncio.timeout(30):
        while b"simulated devices" not in await process.stderr.readline():
            pass
    process.send_signal(signal.SIGINT)
    async with asyncio.timeout(30):
        stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    assert json.loads(stdout)["connects"] == 1


async def test_an_unreachable_api_is_one_error_line_and_exit_1(ota: Ota) -> None:
    ota.env["OTA_API_URL"] = f"http://127.0.0.1:{free_port()}"
    code, _, stderr = await ota.run("--devices", "1", "--duration", "1")
    assert code == 1
    assert stderr.startswith("error: cannot reach the API at http://127.0.0.1:")
    assert "OTA_API_URL" in stderr
    assert "Traceback" not in stderr
