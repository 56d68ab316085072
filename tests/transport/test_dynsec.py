"""Per-device broker credentials: Mosquitto's dynamic security kept in step with the devices.

Every test runs on a real mosquitto with the dynamic-security plugin loaded. Devices are real
MQTT clients (aiomqtt, MQTT 3.1.1) logging in with user name = device id, password = token.
"Never receives" is shown without waiting on a clock: the same publisher sends the forbidden
message first and an allowed one second, and the broker keeps one publisher's order, so the
allowed one arriving first proves the forbidden one was dropped.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest

from orchestrator import dynsec_config
from orchestrator.domain.auth import Scope
from orchestrator.domain.devices import DeviceSource
from orchestrator.embedded import EmbeddedBroker
from orchestrator.settings import Settings
from orchestrator.store import Stores
from orchestrator.transport.dynsec import (
    DeviceProvisioner,
    DynsecClient,
    DynsecReply,
    device_acls,
    device_role,
    reconciling,
)
from tests.conftest import Service, _serve, on_dynsec, stored_device, wait_for

CUT_OFF_TIMEOUT_S = 10.0


@pytest.fixture
def settings(settings: Settings, dynsec_broker: EmbeddedBroker) -> Settings:
    """The test's settings on the dynamic-security broker, with provisioning on."""
    return on_dynsec(settings, dynsec_broker)


@pytest.fixture
def admin(dynsec_admin: DynsecClient) -> DynsecClient:
    """The plugin client of our own (tests/conftest.py), to look at what the service did."""
    return dynsec_admin


async def _get_client(admin: DynsecClient, username: str) -> DynsecReply:
    return (await admin.execute([{"command": "getClient", "username": username}]))[0]


async def _get_role(admin: DynsecClient, rolename: str) -> DynsecReply:
    return (await admin.execute([{"command": "getRole", "rolename": rolename}]))[0]


def _device_client(broker: EmbeddedBroker, device_id: str, token: str) -> aiomqtt.Client:
    return aiomqtt.Client(
        broker.host, broker.port, identifier=device_id, username=device_id, password=token
    )


@asynccontextmanager
async def _device(
    broker: EmbeddedBroker, device_id: str, token: str
) -> AsyncIterator[aiomqtt.Client]:
    """Logged in as the device and subscribed to its own commands."""
    async with _device_client(broker, device_id, token) as client:
        granted = await client.subscribe(f"{device_id}/control/#", qos=2)
        assert _codes(granted) == [2]
        yield client


def _codes(granted: Any) -> list[int]:
    return [int(code.value) if hasattr(code, "value") else int(code) for code in granted]


async def _next(client: aiomqtt.Client, timeout_s: float = 10.0) -> aiomqtt.Message:
    async with asyncio.timeout(timeout_s):
        return await anext(client.messages)


async def _cut_off(client: aiomqtt.Client) -> None:
    """Return once the broker has closed the client's connection (fail after a deadline)."""
    async with asyncio.timeout(CUT_OFF_TIMEOUT_S):
        try:
            async for message in client.messages:
                pytest.fail(f"expected the connection to close, got {message.topic}")
        except aiomqtt.MqttError:
            return
    pytest.fail("the message stream ended without the connection closing")


async def _refused(broker: EmbeddedBroker, device_id: str, token: str) -> None:
    with pytest.raises(aiomqtt.MqttError) as raised:
        async with _device_client(broker, device_id, token):
            pass
    assert "authori" in str(raised.value).lower() or "code:5" in str(raised.value)


async def _send(service: Service, device_id: str, command: str = "reboot") -> None:
    response = await service.client.post(
        f"/v2/projects/{service.project_id}/devices/{device_id}/communication/command",
        json={"command": command, "data": {}},
    )
    assert response.status_code == 200, response.text


async def _new_device(service: Service) -> tuple[str, str]:
    metadata = (await service.create_device())["metadata"]
    return metadata["device_id"], metadata["device_token"]


async def test_device_logs_in_with_id_and_token_and_gets_its_own_commands(
    service: Service, dynsec_broker: EmbeddedBroker, admin: DynsecClient
) -> None:
    device_id, token = await _new_device(service)

    reply = await _get_client(admin, device_id)
    assert reply.error is None
    assert reply.data["client"]["roles"] == [{"rolename": device_role(device_id)}]
    async with _device(dynsec_broker, device_id, token) as device:
        await _send(service, device_id, "configuration")
        message = await _next(device)
    assert message.topic.value == f"{device_id}/control/configuration"
    assert isinstance(message.payload, bytes)
    assert "command_id" in json.loads(message.payload)


async def test_device_cannot_subscribe_to_or_read_another_devices_commands(
    service: Service, dynsec_broker: EmbeddedBroker
) -> None:
    (a_id, a_token), (b_id, b_token) = await _new_device(service), await _new_device(service)

    async with (
        _device(dynsec_broker, a_id, a_token) as a,
        _device(dynsec_broker, b_id, b_token) as b,
    ):
        for topic in (f"{b_id}/control/#", f"{b_id}/control/reboot", "+/control/#", "#"):
            assert _codes(await a.subscribe(topic, qos=2)) == [0x80], topic
        shared = f"$share/steal/{b_id}/control/#"
        assert _codes(await a.subscribe(shared, qos=2)) == [0x80]

        await _send(service, b_id, "secret")
        assert (await _next(b)).topic.value == f"{b_id}/control/secret"  # it was sent
        await _send(service, a_id, "mine")
        # Same publisher, sent after: had b's command reached a, it would come first.
        assert (await _next(a)).topic.value == f"{a_id}/control/mine"


async def test_device_cannot_publish_another_devices_results(
    service: Service, dynsec_broker: EmbeddedBroker
) -> None:
    (a_id, a_token), (b_id, b_token) = await _new_device(service), await _new_device(service)
    service_account = aiomqtt.Client(
        dynsec_broker.host,
        dynsec_broker.port,
        username=dynsec_broker.dynsec_username,
        password=dynsec_broker.dynsec_password,
    )
    async with (
        service_account as watcher,
        _device(dynsec_broker, b_id, b_token) as b,
        _device(dynsec_broker, a_id, a_token) as a,
    ):
        assert _codes(await watcher.subscribe("+/control/+/result", qos=1)) == [1]
        forged = json.dumps({"command_id": "x", "status": "success"})
        await a.publish(f"{b_id}/control/reboot/result", forged, qos=1)
        await a.publish(f"{b_id}/control/reboot", "{}", qos=1)  # nor commands to b
        await a.publish(f"{a_id}/control/reboot/result", forged, qos=1)
        # Same publisher, in order: the forged result would have reached the watcher first.
        assert (await _next(watcher)).topic.value == f"{a_id}/control/reboot/result"
        await _send(service, b_id, "after")
        assert (await _next(b)).topic.value == f"{b_id}/control/after"


async def test_wrong_token_or_anothers_token_is_refused(
    service: Service, dynsec_broker: EmbeddedBroker
) -> None:
    (a_id, a_token), (b_id, _) = await _new_device(service), await _new_device(service)

    await _refused(dynsec_broker, a_id, "not-the-token")
    await _refused(dynsec_broker, b_id, a_token)
    await _refused(dynsec_broker, "no-such-device", a_token)


async def test_deleted_device_is_cut_off_and_cannot_log_in_again(
    service: Service, dynsec_broker: EmbeddedBroker, admin: DynsecClient
) -> None:
    device_id, token = await _new_device(service)

    async with _device(dynsec_broker, device_id, token) as device:
        response = await service.client.delete(
            f"/v2/projects/{service.project_id}/devices/{device_id}"
        )
        assert response.status_code == 200, response.text
        await _cut_off(device)

    await _refused(dynsec_broker, device_id, token)
    assert (await _get_client(admin, device_id)).error == "Client not found"
    assert (await _get_role(admin, device_role(device_id))).error == "Role not found"


async def test_rotated_token_takes_effect_at_once(
    service: Service, dynsec_broker: EmbeddedBroker
) -> None:
    device_id, old_token = await _new_device(service)

    async with _device(dynsec_broker, device_id, old_token) as device:
        response = await service.client.post(
            f"/v2/projects/{service.project_id}/devices/{device_id}/token"
        )
        assert response.status_code == 200, response.text
        await _cut_off(device)  # the plugin disconnects it: it must log in again
    new_token = response.json()["data"]["metadata"]["device_token"]

    await _refused(dynsec_broker, device_id, old_token)
    async with _device(dynsec_broker, device_id, new_token) as device:
        await _send(service, device_id)
        assert (await _next(device)).topic.value == f"{device_id}/control/reboot"


async def test_http_devices_get_no_broker_client(service: Service, admin: DynsecClient) -> None:
    device = await service.create_device(source="http")
    reply = await _get_client(admin, device["metadata"]["device_id"])
    assert reply.error == "Client not found"


@asynccontextmanager
async def _running(settings: Settings, stores: Stores) -> AsyncIterator[httpx.AsyncClient]:
    """The API on `settings`, with a client authenticated as admin."""
    key, _ = await stores.api_keys.create("admin", frozenset({Scope.ADMIN}))
    server, task = await _serve(settings)
    base_url = f"http://{settings.http_host}:{settings.http_port}"
    try:
        async with httpx.AsyncClient(
            base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        ) as client:
            yield client
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


async def test_without_the_setting_nothing_is_provisioned(
    settings: Settings, stores: Stores, dynsec_broker: EmbeddedBroker, admin: DynsecClient
) -> None:
    plain = settings.model_copy(update={"mqtt_provision": ""})
    project = await stores.projects.create("plain")
    async with _running(plain, stores) as client:
        created = await client.post(
            f"/v2/projects/{project.id}/devices", json={"name": "d", "source": "mqtt"}
        )
        assert created.status_code == 201, created.text
        metadata = created.json()["data"]["metadata"]
        device_id, token = metadata["device_id"], metadata["device_token"]
        assert (await _get_client(admin, device_id)).error == "Client not found"
        assert (await _get_role(admin, device_role(device_id))).error == "Role not found"
        await _refused(dynsec_broker, device_id, token)
        rotated = await client.post(f"/v2/projects/{project.id}/devices/{device_id}/token")
        assert rotated.status_code == 200
        assert (await _get_client(admin, device_id)).error == "Client not found"
        deleted = await client.delete(f"/v2/projects/{project.id}/devices/{device_id}")
        assert deleted.status_code == 200


async def test_start_reconciles_devices_made_before_provisioning_was_on(
    settings: Settings, stores: Stores, dynsec_broker: EmbeddedBroker, admin: DynsecClient
) -> None:
    project = await stores.projects.create("earlier")
    earlier, token = await stored_device(stores, project.id, "earlier")
    http_device, _ = await stored_device(stores, project.id, "http", DeviceSource.HTTP)

    async with _running(settings, stores) as client:

        async def reconciled() -> bool:
            return (await _get_client(admin, earlier.id)).error is None

        await wait_for(reconciled)
        assert (await _get_role(admin, device_role(earlier.id))).error is None
        assert (await _get_client(admin, http_device.id)).error == "Client not found"
        # Only digests of tokens are kept, so the client has no password until a rotation.
        await _refused(dynsec_broker, earlier.id, token)
        rotated = await client.post(f"/v2/projects/{project.id}/devices/{earlier.id}/token")
        assert rotated.status_code == 200, rotated.text
        new_token = rotated.json()["data"]["metadata"]["device_token"]
        async with _device(dynsec_broker, earlier.id, new_token):
            pass


async def test_broker_out_of_reach_fails_device_changes_with_503_and_changes_nothing(
    settings: Settings, stores: Stores, tmp_path: Path
) -> None:
    broker = EmbeddedBroker(tmp_path / "gone", kind="mosquitto", dynsec=True).start()
    on_broker = settings.model_copy(update={"mqtt_url": broker.url})
    project = await stores.projects.create("outage")
    try:
        async with _running(on_broker, stores) as client:
            devices = f"/v2/projects/{project.id}/devices"
            kept = (await client.post(devices, json={"name": "kept", "source": "mqtt"})).json()
            kept_id = kept["data"]["metadata"]["device_id"]
            kept_token = kept["data"]["metadata"]["device_token"]
            ready = (await client.get("/readyz")).json()
            assert (ready["status"], ready["dynsec"]) == ("ok", True)
            broker.stop()

            async def refused() -> bool:
                response = await client.post(devices, json={"name": "new", "source": "mqtt"})
                return response.status_code == 503

            await wait_for(refused)  # once the service has seen the connection drop
            response = await client.post(devices, json={"name": "new", "source": "mqtt"})
            body = response.json()
            assert response.status_code == 503
            assert body["action"] == "create device"
            assert "broker" in body["message"]
            assert "retry" in body["message"]
            unready = await client.get("/readyz")
            assert unready.status_code == 503
            assert unready.json()["dynsec"] is False
            listed = (await client.get(devices)).json()["data"]
            assert [d["id"] for d in listed] == [kept_id]  # the refused ones are not kept

            assert (await client.delete(f"{devices}/{kept_id}")).status_code == 503
            assert (await client.get(f"{devices}/{kept_id}")).status_code == 200
            assert (await client.post(f"{devices}/{kept_id}/token")).status_code == 503
            assert await stores.devices.by_token(kept_token) is not None
            # An http device does not touch the broker.
            made = await client.post(devices, json={"name": "h", "source": "http"})
            assert made.status_code == 201
    finally:
        broker.stop()


@pytest.mark.parametrize("with_ctrl", [True, False], ids=["mosquitto_ctrl", "written"])
async def test_embedded_broker_with_dynsec_refuses_anonymous_and_admits_the_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_ctrl: bool
) -> None:
    if with_ctrl:
        assert shutil.which("mosquitto_ctrl"), "mosquitto-clients provides mosquitto_ctrl"
    else:
        which = shutil.which
        monkeypatch.setattr(
            shutil,
            "which",
            lambda name, *a, **k: None if name == "mosquitto_ctrl" else which(name, *a, **k),
        )
    with EmbeddedBroker(tmp_path, kind="mosquitto", dynsec=True).start() as broker:
        assert broker.url.startswith(f"mqtt://{broker.dynsec_username}:")
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client(broker.host, broker.port):
                pass
        client = DynsecClient(broker.url, client_id="test-embedded")
        await client.start()
        try:
            assert await client.wait_ready(10.0)
            reply = await _get_client(client, broker.dynsec_username)
            assert reply.error is None
            roles = {role["rolename"] for role in reply.data["client"]["roles"]}
            assert roles == {dynsec_config.DYNSEC_ADMIN_ROLE, dynsec_config.DYNSEC_SERVICE_ROLE}
        finally:
            await client.stop()


async def test_embedded_restart_keeps_device_clients_and_gives_the_service_a_new_password(
    tmp_path: Path,
) -> None:
    with EmbeddedBroker(tmp_path, kind="mosquitto", dynsec=True).start() as first:
        client = DynsecClient(first.url, client_id="test-restart")
        await client.start()
        assert await client.wait_ready(10.0)
        create = {"command": "createClient", "username": "dev-kept", "password": "tok"}
        assert (await client.execute([create]))[0].error is None
        await client.stop()
        old_password = first.dynsec_password
    with EmbeddedBroker(tmp_path, kind="mosquitto", dynsec=True).start() as second:
        assert second.dynsec_password != old_password
        async with _device_client(second, "dev-kept", "tok"):
            pass
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client(
                second.host, second.port, username=second.dynsec_username, password=old_password
            ):
                pass


async def test_provisioning_takes_over_a_client_made_by_hand_and_is_idempotent(
    dynsec_broker: EmbeddedBroker, admin: DynsecClient
) -> None:
    device_id = str(uuid.uuid4())
    by_hand = {"command": "createClient", "username": device_id, "password": "by-hand"}
    assert (await admin.execute([by_hand]))[0].error is None
    provisioner = DeviceProvisioner(admin)

    await provisioner.provision(device_id, "the-token")
    await provisioner.provision(device_id, "the-token")

    await _refused(dynsec_broker, device_id, "by-hand")
    async with _device(dynsec_broker, device_id, "the-token"):
        pass
    await provisioner.deprovision(device_id)
    await provisioner.deprovision(device_id)  # already gone: done
    await _refused(dynsec_broker, device_id, "the-token")


async def test_a_device_login_is_tied_to_its_own_client_id(
    service: Service, dynsec_broker: EmbeddedBroker, admin: DynsecClient
) -> None:
    (a_id, a_token), (b_id, b_token) = await _new_device(service), await _new_device(service)
    assert (await _get_client(admin, a_id)).data["client"]["clientid"] == a_id

    async with _device(dynsec_broker, b_id, b_token) as b:
        for taken in (b_id, f"{service.settings.instance_id}-results", ""):
            with pytest.raises(aiomqtt.MqttError, match="code:135"):
                async with aiomqtt.Client(
                    dynsec_broker.host,
                    dynsec_broker.port,
                    identifier=taken,
                    username=a_id,
                    password=a_token,
                ):
                    pass
        await _send(service, b_id, "still-b")
        assert (await _next(b)).topic.value == f"{b_id}/control/still-b"


async def test_a_device_may_publish_and_read_its_data_topic_and_no_other(
    service: Service, dynsec_broker: EmbeddedBroker
) -> None:
    (a_id, a_token), (b_id, b_token) = await _new_device(service), await _new_device(service)
    async with (
        _device_client(dynsec_broker, a_id, a_token) as a,
        _device_client(dynsec_broker, b_id, b_token) as b,
    ):
        assert _codes(await a.subscribe(a_id, qos=1)) == [1]
        assert _codes(await b.subscribe(a_id, qos=1)) == [0x80]
        await b.publish(a_id, b"forged telemetry", qos=1)  # dropped by the broker
        await a.publish(a_id, b"21.5", qos=1)
        message = await _next(a)  # b's would have come first (3.1.1 echoes a's own)
    assert (message.topic.value, message.payload) == (a_id, b"21.5")


async def test_start_ties_clients_of_an_earlier_version_to_their_id_and_updates_their_roles(
    settings: Settings, stores: Stores, dynsec_broker: EmbeddedBroker, admin: DynsecClient
) -> None:
    """A client made without a client id and a role without the data topic, as before."""
    project = await stores.projects.create("upgrade")
    device, token = await stored_device(stores, project.id, "kept")
    commands = f"{device.id}/control/#"
    old_acls = [
        {"acltype": "subscribePattern", "topic": commands, "priority": 1, "allow": True},
        {"acltype": "publishClientReceive", "topic": commands, "priority": 1, "allow": True},
    ]
    role = device_role(device.id)
    made = await admin.execute(
        [
            {"command": "createRole", "rolename": role, "acls": old_acls},
            {"command": "createClient", "username": device.id, "password": token},
        ]
    )
    assert [reply.error for reply in made] == [None, None]
    async with _device_client(dynsec_broker, device.id, token):
        pass  # no role yet, any client id: as an earlier version left it

    async with _running(settings, stores):

        async def tied() -> bool:
            client = (await _get_client(admin, device.id)).data.get("client", {})
            return bool(client.get("clientid") == device.id and client.get("roles"))

        await wait_for(tied)
        acls = (await _get_role(admin, role)).data["role"]["acls"]
        assert _acls(acls) == _acls(device_acls(device.id))
        async with _device(dynsec_broker, device.id, token) as kept:  # its password kept
            assert _codes(await kept.subscribe(device.id, qos=1)) == [1]
        with pytest.raises(aiomqtt.MqttError, match="code:135"):
            async with aiomqtt.Client(
                dynsec_broker.host,
                dynsec_broker.port,
                identifier="not-its-id",
                username=device.id,
                password=token,
            ):
                pass


def _acls(acls: list[dict[str, Any]]) -> set[tuple[str, str, int, bool]]:
    return {(a["acltype"], a["topic"], a["priority"], a["allow"]) for a in acls}


def test_reconciling_creates_what_is_missing_and_repairs_what_an_earlier_version_left() -> None:
    current = {"rolename": device_role("ok"), "acls": device_acls("ok")}
    old_role = {"rolename": device_role("old"), "acls": device_acls("old")[:2]}
    clients: list[dict[str, Any]] = [
        {"username": "ok", "clientid": "ok", "roles": [{"rolename": device_role("ok")}]},
        {"username": "old", "roles": []},  # no client id, no role: made by hand or before
        {"username": "ota-service", "roles": [{"rolename": "admin"}]},  # not a device: left
    ]

    creations, repairs, result = reconciling(["ok", "old", "new"], clients, [current, old_role])

    assert [(c["command"], c.get("rolename") or c.get("username")) for c in creations] == [
        ("createRole", device_role("new")),
        ("createClient", "new"),
    ]
    assert creations[1]["clientid"] == "new"
    assert "password" not in creations[1]
    assert repairs == [
        {"command": "modifyRole", "rolename": device_role("old"), "acls": device_acls("old")},
        {"command": "setClientId", "username": "old", "clientid": "old"},
        {"command": "addClientRole", "username": "old", "rolename": device_role("old")},
    ]
    assert (result.devices, result.created, result.bound, result.updated_roles) == (
        3,
        ["new"],
        ["old"],
        1,
    )
    assert reconciling(["ok"], clients, [current])[:2] == ([], [])
