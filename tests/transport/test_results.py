"""Device results: the pure parser, and the persistent subscriber against a real mosquitto.

Every test uses random device ids (so topics never collide) and its own client ids, and
discards the persistent sessions it made when it ends: mosquitto hands a shared-subscription
message to offline members too, so a left-over session in the `ota-engine` group would take
results meant for later tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import aiomqtt
import pytest
import structlog
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from orchestrator.domain.states import HEALTH_EVENTS, RESULT_EVENTS
from orchestrator.embedded import EmbeddedBroker
from orchestrator.transport.results import (
    MAX_RESULT_BYTES,
    DeviceResult,
    Handler,
    IgnoredReason,
    ParsedResult,
    ResultStatus,
    ResultSubscriber,
    parse_result,
)
from orchestrator.transport.topics import parse_result_topic, result_topic

Version = Literal["5.0", "3.1.1"]
PROJECT_ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 15.0


def device() -> str:
    return f"dev-{uuid.uuid4().hex[:12]}"


def body(command_id: str, status: str = "success", **extra: Any) -> bytes:
    return json.dumps({"command_id": command_id, "status": status, **extra}).encode()


# --- parse_result -------------------------------------------------------------------------


def test_parse_result_reads_a_good_result() -> None:
    parsed = parse_result(
        "dev-1/control/download_firmware/result",
        body("c-1", "failed", version="2.1.0", error="flash write failed"),
    )
    assert parsed == DeviceResult(
        device_id="dev-1",
        command="download_firmware",
        command_id="c-1",
        status="failed",
        version="2.1.0",
        error="flash write failed",
    )


def test_parse_result_leaves_version_and_error_optional() -> None:
    parsed = parse_result("dev-1/control/reboot/result", body("c-2", "received"))
    assert isinstance(parsed, DeviceResult)
    assert (parsed.status, parsed.version, parsed.error) == ("received", None, None)


def test_parse_result_ignores_unknown_fields() -> None:
    payload = body("c-3", "installing", progress=42, extra={"nested": [1, 2]})
    parsed = parse_result("dev-1/control/download_firmware/result", payload)
    assert isinstance(parsed, DeviceResult)
    assert (parsed.command_id, parsed.status) == ("c-3", "installing")


def test_result_statuses_are_the_ones_the_domain_maps_to_events() -> None:
    assert set(get_args(ResultStatus)) == set(RESULT_EVENTS) | set(HEALTH_EVENTS)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"\xff\xfe\x00", id="not-utf8"),
        pytest.param(b"", id="empty"),
        pytest.param(b'[{"command_id": "c", "status": "success"}]', id="json-array"),
        pytest.param(b'"success"', id="json-string"),
        pytest.param(b'{"status": "success"}', id="missing-command_id"),
        pytest.param(b'{"command_id": "", "status": "success"}', id="empty-command_id"),
        pytest.param(b'{"command_id": 7, "status": "success"}', id="number-command_id"),
        pytest.param(b'{"command_id": "c"}', id="missing-status"),
        pytest.param(b'{"command_id": "c", "status": "done"}', id="bad-status"),
        pytest.param(b'{"command_id": "c", "status": "SUCCESS"}', id="upper-case-status"),
        pytest.param(b'{"command_id": "c", "status": "success", "version": 2}', id="int-version"),
        pytest.param(b'{"command_id": "c", "status": "failed", "error": {}}', id="object-error"),
    ],
)
def test_parse_result_calls_bad_payloads_malformed(payload: bytes) -> None:
    assert parse_result("dev-1/control/reboot/result", payload) is IgnoredReason.MALFORMED


@pytest.mark.parametrize(
    "topic",
    [
        "dev-1/control/reboot",
        "dev-1/control/reboot/result/extra",
        "dev-1/status/reboot/result",
        "dev-1/control/reboot/results",
        "/control/reboot/result",
        "dev-1/control//result",
        "dev+1/control/reboot/result",
        "$SYS/control/reboot/result",
        "",
    ],
)
def test_parse_result_calls_other_topic_shapes_bad_topic(topic: str) -> None:
    assert parse_result(topic, body("c-1")) is IgnoredReason.BAD_TOPIC


def test_result_topics_round_trip() -> None:
    assert parse_result_topic(result_topic("dev-9", "configuration")) == ("dev-9", "configuration")


@given(topic=st.text(max_size=80), payload=st.binary(max_size=300))
def test_parse_result_never_raises_on_arbitrary_input(topic: str, payload: bytes) -> None:
    assert isinstance(parse_result(topic, payload), DeviceResult | IgnoredReason)


@given(payload=st.binary(max_size=300) | st.from_regex(rb"\{.*\}", fullmatch=True))
def test_parse_result_never_raises_on_arbitrary_payloads_on_a_good_topic(payload: bytes) -> None:
    parsed = parse_result("dev-1/control/reboot/result", payload)
    assert isinstance(parsed, DeviceResult) or parsed is IgnoredReason.MALFORMED


@given(
    fields=st.dictionaries(
        st.sampled_from(["command_id", "status", "version", "error", "other"]),
        st.none() | st.booleans() | st.integers() | st.text(max_size=12) | st.just("success"),
    )
)
def test_parse_result_accepts_exactly_the_contract(fields: dict[str, Any]) -> None:
    parsed = parse_result("dev-1/control/reboot/result", json.dumps(fields).encode())
    valid = (
        isinstance(fields.get("command_id"), str)
        and fields["command_id"] != ""
        and (fields.get("status") in RESULT_EVENTS or fields.get("status") in HEALTH_EVENTS)
        and all(isinstance(fields.get(k), str | None) for k in ("version", "error"))
    )
    assert isinstance(parsed, DeviceResult) is valid


def test_a_payload_over_the_size_bound_is_ignored_as_too_large_unread() -> None:
    """A device sending megabytes costs the engine nothing but the count."""
    payload = body("c-4", "failed", error="x" * MAX_RESULT_BYTES)
    assert len(payload) > MAX_RESULT_BYTES
    assert parse_result("dev-1/control/reboot/result", payload) is IgnoredReason.TOO_LARGE
    fits = body("c-4", "failed", error="x" * (MAX_RESULT_BYTES - 100))
    assert isinstance(parse_result("dev-1/control/reboot/result", fits), DeviceResult)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)


@hypothesis_settings(database=None, max_examples=150)
@given(
    fields=st.dictionaries(
        st.sampled_from(["command_id", "status", "version", "error", "other"]),
        JSON_VALUES | st.sampled_from(["c-1", "success", "failed", "2.1.0"]),
    ),
    padding=st.sampled_from([0, 10, MAX_RESULT_BYTES]),
)
def test_any_json_object_is_a_result_or_counted_as_ignored_never_an_error(
    fields: dict[str, Any], padding: int
) -> None:
    """Wrong types, NaN, nesting, huge numbers, oversize: a result only when the contract holds."""
    payload = json.dumps({**fields, "pad": "p" * padding}).encode()
    parsed = parse_result("dev-1/control/reboot/result", payload)
    valid = (
        isinstance(fields.get("command_id"), str)
        and 0 < len(fields["command_id"]) <= 256
        and isinstance(fields.get("status"), str)
        and fields["status"] in RESULT_EVENTS
        and all(isinstance(fields.get(k), str | None) for k in ("version", "error"))
        and len(payload) <= MAX_RESULT_BYTES
    )
    assert isinstance(parsed, DeviceResult) is valid
    if not valid:
        assert parsed in (IgnoredReason.MALFORMED, IgnoredReason.TOO_LARGE)


@hypothesis_settings(database=None, max_examples=100)
@given(depth=st.integers(min_value=1, max_value=20_000), kind=st.sampled_from([b"[]", b"{}"]))
def test_deeply_nested_payloads_are_ignored_never_an_error(depth: int, kind: bytes) -> None:
    nested = kind[:1] * depth + kind[1:] * depth
    if kind == b"{}":
        nested = b'{"a":' * depth + b"1" + b"}" * depth
    payload = b'{"command_id": "c", "status": "success", "x": ' + nested + b"}"
    parsed = parse_result("dev-1/control/reboot/result", payload)
    assert isinstance(parsed, DeviceResult) or parsed in set(IgnoredReason)


# --- the subscriber -----------------------------------------------------------------------


@dataclass
class Inbox:
    """A handler that records what it is given, and wakes whoever waits for it."""

    items: list[tuple[DeviceResult | IgnoredReason, str]] = field(default_factory=list)
    by_member: dict[str, list[str]] = field(default_factory=dict)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handler(self, batch: Sequence[ParsedResult]) -> None:
        async with self._changed:
            self.items.extend(batch)
            self._changed.notify_all()

    def member(self, name: str) -> Handler:
        """A handler for one of several subscribers, which also notes who handled what."""
        handled = self.by_member.setdefault(name, [])

        async def handle(batch: Sequence[ParsedResult]) -> None:
            handled.extend(p.command_id if isinstance(p, DeviceResult) else t for p, t in batch)
            await self.handler(batch)

        return handle

    @property
    def results(self) -> list[DeviceResult]:
        return [parsed for parsed, _ in self.items if isinstance(parsed, DeviceResult)]

    def command_ids(self) -> list[str]:
        return [result.command_id for result in self.results]

    async def wait_for(self, count: int, timeout_s: float = WAIT_S) -> None:
        """Wait until `count` items have arrived; fail after `timeout_s`."""
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: len(self.items) >= count)


def mqtt_protocol(version: Version) -> aiomqtt.ProtocolVersion:
    return aiomqtt.ProtocolVersion.V5 if version == "5.0" else aiomqtt.ProtocolVersion.V311


async def publish(
    broker: EmbeddedBroker,
    messages: Iterable[tuple[str, bytes, int]],
    version: Version = "5.0",
) -> None:
    """Publish (topic, payload, qos) messages as a device would, each acknowledged in turn."""
    async with aiomqtt.Client(broker.host, broker.port, protocol=mqtt_protocol(version)) as client:
        for topic, payload, qos in messages:
            await client.publish(topic, payload, qos=qos)


async def discard_session(broker: EmbeddedBroker, client_id: str, version: Version) -> None:
    """Connect as `client_id` with a clean start and no expiry: the broker drops its session."""
    options: dict[str, Any] = {"clean_start": True} if version == "5.0" else {"clean_session": True}
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        identifier=client_id,
        protocol=mqtt_protocol(version),
        **options,
    ):
        pass


SubscriberFactory = Callable[..., ResultSubscriber]


@pytest.fixture
async def subscribers(mqtt_broker: EmbeddedBroker) -> AsyncIterator[SubscriberFactory]:
    """`create(handler, client_id=, version=, shared=)`; stops them and drops their sessions."""
    made: list[ResultSubscriber] = []
    sessions: set[tuple[str, Version]] = set()

    def create(
        handler: Any,
        *,
        client_id: str | None = None,
        version: Version = "5.0",
        shared: bool = True,
        **options: Any,
    ) -> ResultSubscriber:
        client_id = client_id or f"test-results-{uuid.uuid4().hex[:10]}"
        subscriber = ResultSubscriber(
            mqtt_broker.url,
            version=version,
            client_id=client_id,
            handler=handler,
            shared=shared,
            **options,
        )
        made.append(subscriber)
        sessions.add((client_id, version))
        return subscriber

    yield create
    for subscriber in made:
        await subscriber.stop()
    for client_id, version in sessions:
        await discard_session(mqtt_broker, client_id, version)


async def test_subscriber_passes_parsed_results_from_several_devices(
    mqtt_broker: EmbeddedBroker, subscribers: SubscriberFactory
) -> None:
    inbox = Inbox()
    subscriber = subscribers(inbox.handler)
    await subscriber.start()
    assert subscriber.connected
    devices = [device() for _ in range(3)]
    sent = [
        (result_topic(dev, "download_firmware"), body(f"{dev}-{qos}", "downloading"), qos)
        for dev in devices
        for qos in (1, 2)
    ]
    await publish(mqtt_broker, sent)
    await inbox.wait_for(len(sent))

    assert sorted(inbox.command_ids()) == sorted(
        f"{dev}-{qos}" for dev in devices for qos in (1, 2)
    )
    for parsed, topic in inbox.items:
        assert isinstance(parsed, DeviceResult)
        assert topic == result_topic(parsed.device_id, "download_firmware")
        assert parsed.command_id.startswith(parsed.device_id)
        assert parsed.status == "downloading"


async def test_subscriber_hands_on_bad_messages_and_keeps_working(
    mqtt_broker: EmbeddedBroker, subscribers: SubscriberFactory
) -> None:
    inbox = Inbox()
    await subscribers(inbox.handler).start()
    dev, command = device(), f"cmd-{uuid.uuid4().hex[:8]}"
    with structlog.testing.capture_logs() as logs:
        await publish(
            mqtt_broker,
            [
                (result_topic(dev, command), b"{not json", 1),
                (f"/control/{command}/result", body("c-empty-device"), 1),  # `+` matches ""
                (result_topic(dev, command), body("c-after", "success", version="2.0"), 2),
            ],
        )
        await inbox.wait_for(3)

    assert inbox.items == [
        (IgnoredReason.MALFORMED, result_topic(dev, command)),
        (IgnoredReason.BAD_TOPIC, f"/control/{command}/result"),
        (DeviceResult(dev, command, "c-after", "success", "2.0", None), result_topic(dev, command)),
    ]
    ignored = [entry for entry in logs if entry["event"] == "result not parsed"]
    assert [entry["reason"] for entry in ignored] == ["malformed", "bad_topic"]
    assert ignored[0]["payload"] == "{not json"


async def test_a_handler_that_raises_is_logged_and_later_results_still_arrive(
    mqtt_broker: EmbeddedBroker, subscribers: SubscriberFactory
) -> None:
    inbox = Inbox()
    raised: list[str] = []
    failed = asyncio.Event()

    async def flaky(batch: Sequence[ParsedResult]) -> None:
        if not raised:
            raised.append(batch[0][1])
            failed.set()
            raise RuntimeError("redis went away")
        await inbox.handler(batch)

    await subscribers(flaky).start()
    dev = device()
    topic = result_topic(dev, "reboot")
    with structlog.testing.capture_logs() as logs:
        await publish(mqtt_broker, [(topic, body("c-0"), 1)])
        async with asyncio.timeout(WAIT_S):
            await failed.wait()
        await publish(mqtt_broker, [(topic, body(f"c-{i}"), 1) for i in (1, 2)])
        await inbox.wait_for(2)

    assert inbox.command_ids() == ["c-1", "c-2"]
    (failure,) = [entry for entry in logs if entry["log_level"] == "error"]
    assert failure["event"].startswith("result handler failed")
    assert failure["topic"] == raised[0]
    assert failure["exc_info"] is True


@pytest.mark.parametrize(("version", "shared"), [("5.0", True), ("3.1.1", False)])
async def test_a_backlog_larger_than_a_batch_arrives_after_a_restart(
    mqtt_broker: EmbeddedBroker, subscribers: SubscriberFactory, version: Version, shared: bool
) -> None:
    # The broker sends the queued results (up to its in-flight window) right after CONNACK,
    # while the subscriber is still waiting for its SUBACK: they must all find room.
    backlog = 1200
    client_id = f"test-results-{uuid.uuid4().hex[:10]}"
    first = subscribers(Inbox().handler, client_id=client_id, version=version, shared=shared)
    await first.start()
    await first.stop()
    await publish(
        mqtt_broker,
        [(result_topic(device(), "download_firmware"), body(f"c-{i}"), 1) for i in range(backlog)],
        version,
    )
    inbox = Inbox()
    second = subscribers(
        inbox.handler, client_id=client_id, version=version, shared=shared, max_batch=50
    )
    async with asyncio.timeout(WAIT_S):
        await second.start()
    await inbox.wait_for(backlog)

    assert sorted(inbox.command_ids()) == sorted(f"c-{i}" for i in range(backlog))


@pytest.mark.parametrize(("version", "shared"), [("5.0", True), ("3.1.1", False)])
async def test_results_sent_during_an_orderly_restart_arrive_after_it(
    mqtt_broker: EmbeddedBroker, subscribers: SubscriberFactory, version: Version, shared: bool
) -> None:
    client_id = f"test-results-{uuid.uuid4().hex[:10]}"
    first = subscribers(Inbox().handler, client_id=client_id, version=version, shared=shared)
    await first.start()
    await first.stop()
    assert not first.connected

    dev = device()
    await publish(
        mqtt_broker,
        [(result_topic(dev, "download_firmware"), body(f"c-{i}"), 1) for i in range(50)],
        version,
    )
    inbox = Inbox()
    second = subscribers(inbox.handler, client_id=client_id, version=version, shared=shared)
    await second.start()
    await inbox.wait_for(50)

    assert sorted(inbox.command_ids()) == sorted(f"c-{i}" for i in range(50))


async def test_a_batch_waits_for_more_results_until_it_is_full(
    mqtt_broker: EmbeddedBroker, subscribers: SubscriberFactory
) -> None:
    batches: list[list[str]] = []
    inbox = Inbox()

    async def record(batch: Sequence[ParsedResult]) -> None:
        batches.append([p.command_id for p, _ in batch if isinstance(p, DeviceResult)])
        await inbox.handler(batch)

    # A linger far longer than the test: only a full batch is handled before it ends.
    await subscribers(record, max_batch=3, linger_s=3600).start()
    dev = device()
    await publish(mqtt_broker, [(result_topic(dev, "reboot"), body(f"c-{i}"), 1) for i in range(3)])
    await inbox.wait_for(3)
    assert batches == [["c-0", "c-1", "c-2"]]


async def test_stop_finishes_the_batch_in_hand_and_leaves_later_ones_queued(
    mqtt_broker: EmbeddedBroker, subscribers: SubscriberFactory
) -> None:
    client_id = f"test-results-{uuid.uuid4().hex[:10]}"
    entered, release = asyncio.Event(), asyncio.Event()
    finished: list[str] = []

    async def slow(batch: Sequence[ParsedResult]) -> None:
        entered.set()
        await release.wait()
        finished.extend(p.command_id for p, _ in batch if isinstance(p, DeviceResult))

    first = subscribers(slow, client_id=client_id, max_batch=1)  # one result per batch
    await first.start()
    dev = device()
    await publish(mqtt_broker, [(result_topic(dev, "reboot"), body(f"c-{i}"), 2) for i in range(5)])
    async with asyncio.timeout(WAIT_S):
        await entered.wait()
    stopping = asyncio.create_task(first.stop())
    await asyncio.sleep(0)  # let stop() begin while the first batch is in hand
    assert not stopping.done()
    release.set()
    async with asyncio.timeout(WAIT_S):
        await stopping
    assert finished == ["c-0"]  # the batch in hand was handled to the end, and none after it

    inbox = Inbox()
    await subscribers(inbox.handler, client_id=client_id).start()
    await inbox.wait_for(4)
    assert sorted(inbox.command_ids()) == [f"c-{i}" for i in range(1, 5)]


async def test_a_handler_stuck_at_stop_is_cut_off_and_its_result_comes_back(
    mqtt_broker: EmbeddedBroker, subscribers: SubscriberFactory
) -> None:
    client_id = f"test-results-{uuid.uuid4().hex[:10]}"
    entered = asyncio.Event()

    async def stuck(batch: Sequence[ParsedResult]) -> None:
        entered.set()
        await asyncio.Event().wait()

    first = subscribers(stuck, client_id=client_id, stop_timeout_s=0.2)
    await first.start()
    dev = device()
    await publish(mqtt_broker, [(result_topic(dev, "reboot"), body(f"c-{i}"), 2) for i in range(2)])
    async with asyncio.timeout(WAIT_S):
        await entered.wait()
    with structlog.testing.capture_logs() as logs:
        async with asyncio.timeout(WAIT_S):
            await first.stop()
    assert any(entry["event"].startswith("result handler still busy") for entry in logs)

    inbox = Inbox()
    await subscribers(inbox.handler, client_id=client_id).start()
    await inbox.wait_for(2)
    assert sorted(inbox.command_ids()) == ["c-0", "c-1"]  # the cut-off one was never acknowledged


async def test_results_survive_a_crash_of_the_subscriber_process(
    mqtt_broker: EmbeddedBroker, subscribers: SubscriberFactory
) -> None:
    client_id = f"test-results-{uuid.uuid4().hex[:10]}"
    inbox = Inbox()
    # Made now, so that the fixture drops the child's session however the test ends.
    successor = subscribers(inbox.handler, client_id=client_id)
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.transport.crash_subscriber",
        mqtt_broker.url,
        client_id,
        cwd=PROJECT_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    dev = device()
    try:
        async with asyncio.timeout(WAIT_S):
            assert await child.stdout.readline() == b"subscribed\n"
        # The child takes this one and never finishes handling it, so never acknowledges it.
        await publish(mqtt_broker, [(result_topic(dev, "reboot"), body("c-in-hand"), 1)])
        async with asyncio.timeout(WAIT_S):
            assert await child.stdout.readline() == b"handling c-in-hand\n"
    finally:
        with contextlib.suppress(ProcessLookupError):  # it died on its own: the asserts say why
            child.send_signal(signal.SIGKILL)
        await child.wait()
    assert child.returncode == -signal.SIGKILL

    sent = [(result_topic(dev, "reboot"), body(f"c-{i}"), 1 + i % 2) for i in range(20)]
    await publish(mqtt_broker, sent)
    await successor.start()
    await inbox.wait_for(21)

    assert sorted(inbox.command_ids()) == sorted(["c-in-hand", *(f"c-{i}" for i in range(20))])


async def test_shared_subscribers_split_the_results_between_them(
    mqtt_broker: EmbeddedBroker, subscribers: SubscriberFactory
) -> None:
    inbox = Inbox()
    for name in ("a", "b"):
        await subscribers(inbox.member(name), shared=True).start()
    sent = [(result_topic(device(), "reboot"), body(f"c-{i}"), 1 + i % 2) for i in range(100)]
    await publish(mqtt_broker, sent)
    # Were both to receive everything, overlaps would be among the first 100 handled.
    await inbox.wait_for(100)

    assert sorted(inbox.command_ids()) == sorted(f"c-{i}" for i in range(100))  # each once
    assert all(inbox.by_member.values())  # and both took a share


async def test_a_subscriber_on_mqtt_3_1_1_receives_results(
    mqtt_broker: EmbeddedBroker, subscribers: SubscriberFactory
) -> None:
    inbox = Inbox()
    subscriber = subscribers(inbox.handler, version="3.1.1", shared=True)
    assert subscriber.topic_filter == "+/control/+/result"  # no shared subscriptions in 3.1.1
    await subscriber.start()
    dev = device()
    await publish(
        mqtt_broker,
        [(result_topic(dev, "configuration"), body(f"c-{qos}", "rejected"), qos) for qos in (1, 2)],
        "3.1.1",
    )
    await inbox.wait_for(2)
    assert sorted(inbox.command_ids()) == ["c-1", "c-2"]
    assert {result.status for result in inbox.results} == {"rejected"}


def test_a_subscriber_needs_a_client_id_and_a_session_expiry() -> None:
    async def ignore(batch: Sequence[ParsedResult]) -> None:
        return None

    with pytest.raises(ValueError, match="client_id"):
        ResultSubscriber("mqtt://127.0.0.1:1", version="5.0", client_id="", handler=ignore)
    with pytest.raises(ValueError, match="session_expiry_s"):
        ResultSubscriber(
            "mqtt://127.0.0.1:1", version="5.0", client_id="x", handler=ignore, session_expiry_s=0
        )


async def test_a_connection_lost_while_a_batch_is_acknowledged_leaves_the_subscriber_working(
    tmp_path: Path,
) -> None:
    """The broker restarts while a batch is handled: its acks fail, later results still come."""
    with EmbeddedBroker(tmp_path / "mqtt", kind="mosquitto").start() as broker:
        inbox = Inbox()
        holding = asyncio.Event()
        release = asyncio.Event()

        async def slow(batch: Sequence[ParsedResult]) -> None:
            holding.set()
            await release.wait()  # the broker restarts meanwhile: this batch's acks fail
            await inbox.handler(batch)

        subscriber = ResultSubscriber(
            broker.url, version="5.0", client_id="test-results-restart", handler=slow
        )
        await subscriber.start()
        try:
            topic = result_topic(device(), "download_firmware")
            await publish(broker, [(topic, body("before"), 1)])
            async with asyncio.timeout(WAIT_S):
                await holding.wait()
            await asyncio.to_thread(broker.restart)
            release.set()

            async def after_reconnect() -> None:  # the subscription is back within a second
                while "after" not in inbox.command_ids():
                    await publish(broker, [(topic, body("after"), 1)])
                    with contextlib.suppress(TimeoutError):
                        await inbox.wait_for(len(inbox.items) + 1, timeout_s=0.5)

            async with asyncio.timeout(WAIT_S):
                await after_reconnect()
        finally:
            await subscriber.stop()
        assert inbox.command_ids()[0] == "before"
        assert "after" in inbox.command_ids()
