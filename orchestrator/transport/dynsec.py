"""Mosquitto's dynamic-security plugin kept in step with the devices (`OTA_MQTT_PROVISION=dynsec`).

The plugin takes JSON command batches on `$CONTROL/dynamic-security/v1` and answers each batch
with one message on `$CONTROL/dynamic-security/v1/response`, one entry per command, carrying
back the command's `correlationData`. `DynsecClient` sends batches and matches the answers;
`DeviceProvisioner` says what a device is in the plugin:

- a client whose user name is the device id, whose password is the device token, and whose
  client id is the device id: the plugin refuses that login under any other client id, so a
  device cannot take over another device's session nor the engine's (`{instance}-results`);
- a role `ota-device-{id}` (Mosquitto 2.0 has no `%u` substitution, so one role per device)
  that lets it subscribe only to `{id}/control/#` and its data topic `{id}`
  (`subscribePattern`), receive only from those (`publishClientReceive`, everything else
  denied), and publish only to `{id}/control/+/result` and `{id}` (`publishClientSend`; the
  plugin denies any other publish by default).

The plugin disconnects every connection of a user name whose client is deleted or whose
password is set, so a deleted device is cut off and a rotated token takes effect at once.

Failure handling: a device API call that would leave the broker out of step fails with 503
and a message naming the broker, and changes nothing (a new device is removed again; a delete
or a token rotation is not done), so the caller can simply retry. Nothing is queued for later:
the service would otherwise answer 201 for a device that cannot connect. At start the service
reconciles: every mqtt device in Redis gets its role and client if they are missing, clients
not yet tied to their device id are tied, and roles of an earlier version get today's ACLs.
Tokens are stored only as digests, so a client created this way has no password; that device
connects once its token is rotated (`POST …/devices/{id}/token`), and the start logs which
devices wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog
import zmqtt
from faststream.mqtt.utils import parse_mqtt_url

from orchestrator.errors import OrchestratorError, TransportUnavailable
from orchestrator.supervisor import spawn
from orchestrator.transport.clients import lasting_client
from orchestrator.transport.topics import command_topic, data_topic, result_topic

log = structlog.get_logger(__name__)

# The plugin's own API (mosquitto.org/documentation/dynamic-security), not product topics.
CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = "$CONTROL/dynamic-security/v1/response"

COMMAND_TIMEOUT_S = 10.0  # for the plugin's answer to one batch
MAX_BATCH = 100  # commands per message
RECONCILE_RETRY_S = (2.0, 60.0)  # first and longest pause between reconciliation attempts
DEVICE_ROLE_PREFIX = "ota-device-"

Command = dict[str, Any]


class DynsecRefused(TransportUnavailable):
    """The plugin answered a command with an error ("Client not found", "Role not found"…)."""

    def __init__(self, command: Command, error: str) -> None:
        name = command.get("command", "?")
        target = command.get("username") or command.get("rolename") or ""
        super().__init__(
            f"the broker's dynamic-security plugin refused {name} {target}: {error}; "
            "check the plugin's clients and roles (mosquitto_ctrl dynsec getClient/getRole)"
        )
        self.command = name
        self.error = error


@dataclass(frozen=True)
class DynsecReply:
    """The plugin's answer to one command: `error` is None on success."""

    command: str
    error: str | None
    data: dict[str, Any] = field(default_factory=dict)


class DynsecClient:
    """Sends command batches to the plugin over its own MQTT connection and awaits the replies.

    The connection is made in the background and kept up (zmqtt reconnects and subscribes
    again); while it is down, `execute` fails with TransportUnavailable at once.
    """

    def __init__(
        self,
        url: str,
        *,
        version: Literal["5.0", "3.1.1"] = "5.0",
        client_id: str = "",
        timeout_s: float = COMMAND_TIMEOUT_S,
    ) -> None:
        address = parse_mqtt_url(url)
        self.username = address.username or ""
        self._redacted_url = f"mqtt://{self.username}@{address.host}:{address.port}"
        self._timeout_s = timeout_s
        self._client = lasting_client(url, client_id=client_id, version=version)
        self._pending: dict[str, asyncio.Future[DynsecReply]] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()  # set while subscribed to the replies
        self._failure = ""  # why the connection was given up, for error messages

    async def start(self) -> None:
        """Begin connecting; returns at once (see `wait_ready`)."""
        # _run ends (logged) when the broker refuses for good; anything else is logged by spawn.
        self._task = spawn(self._run, name="dynsec-client", restart=False)

    async def wait_ready(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` until the replies are subscribed; True when they are."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._ready.wait()
        return self.ready

    @property
    def ready(self) -> bool:
        """True while commands can be sent and answered."""
        try:
            self._client.connection_info  # noqa: B018 - raises when disconnected
        except zmqtt.MQTTError:
            return False
        return self._ready.is_set()

    async def stop(self) -> None:
        """Disconnect; commands still waiting fail."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._ready.clear()
        with contextlib.suppress(zmqtt.MQTTError, OSError):
            await self._client.disconnect()
        for future in self._pending.values():
            if not future.done():
                future.cancel()

    async def _run(self) -> None:
        try:
            await self._client.connect()  # retries while the broker is unreachable
            subscription = self._client.subscribe(RESPONSE_TOPIC, qos=zmqtt.QoS.AT_LEAST_ONCE)
            await subscription.start()
        except zmqtt.MQTTError as exc:  # refused for good: bad credentials, ACL
            self._failure = str(exc) or type(exc).__name__
            log.error(
                "dynamic-security client could not connect",
                url=self._redacted_url,
                error=self._failure,
            )
            return
        self._ready.set()
        log.info("dynamic-security client connected", url=self._redacted_url)
        try:
            async for message in subscription:
                self._dispatch(message.payload)
        except zmqtt.MQTTError as exc:  # the connection could not be restored
            self._failure = str(exc) or type(exc).__name__
            log.error("dynamic-security client lost the broker", error=self._failure)
        finally:
            self._ready.clear()

    def _dispatch(self, payload: bytes) -> None:
        """Hand each reply of a response message to the command waiting for it."""
        try:
            body = json.loads(payload)
            replies = body["responses"] if isinstance(body, dict) else []
        except (ValueError, KeyError):
            log.warning("dynamic-security reply is not JSON", excerpt=payload[:200])
            return
        for reply in replies if isinstance(replies, list) else []:
            if not isinstance(reply, dict):
                continue
            future = self._pending.get(str(reply.get("correlationData", "")))
            if future is None or future.done():
                continue  # another replica's command, or one we gave up on
            error = reply.get("error")
            data = reply.get("data")
            future.set_result(
                DynsecReply(
                    command=str(reply.get("command", "")),
                    error=str(error) if error is not None else None,
                    data=data if isinstance(data, dict) else {},
                )
            )

    async def execute(self, commands: Sequence[Command]) -> list[DynsecReply]:
        """Send `commands` (in batches of MAX_BATCH) and return the replies in the same order.

        Raises TransportUnavailable when the broker is not connected, refuses the publish,
        or the plugin does not answer within the timeout. A command the plugin refuses is
        not an exception here: its reply carries the error.
        """
        replies: list[DynsecReply] = []
        for start in range(0, len(commands), MAX_BATCH):
            replies += await self._execute_batch(commands[start : start + MAX_BATCH])
        return replies

    async def _execute_batch(self, commands: Sequence[Command]) -> list[DynsecReply]:
        if not self.ready:
            why = f" ({self._failure})" if self._failure else ""
            raise TransportUnavailable(
                f"the MQTT broker at {self._redacted_url} is not connected for dynamic "
                f"security{why}; check OTA_MQTT_URL and that the broker is running, then retry"
            )
        loop = asyncio.get_running_loop()
        batch = uuid.uuid4().hex
        ids = [f"{batch}:{index}" for index in range(len(commands))]
        futures = [loop.create_future() for _ in commands]
        self._pending.update(zip(ids, futures, strict=True))
        body = {
            "commands": [
                {**command, "correlationData": correlation}
                for command, correlation in zip(commands, ids, strict=True)
            ]
        }
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._client.publish(
                    CONTROL_TOPIC,
                    json.dumps(body, separators=(",", ":")),
                    qos=zmqtt.QoS.AT_LEAST_ONCE,
                )
                return list(await asyncio.gather(*futures))
        except TimeoutError as exc:
            raise TransportUnavailable(
                f"the broker's dynamic-security plugin did not answer within "
                f"{self._timeout_s} s; check that mosquitto loads mosquitto_dynamic_security.so "
                f"and that {self.username!r} (OTA_MQTT_URL) has its admin role, then retry"
            ) from exc
        except (zmqtt.MQTTError, OSError) as exc:
            raise TransportUnavailable(
                f"the MQTT broker did not take the dynamic-security command "
                f"({exc or type(exc).__name__}); retry when the broker is reachable"
            ) from exc
        finally:
            for correlation, future in zip(ids, futures, strict=True):
                self._pending.pop(correlation, None)
                future.cancel()


def device_role(device_id: str) -> str:
    """The plugin role holding one device's ACLs."""
    return f"{DEVICE_ROLE_PREFIX}{device_id}"


def device_acls(device_id: str) -> list[Command]:
    """One device's ACLs: its own commands in, its own results out, its data topic both ways.

    Higher priority is checked first: the `#` receive deny catches anything not its own.
    """
    commands = command_topic(device_id, "#")
    data = data_topic(device_id)

    def acl(acltype: str, topic: str, *, priority: int = 1, allow: bool = True) -> Command:
        return {"acltype": acltype, "topic": topic, "priority": priority, "allow": allow}

    return [
        acl("subscribePattern", commands),
        acl("subscribePattern", data),
        acl("publishClientReceive", commands),
        acl("publishClientReceive", data),
        acl("publishClientReceive", "#", priority=0, allow=False),
        acl("publishClientSend", result_topic(device_id, "+")),
        acl("publishClientSend", data),
    ]


def _acl_set(acls: object) -> frozenset[tuple[str, str, int, bool]]:
    """ACLs as the plugin lists them, comparable whatever their order."""
    if not isinstance(acls, list):
        return frozenset()
    return frozenset(
        (str(a.get("acltype")), str(a.get("topic")), int(a.get("priority", 0)), bool(a["allow"]))
        for a in acls
        if isinstance(a, dict) and "allow" in a
    )


def _create_role(device_id: str) -> Command:
    return {
        "command": "createRole",
        "rolename": device_role(device_id),
        "textdescription": "OTA device: its own commands, results and data",
        "acls": device_acls(device_id),
    }


def _create_client(device_id: str, token: str | None) -> Command:
    command: Command = {
        "command": "createClient",
        "username": device_id,
        "clientid": device_id,  # the login is refused under any other client id
        "textname": "OTA device",
        "roles": [{"rolename": device_role(device_id)}],
    }
    if token is not None:
        command["password"] = token
    return command


def _check(commands: Sequence[Command], replies: Sequence[DynsecReply], *tolerated: str) -> None:
    """Raise DynsecRefused for the first reply with an error not in `tolerated`."""
    for command, reply in zip(commands, replies, strict=True):
        if reply.error is not None and reply.error not in tolerated:
            raise DynsecRefused(command, reply.error)


@dataclass(frozen=True)
class Reconciliation:
    """What a start-up reconciliation did."""

    devices: int  # mqtt devices in Redis
    created: list[str]  # device clients created, without a password
    bound: list[str] = field(default_factory=list)  # clients tied to their device id now
    updated_roles: int = 0  # device roles given this version's ACLs


class DeviceProvisioner:
    """Keeps one plugin client and role per mqtt device."""

    def __init__(self, client: DynsecClient) -> None:
        self.client = client

    async def start(self) -> None:
        """Connect in the background."""
        await self.client.start()

    async def stop(self) -> None:
        """Disconnect."""
        await self.client.stop()

    async def provision(self, device_id: str, token: str) -> None:
        """Make the device's role and client (its password the token); idempotent."""
        commands = [_create_role(device_id), _create_client(device_id, token)]
        replies = await self.client.execute(commands)
        _check(commands[:1], replies[:1], "Role already exists")
        if replies[1].error == "Client already exists":  # left over: take it over
            commands = [
                {
                    "command": "modifyClient",
                    "username": device_id,
                    "clientid": device_id,
                    "password": token,
                    "roles": [{"rolename": device_role(device_id)}],
                }
            ]
            _check(commands, await self.client.execute(commands))
        else:
            _check(commands[1:], replies[1:])
        log.info("device provisioned on the broker", device_id=device_id)

    async def deprovision(self, *device_ids: str) -> None:
        """Delete the devices' clients (the plugin disconnects them) and roles; idempotent."""
        commands: list[Command] = []
        for device_id in device_ids:
            commands += [
                {"command": "deleteClient", "username": device_id},
                {"command": "deleteRole", "rolename": device_role(device_id)},
            ]
        replies = await self.client.execute(commands)
        _check(commands, replies, "Client not found", "Role not found")
        for device_id in device_ids:
            log.info("device removed from the broker", device_id=device_id)

    async def set_password(self, device_id: str, token: str) -> None:
        """Give the device a new password; the plugin disconnects it, so it must log in again."""
        commands: list[Command] = [
            {"command": "setClientPassword", "username": device_id, "password": token}
        ]
        replies = await self.client.execute(commands)
        if replies[0].error == "Client not found":  # made before provisioning was turned on
            await self.provision(device_id, token)
            return
        _check(commands, replies)
        log.info("device password set on the broker", device_id=device_id)

    async def _listing(self, command: str, key: str) -> list[dict[str, Any]]:
        """Every client or role the plugin has, with its details (`verbose`)."""
        request: Command = {"command": command, "verbose": True, "count": -1, "offset": 0}
        reply = (await self.client.execute([request]))[0]
        _check([request], [reply])
        entries = reply.data.get(key, [])
        return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []

    async def reconcile(self, device_ids: Iterable[str]) -> Reconciliation:
        """Make every given device's role and client what `provision` makes (see `reconciling`).

        Passwords that exist are left alone; missing clients are created without one.
        """
        wanted = list(device_ids)
        clients = await self._listing("listClients", "clients")
        roles = await self._listing("listRoles", "roles")
        creations, repairs, result = reconciling(wanted, clients, roles)
        replies = await self.client.execute(creations)
        _check(creations, replies, "Role already exists", "Client already exists")
        _check(repairs, await self.client.execute(repairs))
        return result


def reconciling(
    wanted: Sequence[str], clients: Sequence[dict[str, Any]], roles: Sequence[dict[str, Any]]
) -> tuple[list[Command], list[Command], Reconciliation]:
    """The plugin commands that bring `wanted` devices in line, given the plugin's listings.

    First the creations: a missing role, a missing client (without a password: only digests
    of tokens are stored, so the device connects once its token is rotated). Then the repairs
    of what an earlier version or a person made: a role gets this version's ACLs, a client is
    tied to its device id and given its role. Each repair makes the plugin disconnect the
    device, which logs in again.
    """
    by_user = {str(c.get("username")): c for c in clients}
    by_role = {str(r.get("rolename")): r for r in roles}
    creations = [_create_role(d) for d in wanted if device_role(d) not in by_role]
    created = [d for d in wanted if d not in by_user]
    creations += [_create_client(d, None) for d in created]

    outdated = [
        d
        for d in wanted
        if device_role(d) in by_role
        and _acl_set(by_role[device_role(d)].get("acls")) != _acl_set(device_acls(d))
    ]
    kept = [d for d in wanted if d in by_user]
    unbound = [d for d in kept if by_user[d].get("clientid") != d]
    unlinked = [d for d in kept if device_role(d) not in _role_names(by_user[d])]
    repairs: list[Command] = [
        {"command": "modifyRole", "rolename": device_role(d), "acls": device_acls(d)}
        for d in outdated
    ]
    repairs += [{"command": "setClientId", "username": d, "clientid": d} for d in unbound]
    repairs += [
        {"command": "addClientRole", "username": d, "rolename": device_role(d)} for d in unlinked
    ]
    result = Reconciliation(
        devices=len(wanted), created=created, bound=unbound, updated_roles=len(outdated)
    )
    return creations, repairs, result


def _role_names(client: dict[str, Any]) -> set[str]:
    """The names of a listed client's roles."""
    roles = client.get("roles")
    if not isinstance(roles, list):
        return set()
    return {str(r.get("rolename")) for r in roles if isinstance(r, dict)}


async def reconcile_until_done(
    provisioner: DeviceProvisioner,
    list_device_ids: Callable[[], Awaitable[list[str]]],
    *,
    ready_timeout_s: float = 30.0,
) -> Reconciliation:
    """Reconcile, retrying with growing pauses while Redis or the broker is unavailable.

    `list_device_ids` returns every mqtt device id. Runs as a background task at start, so
    a broker that is down does not keep the API from serving.
    """
    pause_s = RECONCILE_RETRY_S[0]
    while True:
        try:
            if not await provisioner.client.wait_ready(ready_timeout_s):
                raise TransportUnavailable("the broker is not connected for dynamic security")
            result = await provisioner.reconcile(await list_device_ids())
        except OrchestratorError as exc:
            log.warning(
                "dynamic-security reconciliation failed; trying again",
                error=exc.message,
                retry_in_s=pause_s,
            )
            await asyncio.sleep(pause_s)
            pause_s = min(pause_s * 2, RECONCILE_RETRY_S[1])
            continue
        if result.created:
            log.warning(
                "devices added to the broker without a password cannot log in yet: only digests "
                "of device tokens are stored, so rotate each one's token (POST "
                "/v2/projects/{pid}/devices/{did}/token, or `ota simulate` does it for its "
                "own devices) and give the device the new one",
                devices=result.created[:100],
                count=len(result.created),
            )
        log.info(
            "dynamic security reconciled",
            devices=result.devices,
            created=len(result.created),
            tied_to_client_id=len(result.bound),
            roles_updated=result.updated_roles,
        )
        return result
