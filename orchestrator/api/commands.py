"""Send one command to one device over MQTT QoS 2 (seed 000)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import structlog
from fastapi import APIRouter, Depends

from orchestrator.api.auth import check_project, require
from orchestrator.api.context import AppContext, get_context
from orchestrator.api.errors import error_responses
from orchestrator.api.schemas import CommandRequest, CommandResponse, CommandSent
from orchestrator.domain.auth import Principal, Scope
from orchestrator.domain.commands import FILE_COMMANDS, is_allowed, validate_command_name
from orchestrator.domain.devices import DeviceSource
from orchestrator.errors import Forbidden, InvalidInput, NotFound
from orchestrator.timeutil import isoformat_z, utc_now
from orchestrator.transport.topics import command_topic

log = structlog.get_logger(__name__)
router = APIRouter(tags=["commands"], responses=error_responses(400, 401, 403, 404, 503))


async def file_command_payload(
    context: AppContext,
    project_id: str,
    device_id: str,
    command: str,
    data: dict[str, Any],
    command_id: str,
    rollout_id: str = "",
) -> dict[str, Any]:
    """The payload of download_firmware / download_logo, with a fresh download key."""
    file_type = FILE_COMMANDS[command]
    file_name = data.get("file_name")
    if not isinstance(file_name, str) or not file_name:
        raise InvalidInput(
            f"{command} needs data.file_name, the name of an uploaded {file_type} file "
            "(list them with GET /v2/projects/{project_id}/files?type=" + file_type + ")",
            errors=[{"loc": "body.data.file_name", "msg": "field required"}],
        )
    stored = await context.stores.files.get(project_id, file_name)
    if stored is None or stored.type is not file_type:
        raise NotFound(
            f"no {file_type} file named {file_name!r} in project {project_id}; "
            "upload it first with POST /v2/projects/{project_id}/files"
        )
    key = await context.stores.download_keys.issue(
        device_id=device_id,
        project_id=project_id,
        file_name=stored.name,
        size=stored.size,
        ttl_s=context.settings.download_key_ttl,
        command_id=command_id,
        rollout_id=rollout_id,
    )
    expires_at = utc_now() + timedelta(seconds=context.settings.download_key_ttl)
    payload: dict[str, Any] = {
        **{k: v for k, v in data.items() if k not in {"url", "expires_at", "command_id"}},
        "url": f"{context.settings.public_url}/v2/device/download?key={key.key}",
        "expires_at": isoformat_z(expires_at),
        "file_name": stored.name,
        "size": stored.size,
        "sha256": stored.sha256,
        "command_id": command_id,
    }
    if rollout_id:
        payload["rollout_id"] = rollout_id
    return payload


@router.post(
    "/v2/projects/{project_id}/devices/{device_id}/communication/command", name="send_command"
)
async def send_command(
    project_id: str,
    device_id: str,
    body: CommandRequest,
    context: AppContext = Depends(get_context),
    principal: Principal = Depends(require(Scope.SEND_COMMANDS)),
) -> CommandResponse:
    """Publish the command to `{device_id}/control/{command}` with QoS 2, retain off."""
    command = validate_command_name(body.command)
    await check_project(context, principal, project_id)
    device = await context.stores.devices.get(project_id, device_id)
    if device is None:
        raise NotFound(f"device {device_id} not found in project {project_id}")
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
            context, project_id, device_id, command, body.data, command_id
        )
    else:
        payload = {**body.data, "command_id": command_id}
    await context.stores.commands.record(
        command_id,
        device_id=device_id,
        project_id=project_id,
        command=command,
        sent_at=isoformat_z(utc_now()),
    )
    await context.transport.publish_command(device_id, command, payload)
    log.info("command sent", device_id=device_id, command=command, command_id=command_id)
    return CommandResponse(
        data=CommandSent(command_id=command_id, topic=command_topic(device_id, command))
    )
