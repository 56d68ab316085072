"""The plan reader: small plans at once, big ones in a worker process, with the same answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from orchestrator.domain.plans import PlanError, parse_plan
from orchestrator.engine.plan_reader import INLINE_CHARS, PlanReader
from orchestrator.errors import InvalidInput
from tests.conftest import wait_for

SMALL = "name: fw-2\nfirmware: {file: fw_2.bin}\nwaves: [{devices: 1}, {percent: 100}]\n"


def big(devices: int = 20_000, tail: str = "") -> str:
    """A plan naming `devices` devices: far over INLINE_CHARS."""
    ids = ", ".join(f"dev-{n}" for n in range(devices))
    text = f"{SMALL}target:\n  devices: [{ids}]\n{tail}"
    assert len(text) > INLINE_CHARS
    return text


@pytest.fixture
async def reader() -> AsyncIterator[PlanReader]:
    plans = PlanReader()
    yield plans
    await plans.aclose()


async def test_a_small_plan_is_read_at_once_without_a_worker() -> None:
    plans = PlanReader()
    assert await plans.parse(SMALL, "plan") == parse_plan(SMALL, "plan")
    assert plans._worker is None


async def test_a_big_plan_read_by_the_worker_is_the_plan_read_here(reader: PlanReader) -> None:
    text = big()
    plan = await reader.parse(text, "plan")
    assert reader._worker is not None
    assert plan == parse_plan(text, "plan")
    assert len(plan.target.devices) == 20_000


async def test_the_worker_answers_a_bad_plan_with_its_located_problems(reader: PlanReader) -> None:
    text = big(tail="policy:\n  ack_timeout: 8d\n  min_devices: 0\n")
    with pytest.raises(PlanError) as caught:
        await reader.parse(text, "plan.yaml")
    with pytest.raises(PlanError) as here:
        parse_plan(text, "plan.yaml")
    assert caught.value.problems == here.value.problems
    assert caught.value.errors == here.value.errors
    assert str(caught.value).startswith("plan.yaml:7:16: policy.ack_timeout must be a duration")


async def test_the_worker_reads_hook_templates_and_their_errors_too(reader: PlanReader) -> None:
    template = big().replace("name: fw-2", "name: fw-${version}")
    plan = await reader.parse_template(template, "plan")
    assert plan.name.startswith("fw-")
    with pytest.raises(InvalidInput) as caught:
        await reader.parse_template(big(), "plan")  # no ${version}
    assert "never uses ${version}" in caught.value.message
    assert caught.value.errors == [{"loc": "plan", "msg": "no ${version} placeholder"}]


async def test_a_worker_that_died_is_replaced_by_the_next_plan(reader: PlanReader) -> None:
    text = big()
    await reader.parse(text, "plan")
    worker = reader._worker
    assert worker is not None
    worker.kill()
    await worker.wait()
    assert await reader.parse(text, "plan") == parse_plan(text, "plan")
    assert reader._worker is not worker


async def test_a_plan_whose_reader_is_cancelled_leaves_no_answer_for_the_next(
    reader: PlanReader,
) -> None:
    first, second = big(20_000), big(20_001)
    reading = asyncio.create_task(reader.parse(first, "plan"))

    async def asked() -> bool:  # the worker is up: the request is on its way, or in it
        return reader._worker is not None

    await wait_for(asked)
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    plan = await reader.parse(second, "plan")
    assert len(plan.target.devices) == 20_001
