"""Results that arrive while Redis is away are applied once it is back: none acknowledged unread.

Redis here is a redis-server of this module's own, stopped and started again on the same port
with its append-only file, as a restart or a failover behind one address looks to the service.
"""

from __future__ import annotations

import asyncio

from tests.conftest import Service, wait_for
from tests.e2e.fleet import Fleet
from tests.e2e.servers import RestartableRedis, own_redis, redis_url
from tests.e2e.test_rollouts import start, upload_both, wait_state

PLAN = """
name: outage
firmware: {file: fw_2.1.0.bin, version: 2.1.0}
waves: [{percent: 100}]
policy: {max_failure_rate: 5%, ack_timeout: 120s, device_timeout: 300s}
"""
__all__ = ["own_redis", "redis_url"]  # the module's fixtures: every part on its own Redis


async def test_results_sent_while_redis_is_down_are_applied_when_it_is_back(
    service: Service, fleet: Fleet, own_redis: RestartableRedis
) -> None:
    await upload_both(service)
    devices = await fleet.add(12)
    for device in devices:
        device.latency_s = 1.0  # after its download, a device reports 1 s and 2 s later
    rollout_id = (await start(service, PLAN))["id"]

    async def all_downloaded() -> bool:
        return all(device.installed for device in devices)

    await wait_for(all_downloaded, timeout_s=30, interval_s=0.02)
    # Off the event loop: the devices, the API and the engine keep running while Redis stops.
    await asyncio.to_thread(own_redis.stop)  # their later results go out while Redis is away

    async def all_reported() -> bool:
        return all(
            fleet.results[d.id] and fleet.results[d.id][-1]["status"] == "success" for d in devices
        )

    await wait_for(all_reported, timeout_s=30, interval_s=0.1)
    assert await view_fails(service, rollout_id)  # Redis really is away
    await asyncio.to_thread(own_redis.start)
    done = await wait_state(service, rollout_id, "completed", timeout_s=60)
    assert done["counts"]["succeeded"] == 12, done["counts"]


async def view_fails(service: Service, rollout_id: str) -> bool:
    """True when the API cannot read the rollout: 503 (Redis unreachable), saying when to ask
    again (Retry-After, in seconds)."""
    response = await service.client.get(f"/v2/projects/{service.project_id}/rollouts/{rollout_id}")
    return response.status_code == 503 and response.headers.get("retry-after", "").isdigit()
