"""BatchedWriteTransport: a turn's writes leave as one, in order; failures as zmqtt means them.

The peer is a real TCP (or TLS) server on a free local port; the transport is the one the
result subscriber gives zmqtt (tests/transport/test_results.py runs it against mosquitto).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import pytest
from zmqtt.errors import MQTTDisconnectedError

from orchestrator.embedded import EmbeddedBroker
from orchestrator.transport.batched import BatchedWriteTransport, open_batched
from orchestrator.transport.mqtt import CommandTransport

WAIT_S = 10.0


@dataclass
class Peer:
    """A server that keeps its connections, reading only when told to."""

    server: asyncio.Server | None = None
    accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = field(
        default_factory=asyncio.Queue
    )
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def accept(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with asyncio.timeout(WAIT_S):
            return await self.accepted.get()


async def serve(tls: ssl.SSLContext | None = None) -> Peer:
    peer = Peer()

    async def keep(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer.writers.append(writer)
        await peer.accepted.put((reader, writer))

    peer.server = await asyncio.start_server(keep, "127.0.0.1", 0, ssl=tls)
    return peer


async def shut(peer: Peer) -> None:
    """Close the server and every connection it took."""
    assert peer.server is not None
    peer.server.close()
    for writer in peer.writers:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    served = await serve()
    yield served
    await shut(served)


async def connected(
    peer: Peer, **options: int
) -> tuple[BatchedWriteTransport, asyncio.StreamReader]:
    """A transport to `peer`, and the peer's end of the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", peer.port)
    far_reader, _ = await peer.accept()
    return BatchedWriteTransport(reader, writer, **options), far_reader


async def test_the_writes_of_one_turn_leave_in_one_send_and_in_order(peer: Peer) -> None:
    transport, far = await connected(peer)
    sends: list[bytes] = []
    stream_write = transport._writer.write

    def recording(data: bytes | bytearray | memoryview) -> None:
        sends.append(bytes(data))
        stream_write(data)

    transport._writer.write = recording  # type: ignore[method-assign]
    for packet in (b"\x40\x02\x00\x01", b"\x40\x02\x00\x02", b"\x40\x02\x00\x03"):
        await transport.write(packet)
    assert sends == []  # nothing goes out before the loop turns

    async with asyncio.timeout(WAIT_S):
        received = await far.readexactly(12)

    assert sends == [b"\x40\x02\x00\x01\x40\x02\x00\x02\x40\x02\x00\x03"]
    assert received == sends[0]
    await transport.close()


async def test_close_sends_what_is_queued_first(peer: Peer) -> None:
    transport, far = await connected(peer)
    await transport.write(b"\xe0\x00")  # DISCONNECT, as zmqtt writes it before closing

    await transport.close()

    async with asyncio.timeout(WAIT_S):
        assert await far.read() == b"\xe0\x00"  # then end of stream
    assert not transport.is_connected
    with pytest.raises(MQTTDisconnectedError):
        await transport.write(b"\xc0\x00")


async def test_reads_take_what_is_there_and_a_closed_peer_raises(peer: Peer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", peer.port)
    _, far_writer = await peer.accept()
    transport = BatchedWriteTransport(reader, writer)
    far_writer.write(b"x" * 10_000)
    await far_writer.drain()

    got = b""
    async with asyncio.timeout(WAIT_S):
        while len(got) < 10_000:
            got += await transport.read(4096)  # zmqtt asks for 4096; more may come at once
    far_writer.close()
    await far_writer.wait_closed()

    assert got == b"x" * 10_000
    with pytest.raises(MQTTDisconnectedError, match="closed by remote"):
        async with asyncio.timeout(WAIT_S):
            await transport.read(4096)
    assert not transport.is_connected
    await transport.close()


async def test_a_write_waits_while_the_peer_takes_nothing(peer: Peer) -> None:
    transport, far = await connected(peer, high_water_bytes=64 * 1024)
    chunk = b"p" * (256 * 1024)
    written = 0
    blocked: asyncio.Task[None] | None = None
    # The socket's own buffers fill first; past them, the stream holds the rest and waits.
    for _ in range(512):
        blocked = asyncio.create_task(transport.write(chunk))
        await asyncio.sleep(0.02)
        if not blocked.done():
            break
        written += len(chunk)
    assert blocked is not None
    assert not blocked.done(), "128 MiB went out with nobody reading"

    async def drain_peer() -> int:
        taken = 0
        while taken < written + len(chunk):
            taken += len(await far.read(1 << 20))
        return taken

    reading = asyncio.create_task(drain_peer())
    async with asyncio.timeout(WAIT_S):
        await blocked
        assert await reading == written + len(chunk)
    await transport.close()


async def test_open_batched_speaks_tls_with_the_context_it_is_given(
    certificate: tuple[Path, Path],
) -> None:
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    peer = await serve(server_context)
    try:
        client_context = ssl.create_default_context(cafile=str(cert))
        client_context.check_hostname = False  # the server listens on 127.0.0.1
        transport = await open_batched("127.0.0.1", peer.port, client_context)
        far_reader, far_writer = await peer.accept()
        await transport.write(b"\x10\x00")
        async with asyncio.timeout(WAIT_S):
            assert await far_reader.readexactly(2) == b"\x10\x00"
            far_writer.write(b"\x20\x00")
            assert await transport.read(4096) == b"\x20\x00"
        await transport.close()
    finally:
        await shut(peer)


async def test_open_batched_without_tls_is_plain_tcp(peer: Peer) -> None:
    transport = await open_batched("127.0.0.1", peer.port, None)
    far_reader, _ = await peer.accept()
    await transport.write(b"\xc0\x00")
    async with asyncio.timeout(WAIT_S):
        assert await far_reader.readexactly(2) == b"\xc0\x00"
    await transport.close()


async def test_commands_go_out_on_the_batched_transport(mqtt_broker: EmbeddedBroker) -> None:
    transport = CommandTransport(mqtt_broker.url, client_id=f"test-cmd-{uuid.uuid4().hex[:8]}")
    device = f"dev-{uuid.uuid4().hex[:8]}"
    async with aiomqtt.Client(mqtt_broker.host, mqtt_broker.port) as device_client:
        await device_client.subscribe(f"{device}/control/+", qos=2)
        await transport.start()
        try:
            assert await transport.wait_connected(WAIT_S)
            await transport.publish_command(device, "reboot", {"command_id": "c-1"})
            async with asyncio.timeout(WAIT_S):
                message = await anext(aiter(device_client.messages))
            # What the client was built on is only seen inside it.
            assert transport._client._transport_factory is open_batched
        finally:
            await transport.stop()

    assert str(message.topic) == f"{device}/control/reboot"
    assert message.qos == 2
    assert json.loads(message.payload)["command_id"] == "c-1"
