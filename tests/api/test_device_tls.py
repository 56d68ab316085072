"""Devices over `mqtts://`: the embedded broker's TLS listener, as Qubitro's examples connect.

A real mosquitto started by the service's own `embedded_servers`, with a self-signed
certificate made by openssl for the test; devices are aiomqtt clients that trust it, logging in
as themselves (dynamic security decides on the TLS listener as on the plain one).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import structlog
from pydantic import ValidationError

from orchestrator.client import ApiClient
from orchestrator.embedded import BrokerTls, EmbeddedBroker, EmbeddedError, free_port
from orchestrator.service import embedded_servers, print_banner
from orchestrator.settings import MQTT_TLS_PORT, Settings
from orchestrator.simulator import Fleet
from tests.conftest import Service

WAIT_S = 10.0


@pytest.fixture
def settings(
    settings: Settings, certificate: tuple[Path, Path], tmp_path: Path
) -> Iterator[Settings]:
    """The test's settings with the embedded broker (dynamic security and TLS) resolved."""
    cert, key = certificate
    kept = settings.model_dump(exclude={"mqtt_url", "mqtt_version", "public_url"})
    tls = {"mqtt_tls_cert": str(cert), "mqtt_tls_key": str(key), "mqtt_tls_port": 0}
    wanted = Settings(**{**kept, **tls})  # port 0: the test's own free port
    with embedded_servers(wanted) as resolved:
        yield resolved


def device_client(
    settings: Settings, device_id: str = "", password: str | None = None, **options: Any
) -> aiomqtt.Client:
    """A device's client over TLS to `localhost` (the certificate's name), trusting it."""
    return aiomqtt.Client(
        "localhost",
        settings.mqtt_tls_port,
        identifier=device_id or None,
        username=device_id or None,
        password=password,
        tls_params=aiomqtt.TLSParameters(ca_certs=settings.mqtt_tls_cert),
        **options,
    )


async def new_device(service: Service) -> tuple[str, str]:
    metadata = (await service.create_device())["metadata"]
    return metadata["device_id"], metadata["device_token"]


async def test_a_device_logs_in_over_tls_and_receives_its_command(service: Service) -> None:
    device_id, token = await new_device(service)
    async with device_client(service.settings, device_id, token) as device:
        await device.subscribe(f"{device_id}/control/#", qos=2)
        response = await service.client.post(
            f"/v2/projects/{service.project_id}/devices/{device_id}/communication/command",
            json={"command": "reboot", "data": {}},
        )
        assert response.status_code == 200, response.text
        async with asyncio.timeout(WAIT_S):
            message = await anext(aiter(device.messages))
    assert str(message.topic) == f"{device_id}/control/reboot"
    assert isinstance(message.payload, bytes)
    assert "command_id" in json.loads(message.payload)


async def test_the_tls_listener_refuses_anonymous_clients_and_wrong_tokens(
    service: Service,
) -> None:
    device_id, _ = await new_device(service)
    for who, password in (("", None), (device_id, "not-the-token")):
        with pytest.raises(aiomqtt.MqttError) as refused:
            async with device_client(service.settings, who, password):
                pass
        assert "authori" in str(refused.value).lower() or "code:5" in str(refused.value)


def handshake(port: int, context: ssl.SSLContext) -> str:
    """The TLS version a handshake with `localhost:port` settles on."""
    with (
        socket.create_connection(("localhost", port), timeout=WAIT_S) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return str(tls.version())


def test_it_is_tls_for_real_and_the_certificate_is_checked(settings: Settings) -> None:
    """A client that trusts the certificate shakes hands; the system's store alone does not."""
    port = settings.mqtt_tls_port
    trusting = ssl.create_default_context(cafile=settings.mqtt_tls_cert)
    assert handshake(port, trusting) in {"TLSv1.2", "TLSv1.3"}
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(port, ssl.create_default_context())


async def test_the_simulator_takes_an_mqtts_url(
    service: Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ota simulate --mqtt-url mqtts://…` trusts the system's store; SSL_CERT_FILE adds ours."""
    monkeypatch.setenv("SSL_CERT_FILE", service.settings.mqtt_tls_cert)
    async with ApiClient(service.base_url, service.admin_key, service.project_id) as api:
        fleet = Fleet(
            api,
            "localhost",
            service.settings.mqtt_tls_port,
            state_path=tmp_path / "devices.json",
            mqtt_tls=True,
        )
        try:
            await fleet.start(2)
            assert fleet.stats.connected == 2
            assert fleet.stats.connect_failures == 0
        finally:
            await fleet.stop()


def test_the_banner_and_the_log_say_where_tls_listens(
    certificate: tuple[Path, Path],
    redis_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cert, key = certificate
    wanted = Settings(
        redis_url=redis_url,
        data_dir=tmp_path / "data",
        http_port=free_port(),
        mqtt_tls_cert=str(cert),
        mqtt_tls_key=str(key),
        mqtt_tls_port=0,
    )
    with structlog.testing.capture_logs() as logs, embedded_servers(wanted) as resolved:
        port = resolved.mqtt_tls_port
        assert port
        print_banner(resolved, embedded_redis=False, embedded_broker=True)
    banner = capsys.readouterr().err
    assert f"MQTT for devices, TLS: mqtts://127.0.0.1:{port}" in banner
    assert f"listening on 127.0.0.1:{port}" in banner
    [started] = [e for e in logs if e["event"].startswith("embedded mqtt broker listens with TLS")]
    assert started["url"] == f"mqtts://127.0.0.1:{port}"


def test_the_default_tls_port_is_8883_and_a_taken_one_moves_only_when_left_unset(
    certificate: tuple[Path, Path], redis_url: str, tmp_path: Path
) -> None:
    cert, key = certificate
    assert Settings(redis_url=redis_url).mqtt_tls_port == MQTT_TLS_PORT
    taken = free_port()
    tls = BrokerTls(cert, key, port=taken)
    with EmbeddedBroker(tmp_path / "first", kind="mosquitto", tls=tls).start() as first:
        assert first.tls_port == taken
        second = EmbeddedBroker(tmp_path / "second", kind="mosquitto", tls=tls)
        with pytest.raises(EmbeddedError, match=rf"127.0.0.1:{taken}.*OTA_MQTT_TLS_PORT"):
            second.start()


def test_amqtt_cannot_listen_with_tls(certificate: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = certificate
    with pytest.raises(EmbeddedError, match="needs Mosquitto"):
        EmbeddedBroker(tmp_path, kind="amqtt", tls=BrokerTls(cert, key))


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"mqtt_tls_cert": "CERT"}, "OTA_MQTT_TLS_CERT is set but OTA_MQTT_TLS_KEY is not"),
        ({"mqtt_tls_key": "KEY"}, "OTA_MQTT_TLS_KEY is set but OTA_MQTT_TLS_CERT is not"),
        (
            {"mqtt_tls_cert": "/nowhere/cert.pem", "mqtt_tls_key": "KEY"},
            "OTA_MQTT_TLS_CERT=/nowhere/cert.pem does not exist; give the path of the PEM "
            "certificate",
        ),
        ({"mqtt_tls_cert": "KEY", "mqtt_tls_key": "CERT"}, "are not a PEM certificate and its"),
        (
            {"mqtt_tls_cert": "CERT", "mqtt_tls_key": "KEY", "mqtt_url": "mqtt://broker:1883"},
            "names your own broker: configure TLS on that broker",
        ),
    ],
)
def test_tls_settings_are_refused_at_start_naming_the_variable_and_the_fix(
    certificate: tuple[Path, Path], given: dict[str, str], message: str
) -> None:
    cert, key = certificate
    paths = {"CERT": str(cert), "KEY": str(key)}
    with pytest.raises(ValidationError, match=message):
        Settings.model_validate({name: paths.get(value, value) for name, value in given.items()})


def test_an_unreadable_key_is_refused(certificate: tuple[Path, Path], tmp_path: Path) -> None:
    cert, _ = certificate
    directory = tmp_path / "a-directory"
    directory.mkdir()
    with pytest.raises(ValidationError, match=r"OTA_MQTT_TLS_KEY=.* is not a file"):
        Settings(mqtt_tls_cert=str(cert), mqtt_tls_key=str(directory))


def test_the_settings_read_the_tls_variables(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = certificate
    monkeypatch.setenv("OTA_MQTT_TLS_CERT", str(cert))
    monkeypatch.setenv("OTA_MQTT_TLS_KEY", str(key))
    settings = Settings()
    assert (settings.mqtt_tls, settings.mqtt_tls_port) == (True, MQTT_TLS_PORT)
    assert "mqtt_tls_port" not in settings.model_fields_set  # left to the default: may move
    monkeypatch.setenv("OTA_MQTT_TLS_PORT", "8884")
    assert "mqtt_tls_port" in Settings().model_fields_set


def ota_serve(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`ota serve` in a child process with these OTA_ variables (and no others)."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith("OTA_")}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "serve"],
        env={**clean, "OTA_DATA_DIR": str(tmp_path / "data"), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_ota_serve_refuses_a_certificate_without_its_key_in_one_line(
    certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    cert, _ = certificate
    done = ota_serve({"OTA_MQTT_TLS_CERT": str(cert)}, tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ")
    assert "OTA_MQTT_TLS_CERT is set but OTA_MQTT_TLS_KEY is not" in done.stderr
    assert "Traceback" not in done.stderr


def test_ota_serve_says_in_one_line_that_the_tls_port_is_taken(
    certificate: tuple[Path, Path], redis_url: str, tmp_path: Path
) -> None:
    cert, key = certificate
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = ota_serve(
            {
                "OTA_REDIS_URL": redis_url,
                "OTA_REDIS_PREFIX": f"{{test-{uuid.uuid4().hex[:12]}}}:",
                "OTA_HTTP_PORT": str(free_port()),
                "OTA_MQTT_TLS_CERT": str(cert),
                "OTA_MQTT_TLS_KEY": str(key),
                "OTA_MQTT_TLS_PORT": str(port),
            },
            tmp_path,
        )
    assert done.returncode == 1, done.stderr
    [line] = [text for text in done.stderr.splitlines() if text.startswith("error: ")]
    assert f"cannot listen with TLS on 127.0.0.1:{port}" in line
    assert "Traceback" not in done.stderr
