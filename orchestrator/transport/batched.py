"""A zmqtt transport whose writes leave together, once per turn of the event loop.

zmqtt's own transport sends every packet by itself and then waits for the stream to drain.
For the result subscriber, which acknowledges a batch of a few hundred results at once, that
is a send, a TCP segment and a wake-up of the broker per acknowledgement (and, on Python 3.11,
a task per write in zmqtt's drain timeout). Here a write appends to a buffer and returns; the
buffer goes out in one send at the next turn of the event loop, so a batch's PUBACKs reach the
broker as one segment, in the order they were written. A write waits only while the stream
holds more than HIGH_WATER_BYTES that the socket has not taken yet.

zmqtt takes a transport through its public `transport_factory` option; the command
publisher (transport/mqtt.py) and the result subscriber (transport/results.py) both use it.
Errors keep zmqtt's meaning: a lost or closed connection raises `MQTTDisconnectedError`,
which sends zmqtt down its reconnect path. A write that fails once its turn comes marks the
transport closed; the next read or write raises. Nothing is lost by that: an acknowledgement
the broker never got only makes it send the result again when the session resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from zmqtt.client import Transport
from zmqtt.errors import MQTTDisconnectedError

READ_BYTES = 65536  # per read: one call takes whatever the socket holds, up to this
HIGH_WATER_BYTES = 1 << 20  # unsent bytes past which a write waits for the stream to drain
DRAIN_TIMEOUT_S = 30.0  # as zmqtt's own transport: a broker that takes nothing is gone
CLOSE_TIMEOUT_S = 1.0


class BatchedWriteTransport:
    """zmqtt's Transport over an asyncio stream, with its writes gathered per loop turn."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        high_water_bytes: int = HIGH_WATER_BYTES,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._high_water_bytes = high_water_bytes
        self._pending: list[bytes] = []
        self._flush_scheduled = False
        self._closed = False
        self._writer_closed = False

    async def read(self, n: int) -> bytes:
        """Up to max(n, READ_BYTES) bytes, as soon as any are there."""
        try:
            data = await self._reader.read(max(n, READ_BYTES))
        except OSError as exc:
            self._closed = True
            raise MQTTDisconnectedError("Connection lost") from exc
        if not data:
            self._closed = True
            raise MQTTDisconnectedError("Connection closed by remote")
        return data

    async def write(self, data: bytes) -> None:
        """Queue `data` for the next send; wait only while the stream is far behind."""
        if self._closed:
            raise MQTTDisconnectedError("Connection lost")
        self._pending.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        if self._writer.transport.get_write_buffer_size() > self._high_water_bytes:
            try:
                async with asyncio.timeout(DRAIN_TIMEOUT_S):
                    await self._writer.drain()
            except (OSError, TimeoutError) as exc:
                self._closed = True
                raise MQTTDisconnectedError("Connection lost") from exc

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        if self._closed:
            return
        try:
            self._writer.write(data)
        except (OSError, RuntimeError):  # the socket is gone: the reader finds out next
            self._closed = True

    async def close(self) -> None:
        """Send what is queued (a DISCONNECT, say), then close the stream."""
        self._flush()
        self._closed = True
        if not self._writer_closed:
            self._writer_closed = True
            self._writer.close()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self._writer.wait_closed()
        except Exception:  # a hung or failed close must not hold up a reconnect
            with contextlib.suppress(Exception):
                self._writer.transport.abort()

    @property
    def is_connected(self) -> bool:
        """False once the connection was found lost or was closed."""
        return not self._closed


async def open_batched(host: str, port: int, tls: ssl.SSLContext | bool | None) -> Transport:
    """zmqtt `transport_factory`: TCP, or TLS (the system's trust store for `True`)."""
    context = ssl.create_default_context() if tls is True else (tls or None)
    reader, writer = await asyncio.open_connection(host, port, ssl=context)
    return BatchedWriteTransport(reader, writer)
