"""Commands to devices over FastStream's MQTT broker (zmqtt underneath)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Literal

import structlog
import zmqtt
from faststream.mqtt import MQTTBroker

from orchestrator.errors import TransportUnavailable
from orchestrator.jsonutil import dumps
from orchestrator.supervisor import spawn
from orchestrator.transport.batched import batched_writes
from orchestrator.transport.topics import command_topic

log = structlog.get_logger(__name__)

PUBLISH_TIMEOUT_S = 15.0


class CommandTransport:
    """Publishes commands with QoS 2; connects in the background and keeps reconnecting."""

    def __init__(
        self, url: str, *, version: Literal["5.0", "3.1.1"] = "5.0", client_id: str = ""
    ) -> None:
        self.url = url
        # A dispatch step's publishes, and their PUBRELs, leave in a few sends: see batched.py.
        self._broker = batched_writes(
            MQTTBroker(
                url,
                client_id=client_id,
                version=version,
                # Keep trying for as long as the service runs; /readyz reports the outage.
                reconnect=zmqtt.ReconnectConfig(
                    max_attempts=None, initial_delay=0.5, max_delay=10.0
                ),
                mqtt_connect_timeout=10.0,
                logger=None,
            )
        )
        self._connecting: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Begin connecting; returns at once, publishing fails until connected."""
        self._connecting = spawn(self._connect, name="mqtt-connect", restart=False)

    async def _connect(self) -> None:
        try:
            await self._broker.start()
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
        await self._broker.stop()

    @property
    def connected(self) -> bool:
        """True while the broker connection is up."""
        try:
            self._broker.connection_info  # noqa: B018 - raises when disconnected
        except (zmqtt.MQTTError, RuntimeError):
            return False
        return True

    async def ping(self) -> bool:
        """True when the broker answers a PINGREQ."""
        return self.connected and await self._broker.ping(timeout=3.0)

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
                await self._broker.publish(
                    body,
                    command_topic(device_id, command),
                    qos=zmqtt.QoS.EXACTLY_ONCE,
                    retain=False,
                    correlation_id=str(payload.get("command_id", "")) or None,
                )
        except (zmqtt.MQTTError, OSError, TimeoutError, RuntimeError) as exc:
            raise TransportUnavailable(
                f"the MQTT broker did not accept the command ({exc or type(exc).__name__}); "
                "retry when /readyz reports the broker reachable"
            ) from exc


def _redacted(url: str) -> str:
    """`url` without its password."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        credentials, _, host = rest.rpartition("@")
        user = credentials.split(":", 1)[0]
        return f"{scheme}{sep}{user}:***@{host}"
    return url
