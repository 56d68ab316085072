"""Send one command to one device over MQTT QoS 2 (seed 000)."""

from __future__ import annotations

import uuid

import structlog
from fastapi import APIRouter, Depends

from orchestrator.api.auth import InDevice, device_in
from orchestrator.api.bodies import JSONRoute
from orchestrator.api.errors import IN_PROJECT, error_responses
from orchestrator.api.schemas import CommandRequest, CommandResponse, CommandSent
from orchestrator.domain.auth import Scope
from orchestrator.domain.commands import FILE_COMMANDS, is_allowed, validate_command_name
from orchestrator.domain.devices import DeviceSource
from orchestrator.engine.commands import file_command_payload
from orchestrator.errors import Forbidden, NotFound
from orchestrator.timeutil import isoformat_z, utc_now
from orchestrator.transport.topics import command_topic

log = structlog.get_logger(__name__)
router = APIRouter(tags=["commands"], route_class=JSONRoute)


@router.post(
    "/v2/projects/{project_id}/devices/{device_id}/communication/command",
    responses=error_responses(400, *IN_PROJECT),
)
async def send_command(
    body: CommandRequest, found: InDevice = Depends(device_in(Scope.SEND_COMMANDS))
) -> CommandResponse:
    """Publish the command to `{device_id}/control/{command}` with QoS 2, retain off.

    403 when the device's allowed_commands leave the command out; 404 for an http device, and
    for a download_firmware / download_logo whose data.file_name is no file of that type.
    """
    command = validate_command_name(body.command)
    context, device = found.context, found.record
    project_id, device_id = device.project_id, device.id
    if device.source is not DeviceSource.MQTT:
        raise NotFound(
            f"device {device_id} is an http device and cannot receive commands; "
            "only devices created with source 'mqtt' can"
        )
    if not is_allowed(command, device.allowed_commands):
        raise Forbidden(
            f"device {device_id} does not accept {command!r}; its allowed_commands are "
            f"{';'.join(device.allowed_commands)!r} "
            "(change them with PATCH metadata.allowed_commands)"
        )
    command_id = uuid.uuid4().hex
    if command in FILE_COMMANDS:
        payload = await file_command_payload(
            context.stores,
            public_url=context.settings.public_url,
            key_ttl_s=context.settings.download_key_ttl_s,
            project_id=project_id,
            device_id=device_id,
            command=command,
            data=body.data,
            command_id=command_id,
            metrics=context.metrics,
        )
    else:
        payload = {**body.data, "command_id": command_id}
    await context.stores.commands.record(
        [(device_id, command_id)],
        project_id=project_id,
        command=command,
        sent_at=isoformat_z(utc_now()),
    )
    await context.transport.publish_command(device_id, command, payload)
    log.info("command sent", device_id=device_id, command=command, command_id=command_id)
    return CommandResponse(
        data=CommandSent(command_id=command_id, topic=command_topic(device_id, command))
    )
