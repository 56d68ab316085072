"""A stream consumer outlives a handler's bug: the entry stays pending, the next ones flow."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from structlog.testing import capture_logs

from orchestrator.store import Stores
from orchestrator.store.streams import GROUP, EngineStream
from tests.conftest import wait_for


async def test_an_entry_whose_handler_raises_stays_pending_and_the_next_is_handled(
    stores: Stores,
) -> None:
    stream = stores.keys.deploy_requests()
    await stores.redis.xadd(stream, {"n": "1"})
    await stores.redis.xadd(stream, {"n": "2"})
    handled: list[str] = []

    async def handler(entry_id: str, raw: Mapping[str, str]) -> None:
        if raw["n"] == "1":
            raise KeyError("a bug in the handler")
        handled.append(raw["n"])

    stopping = asyncio.Event()
    with capture_logs() as logs:
        task = asyncio.create_task(
            stores.streams.consume(
                EngineStream.DEPLOY_REQUESTS, "c1", handler, stopping, what="test entry"
            )
        )

        async def second_handled() -> bool:
            return handled == ["2"]

        await wait_for(second_handled)
        stopping.set()
        await asyncio.wait_for(task, 10)
    pending = await stores.redis.xpending(stream, GROUP)
    assert pending["pending"] == 1  # tried again later, by this replica or another
    [failed] = [
        entry for entry in logs if entry["event"] == "test entry failed; it will be tried again"
    ]
    assert failed["exc_info"] is True
    assert failed["log_level"] == "error"
