"""What the engine tests share: a command transport, and rollouts written straight to the store."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from orchestrator.domain.files import FileType
from orchestrator.embedded import EmbeddedBroker
from orchestrator.store import Stores
from orchestrator.store.files import StoredFile
from orchestrator.transport.mqtt import CommandTransport

WAIT_S = 10.0
AT = "2030-01-02T03:04:05Z"
FIRMWARE = "fw_2.1.0.bin"
PLAN: dict[str, Any] = {
    "name": "fw-2.1.0",
    "firmware": {"file": FIRMWARE, "version": "2.1.0"},
    "waves": [{"percent": 100}],
}


@pytest.fixture
async def transport(mqtt_broker: EmbeddedBroker) -> AsyncIterator[CommandTransport]:
    commands = CommandTransport(mqtt_broker.url, client_id=f"test-{uuid.uuid4().hex[:8]}")
    await commands.start()
    assert await commands.wait_connected(WAIT_S)
    yield commands
    await commands.stop()


async def stored_rollout(
    stores: Stores, devices: list[str], plan: dict[str, Any] = PLAN
) -> tuple[str, str]:
    """A pending rollout of `devices` with `plan` as stored, its firmware uploaded in a
    project of its own; (rollout id, project id)."""
    project_id = f"p-{uuid.uuid4().hex[:8]}"
    await stores.files.create(
        StoredFile(
            project_id=project_id,
            name=FIRMWARE,
            type=FileType.FIRMWARE,
            description="",
            size=4096,
            sha256="0" * 64,
            time=AT,
            path="unused",
        )
    )
    rollout_id, _ = await stores.rollouts.create(
        project_id=project_id,
        name=f"ro-{uuid.uuid4().hex[:8]}",
        plan=plan,
        device_ids=devices,
        reach=[len(devices)],
        created_at=AT,
        created_by="test",
    )
    return rollout_id, project_id
