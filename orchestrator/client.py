"""An async client of the service's HTTP API, for the CLI, the simulated fleet and the demo.

Answers are read into the API's own models (`orchestrator.api.schemas`): an enveloped answer's
`data`, or one of the seed's shapes (the file listing, the command's answer, a delete's).
Every error answer becomes an `ApiError` whose message is the service's own `message` (which
already says what went wrong and how to fix it), prefixed with the request; a service that
cannot be reached is an `ApiUnreachable` naming the URL and the setting to check.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Self, TypeVar

import httpx
from pydantic import BaseModel

from orchestrator.api.rollout_schemas import RolloutEvent, RolloutOut, RolloutPreview
from orchestrator.api.schemas import (
    CommandResponse,
    CommandSent,
    DeviceOut,
    Done,
    Envelope,
    FileList,
    FileListItem,
    FileOut,
    HookDeliveryOut,
    HookOut,
    NoticeOut,
    NotificationOut,
    Paged,
    ProjectOut,
)
from orchestrator.errors import OrchestratorError

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

DEFAULT_TIMEOUT_S = 30.0
DEVICE_PAGE = 1000  # devices per request when iterating a project's devices (the API's most)


class ApiError(OrchestratorError):
    """The service answered with an error."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class ApiUnreachable(OrchestratorError):
    """Nothing answered at the API URL."""


class ApiClient:
    """`async with ApiClient(url, key, project) as api:` then one method per API call."""

    def __init__(
        self,
        api_url: str,
        api_key: str,
        project_id: str = "",
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.project_id = project_id
        self._http = httpx.AsyncClient(
            base_url=self.api_url,
            headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
            timeout=timeout_s,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    # --- plumbing ------------------------------------------------------------------------

    def _project(self) -> str:
        if not self.project_id:
            raise OrchestratorError(
                "no project given; pass --project or set OTA_PROJECT (the id that "
                "`ota projects create` printed, or the one in .ota/credentials.env)"
            )
        return f"/v2/projects/{self.project_id}"

    async def request(self, method: str, path: str, **options: Any) -> Any:
        """The JSON answer of `method path`; ApiError on an error status."""
        try:
            response = await self._http.request(method, path, **options)
        except httpx.TransportError as exc:
            raise ApiUnreachable(
                f"cannot reach the API at {self.api_url} ({exc.__class__.__name__}); is "
                "`ota serve` running there? Set --api-url or OTA_API_URL"
            ) from exc
        if response.is_success:
            return response.json() if response.content else {}
        raise ApiError(_error_message(method, path, response), status=response.status_code)

    async def answer(self, model: type[M], method: str, path: str, **options: Any) -> M:
        """The answer of `method path` read as `model` (`Envelope[...]` for all but the seed's
        own shapes); its `data` is what was asked for."""
        return model.model_validate(await self.request(method, path, **options))

    async def data(self, model: type[Envelope[T]], method: str, path: str, **options: Any) -> T:
        """The `data` of the enveloped answer of `method path`, read as `model` says."""
        return (await self.answer(model, method, path, **options)).data

    # --- projects, devices, files, commands (the seed API) --------------------------------

    async def create_project(
        self, name: str, *, description: str = "", tags: list[str] | None = None
    ) -> ProjectOut:
        """`POST /v2/projects`: the project (`id`, `name`, `description`, `tags`, …)."""
        body = {"name": name, "description": description, "tags": tags or []}
        return await self.data(Envelope[ProjectOut], "POST", "/v2/projects", json=body)

    async def projects(self) -> list[ProjectOut]:
        """`GET /v2/projects`: the projects the key may use, newest first."""
        return await self.data(Envelope[list[ProjectOut]], "GET", "/v2/projects")

    async def project(self, project_id: str) -> ProjectOut:
        """`GET /v2/projects/{id}`: one project."""
        return await self.data(Envelope[ProjectOut], "GET", f"/v2/projects/{project_id}")

    async def update_project(self, project_id: str, **changes: Any) -> ProjectOut:
        """`PATCH /v2/projects/{id}` with `name`, `description` or `tags`: the project."""
        path = f"/v2/projects/{project_id}"
        return await self.data(Envelope[ProjectOut], "PATCH", path, json=changes)

    async def delete_project(self, project_id: str) -> Done:
        """`DELETE /v2/projects/{id}` with everything in it: the seed's delete answer."""
        return await self.answer(Done, "DELETE", f"/v2/projects/{project_id}")

    async def create_device(self, **fields: Any) -> DeviceOut:
        """`POST …/devices` (seed 003): the device, with `metadata.device_token`."""
        path = f"{self._project()}/devices"
        return await self.data(Envelope[DeviceOut], "POST", path, json=fields)

    async def rotate_device_token(self, device_id: str) -> str:
        """`POST …/devices/{id}/token`: the device's new token; the old one stops working."""
        path = f"{self._project()}/devices/{device_id}/token"
        device = await self.data(Envelope[DeviceOut], "POST", path)
        return device.metadata.device_token or ""

    async def update_device(self, device_id: str, **changes: Any) -> DeviceOut:
        """`PATCH …/devices/{id}` with `name`, `description`, `tags` or `metadata` (merged: a
        key set to None is removed): the device."""
        path = f"{self._project()}/devices/{device_id}"
        return await self.data(Envelope[DeviceOut], "PATCH", path, json=changes)

    async def devices(
        self, *, tag: str = "", metadata: Sequence[str] = ()
    ) -> AsyncIterator[DeviceOut]:
        """Every device of the project (optionally with `tag`, and holding every `key:value`
        of `metadata`), a page of `limit` at a time, so that neither side holds the whole
        fleet's listing at once."""
        cursor = ""
        while True:
            params = [(k, v) for k, v in (("tag", tag), ("cursor", cursor)) if v]
            params += [("metadata", wanted) for wanted in metadata]
            params.append(("limit", str(DEVICE_PAGE)))
            path = f"{self._project()}/devices"
            page = await self.answer(Paged[DeviceOut], "GET", path, params=params)
            for device in page.data:
                yield device
            cursor = page.next_cursor or ""
            if not cursor:
                return

    async def upload_file(
        self, path: Path, *, type_: str = "firmware", description: str = ""
    ) -> FileOut:
        """`POST …/files`: the stored file (`name`, `size`, `sha256`, …)."""
        with path.open("rb") as stream:
            return await self.data(
                Envelope[FileOut],
                "POST",
                f"{self._project()}/files",
                files={"file": (path.name, stream, "application/octet-stream")},
                data={"type": type_, "description": description},
            )

    async def files(self, *, type_: str) -> list[FileListItem]:
        """`GET …/files?type=` (firmware or logo): the project's files of that type (seed 000's
        `{"files": [...]}`)."""
        path = f"{self._project()}/files"
        return (await self.answer(FileList, "GET", path, params={"type": type_})).files

    async def send(self, device_id: str, command: str, data: Mapping[str, Any]) -> CommandSent:
        """`POST …/communication/command` (seed 000's answer): `{command_id, topic}`."""
        sent = await self.answer(
            CommandResponse,
            "POST",
            f"{self._project()}/devices/{device_id}/communication/command",
            json={"command": command, "data": dict(data)},
        )
        return sent.data

    # --- rollouts -------------------------------------------------------------------------

    def _plan_post(self, plan_text: str, *, dry_run: bool) -> dict[str, Any]:
        """The request options that post a YAML or JSON plan."""
        stripped = plan_text.lstrip()
        content_type = "application/json" if stripped.startswith("{") else "application/yaml"
        return {
            "content": plan_text.encode(),
            "headers": {"Content-Type": content_type},
            "params": {"dry_run": "true"} if dry_run else {},
        }

    async def create_rollout(self, plan_text: str) -> RolloutOut:
        """`POST …/rollouts` with a YAML or JSON plan: the rollout, `pending`."""
        options = self._plan_post(plan_text, dry_run=False)
        path = f"{self._project()}/rollouts"
        return await self.data(Envelope[RolloutOut], "POST", path, **options)

    async def preview_rollout(self, plan_text: str) -> RolloutPreview:
        """`POST …/rollouts?dry_run=true`: the waves and exclusions; nothing is started."""
        options = self._plan_post(plan_text, dry_run=True)
        path = f"{self._project()}/rollouts"
        return await self.data(Envelope[RolloutPreview], "POST", path, **options)

    async def rollouts(self, *, state: str = "") -> list[RolloutOut]:
        """`GET …/rollouts[?state=]`, newest first."""
        params = {"state": state} if state else {}
        path = f"{self._project()}/rollouts"
        return await self.data(Envelope[list[RolloutOut]], "GET", path, params=params)

    async def rollout(self, rollout_id: str) -> RolloutOut:
        """`GET …/rollouts/{id}`."""
        path = f"{self._project()}/rollouts/{rollout_id}"
        return await self.data(Envelope[RolloutOut], "GET", path)

    async def rollout_events(self, rollout_id: str) -> list[RolloutEvent]:
        """`GET …/rollouts/{id}/events`, oldest first."""
        path = f"{self._project()}/rollouts/{rollout_id}/events"
        return await self.data(Envelope[list[RolloutEvent]], "GET", path)

    async def rollout_action(self, rollout_id: str, action: str, reason: str = "") -> RolloutOut:
        """`POST …/rollouts/{id}/{action}`: the rollout after it."""
        path = f"{self._project()}/rollouts/{rollout_id}/{action}"
        body = {"reason": reason} if reason else None
        return await self.data(Envelope[RolloutOut], "POST", path, json=body)

    # --- deploy hooks ---------------------------------------------------------------------

    async def create_hook(self, name: str, plan_text: str, secret: str | None = None) -> HookOut:
        """`POST …/hooks`: the hook with its delivery `url` and its `secret` (shown only here)."""
        body = {"name": name, "plan": plan_text, "secret": secret}
        path = f"{self._project()}/hooks"
        return await self.data(Envelope[HookOut], "POST", path, json=body)

    async def hooks(self) -> list[HookOut]:
        """`GET …/hooks`: the project's hooks (without their secrets)."""
        path = f"{self._project()}/hooks"
        return await self.data(Envelope[list[HookOut]], "GET", path)

    async def hook(self, hook_id: str) -> HookOut:
        """`GET …/hooks/{id}`: one hook (without its secret)."""
        path = f"{self._project()}/hooks/{hook_id}"
        return await self.data(Envelope[HookOut], "GET", path)

    async def delete_hook(self, hook_id: str) -> Done:
        """`DELETE …/hooks/{id}`: the seed's delete answer (`action`, `message`)."""
        return await self.answer(Done, "DELETE", f"{self._project()}/hooks/{hook_id}")

    async def hook_deliveries(self, hook_id: str) -> list[HookDeliveryOut]:
        """`GET …/hooks/{id}/deliveries`: what each delivery asked for and started, newest first."""
        path = f"{self._project()}/hooks/{hook_id}/deliveries"
        return await self.data(Envelope[list[HookDeliveryOut]], "GET", path)

    # --- notifications --------------------------------------------------------------------

    async def create_notification(
        self, url: str, events: list[str] | None = None, secret: str | None = None
    ) -> NotificationOut:
        """`POST …/notifications` (`events` None: every event): the subscription and its secret."""
        body = {"url": url, "events": events, "secret": secret}
        path = f"{self._project()}/notifications"
        return await self.data(Envelope[NotificationOut], "POST", path, json=body)

    async def notifications(self) -> list[NotificationOut]:
        """`GET …/notifications`: the project's subscriptions (without their secrets)."""
        path = f"{self._project()}/notifications"
        return await self.data(Envelope[list[NotificationOut]], "GET", path)

    async def delete_notification(self, notification_id: str) -> Done:
        """`DELETE …/notifications/{id}`: the seed's delete answer (`action`, `message`)."""
        path = f"{self._project()}/notifications/{notification_id}"
        return await self.answer(Done, "DELETE", path)

    async def notification_deliveries(self, notification_id: str) -> list[NoticeOut]:
        """`GET …/notifications/{id}/deliveries`: each notice and its attempts, newest first."""
        path = f"{self._project()}/notifications/{notification_id}/deliveries"
        return await self.data(Envelope[list[NoticeOut]], "GET", path)


def _error_message(method: str, path: str, response: httpx.Response) -> str:
    try:
        body = response.json()
    except json.JSONDecodeError:
        body = None
    message = body.get("message") if isinstance(body, dict) else None
    if not message:
        message = response.text.strip()[:200] or response.reason_phrase
    where = f"{method} {path}"
    if response.status_code == 401:
        message += " (check --api-key or OTA_API_KEY)"
    return f"{where}: {response.status_code} {message}"
