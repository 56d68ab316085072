"""Deploy hooks: register a plan template, then CI posts signed deliveries that start rollouts.

A delivery is checked here (signature, what it asks for, the rendered plan, its files) and,
once accepted, recorded with a new rollout id and queued on a Redis stream in one script; an
engine replica reads it through a consumer group and creates the rollout under that id. So
the answer (202 with the rollout id) never waits on the engine, exactly one replica starts the
rollout, and a crash between the two loses nothing: the entry waits to be handled again.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any

import structlog
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from orchestrator.api.auth import InProject, in_project
from orchestrator.api.bodies import JSONRoute, read_bounded
from orchestrator.api.context import AppContext, get_context
from orchestrator.api.errors import IN_PROJECT, error_responses
from orchestrator.api.schemas import (
    DeployAccepted,
    Envelope,
    HookCreate,
    HookDeliveryOut,
    HookOut,
)
from orchestrator.api.webhooks import WebhookKind, add_routes
from orchestrator.domain.auth import Scope
from orchestrator.domain.hooks import (
    Deploy,
    Scheme,
    SignatureError,
    deploy_of,
    render,
    secret_or_new,
    uses,
    verify,
)
from orchestrator.engine.launch import check_files
from orchestrator.errors import InvalidInput, NotFound, PayloadTooLarge, Unauthorized
from orchestrator.store.hooks import Delivery, Hook
from orchestrator.timeutil import isoformat_z, utc_now

log = structlog.get_logger(__name__)
router = APIRouter(tags=["hooks"], route_class=JSONRoute)

MAX_DELIVERY_BYTES = 1024 * 1024  # GitHub caps its payloads at 25 MB; a release is far less
MAX_DELIVERY_ID = 200
CHALLENGE = 'HMAC realm="hooks"'


def _header(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "schema": {"type": "string"}, "description": description}


DELIVERY = {
    "parameters": [
        _header("X-Hub-Signature-256", "GitHub: `sha256=<hex HMAC-SHA256 of the raw body>`"),
        _header("X-GitHub-Delivery", "GitHub: the delivery id (repeats answer the same)"),
        _header("X-GitHub-Event", "GitHub: `release` deploys, `ping` is answered 200"),
        _header("webhook-id", "Standard Webhooks: the delivery id (repeats answer the same)"),
        _header("webhook-timestamp", "Standard Webhooks: seconds since 1970, within 5 minutes"),
        _header("webhook-signature", "Standard Webhooks: `v1,<base64 HMAC-SHA256>`"),
    ],
    "requestBody": {
        "required": True,
        "description": (
            f"Signed with the hook's secret (401 otherwise), at most {MAX_DELIVERY_BYTES} bytes"
        ),
        "content": {
            "application/json": {
                "schema": {
                    "anyOf": [
                        {
                            "title": "Deploy",
                            "type": "object",
                            "required": ["version"],
                            "properties": {
                                "version": {"type": "string", "minLength": 1},
                                "file": {
                                    "type": "string",
                                    "description": "Fills ${file}: an uploaded firmware file",
                                },
                            },
                        },
                        {
                            "title": "GitHub release event",
                            "type": "object",
                            "required": ["release"],
                            "properties": {
                                "action": {"type": "string"},
                                "release": {
                                    "type": "object",
                                    "required": ["tag_name"],
                                    "properties": {
                                        "tag_name": {"type": "string", "minLength": 1},
                                        "assets": {
                                            "type": "array",
                                            "items": {
                                                "type": "object",
                                                "properties": {"name": {"type": "string"}},
                                            },
                                        },
                                    },
                                },
                            },
                        },
                    ]
                }
            }
        },
    },
}


def _out(context: AppContext, hook: Hook, *, with_secret: bool = False) -> HookOut:
    return HookOut(
        id=hook.id,
        name=hook.name,
        url=f"{context.settings.public_url}/v2/hooks/{hook.id}",
        plan=hook.plan,
        created_at=hook.created_at,
        created_by=hook.created_by,
        secret=hook.secret if with_secret else None,
    )


HOOKS = WebhookKind(
    noun="hook",
    title="Hook",
    called="hook",
    id_name="hook_id",
    read=Scope.HOOKS_READ,
    write=Scope.HOOKS_WRITE,
    store=lambda stores: stores.hooks,
    model=HookOut,
    out=_out,
    delivery_model=HookDeliveryOut,
    delivery_out=lambda delivery: HookDeliveryOut(**vars(delivery)),
    delete_doc="Delete a hook: its URL answers 404 from now on.",
    deliveries_doc=(
        "The hook's accepted deliveries of the last 24 hours (the newest 1000 at most), "
        "newest first, with their fate."
    ),
)


@router.post(
    "/v2/projects/{project_id}/hooks",
    status_code=201,
    responses=error_responses(400, *IN_PROJECT),
)
async def create_hook(
    body: HookCreate, at: InProject = Depends(in_project(Scope.HOOKS_WRITE, Scope.ROLLOUTS_WRITE))
) -> Envelope[HookOut]:
    """Register a plan template started by signed deliveries; the secret is shown only here.

    Needs rollouts:write besides hooks:write: whoever holds the secret starts rollouts.
    """
    context, principal, project_id = at.context, at.principal, at.record.id
    secret = secret_or_new(body.secret)
    await context.plans.parse_template(body.plan, source="plan")
    hook = await context.stores.hooks.create(
        project_id=project_id,
        name=body.name,
        plan=body.plan,
        secret=secret,
        created_at=isoformat_z(utc_now()),
        by=principal.name,
    )
    log.info("hook created", hook_id=hook.id, project_id=project_id, actor=principal.name)
    return Envelope(
        status=201,
        action="create hook",
        message="Hook created; post signed deliveries to data.url with data.secret.",
        data=_out(context, hook, with_secret=True),
    )


add_routes(router, HOOKS)


def _delivery_id(raw: str) -> str:
    if len(raw) > MAX_DELIVERY_ID or not raw.isprintable() or " " in raw:
        raise InvalidInput(
            f"the delivery id must be up to {MAX_DELIVERY_ID} printable characters without "
            "spaces (a UUID or msg_… id)",
            errors=[{"loc": "header.webhook-id", "msg": "not a delivery id"}],
        )
    return raw


def _answer(status: int, message: str, data: DeployAccepted) -> JSONResponse:
    envelope = Envelope[DeployAccepted](
        status=status, action="deliver hook", message=message, data=data
    )
    return JSONResponse(envelope.model_dump(), status_code=status)


@router.post(
    "/v2/hooks/{hook_id}",
    status_code=202,
    response_model=Envelope[DeployAccepted],
    openapi_extra=DELIVERY,
    responses={
        200: {
            "model": Envelope[DeployAccepted],
            "description": "Signed, but nothing to deploy (a ping)",
        },
        **error_responses(400, 401, 404, 413, 503),
    },
)
async def deliver_hook(
    hook_id: str, request: Request, context: AppContext = Depends(get_context)
) -> JSONResponse:
    """A signed delivery (GitHub or Standard Webhooks) that starts the hook's rollout.

    The body is `{"version": ..., "file": ...}` or a GitHub `release` event. A repeat of a
    delivery id (or, signed the GitHub way, of a body) within 24 h answers with the first
    one's rollout and starts nothing.
    """
    counted = context.metrics.webhook_deliveries
    hook = await context.stores.hooks.get(hook_id)
    if hook is None:
        raise NotFound(f"hook {hook_id} not found; it was deleted or never registered")
    body = await read_bounded(
        request,
        MAX_DELIVERY_BYTES,
        PayloadTooLarge(f"the delivery is over {MAX_DELIVERY_BYTES} bytes; send the release only"),
    )
    headers = {name.lower(): value for name, value in request.headers.items()}
    digest = hashlib.sha256(body).hexdigest()
    try:
        signed = verify(hook.secret, headers, body, now_s=time.time(), body_digest=digest)
    except SignatureError as exc:
        counted.labels("unauthorized").inc()
        log.warning("hook delivery refused", hook_id=hook_id, reason=str(exc))
        raise Unauthorized(str(exc), challenge=CHALLENGE) from None
    delivery_id = _delivery_id(signed.delivery_id)
    # A Standard Webhooks signature covers its id; a GitHub one does not, so its body counts.
    body_digest = digest if signed.scheme is Scheme.GITHUB else None
    known = await context.stores.hooks.known(hook_id, delivery_id, body_digest)
    if known is not None:
        counted.labels("duplicate").inc()
        return _answer(
            202,
            "Delivery seen before; its rollout was started then, nothing new is started.",
            DeployAccepted(rollout_id=known, delivery_id=delivery_id, duplicate=True),
        )
    try:
        wanted = deploy_of(body, headers.get("x-github-event"))
        if not isinstance(wanted, Deploy):
            counted.labels("ignored").inc()
            return _answer(
                200,
                f"Nothing to deploy: {wanted.why}.",
                DeployAccepted(rollout_id=None, delivery_id=delivery_id, duplicate=False),
            )
        plan_text = _rendered(hook, wanted)
        plan = await context.plans.parse(plan_text, source=f"hook {hook.name}")
        await check_files(context.stores, hook.project_id, plan)
    except InvalidInput:
        counted.labels("invalid").inc()
        raise
    rollout_id, new = await context.stores.hooks.accept(
        hook,
        Delivery(
            id=delivery_id,
            received_at=isoformat_z(utc_now()),
            scheme=signed.scheme.value,
            version=wanted.version,
            file=wanted.file or "",
            rollout_id=str(uuid.uuid4()),
            status="accepted",
            reason="waiting for the engine to start the rollout",
        ),
        plan=plan_text,
        actor=f"hook {hook.name}",
        body_digest=body_digest,
    )
    counted.labels("accepted" if new else "duplicate").inc()
    log.info(
        "hook delivery accepted" if new else "hook delivery repeated",
        hook_id=hook_id,
        delivery_id=delivery_id,
        rollout_id=rollout_id,
        version=wanted.version,
    )
    return _answer(
        202,
        "Delivery accepted; the engine starts the rollout." if new else "Delivery seen before.",
        DeployAccepted(rollout_id=rollout_id, delivery_id=delivery_id, duplicate=not new),
    )


def _rendered(hook: Hook, wanted: Deploy) -> str:
    if wanted.file is None and uses(hook.plan, "file"):
        raise InvalidInput(
            f"hook {hook.name!r} fills in ${{file}} but the delivery names no firmware file; "
            'send "file" in the body, or attach exactly one .bin/.hex/.elf asset to the '
            "release",
            errors=[{"loc": "body.file", "msg": "missing"}],
        )
    return render(hook.plan, {"version": wanted.version, "file": wanted.file or ""})
