"""Building command payloads; shared by the API's single commands and the engine's rollouts."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from orchestrator.domain.commands import FILE_COMMANDS
from orchestrator.domain.plans import Plan
from orchestrator.errors import InvalidInput, NotFound
from orchestrator.metrics import Metrics
from orchestrator.store import Stores
from orchestrator.store.files import StoredFile
from orchestrator.timeutil import isoformat_z, utc_now


async def file_command_payload(
    stores: Stores,
    *,
    public_url: str,
    key_ttl_s: int,
    project_id: str,
    device_id: str,
    command: str,
    data: dict[str, Any],
    command_id: str,
    rollout_id: str = "",
    version: str | None = None,
    metrics: Metrics | None = None,
) -> dict[str, Any]:
    """The payload of download_firmware / download_logo, with a fresh download key (§5).

    The key is counted in `metrics` (ota_download_keys_issued_total) when it is given.
    """
    file_type = FILE_COMMANDS[command]
    file_name = data.get("file_name")
    if not isinstance(file_name, str) or not file_name:
        raise InvalidInput(
            f"{command} needs data.file_name, the name of an uploaded {file_type} file "
            f"(list them with GET /v2/projects/{{project_id}}/files?type={file_type})",
            errors=[{"loc": "body.data.file_name", "msg": "field required"}],
        )
    stored = await stores.files.get(project_id, file_name)
    if stored is None or stored.type is not file_type:
        raise NotFound(
            f"no {file_type} file named {file_name!r} in project {project_id}; "
            "upload it first with POST /v2/projects/{project_id}/files"
        )
    [key] = await stores.download_keys.issue(
        [(device_id, command_id)],
        project_id=project_id,
        file_name=stored.name,
        size=stored.size,
        sha256=stored.sha256,
        ttl_s=key_ttl_s,
        rollout_id=rollout_id,
    )
    if metrics is not None:
        metrics.download_keys_issued.inc()
    return download_payload(
        stored,
        key=key.key,
        public_url=public_url,
        expires_at=isoformat_z(utc_now() + timedelta(seconds=key_ttl_s)),
        command_id=command_id,
        rollout_id=rollout_id,
        version=version,
        data=data,
    )


def health_contract(plan: Plan) -> dict[str, float] | None:
    """What the download_firmware payload tells firmware about the plan's health soak:
    `{"soak_s", "heartbeat_s"}` (ARCHITECTURE §6b); None without one."""
    health = plan.policy.health
    if health is None:
        return None
    return {"soak_s": health.soak_s, "heartbeat_s": health.heartbeat_s}


def download_payload(
    stored: StoredFile,
    *,
    key: str,
    public_url: str,
    expires_at: str,
    command_id: str,
    rollout_id: str = "",
    version: str | None = None,
    data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """`{url, expires_at, file_name, size, sha256, version?, command_id, rollout_id?}` (§5)."""
    payload: dict[str, Any] = {
        **{k: v for k, v in (data or {}).items() if k not in {"url", "expires_at", "command_id"}},
        "url": f"{public_url}/v2/device/download?key={key}",
        "expires_at": expires_at,
        "file_name": stored.name,
        "size": stored.size,
        "sha256": stored.sha256,
        "command_id": command_id,
    }
    if version:
        payload["version"] = version
    if rollout_id:
        payload["rollout_id"] = rollout_id
    return payload
