"""`ota hooks` and `ota notifications`, run as a user runs them, against a live service.

A hook delivery is signed the GitHub way (X-Hub-Signature-256) and posted to the URL the CLI
printed; the engine starts the rollout of the rendered template on the test fleet. The
notification receiver is a bare HTTP listener of the test's own that answers 204.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.embedded import free_port
from orchestrator.settings import Settings
from tests.conftest import Service, wait_for
from tests.e2e.fleet import Fleet
from tests.e2e.test_cli import GOOD_PLAN, ota, write
from tests.e2e.test_rollouts import upload_both

SECRET = "s3cret-for-the-release-hook"
TEMPLATE = """\
name: release-${version}
firmware:
  file: ${file}
  version: "${version}"
waves:
  - percent: 100
policy: {max_failure_rate: 10%}
"""
EVERY_EVENT = (
    "started, wave_completed, paused, resumed, waiting_approval, halted, rolling_back, "
    "rolled_back, rollback_failed, completed, aborted"
)


def github_headers(secret: str, body: bytes, delivery_id: str) -> dict[str, str]:
    """The headers GitHub sends with a delivery of `body`."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/json",
        "X-Hub-Signature-256": f"sha256={digest}",
        "X-GitHub-Delivery": delivery_id,
    }


class Receiver:
    """An HTTP listener on a free port that answers every POST 204 and keeps the bodies."""

    def __init__(self) -> None:
        self.port = free_port()
        self.bodies: list[dict[str, Any]] = []
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ota-events"

    async def __aenter__(self) -> Receiver:
        self._server = await asyncio.start_server(self._answer, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.decode("latin-1").split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        body = await reader.readexactly(length)
        self.bodies.append(json.loads(body) if body else {})
        writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The receiver listens on loopback: allowed explicitly, as an operator would."""
    return settings.model_copy(update={"notify_allow_hosts": "127.0.0.1"})


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A notification receiver of this test's own."""
    async with Receiver() as listening:
        yield listening


async def test_a_hook_is_created_listed_delivered_to_and_deleted(
    service: Service, fleet: Fleet, tmp_path: Path
) -> None:
    await upload_both(service)
    await fleet.add(2)
    template = write(tmp_path, "release.yaml", TEMPLATE)
    created = await ota(
        service, "hooks", "create", "--name", "releases", "--plan", template, "--secret", SECRET
    )
    assert created.code == 0, created.err
    listed = await ota(service, "hooks", "list", "--json")
    assert listed.code == 0, listed.err
    [hook] = listed.json()
    assert hook.get("secret") is None  # shown only when created
    assert hook["name"] == "releases"
    assert hook["url"].startswith("http")
    assert f"hook    {hook['id']}" in created.out
    assert f"url     {hook['url']}" in created.out
    assert f"secret  {SECRET}" in created.out
    assert "Payload URL" in created.out
    assert "Releases" in created.out

    table = await ota(service, "hooks", "list")
    assert hook["id"] in table.out
    assert "releases" in table.out
    none_yet = await ota(service, "hooks", "deliveries", hook["id"], "--json")
    assert none_yet.code == 0, none_yet.err
    assert none_yet.json() == []
    assert "no deliveries" in (await ota(service, "hooks", "deliveries", hook["id"])).out

    body = json.dumps({"version": "2.1.0", "file": "fw_2.1.0.bin"}).encode()
    delivery_id = str(uuid.uuid4())
    async with httpx.AsyncClient(timeout=30) as sender:
        posted = await sender.post(
            hook["url"], content=body, headers=github_headers(SECRET, body, delivery_id)
        )
    assert posted.is_success, posted.text

    async def settled() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = (
            await ota(service, "hooks", "deliveries", hook["id"], "--json")
        ).json()
        return found

    async def started() -> bool:
        found = await settled()
        return bool(found) and found[0]["status"] != "accepted"

    await wait_for(started, timeout_s=30, interval_s=0.2)
    [delivery] = await settled()
    assert delivery["id"] == delivery_id
    assert delivery["scheme"] == "github"
    assert (delivery["version"], delivery["file"]) == ("2.1.0", "fw_2.1.0.bin")
    assert delivery["status"] == "started", delivery
    rollout = (await ota(service, "status", delivery["rollout_id"], "--json")).json()
    assert rollout["name"] == "release-2.1.0"
    shown = await ota(service, "hooks", "deliveries", hook["id"])
    assert delivery_id in shown.out
    assert "started" in shown.out
    assert delivery["rollout_id"] in shown.out

    deleted = await ota(service, "hooks", "delete", hook["id"])
    assert deleted.code == 0, deleted.err
    assert hook["id"] in deleted.out
    assert (await ota(service, "hooks", "list", "--json")).json() == []
    gone = await ota(service, "hooks", "delete", hook["id"])
    assert gone.code == 1
    assert "404" in gone.err
    assert gone.err.count("\n") == 1


async def test_hooks_create_with_a_missing_or_empty_plan_file_is_one_line_exit_2(
    service: Service, tmp_path: Path
) -> None:
    missing = str(tmp_path / "nowhere.yaml")
    ran = await ota(service, "hooks", "create", "--name", "x", "--plan", missing)
    assert ran.code == 2
    assert ran.err.count("\n") == 1
    assert ran.err.startswith(f"error: {missing}: cannot read")
    assert "--plan" in ran.err

    empty = write(tmp_path, "empty.yaml", "\n")
    ran = await ota(service, "hooks", "create", "--name", "x", "--plan", empty)
    assert ran.code == 2
    assert ran.err.count("\n") == 1
    assert "empty" in ran.err
    assert (await ota(service, "hooks", "list", "--json")).json() == []


async def test_hooks_create_refuses_a_bad_template_located_in_the_file_exit_1(
    service: Service, tmp_path: Path
) -> None:
    template = write(tmp_path, "bad.yaml", TEMPLATE.replace("${file}", "${filename}"))
    ran = await ota(service, "hooks", "create", "--name", "x", "--plan", template)
    assert ran.code == 1
    assert ran.err.count("\n") == 1
    assert ran.err.startswith(f"{template}:3:9: ${{filename}} is not a placeholder")
    assert "${version} or ${file}" in ran.err

    fixed = write(tmp_path, "fixed.yaml", TEMPLATE.replace("${version}", "2.1.0"))
    ran = await ota(service, "hooks", "create", "--name", "x", "--plan", fixed)
    assert ran.code == 1
    assert ran.err.startswith(f"{fixed}: the hook's plan never uses ${{version}}")
    assert (await ota(service, "hooks", "list", "--json")).json() == []


async def test_notifications_are_created_listed_and_deleted(service: Service) -> None:
    created = await ota(
        service,
        "notifications",
        "create",
        "--url",
        "https://hooks.example.com/ota",
        "--event",
        "completed",
        "--event",
        "halted",
        "--secret",
        SECRET,
    )
    assert created.code == 0, created.err
    assert f"secret        {SECRET}" in created.out
    assert "completed, halted" in created.out
    every = await ota(
        service, "notifications", "create", "--url", "https://example.com/all", "--json"
    )
    assert every.code == 0, every.err
    assert not every.json()["events"]
    assert every.json()["secret"]

    listed = await ota(service, "notifications", "list", "--json")
    assert listed.code == 0, listed.err
    by_url = {s["url"]: s for s in listed.json()}
    assert set(by_url) == {"https://hooks.example.com/ota", "https://example.com/all"}
    named = by_url["https://hooks.example.com/ota"]
    assert sorted(named["events"]) == ["completed", "halted"]
    assert all(s.get("secret") is None for s in listed.json())
    assert f"notification  {named['id']}" in created.out
    table = await ota(service, "notifications", "list")
    assert named["id"] in table.out
    assert "every event" in table.out

    none_yet = await ota(service, "notifications", "deliveries", named["id"], "--json")
    assert none_yet.code == 0, none_yet.err
    assert none_yet.json() == []

    deleted = await ota(service, "notifications", "delete", named["id"])
    assert deleted.code == 0, deleted.err
    left = (await ota(service, "notifications", "list", "--json")).json()
    assert [s["id"] for s in left] == [every.json()["id"]]


async def test_an_unknown_event_is_one_line_exit_2_naming_the_valid_ones(
    service: Service,
) -> None:
    ran = await ota(
        service, "notifications", "create", "--url", "https://example.com/x", "--event", "done"
    )
    assert ran.code == 2
    assert ran.err.count("\n") == 1
    assert "'done'" in ran.err
    assert EVERY_EVENT in ran.err
    assert (await ota(service, "notifications", "list", "--json")).json() == []


async def test_notification_deliveries_show_each_event_and_its_attempts(
    service: Service, fleet: Fleet, receiver: Receiver, tmp_path: Path
) -> None:
    await upload_both(service)
    await fleet.add(3)
    created = await ota(
        service,
        "notifications",
        "create",
        "--url",
        receiver.url,
        "--event",
        "started",
        "--event",
        "completed",
        "--json",
    )
    assert created.code == 0, created.err
    subscription_id = created.json()["id"]
    applied = await ota(service, "apply", write(tmp_path, "good.yaml", GOOD_PLAN), "--watch")
    assert applied.code == 0, applied.out + applied.err

    async def notices() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = (
            await ota(service, "notifications", "deliveries", subscription_id, "--json")
        ).json()
        return found

    async def both_delivered() -> bool:
        found = await notices()
        return len(found) == 2 and all(n["state"] == "delivered" for n in found)

    await wait_for(both_delivered, timeout_s=30, interval_s=0.2)
    found = await notices()
    assert {n["type"].rsplit(".", 1)[-1] for n in found} == {"started", "completed"}
    assert all(n["attempts"][-1]["status_code"] == 204 for n in found)
    assert len(receiver.bodies) == 2

    table = await ota(service, "notifications", "deliveries", subscription_id)
    assert table.code == 0, table.err
    assert table.out.count("delivered") == 2
    assert "204" in table.out
