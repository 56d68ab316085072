"""GET /metrics tells the truth: rollout gauges from Redis, route templates, no device ids."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.domain.sprt import sprt_for
from orchestrator.domain.states import DeviceState, RolloutState
from orchestrator.embedded import free_port
from orchestrator.metrics import DOWNLOAD_REJECTIONS, Metrics
from orchestrator.service import serving
from orchestrator.settings import Settings
from tests.conftest import Service, wait_for
from tests.e2e.fleet import Fleet
from tests.e2e.test_rollouts import FIRMWARE, start, upload_both, view, wait_state
from tests.observability.conftest import Scrape, scrape

RETENTION_S = 4
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Finished rollouts leave the gauges after a few seconds rather than an hour."""
    return settings.model_copy(update={"metrics_retention_s": RETENTION_S})


def wave_sizes(rollout: dict[str, Any]) -> dict[str, int]:
    """Devices of each wave (the API gives the cumulative reach)."""
    sizes, before = {}, 0
    for wave in rollout["waves"]:
        sizes[wave["name"]] = wave["target"] - before
        before = wave["target"]
    return sizes


def check_adds_up(metrics: Scrape, rollout: dict[str, Any]) -> None:
    """Every wave's state gauges add up to its devices, all of them to the target."""
    devices = metrics.devices(rollout["id"])
    assert set(devices) == set(wave_sizes(rollout)), devices
    for wave, size in wave_sizes(rollout).items():
        assert set(devices[wave]) == {state.value for state in DeviceState}
        assert sum(devices[wave].values()) == size, (wave, devices[wave])
    assert sum(sum(states.values()) for states in devices.values()) == rollout["total"]
    assert len(metrics.rollout_state(rollout["id"])) == 1
    assert len(metrics.values("ota_rollout_state", rollout=rollout["id"])) == len(RolloutState)


async def test_device_gauges_add_up_to_the_target_per_wave_and_overall_at_every_scrape(
    service: Service, fleet: Fleet
) -> None:
    await upload_both(service)
    await fleet.add(10)
    await fleet.add(2, "fail")
    rollout = await start(
        service,
        """
name: gauges-2.1.0
firmware: {file: fw_2.1.0.bin, version: 2.1.0}
waves:
  - {name: canary, devices: 4}
  - {name: half, percent: 50}
  - {name: all, percent: 100}
policy: {max_failure_rate: 50%, min_devices: 4, max_in_flight: 3}
""",
    )
    scrapes = 0

    async def checked_until_completed() -> bool:
        nonlocal scrapes
        metrics = await scrape(service)
        scrapes += 1
        check_adds_up(metrics, rollout)
        return metrics.rollout_state(rollout["id"]) == ["completed"]

    await wait_for(checked_until_completed, timeout_s=30, interval_s=0.05)
    assert scrapes > 3  # the sums held mid-rollout too, not only at the end
    done = await view(service, rollout["id"])
    metrics = await scrape(service)
    devices = metrics.devices(rollout["id"])
    for wave in done["waves"]:
        assert devices[wave["name"]] == wave["counts"]  # the API's numbers, state by state
    ids = {"project": service.project_id, "rollout": rollout["id"]}
    assert metrics.value("ota_rollout_failure_rate", **ids) == pytest.approx(done["failure_rate"])
    assert metrics.value("ota_rollout_failure_threshold", **ids) == pytest.approx(0.5)
    assert done["failure_rate"] == pytest.approx(2 / 12)
    [(info, _)] = metrics.values("ota_rollout_info", **ids)
    assert info["name"] == "gauges-2.1.0"
    assert info["project_name"] == "test"
    assert metrics.values("ota_rollout_evidence_llr", **ids) == []  # no confidence, no test
    assert metrics.values("ota_rollout_evidence_bound", **ids) == []


async def test_a_rollout_with_confidence_shows_its_test_against_its_bounds(
    service: Service, fleet: Fleet
) -> None:
    """The gauges give the sequential test's log-likelihood ratio for the rollout's counts
    and its two bounds, as the domain computes them."""
    await upload_both(service)
    await fleet.add(6)
    await fleet.add(2, "fail")
    rollout = await start(
        service,
        """
name: evidence-2.1.0
firmware: {file: fw_2.1.0.bin, version: 2.1.0}
waves: [{name: all, percent: 100}]
policy: {max_failure_rate: 20%, confidence: 90%, min_devices: 8}
""",
    )

    async def ended() -> bool:
        return (await view(service, rollout["id"]))["state"] not in ("pending", "running")

    await wait_for(ended, timeout_s=30, interval_s=0.1)
    done = await view(service, rollout["id"])
    failed = sum(done["failures"].values())
    assert failed == 2
    finished = done["counts"]["succeeded"] + failed
    test = sprt_for(0.2, 0.9)
    metrics = await scrape(service)
    ids = {"project": service.project_id, "rollout": rollout["id"]}
    assert metrics.value("ota_rollout_evidence_llr", **ids) == pytest.approx(
        test.llr(finished, failed)
    )
    bounds = {
        labels["decision"]: value
        for labels, value in metrics.values("ota_rollout_evidence_bound", **ids)
    }
    assert bounds == pytest.approx({"halt": math.log(10), "pass": math.log(0.1)})


async def test_finished_rollouts_leave_after_the_retention_window_and_active_ones_stay(
    service: Service, fleet: Fleet
) -> None:
    await upload_both(service)
    await fleet.add(2, tags=["waiting"])
    await fleet.add(2, tags=["finishing"])
    waiting = await start(
        service,
        """
name: waiting-2.1.0
firmware: {file: fw_2.1.0.bin}
target: {tags: [waiting]}
waves:
  - {name: canary, devices: 1}
  - {name: rest, percent: 100, approval: manual}
""",
    )
    await wait_state(service, waiting["id"], "waiting_approval")
    finishing = await start(
        service,
        """
name: finishing-2.1.0
firmware: {file: fw_2.1.0.bin}
target: {tags: [finishing]}
waves: [{percent: 100}]
""",
    )
    await wait_state(service, finishing["id"], "completed")
    shown: list[str] = []

    async def finished_shown() -> bool:
        shown[:] = (await scrape(service)).rollout_state(finishing["id"])
        return shown == ["completed"]

    await wait_for(finished_shown, timeout_s=RETENTION_S, interval_s=0.05)

    async def finished_gone() -> bool:
        return not (await scrape(service)).values("ota_rollout_state", rollout=finishing["id"])

    await wait_for(finished_gone, timeout_s=RETENTION_S + 10, interval_s=0.2)
    metrics = await scrape(service)
    assert not metrics.values("ota_rollout_devices", rollout=finishing["id"])
    assert not metrics.values("ota_rollout_info", rollout=finishing["id"])
    # The waiting rollout last changed longer ago than the window, yet it is active: shown.
    changed = datetime.fromisoformat((await view(service, waiting["id"]))["updated_at"])
    assert (datetime.now(UTC) - changed).total_seconds() > RETENTION_S
    assert metrics.rollout_state(waiting["id"]) == ["waiting_approval"]
    check_adds_up(metrics, waiting)


async def route_templates(service: Service) -> set[str]:
    """Every path template the app routes (the OpenAPI document lists them all)."""
    response = await service.client.get("/openapi.json")
    assert response.status_code == 200, response.text
    return set(response.json()["paths"]) | {"/openapi.json"}


async def test_route_labels_are_templates_and_no_label_value_is_a_device_id(
    service: Service, fleet: Fleet
) -> None:
    await upload_both(service)
    devices = await fleet.add(4)
    rollout = await start(
        service, "name: labels-2.1.0\nfirmware: {file: fw_2.1.0.bin}\nwaves: [{percent: 100}]\n"
    )
    await wait_state(service, rollout["id"], "completed")
    device = devices[0]
    base = f"/v2/projects/{service.project_id}"
    assert (await service.client.get(f"{base}/devices/{device.id}")).status_code == 200
    assert (await service.client.get(f"{base}/rollouts/{rollout['id']}")).status_code == 200
    refused = await service.client.get(
        "/v2/device/download",
        params={"key": "dk_" + "x" * 32},
        headers={"Authorization": f"Basic {device.token}"},
    )
    assert refused.status_code == 401
    assert (await service.client.get(f"/no/such/{device.id}")).status_code == 404

    async def downloads_counted() -> bool:
        # A transfer is counted once its response has ended, a moment after the device has it.
        metrics = await scrape(service)
        served = metrics.value(
            "ota_http_requests_total", method="GET", route="/v2/device/download", status="200"
        )
        return metrics.value("ota_download_keys_used_total") == served == len(devices)

    await wait_for(downloads_counted, timeout_s=10)
    metrics = await scrape(service)
    routes = {labels["route"] for labels, _ in metrics.values("ota_http_requests_total")}
    assert routes <= await route_templates(service) | {"unmatched"}
    assert {
        "/v2/projects/{project_id}/devices/{device_id}",
        "/v2/projects/{project_id}/rollouts/{rollout_id}",
        "/v2/device/download",
        "/metrics",
        "unmatched",
    } <= routes
    assert metrics.value(
        "ota_http_requests_total", method="GET", route="unmatched", status="404"
    ) == pytest.approx(1)
    assert metrics.value("ota_http_request_duration_seconds_count", route="/metrics") >= 1

    device_ids = {d.id for d in fleet.devices.values()}
    for sample in metrics.samples:
        for value in sample.labels.values():
            assert not any(d in value for d in device_ids), (sample.name, sample.labels)
            assert not value.startswith("dk_"), (sample.name, sample.labels)
            assert not UUID.search(value) or sample.name.startswith("ota_rollout_"), sample

    # The download path's counters, exact for a rollout where every device succeeds.
    assert metrics.value("ota_download_keys_issued_total") == len(devices)
    assert metrics.value("ota_download_bytes_total") == len(devices) * len(FIRMWARE)
    assert metrics.value("ota_download_keys_rejected_total", reason="unknown") == 1
    assert {
        labels["reason"] for labels, _ in metrics.values("ota_download_keys_rejected_total")
    } == set(DOWNLOAD_REJECTIONS)
    results = metrics.value("ota_command_results_total", command="download_firmware")
    assert results >= 3 * len(devices)  # received, installing, success from each device
    assert metrics.value("ota_result_latency_seconds_count") == results
    assert metrics.value("ota_mqtt_connected") == 1
    assert metrics.value("ota_redis_up") == 1


async def test_a_scrape_without_redis_answers_with_redis_up_zero_and_no_rollout_gauges(
    settings: Settings,
) -> None:
    unreachable = settings.model_copy(
        update={"redis_url": f"redis://127.0.0.1:{free_port()}/0", "role": "api"}
    )
    async with (
        serving(unreachable),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{unreachable.http_port}") as client,
    ):
        response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    samples = [
        sample
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    ]
    metrics = Scrape(samples)
    assert metrics.value("ota_redis_up") == 0
    assert metrics.value("ota_mqtt_connected") == 1
    assert not metrics.values("ota_rollout_state")
    assert not metrics.values("ota_rollout_devices")


def test_result_latencies_of_a_batch_count_each_result_and_skip_unknown_send_times() -> None:
    metrics = Metrics(CollectorRegistry())
    now = datetime(2030, 1, 2, 3, 4, 10, tzinfo=UTC)
    metrics.observe_result_latencies(
        {"2030-01-02T03:04:05Z": 3, "2030-01-02T03:04:09Z": 1, "": 2}, now
    )
    metrics.observe_result_latency("2030-01-02T03:05:00Z", now)  # sent "later": latency 0
    registry = metrics.registry
    assert registry.get_sample_value("ota_result_latency_seconds_count") == 5
    assert registry.get_sample_value("ota_result_latency_seconds_sum") == 16
    buckets = {"0.5": 1, "1.0": 2, "2.5": 2, "5.0": 5}
    for le, count in buckets.items():
        assert registry.get_sample_value("ota_result_latency_seconds_bucket", {"le": le}) == count
