"""The device edge as a new user gets it: `ota serve` with no OTA_ setting about the broker.

The service starts its embedded Mosquitto the way `ota serve` does (`embedded_servers`), on a
real Redis, with the API and the engine in one process. Devices are real MQTT clients in the
style of Qubitro's documented ones: user name = device id, password = device token, client id =
device id, MQTT 5 with a session that outlives the connection. "Never delivered" is shown
without waiting on a clock: one publisher sends the forbidden message first and an allowed one
after it, and the broker keeps one publisher's order, so the allowed one arriving first proves
the forbidden one was dropped.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
import structlog
from faststream.mqtt.utils import parse_mqtt_url
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from orchestrator.client import ApiClient
from orchestrator.domain.auth import Scope
from orchestrator.domain.devices import NEVER_SEEN
from orchestrator.embedded import free_port
from orchestrator.service import embedded_servers, start_serving
from orchestrator.settings import Settings
from orchestrator.simulator import DeviceBook, DeviceIdentity, Fleet
from orchestrator.store import Stores
from orchestrator.store.redis import connect
from orchestrator.transport.dynsec import DynsecClient
from orchestrator.transport.results import results_client_id
from tests.conftest import Service, stored_device, wait_for
from tests.e2e.test_results_ignored import ignored, moved, state_of
from tests.e2e.test_rollouts import start, upload_both

NOT_AUTHORIZED = 0x87  # MQTT 5 reason code, in CONNACK and SUBACK
SESSION_EXPIRY_S = 300


@dataclass
class Defaults:
    """A Redis with an admin key and a project, and the service to start on it as a user does."""

    settings: Settings
    stores: Stores
    admin_key: str
    project_id: str

    @asynccontextmanager
    async def serve(self) -> AsyncIterator[Service]:
        """`ota serve` with nothing said about the broker: the embedded one, as it starts it."""
        with embedded_servers(self.settings) as resolved:
            server, task = await start_serving(resolved, start_timeout_s=15)
            base_url = f"http://127.0.0.1:{resolved.http_port}"
            try:
                async with httpx.AsyncClient(
                    base_url=base_url,
                    headers={"Authorization": f"Bearer {self.admin_key}"},
                    timeout=30,
                ) as client:
                    yield Service(
                        resolved, self.stores, base_url, self.admin_key, self.project_id, client
                    )
            finally:
                server.should_exit = True
                await asyncio.wait_for(task, 30)


@pytest.fixture
async def defaults(redis_url: str, tmp_path: Path) -> AsyncIterator[Defaults]:
    """No OTA_ setting about the broker (and the API and engine in one process, the default)."""
    port = free_port()
    settings = Settings(
        redis_url=redis_url,
        redis_prefix=f"{{test-{uuid.uuid4().hex[:12]}}}:",
        http_port=port,
        public_url=f"http://127.0.0.1:{port}",
        data_dir=tmp_path / "data",
        log_format="json",
        instance_id=f"test-{uuid.uuid4().hex[:8]}",
    )
    assert (settings.mqtt_url, settings.mqtt_provision, settings.role) == ("", "", "all")
    redis = connect(redis_url)
    stores = Stores.build(redis, settings.redis_prefix)
    admin_key, _ = await stores.api_keys.create("admin", frozenset({Scope.ADMIN}))
    project = await stores.projects.create("edge")
    try:
        yield Defaults(settings, stores, admin_key, project.id)
    finally:
        await redis.aclose()


@pytest.fixture
async def edge(defaults: Defaults) -> AsyncIterator[Service]:
    """The service on the defaults, running."""
    async with defaults.serve() as service:
        yield service


def _login(
    service: Service, username: str | None, password: str | None, client_id: str
) -> aiomqtt.Client:
    """An MQTT 5 client with a session that outlives its connection (Qubitro's examples)."""
    broker = parse_mqtt_url(service.settings.mqtt_url)
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = SESSION_EXPIRY_S
    return aiomqtt.Client(
        broker.host,
        broker.port,
        identifier=client_id,
        username=username,
        password=password,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=False,
        properties=properties,
        timeout=10,
    )


def _device(service: Service, device_id: str, token: str) -> aiomqtt.Client:
    """The device as itself: user name and client id its id, password its token."""
    return _login(service, device_id, token, device_id)


@asynccontextmanager
async def _listening(service: Service, device_id: str, token: str) -> AsyncIterator[aiomqtt.Client]:
    """Logged in as the device and subscribed to its commands at QoS 2."""
    async with _device(service, device_id, token) as client:
        assert _codes(await client.subscribe(f"{device_id}/control/#", qos=2)) == [2]
        yield client


async def _refused(client: aiomqtt.Client) -> None:
    """The broker refuses the login (CONNACK not authorised)."""
    with pytest.raises(aiomqtt.MqttError) as raised:
        async with client:
            pass
    assert f"code:{NOT_AUTHORIZED}" in str(raised.value), raised.value


def _codes(granted: Any) -> list[int]:
    return [int(code.value) if hasattr(code, "value") else int(code) for code in granted]


async def _next(client: aiomqtt.Client, timeout_s: float = 10.0) -> aiomqtt.Message:
    async with asyncio.timeout(timeout_s):
        return await anext(client.messages)


async def _new_device(service: Service) -> tuple[str, str]:
    metadata = (await service.create_device())["metadata"]
    return metadata["device_id"], metadata["device_token"]


async def _send(service: Service, device_id: str, command: str) -> str:
    response = await service.client.post(
        f"/v2/projects/{service.project_id}/devices/{device_id}/communication/command",
        json={"command": command, "data": {}},
    )
    assert response.status_code == 200, response.text
    command_id: str = response.json()["data"]["command_id"]
    return command_id


async def test_a_device_logged_in_as_itself_gets_its_commands_at_qos_2_also_while_away(
    edge: Service,
) -> None:
    device_id, token = await _new_device(edge)
    async with _listening(edge, device_id, token) as device:
        sent = await _send(edge, device_id, "configuration")
        message = await _next(device)
        assert (message.topic.value, message.qos) == (f"{device_id}/control/configuration", 2)
        assert isinstance(message.payload, bytes)
        assert json.loads(message.payload)["command_id"] == sent

    queued = await _send(edge, device_id, "reboot")  # while it is away: its session keeps it
    async with _device(edge, device_id, token) as device:
        message = await _next(device)
    assert (message.topic.value, message.qos) == (f"{device_id}/control/reboot", 2)
    assert isinstance(message.payload, bytes)
    assert json.loads(message.payload)["command_id"] == queued


async def test_a_device_answering_a_command_is_seen_by_the_service(edge: Service) -> None:
    """Its token (54 characters, carrying its id) is its broker password, and its result on
    the command's result topic moves its last_seen."""
    device_id, token = await _new_device(edge)
    url = f"/v2/projects/{edge.project_id}/devices/{device_id}"
    assert (await edge.client.get(url)).json()["data"]["last_seen"] == NEVER_SEEN
    async with _listening(edge, device_id, token) as device:
        command_id = await _send(edge, device_id, "reboot")
        await _next(device)
        result = {"command_id": command_id, "status": "success"}
        await device.publish(f"{device_id}/control/reboot/result", json.dumps(result), qos=1)

    async def seen() -> bool:
        return bool((await edge.client.get(url)).json()["data"]["last_seen"] != NEVER_SEEN)

    await wait_for(seen)


async def test_a_device_reads_nothing_of_another_device(edge: Service) -> None:
    (a_id, a_token), (b_id, b_token) = await _new_device(edge), await _new_device(edge)
    async with _listening(edge, a_id, a_token) as a, _listening(edge, b_id, b_token) as b:
        for topic in (
            "+/control/#",
            "#",
            "+/#",
            f"{b_id}/control/#",
            f"{b_id}/control/download_firmware",
            f"{b_id}/control/+/result",
            b_id,  # its data topic
            f"$share/steal/{b_id}/control/#",
        ):
            assert _codes(await a.subscribe(topic, qos=2)) == [NOT_AUTHORIZED], topic

        await _send(edge, b_id, "secret")
        assert (await _next(b)).topic.value == f"{b_id}/control/secret"  # it was sent
        await b.publish(b_id, b'{"temperature": 21}', qos=1)  # b's telemetry
        await _send(edge, a_id, "mine")
        # Same publisher, sent after b's command: had that reached a, it would come first.
        assert (await _next(a)).topic.value == f"{a_id}/control/mine"


async def test_a_device_publishes_and_reads_its_own_data_topic(edge: Service) -> None:
    device_id, token = await _new_device(edge)
    async with _device(edge, device_id, token) as device:
        assert _codes(await device.subscribe(device_id, qos=1)) == [1]
        await device.publish(device_id, b'{"temperature": 21.5}', qos=1)
        message = await _next(device)
    assert (message.topic.value, message.payload) == (device_id, b'{"temperature": 21.5}')


ROLLOUT = """
name: edge-2.1.0
firmware: {file: fw_2.1.0.bin, version: 2.1.0}
waves:
  - percent: 100
policy: {max_failure_rate: 50%, ack_timeout: 10m, device_timeout: 30m}
"""


async def test_results_a_device_publishes_for_another_device_are_never_counted(
    edge: Service,
) -> None:
    """A knows B's command id and publishes B's success on B's topic: B stays `sent`."""
    await upload_both(edge)
    (a_id, a_token), (b_id, b_token) = await _new_device(edge), await _new_device(edge)
    async with _listening(edge, a_id, a_token) as a, _listening(edge, b_id, b_token) as b:
        rollout = await start(edge, ROLLOUT)
        a_command = json.loads(_payload(await _next(a)))["command_id"]
        b_command = json.loads(_payload(await _next(b)))["command_id"]  # b stays silent
        before = await ignored(edge)

        forged = {"command_id": b_command, "status": "success", "version": "2.1.0"}
        await a.publish(f"{b_id}/control/download_firmware/result", json.dumps(forged), qos=1)
        await a.publish(f"{b_id}/control/download_firmware", json.dumps(forged), qos=1)
        # Its own result, after: once the engine has it, the forged one has been dropped.
        own = {"command_id": a_command, "status": "failed", "error": "a test"}
        await a.publish(f"{a_id}/control/download_firmware/result", json.dumps(own), qos=1)

        async def own_counted() -> bool:
            return await state_of(edge, rollout["id"], a_id) == "failed"

        await wait_for(own_counted)
        assert await state_of(edge, rollout["id"], b_id) == "sent"
        assert moved(before, await ignored(edge)) == {}  # dropped by the broker, not the engine
        assert _codes(await b.subscribe(f"{b_id}/control/#", qos=2)) == [2]


def _payload(message: aiomqtt.Message) -> bytes:
    assert isinstance(message.payload, bytes)
    return message.payload


async def test_a_login_cannot_take_another_devices_or_the_engines_client_id(
    edge: Service,
) -> None:
    (a_id, a_token), (b_id, b_token) = await _new_device(edge), await _new_device(edge)
    instance = edge.settings.instance_id
    async with _listening(edge, b_id, b_token) as b:
        for taken in (
            b_id,
            results_client_id(instance),
            f"{instance}-commands",
            f"{instance}-dynsec",
            f"{a_id}-2",
        ):
            await _refused(_login(edge, a_id, a_token, taken))
        # b kept its connection and its session: a command sent now reaches it.
        await _send(edge, b_id, "still-mine")
        assert (await _next(b)).topic.value == f"{b_id}/control/still-mine"
    ready = (await edge.client.get("/readyz")).json()
    assert (ready["status"], ready["mqtt"]) == ("ok", True)


async def test_wrong_old_and_missing_credentials_are_refused(edge: Service) -> None:
    (device_id, old_token), (_, other_token) = await _new_device(edge), await _new_device(edge)
    await _refused(_device(edge, device_id, "not-the-token"))
    await _refused(_device(edge, device_id, other_token))
    await _refused(_login(edge, None, None, f"anonymous-{uuid.uuid4().hex[:8]}"))
    await _refused(_login(edge, None, None, device_id))  # anonymous, under the device's id

    rotated = await edge.client.post(f"/v2/projects/{edge.project_id}/devices/{device_id}/token")
    assert rotated.status_code == 200, rotated.text
    new_token = rotated.json()["data"]["metadata"]["device_token"]
    await _refused(_device(edge, device_id, old_token))
    async with _listening(edge, device_id, new_token) as device:
        await _send(edge, device_id, "reboot")
        assert (await _next(device)).topic.value == f"{device_id}/control/reboot"


async def test_readiness_shows_the_embedded_broker_refuses_anonymous_clients(
    edge: Service,
) -> None:
    async def probed() -> bool:
        return (await edge.client.get("/readyz")).json().get("mqtt_anonymous") is not None

    await wait_for(probed)
    ready = (await edge.client.get("/readyz")).json()
    assert (ready["status"], ready["mqtt_anonymous"], ready["warnings"]) == ("ok", False, [])


async def test_devices_made_before_broker_accounts_get_one_and_the_simulator_rotates_in(
    defaults: Defaults, tmp_path: Path
) -> None:
    """Devices in Redis and in the simulator's book from a run whose broker let anyone in.

    Only digests of tokens are stored, so the start gives each a broker client without a
    password (and says what to do); `ota simulate`'s fleet, refused, rotates its tokens once.
    """
    book = DeviceBook(tmp_path / "simulated-devices.json")
    earlier: list[DeviceIdentity] = []
    for number in range(3):
        device, token = await stored_device(defaults.stores, defaults.project_id, f"sim-{number}")
        earlier.append(DeviceIdentity(device.id, token, device.name))
    book.save(defaults.project_id, earlier)

    with structlog.testing.capture_logs() as logs:
        async with defaults.serve() as service:
            admin = DynsecClient(service.settings.mqtt_url, client_id=f"test-{uuid.uuid4().hex}")
            await admin.start()
            assert await admin.wait_ready(10)

            async def reconciled() -> bool:
                replies = await admin.execute(
                    [{"command": "getClient", "username": d.id} for d in earlier]
                )
                return all(r.error is None for r in replies)

            try:
                await wait_for(reconciled)
                replies = await admin.execute(
                    [{"command": "getClient", "username": d.id} for d in earlier]
                )
            finally:
                await admin.stop()
            assert [r.data["client"]["clientid"] for r in replies] == [d.id for d in earlier]
            await _refused(_device(service, earlier[0].id, earlier[0].token))

            broker = parse_mqtt_url(service.settings.mqtt_url)
            async with ApiClient(service.base_url, defaults.admin_key, defaults.project_id) as api:
                fleet = Fleet(api, broker.host, broker.port, state_path=book.path)
                async with fleet:
                    await fleet.start(3)
                    assert fleet.stats.tokens_rotated == 3

                    async def connected() -> bool:
                        return fleet.stats.connected == 3

                    await wait_for(connected)
                    rotated = book.load(defaults.project_id)  # written at once: old ones are dead
                    await _send(service, earlier[0].id, "reboot")

                    async def obeyed() -> bool:
                        return fleet.stats.commands == 1

                    await wait_for(obeyed)
            await _refused(_device(service, earlier[1].id, earlier[1].token))
            async with _listening(service, rotated[1].id, rotated[1].token):
                pass

    assert [d.id for d in rotated] == [d.id for d in earlier]
    assert all(new.token != old.token for new, old in zip(rotated, earlier, strict=True))
    assert book.load(defaults.project_id) == rotated
    [warning] = [e for e in logs if "without a password" in e["event"]]
    assert warning["log_level"] == "warning"
    assert "rotate each one's token" in warning["event"]
    assert sorted(warning["devices"]) == sorted(d.id for d in earlier)
