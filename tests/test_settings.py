"""Settings that are refused, each saying why and what to write instead."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from orchestrator.settings import Settings


def test_a_cluster_url_needs_a_hash_tagged_prefix_saying_so() -> None:
    with pytest.raises(ValidationError, match="has no hash tag") as caught:
        Settings(redis_url="redis+cluster://127.0.0.1:7000", redis_prefix="ota:")
    assert "OTA_REDIS_PREFIX={ota}:" in str(caught.value)
    tagged = Settings(redis_url="redis+cluster://127.0.0.1:7000", redis_prefix="{ota}:")
    assert tagged.redis_prefix == "{ota}:"


def test_download_offload_is_refused_until_it_is_built_rather_than_ignored() -> None:
    with pytest.raises(ValidationError, match="OTA_DOWNLOAD_OFFLOAD=x-accel is not available yet"):
        Settings(download_offload="x-accel")
