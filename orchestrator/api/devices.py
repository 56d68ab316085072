"""`/v2/projects/{pid}/devices`: seed 003's create, and read, update, delete, token rotation.

With dynamic security (the embedded broker's default, or OTA_MQTT_PROVISION=dynsec) an mqtt
device is also a client of the broker's plugin (`orchestrator.transport.dynsec`), its login
tied to its device id as client id: made with the device, removed with it, its password
set when its token rotates. When the broker cannot take the change the request fails with 503
and nothing is changed, so a retry is always safe.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from fastapi import APIRouter, Depends, Query, Response

from orchestrator.api.auth import InDevice, InProject, device_in, device_not_found, in_project
from orchestrator.api.bodies import JSONRoute
from orchestrator.api.cursors import DEVICE_CURSOR, device_cursor
from orchestrator.api.errors import IN_PROJECT, error_responses
from orchestrator.api.listing import DEVICES_PER_PAGE, paged, streamed
from orchestrator.api.schemas import (
    MAX_ALLOWED_COMMANDS_CHARS,
    DeviceCreate,
    DeviceCreated,
    DeviceCreatedEnvelope,
    DeviceCredentials,
    DeviceEnvelope,
    DeviceListEnvelope,
    DeviceMetadata,
    DeviceOut,
    DevicePatch,
    Done,
)
from orchestrator.domain.auth import Scope
from orchestrator.domain.commands import parse_allowed_commands
from orchestrator.domain.devices import (
    ALLOWED_COMMANDS_KEY,
    METADATA_KEY,
    RESERVED_METADATA_KEYS,
    DeviceSource,
    merge_metadata,
    parse_metadata_filters,
    validate_metadata,
    validate_tags,
)
from orchestrator.errors import InvalidInput, OrchestratorError
from orchestrator.store.devices import Device, new_token

router = APIRouter(tags=["devices"], route_class=JSONRoute)
_RESERVED = "|".join((*RESERVED_METADATA_KEYS, ALLOWED_COMMANDS_KEY))
# What ?metadata= takes: a custom key, ':', a value of at most 256 characters.
METADATA_FILTER = rf"^(?!(?:{_RESERVED}):){METADATA_KEY.pattern.strip('^$')}:[\s\S]{{0,256}}$"


def device_out(device: Device) -> DeviceOut:
    """The seed's device object (never with a token)."""
    return DeviceOut(
        id=device.id,
        name=device.name,
        description=device.description,
        brand=device.brand,
        model=device.model,
        avatar=device.avatar,
        last_seen=device.last_seen,
        tags=device.tags,
        source=device.source.value,
        created_at=device.created_at,
        project_id=device.project_id,
        firmware_version=device.firmware_version or None,
        firmware_version_at=device.firmware_version_at,
        metadata=DeviceMetadata.model_validate(
            {
                **device.metadata,
                "device_id": device.id,
                "allowed_commands": ";".join(device.allowed_commands),
            }
        ),
    )


def device_created(device: Device, token: str) -> DeviceCreated:
    """The device with its new token: in metadata (seed 003) and in device_credentials."""
    shown = device_out(device)
    shown.metadata.device_token = token
    return DeviceCreated(
        **dict(shown),
        device_credentials=DeviceCredentials(device_id=device.id, device_token=token),
    )


def _metadata(
    given: Mapping[str, str | None] | None, *, removals: bool
) -> tuple[list[str] | None, dict[str, str | None]]:
    """A body's metadata as allowed_commands (None: not given) and the custom keys."""
    custom = dict(given or {})
    if ALLOWED_COMMANDS_KEY not in custom:
        return None, validate_metadata(custom, removals=removals)
    text = custom.pop(ALLOWED_COMMANDS_KEY)
    if text is None or len(text) > MAX_ALLOWED_COMMANDS_CHARS:
        got = "null" if text is None else f"{len(text)} characters"
        raise InvalidInput(
            f"metadata.allowed_commands must be command names separated by ';' in at most "
            f'{MAX_ALLOWED_COMMANDS_CHARS} characters ("" allows every command), got {got}',
            errors=[{"loc": "body.metadata.allowed_commands", "msg": "not a list of commands"}],
        )
    return parse_allowed_commands(text), validate_metadata(custom, removals=removals)


@router.post(
    "/v2/projects/{project_id}/devices",
    status_code=201,
    responses=error_responses(400, *IN_PROJECT),
)
async def create_device(
    body: DeviceCreate, at: InProject = Depends(in_project(Scope.DEVICES_WRITE))
) -> DeviceCreatedEnvelope:
    """Create a device; the response carries its device_token (in data.metadata and in
    data.device_credentials), shown this once."""
    tags = validate_tags(body.tags)
    allowed_commands, custom = _metadata(body.metadata, removals=False)
    context, project_id = at.context, at.record.id
    device, token = await context.stores.devices.create(
        project_id,
        name=body.name,
        description=body.description,
        source=DeviceSource(body.source),
        brand=body.brand or "Custom",
        model=body.model or "Custom",
        tags=tags,
        allowed_commands=allowed_commands or [],
        metadata={key: value for key, value in custom.items() if value is not None},
    )
    if context.provisioner is not None and device.source is DeviceSource.MQTT:
        try:
            await context.provisioner.provision(device.id, token)
        except OrchestratorError:
            # Not created at all rather than created without broker credentials. Should Redis
            # fail here too, the start-up reconciliation gives the device its broker client.
            with contextlib.suppress(OrchestratorError):
                await context.stores.devices.delete(project_id, device.id)
            raise
    return DeviceCreatedEnvelope(
        status=201,
        action="create device",
        message="Device created successfully.",
        data=device_created(device, token),
    )


@router.get(
    "/v2/projects/{project_id}/devices",
    response_model=DeviceListEnvelope,
    responses=error_responses(400, *IN_PROJECT),
)
async def list_devices(
    tag: str | None = Query(default=None, description="Only devices carrying this tag"),
    metadata: list[str] | None = Query(
        default=None,
        description="Only devices whose custom metadata holds this key with this value, "
        "written key:value (the value may hold ':'); repeat it and every one must hold. A scan "
        "of the project's (or the tag's) devices: a page may take longer to find",
        json_schema_extra={"items": {"type": "string", "pattern": METADATA_FILTER}},
    ),
    cursor: str | None = Query(
        default=None,
        description="next_cursor of the previous page; leave it out for the first page",
        json_schema_extra={"pattern": DEVICE_CURSOR},
    ),
    limit: int | None = DEVICES_PER_PAGE,
    at: InProject = Depends(in_project(Scope.DEVICES_READ)),
) -> Response:
    """Devices of the project in id order: all of them, or a page of `limit` at a time."""
    after = device_cursor(cursor)
    wanted = parse_metadata_filters(metadata or [])
    context, project_id = at.context, at.record.id

    async def fetch(start: str | None, size: int) -> tuple[list[DeviceOut], str | None]:
        page = await context.stores.devices.page(
            project_id, tag=tag, metadata=wanted, cursor=start, limit=size
        )
        return [device_out(device) for device in page.devices], page.next_cursor

    devices, next_cursor = await paged(fetch, after, limit)
    envelope = DeviceListEnvelope(
        status=200,
        action="list devices",
        message="Devices listed.",
        data=[],
        next_cursor=next_cursor,
    )
    return await streamed(envelope, "data", devices)


@router.get("/v2/projects/{project_id}/devices/{device_id}", responses=error_responses(*IN_PROJECT))
async def get_device(
    found: InDevice = Depends(device_in(Scope.DEVICES_READ)),
) -> DeviceEnvelope:
    """One device (without its token, which is stored only as a hash)."""
    return DeviceEnvelope(
        status=200, action="get device", message="Device found.", data=device_out(found.record)
    )


@router.patch(
    "/v2/projects/{project_id}/devices/{device_id}",
    responses=error_responses(400, *IN_PROJECT),
)
async def update_device(
    project_id: str,
    device_id: str,
    body: DevicePatch,
    at: InProject = Depends(in_project(Scope.DEVICES_WRITE)),
) -> DeviceEnvelope:
    """Change name, description, tags or metadata: allowed_commands ("a;b;c") and custom keys,
    merged into the device's (a key set to null is removed)."""
    tags = validate_tags(body.tags) if body.tags is not None else None
    allowed_commands, custom = _metadata(body.metadata, removals=True)
    device = await at.context.stores.devices.update(
        project_id,
        device_id,
        name=body.name,
        description=body.description,
        tags=tags,
        allowed_commands=allowed_commands,
        metadata=(lambda current: merge_metadata(current, custom)) if custom else None,
    )
    if device is None:
        raise device_not_found(project_id, device_id)
    return DeviceEnvelope(
        status=200, action="update device", message="Device updated.", data=device_out(device)
    )


@router.delete(
    "/v2/projects/{project_id}/devices/{device_id}",
    responses=error_responses(*IN_PROJECT),
)
async def delete_device(found: InDevice = Depends(device_in(Scope.DEVICES_WRITE))) -> Done:
    """Delete the device; its token, its broker login and its download keys stop working."""
    context, device = found.context, found.record
    project_id, device_id = device.project_id, device.id
    if context.provisioner is not None and device.source is DeviceSource.MQTT:
        # First, so that a broker that cannot take it leaves the device whole (503, retry).
        await context.provisioner.deprovision(device_id)
    if not await context.stores.devices.delete(project_id, device_id):
        raise device_not_found(project_id, device_id)
    return Done(action="delete device")


@router.post(
    "/v2/projects/{project_id}/devices/{device_id}/token",
    status_code=200,
    responses=error_responses(*IN_PROJECT),
)
async def rotate_device_token(
    found: InDevice = Depends(device_in(Scope.DEVICES_WRITE)),
) -> DeviceCreatedEnvelope:
    """Give the device a new token (in data.metadata.device_token and in
    data.device_credentials, shown this once).

    The old token stops working at once, for downloads and (with dynamic security) on the
    broker, which disconnects the device so that it logs in again with the new one.
    """
    context, device = found.context, found.record
    project_id, device_id = device.project_id, device.id
    token = new_token(device_id)
    if context.provisioner is not None and device.source is DeviceSource.MQTT:
        # Broker first: if it cannot take the password the old token keeps working everywhere.
        await context.provisioner.set_password(device_id, token)
    rotated = await context.stores.devices.rotate_token(project_id, device_id, token)
    if rotated is None:
        raise device_not_found(project_id, device_id)
    return DeviceCreatedEnvelope(
        status=200,
        action="rotate device token",
        message="Device token rotated; the old token no longer works.",
        data=device_created(rotated, token),
    )
