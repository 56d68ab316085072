"""Device results in: the payload model, a pure parser, and the engine's persistent subscriber.

Devices answer on `{device_id}/control/{command}/result` (ARCHITECTURE §5). The engine reads
them with zmqtt (the MQTT client FastStream is built on) over a persistent session, so
results published while it is down are queued by the broker and delivered when it comes back.

Why zmqtt directly rather than a FastStream subscriber: FastStream calls a handler per message
and acknowledges each as its handler returns. The engine applies results in batches (one Redis
round trip for a few hundred results, not four per result), and acknowledges each message
only after its batch is applied. zmqtt gives exactly that: `subscribe(auto_ack=False)` and
`Message.ack()`.

- Persistent session: CONNECT with clean start off and a session expiry (MQTT 5) or clean
  session off (3.1.1).
- Acknowledgement: PUBACK (QoS 1) or PUBREC (QoS 2) goes out on `Message.ack()`, after the
  batch holding the message was handled. A result whose handling never finished (crash,
  kill -9, cut off at stop) is unacknowledged, and the broker sends it again when the session
  resumes (MQTT has no redelivery inside one connection, nor a nack).
- Orderly stop: the batch in hand is finished; then `Subscription.detach()` and DISCONNECT,
  without UNSUBSCRIBE, so the broker keeps the subscription and queues results for the next
  start. Messages read but not yet handled stay unacknowledged and come back.
- Batches: the handler takes what has arrived, after waiting up to `linger_s` (10 ms) for a
  full batch. A handler faster than the broker would otherwise see results one or two at a
  time, and the fixed cost of each call (a Redis round trip and a script run) would be paid
  per result rather than per few hundred.
- A handler exception is logged and the batch is acknowledged anyway: holding it would only
  bring it back at the next reconnect, and would take broker in-flight slots until then.
- On a resumed session the broker sends queued results right after CONNACK, before our
  SUBSCRIBE; zmqtt holds them until the subscription exists, but by default aborts the
  connection past 1000 held messages. We lift that limit; the broker's in-flight limit
  bounds it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

import structlog
import zmqtt
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.errors import TransportUnavailable
from orchestrator.supervisor import spawn
from orchestrator.transport.batched import open_batched
from orchestrator.transport.clients import lasting_client
from orchestrator.transport.topics import (
    RESULTS_FILTER,
    SHARED_RESULTS_FILTER,
    parse_result_topic,
)

log = structlog.get_logger(__name__)

ResultStatus = Literal[
    "received",
    "downloading",
    "installing",
    "success",
    "failed",
    "rejected",
    "healthy",  # a health report during a soak (policy.health)
    "unhealthy",
]

STOP_TIMEOUT_S = 15.0  # how long stop() waits for the result in hand
MAX_RESULT_BYTES = 64 * 1024  # of a result payload; a real one is about a hundred bytes
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
    TOO_LARGE = "too_large"  # over MAX_RESULT_BYTES: not read at all
    BAD_TOPIC = "bad_topic"  # not `{device_id}/control/{command}/result`


def parse_result(topic: str, payload: bytes) -> DeviceResult | IgnoredReason:
    """The result in `payload` published on `topic`; never raises, whatever the bytes."""
    names = parse_result_topic(topic)
    if names is None:
        return IgnoredReason.BAD_TOPIC
    if len(payload) > MAX_RESULT_BYTES:
        return IgnoredReason.TOO_LARGE
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


ParsedResult = tuple[DeviceResult | IgnoredReason, str]  # (parsed, raw topic)
Handler = Callable[[Sequence[ParsedResult]], Awaitable[None]]  # a batch, in arrival order

MAX_BATCH = 200  # results handed to the handler at once, at most
LINGER_S = 0.01  # how long a batch waits for more results, at most, before it is handled


def results_client_id(instance_id: str) -> str:
    """The client id of an engine replica's result subscriber (its persistent session)."""
    return f"{instance_id}-results"


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
        max_batch: int = MAX_BATCH,
        linger_s: float = LINGER_S,
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
        self._max_batch = max_batch
        self._linger_s = linger_s
        # zmqtt re-subscribes on reconnect.
        self._client = lasting_client(
            url,
            client_id=client_id,
            version=version,
            clean_session=False,
            session_expiry_interval=session_expiry_s if version == "5.0" else 0,
            session_replay_buffer_size=0,  # unbounded: see the module docstring
            transport_factory=open_batched,  # a batch's acknowledgements leave together
        )
        self._subscription: zmqtt.Subscription | None = None
        # Read but not yet handled, at most two batches: the reader waits for room past that.
        self._inbox: deque[zmqtt.Message] = deque()
        self._arrived = asyncio.Event()  # set while the inbox holds a result
        self._full = asyncio.Event()  # set while it holds a whole batch
        self._room = asyncio.Event()  # set while it holds less than two batches
        self._tasks: list[asyncio.Task[None]] = []
        self._idle = asyncio.Event()  # clear while a batch is being handled
        self._idle.set()
        self._stopping = False

    async def start(self) -> None:
        """Connect (retrying while the broker is unreachable), subscribe, then return."""
        try:
            await self._client.connect()
        except zmqtt.MQTTConnectError as exc:  # refused for good, e.g. bad credentials
            raise TransportUnavailable(
                f"the MQTT broker refused the result subscriber {self.client_id!r} ({exc}); "
                "check OTA_MQTT_URL and the broker's credentials"
            ) from exc
        self._subscription = self._client.subscribe(
            self.topic_filter,
            qos=zmqtt.QoS.EXACTLY_ONCE,
            auto_ack=False,
            receive_buffer_size=self._max_batch,
        )
        self._inbox.clear()
        for event in (self._arrived, self._full):
            event.clear()
        self._room.set()
        self._stopping = False
        # Reading starts before SUBSCRIBE goes out: on a resumed session the broker sends its
        # backlog (up to its in-flight window) ahead of the SUBACK, and zmqtt's read loop would
        # wait for room in the subscription's buffer before it could read that SUBACK.
        subscription = self._subscription
        self._tasks = [
            spawn(lambda: self._read(subscription), name="results-read"),
            spawn(self._handle_batches, name="results-handle"),
        ]
        try:
            await self._subscription.start()
        except BaseException:
            await self._cancel_tasks()
            raise
        log.info("results subscribed", topic_filter=self.topic_filter, client_id=self.client_id)

    async def stop(self) -> None:
        """Finish the batch in hand; disconnect without UNSUBSCRIBE so the broker keeps queuing."""
        self._stopping = True
        if self._tasks:
            self._tasks[0].cancel()  # the reader: take nothing more from the broker
        try:
            async with asyncio.timeout(self._stop_timeout_s):
                await self._idle.wait()
        except TimeoutError:
            log.warning(
                "result handler still busy at stop; its batch stays unacknowledged and "
                "the broker sends it again on the next start",
                timeout_s=self._stop_timeout_s,
            )
        await self._cancel_tasks()
        if self._subscription is not None:
            await self._subscription.detach()  # no UNSUBSCRIBE: the session keeps it
            self._subscription = None
        await self._client.disconnect()
        log.info("results subscriber stopped", client_id=self.client_id)

    async def _cancel_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    @property
    def connected(self) -> bool:
        """True while the broker connection is up."""
        try:
            self._client.connection_info  # noqa: B018 - raises when disconnected
        except zmqtt.MQTTError:
            return False
        return True

    async def _read(self, subscription: zmqtt.Subscription) -> None:
        """Move results from the subscription to the inbox, at most two batches ahead.

        A failure ends it; spawn logs it and reads again after a pause, while the broker
        keeps the results.
        """
        inbox, batch, limit = self._inbox, self._max_batch, 2 * self._max_batch
        async for message in subscription:
            inbox.append(message)
            held = len(inbox)
            if held == 1:
                self._arrived.set()
            if held >= batch:
                self._full.set()
            if held >= limit:
                self._room.clear()
                await self._room.wait()

    async def _handle_batches(self) -> None:
        inbox = self._inbox
        while True:
            await self._arrived.wait()
            if len(inbox) < self._max_batch and self._linger_s > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._linger_s):
                        await self._full.wait()
            batch = [inbox.popleft() for _ in range(min(len(inbox), self._max_batch))]
            if len(inbox) < self._max_batch:
                self._full.clear()
                if not inbox:
                    self._arrived.clear()
            self._room.set()
            if self._stopping:
                return  # left unacknowledged: the broker sends them again on the next start
            self._idle.clear()
            try:
                await self._handle(batch)
            finally:
                self._idle.set()

    async def _handle(self, batch: list[zmqtt.Message]) -> None:
        parsed = [(parse_result(m.topic, m.payload), m.topic) for m in batch]
        for (result, topic), message in zip(parsed, batch, strict=True):
            if isinstance(result, IgnoredReason):
                # The handler counts and logs it; the bytes are here for whoever debugs a device.
                log.debug(
                    "result not parsed",
                    reason=str(result),
                    topic=topic,
                    payload=message.payload[:_PAYLOAD_EXCERPT_BYTES].decode("utf-8", "replace"),
                )
        try:
            await self._handler(parsed)
        except Exception:
            log.exception(
                "result handler failed; the batch is acknowledged and not retried",
                results=len(batch),
                topic=batch[0].topic,
            )
        for message in batch:
            try:
                await message.ack()
            except zmqtt.MQTTDisconnectedError:
                # The connection dropped mid-batch. The batch is applied; the broker sends the
                # unacknowledged rest again on the resumed session and the handler finds them
                # duplicates. Raising here would end the handling task: the engine went deaf.
                log.info("connection lost while acknowledging a batch; the broker resends")
                return
