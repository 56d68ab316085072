"""Reading plans without stalling the event loop: a big plan is parsed in a worker process.

Parsing a plan is CPU work that holds the GIL (PyYAML's composer is Python; LibYAML and
pydantic-core do not let go of the GIL either), so a thread would not help: while a plan
naming 150,000 devices is read, an event loop would answer nothing, /healthz included. Plans
of up to INLINE_CHARS characters (every ordinary plan: a few hundred bytes) are parsed at
once; longer ones go to one worker process, one at a time, so a flood of big plans takes one
core and waits its turn instead of stalling the service. The worker starts on first use and
lives until close().
"""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import structlog

from orchestrator.domain.hooks import parse_template
from orchestrator.domain.plans import Plan, parse_plan
from orchestrator.errors import InvalidInput

log = structlog.get_logger(__name__)

INLINE_CHARS = 16 * 1024  # parsed in the event loop: a few milliseconds at most

Parse = Callable[[str, str], Plan]


def _ignore_interrupts() -> None:
    """In the worker: Ctrl-C is the service's to handle; the worker ends with it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class PlanReader:
    """Parses plans (and hook templates) in the event loop when small, in a worker when big."""

    def __init__(self, *, inline_chars: int = INLINE_CHARS) -> None:
        self._inline_chars = inline_chars
        self._pool: ProcessPoolExecutor | None = None

    async def parse(self, text: str, source: str) -> Plan:
        """`parse_plan(text, source)`: the Plan, or PlanError with every problem located."""
        return await self._run(parse_plan, text, source)

    async def parse_template(self, template: str, source: str) -> Plan:
        """`parse_template(template, source)`: a hook's plan template with sample values."""
        return await self._run(parse_template, template, source)

    def close(self) -> None:
        """Stop the worker (a parse under way finishes; nobody waits for it)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    async def _run(self, parse: Parse, text: str, source: str) -> Plan:
        if len(text) <= self._inline_chars:
            return parse(text, source)
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                # not fork: the service has threads, and a fork copies their held locks
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_ignore_interrupts,
            )
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, parse, text, source)
        except BrokenProcessPool:  # the worker died (killed, out of memory): start a new one
            self.close()
            log.error("plan worker died while reading a plan", chars=len(text), source=source)
            raise InvalidInput(
                f"{source}: the plan could not be read: the process reading it stopped; a plan "
                "this large is best cut down (target devices by tag rather than by id)",
                errors=[{"loc": "plan", "msg": "could not be read"}],
            ) from None
