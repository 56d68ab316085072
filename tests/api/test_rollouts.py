"""Rollout routes: create from YAML or JSON, dry run, the conflicts, reads, operator actions.

No engine runs here (role "api"): a rollout stays `pending` unless a test moves it through the
store or the action routes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from orchestrator.api.rollouts import PLAN_MEDIA_TYPES
from orchestrator.domain.auth import Scope
from orchestrator.domain.cohorts import EXCLUSION_TEXT, ExclusionReason
from orchestrator.domain.states import DeviceEvent, DeviceState, RolloutAction, RolloutState
from orchestrator.store.rollout_devices import Dispatched, Grant
from tests.answers import data_of
from tests.conftest import Service

YAML = {"Content-Type": "application/yaml"}
FIRMWARE = "fw_v2.0.0.bin"
OLD_FIRMWARE = "fw_v1.9.0.bin"
ALL_DEVICE_STATES = {state.value for state in DeviceState}
VIEW_KEYS = {
    "id",
    "name",
    "state",
    "reason",
    "wave",
    "wave_index",
    "waves",
    "counts",
    "failure_rate",
    "failures",
    "max_failure_rate",
    "evidence",
    "strata",
    "created_at",
    "updated_at",
    "created_by",
    "firmware",
    "rollback",
    "total",
    "actions",
}


def plan_yaml(
    name: str = "fw-2.0.0",
    *,
    file: str = FIRMWARE,
    target: str = "",
    rollback: bool = False,
) -> str:
    """A three-wave plan (one canary, 50%, 100%) in YAML; `target` is YAML under `target:`."""
    text = f"""\
name: {name}
firmware:
  file: {file}
  version: "2.0.0"
waves:
  - name: canary
    devices: 1
    bake: 10m
  - percent: 50
    approval: manual
  - percent: 100
policy:
  max_failure_rate: 5%
"""
    if target:
        text += "target:\n" + "".join(f"  {line}\n" for line in target.splitlines())
    if rollback:
        text += f"  on_failure: rollback\nrollback:\n  file: {OLD_FIRMWARE}\n"
    return text


def rollouts_url(service: Service, project_id: str | None = None) -> str:
    return f"/v2/projects/{project_id or service.project_id}/rollouts"


async def fleet(service: Service, count: int, **fields: Any) -> list[str]:
    """`count` mqtt devices; their ids."""
    return [(await service.create_device(**fields))["id"] for _ in range(count)]


async def upload_firmware(service: Service, *names: str) -> None:
    for name in names or (FIRMWARE,):
        response = await service.upload(name, b"\x7fELF" + name.encode())
        assert response.status_code == 201, response.text


async def create(service: Service, plan: str, **params: Any) -> httpx.Response:
    return await service.client.post(
        rollouts_url(service), content=plan, headers=YAML, params=params
    )


async def created(service: Service, plan: str) -> dict[str, Any]:
    response = await create(service, plan)
    assert response.json()["action"] == "create rollout"
    view: dict[str, Any] = data_of(response, 201)
    return view


async def set_running(service: Service, rollout_id: str) -> None:
    """What the engine does when it starts a rollout."""
    _, changed = await service.stores.rollouts.change_state(
        rollout_id,
        allowed_from=[RolloutState.PENDING],
        to=RolloutState.RUNNING,
        reason="started by the test",
        actor="engine",
        action=RolloutAction.START,
        at="2026-01-01T00:00:00Z",
    )
    assert changed


async def dispatch(
    service: Service, rollout_id: str, *, count: int, reach: int
) -> list[Dispatched]:
    """What the engine's dispatch step does, without publishing."""
    grant = Grant(project_id=service.project_id, file_name=FIRMWARE, size=64, key_ttl_s=600)
    return await service.stores.rollout_devices.dispatch(
        rollout_id, count=count, reach=reach, ack_deadline_ms=0, grant=grant
    )


def assert_view_adds_up(view: dict[str, Any]) -> None:
    assert set(view) == VIEW_KEYS
    assert set(view["counts"]) == ALL_DEVICE_STATES
    assert sum(view["counts"].values()) == view["total"]
    for wave in view["waves"]:
        assert set(wave["counts"]) == ALL_DEVICE_STATES
    assert sum(sum(wave["counts"].values()) for wave in view["waves"]) == view["total"]


# -- create ------------------------------------------------------------------------------------


async def test_create_from_yaml_is_201_with_every_device_pending(service: Service) -> None:
    await fleet(service, 5)
    await upload_firmware(service)
    view = await created(service, plan_yaml())
    assert_view_adds_up(view)
    assert view["name"] == "fw-2.0.0"
    assert view["state"] == "pending"
    assert view["total"] == 5
    assert view["counts"]["pending"] == 5
    assert view["wave"] == "canary"
    assert view["wave_index"] == 0
    assert [w["name"] for w in view["waves"]] == ["canary", "wave-2", "wave-3"]
    assert [w["target"] for w in view["waves"]] == [1, 3, 5]  # cumulative reach
    assert [w["counts"]["pending"] for w in view["waves"]] == [1, 2, 2]
    assert view["failure_rate"] == 0
    assert view["max_failure_rate"] == pytest.approx(0.05)
    assert view["firmware"] == {"file": FIRMWARE, "version": "2.0.0"}
    assert view["rollback"] is None
    assert view["created_by"] == "admin"
    assert view["created_at"].endswith("Z")
    assert view["actions"] == ["abort"]


async def test_create_from_json_is_201_like_yaml(service: Service) -> None:
    await fleet(service, 3)
    await upload_firmware(service)
    plan = {
        "name": "fw-json",
        "firmware": {"file": FIRMWARE},
        "waves": [{"devices": 1}, {"percent": 100}],
    }
    response = await service.client.post(rollouts_url(service), json=plan)
    view = data_of(response, 201)
    assert_view_adds_up(view)
    assert view["total"] == 3
    assert view["counts"]["pending"] == 3
    assert [w["target"] for w in view["waves"]] == [1, 3]
    assert view["firmware"] == {"file": FIRMWARE, "version": None}


async def test_dry_run_returns_waves_and_stores_nothing(service: Service) -> None:
    await fleet(service, 5)
    await upload_firmware(service)
    response = await create(service, plan_yaml(), dry_run="true")
    assert response.json()["action"] == "create rollout"
    body = data_of(response)
    assert body["dry_run"] is True
    assert body["name"] == "fw-2.0.0"
    assert body["total"] == 5
    assert body["waves"] == [  # without policy.by, no strata
        {
            "name": "canary",
            "devices": 1,
            "reach": 1,
            "approval": "auto",
            "bake": "10m",
            "strata": {},
        },
        {
            "name": "wave-2",
            "devices": 2,
            "reach": 3,
            "approval": "manual",
            "bake": "0s",
            "strata": {},
        },
        {
            "name": "wave-3",
            "devices": 2,
            "reach": 5,
            "approval": "auto",
            "bake": "0s",
            "strata": {},
        },
    ]
    assert body["exclusions"] == []
    assert body["versions"] == {"(none)": 5}  # none has reported a version yet
    assert body["warnings"] == []
    listing = await service.client.get(rollouts_url(service))
    assert data_of(listing) == []
    # nothing holds the devices either: the real rollout gets all five
    assert (await created(service, plan_yaml()))["total"] == 5


async def test_dry_run_simulates_the_plan_and_warns_of_a_small_canary(service: Service) -> None:
    await fleet(service, 30)
    await upload_firmware(service)
    plan = plan_yaml() + "  confidence: 95%\n"
    response = await create(
        service, plan, dry_run="true", simulate="true", failure_rate="60%", runs="50"
    )
    body = data_of(response)
    assert body["warnings"] == [
        "canary of 1 with confidence 95%: a 10% failure rate is stopped in the canary with "
        "probability 0.10; 76 devices give 0.95"
    ]
    simulation = body["simulation"]
    assert simulation["runs"] == 50
    assert simulation["devices"] == 30
    assert simulation["failure_rate"] == 0.6
    assert simulation["p_halt"] + simulation["p_inconclusive_pause"] > 0.9
    plain = data_of(await create(service, plan_yaml(), dry_run="true"))
    assert plain["warnings"] == []
    assert plain["simulation"] is None


async def test_a_simulation_without_a_failure_rate_is_refused(service: Service) -> None:
    await fleet(service, 3)
    await upload_firmware(service)
    response = await create(service, plan_yaml(), dry_run="true", simulate="true")
    assert response.status_code == 400
    assert "simulate=true needs failure_rate" in response.json()["message"]
    wrong = await create(service, plan_yaml(), dry_run="true", simulate="true", failure_rate="lots")
    assert wrong.status_code == 400
    assert "failure_rate must be a percentage" in wrong.json()["message"]


async def test_dry_run_reports_every_exclusion_with_its_reason(service: Service) -> None:
    await upload_firmware(service)
    [eligible] = await fleet(service, 1, tags=["lab"])
    [http] = await fleet(service, 1, tags=["lab"], source="http")
    [no_firmware] = await fleet(service, 1, tags=["lab"])
    patch = {"metadata": {"allowed_commands": "reboot;configuration"}}
    response = await service.client.patch(
        f"/v2/projects/{service.project_id}/devices/{no_firmware}", json=patch
    )
    assert response.status_code == 200, response.text
    [busy] = await fleet(service, 1, tags=["lab"])
    other = await created(service, plan_yaml("other", target=f"devices: [{busy}]"))
    [excluded] = await fleet(service, 1, tags=["lab"])
    await fleet(service, 1, tags=["office"])  # not targeted: not an exclusion either

    plan = plan_yaml(target=f"tags: [lab]\nexclude: [{excluded}]")
    response = await create(service, plan, dry_run="true")
    body = data_of(response)
    assert body["total"] == 1
    reasons = {e["device_id"]: (e["reason"], e["detail"], e["why"]) for e in body["exclusions"]}
    expected = {
        http: ExclusionReason.HTTP_ONLY,
        no_firmware: ExclusionReason.COMMAND_NOT_ALLOWED,
        busy: ExclusionReason.IN_ACTIVE_ROLLOUT,
        excluded: ExclusionReason.EXCLUDED_BY_PLAN,
    }
    assert {d: r for d, (r, _, _) in reasons.items()} == {d: r.value for d, r in expected.items()}
    assert {d: why for d, (_, _, why) in reasons.items()} == {
        d: EXCLUSION_TEXT[r] for d, r in expected.items()
    }
    assert reasons[busy][1] == other["id"]
    assert eligible not in reasons


async def test_invalid_plan_is_a_located_400(service: Service) -> None:
    await upload_firmware(service)
    text = plan_yaml().replace("percent: 50", "percent: 120")
    response = await create(service, text)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["action"] == "create rollout"
    assert "plan:9:14: waves[1].percent must be between 0 and 100, got 120" in body["message"]
    assert body["errors"][0]["loc"].startswith("9:14")


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (
            "  ack_timeout: 1.0e+306\n  device_timeout: 1.0e+306\n",
            "plan:14:16: policy.ack_timeout must be at most 168h (7 days), got 1e+306s",
        ),
        (
            f"  min_devices: 0x{'f' * 4000}\n",
            "plan:14:16: policy.min_devices must be at most 10000000, got a number of more than "
            "4300 digits",
        ),
        (
            f"  max_in_flight: {'9' * 400}\n",
            "plan:14:18: policy.max_in_flight must be at most 10000000, got a number of 400 digits",
        ),
        ("  rate: 1.0e+400\n", "plan:14:9: policy.rate must be at most 10000/s, got inf"),
    ],
)
async def test_endless_durations_and_huge_numbers_are_a_located_400(
    service: Service, policy: str, expected: str
) -> None:
    """Values the engine could not count with are refused up front, never stored."""
    await fleet(service, 1)
    await upload_firmware(service)
    response = await create(service, plan_yaml() + policy)
    assert response.status_code == 400, response.text
    assert expected in response.json()["message"]
    assert data_of(await service.client.get(rollouts_url(service))) == []


async def test_a_rollout_stored_with_a_value_over_a_maximum_still_shows_and_aborts(
    service: Service,
) -> None:
    """A rollout accepted before the maxima existed can be read, listed and aborted."""
    [device] = await fleet(service, 1)
    plan = {
        "name": "before-maxima",
        "firmware": {"file": FIRMWARE},
        "waves": [{"percent": 100}],
        "policy": {"ack_timeout": 1e306, "device_timeout": 1e306},
    }
    rollout_id, _ = await service.stores.rollouts.create(
        project_id=service.project_id,
        name="before-maxima",
        plan=plan,
        device_ids=[device],
        reach=[1],
        created_at="2026-01-01T00:00:00Z",
        created_by="test",
    )
    shown = await service.client.get(f"{rollouts_url(service)}/{rollout_id}")
    assert data_of(shown)["state"] == "pending"
    listing = await service.client.get(rollouts_url(service))
    assert [view["id"] for view in data_of(listing)] == [rollout_id]
    aborted = await action(service, rollout_id, "abort")
    assert data_of(aborted)["state"] == "aborted"


async def test_syntax_error_in_json_is_a_located_400(service: Service) -> None:
    response = await service.client.post(
        rollouts_url(service),
        content=b'{"name": "x",\n "firmware" {}}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert response.json()["message"].startswith("plan:2:13: invalid YAML")


@pytest.mark.parametrize("rollback", [False, True])
async def test_firmware_file_not_uploaded_is_400_naming_it(
    service: Service, rollback: bool
) -> None:
    await fleet(service, 2)
    await upload_firmware(service, OLD_FIRMWARE if not rollback else FIRMWARE)
    response = await create(service, plan_yaml(rollback=True))
    assert response.status_code == 400, response.text
    missing, field = (OLD_FIRMWARE, "rollback.file") if rollback else (FIRMWARE, "firmware.file")
    message = response.json()["message"]
    assert f"{field} names {missing!r}" in message
    assert "upload it first" in message


async def test_empty_cohort_is_400(service: Service) -> None:
    await fleet(service, 2, source="http")
    await upload_firmware(service)
    response = await create(service, plan_yaml())
    assert response.status_code == 400, response.text
    message = response.json()["message"]
    assert message.startswith("the target matches no eligible device")
    assert "http_only" in message


async def test_same_name_while_active_is_409(service: Service) -> None:
    first, second = await fleet(service, 2)
    await upload_firmware(service)
    view = await created(service, plan_yaml(target=f"devices: [{first}]"))
    response = await create(service, plan_yaml(target=f"devices: [{second}]"))
    assert response.status_code == 409, response.text
    assert view["id"] in response.json()["message"]


async def held_back_create(
    service: Service, plan: str, sent: asyncio.Event, go: asyncio.Event
) -> httpx.Response:
    """A create whose body's last byte waits for `go`, so two creates select at the same time."""

    async def body() -> AsyncIterator[bytes]:
        yield plan[:-1].encode()
        sent.set()
        await go.wait()
        yield plan[-1:].encode()

    return await service.client.post(rollouts_url(service), content=body(), headers=YAML)


async def test_overlapping_devices_is_409_naming_them(service: Service) -> None:
    """Selection leaves busy devices out, so devices are taken only by a create racing ours.

    Two creates over the same devices, released together: one wins; the other selected before
    the winner stored its cohort and is 409 naming devices. Should the two still run one after
    the other (the loser then finds no free device: 400), the test frees the devices and
    races again.
    """
    await fleet(service, 12)
    await upload_firmware(service)
    for attempt in range(30):
        go, sent = asyncio.Event(), [asyncio.Event(), asyncio.Event()]
        racers = [
            asyncio.create_task(held_back_create(service, plan_yaml(f"{n}-{attempt}"), e, go))
            for n, e in zip("ab", sent, strict=True)
        ]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in sent)), 10)
        go.set()
        responses = await asyncio.gather(*racers)
        [winner] = [r for r in responses if r.status_code == 201]
        [loser] = [r for r in responses if r.status_code != 201]
        if loser.status_code == 409:
            message = loser.json()["message"]
            assert message.startswith("12 devices of the target joined another active rollout")
            assert "and 7 more" in message
            return
        assert loser.status_code == 400, loser.text
        rid = data_of(winner, 201)["id"]
        await action(service, rid, "abort")
        await service.stores.rollout_devices.release_devices(rid)
    pytest.fail("the two creates never overlapped in 30 tries")


# -- reads -------------------------------------------------------------------------------------


async def test_list_is_newest_first_and_filters_by_state(service: Service) -> None:
    first, second = await fleet(service, 2)
    await upload_firmware(service)
    older = await created(service, plan_yaml("older", target=f"devices: [{first}]"))
    newer = await created(service, plan_yaml("newer", target=f"devices: [{second}]"))
    await action(service, older["id"], "abort")

    response = await service.client.get(rollouts_url(service))
    assert response.json()["action"] == "list rollouts"
    listed = data_of(response)
    assert [r["id"] for r in listed] == [newer["id"], older["id"]]
    for view in listed:
        assert_view_adds_up(view)
    by_state = await service.client.get(rollouts_url(service), params={"state": "aborted"})
    assert [r["id"] for r in data_of(by_state)] == [older["id"]]
    pending = await service.client.get(rollouts_url(service), params={"state": "pending"})
    assert [r["id"] for r in data_of(pending)] == [newer["id"]]


async def test_list_with_an_unknown_state_is_400_listing_the_states(service: Service) -> None:
    response = await service.client.get(rollouts_url(service), params={"state": "done"})
    assert response.status_code == 400, response.text
    message = response.json()["message"]
    assert "'done'" in message
    assert "pending, running, paused" in message


async def test_get_returns_the_view(service: Service) -> None:
    await fleet(service, 2)
    await upload_firmware(service)
    view = await created(service, plan_yaml())
    response = await service.client.get(f"{rollouts_url(service)}/{view['id']}")
    assert response.json() == {
        "success": True,
        "status": 200,
        "action": "get rollout",
        "message": "Rollout found.",
        "data": view,
    }


async def test_get_unknown_or_other_projects_rollout_is_404(service: Service) -> None:
    await fleet(service, 1)
    await upload_firmware(service)
    view = await created(service, plan_yaml())
    unknown = await service.client.get(f"{rollouts_url(service)}/no-such-rollout")
    assert unknown.status_code == 404, unknown.text
    assert unknown.json()["action"] == "get rollout"
    other = await service.stores.projects.create("other")
    elsewhere = await service.client.get(f"{rollouts_url(service, other.id)}/{view['id']}")
    assert elsewhere.status_code == 404, elsewhere.text


async def test_devices_listing_pages_in_cohort_order_and_filters_by_state(
    service: Service,
) -> None:
    devices = await fleet(service, 5)
    await upload_firmware(service)
    view = await created(service, plan_yaml())
    url = f"{rollouts_url(service)}/{view['id']}/devices"

    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(3):
        params: dict[str, str | int] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        response = await service.client.get(url, params=params)
        page = response.json()
        assert page["action"] == "list rollout devices"
        assert len(data_of(response)) == (1 if len(seen) == 4 else 2)
        seen += page["data"]
        cursor = page["next_cursor"]
    assert cursor is None
    assert sorted(d["device_id"] for d in seen) == sorted(devices)
    assert [d["wave"] for d in seen] == ["canary", "wave-2", "wave-2", "wave-3", "wave-3"]
    assert seen[0] == {
        "device_id": seen[0]["device_id"],
        "state": "pending",
        "wave": "canary",
        "command_id": None,
        "attempts": 0,
        "failure": None,
        "error": None,
        "updated_at": None,
    }

    await set_running(service, view["id"])
    sent = await dispatch(service, view["id"], count=2, reach=3)
    by_state = await service.client.get(url, params={"state": "sent", "limit": 1})
    first = data_of(by_state)
    assert [d["device_id"] for d in first] == [sent[0].device_id]
    assert first[0]["command_id"] == sent[0].command_id
    assert first[0]["attempts"] == 1
    assert first[0]["updated_at"].endswith("Z")
    rest = await service.client.get(
        url, params={"state": "sent", "limit": 1, "cursor": by_state.json()["next_cursor"]}
    )
    assert [d["device_id"] for d in data_of(rest)] == [sent[1].device_id]
    assert rest.json()["next_cursor"] is None
    pending = await service.client.get(url, params={"state": "pending"})
    assert len(data_of(pending)) == 3
    bad = await service.client.get(url, params={"state": "lost"})
    assert bad.status_code == 400, bad.text
    assert "succeeded" in bad.json()["message"]


async def test_counts_and_failure_rate_follow_the_devices(service: Service) -> None:
    await fleet(service, 4)
    await upload_firmware(service)
    view = await created(service, plan_yaml())
    rid = view["id"]
    await set_running(service, rid)
    sent = await dispatch(service, rid, count=3, reach=3)
    ok, bad = sent[0].device_id, sent[1].device_id
    await service.stores.rollout_devices.transition(rid, ok, DeviceEvent.SUCCESS)
    await service.stores.rollout_devices.transition(rid, bad, DeviceEvent.REJECTED)

    response = await service.client.get(f"{rollouts_url(service)}/{rid}")
    view = data_of(response)
    assert_view_adds_up(view)
    counts = {state: n for state, n in view["counts"].items() if n}
    assert counts == {"pending": 1, "sent": 1, "succeeded": 1, "rejected": 1}
    assert view["failure_rate"] == pytest.approx(0.5)
    assert view["waves"][0]["counts"]["pending"] == 0
    assert view["state"] == "running"


async def test_events_start_with_the_create_event(service: Service) -> None:
    await fleet(service, 2)
    await upload_firmware(service)
    view = await created(service, plan_yaml())
    await action(service, view["id"], "abort", reason="wrong build")
    response = await service.client.get(f"{rollouts_url(service)}/{view['id']}/events")
    assert response.json()["action"] == "list rollout events"
    create_event, abort_event = data_of(response)
    assert create_event["action"] == "create"
    assert create_event["to"] == "pending"
    assert create_event["actor"] == "admin"
    assert create_event["reason"] == "2 devices in 3 waves"
    assert abort_event["action"] == "abort"
    assert abort_event["from"] == "pending"
    assert abort_event["to"] == "aborted"
    assert abort_event["reason"] == "wrong build"


# -- operator actions --------------------------------------------------------------------------


async def action(
    service: Service, rollout_id: str, name: str, *, reason: str | None = None
) -> httpx.Response:
    url = f"{rollouts_url(service)}/{rollout_id}/{name}"
    if reason is None:
        return await service.client.post(url)
    return await service.client.post(url, json={"reason": reason})


async def test_pause_on_pending_is_409_naming_the_state(service: Service) -> None:
    await fleet(service, 1)
    await upload_firmware(service)
    view = await created(service, plan_yaml())
    response = await action(service, view["id"], "pause")
    assert response.status_code == 409, response.text
    body = response.json()
    assert body["action"] == "pause rollout"
    assert "cannot pause a rollout that is pending" in body["message"]
    assert "actions allowed now: abort" in body["message"]


async def test_abort_on_pending_frees_the_name_and_the_devices_at_once(service: Service) -> None:
    await fleet(service, 2)
    await upload_firmware(service)
    view = await created(service, plan_yaml())
    response = await action(service, view["id"], "abort")
    assert response.json()["action"] == "abort rollout"
    assert response.json()["message"] == "Abort applied; the rollout is aborted."
    aborted = data_of(response)
    assert aborted["state"] == "aborted"
    assert aborted["reason"] == "abort by admin"
    assert aborted["actions"] == []
    assert aborted["counts"]["cancelled"] == 2
    # The abort freed the devices in its own step: nothing is left for the engine to release.
    assert await service.stores.rollout_devices.release_devices(view["id"]) == 0
    again = await created(service, plan_yaml())
    assert again["id"] != view["id"]
    assert again["total"] == 2


async def test_actions_on_a_running_rollout(service: Service) -> None:
    await fleet(service, 2)
    await upload_firmware(service)
    rid = (await created(service, plan_yaml()))["id"]
    await set_running(service, rid)

    paused = await action(service, rid, "pause")
    assert paused.json()["action"] == "pause rollout"
    assert data_of(paused)["state"] == "paused"
    assert data_of(paused)["actions"] == ["resume", "abort"]
    resumed = await action(service, rid, "resume", reason="fixed the broker")
    assert resumed.json()["action"] == "resume rollout"
    assert data_of(resumed)["state"] == "running"
    assert data_of(resumed)["reason"] == "fixed the broker"

    promote = await action(service, rid, "promote")
    assert promote.status_code == 409, promote.text
    assert "cannot promote a rollout that is running" in promote.json()["message"]
    rollback = await action(service, rid, "rollback")
    assert rollback.status_code == 409, rollback.text
    assert rollback.json()["action"] == "rollback rollout"
    assert "has no rollback section" in rollback.json()["message"]
    current = await service.client.get(f"{rollouts_url(service)}/{rid}")
    assert data_of(current)["state"] == "running"


async def test_rollback_with_a_rollback_section_moves_to_rolling_back(service: Service) -> None:
    await fleet(service, 2)
    await upload_firmware(service, FIRMWARE, OLD_FIRMWARE)
    view = await created(service, plan_yaml(rollback=True))
    assert view["rollback"] == {"file": OLD_FIRMWARE, "version": None}
    await set_running(service, view["id"])
    response = await action(service, view["id"], "rollback")
    assert response.json()["action"] == "rollback rollout"
    assert data_of(response)["state"] == "rolling_back"
    assert data_of(response)["actions"] == ["abort"]


async def test_an_action_body_with_unknown_fields_is_400(service: Service) -> None:
    await fleet(service, 1)
    await upload_firmware(service)
    rid = (await created(service, plan_yaml()))["id"]
    url = f"{rollouts_url(service)}/{rid}/abort"
    response = await service.client.post(url, json={"why": "x"})
    assert response.status_code == 400, response.text
    assert data_of(await service.client.get(f"{rollouts_url(service)}/{rid}"))["state"] == (
        "pending"
    )


async def test_action_on_unknown_rollout_is_404(service: Service) -> None:
    response = await action(service, "no-such-rollout", "resume")
    assert response.status_code == 404, response.text
    assert response.json()["action"] == "resume rollout"


# -- limits, scopes and the document -----------------------------------------------------------


async def test_a_plan_over_1_mib_is_413(service: Service) -> None:
    text = plan_yaml() + "#" * (1024 * 1024)
    response = await create(service, text)
    assert response.status_code == 413, response.text


async def test_a_body_that_is_not_yaml_or_json_is_400(service: Service) -> None:
    response = await service.client.post(
        rollouts_url(service), content=plan_yaml(), headers={"Content-Type": "image/png"}
    )
    assert response.status_code == 400, response.text
    assert "application/yaml" in response.json()["message"]


async def test_read_scope_can_list_but_not_create(service: Service) -> None:
    await fleet(service, 1)
    await upload_firmware(service)
    key = await service.create_key(Scope.ROLLOUTS_READ)
    headers = {"Authorization": f"Bearer {key}"}
    listing = await service.client.get(rollouts_url(service), headers=headers)
    assert listing.status_code == 200, listing.text
    response = await service.client.post(
        rollouts_url(service), content=plan_yaml(), headers={**headers, **YAML}
    )
    assert response.status_code == 403, response.text
    assert "rollouts:write" in response.json()["message"]
    assert data_of(await service.client.get(rollouts_url(service))) == []


async def test_openapi_documents_the_plan_body_in_every_media_type_it_takes(
    service: Service,
) -> None:
    document = (await service.client.get("/openapi.json")).json()
    operation = document["paths"]["/v2/projects/{project_id}/rollouts"]["post"]
    content = operation["requestBody"]["content"]
    ref = {"$ref": "#/components/schemas/RolloutPlan"}
    media_types = [*PLAN_MEDIA_TYPES, "application/json"]
    assert content == {media_type: {"schema": ref} for media_type in media_types}
    assert next(iter(content)) == "application/yaml"
    schemas = document["components"]["schemas"]
    assert {"name", "firmware", "waves", "policy"} <= set(schemas["RolloutPlan"]["properties"])
    assert "bake" in schemas["WaveSpec"]["properties"]
    assert {"200", "201", "400", "409", "413"} <= set(operation["responses"])
    serialized = json.dumps(document)
    assert "#/$defs/" not in serialized
    paths = document["paths"]
    for name in ("pause", "resume", "promote", "abort", "rollback"):
        post = paths[f"/v2/projects/{{project_id}}/rollouts/{{rollout_id}}/{name}"]["post"]
        assert "409" in post["responses"]
