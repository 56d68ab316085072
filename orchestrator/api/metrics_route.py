"""`GET /metrics`: the Prometheus exposition of this process."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from orchestrator.api.context import AppContext, get_context

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    name="read_metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
async def read_metrics(context: AppContext = Depends(get_context)) -> Response:
    """Counters and gauges in the Prometheus text format."""
    context.metrics.mqtt_connected.set(1 if context.transport.connected else 0)
    return Response(generate_latest(context.metrics.registry), media_type=CONTENT_TYPE_LATEST)
