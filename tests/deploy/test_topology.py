"""The compose topology as plain processes on this machine: the file held to account.

redis-server with the compose file's command, Mosquitto with the shipped mosquitto.conf and
start.sh (dynamic security, the ota-service account), one `ota serve --role api` and two
`ota serve --role engine` processes with the environment the compose file gives them, its
host names and ports translated to free local ports. Then, as an operator would: the first key
and project with `ota keys create` / `ota projects create`, devices given their broker accounts
with add-device.sh, `ota simulate` as the fleet, and a rollout that must complete.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.embedded import free_port, mosquitto_binary
from tests.deploy import manifests
from tests.deploy.manifests import DEPLOY

OTA_SERVICES = ("api", "engine-1", "engine-2")
DEVICES = 4
START_TIMEOUT_S = 40.0
ROLLOUT_TIMEOUT_S = 40.0
STOP_TIMEOUT_S = 20.0
PLAN = """
name: compose-check-1.1.0
firmware: {file: fw_1.1.0.bin, version: 1.1.0}
waves:
  - {name: canary, devices: 1}
  - percent: 100
policy: {max_failure_rate: 5%, min_devices: 1, ack_timeout: 30s, device_timeout: 60s}
"""


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout_s} s")
        time.sleep(0.1)


def ota_binary() -> str:
    """The `ota` script of this environment (the image's ENTRYPOINT)."""
    beside = Path(sys.executable).parent / "ota"
    found = str(beside) if beside.exists() else shutil.which("ota")
    assert found, "the ota script is not installed; pip install -e ."
    return found


def dynsec_plugin() -> str:
    """The machine's Mosquitto dynamic-security plugin (the image has it in /usr/lib)."""
    found = sorted(glob.glob("/usr/lib/*/mosquitto_dynamic_security.so"))
    found += sorted(glob.glob("/usr/lib/mosquitto_dynamic_security.so"))
    if not found:
        pytest.fail("mosquitto_dynamic_security.so is not installed; install mosquitto")
    return found[0]


class Processes:
    """Child processes of the test, each in its own process group, stopped at the end."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Run `argv` with its output in `{directory}/{name}.log`."""
        log = (self.directory / f"{name}.log").open("wb")
        process = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.started.append((name, process, log))
        return process

    def log(self, name: str) -> str:
        """What a process has printed so far."""
        return (self.directory / f"{name}.log").read_text(errors="replace")

    def alive(self, name: str) -> bool:
        """True while the named process runs (fails the test with its log when it stopped)."""
        [process] = [p for n, p, _ in self.started if n == name]
        if process.poll() is not None:
            pytest.fail(f"{name} exited with {process.returncode}:\n{self.log(name)[-3000:]}")
        return True

    def stop_all(self) -> None:
        """SIGTERM to every group, then SIGKILL to whatever is left after STOP_TIMEOUT_S."""
        for _, process, _ in self.started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for _, process, log in reversed(self.started):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            log.close()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    made = Processes(tmp_path)
    try:
        yield made
    finally:
        made.stop_all()


def base_env() -> dict[str, str]:
    """This process's environment without any OTA_ setting (only the compose file's count)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("OTA_")}


def start_redis(processes: Processes, tmp_path: Path) -> str:
    """redis-server with the compose file's arguments, on a free local port; its URL."""
    command = manifests.compose()["services"]["redis"]["command"]
    binary = shutil.which(command[0])
    assert binary, "redis-server is not installed; run `make system-deps`"
    port = free_port()
    data = tmp_path / "redis-data"
    data.mkdir()
    local = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--daemonize", "no"]
    processes.start("redis", [binary, *command[1:], *local], base_env())
    client = redis.Redis(port=port, socket_timeout=2)

    def answers() -> bool:
        processes.alive("redis")
        with contextlib.suppress(redis.RedisError):
            return bool(client.ping())
        return False

    wait_until(answers, "redis-server answering", START_TIMEOUT_S)
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    client.close()
    return f"redis://127.0.0.1:{port}"


def mosquitto_conf(tmp_path: Path, port: int) -> Path:
    """The shipped mosquitto.conf with the container's paths and port made local."""
    data = tmp_path / "mosquitto-data"
    data.mkdir()
    lines = []
    for raw in manifests.MOSQUITTO_CONF.read_text().splitlines():
        line = raw.replace("/mosquitto/data/", f"{data}/")
        if line.startswith("listener 1883"):
            line = f"listener {port} 127.0.0.1"
        elif line.startswith("plugin /"):
            line = f"plugin {dynsec_plugin()}"
        lines.append(line)
    if os.geteuid() == 0:  # else Mosquitto switches to user `mosquitto`, who can't write here
        lines.append("user root")
    path = tmp_path / "mosquitto.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


def start_mosquitto(processes: Processes, tmp_path: Path, password: str) -> int:
    """Mosquitto through the shipped start.sh, healthy by the compose healthcheck; its port."""
    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed; run `make system-deps`")
    spec = manifests.compose()["services"]["mosquitto"]
    port = free_port()
    env = base_env()
    env["PATH"] = f"{env.get('PATH', '')}:/usr/sbin"
    for name, value in spec["environment"].items():
        env[name] = manifests.interpolate(str(value), {"MQTT_SERVICE_PASSWORD": password})
    env["MOSQUITTO_CONF"] = str(mosquitto_conf(tmp_path, port))
    script = DEPLOY / "mosquitto" / Path(spec["command"][-1]).name
    processes.start("mosquitto", ["sh", str(script)], env)
    kind, check = spec["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    check = manifests.interpolate(check, {}).replace("-p 1883", f"-p {port}")

    def healthy() -> bool:
        processes.alive("mosquitto")
        done = subprocess.run(["sh", "-c", check], env=env, capture_output=True, check=False)
        return done.returncode == 0

    wait_until(healthy, "mosquitto passing its compose healthcheck", START_TIMEOUT_S)
    return port


def service_env(name: str, hosts: dict[str, str], password: str, data: Path) -> dict[str, str]:
    """The environment compose gives service `name`, with its hosts and ports made local."""
    spec = manifests.compose()["services"][name]
    env = base_env()
    for key, value in spec["environment"].items():
        text = manifests.interpolate(str(value), {"MQTT_SERVICE_PASSWORD": password})
        for compose_host, local in hosts.items():
            text = text.replace(compose_host, local)
        env[key] = text
    # What the image's ENV and the port mapping give the container, made local.
    env.update(
        OTA_HTTP_HOST="127.0.0.1",
        OTA_HTTP_PORT=hosts[f"{name}:{env['OTA_HTTP_PORT']}"].rsplit(":", 1)[1],
        OTA_DATA_DIR=str(data / name),
        OTA_LOG_FORMAT="json",
    )
    return env


def ready(base_url: str) -> bool:
    """True when GET /readyz answers 200."""
    try:
        return httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def commands_sent(base_url: str) -> float:
    """The replica's ota_commands_sent_total, all commands."""
    text = httpx.get(f"{base_url}/metrics", timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "ota_commands_sent_total"
    )


def ota(args: list[str], env: dict[str, str]) -> str:
    """Run an `ota` verb; its stdout, stripped (fails the test on a non-zero exit)."""
    done = subprocess.run(
        [ota_binary(), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"ota {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout.strip()


def add_device(device: dict[str, Any], mqtt_port: int, password: str) -> None:
    """Give a device its broker account with the shipped add-device.sh."""
    env = {**base_env(), "MQTT_HOST": "127.0.0.1", "MQTT_PORT": str(mqtt_port)}
    env["MQTT_SERVICE_PASSWORD"] = password
    script = DEPLOY / "mosquitto" / "add-device.sh"
    done = subprocess.run(
        ["sh", str(script), device["id"], device["token"]],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_compose_topology_completes_a_rollout_as_local_processes(
    processes: Processes, tmp_path: Path
) -> None:
    password = uuid.uuid4().hex
    redis_url = start_redis(processes, tmp_path)
    mqtt_port = start_mosquitto(processes, tmp_path, password)
    ports = {name: free_port() for name in OTA_SERVICES}
    hosts = {
        "redis:6379": redis_url.removeprefix("redis://"),
        "mosquitto:1883": f"127.0.0.1:{mqtt_port}",
        "localhost:8080": f"127.0.0.1:{ports['api']}",  # the api's published port
        **{f"{name}:8080": f"127.0.0.1:{port}" for name, port in ports.items()},
    }
    envs = {name: service_env(name, hosts, password, tmp_path) for name in OTA_SERVICES}
    urls = {name: f"http://127.0.0.1:{ports[name]}" for name in OTA_SERVICES}
    services = manifests.compose()["services"]
    for name in OTA_SERVICES:
        processes.start(name, [ota_binary(), *services[name]["command"]], envs[name])

    def replica_ready(name: str) -> bool:
        return processes.alive(name) and ready(urls[name])

    for name in OTA_SERVICES:
        wait_until(partial(replica_ready, name), f"{name} answering /readyz", START_TIMEOUT_S)

    # The first key and project, offline against the same Redis, as deploy/README.md says.
    api_env = envs["api"]
    admin_key = ota(["keys", "create", "--name", "admin", "--scope", "admin"], api_env)
    project_id = ota(["projects", "create", "--name", "fleet"], api_env)
    assert admin_key.startswith("QB_")

    headers = {"Authorization": f"Bearer {admin_key}"}
    with httpx.Client(base_url=urls["api"], headers=headers, timeout=30) as api:
        devices = []
        for number in range(DEVICES):
            response = api.post(
                f"/v2/projects/{project_id}/devices",
                json={"name": f"sim-{number:05d}", "source": "mqtt"},
            )
            assert response.status_code == 201, response.text
            metadata = response.json()["data"]["metadata"]
            devices.append({"id": metadata["device_id"], "token": metadata["device_token"]})
        for device in devices:
            add_device(device, mqtt_port, password)
        book = tmp_path / "devices.json"
        book.write_text(json.dumps({project_id: devices}))
        firmware = os.urandom(50_000)
        uploaded = api.post(
            f"/v2/projects/{project_id}/files",
            files={"file": ("fw_1.1.0.bin", firmware, "application/octet-stream")},
            data={"type": "firmware"},
        )
        assert uploaded.status_code == 201, uploaded.text

        simulate_env = {**base_env(), "OTA_API_KEY": admin_key}
        processes.start(
            "simulate",
            [
                ota_binary(),
                *("simulate", "--devices", str(DEVICES), "--state", str(book)),
                *("--mqtt-url", f"mqtt://127.0.0.1:{mqtt_port}", "--api-url", urls["api"]),
                *("--project", project_id, "--duration", "120", "--status-every", "1"),
            ],
            simulate_env,
        )
        wait_until(
            lambda: (
                processes.alive("simulate")
                and f"{DEVICES}/{DEVICES} connected" in processes.log("simulate")
            ),
            "every simulated device connecting with its own broker account",
            START_TIMEOUT_S,
        )

        created = api.post(
            f"/v2/projects/{project_id}/rollouts",
            content=PLAN,
            headers={"Content-Type": "application/yaml"},
        )
        assert created.status_code == 201, created.text
        rollout_url = f"/v2/projects/{project_id}/rollouts/{created.json()['data']['id']}"
        seen: dict[str, Any] = {}

        def finished() -> bool:
            seen.update(api.get(rollout_url).json()["data"])
            return seen["state"] not in ("pending", "running")

        wait_until(finished, "the rollout finishing", ROLLOUT_TIMEOUT_S)
        assert seen["state"] == "completed", seen
        assert seen["counts"]["succeeded"] == DEVICES

    # The engine replicas dispatched; the API replica published nothing of the rollout.
    assert sum(commands_sent(urls[name]) for name in ("engine-1", "engine-2")) == DEVICES
    assert commands_sent(urls["api"]) == 0
