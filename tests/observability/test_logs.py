"""Every rollout state change is one log line with the rollout id and the figures behind it."""

from __future__ import annotations

import structlog
from structlog.testing import capture_logs

from tests.conftest import Service
from tests.e2e.fleet import Fleet
from tests.e2e.test_rollouts import start, upload_both, wait_state

CHANGE_EVENTS = ("rollout created", "rollout state changed")


async def test_every_rollout_state_change_logs_one_line_with_its_figures(
    service: Service, fleet: Fleet
) -> None:
    await upload_both(service)
    fleet.broken_files.add("fw_2.1.0.bin")
    await fleet.add(6)
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        rollout = await start(
            service,
            """
name: logged-2.1.0
firmware: {file: fw_2.1.0.bin, version: 2.1.0}
waves: [{name: canary, devices: 2}, {percent: 100}]
policy: {max_failure_rate: 10%, min_devices: 2, max_in_flight: 2, on_failure: halt}
""",
        )
        await wait_state(service, rollout["id"], "halted")
        response = await service.client.post(
            f"/v2/projects/{service.project_id}/rollouts/{rollout['id']}/abort",
            json={"reason": "bad build"},
        )
        assert response.status_code == 200, response.text
    events = (
        await service.client.get(
            f"/v2/projects/{service.project_id}/rollouts/{rollout['id']}/events"
        )
    ).json()["data"]
    changes = [e for e in events if e.get("to")]
    assert [e["to"] for e in changes] == ["pending", "running", "halted", "aborted"]
    lines = [
        entry
        for entry in logs
        if entry["event"] in CHANGE_EVENTS and entry.get("rollout_id") == rollout["id"]
    ]
    assert [(line.get("from_state"), line["to_state"]) for line in lines] == [
        (change.get("from"), change["to"]) for change in changes
    ]
    created, _, halted, aborted = lines
    assert created["devices"] == 6
    assert created["wave_reach"] == [2, 6]
    assert halted["failure_rate"] > 0.1
    assert halted["max_failure_rate"] == 0.1
    assert halted["failed"] >= 2
    assert halted["finished"] == halted["failed"]
    assert halted["wave"] == "canary"
    assert aborted["actor"] == "admin"
    assert aborted["reason"] == "bad build"
    assert aborted["failure_rate"] == halted["failure_rate"]
    assert sum(aborted["counts"].values()) == 6
