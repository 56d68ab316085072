"""The bench's side of the fleet process (bench/fleet.py): start it, ask it, stop it."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import sys
from typing import Any


class FleetClient:
    """A running `python -m bench.fleet`; each call is one JSON line out and one back."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ready: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[0] = self._ready
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, port: int, timeout_s: float = 15.0) -> FleetClient:
        """Start the fleet on the broker at 127.0.0.1:`port`; returns once it is subscribed."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.fleet",
            "--port",
            str(port),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 22,
        )
        fleet = cls(process)
        await asyncio.wait_for(fleet._ready, timeout_s)
        return fleet

    async def _read(self) -> None:
        assert self._process.stdout is not None
        while line := await self._process.stdout.readline():
            reply = json.loads(line)
            future = self._waiting.pop(int(reply.pop("id")), None)
            if future is not None and not future.done():
                future.set_result(reply)
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(RuntimeError("the fleet process exited"))

    async def call(self, op: str, **args: Any) -> dict[str, Any]:
        """Run `op` in the fleet; its reply (RuntimeError when it reports an error)."""
        assert self._process.stdin is not None
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        self._process.stdin.write(
            (json.dumps({"id": request_id, "op": op, **args}) + "\n").encode()
        )
        await self._process.stdin.drain()
        reply = await future
        if "error" in reply:
            raise RuntimeError(f"the fleet failed: {reply['error']}")
        return reply

    async def stop(self) -> None:
        """Ask the fleet to quit; kill it if it does not within 10 s."""
        if self._process.returncode is None:
            assert self._process.stdin is not None
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self._process.stdin.write(b'{"id": -1, "op": "quit"}\n')
                await self._process.stdin.drain()
                self._process.stdin.close()
            try:
                await asyncio.wait_for(self._process.wait(), 10)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
