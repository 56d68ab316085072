"""An async client of the service's HTTP API, for the CLI, the simulated fleet and the demo.

Every error answer becomes an `ApiError` whose message is the service's own `message` (which
already says what went wrong and how to fix it), prefixed with the request; a service that
cannot be reached is an `ApiUnreachable` naming the URL and the setting to check.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from orchestrator.errors import OrchestratorError

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

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
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

    async def data(self, method: str, path: str, **options: Any) -> Any:
        """The `data` of an enveloped answer (`{success, status, action, message, data}`)."""
        return (await self.request(method, path, **options))["data"]

    # --- projects, devices, files, commands (the seed API) --------------------------------

    async def create_project(
        self, name: str, *, description: str = "", tags: list[str] | None = None
    ) -> dict[str, Any]:
        """`POST /v2/projects`: the project (`id`, `name`, `description`, `tags`, …)."""
        body = {"name": name, "description": description, "tags": tags or []}
        project: dict[str, Any] = await self.data("POST", "/v2/projects", json=body)
        return project

    async def projects(self) -> list[dict[str, Any]]:
        """`GET /v2/projects`: the projects the key may use, newest first."""
        projects: list[dict[str, Any]] = await self.data("GET", "/v2/projects")
        return projects

    async def project(self, project_id: str) -> dict[str, Any]:
        """`GET /v2/projects/{id}`: one project."""
        project: dict[str, Any] = await self.data("GET", f"/v2/projects/{project_id}")
        return project

    async def update_project(self, project_id: str, **changes: Any) -> dict[str, Any]:
        """`PATCH /v2/projects/{id}` with `name`, `description` or `tags`: the project."""
        project: dict[str, Any] = await self.data(
            "PATCH", f"/v2/projects/{project_id}", json=changes
        )
        return project

    async def delete_project(self, project_id: str) -> dict[str, Any]:
        """`DELETE /v2/projects/{id}` with everything in it: the answer (`action`, `message`)."""
        body: dict[str, Any] = await self.request("DELETE", f"/v2/projects/{project_id}")
        return body

    async def create_device(self, **fields: Any) -> dict[str, Any]:
        """`POST …/devices` (seed 003): the device, with `metadata.device_token`."""
        device: dict[str, Any] = await self.data("POST", f"{self._project()}/devices", json=fields)
        return device

    async def rotate_device_token(self, device_id: str) -> str:
        """`POST …/devices/{id}/token`: the device's new token; the old one stops working."""
        device = await self.data("POST", f"{self._project()}/devices/{device_id}/token")
        return str(device["metadata"]["device_token"])

    async def devices(self, *, tag: str = "") -> AsyncIterator[dict[str, Any]]:
        """Every device of the project (optionally with `tag`), a page of `limit` at a time,
        so that neither side holds the whole fleet's listing at once."""
        cursor = ""
        while True:
            params = {k: v for k, v in (("tag", tag), ("cursor", cursor)) if v}
            params["limit"] = str(DEVICE_PAGE)
            body = await self.request("GET", f"{self._project()}/devices", params=params)
            for device in body.get("data", []):
                yield device
            cursor = body.get("next_cursor") or ""
            if not cursor:
                return

    async def upload_file(
        self, path: Path, *, type_: str = "firmware", description: str = ""
    ) -> dict[str, Any]:
        """`POST …/files`: `{name, description, size, time, sha256, type}`."""
        with path.open("rb") as stream:
            body: dict[str, Any] = await self.request(
                "POST",
                f"{self._project()}/files",
                files={"file": (path.name, stream, "application/octet-stream")},
                data={"type": type_, "description": description},
            )
        return body

    async def files(self, *, type_: str) -> list[dict[str, Any]]:
        """`GET …/files?type=` (firmware or logo): the project's files of that type."""
        body = await self.request("GET", f"{self._project()}/files", params={"type": type_})
        files: list[dict[str, Any]] = body["files"]
        return files

    async def send(self, device_id: str, command: str, data: Mapping[str, Any]) -> dict[str, Any]:
        """`POST …/communication/command`: `{command_id, topic}`."""
        body = await self.request(
            "POST",
            f"{self._project()}/devices/{device_id}/communication/command",
            json={"command": command, "data": dict(data)},
        )
        sent: dict[str, Any] = body.get("data", {})
        return sent

    # --- rollouts -------------------------------------------------------------------------

    async def create_rollout(self, plan_text: str, *, dry_run: bool = False) -> dict[str, Any]:
        """`POST …/rollouts` with a YAML or JSON plan; the rollout, or the dry run's preview."""
        stripped = plan_text.lstrip()
        content_type = "application/json" if stripped.startswith("{") else "application/yaml"
        body: dict[str, Any] = await self.request(
            "POST",
            f"{self._project()}/rollouts",
            content=plan_text.encode(),
            headers={"Content-Type": content_type},
            params={"dry_run": "true"} if dry_run else {},
        )
        return body

    async def rollouts(self, *, state: str = "") -> list[dict[str, Any]]:
        """`GET …/rollouts[?state=]`, newest first."""
        params = {"state": state} if state else {}
        body = await self.request("GET", f"{self._project()}/rollouts", params=params)
        rollouts: list[dict[str, Any]] = body["rollouts"]
        return rollouts

    async def rollout(self, rollout_id: str) -> dict[str, Any]:
        """`GET …/rollouts/{id}`."""
        body: dict[str, Any] = await self.request("GET", f"{self._project()}/rollouts/{rollout_id}")
        return body

    async def rollout_events(self, rollout_id: str) -> list[dict[str, Any]]:
        """`GET …/rollouts/{id}/events`, oldest first."""
        body = await self.request("GET", f"{self._project()}/rollouts/{rollout_id}/events")
        events: list[dict[str, Any]] = body["events"]
        return events

    async def rollout_action(
        self, rollout_id: str, action: str, reason: str = ""
    ) -> dict[str, Any]:
        """`POST …/rollouts/{id}/{action}`: the rollout after it."""
        body: dict[str, Any] = await self.request(
            "POST",
            f"{self._project()}/rollouts/{rollout_id}/{action}",
            json={"reason": reason} if reason else None,
        )
        return body

    # --- deploy hooks ---------------------------------------------------------------------

    async def create_hook(
        self, name: str, plan_text: str, secret: str | None = None
    ) -> dict[str, Any]:
        """`POST …/hooks`: the hook with its delivery `url` and its `secret` (shown only here)."""
        hook: dict[str, Any] = await self.data(
            "POST",
            f"{self._project()}/hooks",
            json={"name": name, "plan": plan_text, "secret": secret},
        )
        return hook

    async def hooks(self) -> list[dict[str, Any]]:
        """`GET …/hooks`: the project's hooks (without their secrets)."""
        hooks: list[dict[str, Any]] = await self.data("GET", f"{self._project()}/hooks")
        return hooks

    async def hook(self, hook_id: str) -> dict[str, Any]:
        """`GET …/hooks/{id}`: one hook (without its secret)."""
        hook: dict[str, Any] = await self.data("GET", f"{self._project()}/hooks/{hook_id}")
        return hook

    async def delete_hook(self, hook_id: str) -> dict[str, Any]:
        """`DELETE …/hooks/{id}`: the service's answer (`action`, `message`)."""
        body: dict[str, Any] = await self.request("DELETE", f"{self._project()}/hooks/{hook_id}")
        return body

    async def hook_deliveries(self, hook_id: str) -> list[dict[str, Any]]:
        """`GET …/hooks/{id}/deliveries`: what each delivery asked for and started, newest first."""
        deliveries: list[dict[str, Any]] = await self.data(
            "GET", f"{self._project()}/hooks/{hook_id}/deliveries"
        )
        return deliveries

    # --- notifications --------------------------------------------------------------------

    async def create_notification(
        self, url: str, events: list[str] | None = None, secret: str | None = None
    ) -> dict[str, Any]:
        """`POST …/notifications` (`events` None: every event): the subscription and its secret."""
        subscription: dict[str, Any] = await self.data(
            "POST",
            f"{self._project()}/notifications",
            json={"url": url, "events": events, "secret": secret},
        )
        return subscription

    async def notifications(self) -> list[dict[str, Any]]:
        """`GET …/notifications`: the project's subscriptions (without their secrets)."""
        subscriptions: list[dict[str, Any]] = await self.data(
            "GET", f"{self._project()}/notifications"
        )
        return subscriptions

    async def delete_notification(self, notification_id: str) -> dict[str, Any]:
        """`DELETE …/notifications/{id}`: the service's answer (`action`, `message`)."""
        body: dict[str, Any] = await self.request(
            "DELETE", f"{self._project()}/notifications/{notification_id}"
        )
        return body

    async def notification_deliveries(self, notification_id: str) -> list[dict[str, Any]]:
        """`GET …/notifications/{id}/deliveries`: each notice and its attempts, newest first."""
        notices: list[dict[str, Any]] = await self.data(
            "GET", f"{self._project()}/notifications/{notification_id}/deliveries"
        )
        return notices


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
