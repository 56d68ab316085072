"""Rollouts, hooks, notifications, the compaction of finished rollouts and project deletion
on a real three-node Redis Cluster.

Every key carries the prefix's hash tag (`{…}`), so each script and MULTI stays in one slot
and Cluster runs it; the cluster adds failover, not sharding of one installation.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from orchestrator.embedded import free_port
from orchestrator.settings import Settings
from tests.api.test_projects import (  # noqa: F401 - tests collected here again
    test_a_deletion_cut_short_refuses_new_things_and_a_repeated_delete_finishes_it,
)
from tests.e2e.test_hooks import (  # noqa: F401 - tests collected here again
    receiver,
    test_a_signed_delivery_starts_a_rollout_that_completes_and_a_repeat_starts_nothing,
    test_subscribers_get_one_signed_delivery_per_event_despite_failures,
)
from tests.e2e.test_rollouts import (  # noqa: F401 - tests collected here again
    test_a_bad_firmware_halts_in_the_canary,
    test_a_good_firmware_completes_on_every_device_with_one_command_id_each,
    test_rollback_reaches_exactly_the_devices_that_took_the_bad_firmware,
)
from tests.store.conftest import replica  # noqa: F401 - a fixture of the tests below
from tests.store.test_rollout_archive import (  # noqa: F401 - tests collected here again
    test_a_compaction_cut_short_reads_the_same_and_another_replica_finishes_it,
    test_compaction_keeps_every_read_and_drops_the_hashes_and_the_order_list,
)

NODES = 3


def _cluster_port() -> int:
    """A free port whose cluster bus port (10,000 higher, 65,535 at most) is free too."""
    while True:
        port = free_port()
        if port <= 55_535 and _free(port + 10_000):
            return port


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _until(cli: str, port: int, command: str, expected: str, timeout_s: float = 15.0) -> None:
    """Run a redis-cli command against the node until its answer contains `expected`."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = subprocess.run(
            [cli, "-p", str(port), *command.split()],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if expected in answer.stdout:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"node {port}: {command!r} never answered {expected!r}: {answer.stdout}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Three cluster-enabled redis-servers from the machine, every slot assigned."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    assert server, "redis-server is not installed; `make test` installs it"
    assert cli, "redis-cli comes with redis-server's package"
    root = tmp_path_factory.mktemp("cluster")
    ports = [_cluster_port() for _ in range(NODES)]
    processes = []
    try:
        for port in ports:
            node = root / str(port)
            node.mkdir()
            processes.append(
                subprocess.Popen(
                    [
                        server,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--dir",
                        str(node),
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(node / "nodes.conf"),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.STDOUT,
                )
            )
        for port in ports:
            _until(cli, port, "ping", "PONG")
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        for port in ports:
            _until(cli, port, "cluster info", "cluster_state:ok")
        yield "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(10)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Notifications retried fast, to the test's receiver on loopback (which must be allowed);
    the test prefix is hash-tagged already: one slot."""
    return settings.model_copy(update={"notify_retry_s": 0.05, "notify_allow_hosts": "127.0.0.1"})
