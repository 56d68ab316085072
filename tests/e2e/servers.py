"""Servers a test stops and starts again on the same port, their data kept."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from orchestrator.embedded import free_port


@dataclass
class RestartableRedis:
    """A redis-server on a fixed port that a test stops and starts again, data kept."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed; `make test` installs it"
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.data_dir),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        try:
            for _ in range(300):
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.BusyLoadingError):
                    pass
                subprocess.run(["sleep", "0.05"], check=True)
            pytest.fail(f"redis-server on {self.port} never answered")
        finally:
            client.close()

    def restart(self) -> None:
        """Stop in order (the AOF is complete) and start again on the same port."""
        self.stop()
        self.start()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()  # SIGTERM: the append-only file is complete
            self.process.wait(10)
            self.process = None


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestartableRedis]:
    server = RestartableRedis(tmp_path_factory.mktemp("outage-redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def redis_url(own_redis: RestartableRedis) -> str:
    """Every part of the service on the restartable Redis."""
    return own_redis.url
