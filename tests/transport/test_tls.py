"""Results in and commands out over `mqtts://`: a real mosquitto with a TLS listener.

The broker's certificate is self-signed for localhost; `SSL_CERT_FILE` makes it the trust
store that `mqtts://` uses (the system's, as in production).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest

from orchestrator.embedded import free_port, mosquitto_binary
from orchestrator.transport.mqtt import CommandTransport
from orchestrator.transport.results import ResultSubscriber
from orchestrator.transport.topics import result_topic
from tests.transport.test_results import Inbox, body

WAIT_S = 10.0


@dataclass(frozen=True)
class TlsBroker:
    port: int
    cert: Path

    @property
    def url(self) -> str:
        return f"mqtts://localhost:{self.port}"

    def client(self, **options: object) -> aiomqtt.Client:
        """A device's client over TLS, trusting the broker's certificate."""
        return aiomqtt.Client(
            "localhost",
            self.port,
            protocol=aiomqtt.ProtocolVersion.V5,
            tls_params=aiomqtt.TLSParameters(ca_certs=str(self.cert)),
            **options,  # type: ignore[arg-type]
        )


@pytest.fixture
def tls_broker(
    tmp_path: Path, certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> Iterator[TlsBroker]:
    binary = mosquitto_binary()
    assert binary is not None, "mosquitto is installed by make system-deps"
    cert, key = certificate
    port = free_port()
    config = tmp_path / "mosquitto.conf"
    lines = [
        f"listener {port} 127.0.0.1",
        f"certfile {cert}",
        f"keyfile {key}",
        "allow_anonymous true",
        "max_inflight_messages 1000",
    ]
    if os.geteuid() == 0:
        lines.append("user root")
    config.write_text("\n".join(lines) + "\n")
    log = tmp_path / "mosquitto.log"
    with log.open("wb") as stderr:
        broker = subprocess.Popen([binary, "-c", str(config)], stderr=stderr)
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert broker.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "mosquitto did not open its TLS listener"
                time.sleep(0.05)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        yield TlsBroker(port, cert)
    finally:
        broker.terminate()
        broker.wait(timeout=WAIT_S)


@pytest.fixture
async def commands(tls_broker: TlsBroker) -> AsyncIterator[CommandTransport]:
    transport = CommandTransport(tls_broker.url, client_id=f"test-{uuid.uuid4().hex[:8]}")
    await transport.start()
    yield transport
    await transport.stop()


async def test_results_arrive_over_tls(tls_broker: TlsBroker) -> None:
    inbox = Inbox()
    subscriber = ResultSubscriber(
        tls_broker.url,
        version="5.0",
        client_id=f"test-results-{uuid.uuid4().hex[:8]}",
        handler=inbox.handler,
    )
    await subscriber.start()
    try:
        device = f"dev-{uuid.uuid4().hex[:8]}"
        async with tls_broker.client() as client:
            for i in range(300):  # more than a batch: acknowledgements go out together
                await client.publish(result_topic(device, "reboot"), body(f"c-{i}"), qos=1)
        await inbox.wait_for(300)
    finally:
        await subscriber.stop()

    assert sorted(inbox.command_ids()) == sorted(f"c-{i}" for i in range(300))


async def test_commands_go_out_over_tls(tls_broker: TlsBroker, commands: CommandTransport) -> None:
    device = f"dev-{uuid.uuid4().hex[:8]}"
    async with tls_broker.client() as client:
        await client.subscribe(f"{device}/control/+", qos=2)
        assert await commands.wait_connected(WAIT_S)
        await commands.publish_command(device, "reboot", {"command_id": "c-1"})
        async with asyncio.timeout(WAIT_S):
            message = await anext(aiter(client.messages))

    assert str(message.topic) == f"{device}/control/reboot"
    assert json.loads(bytes(message.payload))["command_id"] == "c-1"
