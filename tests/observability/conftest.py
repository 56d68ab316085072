"""The whole service (API and engine) on real Redis and its own mosquitto, and a device fleet.

The fixtures are those of tests/e2e, and `scrape` reads GET /metrics as Prometheus would.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.conftest import Service
from tests.e2e.conftest import fleet, mqtt_broker, settings

__all__ = ["Scrape", "fleet", "mqtt_broker", "scrape", "settings"]


@dataclass(frozen=True)
class Scrape:
    """One exposition, parsed."""

    samples: list[Sample]

    def values(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        """(labels, value) of every sample called `name` carrying these label values."""
        return [
            (s.labels, s.value)
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples `values(name, **labels)` finds (0 when there is none)."""
        return sum(value for _, value in self.values(name, **labels))

    def devices(self, rollout_id: str) -> dict[str, dict[str, float]]:
        """`ota_rollout_devices` of one rollout as {wave: {state: n}}."""
        waves: dict[str, dict[str, float]] = defaultdict(dict)
        for labels, value in self.values("ota_rollout_devices", rollout=rollout_id):
            waves[labels["wave"]][labels["state"]] = value
        return dict(waves)

    def rollout_state(self, rollout_id: str) -> list[str]:
        """The states `ota_rollout_state` marks 1 for the rollout (exactly one when shown)."""
        return [
            labels["state"]
            for labels, value in self.values("ota_rollout_state", rollout=rollout_id)
            if value == 1
        ]


async def scrape(service: Service) -> Scrape:
    """GET /metrics, parsed."""
    response = await service.client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    families = text_string_to_metric_families(response.text)
    return Scrape([sample for family in families for sample in family.samples])
