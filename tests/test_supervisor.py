"""Supervised background tasks: a failure is logged with its traceback and the task restarted
after a growing pause; nothing is left for "Task exception was never retrieved"."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from structlog.testing import capture_logs

from orchestrator.supervisor import backoff_s, spawn


class Flaky:
    """A run() that raises `failures` times, then waits until released."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self.running = asyncio.Event()
        self.release = asyncio.Event()

    async def run(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError(f"boom {self.calls}")
        self.running.set()
        await self.release.wait()


async def test_a_task_that_raises_is_logged_with_its_traceback_and_restarted_with_a_backoff(
    loop_errors: list[dict[str, Any]],
) -> None:
    flaky = Flaky(failures=3)
    with capture_logs() as logs:
        task = spawn(flaky.run, name="flaky", first_backoff_s=0.01, max_backoff_s=0.02)
        async with asyncio.timeout(10):
            await flaky.running.wait()
        flaky.release.set()
        await task
    failed = [entry for entry in logs if entry["event"] == "background task failed; restarting it"]
    assert flaky.calls == 4
    assert [entry["failures"] for entry in failed] == [1, 2, 3]
    assert [entry["restart_in_s"] for entry in failed] == [0.01, 0.02, 0.02]  # doubling, capped
    assert all(entry["task"] == "flaky" and entry["exc_info"] is True for entry in failed)
    assert all(entry["log_level"] == "error" for entry in failed)
    del task
    gc.collect()
    assert loop_errors == []


async def test_a_task_not_to_restart_logs_its_failure_and_ends_without_an_exception(
    loop_errors: list[dict[str, Any]],
) -> None:
    flaky = Flaky(failures=1)
    with capture_logs() as logs:
        task = spawn(flaky.run, name="once", restart=False)
        await asyncio.wait_for(asyncio.shield(task), 10)
    assert flaky.calls == 1
    assert task.exception() is None
    assert [(entry["event"], entry["task"]) for entry in logs] == [
        ("background task failed; it is not restarted", "once")
    ]
    del task
    gc.collect()
    assert loop_errors == []


async def test_cancelling_a_supervised_task_stops_it_during_its_pause() -> None:
    flaky = Flaky(failures=100)
    with capture_logs():
        task = spawn(flaky.run, name="pausing", first_backoff_s=60)
        async with asyncio.timeout(10):
            while flaky.calls == 0:  # noqa: ASYNC110 - the task's own progress, nothing to await
                await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert flaky.calls == 1


async def test_a_run_that_returns_ends_the_task() -> None:
    flaky = Flaky(failures=0)
    flaky.release.set()
    await asyncio.wait_for(spawn(flaky.run, name="done"), 10)
    assert flaky.calls == 1


def test_backoff_doubles_from_the_first_pause_up_to_the_longest() -> None:
    assert [backoff_s(n, 0.5, 30) for n in (1, 2, 3, 4, 7, 8, 1000)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        30.0,
        30.0,
        30.0,
    ]
