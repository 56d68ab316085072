"""Who is calling: API keys for people and CI, device tokens for devices."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable

from fastapi import Depends, Request, Security
from fastapi.openapi.models import HTTPBase, HTTPBearer
from fastapi.security.base import SecurityBase

from orchestrator.api.context import AppContext, Found, get_context
from orchestrator.domain.auth import Principal, Scope
from orchestrator.domain.devices import last_seen_due
from orchestrator.errors import Forbidden, NotFound, ProjectDeleting, Unauthorized
from orchestrator.store.devices import Device
from orchestrator.store.projects import Project
from orchestrator.timeutil import utc_now

DEVICE_CHALLENGE = 'Basic realm="devices"'


class DocumentedScheme(SecurityBase):
    """An OpenAPI security scheme that only documents: the dependencies below check."""

    def __init__(self, model: HTTPBase, name: str) -> None:
        self.model = model
        self.scheme_name = name

    async def __call__(self) -> None:
        return None


API_KEY = DocumentedScheme(
    HTTPBearer(
        bearerFormat="QB_…",
        description=(
            "An API key: `Authorization: Bearer QB_…` (the bare key is accepted too). An "
            "operation lists the scope it needs; a key with `admin` holds every scope. Scopes: "
            + ", ".join(f"`{scope}`" for scope in Scope)
            + ". A key limited to projects gets 403 for any other project."
        ),
    ),
    "ApiKey",
)
DEVICE_TOKEN = DocumentedScheme(
    HTTPBase(
        scheme="basic",
        description=(
            "A device: `Authorization: Basic {device_token}` with the token returned when the "
            "device was created, or standard Basic `base64(device_id:device_token)`."
        ),
    ),
    "DeviceToken",
)


async def current_principal(
    request: Request,
    context: AppContext = Depends(get_context),
    _documented: None = Security(API_KEY),
) -> Principal:
    """The API key's holder: `Authorization: Bearer QB_…` or the bare key."""
    return await authenticate(request.headers.get("authorization", ""), context)


async def authenticate(header: str, context: AppContext) -> Principal:
    """The holder of the API key in an Authorization header's value; Unauthorized if none."""
    header = header.strip()
    if not header:
        raise Unauthorized(
            "missing API key; send 'Authorization: Bearer QB_…' "
            "(create one with: ota keys create --name NAME --scope admin)"
        )
    scheme, _, rest = header.partition(" ")
    plain = rest.strip() if scheme.lower() == "bearer" else header
    principal = await context.stores.api_keys.authenticate(plain)
    if principal is None:
        raise Unauthorized("unknown API key; check the key, or create one with ota keys create")
    return principal


def require(*scopes: Scope) -> Callable[..., Awaitable[Principal]]:
    """A dependency that lets through only keys allowed every one of `scopes` (or admin)."""

    async def dependency(
        principal: Principal = Security(
            current_principal, scopes=[scope.value for scope in scopes]
        ),
    ) -> Principal:
        missing = principal.missing(scopes)
        if missing:
            named = " and ".join(f"'{scope}'" for scope in missing)
            flags = " ".join(f"--scope {scope}" for scope in scopes)
            noun = "scope" if len(missing) == 1 else "scopes"
            raise Forbidden(f"this API key lacks the {named} {noun}; create a key with {flags}")
        return principal

    return dependency


async def check_project(
    context: AppContext, principal: Principal, project_id: str, *, deleting: bool = False
) -> Project:
    """The project; NotFound for an unknown one, Forbidden for one outside the key's projects,
    ProjectDeleting for one being deleted (unless `deleting`: reading it, deleting it again)."""
    project = await context.stores.projects.get(project_id)
    if project is None:
        raise NotFound(f"project {project_id} not found; create it with POST /v2/projects")
    if not principal.can_access(project_id):
        raise Forbidden(f"this API key is not allowed to use project {project_id}")
    if project.deleting and not deleting:
        raise ProjectDeleting(project_id)
    return project


InProject = Found[Project]
InDevice = Found[Device]


def in_project(*scopes: Scope, deleting: bool = False) -> Callable[..., Awaitable[InProject]]:
    """A dependency: the project the path names, once the caller's key has every one of
    `scopes` and may use that project (see check_project); with the context and the caller."""
    allowed = require(*scopes)

    async def dependency(
        project_id: str,
        context: AppContext = Depends(get_context),
        principal: Principal = Depends(allowed),
    ) -> InProject:
        project = await check_project(context, principal, project_id, deleting=deleting)
        return Found(context, principal, project)

    return dependency


def device_not_found(project_id: str, device_id: str) -> NotFound:
    """The 404 of a device the project does not hold."""
    return NotFound(f"device {device_id} not found in project {project_id}")


def device_in(*scopes: Scope) -> Callable[..., Awaitable[InDevice]]:
    """A dependency: the device the path names, in a project the caller may use (in_project)."""

    async def dependency(
        project_id: str,  # also in_project's: named here, it stays first in the API's parameters
        device_id: str,
        at: InProject = Depends(in_project(*scopes)),
    ) -> InDevice:
        device = await at.context.stores.devices.get(project_id, device_id)
        if device is None:
            raise device_not_found(project_id, device_id)
        return Found(at.context, at.principal, device)

    return dependency


async def current_device(request: Request, context: AppContext) -> Device:
    """The device behind `Authorization: Basic {device_token}` or Basic `id:token` (base64).

    The service has heard from it: its last_seen moves to now, when it is due (at most one
    write a minute per device; the record just read says whether one is due).
    """
    device = await _device_of(request.headers.get("authorization", ""), context)
    if last_seen_due(device.last_seen_s, int(utc_now().timestamp())):
        await context.stores.devices.touch(device.id)
    return device


async def _device_of(header: str, context: AppContext) -> Device:
    header = header.strip()
    scheme, _, credential = header.partition(" ")
    credential = credential.strip()
    if scheme.lower() != "basic" or not credential:
        raise Unauthorized(
            "missing device token; send 'Authorization: Basic {device_token}' "
            "with the token returned when the device was created",
            challenge=DEVICE_CHALLENGE,
        )
    device = await context.stores.devices.by_token(credential)
    if device is not None:
        return device
    try:
        decoded = base64.b64decode(credential, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        decoded = ""
    device_id, sep, token = decoded.partition(":")
    if sep:
        device = await context.stores.devices.by_token(token)
        if device is not None and device.id == device_id:
            return device
    raise Unauthorized(
        "unknown device token; use the device_token returned at device creation",
        challenge=DEVICE_CHALLENGE,
    )
