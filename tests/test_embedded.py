"""Embedded Redis and MQTT brokers: real processes on free ports, started and stopped cleanly."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
import redis

from orchestrator import embedded
from orchestrator.embedded import (
    EmbeddedBroker,
    EmbeddedError,
    EmbeddedRedis,
)

WELL_KNOWN_PORTS = {6379, 1883}


def _alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (exited, not yet reaped by a container's init) is dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_dead(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path / "redis").start() as server:
        yield server


async def _round_trip(broker: EmbeddedBroker, protocol: aiomqtt.ProtocolVersion, qos: int) -> None:
    """Subscribe, publish to the same topic and wait for the message to come back."""
    topic = f"test/{os.getpid()}/{qos}"
    async with aiomqtt.Client(broker.host, broker.port, protocol=protocol) as client:
        await client.subscribe(topic, qos=qos)
        await client.publish(topic, b"hello", qos=qos)
        async with asyncio.timeout(5):
            async for message in client.messages:
                assert message.topic.value == topic
                assert message.payload == b"hello"
                assert message.qos == qos
                break


def test_redis_starts_on_a_free_port_and_answers_ping_set_get(redis_server: EmbeddedRedis) -> None:
    assert redis_server.port not in WELL_KNOWN_PORTS
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert redis_server.owned
    with redis.Redis.from_url(redis_server.url) as client:
        assert client.ping()
        client.set("greeting", "hi")
        assert client.get("greeting") == b"hi"


def test_redis_data_survives_stop_and_fresh_start_with_aof(tmp_path: Path) -> None:
    data_dir = tmp_path / "redis"
    with EmbeddedRedis(data_dir).start() as first, redis.Redis.from_url(first.url) as client:
        client.set("kept", "yes")
    with EmbeddedRedis(data_dir).start() as second, redis.Redis.from_url(second.url) as client:
        assert client.get("kept") == b"yes"
    assert (data_dir / "appendonly.aof").exists()


def test_second_redis_on_same_data_dir_attaches_and_its_stop_leaves_first_running(
    redis_server: EmbeddedRedis,
) -> None:
    second = EmbeddedRedis(redis_server.data_dir).start()
    assert not second.owned
    assert second.url == redis_server.url
    assert second.pid == redis_server.pid
    second.stop()
    assert redis_server.pid is not None
    assert _alive(redis_server.pid)
    with redis.Redis.from_url(redis_server.url) as client:
        assert client.ping()


def test_redis_stop_leaves_no_process_and_is_idempotent(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis").start()
    pid = server.pid
    assert pid is not None
    server.stop()
    server.stop()
    assert not _alive(pid)
    assert not server.state_path.exists()
    with pytest.raises(EmbeddedError, match="not running"):
        _ = server.url


def test_redis_retries_on_another_port_when_its_port_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        real_free_port = embedded.free_port
        # The first pick loses the race to another listener, as happens between free_port()
        # and the server's bind(); later picks are real free ports.
        monkeypatch.setattr(
            embedded, "free_port", lambda host: next(ports, None) or real_free_port(host)
        )
        with EmbeddedRedis(tmp_path / "redis").start() as server:
            assert server.port != taken
            assert "Address already in use" in server.log_path.read_text()


def test_redis_child_dies_with_its_parent(tmp_path: Path) -> None:
    script = (
        "import sys, time; from pathlib import Path; "
        "from orchestrator.embedded import EmbeddedRedis; "
        "print(EmbeddedRedis(Path(sys.argv[1])).start().pid, flush=True); time.sleep(60)"
    )
    # The package is not installed in the venv: let the child import it from this checkout.
    repo = str(Path(__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])),
    }
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "redis")],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert parent.stdout is not None
        redis_pid = int(parent.stdout.readline())
        assert _alive(redis_pid)
        parent.kill()
        parent.wait()
        assert _wait_dead(redis_pid), f"redis-server {redis_pid} outlived its killed parent"
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()


def test_missing_redis_binary_raises_readable_embedded_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "redis-server"
    with pytest.raises(EmbeddedError, match=r"does not exist.*pass the path") as caught:
        EmbeddedRedis(tmp_path / "redis", binary=str(missing)).start()
    assert str(missing) in str(caught.value)


async def test_mosquitto_broker_round_trips_a_qos2_message_over_mqtt5(tmp_path: Path) -> None:
    with EmbeddedBroker(tmp_path / "mqtt").start() as broker:
        assert broker.kind == "mosquitto"
        assert broker.mqtt_version == "5.0"
        assert broker.port not in WELL_KNOWN_PORTS
        assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
        await _round_trip(broker, aiomqtt.ProtocolVersion.V5, qos=2)
        pid = broker.pid
    assert pid is not None
    assert not _alive(pid)


async def test_amqtt_broker_round_trips_a_qos1_message_over_mqtt311(tmp_path: Path) -> None:
    with EmbeddedBroker(tmp_path / "mqtt", kind="amqtt").start() as broker:
        assert broker.kind == "amqtt"
        assert broker.mqtt_version == "3.1.1"
        assert broker.port not in WELL_KNOWN_PORTS
        await _round_trip(broker, aiomqtt.ProtocolVersion.V311, qos=1)
        pid = broker.pid
    assert pid is not None
    assert not _alive(pid)
