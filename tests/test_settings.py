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


def test_download_offload_needs_a_long_secret_and_says_how_to_make_one() -> None:
    for secret in ("", "short"):
        with pytest.raises(ValidationError, match="needs OTA_DOWNLOAD_OFFLOAD_SECRET") as caught:
            Settings(download_offload="x-accel", download_offload_secret=secret)
        assert "openssl rand -hex 32" in str(caught.value)
    accepted = Settings(download_offload="x-accel", download_offload_secret="s" * 32)
    assert accepted.download_offload == "x-accel"
    assert accepted.download_offload_prefix == "/_ota_files/"


@pytest.mark.parametrize("prefix", ["", "/", "_ota_files/", "/_ota_files", "/a b/", "/f?x/"])
def test_download_offload_prefix_must_be_a_path_between_slashes(prefix: str) -> None:
    with pytest.raises(ValidationError, match="OTA_DOWNLOAD_OFFLOAD_PREFIX must be") as caught:
        Settings(download_offload_prefix=prefix)
    assert repr(prefix) in str(caught.value)
    assert Settings(download_offload_prefix="/internal/ota-files/").download_offload_prefix
