"""Devices that stall mid-download, alone: one rollout, the service and engine in one process.

A device stalls when it stops reading part-way through its firmware and holds the connection
open, or hangs up, for a while. The service ends a transfer that has sent nothing for half
its key's claim lease and frees the claim without spending the key, so the device resumes
with Range on the same key; a device still stalled when its device_timeout comes is
timed_out. The fault suite (test_faults.py) puts one such stall among its other faults.
"""

from __future__ import annotations

import os
from typing import Any, cast

import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.client import ApiClient
from orchestrator.embedded import EmbeddedBroker
from orchestrator.simulator import Fleet, Stall
from orchestrator.store import download_keys
from tests.conftest import Service, wait_for
from tests.e2e.test_rollouts import view, wait_state

# Socket buffers on loopback take at most about 4.5 MiB of a download whose device stops
# reading: the service's send buffer (up to 4 MiB) and the simulated device's fixed receive
# buffer (simulator.download.RECEIVE_BUFFER_BYTES; one the kernel grew took a whole image under
# load, and the service saw no stall). With 12 MiB and stalls at most 30% of the way, the
# service always has bytes left that it cannot send, so a stall is a stall on both ends.
FIRMWARE = os.urandom(12 * 1024 * 1024)
# The product's claim lease is 60 s: a transfer that sends nothing for half of it (30 s) is
# ended and its key's claim freed. Here the lease is 2 s, so a stall is ended after 1 s.
STALL_LEASE_MS = 2000
PLAN = """
name: stalls
firmware: {file: fw_3.1.0.bin, version: 3.1.0}
waves: [{percent: 100}]
policy:
  max_failure_rate: 30%
  min_devices: 4
  ack_timeout: 5s
  device_timeout: 5s
"""


async def key_events(service: Service, key: str) -> list[str]:
    """The events of one download key (claimed, delivered), oldest first."""
    stores = service.stores
    entries: list[tuple[str, dict[str, str]]] = cast(
        Any, await stores.redis.xrange(stores.keys.download_events())
    )
    return [entry["event"] for _, entry in entries if entry.get("key") == key]


async def results_handled(service: Service) -> dict[str, float]:
    """The engine's ota_command_results_total by status (the engine runs in the service)."""
    exposition = (await service.client.get("/metrics")).text
    handled: dict[str, float] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == "ota_command_results_total":
                status = sample.labels["status"]
                handled[status] = handled.get(status, 0) + sample.value
    return handled


@pytest.mark.timeout(120)
async def test_devices_that_stall_mid_download_resume_with_the_same_key_or_time_out(
    service: Service, mqtt_broker: EmbeddedBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three of four devices stop reading a quarter of the way through the firmware: one holds
    its connection open for 2.5 s, one hangs up and comes back after 2.5 s, one holds it open
    for 7 s, past its device_timeout (5 s). The service ends the stalled transfers and frees
    their keys, so the first two resume with Range on the same key, which is spent once, by the
    transfer that completes; the third is timed_out, its key revoked, and its late answer
    changes nothing."""
    monkeypatch.setattr(download_keys, "CLAIM_LEASE_MS", STALL_LEASE_MS)
    assert (await service.upload("fw_3.1.0.bin", FIRMWARE)).status_code == 201
    api = ApiClient(service.base_url, service.admin_key, service.project_id)
    fleet = Fleet(api, "127.0.0.1", mqtt_broker.port, name_prefix="stall")
    async with api, fleet:
        await fleet.start(4)
        held, hung_up, too_long, healthy = fleet.devices
        held.stall_next_download(Stall(at=0.25, for_s=2.5))
        hung_up.stall_next_download(Stall(at=0.25, for_s=2.5, hangup=True))
        too_long.stall_next_download(Stall(at=0.25, for_s=7))
        response = await service.client.post(
            f"/v2/projects/{service.project_id}/rollouts",
            content=PLAN,
            headers={"Content-Type": "application/yaml"},
        )
        assert response.status_code == 201, response.text
        rollout_id = response.json()["data"]["id"]
        done = await wait_state(service, rollout_id, "completed", "halted", timeout_s=60)

        async def late_answer_handled() -> bool:
            return (await results_handled(service)).get("failed", 0) >= 1

        await wait_for(late_answer_handled, timeout_s=30, interval_s=0.2)
        stats = fleet.stats

    context = {"reason": done["reason"], "counts": done["counts"], "stats": stats.as_dict()}
    assert done["state"] == "completed", context
    assert {s: n for s, n in done["counts"].items() if n} == {"succeeded": 3, "timed_out": 1}
    assert sum(done["counts"].values()) == done["total"] == 4
    devices = [held, hung_up, too_long, healthy]
    records = await service.stores.rollout_devices.device_states(
        rollout_id, [d.id for d in devices]
    )
    assert [r["state"] for r in records] == ["succeeded", "succeeded", "timed_out", "succeeded"]
    assert [r.get("attempts") for r in records] == ["1"] * 4  # one command id each
    assert stats.commands == 4, context  # nobody obeyed a command twice
    assert stats.stalled_downloads == 3, context
    assert stats.checksum_failures == stats.size_mismatches == 0, context
    events = [await key_events(service, r["key"]) for r in records]
    # Held open: the service ended the stalled transfer before the device read again (else the
    # device would have read on to the end of it), so the resume claimed the key a second time.
    assert events[0] == ["claimed", "claimed", "delivered"], events
    assert events[1] == ["claimed", "claimed", "delivered"], events
    assert events[2] == ["claimed"], events  # never delivered
    assert await service.stores.download_keys.state(records[2]["key"]) is None  # revoked
    assert events[3] == ["claimed", "delivered"], events
    # The late answer (its key was gone), published again for each copy of the command the
    # engine sent while the device was silent.
    assert stats.results["failed"] >= 1, context
    assert (await view(service, rollout_id))["counts"] == done["counts"]  # and it moved nothing
