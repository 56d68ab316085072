"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from orchestrator.api.context import AppContext, get_context
from orchestrator.api.schemas import Health
from orchestrator.errors import StoreUnavailable

router = APIRouter(tags=["health"])


@router.get("/healthz", name="check_health")
async def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get(
    "/readyz",
    name="check_readiness",
    responses={503: {"model": Health, "description": "Redis or MQTT unreachable"}},
)
async def readyz(context: AppContext = Depends(get_context)) -> JSONResponse:
    """Redis answers, the MQTT broker is connected (and dynamic security, when provisioning)."""
    try:
        redis_ok = await context.stores.ping()
    except StoreUnavailable:
        redis_ok = False
    mqtt_ok = await context.transport.ping()
    # With per-device broker accounts, a replica that cannot reach dynamic security would
    # refuse every device change: it is not ready.
    dynsec_ok = context.provisioner.client.ready if context.provisioner is not None else None
    ready = redis_ok and mqtt_ok and dynsec_ok is not False
    # A broker open to anonymous clients still carries commands: ready, with a warning.
    body = Health(
        status="ok" if ready else "unavailable",
        redis=redis_ok,
        mqtt=mqtt_ok,
        dynsec=dynsec_ok,
        mqtt_anonymous=context.exposure.anonymous,
        warnings=context.exposure.warnings,
    )
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
