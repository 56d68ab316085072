"""Sending commands (seed 000): what a real MQTT device receives, and what is refused."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from orchestrator.domain.auth import Scope
from orchestrator.embedded import EmbeddedBroker
from tests.api.fleet import Inbox, basic, device_inbox, payload_of, standard_basic
from tests.conftest import Service, wait_for

SENT = {"success": True, "message": "Command sent successfully", "action": "send command"}


def command_path(service: Service, device_id: str) -> str:
    return f"/v2/projects/{service.project_id}/devices/{device_id}/communication/command"


async def send(
    service: Service, device_id: str, command: str, data: dict[str, Any] | None = None
) -> httpx.Response:
    body: dict[str, Any] = {"command": command}
    if data is not None:
        body["data"] = data
    return await service.client.post(command_path(service, device_id), json=body)


async def send_ok(
    service: Service, device_id: str, command: str, data: dict[str, Any] | None = None
) -> str:
    """Send a command that must be accepted; its command_id."""
    response = await send(service, device_id, command, data)
    assert response.status_code == 200, response.text
    command_id: str = response.json()["data"]["command_id"]
    return command_id


def assert_error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False
    assert body["status"] == status
    assert body["message"]


async def assert_nothing_published(service: Service, inbox: Inbox) -> None:
    """A sentinel command sent now must be the next message the device sees."""
    sentinel_id = await send_ok(service, inbox.device_id, "reboot")
    message = await inbox.next()
    assert message.topic.value == f"{inbox.device_id}/control/reboot"
    assert payload_of(message)["command_id"] == sentinel_id


@pytest.fixture
async def device(service: Service) -> dict[str, Any]:
    """An mqtt device of the test project (`data` of the create response)."""
    return await service.create_device(name="thermostat")


@pytest.fixture
async def inbox(device: dict[str, Any], mqtt_broker: EmbeddedBroker) -> AsyncIterator[Inbox]:
    """The device's MQTT client, subscribed before the test sends anything."""
    async with device_inbox(mqtt_broker, device["metadata"]["device_id"]) as inbox:
        yield inbox


@pytest.mark.parametrize(
    ("command", "data"),
    [
        ("configuration", {"sampling_rate": 60, "threshold_high": 30, "nested": {"a": [1, 2]}}),
        ("send_configuration", {"keys": ["sampling_rate", "threshold"]}),
        ("reboot", {}),
        ("reset", {}),
        ("set_led.color-2", {"color": "red", "blink": True}),
    ],
)
async def test_command_reaches_the_device_qos2_not_retained_with_its_command_id(
    service: Service, inbox: Inbox, command: str, data: dict[str, Any]
) -> None:
    response = await send(service, inbox.device_id, command, data)
    assert response.status_code == 200, response.text
    body = response.json()
    assert {k: body[k] for k in SENT} == SENT
    command_id = body["data"]["command_id"]
    assert body["data"]["topic"] == f"{inbox.device_id}/control/{command}"

    message = await inbox.next()
    assert message.topic.value == f"{inbox.device_id}/control/{command}"
    assert message.qos == 2
    assert message.retain is False
    assert payload_of(message) == {**data, "command_id": command_id}


async def test_command_without_data_sends_only_the_command_id(
    service: Service, inbox: Inbox
) -> None:
    command_id = await send_ok(service, inbox.device_id, "reboot", data=None)
    assert payload_of(await inbox.next()) == {"command_id": command_id}


async def test_two_sends_have_two_different_command_ids(service: Service, inbox: Inbox) -> None:
    first = await send_ok(service, inbox.device_id, "reboot")
    second = await send_ok(service, inbox.device_id, "reboot")
    assert first != second
    received = [payload_of(await inbox.next())["command_id"] for _ in range(2)]
    assert received == [first, second]


async def test_command_id_in_the_data_is_replaced_by_the_servers(
    service: Service, inbox: Inbox
) -> None:
    command_id = await send_ok(service, inbox.device_id, "configuration", {"command_id": "mine"})
    assert payload_of(await inbox.next())["command_id"] == command_id


async def test_sent_command_is_recorded_for_matching_its_results(
    service: Service, inbox: Inbox
) -> None:
    command_id = await send_ok(service, inbox.device_id, "configuration", {"x": 1})
    record = await service.stores.commands.get(command_id)
    assert record is not None
    assert record["device_id"] == inbox.device_id
    assert record["project_id"] == service.project_id
    assert record["command"] == "configuration"


async def test_download_firmware_sends_a_download_url_the_device_can_fetch_once(
    service: Service, inbox: Inbox, device: dict[str, Any]
) -> None:
    content = os.urandom(300_000)
    assert (await service.upload("firmware_v2.1.0.bin", content)).status_code == 201
    before = datetime.now(UTC)
    response = await send(
        service,
        inbox.device_id,
        "download_firmware",
        {"file_name": "firmware_v2.1.0.bin", "version": "2.1.0"},
    )
    assert response.status_code == 200, response.text
    assert {k: response.json()[k] for k in SENT} == SENT
    command_id = response.json()["data"]["command_id"]

    message = await inbox.next()
    assert message.topic.value == f"{inbox.device_id}/control/download_firmware"
    assert message.qos == 2
    assert message.retain is False
    payload = payload_of(message)
    assert set(payload) == {
        "url",
        "expires_at",
        "file_name",
        "size",
        "sha256",
        "version",
        "command_id",
    }
    assert payload["command_id"] == command_id
    assert payload["file_name"] == "firmware_v2.1.0.bin"
    assert payload["size"] == len(content)
    assert payload["sha256"] == hashlib.sha256(content).hexdigest()
    assert payload["version"] == "2.1.0"
    prefix = f"{service.settings.public_url}/v2/device/download?key=dk_"
    assert payload["url"].startswith(prefix)
    assert len(payload["url"]) == len(prefix) + 32
    assert payload["expires_at"].endswith("Z")
    expires_at = datetime.strptime(payload["expires_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs(expires_at - (before + timedelta(minutes=30))) < timedelta(seconds=10)

    token = device["metadata"]["device_token"]
    download = await service.client.get(payload["url"], headers=basic(token))
    assert download.status_code == 200, download.text
    assert download.content == content
    assert hashlib.sha256(download.content).hexdigest() == payload["sha256"]
    assert download.headers["content-type"] == "application/octet-stream"
    assert download.headers["content-disposition"] == "attachment; filename=firmware_v2.1.0.bin"
    assert download.headers["content-length"] == str(len(content))

    key = payload["url"].rsplit("key=", 1)[1]

    async def spent() -> bool:  # the server releases its claim just after the last byte
        return await service.stores.download_keys.state(key) == "spent"

    await wait_for(spent)
    again = await service.client.get(payload["url"], headers=basic(token))
    assert_error(again, 401)


async def test_download_url_also_accepts_standard_basic_auth(
    service: Service, inbox: Inbox, device: dict[str, Any]
) -> None:
    content = os.urandom(1000)
    assert (await service.upload("fw.hex", content)).status_code == 201
    await send_ok(service, inbox.device_id, "download_firmware", {"file_name": "fw.hex"})
    url = payload_of(await inbox.next())["url"]
    headers = standard_basic(inbox.device_id, device["metadata"]["device_token"])
    download = await service.client.get(url, headers=headers)
    assert download.status_code == 200, download.text
    assert download.content == content


async def test_download_logo_sends_the_logo_and_its_url(
    service: Service, inbox: Inbox, device: dict[str, Any]
) -> None:
    content = os.urandom(5000)
    assert (await service.upload("logo.png", content, file_type="logo")).status_code == 201
    command_id = await send_ok(service, inbox.device_id, "download_logo", {"file_name": "logo.png"})
    message = await inbox.next()
    assert message.topic.value == f"{inbox.device_id}/control/download_logo"
    payload = payload_of(message)
    assert payload["command_id"] == command_id
    assert payload["file_name"] == "logo.png"
    assert payload["size"] == len(content)
    assert payload["sha256"] == hashlib.sha256(content).hexdigest()
    download = await service.client.get(
        payload["url"], headers=basic(device["metadata"]["device_token"])
    )
    assert download.status_code == 200
    assert download.content == content
    assert download.headers["content-disposition"] == "attachment; filename=logo.png"


async def test_command_to_an_unknown_device_is_404(service: Service) -> None:
    assert_error(await send(service, str(uuid.uuid4()), "reboot", {}), 404)


async def test_command_in_an_unknown_project_is_404(service: Service, device: Any) -> None:
    path = f"/v2/projects/{uuid.uuid4()}/devices/{device['id']}/communication/command"
    response = await service.client.post(path, json={"command": "reboot", "data": {}})
    assert_error(response, 404)


async def test_command_to_an_http_device_is_404(
    service: Service, mqtt_broker: EmbeddedBroker
) -> None:
    device = await service.create_device(source="http")
    device_id = device["metadata"]["device_id"]
    async with device_inbox(mqtt_broker, device_id) as inbox:
        assert_error(await send(service, device_id, "reboot", {}), 404)
        # A refused command would have been published before the answer: a message sent
        # after it must be the first one the device sees.
        await inbox.client.publish(f"{device_id}/control/sentinel", b"{}", qos=2)
        assert (await inbox.next()).topic.value == f"{device_id}/control/sentinel"


async def test_command_outside_allowed_commands_is_403_and_not_published(
    service: Service, inbox: Inbox
) -> None:
    patch = await service.client.patch(
        f"/v2/projects/{service.project_id}/devices/{inbox.device_id}",
        json={"metadata": {"allowed_commands": "configuration;reboot"}},
    )
    assert patch.status_code == 200, patch.text
    response = await send(service, inbox.device_id, "reset", {})
    assert_error(response, 403)
    assert "allowed_commands" in response.json()["message"]
    assert_error(await send(service, inbox.device_id, "download_firmware", {}), 403)
    await assert_nothing_published(service, inbox)
    await send_ok(service, inbox.device_id, "configuration", {"a": 1})
    assert (await inbox.next()).topic.value.endswith("/control/configuration")


async def test_key_without_send_commands_scope_is_403(service: Service, inbox: Inbox) -> None:
    plain = await service.create_key(Scope.DEVICES_READ, Scope.DEVICES_WRITE, Scope.FILES_READ)
    response = await service.client.post(
        command_path(service, inbox.device_id),
        json={"command": "reboot", "data": {}},
        headers={"Authorization": f"Bearer {plain}"},
    )
    assert_error(response, 403)
    assert "send-commands" in response.json()["message"]
    await assert_nothing_published(service, inbox)


async def test_key_with_only_send_commands_scope_may_send(service: Service, inbox: Inbox) -> None:
    plain = await service.create_key(Scope.SEND_COMMANDS)
    response = await service.client.post(
        command_path(service, inbox.device_id),
        json={"command": "reboot", "data": {}},
        headers={"Authorization": f"Bearer {plain}"},
    )
    assert response.status_code == 200, response.text
    assert payload_of(await inbox.next())["command_id"] == response.json()["data"]["command_id"]


async def test_command_without_api_key_is_401(service: Service, inbox: Inbox) -> None:
    response = await service.client.post(
        command_path(service, inbox.device_id),
        json={"command": "reboot", "data": {}},
        headers={"Authorization": ""},
    )
    assert_error(response, 401)


async def test_download_firmware_without_file_name_is_400(service: Service, inbox: Inbox) -> None:
    for data in ({}, {"file_name": ""}, {"file_name": 7}):
        response = await send(service, inbox.device_id, "download_firmware", data)
        assert_error(response, 400)
        assert response.json()["errors"][0]["loc"] == "body.data.file_name"
    await assert_nothing_published(service, inbox)


async def test_download_firmware_of_a_missing_file_is_404(service: Service, inbox: Inbox) -> None:
    response = await send(service, inbox.device_id, "download_firmware", {"file_name": "no.bin"})
    assert_error(response, 404)
    await assert_nothing_published(service, inbox)


async def test_download_command_for_a_file_of_the_other_type_is_refused(
    service: Service, inbox: Inbox
) -> None:
    assert (await service.upload("logo.png", b"png", file_type="logo")).status_code == 201
    assert (await service.upload("fw.bin", b"bin")).status_code == 201
    firmware = await send(service, inbox.device_id, "download_firmware", {"file_name": "logo.png"})
    assert firmware.status_code in {400, 404}, firmware.text
    logo = await send(service, inbox.device_id, "download_logo", {"file_name": "fw.bin"})
    assert logo.status_code in {400, 404}, logo.text
    await assert_nothing_published(service, inbox)


@pytest.mark.parametrize("command", ["a/b", "#", "+", "$SYS", "", "x" * 65, "with space"])
async def test_command_name_that_is_no_topic_level_is_400(
    service: Service, inbox: Inbox, command: str
) -> None:
    assert_error(await send(service, inbox.device_id, command, {}), 400)


@pytest.mark.parametrize(
    "body",
    [
        {"data": {}},
        {"command": "reboot", "data": [1, 2]},
        {"command": 5, "data": {}},
    ],
)
async def test_malformed_command_body_is_400(service: Service, inbox: Inbox, body: Any) -> None:
    response = await service.client.post(command_path(service, inbox.device_id), json=body)
    assert_error(response, 400)
