"""The FastAPI application: `create_app(settings)` with its collaborators built in its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import Depends, FastAPI
from prometheus_client import CollectorRegistry

from orchestrator import __version__
from orchestrator.api import (
    commands,
    devices,
    downloads,
    files,
    health,
    hooks,
    metrics_route,
    notifications,
    offload,
    projects,
    rollouts,
)
from orchestrator.api.body_guard import BodyGuard
from orchestrator.api.context import AppContext
from orchestrator.api.errors import install_error_handlers
from orchestrator.api.http_metrics import HttpMetricsMiddleware
from orchestrator.api.openapi import build_document
from orchestrator.api.query_params import refuse_unknown_query
from orchestrator.blobs import BlobStore
from orchestrator.engine.context import EngineContext
from orchestrator.engine.engine import Engine
from orchestrator.engine.plan_reader import PlanReader
from orchestrator.metrics import Metrics
from orchestrator.settings import Settings
from orchestrator.store import Stores
from orchestrator.store.redis import connect
from orchestrator.supervisor import spawn
from orchestrator.transport.dynsec import DeviceProvisioner, DynsecClient, reconcile_until_done
from orchestrator.transport.exposure import BrokerExposure, probe_until_answered
from orchestrator.transport.mqtt import CommandTransport

log = structlog.get_logger(__name__)

ROUTE_MODULES = (
    projects,
    devices,
    files,
    commands,
    rollouts,
    hooks,
    notifications,
    downloads,
    offload,
    health,
    metrics_route,
)
# An engine-only replica answers its probes and scrapes; the API is served by `api` replicas.
ENGINE_ROUTE_MODULES = (health, metrics_route)
_COLLECTED_AT_START: list[bool] = []  # not empty once an app of this process collected at start

DESCRIPTION = """
Ship firmware to device fleets safely. Users authenticate with `Authorization: Bearer QB_…`
(the bare key is accepted too); devices download with `Authorization: Basic {device_token}`.
Every error has the body `{success, status, action, message, errors}`; invalid input is 400,
and so is a query parameter the operation does not list. A listing without `limit` holds every
item (its `next_cursor`, if it has one, is null); with `limit`, it pages with `next_cursor`.
"""


def create_app(settings: Settings) -> FastAPI:
    """The API on the Redis and MQTT broker named by `settings` (both URLs must be set)."""
    if not settings.redis_url or not settings.mqtt_url:
        raise ValueError(
            "create_app needs OTA_REDIS_URL and OTA_MQTT_URL; `ota serve` starts embedded "
            "servers and fills them in when they are empty"
        )

    # Built with the app rather than in its lifespan: the HTTP middleware counts into it.
    metrics = Metrics(CollectorRegistry())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = connect(settings.redis_url)
        transport = CommandTransport(
            settings.mqtt_url,
            version=settings.mqtt_version,
            client_id=f"{settings.instance_id}-commands",
        )
        stores = Stores.build(redis, settings.redis_prefix)
        exposure = BrokerExposure()
        provisioner: DeviceProvisioner | None = None
        if settings.mqtt_provision == "dynsec" and settings.role != "engine":
            provisioner = DeviceProvisioner(
                DynsecClient(
                    settings.mqtt_url,
                    version=settings.mqtt_version,
                    client_id=f"{settings.instance_id}-dynsec",
                )
            )
        plans = PlanReader()
        app.state.context = AppContext(
            settings=settings,
            stores=stores,
            blobs=BlobStore(settings.files_dir),
            transport=transport,
            metrics=metrics,
            provisioner=provisioner,
            exposure=exposure,
            plans=plans,
        )
        await transport.start()
        await transport.wait_connected(timeout_s=5.0)
        # Does the broker let in a client with no credentials? /readyz and the log say.
        probing = spawn(
            functools.partial(
                probe_until_answered, settings.mqtt_url, settings.mqtt_version, exposure
            ),
            name="mqtt-anonymous-probe",
        )
        reconciling: asyncio.Task[None] | None = None
        if provisioner is not None:
            await provisioner.start()
            await provisioner.client.wait_ready(timeout_s=5.0)

            async def reconcile() -> None:
                await reconcile_until_done(provisioner, stores.devices.mqtt_device_ids)

            # Devices made before provisioning was on, or while the broker was away.
            reconciling = spawn(reconcile, name="dynsec-reconcile")
        app.state.reconciling = reconciling
        engine: Engine | None = None
        if settings.role in ("all", "engine"):
            engine = Engine(EngineContext(settings, stores, transport, metrics, plans=plans))
            await engine.start()
        app.state.engine = engine
        # What exists now (modules, the app, its clients) lives as long as the process: keep it
        # out of the collector's scans. Their full passes otherwise stall the event loop for a
        # fifth of a second while a big plan is checked, or while results pour in. The garbage
        # of the start is collected first, once per process: a process that starts app after
        # app (the tests) freezes the later ones as they are, and each unfreezes what it froze.
        if not _COLLECTED_AT_START:
            gc.collect()
            _COLLECTED_AT_START.append(True)
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()  # several apps in one process (tests) each free what they made
            if engine is not None:
                await engine.stop()
            for background in (reconciling, probing):
                if background is not None:
                    background.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await background
            if provisioner is not None:
                await provisioner.stop()
            await transport.stop()
            await redis.aclose()
            await plans.aclose()

    app = FastAPI(
        title="OTA rollout orchestrator",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        dependencies=[Depends(refuse_unknown_query)],
    )
    modules = ENGINE_ROUTE_MODULES if settings.role == "engine" else ROUTE_MODULES
    install_error_handlers(app, [route for module in modules for route in module.router.routes])
    app.add_middleware(BodyGuard)  # inside the metrics: its 401s and 413s are counted
    app.add_middleware(HttpMetricsMiddleware, metrics=metrics)
    for module in modules:
        app.include_router(module.router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_document(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
