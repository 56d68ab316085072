"""What the store tests share: a second replica's stores, and the rollout factory."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from orchestrator.settings import Settings
from orchestrator.store import Stores
from orchestrator.store.redis import connect
from tests.store.test_rollouts import create_rollout

__all__ = ["create_rollout", "replica"]  # create_rollout: the rollout factory, for every module


@pytest.fixture
async def replica(clean: Stores, settings: Settings) -> AsyncIterator[Stores]:
    """Stores of a second replica: the same prefix over its own connections."""
    redis = connect(settings.redis_url)
    yield Stores.build(redis, clean.keys.prefix)
    await redis.aclose()
