"""A result subscriber in a process of its own, for the kill -9 test.

Run as `python -m tests.transport.crash_subscriber URL CLIENT_ID`. Prints `subscribed` once
subscribed, then `handling <command_id>` for each result of the first batch; the handling
never finishes, so those results are never acknowledged. Logs go to stderr, so stdout carries
only those lines.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

import structlog

from orchestrator.transport.results import DeviceResult, ParsedResult, ResultSubscriber


async def _hang(batch: Sequence[ParsedResult]) -> None:
    for parsed, topic in batch:
        label = parsed.command_id if isinstance(parsed, DeviceResult) else f"{parsed} {topic}"
        print(f"handling {label}", flush=True)
    await asyncio.Event().wait()


async def main(url: str, client_id: str) -> None:
    """Subscribe as `client_id` and run until killed."""
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    subscriber = ResultSubscriber(url, version="5.0", client_id=client_id, handler=_hang)
    await subscriber.start()
    print("subscribed", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
