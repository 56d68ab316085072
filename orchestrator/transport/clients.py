"""zmqtt clients built from an `OTA_MQTT_URL`, for the parts that use zmqtt directly."""

from __future__ import annotations

from typing import Any, Literal

import zmqtt
from faststream.mqtt.utils import parse_mqtt_url


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
