"""Background tasks that never die silently: every one the service starts goes through `spawn`.

`spawn(run, name=...)` runs `run()` in a task. When `run()` raises (anything but cancellation)
the exception is logged with its traceback and `run()` is started again after a pause that
doubles from `first_backoff_s` up to `max_backoff_s` (back to the first once a run has lasted
`HEALTHY_AFTER_S`); with `restart=False` the failure is logged and the task ends. Either way the
exception is retrieved, so asyncio never reports "Task exception was never retrieved".
Cancelling the task stops it, during a run or during a pause.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)

FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
HEALTHY_AFTER_S = 60.0  # a run that lasted this long was not part of a crash loop

Run = Callable[[], Awaitable[None]]


def backoff_s(
    failures: int, first_s: float = FIRST_BACKOFF_S, max_s: float = MAX_BACKOFF_S
) -> float:
    """The pause after `failures` failures in a row: first_s, doubling, max_s at most."""
    return float(min(first_s * 2 ** min(max(failures - 1, 0), 32), max_s))


async def supervise(
    run: Run,
    *,
    name: str,
    restart: bool = True,
    first_backoff_s: float = FIRST_BACKOFF_S,
    max_backoff_s: float = MAX_BACKOFF_S,
) -> None:
    """Await `run()` until it returns; log each failure and, if `restart`, run it again."""
    loop = asyncio.get_running_loop()
    failures = 0
    while True:
        started = loop.time()
        try:
            await run()
            return
        except Exception:
            if loop.time() - started >= HEALTHY_AFTER_S:
                failures = 0
            failures += 1
            if not restart:
                log.exception("background task failed; it is not restarted", task=name)
                return
            pause_s = backoff_s(failures, first_backoff_s, max_backoff_s)
            log.exception(
                "background task failed; restarting it",
                task=name,
                failures=failures,
                restart_in_s=pause_s,
            )
        await asyncio.sleep(pause_s)


def spawn(
    run: Run,
    *,
    name: str,
    restart: bool = True,
    first_backoff_s: float = FIRST_BACKOFF_S,
    max_backoff_s: float = MAX_BACKOFF_S,
) -> asyncio.Task[None]:
    """Start `run()` in a supervised task named `name` (see the module's docstring)."""
    task = asyncio.create_task(
        supervise(
            run,
            name=name,
            restart=restart,
            first_backoff_s=first_backoff_s,
            max_backoff_s=max_backoff_s,
        ),
        name=name,
    )
    task.add_done_callback(_retrieve)
    return task


def _retrieve(task: asyncio.Task[None]) -> None:
    """Log what ended a supervised task other than a return or a cancel (SystemExit, ...)."""
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        log.error("background task ended", task=task.get_name(), exc_info=error)
