"""Commands to devices, published with zmqtt (the MQTT client FastStream's MQTTBroker is built on).

Why not FastStream's MQTTBroker: a dispatch step publishes hundreds of QoS 2 commands, and the
engine sends each loop turn's packets together (transport/batched.py), which took command
dispatch from 1.00 to 2.10 of FastStream's rate on the same broker (`make bench`). FastStream's
public API has no way to give zmqtt a transport, so the engine uses zmqtt's own public one.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Literal

import structlog
import zmqtt

from orchestrator.errors import TransportUnavailable
from orchestrator.jsonutil import dumps
from orchestrator.supervisor import spawn
from orchestrator.transport.batched import open_batched
from orchestrator.transport.clients import lasting_client
from orchestrator.transport.topics import command_topic

log = structlog.get_logger(__name__)

PUBLISH_TIMEOUT_S = 15.0


class CommandTransport:
    """Publishes commands with QoS 2; connects in the background and keeps reconnecting."""

    def __init__(
        self, url: str, *, version: Literal["5.0", "3.1.1"] = "5.0", client_id: str = ""
    ) -> None:
        self.url = url
        self._version = version
        # A dispatch step's publishes, and their PUBRELs, leave in a few sends: see batched.py.
        self._client = lasting_client(
            url, client_id=client_id, version=version, transport_factory=open_batched
        )
        self._connecting: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Begin connecting; returns at once, publishing fails until connected."""
        self._connecting = spawn(self._connect, name="mqtt-connect", restart=False)

    async def _connect(self) -> None:
        try:
            await self._client.connect()
            log.info("mqtt connected", url=_redacted(self.url))
        except Exception as exc:  # the broker refused us for good (e.g. bad credentials)
            log.error("mqtt connection failed", url=_redacted(self.url), error=str(exc))

    async def wait_connected(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for the first connection; True when connected."""
        if self._connecting is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._connecting), timeout_s)
        return self.connected

    async def stop(self) -> None:
        """Disconnect (and stop trying to connect)."""
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        with contextlib.suppress(zmqtt.MQTTError, OSError):
            await self._client.disconnect()

    @property
    def connected(self) -> bool:
        """True while the broker connection is up."""
        try:
            self._client.connection_info  # noqa: B018 - raises when disconnected
        except (zmqtt.MQTTError, RuntimeError):
            return False
        return True

    async def ping(self) -> bool:
        """True when the broker answers a PINGREQ."""
        if not self.connected:
            return False
        try:
            await self._client.ping(timeout=3.0)
        except (zmqtt.MQTTError, OSError, RuntimeError):
            return False
        return True

    async def publish_command(self, device_id: str, command: str, payload: dict[str, Any]) -> None:
        """Send `payload` to `{device_id}/control/{command}`, QoS 2, not retained.

        InvalidInput, and nothing sent, when the payload holds what JSON has not (NaN).
        """
        # Standard JSON only: a device's parser refuses NaN and Infinity, which Python writes.
        body = dumps(payload, where="payload").encode()
        if not self.connected:
            raise TransportUnavailable(
                f"the MQTT broker at {_redacted(self.url)} is not connected; "
                "check OTA_MQTT_URL and that the broker is running, then retry"
            )
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                await self._client.publish(
                    command_topic(device_id, command),
                    body,
                    qos=zmqtt.QoS.EXACTLY_ONCE,
                    retain=False,
                    properties=self._properties(payload),
                )
        except (zmqtt.MQTTError, OSError, TimeoutError, RuntimeError) as exc:
            raise TransportUnavailable(
                f"the MQTT broker did not accept the command ({exc or type(exc).__name__}); "
                "retry when /readyz reports the broker reachable"
            ) from exc

    def _properties(self, payload: dict[str, Any]) -> zmqtt.PublishProperties | None:
        """MQTT 5: the command id as correlation data too (3.1.1 has no properties)."""
        command_id = str(payload.get("command_id", ""))
        if self._version != "5.0" or not command_id:
            return None
        return zmqtt.PublishProperties(correlation_data=command_id.encode())


def _redacted(url: str) -> str:
    """`url` without its password."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        credentials, _, host = rest.rpartition("@")
        user = credentials.split(":", 1)[0]
        return f"{scheme}{sep}{user}:***@{host}"
    return url
