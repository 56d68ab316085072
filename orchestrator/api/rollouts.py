"""`/v2/projects/{pid}/rollouts`: start a rollout from a plan (or dry-run it), read, act on it.

Every answer is the envelope, its `data` a rollout (`RolloutOut`), a dry run's preview, or a
listing. The routes only record intent: a new rollout is `pending` and an operator action
changes the state in Redis; the engine notices and does the work (dispatch, revoking keys,
freeing devices).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from enum import StrEnum
from typing import Any, TypeVar

import structlog
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from orchestrator.api.auth import InProject, in_project
from orchestrator.api.bodies import JSONRoute, read_bounded
from orchestrator.api.context import AppContext, Found
from orchestrator.api.cursors import POSITION_CURSOR, position_cursor
from orchestrator.api.errors import IN_PROJECT, error_responses
from orchestrator.api.listing import (
    DEVICES_PER_PAGE,
    listed,
    listed_page,
    loaded,
    one_page,
    paged,
)
from orchestrator.api.openapi import PLAN_SCHEMA_NAME
from orchestrator.api.rollout_schemas import (
    RolloutActionRequest,
    RolloutDeviceOut,
    RolloutEvent,
    RolloutOut,
    RolloutPreview,
    SimulationOut,
)
from orchestrator.api.rollout_views import device_page, load_rollout_out, preview
from orchestrator.api.schemas import Envelope, Paged
from orchestrator.domain.auth import Scope
from orchestrator.domain.plans import Plan
from orchestrator.domain.simulation import simulate as simulate_runs
from orchestrator.domain.states import (
    OPERATOR_ACTIONS,
    DeviceState,
    RolloutAction,
    RolloutState,
    allowed_actions,
)
from orchestrator.domain.synthetic_fleet import MAX_DEVICES, RUNS, Fleet, parse_fleet
from orchestrator.engine import actions
from orchestrator.engine.launch import check_files, cohort_of, launch
from orchestrator.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from orchestrator.store.rollouts import RolloutRecord

S = TypeVar("S", bound=StrEnum)
MAX_RUNS = 10_000  # simulated runs one dry run may ask for
log = structlog.get_logger(__name__)
router = APIRouter(tags=["rollouts"], route_class=JSONRoute)

MAX_PLAN_BYTES = 1024 * 1024
PLAN_MEDIA_TYPES = frozenset(
    {"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain"}
)
# Where a rollout device listing resumes: a position in the cohort order.

_PLAN_REF = {"schema": {"$ref": f"#/components/schemas/{PLAN_SCHEMA_NAME}"}}
CREATE_BODY = {
    "requestBody": {
        "required": True,
        "description": (
            f"A rollout plan as YAML or JSON, at most {MAX_PLAN_BYTES} bytes (413 above); "
            "`ota schema` prints its JSON Schema. Rules the schema cannot state (the last wave "
            "reaches 100%, a rollback section for on_failure: rollback, uploaded firmware "
            "files, ...) are 400 with the line and column."
        ),
        "content": {
            media_type: _PLAN_REF
            for media_type in [
                "application/yaml",
                *sorted(PLAN_MEDIA_TYPES - {"application/yaml"}),
                "application/json",
            ]
        },
    }
}


def _enum_of(kind: type[StrEnum]) -> dict[str, Any]:
    return {"enum": [member.value for member in kind]}


def _state(kind: type[S], value: str | None, noun: str) -> S | None:
    """The state named in ?state=, or None; InvalidInput listing the valid ones."""
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        valid = ", ".join(state.value for state in kind)
        raise InvalidInput(
            f"state {value!r} is not a {noun} state; use one of: {valid}",
            errors=[{"loc": "query.state", "msg": f"must be one of: {valid}"}],
        ) from None


async def _read_plan(request: Request, context: AppContext) -> Plan:
    """The plan in the body (YAML or JSON, 1 MiB at most), or a located PlanError."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type and media_type not in PLAN_MEDIA_TYPES | {"application/json"}:
        raise InvalidInput(
            f"the body is {media_type} but must be a plan as YAML or JSON; send it with "
            "Content-Type: application/yaml (curl -H 'Content-Type: application/yaml' "
            "--data-binary @plan.yaml) or application/json",
            errors=[{"loc": "body", "msg": "expected application/yaml or application/json"}],
        )
    too_large = PayloadTooLarge(
        f"the plan is over {MAX_PLAN_BYTES} bytes; a plan is a few hundred bytes of YAML "
        "(list devices by tag rather than by id)"
    )
    body = await read_bounded(request, MAX_PLAN_BYTES, too_large)
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput(
            "the plan is not UTF-8 text; save it as UTF-8 and send it again",
            errors=[{"loc": "body", "msg": "not UTF-8"}],
        ) from None
    return await context.plans.parse(text, source="plan")


@router.post(
    "/v2/projects/{project_id}/rollouts",
    status_code=201,
    openapi_extra=CREATE_BODY,
    response_model=Envelope[RolloutOut],
    responses={
        200: {"model": Envelope[RolloutPreview], "description": "The dry run (?dry_run=true)"},
        **error_responses(400, 409, 413, *IN_PROJECT),
    },
)
async def create_rollout(
    request: Request,
    dry_run: bool = Query(False, description="Resolve waves and exclusions; start nothing"),
    simulate: bool = Query(
        False,
        description=(
            "With dry_run: also run the plan many times against a synthetic fleet of the "
            "devices it reaches now, offline"
        ),
    ),
    failure_rate: str | None = Query(
        None, description="With simulate: the fleet's true failure rate, 2% or 0.02"
    ),
    runs: int = Query(RUNS, ge=1, le=MAX_RUNS, description="With simulate: how many runs"),
    by_stratum: list[str] = Query(
        [], description="With simulate: KEY=VALUE:RATE[@SHARE], a stratum's true rate"
    ),
    result_latency: str = Query(
        "5s..1m", description="With simulate: a device's time to its result, a range"
    ),
    at: InProject = Depends(in_project(Scope.ROLLOUTS_WRITE)),
) -> Envelope[RolloutOut] | JSONResponse:
    """Start a rollout from a plan (YAML or JSON); it waits `pending` for the engine."""
    context, principal, project_id = at.context, at.principal, at.record.id
    plan = await _read_plan(request, context)
    await check_files(context.stores, project_id, plan)
    fleet = None
    if simulate:
        fleet = simulated_fleet(failure_rate, by_stratum, result_latency, dry_run=dry_run)
    cohort = await cohort_of(context.stores, project_id, plan)
    if dry_run:
        shown = preview(plan, cohort)
        if fleet is not None and shown.total:
            if shown.total > MAX_DEVICES:
                raise InvalidInput(
                    f"simulate=true takes plans that reach at most {MAX_DEVICES:,} devices; this "
                    f"one reaches {shown.total:,}: leave simulate out, or simulate offline with "
                    f"ota plan PLAN --simulate --devices {MAX_DEVICES:,}"
                )
            fleet = replace(fleet, devices=shown.total)
            summary = await asyncio.to_thread(simulate_runs, plan, fleet, runs=runs)
            shown = shown.model_copy(update={"simulation": SimulationOut(**summary.as_json())})
        answer = Envelope[RolloutPreview](
            action="create rollout",
            message="Dry run: the waves and exclusions the plan resolves to; nothing started.",
            data=shown,
        )
        return JSONResponse(answer.model_dump(mode="json"), status_code=200)
    rollout_id, _ = await launch(
        context.stores, project_id, plan, cohort, created_by=principal.name
    )
    record = await context.stores.rollouts.get(rollout_id)
    assert record is not None  # just created
    with structlog.contextvars.bound_contextvars(rollout_id=rollout_id):
        log.info(
            "rollout created",
            project_id=project_id,
            name=plan.name,
            to_state=record.state.value,
            devices=len(cohort.device_ids),
            excluded=len(cohort.exclusions),
            wave_reach=record.reach,
            actor=principal.name,
        )
    return Envelope(
        status=201,
        action="create rollout",
        message="Rollout created; the engine starts it.",
        data=await load_rollout_out(context.stores, record),
    )


def simulated_fleet(
    failure_rate: str | None, strata: list[str], latency: str, *, dry_run: bool
) -> Fleet:
    """The synthetic fleet the query describes (its size comes from the cohort); 400 naming
    the parameter otherwise."""
    if not dry_run:
        raise InvalidInput(
            "simulate=true only goes with dry_run=true; add dry_run=true",
            errors=[{"loc": "query.simulate", "msg": "needs dry_run=true"}],
        )
    if failure_rate is None:
        raise InvalidInput(
            "simulate=true needs failure_rate, the fleet's true failure rate (such as 2%)",
            errors=[{"loc": "query.failure_rate", "msg": "missing"}],
        )
    try:
        return parse_fleet(1, failure_rate, strata, latency)
    except ValueError as exc:
        raise InvalidInput(str(exc), errors=[{"loc": "query", "msg": str(exc)}]) from None


async def _rollout(context: AppContext, project_id: str, rollout_id: str) -> RolloutRecord:
    record = await context.stores.rollouts.get(rollout_id)
    if record is None or record.project_id != project_id:
        raise NotFound(f"rollout {rollout_id} not found in project {project_id}")
    return record


def rollout_in(scope: Scope) -> Callable[..., Awaitable[Found[RolloutRecord]]]:
    """A dependency: the rollout the path names, in a project the caller may use."""

    async def dependency(
        project_id: str,  # also in_project's: named here, it stays first in the API's parameters
        rollout_id: str,
        at: InProject = Depends(in_project(scope)),
    ) -> Found[RolloutRecord]:
        record = await _rollout(at.context, project_id, rollout_id)
        return Found(at.context, at.principal, record)

    return dependency


readable = rollout_in(Scope.ROLLOUTS_READ)


@router.get(
    "/v2/projects/{project_id}/rollouts",
    response_model=Envelope[list[RolloutOut]],
    responses=error_responses(400, *IN_PROJECT),
)
async def list_rollouts(
    state: str | None = Query(
        None, description="Only rollouts in this state", json_schema_extra=_enum_of(RolloutState)
    ),
    at: InProject = Depends(in_project(Scope.ROLLOUTS_READ)),
) -> Response:
    """The project's rollouts, newest first."""
    wanted = _state(RolloutState, state, "rollout")
    stores, project_id = at.context.stores, at.record.id

    async def load(ids: Sequence[str]) -> list[RolloutOut]:
        records = await asyncio.gather(*(stores.rollouts.get(rid) for rid in ids))
        chosen = [r for r in records if r is not None and (wanted is None or r.state is wanted)]
        return list(await asyncio.gather(*(load_rollout_out(stores, r) for r in chosen)))

    rollouts = loaded(await stores.rollouts.ids(project_id), load)
    return await listed("list rollouts", "Rollouts listed.", rollouts)


@router.get(
    "/v2/projects/{project_id}/rollouts/{rollout_id}",
    responses=error_responses(*IN_PROJECT),
)
async def get_rollout(found: Found[RolloutRecord] = Depends(readable)) -> Envelope[RolloutOut]:
    """One rollout: state and reason, current wave, counts per wave and in all, failure rate."""
    view = await load_rollout_out(found.context.stores, found.record)
    return Envelope(action="get rollout", message="Rollout found.", data=view)


@router.get(
    "/v2/projects/{project_id}/rollouts/{rollout_id}/devices",
    response_model=Paged[RolloutDeviceOut],
    responses=error_responses(400, *IN_PROJECT),
)
async def list_rollout_devices(
    state: str | None = Query(
        None, description="Only devices in this state", json_schema_extra=_enum_of(DeviceState)
    ),
    cursor: str | None = Query(
        None,
        description="next_cursor of the previous page; leave it out for the first page",
        json_schema_extra={"pattern": POSITION_CURSOR},
    ),
    limit: int | None = DEVICES_PER_PAGE,
    found: Found[RolloutRecord] = Depends(readable),
) -> Response:
    """The rollout's devices in cohort (wave) order: all of them, or a page at a time.

    With `limit`, a page may hold fewer devices while next_cursor is not null: a filtered
    listing scans a bounded stretch of the cohort per request.
    """
    wanted = _state(DeviceState, state, "device")
    position = position_cursor(cursor)
    stores, record = found.context.stores, found.record

    async def fetch(start: int | None, size: int) -> tuple[list[RolloutDeviceOut], int | None]:
        return await device_page(stores, record, wanted, start or 0, size)

    devices, more = await paged(fetch, position, limit)
    next_cursor = str(more) if more is not None else None
    return await listed_page(
        "list rollout devices", "Rollout devices listed.", devices, next_cursor
    )


@router.get(
    "/v2/projects/{project_id}/rollouts/{rollout_id}/events",
    response_model=Envelope[list[RolloutEvent]],
    responses=error_responses(*IN_PROJECT),
)
async def list_rollout_events(found: Found[RolloutRecord] = Depends(readable)) -> Response:
    """The audit trail of the rollout's state changes, oldest first."""
    events = await found.context.stores.audit.events(found.record.id)
    trail = [RolloutEvent.model_validate(event) for event in events]
    return await listed("list rollout events", "Rollout events listed.", one_page(trail))


async def act(
    found: Found[RolloutRecord], action: RolloutAction, body: RolloutActionRequest | None
) -> Envelope[RolloutOut]:
    """Apply an operator action: the transition table decides, the store applies atomically."""
    context, principal, record = found.context, found.principal, found.record
    project_id, rollout_id = record.project_id, record.id
    applied = await actions.apply(
        context.stores,
        record,
        action,
        actor=principal.name,
        reason=body.reason if body and body.reason else f"{action} by {principal.name}",
    )
    old, target = applied.old, applied.new
    if not applied.changed:
        if not old:
            raise NotFound(f"rollout {rollout_id} not found in project {project_id}")
        valid = ", ".join(allowed_actions(RolloutState(old))) or "none (it is finished)"
        raise Conflict(
            f"the rollout changed from {record.state} to {old} meanwhile, so {action} was "
            f"not applied; actions allowed now: {valid}"
        )
    fresh = await _rollout(context, project_id, rollout_id)
    view = await load_rollout_out(context.stores, fresh)
    with structlog.contextvars.bound_contextvars(rollout_id=rollout_id):
        log.info(
            "rollout state changed",
            from_state=old,
            to_state=target.value,
            action=action.value,
            actor=principal.name,
            reason=fresh.reason,
            wave=view.wave,
            failure_rate=round(view.failure_rate, 6),
            max_failure_rate=view.max_failure_rate,
            counts={state: n for state, n in view.counts.items() if n},
        )
    return Envelope(
        action=f"{action} rollout",
        message=f"{action.value.capitalize()} applied; the rollout is {view.state}.",
        data=view,
    )


def _add_action_route(action: RolloutAction) -> None:
    async def endpoint(
        body: RolloutActionRequest | None = None,
        found: Found[RolloutRecord] = Depends(rollout_in(Scope.ROLLOUTS_WRITE)),
    ) -> Envelope[RolloutOut]:
        return await act(found, action, body)

    endpoint.__doc__ = OPERATOR_ACTIONS[action] + " 409 names the state when it does not allow it."
    router.add_api_route(
        f"/v2/projects/{{project_id}}/rollouts/{{rollout_id}}/{action.value}",
        endpoint,
        methods=["POST"],
        name=f"{action.value}_rollout",
        response_model=Envelope[RolloutOut],
        responses=error_responses(400, 409, *IN_PROJECT),
    )


for _action in OPERATOR_ACTIONS:
    _add_action_route(_action)
