"""End-to-end fixtures: the whole service (API and engine) and a fleet of MQTT devices.

Each test gets its own mosquitto: the engine keeps a persistent session in the shared group
`ota-engine`, and a session left by an earlier test would otherwise be handed a share of the
next test's results.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from orchestrator.embedded import EmbeddedBroker
from orchestrator.settings import Settings
from tests.conftest import Service
from tests.e2e.engines import Engines
from tests.e2e.fleet import Fleet


@pytest.fixture
def mqtt_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A mosquitto of this test's own."""
    with EmbeddedBroker(tmp_path / "mqtt", kind="mosquitto").start() as broker:
        yield broker


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The API and the rollout engine in one process, as `ota serve` runs them."""
    return settings.model_copy(update={"role": "all"})


@pytest.fixture
async def fleet(service: Service, mqtt_broker: EmbeddedBroker) -> AsyncIterator[Fleet]:
    """Devices of the test project, answering commands through one wildcard MQTT client."""
    async with Fleet(service, mqtt_broker.port) as devices:
        yield devices


@pytest.fixture
async def engines(service: Service, tmp_path: Path) -> AsyncIterator[Engines]:
    """Engine processes of this test, all killed at teardown."""
    made = Engines(service, tmp_path / "engines")
    made.data_dir.mkdir()
    try:
        yield made
    finally:
        await made.close()
