"""Reading plans without stalling the event loop: a big plan is parsed in a worker process.

Parsing a plan is CPU work that holds the GIL (PyYAML's composer is Python; LibYAML and
pydantic-core do not let go of the GIL either), so a thread would not help: while a plan
naming 150,000 devices is read, an event loop would answer nothing, /healthz included. Plans
of up to INLINE_CHARS characters (every ordinary plan: a few hundred bytes) are parsed at
once; longer ones go to one worker process (orchestrator/engine/plan_worker.py), one at a
time, so a flood of big plans takes one core and waits its turn instead of stalling the
service. The worker starts on first use and lives until aclose().
"""

from __future__ import annotations

import asyncio
import pickle
import sys

import structlog

from orchestrator.domain.plans import Plan
from orchestrator.engine.plan_worker import HEADER, PARSERS, frame
from orchestrator.errors import InvalidInput

log = structlog.get_logger(__name__)

INLINE_CHARS = 16 * 1024  # parsed in the event loop: a few milliseconds at most
STOP_WAIT_S = 2.0
WORKER = "orchestrator.engine.plan_worker"


class PlanReader:
    """Parses plans (and hook templates) in the event loop when small, in a worker when big."""

    def __init__(self, *, inline_chars: int = INLINE_CHARS) -> None:
        self._inline_chars = inline_chars
        self._worker: asyncio.subprocess.Process | None = None
        self._turn = asyncio.Lock()  # one request at a time: answers come back in order

    async def parse(self, text: str, source: str) -> Plan:
        """`parse_plan(text, source)`: the Plan, or PlanError with every problem located."""
        return await self._run("plan", text, source)

    async def parse_template(self, template: str, source: str) -> Plan:
        """`parse_template(template, source)`: a hook's plan template with sample values."""
        return await self._run("template", template, source)

    async def aclose(self) -> None:
        """Stop the worker, if it runs."""
        worker, self._worker = self._worker, None
        if worker is None or worker.returncode is not None:
            return
        if worker.stdin is not None:
            worker.stdin.close()  # its signal to end
        try:
            await asyncio.wait_for(worker.wait(), STOP_WAIT_S)
        except TimeoutError:  # busy with a big plan nobody waits for any more
            worker.kill()
            await worker.wait()

    async def _run(self, kind: str, text: str, source: str) -> Plan:
        if len(text) <= self._inline_chars:
            return PARSERS[kind](text, source)
        async with self._turn:
            reply = await self._ask(kind, text, source)
            if reply is None:  # the worker was gone (killed while idle?): a new one tries
                reply = await self._ask(kind, text, source)
        if reply is None:
            log.error("plan worker stopped while reading a plan", chars=len(text), source=source)
            raise InvalidInput(
                f"{source}: the plan could not be read: the process reading it stopped; a plan "
                "this large is best cut down (target devices by tag rather than by id)",
                errors=[{"loc": "plan", "msg": "could not be read"}],
            )
        status, value = reply
        if status == "error":
            assert isinstance(value, BaseException)
            raise value
        assert isinstance(value, Plan)
        return value

    async def _ask(self, kind: str, text: str, source: str) -> tuple[str, object] | None:
        """The worker's answer; None when it stopped before giving one."""
        worker = await self._started()
        assert worker.stdin is not None
        assert worker.stdout is not None
        try:
            worker.stdin.write(frame((kind, text, source)))
            await worker.stdin.drain()
            (size,) = HEADER.unpack(await worker.stdout.readexactly(HEADER.size))
            answer = await worker.stdout.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionError):
            await self.aclose()
            return None
        except BaseException:  # cancelled midway: its answer must not become the next one's
            worker.kill()
            self._worker = None
            await asyncio.shield(worker.wait())
            raise
        reply: tuple[str, object] = pickle.loads(answer)  # noqa: S301 - our own worker
        return reply

    async def _started(self) -> asyncio.subprocess.Process:
        if self._worker is None or self._worker.returncode is not None:
            self._worker = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                WORKER,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
        return self._worker
