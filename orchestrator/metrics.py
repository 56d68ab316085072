"""Prometheus metrics (ARCHITECTURE §9), defined once, on a registry the caller gives."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class Metrics:
    """The process's counters and gauges; no device id is ever a label."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.commands_sent = Counter(
            "ota_commands_sent_total",
            "Commands published to devices",
            ["command"],
            registry=registry,
        )
        self.command_results = Counter(
            "ota_command_results_total",
            "Results devices reported, by command and status",
            ["command", "status"],
            registry=registry,
        )
        self.results_ignored = Counter(
            "ota_results_ignored_total",
            "Results that changed nothing: malformed, unknown, forged, late or duplicate",
            ["reason"],
            registry=registry,
        )
        self.rollout_halts = Counter(
            "ota_rollout_halts_total", "Rollouts stopped by their failure policy", registry=registry
        )
        self.rollbacks = Counter(
            "ota_rollbacks_total", "Rollouts that started rolling back", registry=registry
        )
        self.mqtt_connected = Gauge(
            "ota_mqtt_connected", "1 while the MQTT broker connection is up", registry=registry
        )
