"""A big plan is read without stalling the service: /healthz answers while it is checked.

The API runs under uvicorn in this test's event loop, as `ota serve` runs it in its own: had
the plan been parsed in that loop, every /healthz sent once the plan was handed over would be
answered only after the plan's own answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx

from tests.answers import data_of
from tests.api.test_rollouts import YAML, fleet, rollouts_url, upload_firmware
from tests.conftest import Service

DEVICES = 100_000  # named in target.devices: about 0.8 MB of YAML
# Answered before the plan's answer: over 300 here when the plan is read off the loop; when it
# is read in the loop, only those that slip in while the server takes the body off the socket.
HEALTHZ_ANSWERS = 50


def big_plan(known: list[str], tail: str = "") -> str:
    ids = ", ".join([*known, *(f"d{n}" for n in range(DEVICES))])
    return (
        "name: big\nfirmware:\n  file: fw_v2.0.0.bin\ntarget:\n"
        f"  devices: [{ids}]\nwaves:\n  - devices: 1\n  - percent: 100\n{tail}"
    )


async def post_while_polling(service: Service, plan: str) -> tuple[httpx.Response, int]:
    """POST the plan; meanwhile GET /healthz one after another from the moment the whole plan
    is handed over. The response, and how many /healthz were answered before it."""
    handed_over = asyncio.Event()
    data = plan.encode()

    async def body() -> AsyncIterator[bytes]:
        yield data  # asked for more once all of it is written to the socket
        handed_over.set()

    posting = asyncio.create_task(
        service.client.post(rollouts_url(service), content=body(), headers=YAML)
    )
    answered = 0
    async with httpx.AsyncClient(base_url=service.base_url, timeout=60) as health:
        await asyncio.wait_for(handed_over.wait(), 60)
        while not posting.done():
            response = await health.get("/healthz")
            assert response.status_code == 200, response.text
            answered += not posting.done()
    return await posting, answered


async def test_healthz_answers_while_a_big_plan_is_refused(service: Service) -> None:
    """The plan is read in full (0.8 MB, then a value over its maximum on its last line)."""
    response, answered = await post_while_polling(
        service, big_plan([], tail="policy:\n  ack_timeout: 1.0e+306\n  device_timeout: 8d\n")
    )
    assert response.status_code == 400, response.text
    assert response.json()["message"].splitlines() == [
        "plan:10:16: policy.ack_timeout must be at most 168h (7 days), got 1e+306s",
        "plan:11:19: policy.device_timeout must be a duration like 30s, 10m, 2h, 1h30m or "
        "500ms (or a number of seconds), got '8d'",
    ]
    assert answered >= HEALTHZ_ANSWERS


async def test_healthz_answers_while_a_big_plan_starts_a_rollout(service: Service) -> None:
    """Two of the devices named exist: the rollout takes them, the rest are not found."""
    known = await fleet(service, 2)
    await upload_firmware(service)
    response, answered = await post_while_polling(service, big_plan(known))
    view = data_of(response, 201)
    assert view["total"] == 2
    assert [wave["target"] for wave in view["waves"]] == [1, 2]
    assert answered >= HEALTHZ_ANSWERS
