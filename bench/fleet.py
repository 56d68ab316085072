"""The bench's fleet: one aiomqtt client in a process of its own, steered over stdin/stdout.

It runs in its own process so that answering 10,000 devices does not take the event loop
from the engine (or from the raw clients) it measures. Requests and answers are JSON lines
`{"id": n, "op": ..., ...}` / `{"id": n, ...}`; times are `time.time()` seconds, which both
processes read from the same clock.

Modes (op `expect`), for the commands arriving on `+/control/download_firmware`:
- `count`: count them (the raw publish baselines);
- `reply`: answer each at once with `success` and the version it was told (optionally after
  downloading the file with the device's token);
- `hold`: keep them; op `release` then publishes every answer as fast as it can;
- `fail`: answer each with `failed`, and note when the failures first cross the policy's
  threshold, to count the commands that still arrive after it (the overshoot).
Op `publish_results` publishes N results for unknown commands (the raw receive baselines).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import httpx

COMMAND_FILTER = "+/control/download_firmware"
PUBLISH_BATCH = 500  # results in flight at once when publishing a burst (as the engine does)
DOWNLOADS_IN_FLIGHT = 64

# aiomqtt warns on every publish past 10 pending; 500 in flight is what we mean to do.
QUIET = logging.getLogger("bench.aiomqtt")
QUIET.setLevel(logging.ERROR)


@dataclass
class Stats:
    """What the fleet saw since the last `expect`."""

    mode: str = "count"
    expected: int = 0
    received: int = 0
    payload_bytes: int = 0
    first_command_at: float = 0.0
    last_command_at: float = 0.0
    results_published: int = 0
    first_result_at: float = 0.0
    last_result_acked_at: float = 0.0
    failures: int = 0
    crossed_at: float = 0.0  # when the failures first crossed the threshold (mode fail)
    received_at_crossing: int = 0
    downloads: int = 0
    download_errors: int = 0
    errors: list[str] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)  # when each command came


class Fleet:
    """Answers commands as many devices; counts and times what it sees."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.stats = Stats()
        self._held: list[tuple[str, dict[str, Any]]] = []
        self._all_received = asyncio.Event()
        self._work: set[asyncio.Task[None]] = set()
        self._tokens: dict[str, str] = {}
        self._download = False
        self._max_failure_rate = 0.05
        self._min_devices = 1
        self._http: httpx.AsyncClient | None = None
        self._downloads = asyncio.Semaphore(DOWNLOADS_IN_FLIGHT)

    # --- commands in -----------------------------------------------------------------------

    async def listen(self) -> None:
        """Take every command the broker delivers."""
        async for message in self.client.messages:
            now = time.time()
            stats = self.stats
            stats.received += 1
            stats.payload_bytes += len(message.payload)
            if not stats.first_command_at:
                stats.first_command_at = now
            stats.last_command_at = now
            stats.arrivals.append(now)
            topic = str(message.topic)
            try:
                payload = json.loads(message.payload)
            except ValueError:
                payload = {}
            if stats.mode == "reply":
                self._spawn(self._reply(topic, payload, "success"))
            elif stats.mode == "fail":
                self._spawn(self._reply(topic, payload, "failed"))
            elif stats.mode == "hold":
                self._held.append((topic, payload))
            if stats.expected and stats.received >= stats.expected:
                self._all_received.set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._work.add(task)
        task.add_done_callback(self._work.discard)

    async def _reply(self, topic: str, payload: dict[str, Any], status: str) -> None:
        if self._download and status == "success":
            await self._fetch(topic.split("/", 1)[0], payload)
        body: dict[str, Any] = {"command_id": payload.get("command_id", ""), "status": status}
        if status == "success":
            body["version"] = payload.get("version")
        else:
            body["error"] = "bench: install failed"
        await self._publish_result(f"{topic}/result", body)

    async def _fetch(self, device_id: str, payload: dict[str, Any]) -> None:
        assert self._http is not None
        async with self._downloads:
            try:
                response = await self._http.get(
                    str(payload["url"]),
                    headers={"Authorization": f"Basic {self._tokens.get(device_id, '')}"},
                )
                ok = response.status_code == 200 and len(response.content) == payload["size"]
            except (httpx.HTTPError, KeyError) as exc:
                self.stats.errors.append(f"download: {exc!r}"[:200])
                ok = False
        if ok:
            self.stats.downloads += 1
        else:
            self.stats.download_errors += 1

    async def _publish_result(self, topic: str, body: dict[str, Any]) -> None:
        stats = self.stats
        now = time.time()
        if not stats.first_result_at:
            stats.first_result_at = now
        stats.results_published += 1
        if body["status"] != "success":
            stats.failures += 1
        finished = stats.results_published
        if (
            not stats.crossed_at
            and finished >= self._min_devices
            and stats.failures / finished > self._max_failure_rate
        ):
            stats.crossed_at = now
            stats.received_at_crossing = stats.received
        try:
            await self.client.publish(topic, json.dumps(body), qos=1)
        except aiomqtt.MqttError as exc:
            stats.errors.append(f"publish: {exc!r}"[:200])
            return
        stats.last_result_acked_at = time.time()

    # --- requests ------------------------------------------------------------------------

    async def expect(
        self,
        mode: str,
        n: int,
        max_failure_rate: float = 0.05,
        min_devices: int = 1,
        download: bool = False,
        tokens: str = "",
    ) -> dict[str, Any]:
        """Start counting afresh in `mode`, expecting `n` commands (0: unknown)."""
        self.stats = Stats(mode=mode, expected=n)
        self._held = []
        self._all_received = asyncio.Event()
        self._max_failure_rate = max_failure_rate
        self._min_devices = min_devices
        self._download = download
        if tokens:
            self._tokens = json.loads(await asyncio.to_thread(Path(tokens).read_text))
        if download and self._http is None:
            self._http = httpx.AsyncClient(
                timeout=60, limits=httpx.Limits(max_connections=DOWNLOADS_IN_FLIGHT)
            )
        return {"ok": True}

    async def wait(self, timeout_s: float, stall_s: float = 0.0) -> dict[str, Any]:
        """Wait until every expected command arrived, then report.

        Gives up after `timeout_s`, or once no command has come for `stall_s` (when set).
        """
        deadline = time.time() + timeout_s
        while not self._all_received.is_set() and time.time() < deadline:
            last = self.stats.last_command_at
            if stall_s and last and time.time() - last > stall_s:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_received.wait(), 0.5)
        return await self.report(settle=True)

    async def report(self, settle: bool = False) -> dict[str, Any]:
        """The stats; with `settle`, after the answers in progress are published."""
        if settle and self._work:
            await asyncio.wait(list(self._work), timeout=60)
        return asdict(self.stats)

    async def quiet(self, quiet_s: float, timeout_s: float) -> dict[str, Any]:
        """Wait until no command has arrived for `quiet_s` seconds, then report."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            last = self.stats.last_command_at or time.time()
            if time.time() - last >= quiet_s:
                break
            await asyncio.sleep(0.05)
        return await self.report(settle=True)

    async def release(self) -> dict[str, Any]:
        """Publish the answers to every held command, PUBLISH_BATCH in flight at once."""
        held, self._held = self._held, []
        bodies = [
            (
                f"{topic}/result",
                {
                    "command_id": p.get("command_id", ""),
                    "status": "success",
                    "version": p.get("version"),
                },
            )
            for topic, p in held
        ]
        await self._burst(bodies)
        return await self.report()

    async def publish_results(self, n: int) -> dict[str, Any]:
        """Publish `n` results for commands nobody sent (what a raw subscriber counts)."""
        self.stats = Stats(mode="publish")
        bodies = [
            (
                f"{uuid.uuid4()}/control/download_firmware/result",
                {"command_id": uuid.uuid4().hex, "status": "success", "version": "2.1.0"},
            )
            for _ in range(n)
        ]
        await self._burst(bodies)
        return await self.report()

    async def _burst(self, bodies: list[tuple[str, dict[str, Any]]]) -> None:
        for start in range(0, len(bodies), PUBLISH_BATCH):
            batch = bodies[start : start + PUBLISH_BATCH]
            await asyncio.gather(*(self._publish_result(t, b) for t, b in batch))

    async def close(self) -> None:
        """Cancel what is in progress; close the HTTP client."""
        for task in list(self._work):
            task.cancel()
        await asyncio.gather(*self._work, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()


async def serve(host: str, port: int) -> None:
    """Connect, subscribe, then answer requests from stdin until `quit` or end of input."""
    async with aiomqtt.Client(
        host,
        port,
        identifier=f"bench-fleet-{uuid.uuid4().hex[:8]}",
        max_inflight_messages=1000,
        logger=QUIET,
        timeout=60,
    ) as client:
        await client.subscribe(COMMAND_FILTER, qos=2)
        fleet = Fleet(client)
        listener = asyncio.create_task(fleet.listen())
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        requests: set[asyncio.Task[None]] = set()
        _answer({"id": 0, "ready": True})
        while line := await reader.readline():
            request = json.loads(line)
            if request.get("op") == "quit":
                break
            task = asyncio.create_task(_handle(fleet, request))
            requests.add(task)
            task.add_done_callback(requests.discard)
        for task in requests:
            task.cancel()
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await listener
        await fleet.close()


async def _handle(fleet: Fleet, request: dict[str, Any]) -> None:
    request_id = request.pop("id")
    op = request.pop("op")
    try:
        reply = await getattr(fleet, op)(**request)
    except Exception as exc:  # report to the bench; it decides
        reply = {"error": f"{op}: {exc!r}"}
    _answer({"id": request_id, **reply})


def _answer(reply: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()


def main() -> None:
    """`python -m bench.fleet --port P`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
