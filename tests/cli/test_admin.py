"""`ota keys create`, `ota projects create` and `ota serve`, run as a user runs them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from orchestrator.embedded import free_port
from orchestrator.settings import Settings
from orchestrator.store import Stores
from tests.conftest import wait_for

OTA = [sys.executable, "-m", "orchestrator"]


def run_ota(
    *args: str, env: dict[str, str], timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `ota ARGS` with only the given OTA_ variables set."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTA_")}
    return subprocess.run(
        [*OTA, *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


@pytest.fixture
def redis_env(settings: Settings) -> dict[str, str]:
    """Point the CLI at the test Redis and key prefix."""
    return {"OTA_REDIS_URL": settings.redis_url, "OTA_REDIS_PREFIX": settings.redis_prefix}


async def test_keys_create_prints_only_a_working_key(
    redis_env: dict[str, str], stores: Stores
) -> None:
    result = run_ota(
        "keys",
        "create",
        "--name",
        "ci",
        "--scope",
        "devices:read",
        "--scope",
        "send-commands",
        env=redis_env,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("QB_")
    principal = await stores.api_keys.authenticate(lines[0])
    assert principal is not None
    assert {s.value for s in principal.scopes} == {"devices:read", "send-commands"}


async def test_keys_create_limited_to_a_project(redis_env: dict[str, str], stores: Stores) -> None:
    project = await stores.projects.create("limited")
    result = run_ota(
        "keys", "create", "--name", "p", "--scope", "admin", "--project", project.id, env=redis_env
    )
    assert result.returncode == 0, result.stderr
    principal = await stores.api_keys.authenticate(result.stdout.strip())
    assert principal is not None
    assert principal.projects == frozenset({project.id})


def test_keys_create_with_an_unknown_project_fails_in_one_line(redis_env: dict[str, str]) -> None:
    missing = str(uuid.uuid4())
    result = run_ota(
        "keys", "create", "--name", "p", "--scope", "admin", "--project", missing, env=redis_env
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert (
        result.stderr.strip()
        == f"error: project {missing} not found; create it with ota projects create"
    )


def test_keys_create_with_an_unknown_scope_is_a_usage_error(redis_env: dict[str, str]) -> None:
    result = run_ota("keys", "create", "--name", "x", "--scope", "root", env=redis_env)
    assert result.returncode == 2
    assert "unknown scope 'root'" in result.stderr
    assert "devices:read" in result.stderr  # names the valid ones
    assert "Traceback" not in result.stderr


async def test_projects_create_prints_only_the_id(
    redis_env: dict[str, str], stores: Stores
) -> None:
    result = run_ota("projects", "create", "--name", "fleet", env=redis_env)
    assert result.returncode == 0, result.stderr
    project_id = result.stdout.strip()
    assert str(uuid.UUID(project_id)) == project_id
    assert result.stdout.count("\n") == 1
    project = await stores.projects.get(project_id)
    assert project is not None
    assert project.name == "fleet"


async def test_projects_create_takes_a_description_and_tags(
    redis_env: dict[str, str], stores: Stores
) -> None:
    result = run_ota(
        "projects",
        "create",
        "--name",
        "fleet",
        "--description",
        "Production fleet",
        "--tag",
        "production",
        "--tag",
        "eu_west",
        env=redis_env,
    )
    assert result.returncode == 0, result.stderr
    project = await stores.projects.get(result.stdout.strip())
    assert project is not None
    assert (project.description, project.tags) == ("Production fleet", ["production", "eu_west"])


def test_projects_create_refuses_a_bad_tag_naming_it(redis_env: dict[str, str]) -> None:
    result = run_ota("projects", "create", "--name", "x", "--tag", "a b", env=redis_env)
    assert result.returncode != 0
    assert "'a b'" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_setting_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    result = run_ota("projects", "create", "--name", "x", env={"OTA_REDIS_URL": "http://nowhere"})
    assert result.returncode == 2
    assert result.stderr.startswith("error: OTA_REDIS_URL:")
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_unreachable_redis_is_one_line(tmp_path: Path) -> None:
    port = free_port()
    result = run_ota(
        "projects", "create", "--name", "x", env={"OTA_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    )
    assert result.returncode == 1
    assert "Redis is unreachable" in result.stderr
    assert "OTA_REDIS_URL" in result.stderr
    assert "Traceback" not in result.stderr


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _children(pid: int) -> list[int]:
    """Live child processes of `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def test_offline_keys_create_on_embedded_redis_leaves_nothing_running(tmp_path: Path) -> None:
    env = {"OTA_DATA_DIR": str(tmp_path / "data")}
    first = run_ota("projects", "create", "--name", "a", env=env)
    assert first.returncode == 0, first.stderr
    assert not (tmp_path / "data" / "redis" / "embedded.json").exists()
    # The project survives in the embedded Redis's append-only file: a key can be limited to it.
    second = run_ota(
        "keys",
        "create",
        "--name",
        "k",
        "--scope",
        "admin",
        "--project",
        first.stdout.strip(),
        env=env,
    )
    assert second.returncode == 0, second.stderr


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
    """`ota serve` with nothing configured but a data dir and a port."""
    port = free_port()
    data_dir = tmp_path / "data"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTA_")}
    process = subprocess.Popen(
        [*OTA, "serve"],
        env={**clean, "OTA_DATA_DIR": str(data_dir), "OTA_HTTP_PORT": str(port)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process, f"http://127.0.0.1:{port}", data_dir
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


async def _ready(url: str) -> bool:
    try:
        async with httpx.AsyncClient() as client:
            return (await client.get(f"{url}/readyz")).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
async def test_serve_on_embedded_defaults_starts_works_and_stops_cleanly(
    served: tuple[subprocess.Popen[str], str, Path], stop_signal: signal.Signals
) -> None:
    process, url, data_dir = served
    await wait_for(lambda: _ready(url), timeout_s=30, interval_s=0.1)
    children = _children(process.pid)
    assert len(children) == 2  # redis-server and the broker
    state = json.loads((data_dir / "redis" / "embedded.json").read_text())
    assert state["pid"] in children
    assert state["port"] != 6379

    credentials = dict(
        line.removeprefix("export ").split("=", 1)
        for line in (data_dir / "credentials.env").read_text().splitlines()
    )
    assert oct((data_dir / "credentials.env").stat().st_mode & 0o777) == "0o600"
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.post(
            f"/v2/projects/{credentials['OTA_PROJECT']}/devices",
            headers={"Authorization": f"Bearer {credentials['OTA_API_KEY']}"},
            json={"name": "d", "source": "mqtt"},
        )
    assert response.status_code == 201, response.text

    process.send_signal(stop_signal)
    await asyncio.to_thread(process.wait, 30)

    async def children_gone() -> bool:
        return not any(_alive(pid) for pid in children)

    await wait_for(children_gone, timeout_s=10)
    assert not (data_dir / "redis" / "embedded.json").exists()


@pytest.mark.parametrize(
    "variable", ["OTA_DOWNLOAD_KEY_TTL", "OTA_MAX_FILE_SIZE", "OTA_ROLLOUT_RETENTION"]
)
def test_a_bad_setting_named_otherwise_inside_is_named_by_its_variable(variable: str) -> None:
    result = run_ota("projects", "create", "--name", "x", env={variable: "abc"})
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {variable}:"), result.stderr
