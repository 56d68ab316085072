"""Prometheus metrics (ARCHITECTURE §9), defined once, on a registry the caller gives.

Two kinds live here. Process counters and histograms (commands, results, HTTP requests,
download keys) count what this replica did; sum them over replicas. Rollout gauges are read
from Redis at scrape time (`RolloutSample`, prepared by `GET /metrics`), so every replica
reports the same numbers: aggregate them with `max by (...)`, never `sum`, across replicas.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from orchestrator.domain.plans import FailureType
from orchestrator.domain.states import HEALTH_EVENTS, RESULT_EVENTS, DeviceState, RolloutState

# Seconds from a command's send to a result about it: an acknowledgement within a second, a
# firmware install within minutes, a slow cellular device within the 30-minute key lifetime.
RESULT_LATENCY_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
ROLLOUT_COMMAND = "download_firmware"  # what rollouts send; its series are made at start
UNMATCHED_ROUTE = "unmatched"  # the route label of a request no route matched (404)

# Why `GET /v2/device/download` refused a request (the `reason` of ota_download_keys_rejected).
WEBHOOK_RESULTS = (
    "accepted",  # a new deploy request, handed to the engine
    "duplicate",  # a delivery id seen in the last 24 h: answered with the same rollout
    "ignored",  # signed, but nothing to deploy (a ping, a release not published)
    "unauthorized",  # a missing, wrong or stale signature
    "invalid",  # signed, but not a deploy this hook can start
    "started",  # the engine created the rollout
    "failed",  # the engine could not create it (the reason is on the delivery)
)
NOTICE_RESULTS = ("delivered", "retrying", "failed")
DOWNLOAD_REJECTIONS = (
    "device_auth",  # no or unknown device token
    "unknown",  # never issued, expired or revoked
    "spent",  # every byte was delivered already
    "wrong_device",  # the key belongs to another device
    "busy",  # another transfer holds the key
    "exhausted",  # the key sent what one key may ever send (twice the file)
    "file_missing",  # the file was deleted after the command
    "file_changed",  # the file's name now holds other bytes than the command announced
    "bad_range",  # a Range header outside the file
)


@dataclass(frozen=True, slots=True)
class WaveSample:
    """One wave of a rollout: its name and its devices by state (every device state)."""

    name: str
    counts: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class RolloutSample:
    """What the rollout gauges show of one rollout, read from Redis in one step."""

    project: str
    project_name: str
    rollout: str
    name: str
    state: str
    failure_rate: float
    failure_threshold: float
    last_result_at_s: float  # the latest result, or the latest state change when later
    waves: Sequence[WaveSample]
    failures: Mapping[str, int] = field(default_factory=dict)  # judged failures by type
    # with policy.confidence: the sequential test of max_failure_rate (llr, halt_at, pass_at)
    evidence: tuple[float, float, float] | None = None


def rollout_families(samples: Iterable[RolloutSample]) -> list[Metric]:
    """The rollout gauges of one scrape.

    `ota_rollout_state` has one series per state, 1 for the current one and 0 for the others
    (as kube-state-metrics does), so `== 1` selects and `sum by (state)` counts rollouts.
    `ota_rollout_devices` has a series for every wave and device state, zeros included: a
    wave's series add up to the devices of that wave, all of them to the rollout's target.
    """
    devices = GaugeMetricFamily(
        "ota_rollout_devices",
        "Devices of a rollout by wave and device state (read from Redis at scrape time)",
        labels=["project", "rollout", "wave", "state"],
    )
    failures = GaugeMetricFamily(
        "ota_rollout_failures",
        "Failures the failure policy counts, by failure type (unhealthy and reverted come from "
        "the health soak), zeros included",
        labels=["project", "rollout", "type"],
    )
    failure_rate = GaugeMetricFamily(
        "ota_rollout_failure_rate",
        "Failures / finished devices of a rollout, as its failure policy judges it",
        labels=["project", "rollout"],
    )
    threshold = GaugeMetricFamily(
        "ota_rollout_failure_threshold",
        "The plan's max_failure_rate: over it the rollout halts or rolls back",
        labels=["project", "rollout"],
    )
    state = GaugeMetricFamily(
        "ota_rollout_state",
        "1 for the rollout's current state, 0 for every other state",
        labels=["project", "rollout", "state"],
    )
    last_result = GaugeMetricFamily(
        "ota_rollout_last_result_timestamp_seconds",
        "Unix time of the latest device result about the rollout, or of its latest state "
        "change when that is later (a rollout that just started or resumed is not silent)",
        labels=["project", "rollout"],
    )
    llr = GaugeMetricFamily(
        "ota_rollout_evidence_llr",
        "With policy.confidence: the log-likelihood ratio of the sequential test of "
        "max_failure_rate (at or over the halt bound the rollout halts; at or under the pass "
        "bound the limit is passed)",
        labels=["project", "rollout"],
    )
    bound = GaugeMetricFamily(
        "ota_rollout_evidence_bound",
        "With policy.confidence: the bounds of the sequential test of max_failure_rate, "
        "decision=halt (ln(1/(1-C))) and decision=pass (ln(1-C))",
        labels=["project", "rollout", "decision"],
    )
    info = GaugeMetricFamily(
        "ota_rollout_info",
        "Always 1: the names behind a rollout's project and rollout ids",
        labels=["project", "rollout", "name", "project_name"],
    )
    for sample in samples:
        ids = [sample.project, sample.rollout]
        for wave in sample.waves:
            for device_state in DeviceState:
                devices.add_metric(
                    [*ids, wave.name, device_state.value], wave.counts.get(device_state.value, 0)
                )
        for kind in FailureType:
            failures.add_metric([*ids, kind.value], sample.failures.get(kind.value, 0))
        failure_rate.add_metric(ids, sample.failure_rate)
        threshold.add_metric(ids, sample.failure_threshold)
        for rollout_state in RolloutState:
            state.add_metric(
                [*ids, rollout_state.value], 1 if rollout_state.value == sample.state else 0
            )
        last_result.add_metric(ids, sample.last_result_at_s)
        if sample.evidence is not None:
            ratio, halt_at, pass_at = sample.evidence
            llr.add_metric(ids, ratio)
            bound.add_metric([*ids, "halt"], halt_at)
            bound.add_metric([*ids, "pass"], pass_at)
        info.add_metric([*ids, sample.name, sample.project_name], 1)
    return [devices, failures, failure_rate, threshold, state, last_result, llr, bound, info]


class _Scrape(Collector):
    """The registry's metrics followed by the rollout gauges read for this one scrape."""

    def __init__(self, registry: CollectorRegistry, extra: Sequence[Metric]) -> None:
        self._registry = registry
        self._extra = extra

    def collect(self) -> Iterator[Metric]:
        yield from self._registry.collect()
        yield from self._extra


def _counter_by(
    name: str, documentation: str, label: str, values: Iterable[str], registry: CollectorRegistry
) -> Counter:
    """A counter by one label, every one of `values` a series from the start (so rate() sees
    the first increase of each)."""
    counter = Counter(name, documentation, [label], registry=registry)
    for value in values:
        counter.labels(value)
    return counter


class Metrics:
    """The process's counters and gauges; no device id is ever a label."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        counter = functools.partial(Counter, registry=registry)
        gauge = functools.partial(Gauge, registry=registry)
        histogram = functools.partial(Histogram, registry=registry)
        self.commands_sent = counter(
            "ota_commands_sent_total", "Commands published to devices", ["command"]
        )
        self.command_results = counter(
            "ota_command_results_total",
            "Results devices reported, by command and status",
            ["command", "status"],
        )
        self.commands_resent = counter(
            "ota_commands_resent_total",
            "Commands sent again, same command id, to devices silent too long",
            ["command"],
        )
        # The rollout command's series exist from the start, so rate() sees its first batch.
        self.commands_sent.labels(ROLLOUT_COMMAND)
        self.commands_resent.labels(ROLLOUT_COMMAND)
        for status in (*RESULT_EVENTS, *HEALTH_EVENTS):  # health reports under a soak
            self.command_results.labels(ROLLOUT_COMMAND, status)
        self.result_latency = histogram(
            "ota_result_latency_seconds",
            "Time from a command's send to each result about it (send times have 1 s resolution)",
            buckets=RESULT_LATENCY_BUCKETS,
        )
        self.results_ignored = counter(
            "ota_results_ignored_total",
            "Results that changed nothing: malformed, unknown, forged, late or duplicate",
            ["reason"],
        )
        self.rollout_halts = counter(
            "ota_rollout_halts_total", "Rollouts stopped by their failure policy"
        )
        self.rollbacks = counter("ota_rollbacks_total", "Rollouts that started rolling back")
        self.download_keys_issued = counter(
            "ota_download_keys_issued_total", "Download keys created for commands and rollouts"
        )
        self.download_keys_used = counter(
            "ota_download_keys_used_total",
            "Download keys spent: every byte delivered (a resumed transfer counts once)",
        )
        self.download_keys_rejected = _counter_by(
            "ota_download_keys_rejected_total",
            "Download requests refused, by reason",
            "reason",
            DOWNLOAD_REJECTIONS,
            registry,
        )
        self.download_bytes = counter(
            "ota_download_bytes_total", "File bytes sent to devices by the download route"
        )
        self.webhook_deliveries = _counter_by(
            "ota_webhook_deliveries_total",
            "Deploy hook deliveries, by result",
            "result",
            WEBHOOK_RESULTS,
            registry,
        )
        self.notices = _counter_by(
            "ota_notifications_total",
            "Attempts to deliver rollout notifications to subscribers, by result",
            "result",
            NOTICE_RESULTS,
            registry,
        )
        self.http_requests = counter(
            "ota_http_requests_total",
            "HTTP requests by method, route template and status",
            ["method", "route", "status"],
        )
        self.http_request_duration = histogram(
            "ota_http_request_duration_seconds",
            "HTTP request time by method and route template, until the last body byte",
            ["method", "route"],
        )
        self.mqtt_connected = gauge(
            "ota_mqtt_connected",
            "1 while every MQTT connection of this process is up (set at scrape time)",
        )
        self.redis_up = gauge("ota_redis_up", "1 when Redis answered a PING at scrape time")

    def observe_result_latency(self, sent_at: str, now: datetime) -> None:
        """Time from `sent_at` (ISO 8601, as command records hold it) to `now`."""
        self.observe_result_latencies({sent_at: 1}, now)

    def observe_result_latencies(self, sent_ats: Mapping[str, int], now: datetime) -> None:
        """observe_result_latency for `count` results of each `sent_at`, each parsed once.

        A batch of results mostly answers commands sent together, in the same second.
        """
        for sent_at, count in sent_ats.items():
            try:
                sent = datetime.fromisoformat(sent_at)
            except ValueError:
                continue  # a record without a send time says nothing about latency
            latency_s = max(0.0, (now - sent).total_seconds())
            for _ in range(count):
                self.result_latency.observe(latency_s)

    def render(self, rollouts: Iterable[RolloutSample]) -> bytes:
        """The exposition text: this registry and the rollout gauges of `rollouts`."""
        return generate_latest(_Scrape(self.registry, rollout_families(rollouts)))
