"""Retiring an engine replica that is gone for good: its waiting results applied, its session ended.

Mosquitto hands each member of the shared subscription its share of the results, connected or
not: a replica that never comes back (scaled down, its host lost) keeps collecting results in
its persistent session until the session expires, and those devices would end by timeouts.
Retiring it takes its session over under its client id, applies every result waiting there
(through the same tracker as the engine), then ends the session, which takes it out of the
shared group. The replica must be stopped first: it must hold no rollout lease.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog
from prometheus_client import CollectorRegistry

from orchestrator.engine.context import EngineContext
from orchestrator.engine.tracker import Tracker
from orchestrator.errors import Conflict
from orchestrator.metrics import Metrics
from orchestrator.settings import Settings
from orchestrator.store import Stores
from orchestrator.transport.clients import end_session
from orchestrator.transport.mqtt import CommandTransport
from orchestrator.transport.results import ParsedResult, ResultSubscriber, results_client_id

log = structlog.get_logger(__name__)

IDLE_S = 2.0  # the session is drained once no result came for this long
DRAIN_LIMIT_S = 300.0  # at most this long taking results


async def _check_gone(stores: Stores, instance_id: str) -> None:
    for rollout_id in await stores.rollouts.active_ids():
        owner = await stores.leases.owner(rollout_id)
        if owner == instance_id:
            raise Conflict(
                f"engine {instance_id!r} holds the lease of rollout {rollout_id}: it is running, "
                "or died less than 15 s ago; stop it (or wait 15 s) and retire it again"
            )


async def retire(stores: Stores, settings: Settings, instance_id: str) -> int:
    """Apply the results waiting for a gone replica, end its session; how many were applied."""
    await _check_gone(stores, instance_id)
    context = EngineContext(
        settings,
        stores,
        # The tracker sends nothing; the context only needs a transport to be whole.
        CommandTransport(settings.mqtt_url, version=settings.mqtt_version),
        Metrics(CollectorRegistry()),
    )
    tracker = Tracker(context)
    handled = 0
    arrived = asyncio.Event()

    async def handle(batch: Sequence[ParsedResult]) -> None:
        nonlocal handled
        await tracker.on_results(batch)
        handled += len(batch)
        arrived.set()

    client_id = results_client_id(instance_id)
    subscriber = ResultSubscriber(
        settings.mqtt_url,
        version=settings.mqtt_version,
        client_id=client_id,
        handler=handle,
        shared=settings.mqtt_version == "5.0",
    )
    await subscriber.start()
    try:
        async with asyncio.timeout(DRAIN_LIMIT_S):
            while True:  # until no result came for IDLE_S
                arrived.clear()
                try:
                    await asyncio.wait_for(arrived.wait(), IDLE_S)
                except TimeoutError:
                    break
    except TimeoutError:
        log.warning("results still arriving; ending the session anyway", instance_id=instance_id)
    finally:
        await subscriber.stop()
    await end_session(settings.mqtt_url, client_id=client_id, version=settings.mqtt_version)
    log.info("engine replica retired", instance_id=instance_id, results_applied=handled)
    return handled
