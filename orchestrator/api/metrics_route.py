"""`GET /metrics`: the Prometheus exposition of this process, with rollout gauges read from Redis.

Prometheus collectors are synchronous, so the handler reads Redis first (a PING, then the
rollouts in one MULTI) and hands the prepared samples to `Metrics.render`: one scrape is one
consistent read, and every replica reports the same rollout numbers.
"""

from __future__ import annotations

import asyncio
import hmac
from datetime import datetime, timedelta

import structlog
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from orchestrator.api.context import AppContext, get_context
from orchestrator.api.errors import error_responses
from orchestrator.api.rollout_views import rollout_out, stored_plan
from orchestrator.domain.counters import tally_of
from orchestrator.domain.policy import limit_evidence
from orchestrator.domain.states import TERMINAL_ROLLOUT_STATES
from orchestrator.errors import StoreUnavailable, Unauthorized
from orchestrator.metrics import RolloutSample, WaveSample
from orchestrator.store import Stores
from orchestrator.store.rollouts import RolloutRecord
from orchestrator.timeutil import utc_now

log = structlog.get_logger(__name__)
router = APIRouter(tags=["health"], responses=error_responses(401))

REDIS_READ_TIMEOUT_S = 5.0  # well inside Prometheus's default 10 s scrape timeout
TERMINAL_VALUES = frozenset(state.value for state in TERMINAL_ROLLOUT_STATES)


def _parse_time(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


async def shown_rollouts(stores: Stores, retention_s: int, now: datetime) -> list[str]:
    """The active rollouts and the finished ones changed within the last `retention_s`."""
    active = await stores.rollouts.active_ids()
    project_ids = await stores.projects.ids()
    listed = await asyncio.gather(*(stores.rollouts.ids(pid) for pid in project_ids))
    candidates = sorted({rid for ids in listed for rid in ids} - set(active))
    cutoff = now - timedelta(seconds=retention_s)
    recent = []
    for rollout_id, head in zip(
        candidates, await stores.rollouts.state_times(candidates), strict=True
    ):
        if head is None:
            continue
        state, updated_at = head
        changed = _parse_time(updated_at)
        # Only finished rollouts leave the active set; anything else outside it is shown too.
        if state not in TERMINAL_VALUES or (changed is not None and changed >= cutoff):
            recent.append(rollout_id)
    return [*active, *recent]


def _sample(record: RolloutRecord, counts: dict[str, int], project_name: str) -> RolloutSample:
    plan = stored_plan(record)
    view = rollout_out(record, counts, plan)  # the API's own per-wave counts and failure rate
    tally = tally_of(counts)
    evidence = limit_evidence(plan.policy, tally.finished, tally.failed)
    changed = _parse_time(record.updated_at)
    last_result_s = record.last_result_ms / 1000
    if changed is not None:
        last_result_s = max(last_result_s, changed.timestamp())
    return RolloutSample(
        project=record.project_id,
        project_name=project_name,
        rollout=record.id,
        name=record.name,
        state=record.state.value,
        failure_rate=view.failure_rate,
        failure_threshold=view.max_failure_rate,
        last_result_at_s=last_result_s,
        waves=[WaveSample(name=wave.name, counts=wave.counts) for wave in view.waves],
        failures=view.failures,
        evidence=None if evidence is None else (evidence.llr, evidence.halt_at, evidence.pass_at),
    )


async def rollout_samples(stores: Stores, retention_s: int) -> list[RolloutSample]:
    """Every shown rollout with its counts, as of one MULTI read."""
    ids = await shown_rollouts(stores, retention_s, utc_now())
    snapshots = await stores.rollouts.snapshots(ids)
    project_ids = sorted({record.project_id for record, _ in snapshots})
    projects = await asyncio.gather(*(stores.projects.get(pid) for pid in project_ids))
    names = {
        pid: project.name for pid, project in zip(project_ids, projects, strict=True) if project
    }
    return [_sample(r, counts, names.get(r.project_id, "")) for r, counts in snapshots]


def _check_token(header: str, token: str) -> None:
    if not token:
        return
    scheme, _, given = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        raise Unauthorized(
            "/metrics needs 'Authorization: Bearer <OTA_METRICS_TOKEN>'; give Prometheus the "
            "token (authorization.credentials_file in its scrape config)"
        )


def _mqtt_connected(request: Request, context: AppContext) -> bool:
    """Commands go out and, where the engine runs, results come in: both connections up."""
    if not context.transport.connected:
        return False
    engine = getattr(request.app.state, "engine", None)
    return engine is None or bool(engine.results.connected)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
async def read_metrics(request: Request, context: AppContext = Depends(get_context)) -> Response:
    """Counters and gauges in the Prometheus text format; rollout gauges as Redis has them.

    With OTA_METRICS_TOKEN set, only `Authorization: Bearer <token>` is answered: the
    gauges name every project and rollout.
    """
    _check_token(request.headers.get("authorization", ""), context.settings.metrics_token)
    metrics = context.metrics
    metrics.mqtt_connected.set(1 if _mqtt_connected(request, context) else 0)
    samples: list[RolloutSample] = []
    try:
        async with asyncio.timeout(REDIS_READ_TIMEOUT_S):
            redis_up = await context.stores.ping()
            metrics.redis_up.set(1 if redis_up else 0)
            if redis_up:
                samples = await rollout_samples(
                    context.stores, context.settings.metrics_retention_s
                )
    except (StoreUnavailable, TimeoutError) as exc:
        # Answer anyway: ota_redis_up 0 is what pages someone; the rollout gauges go stale.
        metrics.redis_up.set(0)
        log.warning("metrics scrape without Redis", error=str(exc) or type(exc).__name__)
    return Response(metrics.render(samples), media_type=CONTENT_TYPE_LATEST)
