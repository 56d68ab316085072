"""One simulated device: its own MQTT connection, the commands it obeys, the results it sends.

A device connects as itself (client id and user name = device id, password = device token),
subscribes to `{device_id}/control/#` with QoS 2 and handles its commands one at a time, as
a small device would. Each command is answered on `{device_id}/control/{command}/result`
(QoS 1) with the command's `command_id` (ARCHITECTURE §5):

- download_firmware / download_logo: received, downloading, (download, check size and
  sha256), installing, success with the payload's version; or failed with the reason.
- any other command: received, success.
- after a firmware success, when the command carries `health` (a soak, ARCHITECTURE §6b):
  a health report (`healthy`, with the running version) every half heartbeat until the soak
  has passed, from a task of its own so the device goes on obeying commands meanwhile. Seeded
  draws make some devices report their old version instead (`revert_rate`) or none at all
  (`die_after_success_rate`).

A device whose login the broker refuses (one made before the broker kept per-device accounts:
the service stores only digests of tokens, so it could not give the broker its password) asks
for a new token once, through `renew_token`, and logs in with it.

A command_id handled already is not obeyed again: the device publishes its last result for it
again, so an engine that never heard it can ask for it by re-sending the command. A message
that is not a usable command is logged,
counted as malformed and ignored; nothing a broker delivers can stop the device.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import ssl
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import aiomqtt
import httpx
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.domain.commands import FILE_COMMANDS
from orchestrator.simulator.behaviour import Behaviour, Stall, device_random
from orchestrator.simulator.book import DeviceIdentity
from orchestrator.simulator.download import download
from orchestrator.simulator.mqtt_client import Client
from orchestrator.simulator.stats import FleetStats
from orchestrator.transport.results import ResultPayload, ResultStatus
from orchestrator.transport.topics import command_topic, result_topic

log = structlog.get_logger(__name__)

KEEPALIVE_S = 60
MQTT_TIMEOUT_S = 10.0  # for CONNACK, SUBACK and PUBACK
SESSION_EXPIRY_S = 300  # MQTT 5: commands sent during a short outage wait this long for us
RECONNECT_S = (0.5, 30.0)  # first and largest pause before connecting again
SEEN_COMMANDS = 1024  # command ids (and their last results) remembered per device
_PAYLOAD_EXCERPT_BYTES = 200  # of an ignored message, in its log line
# CONNACK codes of a refused login: 3.1.1 "bad user name or password" and "not authorised",
# MQTT 5 the same two (paho reports 3.1.1 refusals with the MQTT 5 codes).
_LOGIN_REFUSED = frozenset({4, 5, 0x86, 0x87})

RenewToken = Callable[[str], Awaitable[str | None]]  # device id → a new token, or None


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where the devices connect, and how."""

    host: str
    port: int
    version: Literal["5.0", "3.1.1"] = "5.0"
    tls: bool = False


class _Command(BaseModel):
    """Every command payload: a JSON object with a command_id; the rest is the command's."""

    model_config = ConfigDict(extra="allow", strict=True)

    command_id: str = Field(min_length=1, max_length=256)


class _Health(BaseModel):
    """The health soak a firmware command announces: how long, and how often to report."""

    model_config = ConfigDict(extra="ignore")

    soak_s: float = Field(gt=0)
    heartbeat_s: float = Field(gt=0)


class _FileCommand(BaseModel):
    """The fields of download_firmware / download_logo a device needs (§5)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    url: str = Field(min_length=1)
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    file_name: str = ""
    version: str | None = None
    health: _Health | None = None


class _Fate(NamedTuple):
    """The draws one command gets, all taken up front so every command uses the same number."""

    reject: float
    broken_download: float
    fail: float
    wrong_version: float
    stall: float


class SimulatedDevice:
    """A device of the fleet; `run()` keeps it connected and obeying until cancelled."""

    def __init__(
        self,
        identity: DeviceIdentity,
        *,
        broker: BrokerAddress,
        behaviour: Behaviour,
        http: httpx.AsyncClient,
        stats: FleetStats,
        renew_token: RenewToken | None = None,
    ) -> None:
        self.identity = identity
        self.id = identity.id
        self.version = identity.version  # the firmware installed last
        self.connected = False
        self.first_attempt = asyncio.Event()  # set once the first connection succeeded or failed
        self.last_error = ""  # why the last connection attempt failed or ended
        self._broker = broker
        self._behaviour = behaviour
        self._http = http
        self._stats = stats
        self._renew_token = renew_token
        self.renewed = False  # its token was rotated after the broker refused its login
        self._rng = device_random(behaviour.seed, identity.id)
        self._latency_rng = device_random(behaviour.seed, identity.id, "latency")
        # Draws of its own, so a soak changes none of the draws the install makes.
        self._health_rng = device_random(behaviour.seed, identity.id, "health")
        self._client_now: aiomqtt.Client | None = None  # while connected
        self._soaks: set[asyncio.Task[None]] = set()  # health reports under way
        self.offline = self._rng.random() < behaviour.offline_rate  # first draw, always taken
        # command id → (command, the last result published about it; None before the first)
        self._seen: OrderedDict[str, tuple[str, ResultPayload | None]] = OrderedDict()
        # Results that could not go out (the connection was lost): sent first on reconnect, as
        # firmware keeps working while the broker is away and reports once it is back.
        self._outbox: list[tuple[str, ResultPayload]] = []
        self._next_stall: Stall | None = None  # set by stall_next_download

    def stall_next_download(self, stall: Stall) -> None:
        """Make this device's next download stall once as `stall` says, whatever the rates."""
        self._next_stall = stall

    async def run(self) -> None:
        """Connect, obey commands, and connect again after a loss, until cancelled."""
        try:
            await self._run()
        finally:
            for task in self._soaks:
                task.cancel()

    async def _run(self) -> None:
        client = self._client()
        pause_s = RECONNECT_S[0]
        while True:
            up = False
            try:
                async with client:
                    await self._subscribe(client)
                    await self._flush_outbox(client)
                    up = True
                    self._online(True)
                    self._client_now = client
                    pause_s = RECONNECT_S[0]
                    try:
                        async for message in client.messages:
                            await self._on_message(client, message)
                    finally:
                        self._client_now = None
                        self._online(False)
            except aiomqtt.MqttError as exc:
                self.last_error = str(exc) or exc.__class__.__name__
                if not up and _login_refused(exc) and await self._renew():
                    client = self._client()
                    continue  # at once, with the new token
            except Exception as exc:  # never let one device's trouble end it
                self.last_error = f"{exc.__class__.__name__}: {exc}"
                log.exception("simulated device failed; connecting again", device_id=self.id)
            if up:
                log.info("simulated device disconnected", device_id=self.id, error=self.last_error)
            else:
                self._stats.connect_failures += 1
                log.warning(
                    "simulated device could not connect",
                    device_id=self.id,
                    error=self.last_error,
                    retry_in_s=round(pause_s, 1),
                )
            self.first_attempt.set()
            await asyncio.sleep(pause_s * (0.5 + self._latency_rng.random()))  # jittered
            pause_s = min(pause_s * 2, RECONNECT_S[1])

    async def _renew(self) -> bool:
        """Once per run, a new token for a refused login; True when the device got one."""
        if self.renewed or self._renew_token is None:
            return False
        self.renewed = True
        token = await self._renew_token(self.id)
        if token is None:
            return False
        self.identity = dataclasses.replace(self.identity, token=token)
        return True

    def _client(self) -> aiomqtt.Client:
        v5 = self._broker.version == "5.0"
        properties = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = SESSION_EXPIRY_S
        return Client(
            self._broker.host,
            self._broker.port,
            identifier=self.id,
            username=self.id,
            password=self.identity.token,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            # 3.1.1 has no session expiry: a persistent session would outlive the fleet forever.
            clean_session=None if v5 else True,
            properties=properties,
            keepalive=KEEPALIVE_S,
            timeout=MQTT_TIMEOUT_S,
            tls_context=ssl.create_default_context() if self._broker.tls else None,
        )

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        topic = command_topic(self.id, "#")
        if self._broker.version == "5.0":
            # No-local: the device does not get its own results back (3.1.1 filters them out).
            options = SubscribeOptions(qos=2, noLocal=True)
            granted = await client.subscribe(topic, options=options)
        else:
            granted = await client.subscribe(topic, qos=2)
        codes = [int(c.value) if isinstance(c, ReasonCode) else int(c) for c in granted]
        if any(code >= 0x80 for code in codes):
            raise aiomqtt.MqttError(
                f"the broker refused the subscription to {topic} (reason code {codes[0]}); "
                "check the broker's ACL for this device"
            )

    def _online(self, up: bool) -> None:
        self.connected = up
        self._stats.connected += 1 if up else -1
        if up:
            self._stats.connects += 1
            self.first_attempt.set()

    async def _on_message(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        levels = message.topic.value.split("/")
        if len(levels) != 3 or levels[0] != self.id or levels[1] != "control":
            return  # a result of ours (echoed by a 3.1.1 broker), not a command
        command = levels[2]
        with structlog.contextvars.bound_contextvars(device_id=self.id, command=command):
            body = _parse_command(message.payload)
            if body is None:
                self._stats.malformed += 1
                log.warning(
                    "message ignored: not a JSON object with a command_id",
                    topic=message.topic.value,
                    payload=_excerpt(message.payload),
                )
                return
            command_id: str = body["command_id"]
            if command_id in self._seen:
                self._stats.duplicates += 1
                _, last = self._seen[command_id]
                log.info(
                    "duplicate command: last result published again",
                    command_id=command_id,
                    status=last.status if last else None,
                )
                if last is not None:
                    await self._publish_result(client, command, last)
                return
            self._seen[command_id] = (command, None)
            if len(self._seen) > SEEN_COMMANDS:
                self._seen.popitem(last=False)
            self._stats.commands += 1
            with structlog.contextvars.bound_contextvars(command_id=command_id):
                try:
                    await self._obey(client, command, command_id, body)
                except aiomqtt.MqttError:
                    raise  # the connection is gone: reconnect
                except Exception:
                    log.exception("command handling failed; the device carries on")

    async def _obey(
        self, client: aiomqtt.Client, command: str, command_id: str, body: dict[str, Any]
    ) -> None:
        fate = _Fate(*(self._rng.random() for _ in _Fate._fields))
        await self._report(client, command, command_id, "received")
        if fate.reject < self._behaviour.reject_rate:
            await self._report(
                client, command, command_id, "rejected", error="the device rejected the command"
            )
            return
        if command in FILE_COMMANDS:
            await self._install(client, command, command_id, body, fate)
        else:
            await self._report(client, command, command_id, "success")

    async def _install(
        self,
        client: aiomqtt.Client,
        command: str,
        command_id: str,
        body: dict[str, Any],
        fate: _Fate,
    ) -> None:
        try:
            file = _FileCommand.model_validate(body)
        except ValidationError as exc:
            self._stats.malformed += 1
            problem = exc.errors()[0]
            where = ".".join(str(part) for part in problem["loc"])
            log.warning("unusable file command", field=where, problem=problem["msg"])
            await self._report(
                client,
                command,
                command_id,
                "failed",
                error=f"the {command} payload is unusable: {where}: {problem['msg']}",
            )
            return
        await self._report(client, command, command_id, "downloading")
        self._stats.downloads += 1
        broken = fate.broken_download < self._behaviour.broken_download_rate and file.size >= 2
        stall, self._next_stall = self._next_stall, None
        if stall is None and fate.stall < self._behaviour.stall_rate:
            stall = self._behaviour.stall
        got = await download(
            self._http,
            file.url,
            self.identity.token,
            size=file.size,
            break_at=file.size // 2 if broken else None,
            stall=stall,
            on_bytes=self._count_bytes,
        )
        self._stats.resumed_downloads += got.resumes
        self._stats.stalled_downloads += int(got.stalled)
        error = got.error
        if not error and got.size != file.size:
            self._stats.size_mismatches += 1
            error = f"size mismatch: downloaded {got.size} bytes, the command said {file.size}"
        elif not error and got.sha256 != file.sha256.lower():
            self._stats.checksum_failures += 1
            error = f"sha256 mismatch: downloaded {got.sha256}, the command said {file.sha256}"
        if error:
            log.info("download failed", error=error)
            await self._report(client, command, command_id, "failed", error=error)
            return
        await self._report(client, command, command_id, "installing")
        version = file.version
        firmware = command == "download_firmware"
        if firmware and fate.fail < self._behaviour.install_fail_rate(version):
            what = version or file.file_name or "the firmware"
            await self._report(
                client, command, command_id, "failed", error=f"installing {what} failed"
            )
            return
        if firmware and fate.wrong_version < self._behaviour.wrong_version_rate:
            version = f"{version}-unexpected" if version else "unexpected"
        old_version = self.version
        if firmware and version:
            self.version = version
        await self._report(client, command, command_id, "success", version=version)
        if firmware and file.health is not None:
            self._start_soak(command, command_id, file.health, version, old_version)

    def _start_soak(
        self,
        command: str,
        command_id: str,
        health: _Health,
        version: str | None,
        old_version: str | None,
    ) -> None:
        """Report health through the soak, in the background (the device obeys on meanwhile)."""
        dies, reverts = self._health_rng.random(), self._health_rng.random()
        if dies < self._behaviour.die_after_success_rate:
            log.info("device goes silent after its success", command_id=command_id)
            return
        if reverts < self._behaviour.revert_rate:
            # The bootloader went back to the old slot: the device runs, and says, the old image.
            version = old_version or f"{version or 'firmware'}-previous"
            self.version = version
        task = asyncio.create_task(self._soak(command, command_id, health, version))
        self._soaks.add(task)
        task.add_done_callback(self._soaks.discard)

    async def _soak(
        self, command: str, command_id: str, health: _Health, version: str | None
    ) -> None:
        loop = asyncio.get_running_loop()
        every_s = health.heartbeat_s / 2  # room for a lost report or a slow link
        ends = loop.time() + health.soak_s
        while loop.time() < ends:
            await asyncio.sleep(min(every_s, max(0.0, ends - loop.time())))
            result = ResultPayload(command_id=command_id, status="healthy", version=version)
            if command_id in self._seen:
                self._seen[command_id] = (command, result)
            client = self._client_now
            if client is None:
                self._outbox.append((command, result))  # sent on reconnect
                continue
            try:
                await self._publish_result(client, command, result)
            except Exception:  # never let a report end the soak
                log.exception("health report failed", command_id=command_id)

    def _count_bytes(self, count: int) -> None:
        self._stats.bytes_downloaded += count

    async def _report(
        self,
        client: aiomqtt.Client,
        command: str,
        command_id: str,
        status: ResultStatus,
        *,
        version: str | None = None,
        error: str | None = None,
    ) -> None:
        low, high = self._behaviour.latency_s
        if high > 0:
            await asyncio.sleep(self._latency_rng.uniform(low, high))  # the device's slowness
        result = ResultPayload(command_id=command_id, status=status, version=version, error=error)
        if command_id in self._seen:
            self._seen[command_id] = (command, result)
        await self._publish_result(client, command, result)

    async def _publish_result(
        self, client: aiomqtt.Client, command: str, result: ResultPayload
    ) -> None:
        """Publish at QoS 1; while the connection is lost, keep it for the reconnection."""
        if self._outbox:
            self._outbox.append((command, result))  # after those waiting, in order
            return
        try:
            await client.publish(
                result_topic(self.id, command), result.model_dump_json(exclude_none=True), qos=1
            )
        except aiomqtt.MqttError:
            self._outbox.append((command, result))
            return
        self._stats.results[result.status] += 1

    async def _flush_outbox(self, client: aiomqtt.Client) -> None:
        waiting, self._outbox = self._outbox, []
        for command, result in waiting:
            await self._publish_result(client, command, result)


def _login_refused(exc: aiomqtt.MqttError) -> bool:
    """True when the broker answered the CONNECT with "not authorised" or a bad password."""
    if not isinstance(exc, aiomqtt.MqttCodeError):
        return False
    code = exc.rc.value if isinstance(exc.rc, ReasonCode) else exc.rc
    return code in _LOGIN_REFUSED


def _parse_command(payload: object) -> dict[str, Any] | None:
    """The JSON object in `payload` when it has a usable command_id, else None."""
    if not isinstance(payload, bytes | bytearray | str):
        return None
    try:
        body = json.loads(payload)
        _Command.model_validate(body)
    except ValueError:  # bad JSON, bad UTF-8, or pydantic's ValidationError
        return None
    return body if isinstance(body, dict) else None


def _excerpt(payload: object) -> str:
    if isinstance(payload, bytes | bytearray):
        return payload[:_PAYLOAD_EXCERPT_BYTES].decode("utf-8", "replace")
    return repr(payload)[:_PAYLOAD_EXCERPT_BYTES]
