"""A device's download: streamed, hashed as it arrives, resumed with Range when it breaks off.

The bytes are never stored: the device only needs their count and sha256 to decide whether
the image is the one the command announced.

A device told to stall stops reading part-way (`Stall`): it holds the connection open and
reads nothing for a while, or hangs up and comes back later. The service ends a transfer that
stops moving and frees its key's claim, so either way the device resumes with Range from what
it has (after a hang-up, only if the image is larger than the socket buffers: see below).

A resume needs a key the service has not spent yet. The service counts bytes still in socket
buffers as delivered, so an image small enough to sit whole in those buffers is spent at the
first transfer; a device that drops it answers `failed` with the service's 401 message (the
known limit pinned by tests/api/test_downloads.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from orchestrator.simulator.behaviour import Stall

# A device reads its download through a receive buffer of its own size, as firmware does (a
# few KiB to a few hundred): never one the kernel grows to tens of MiB, which would take the
# rest of a firmware image while the device stalls, so the service would see no stall at all.
RECEIVE_BUFFER_BYTES = 256 * 1024
MAX_BREAKS = 3  # transfers that may break off (network errors) before the download fails
BUSY_RETRY_S = 10.0  # how long a 409 (a broken transfer letting go) or a 503 is retried
_BACKOFF_S = (0.05, 1.0)  # first and largest pause between attempts
_ERROR_BODY_BYTES = 8192  # of an error answer, read for its message
_ERROR_EXCERPT_CHARS = 200  # of an error answer that has no JSON message


@dataclass(frozen=True, slots=True)
class Downloaded:
    """What came: byte count and sha256 (checked by the caller), or why nothing usable came."""

    size: int
    sha256: str
    resumes: int  # requests sent with Range after a broken transfer
    error: str = ""  # empty when the transfer completed
    stalled: bool = False  # it stalled (Stall) on the way


def device_http(timeout_s: float, max_connections: int) -> httpx.AsyncClient:
    """The HTTP client devices download with: each connection with a fixed receive buffer
    (RECEIVE_BUFFER_BYTES; setting it also turns off the kernel's growing of it)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_s, pool=None),  # no limit on queueing
        transport=httpx.AsyncHTTPTransport(
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)],
        ),
    )


class _BrokenOff(Exception):
    """The transfer was dropped on purpose; resume from `received` after `pause_s`."""

    def __init__(self, pause_s: float | None = None) -> None:
        super().__init__()
        self.pause_s = pause_s  # None: the usual backoff


async def download(
    http: httpx.AsyncClient,
    url: str,
    token: str,
    *,
    size: int,
    break_at: int | None = None,
    stall: Stall | None = None,
    on_bytes: Callable[[int], None] = lambda n: None,
) -> Downloaded:
    """GET `url` with the device's `token`; `break_at` drops the first transfer at that byte,
    `stall` makes the download stall once past `stall.byte(size)`.

    A transfer that breaks off is resumed with `Range: bytes={received}-`; the service may
    answer 409 for a moment while it notices the broken transfer, so that is retried too.
    Reading stops one byte past `size`: more is a size mismatch however much more there is.
    """
    hasher = hashlib.sha256()
    received = 0
    resumes = 0
    breaks = 0
    stall_after = None if stall is None else stall.byte(size)  # None once it has stalled
    pause_s = _BACKOFF_S[0]
    loop = asyncio.get_running_loop()
    busy_until = loop.time() + BUSY_RETRY_S

    def outcome(error: str = "") -> Downloaded:
        stalled = stall is not None and stall_after is None
        return Downloaded(received, hasher.hexdigest(), resumes, error, stalled)

    while True:
        headers = {"Authorization": f"Basic {token}"}
        if received:
            headers["Range"] = f"bytes={received}-"
        try:
            async with http.stream("GET", url, headers=headers) as response:
                # 409: a transfer of ours the service still counts (broken off, even before
                # its first byte, and not yet noticed, or its release waiting for Redis).
                # 503: the service is up but its Redis is not (a restart, a failover). Retry.
                if response.status_code in (409, 503) and loop.time() < busy_until:
                    await response.aclose()
                elif response.status_code not in (200, 206):
                    return outcome(await _refusal(response))
                else:
                    if received:
                        resumes += 1
                    if response.status_code == 200 and received:
                        hasher, received = hashlib.sha256(), 0  # the Range was ignored: start over
                    elif response.status_code == 206 and not _starts_at(response, received):
                        return outcome(
                            f"download resumed at the wrong offset: asked for byte {received}, "
                            f"got Content-Range {response.headers.get('content-range')!r}"
                        )
                    async for chunk in response.aiter_bytes():
                        if break_at is not None and received + len(chunk) >= break_at:
                            chunk = chunk[: break_at - received]
                        hasher.update(chunk)
                        received += len(chunk)
                        on_bytes(len(chunk))
                        if received > size:
                            break  # no point reading the rest of an image that is too long
                        if break_at is not None and received >= break_at:
                            break_at = None
                            raise _BrokenOff
                        if stall is not None and stall_after is not None and received > stall_after:
                            stall_after = None
                            if stall.hangup:
                                raise _BrokenOff(pause_s=stall.for_s)
                            await asyncio.sleep(stall.for_s)  # the connection open, nothing read
                    return outcome()
        except (httpx.TransportError, _BrokenOff) as exc:
            if isinstance(exc, httpx.TransportError):
                breaks += 1
                if breaks > MAX_BREAKS:
                    return outcome(
                        f"download broke off {breaks} times, last: {exc.__class__.__name__} "
                        f"{exc}".strip()
                    )
            elif exc.pause_s is not None:
                await asyncio.sleep(exc.pause_s)  # hung up: away for a while
            busy_until = loop.time() + BUSY_RETRY_S
        await asyncio.sleep(pause_s)
        pause_s = min(pause_s * 2, _BACKOFF_S[1])


def _starts_at(response: httpx.Response, offset: int) -> bool:
    content_range = str(response.headers.get("content-range", ""))
    return content_range.startswith(f"bytes {offset}-")


async def _refusal(response: httpx.Response) -> str:
    """The service's error message (its JSON `message`, else the start of the body)."""
    body = b""
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > _ERROR_BODY_BYTES:
            break
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    message = parsed.get("message") if isinstance(parsed, dict) else None
    if not isinstance(message, str) or not message:
        message = body[:_ERROR_EXCERPT_CHARS].decode("utf-8", "replace").strip()
    return f"download refused: HTTP {response.status_code} {message}".strip()
