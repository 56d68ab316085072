"""The simulated device's download against scripted answers (no server)."""

from __future__ import annotations

import asyncio
import hashlib
import socket

import httpx

from orchestrator.simulator.download import RECEIVE_BUFFER_BYTES, device_http, download

CONTENT = b"firmware" * 1000


async def test_a_409_after_a_transfer_broke_before_its_first_byte_is_waited_out() -> None:
    """The device's first transfer broke before any byte came; the service still counts it
    as holding the key (its claim is freed once the service notices, or once Redis answers
    again), so the next request is 409 for a moment: the device asks again, it does not give
    up on the download."""
    answers = iter(["drop", "busy", "busy", "file"])

    def answer(request: httpx.Request) -> httpx.Response:
        match next(answers):
            case "drop":
                raise httpx.RemoteProtocolError("peer closed connection", request=request)
            case "busy":
                return httpx.Response(409, json={"message": "another transfer is using this key"})
            case _:
                return httpx.Response(200, content=CONTENT)

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        got = await download(http, "http://ota/v2/device/download", "token", size=len(CONTENT))
    assert got.error == ""
    assert (got.size, got.sha256) == (len(CONTENT), hashlib.sha256(CONTENT).hexdigest())


async def test_a_device_reads_through_a_receive_buffer_that_does_not_grow() -> None:
    """However fast a device has read, the kernel keeps its receive buffer at the device's
    size: a device that stops reading stops the service's sends once a few hundred KiB wait,
    so the service sees the stall (it would not, had the buffer grown to take the image)."""
    body = b"\0" * (16 * 1024 * 1024)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        writer.write(body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with (
        server,
        device_http(10.0, 1) as http,
        http.stream("GET", f"http://127.0.0.1:{port}/") as response,
    ):
        sock = response.extensions["network_stream"].get_extra_info("socket")
        read = 0
        async for chunk in response.aiter_raw():
            read += len(chunk)
            if read >= len(body) // 2:
                break  # 8 MiB read as fast as they came: the buffer as big as it gets
        grown_to = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    # Linux reports twice the size set (its bookkeeping); it never grows past that.
    assert grown_to <= 2 * RECEIVE_BUFFER_BYTES
