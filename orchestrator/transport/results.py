"""Device results in: the payload model, a pure parser, and the engine's persistent subscriber.

Devices answer on `{device_id}/control/{command}/result` (ARCHITECTURE §5). The engine reads
them through FastStream's MQTTBroker (zmqtt underneath) with a persistent session, so results
published while it is down are queued by the broker and delivered when it comes back.

What FastStream 0.7.8 / zmqtt 0.2.5 do, and what this module does about it:

- Persistent session: `MQTTBroker(clean_session=False, session_expiry_interval=N)` sends
  CONNECT with clean start off and a session expiry (MQTT 5) or clean session off (3.1.1).
- Orderly stop: `MQTTBroker.stop()` stops each subscriber first, and FastStream's
  `MQTTBaseSubscriber.stop()` calls zmqtt's `Subscription.stop()`, which sends UNSUBSCRIBE
  (faststream/mqtt/subscriber/usecase.py:134-146, zmqtt/client.py:400-412); the broker then
  drops the subscription and loses every result published during a restart. FastStream has
  no option to skip that. zmqtt sends nothing when the client is already disconnected
  (client.py:404-406), so `ResultSubscriber.stop()` first lets the message in hand finish,
  then disconnects the zmqtt client itself (DISCONNECT only: the session and its
  subscription stay on the broker), and only then lets `broker.stop()` clean up FastStream.
  Results that arrive meanwhile get `NackMessage`, a no-op for MQTT (faststream/mqtt/
  message.py:14-15): unacknowledged, they come back with the session. (zmqtt's own
  `Subscription.detach()`, client.py:480, does the same job, but FastStream keeps the
  Subscription in a private attribute.)
- Acknowledgement: FastStream subscribes with `auto_ack=False` unless the ack policy is
  ACK_FIRST (usecase.py:149); its default policy ACK acknowledges after the handler returns
  (faststream/middlewares/acknowledgement/middleware.py:94-95). zmqtt sends PUBACK (QoS 1)
  or PUBREC (QoS 2) only on that ack (zmqtt/_internal/inbound.py:433-446, 484-498). A
  result whose handling never finished (crash, kill -9, cancelled at stop) is therefore
  unacknowledged, and the broker sends it again when the session resumes (MQTT has no
  redelivery inside one connection, nor a nack).
- A handler exception is logged here and the result is acknowledged anyway: holding it
  unacknowledged would only bring it back at the next reconnect, and would take one of the
  broker's in-flight slots until then (a burst of failures would stall the stream).
- On a resumed session the broker sends queued results right after CONNACK, before our
  SUBSCRIBE; zmqtt holds them until the subscription exists, but by default aborts the
  connection past 1000 held messages (inbound.py:139-142). We lift that limit; the broker's
  in-flight limit bounds it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

import structlog
import zmqtt
from faststream.exceptions import IncorrectState, NackMessage
from faststream.mqtt import MQTTBroker
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.errors import TransportUnavailable
from orchestrator.transport.topics import (
    RESULTS_FILTER,
    SHARED_RESULTS_FILTER,
    parse_result_topic,
)

log = structlog.get_logger(__name__)

ResultStatus = Literal["received", "downloading", "installing", "success", "failed", "rejected"]

STOP_TIMEOUT_S = 15.0  # how long stop() waits for the result in hand
_PAYLOAD_EXCERPT_BYTES = 200  # of an ignored payload, in its log line


class ResultPayload(BaseModel):
    """The JSON a device publishes as a result; unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    command_id: str = Field(min_length=1, max_length=256)
    status: ResultStatus
    version: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceResult:
    """One well-formed result: who answered which command, and how."""

    device_id: str
    command: str
    command_id: str
    status: str
    version: str | None
    error: str | None


class IgnoredReason(StrEnum):
    """Why a message on a result topic is not a result (label of ota_results_ignored_total)."""

    MALFORMED = "malformed"  # not JSON, not an object, a field missing or of the wrong type
    BAD_TOPIC = "bad_topic"  # not `{device_id}/control/{command}/result`


def parse_result(topic: str, payload: bytes) -> DeviceResult | IgnoredReason:
    """The result in `payload` published on `topic`; never raises, whatever the bytes."""
    names = parse_result_topic(topic)
    if names is None:
        return IgnoredReason.BAD_TOPIC
    try:
        body = ResultPayload.model_validate_json(payload)
    except ValueError:  # pydantic's ValidationError: bad JSON, bad UTF-8, wrong shape
        return IgnoredReason.MALFORMED
    device_id, command = names
    return DeviceResult(
        device_id=device_id,
        command=command,
        command_id=body.command_id,
        status=body.status,
        version=body.version,
        error=body.error,
    )


Handler = Callable[[DeviceResult | IgnoredReason, str], Awaitable[None]]  # (parsed, raw topic)


async def _undecoded(message: Any) -> zmqtt.Message:
    """FastStream decoder that hands the raw zmqtt message on: parse_result does the decoding."""
    raw: zmqtt.Message = message.raw_message
    return raw


class ResultSubscriber:
    """Receives every device result for the engine over a persistent MQTT session."""

    def __init__(
        self,
        url: str,
        *,
        version: Literal["5.0", "3.1.1"],
        client_id: str,
        handler: Handler,
        shared: bool = True,
        session_expiry_s: int = 3600,
        stop_timeout_s: float = STOP_TIMEOUT_S,
    ) -> None:
        if not client_id:
            raise ValueError(
                "client_id must not be empty: the broker finds the persistent session by it; "
                "give each engine replica its own stable id (OTA_INSTANCE_ID)"
            )
        if version == "5.0" and session_expiry_s < 1:
            raise ValueError(
                f"session_expiry_s must be at least 1 for a persistent session, got "
                f"{session_expiry_s}; results sent while the engine is down would be lost"
            )
        self.url = url
        self.client_id = client_id
        # Shared subscriptions are an MQTT 5 feature; on 3.1.1 one engine takes every result.
        self.topic_filter = SHARED_RESULTS_FILTER if shared and version == "5.0" else RESULTS_FILTER
        self._handler = handler
        self._stop_timeout_s = stop_timeout_s
        self._broker = MQTTBroker(
            url,
            client_id=client_id,
            version=version,
            clean_session=False,
            session_expiry_interval=session_expiry_s if version == "5.0" else 0,
            # Keep trying for as long as the engine runs; zmqtt re-subscribes on reconnect.
            reconnect=zmqtt.ReconnectConfig(max_attempts=None, initial_delay=0.5, max_delay=10.0),
            mqtt_connect_timeout=10.0,
            session_replay_buffer_size=0,  # unbounded: see the module docstring
            graceful_timeout=None,  # stop() waits for the result in hand itself
            apply_types=False,
            logger=None,
        )
        subscriber = self._broker.subscriber(
            self.topic_filter, qos=zmqtt.QoS.EXACTLY_ONCE, decoder=_undecoded
        )
        subscriber(self._on_message)
        self._stopping = False
        self._idle = asyncio.Event()  # clear while a result is being handled
        self._idle.set()

    async def start(self) -> None:
        """Connect (retrying while the broker is unreachable), subscribe, then return."""
        self._stopping = False
        try:
            await self._broker.start()
        except zmqtt.MQTTConnectError as exc:  # refused for good, e.g. bad credentials
            await self._broker.stop()
            raise TransportUnavailable(
                f"the MQTT broker refused the result subscriber {self.client_id!r} ({exc}); "
                "check OTA_MQTT_URL and the broker's credentials"
            ) from exc
        log.info("results subscribed", topic_filter=self.topic_filter, client_id=self.client_id)

    async def stop(self) -> None:
        """Finish the result in hand; disconnect without UNSUBSCRIBE so the broker keeps queuing."""
        self._stopping = True
        try:
            async with asyncio.timeout(self._stop_timeout_s):
                await self._idle.wait()
        except TimeoutError:
            log.warning(
                "result handler still busy at stop; that result stays unacknowledged and "
                "the broker sends it again on the next start",
                timeout_s=self._stop_timeout_s,
            )
        with contextlib.suppress(IncorrectState):  # never connected: nothing to disconnect
            # DISCONNECT without UNSUBSCRIBE; broker.stop() below then finds no connection
            # to unsubscribe on (see the module docstring).
            await self._broker.config.client.disconnect()
        await self._broker.stop()
        log.info("results subscriber stopped", client_id=self.client_id)

    @property
    def connected(self) -> bool:
        """True while the broker connection is up."""
        try:
            self._broker.connection_info  # noqa: B018 - raises when disconnected
        except (zmqtt.MQTTError, RuntimeError):
            return False
        return True

    async def _on_message(self, message: zmqtt.Message) -> None:
        if self._stopping:
            # Leave it unacknowledged: the broker sends it again when the session resumes.
            raise NackMessage
        self._idle.clear()
        try:
            parsed = parse_result(message.topic, message.payload)
            if isinstance(parsed, IgnoredReason):
                context = {"topic": message.topic}
                # The handler counts and logs it; the bytes are here for whoever debugs a device.
                log.debug(
                    "result not parsed",
                    reason=str(parsed),
                    topic=message.topic,
                    payload=message.payload[:_PAYLOAD_EXCERPT_BYTES].decode("utf-8", "replace"),
                )
            else:
                context = {"device_id": parsed.device_id, "command_id": parsed.command_id}
            with structlog.contextvars.bound_contextvars(**context):
                try:
                    await self._handler(parsed, message.topic)
                except Exception:
                    log.exception(
                        "result handler failed; the result is acknowledged and not retried",
                        topic=message.topic,
                    )
        finally:
            self._idle.set()
