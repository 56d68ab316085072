"""Schemathesis against the running service: every operation answers as /openapi.json says.

The document comes from the app factory, and the service under test serves that same document
(checked before the first operation). Each operation gets a bounded, derandomized run of
schemathesis's examples, coverage and fuzzing phases with every check it has: no 5xx; status
codes, content types, headers and bodies as documented; schema-valid input accepted and
schema-invalid input refused; credentials enforced; 405 with `Allow` for other methods.

The path ids name a real project, device, rollout, hook and subscription (deletes get objects of
their own, the project delete a project with a device, a file and a subscription), so every
route runs past its lookups. Ids and credentials only exist once the
service runs, after collection has built part of the cases, so cases carry marks that the test
swaps for the real values when it sends them.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import pytest
import schemathesis

from orchestrator.api.app import create_app
from orchestrator.domain.auth import Scope
from orchestrator.embedded import EmbeddedBroker, free_port
from orchestrator.service import serving
from orchestrator.settings import Settings
from orchestrator.store import Stores
from orchestrator.store.redis import connect

T = TypeVar("T")

MAX_EXAMPLES = 10  # per operation: the file takes ~30 s of one core, half to start and collect
SEED = 20261201
FIRMWARE = "fw_1.0.0.bin"
PLAN = """\
name: fuzz-{n}
firmware:
  file: fw_1.0.0.bin
waves:
  - percent: 50
  - percent: 100
"""
DOWNLOAD = "/v2/device/download"
CREATE_ROLLOUT = "POST /v2/projects/{project_id}/rollouts"
PLAN_MEDIA_TYPES = ("application/yaml", "application/json")

# Marks, swapped for real values when a case is sent (they match the documented patterns).
CREDENTIALS = "credentials-of-the-service"
KEY = "dk_" + "k" * 32
IDS = {
    "project_id": "project",
    "device_id": "device",
    "rollout_id": "rollout",
    "hook_id": "hook",
    "subscription_id": "subscription",
}
DOOMED = {  # what the DELETE operations delete
    "device_id": "doomed-device",
    "hook_id": "doomed-hook",
    "subscription_id": "doomed-subscription",
    "name": "doomed-file",
}
DOOMED_PROJECT = "doomed-project"  # what DELETE /v2/projects/{project_id} deletes
DELETE_PROJECT = "DELETE /v2/projects/{project_id}"

# What schema-valid requests may get besides schemathesis's own list (2xx, 401, 403, 404, 409):
# - 400 where a body has rules JSON Schema cannot state (the message names the rule): a plan's
#   cross-field rules and its files (rollouts, hook templates and deliveries), an upload's file
#   name (in the part's header, not in a field), a URL's host, a secret's printable characters
#   and base64 (notifications, hooks), a device's custom metadata keys once a PATCH merges
#   them into the stored ones (64 at most in all);
# - 416 for a well-formed Range past the end of the file being downloaded.
_SEMANTIC = ["2xx", 400, 401, 403, 404, 409, 413]
ACCEPTED = {
    "POST /v2/projects/{project_id}/files": _SEMANTIC,
    CREATE_ROLLOUT: _SEMANTIC,
    "POST /v2/projects/{project_id}/hooks": _SEMANTIC,
    "POST /v2/projects/{project_id}/notifications": _SEMANTIC,
    "POST /v2/hooks/{hook_id}": _SEMANTIC,
    "PATCH /v2/projects/{project_id}/devices/{device_id}": _SEMANTIC,
    f"GET {DOWNLOAD}": ["2xx", 401, 403, 404, 409, 416],
    f"HEAD {DOWNLOAD}": ["2xx", 401, 403, 404, 409, 416],
}

DOCUMENT = create_app(
    Settings(redis_url="redis://127.0.0.1:1", mqtt_url="mqtt://127.0.0.1:1")
).openapi()
CONFIG = schemathesis.Config.from_dict(
    {
        "seed": SEED,
        "generation": {
            "max-examples": MAX_EXAMPLES,
            "deterministic": True,
            "database": "none",
            "no-shrink": True,  # a failing run stays bounded; the report has the curl to replay
        },
        "parameters": {f"path.{name}": mark for name, mark in IDS.items()} | {"query.key": KEY},
        # The first entry that sets an option wins: the project delete gets a project of its own.
        "operations": [
            {"include-name": DELETE_PROJECT, "parameters": {"path.project_id": DOOMED_PROJECT}},
            {"include-method": "DELETE", "parameters": {f"path.{n}": m for n, m in DOOMED.items()}},
        ]
        + [
            {
                "include-name": name,
                "checks": {"positive_data_acceptance": {"expected-statuses": statuses}},
            }
            for name, statuses in ACCEPTED.items()
        ],
    }
)
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)


@schema.auth(refresh_interval=None)
class Credentials:
    """Schemathesis's auth, so that the cases which leave credentials out on purpose (to see a
    401) go without them; the others carry the mark."""

    def get(self, case: Any, context: Any) -> str:
        return CREDENTIALS

    def set(self, case: Any, data: str, context: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": data}


@schema.hooks.hook("filter_case")
def plans_as_yaml_or_json(ctx: Any, case: Any) -> bool:
    """A plan goes as application/yaml or application/json: the other YAML media types reach
    the same parser, and the plan's schema alone makes some 300 coverage cases for each."""
    return case.operation.label != CREATE_ROLLOUT or case.media_type in PLAN_MEDIA_TYPES


@dataclass
class Live:
    """The running service and the real values behind the marks."""

    base_url: str
    admin_key: str
    device_token: str  # of the device the download key was issued to
    key: str
    ids: dict[str, str]  # mark -> real id or name


class ServiceThread:
    """The service on an event loop of its own, in a thread: Hypothesis's tests are sync."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.base_url = f"http://{settings.http_host}:{settings.http_port}"
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        redis = connect(self.settings.redis_url)
        self.stores = Stores.build(redis, self.settings.redis_prefix)
        try:
            async with serving(self.settings):
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:
            self._failure = exc
            raise
        finally:
            self._ready.set()
            await redis.aclose()

    def run(self, awaitable: Awaitable[T]) -> T:
        """Await `awaitable` on the service's loop (where its Redis client lives)."""

        async def main() -> T:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(main(), self.loop).result(timeout=30)

    def __enter__(self) -> ServiceThread:
        self._thread.start()
        assert self._ready.wait(timeout=30), "the service did not start within 30 s"
        if self._failure is not None:
            raise self._failure
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the service did not stop within 60 s"


def _data(response: httpx.Response, status: int) -> Any:
    assert response.status_code == status, response.text
    body = response.json()
    return body.get("data", body)


def _seed(service: ServiceThread, client: httpx.Client, admin_key: str) -> Live:
    """A project with devices, files, a rollout, hooks, subscriptions and a download key."""
    project = _data(client.post("/v2/projects", json={"name": "fuzz"}), 201)["id"]
    prefix = f"/v2/projects/{project}"

    def made(path: str, body: dict[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = _data(client.post(f"{prefix}/{path}", json=body), 201)
        return created

    devices = [made("devices", {"name": f"d{n}", "source": "mqtt"}) for n in range(5)]
    made("devices", {"name": "h", "source": "http"})  # excluded from the rollout
    for name, file_type in ((FIRMWARE, "firmware"), ("logo.png", "logo"), ("fw_0.bin", "firmware")):
        form = {"type": file_type}
        _data(client.post(f"{prefix}/files", files={"file": (name, b"x" * 64)}, data=form), 201)
    yaml = {"Content-Type": "application/yaml"}
    rollout = _data(client.post(f"{prefix}/rollouts", content=PLAN.format(n=1), headers=yaml), 201)
    hooks = [made("hooks", {"name": f"h{n}", "plan": PLAN.format(n="${version}")}) for n in (1, 2)]
    url = {"url": "https://example.com/ota"}
    subscriptions = [made("notifications", url) for _ in range(2)]
    doomed_project = _data(client.post("/v2/projects", json={"name": "doomed"}), 201)["id"]
    in_doomed = f"/v2/projects/{doomed_project}"
    _data(client.post(f"{in_doomed}/devices", json={"name": "d", "source": "mqtt"}), 201)
    form = {"type": "firmware"}
    _data(client.post(f"{in_doomed}/files", files={"file": (FIRMWARE, b"x" * 64)}, data=form), 201)
    _data(client.post(f"{in_doomed}/notifications", json=url), 201)
    downloader = devices[-1]  # no operation's path names it: its token stays
    [key] = service.run(
        service.stores.download_keys.issue(
            [(downloader["id"], "fuzz")], project_id=project, file_name=FIRMWARE, size=64, ttl_s=600
        )
    )
    real = {
        "project_id": project,
        "device_id": devices[0]["id"],
        "rollout_id": rollout["id"],
        "hook_id": hooks[0]["id"],
        "subscription_id": subscriptions[0]["id"],
    }
    doomed = {
        "device_id": devices[1]["id"],
        "hook_id": hooks[1]["id"],
        "subscription_id": subscriptions[1]["id"],
        "name": "fw_0.bin",
    }
    return Live(
        base_url=service.base_url,
        admin_key=admin_key,
        device_token=downloader["metadata"]["device_token"],
        key=key.key,
        ids={IDS[name]: value for name, value in real.items()}
        | {DOOMED[name]: value for name, value in doomed.items()}
        | {DOOMED_PROJECT: doomed_project},
    )


@pytest.fixture(scope="module")
def live(
    redis_url: str, mqtt_broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    """The service on real Redis and mosquitto, with an admin key and things to find."""
    settings = Settings(
        redis_url=redis_url,
        redis_prefix=f"{{test-{uuid.uuid4().hex[:12]}}}:",
        mqtt_url=mqtt_broker.url,
        mqtt_version=mqtt_broker.mqtt_version,
        http_port=free_port(),
        data_dir=tmp_path_factory.mktemp("schemathesis"),
        log_format="json",
        instance_id=f"test-{uuid.uuid4().hex[:8]}",
        role="api",
    )
    with ServiceThread(settings) as service:
        admin_key, _ = service.run(
            service.stores.api_keys.create("admin", frozenset({Scope.ADMIN}))
        )
        headers = {"Authorization": f"Bearer {admin_key}"}
        with httpx.Client(base_url=service.base_url, headers=headers, timeout=30) as client:
            assert _data(client.get("/openapi.json"), 200) == DOCUMENT
            yield _seed(service, client, admin_key)


@schema.parametrize()
def test_the_service_answers_as_its_openapi_document_says(case: Any, live: Live) -> None:
    """No 5xx; every status, header, content type and body is the documented one."""
    case.path_parameters = {
        name: live.ids.get(value, value) for name, value in (case.path_parameters or {}).items()
    }
    if (case.query or {}).get("key") == KEY:
        case.query["key"] = live.key
    if (case.headers or {}).get("Authorization") == CREDENTIALS:
        if case.operation.path == DOWNLOAD:
            case.headers["Authorization"] = f"Basic {live.device_token}"
        else:
            case.headers["Authorization"] = f"Bearer {live.admin_key}"
    case.call_and_validate(base_url=live.base_url)
