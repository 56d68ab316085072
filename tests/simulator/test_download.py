"""The simulated device's download against scripted answers (no server)."""

from __future__ import annotations

import hashlib

import httpx

from orchestrator.simulator.download import download

CONTENT = b"firmware" * 1000


async def test_a_409_after_a_transfer_broke_before_its_first_byte_is_waited_out() -> None:
    """The device's first transfer broke before any byte came; the service still counts it
    as holding the key (its claim is freed once the service notices, or once Redis answers
    again), so the next request is 409 for a moment: the device asks again, it does not give
    up on the download."""
    answers = iter(["drop", "busy", "busy", "file"])

    def answer(request: httpx.Request) -> httpx.Response:
        match next(answers):
            case "drop":
                raise httpx.RemoteProtocolError("peer closed connection", request=request)
            case "busy":
                return httpx.Response(409, json={"message": "another transfer is using this key"})
            case _:
                return httpx.Response(200, content=CONTENT)

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        got = await download(http, "http://ota/v2/device/download", "token", size=len(CONTENT))
    assert got.error == ""
    assert (got.size, got.sha256) == (len(CONTENT), hashlib.sha256(CONTENT).hexdigest())
