"""zmqtt clients built from an `OTA_MQTT_URL`, for the parts that use zmqtt directly."""

from __future__ import annotations

import contextlib
from typing import Any, Literal

import zmqtt
from faststream.mqtt.utils import parse_mqtt_url

from orchestrator.errors import TransportUnavailable


def zmqtt_client(
    url: str, *, client_id: str, version: Literal["5.0", "3.1.1"], **options: Any
) -> zmqtt.MQTTClient:
    """A client of the broker at `url` (`mqtt[s]://[user:pass@]host:port`), not yet connected.

    `options` go to zmqtt.MQTTClient as they are (session, reconnection, timeouts).
    """
    address = parse_mqtt_url(url)
    return zmqtt.MQTTClient(
        address.host,
        address.port,
        client_id=client_id,
        version=version,
        username=address.username,
        password=address.password,
        tls=address.tls,
        **options,
    )


def lasting_client(
    url: str, *, client_id: str, version: Literal["5.0", "3.1.1"], **options: Any
) -> zmqtt.MQTTClient:
    """A client for a part that runs as long as the service: it keeps reconnecting, 0.5 s to
    10 s apart, for as long as it runs (readiness reports the outage meanwhile)."""
    return zmqtt_client(
        url,
        client_id=client_id,
        version=version,
        reconnect=zmqtt.ReconnectConfig(max_attempts=None, initial_delay=0.5, max_delay=10.0),
        mqtt_connect_timeout=10.0,
        **options,
    )


def without_credentials(url: str) -> str:
    """`url` without its user name and password: for logs, banners and what devices are told."""
    address = parse_mqtt_url(url)
    host = f"[{address.host}]" if ":" in address.host else address.host  # IPv6 literal
    return f"{'mqtts' if address.tls else 'mqtt'}://{host}:{address.port}"


async def end_session(url: str, *, client_id: str, version: Literal["5.0", "3.1.1"]) -> None:
    """End `client_id`'s persistent session: the broker drops it and its subscriptions.

    Connects under that id with a clean start and no session expiry, then disconnects.
    """
    client = zmqtt_client(
        url,
        client_id=client_id,
        version=version,
        clean_session=True,
        session_expiry_interval=0,
        reconnect=zmqtt.ReconnectConfig(enabled=False),
        mqtt_connect_timeout=10.0,
    )
    try:
        await client.connect()
    except (zmqtt.MQTTError, OSError) as exc:
        raise TransportUnavailable(
            f"cannot end the MQTT session {client_id!r} ({exc}); check OTA_MQTT_URL"
        ) from exc
    with contextlib.suppress(zmqtt.MQTTError, OSError):
        await client.disconnect()
