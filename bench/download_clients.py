"""The soak's download clients: many concurrent HTTP GETs of one file, each read at a capped pace.

A process of its own (`python -m bench.download_clients`), so reading gigabytes does not take
the CPU of the process it measures. It reads one JSON request on stdin:
`{"host", "port", "requests": [{"path", "headers"}], "pace_bytes_s", "timeout_s"}` and writes
one JSON report on stdout: per client its status, body bytes, when its first and last bytes
came (`time.time()`), and for the first client the sha256 of its body. Plain sockets and a
hand-read HTTP/1.1 response (Content-Length bodies only): the client must be cheaper than the
servers it measures, so no HTTP library copies each chunk on its way.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

READ_SIZE = 256 * 1024  # bytes asked of the socket at once
HEAD_LIMIT = 64 * 1024  # a response head longer than this is an error


@dataclass
class Outcome:
    """One client's download."""

    status: int = 0
    expected: int = 0  # Content-Length
    received: int = 0  # body bytes
    started_at: float = 0.0
    first_byte_at: float = 0.0
    ended_at: float = 0.0
    sha256: str = ""
    error: str = ""


async def fetch(
    host: str,
    port: int,
    path: str,
    headers: dict[str, str],
    pace_bytes_s: float,
    deadline: float,
    digest: bool,
) -> Outcome:
    """GET `path`, reading the body no faster than `pace_bytes_s` (0: as fast as it comes)."""
    loop = asyncio.get_running_loop()
    outcome = Outcome(started_at=time.time())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    hasher = hashlib.sha256() if digest else None
    try:
        await loop.sock_connect(sock, (host, port))
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        await loop.sock_sendall(sock, ("\r\n".join(lines) + "\r\n\r\n").encode())
        buffer = bytearray(READ_SIZE)
        view = memoryview(buffer)
        head = bytearray()
        while b"\r\n\r\n" not in head:
            n = await asyncio.wait_for(loop.sock_recv_into(sock, buffer), deadline - time.time())
            if n == 0 or len(head) > HEAD_LIMIT:
                raise ConnectionError("the response head never ended")
            head += view[:n]
        outcome.first_byte_at = time.time()
        raw_head, _, body_start = bytes(head).partition(b"\r\n\r\n")
        status_line, *header_lines = raw_head.decode("latin-1").split("\r\n")
        outcome.status = int(status_line.split()[1])
        for line in header_lines:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                outcome.expected = int(value.strip())
        outcome.received = len(body_start)
        if hasher is not None:
            hasher.update(body_start)
        started = time.monotonic()
        while outcome.received < outcome.expected:
            n = await asyncio.wait_for(loop.sock_recv_into(sock, buffer), deadline - time.time())
            if n == 0:
                raise ConnectionError("the server closed before the end of the body")
            outcome.received += n
            if hasher is not None:
                hasher.update(view[:n])
            if pace_bytes_s:
                ahead_s = outcome.received / pace_bytes_s - (time.monotonic() - started)
                if ahead_s > 0:
                    await asyncio.sleep(ahead_s)
    except (OSError, TimeoutError, ValueError, IndexError) as exc:
        outcome.error = repr(exc)[:200]
    finally:
        outcome.ended_at = time.time()
        sock.close()
    if hasher is not None:
        outcome.sha256 = hasher.hexdigest()
    return outcome


async def run(request: dict[str, Any]) -> list[Outcome]:
    """Every request of `request` at once."""
    deadline = time.time() + float(request["timeout_s"])
    return list(
        await asyncio.gather(
            *(
                fetch(
                    request["host"],
                    int(request["port"]),
                    item["path"],
                    item.get("headers", {}),
                    float(request.get("pace_bytes_s", 0)),
                    deadline,
                    digest=index == 0,
                )
                for index, item in enumerate(request["requests"])
            )
        )
    )


def main() -> None:
    """Read the request, run it on uvloop when installed, print the outcomes."""
    request = json.loads(sys.stdin.read())
    runner: Any = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        runner = uvloop.run
    outcomes = runner(run(request))
    sys.stdout.write(json.dumps([asdict(outcome) for outcome in outcomes]) + "\n")


if __name__ == "__main__":
    main()
