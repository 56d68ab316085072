"""`?cursor=` on every paged listing: the next_cursor given back pages on, anything else is 400.

A cursor the API did not give (a Unicode digit that str.isdigit() accepts and int() refuses,
more digits than int() reads, a value past any cohort, a device id of another shape) is
answered 400 in the error envelope, naming the value and the fix; never 500.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from orchestrator.api.cursors import MAX_POSITION_DIGITS, device_cursor, position_cursor
from orchestrator.errors import InvalidInput
from tests.api.test_rollouts import created, fleet, plan_yaml, rollouts_url, upload_firmware
from tests.conftest import Service

BAD_CURSORS = [
    pytest.param("\u00b3", id="superscript-three"),  # isdigit() but int() refuses it
    pytest.param("\u0663", id="arabic-indic-three"),  # isdigit() and int() reads it as 3
    pytest.param("1" * 5000, id="5000-digits"),  # over int()'s 4300-digit limit
    pytest.param("9" * 40, id="40-digits"),
    pytest.param("-1", id="negative"),
    pytest.param("1.5", id="fraction"),
    pytest.param(" 1", id="leading-space"),
    pytest.param("x" * 5000, id="5000-letters"),
    pytest.param("a/b", id="slash"),
    pytest.param("[a", id="bracket"),
]


@pytest.fixture
async def rollout_devices_url(service: Service) -> str:
    """The device listing of a pending rollout of three devices."""
    await fleet(service, 3)
    await upload_firmware(service)
    view = await created(service, plan_yaml())
    return f"{rollouts_url(service)}/{view['id']}/devices"


def devices_url(service: Service) -> str:
    return f"/v2/projects/{service.project_id}/devices"


def assert_cursor_refused(response: httpx.Response, cursor: str) -> None:
    """400 in the envelope, naming the cursor (its start, when long) and what to pass."""
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["success"] is False
    assert body["status"] == 400
    assert repr(cursor[:20])[:-1] in body["message"]
    assert "next_cursor" in body["message"]
    assert body["errors"][0]["loc"] == "query.cursor"


@pytest.mark.parametrize("cursor", BAD_CURSORS)
async def test_a_rollout_devices_cursor_the_api_never_gave_is_400_naming_it(
    service: Service, rollout_devices_url: str, cursor: str
) -> None:
    response = await service.client.get(rollout_devices_url, params={"cursor": cursor})
    assert_cursor_refused(response, cursor)
    assert response.json()["action"] == "list rollout devices"


@pytest.mark.parametrize("cursor", BAD_CURSORS)
async def test_a_devices_cursor_the_api_never_gave_is_400_naming_it(
    service: Service, cursor: str
) -> None:
    await service.create_device(name="d")
    response = await service.client.get(devices_url(service), params={"cursor": cursor})
    assert_cursor_refused(response, cursor)
    assert response.json()["action"] == "list devices"


async def test_an_empty_cursor_is_the_first_page(
    service: Service, rollout_devices_url: str
) -> None:
    rollout = await service.client.get(rollout_devices_url, params={"cursor": ""})
    assert rollout.status_code == 200, rollout.text
    assert len(rollout.json()["data"]) == 3
    devices = await service.client.get(devices_url(service), params={"cursor": ""})
    assert devices.status_code == 200, devices.text
    assert len(devices.json()["data"]) == 3


async def test_a_position_past_the_cohort_is_an_empty_last_page(
    service: Service, rollout_devices_url: str
) -> None:
    response = await service.client.get(rollout_devices_url, params={"cursor": "9" * 15})
    assert response.status_code == 200, response.text
    assert response.json() == {
        "success": True,
        "status": 200,
        "action": "list rollout devices",
        "message": "Rollout devices listed.",
        "data": [],
        "next_cursor": None,
    }


async def test_the_cursors_the_api_gives_page_on(
    service: Service, rollout_devices_url: str
) -> None:
    first = (await service.client.get(rollout_devices_url, params={"limit": 2})).json()
    rest = await service.client.get(
        rollout_devices_url, params={"limit": 2, "cursor": first["next_cursor"]}
    )
    assert rest.status_code == 200, rest.text
    assert len(rest.json()["data"]) == 1
    page = (await service.client.get(devices_url(service), params={"limit": 2})).json()
    more = await service.client.get(
        devices_url(service), params={"limit": 2, "cursor": page["next_cursor"]}
    )
    assert more.status_code == 200, more.text
    assert len(more.json()["data"]) == 1


@hypothesis_settings(max_examples=300, database=None)
@given(cursor=st.text(max_size=40) | st.from_regex(r"[0-9]{1,30}", fullmatch=True))
def test_a_cursor_is_read_as_what_the_api_gives_or_refused_never_another_error(
    cursor: str,
) -> None:
    for read in (position_cursor, device_cursor):
        refused: InvalidInput | None = None
        try:
            read(cursor)
        except InvalidInput as exc:
            refused = exc
        if refused is not None:
            assert refused.errors[0]["loc"] == "query.cursor"
            assert cursor  # an empty cursor is the first page


@hypothesis_settings(max_examples=100, database=None)
@given(position=st.integers(min_value=0, max_value=10**MAX_POSITION_DIGITS - 1), uuid=st.uuids())
def test_every_next_cursor_the_api_gives_reads_back(position: int, uuid: object) -> None:
    assert position_cursor(str(position)) == position
    assert device_cursor(str(uuid)) == str(uuid)


# The service fixture is made once for all examples: these requests only read.
@hypothesis_settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(cursor=st.text(max_size=30) | st.from_regex(r"[0-9]{1,25}", fullmatch=True))
async def test_any_cursor_is_a_page_or_400_never_500(
    service: Service, rollout_devices_url: str, cursor: str
) -> None:
    for url in (rollout_devices_url, devices_url(service)):
        response = await service.client.get(url, params={"cursor": cursor})
        assert response.status_code in (200, 400), response.text
        body: dict[str, Any] = response.json()
        if response.status_code == 400:
            assert body["errors"][0]["loc"] == "query.cursor", body
