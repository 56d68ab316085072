"""A fleet of devices made of one real MQTT client and real HTTP downloads.

Each device obeys `download_firmware`: it acknowledges, downloads with its token, checks size
and sha256, then reports success (with the version it was told) or the failure it is set to.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import aiomqtt
import httpx

from tests.conftest import Service

Behaviour = Literal["succeed", "fail", "reject", "silent", "wrong_version", "ack_only"]
# After its success, under a health soak: report healthy every half heartbeat, report the old
# version (the bootloader went back), report unhealthy, or say nothing more.
Health = Literal["healthy", "revert", "unhealthy", "die"]
OLD_VERSION = "2.0.3"


@dataclass
class Device:
    """One simulated device: its id, token, what it does, and what it was told."""

    id: str
    token: str
    behaviour: Behaviour = "succeed"
    commands: list[dict[str, Any]] = field(default_factory=list)
    installed: list[str] = field(default_factory=list)  # file names it downloaded and checked
    latency_s: float = 0.0  # a slow device: its pause before each step of obeying a command
    dedupe: bool = False  # answer a command_id seen before with its last result (§5)
    lose_first_copy: bool = False  # the first copy of each command never arrives (a lost publish)
    lose_final_result: bool = False  # its first final result never reaches the broker
    lost: list[str] = field(default_factory=list)  # command ids and statuses it lost, in order
    health: Health = "healthy"


class Fleet:
    """Creates devices through the API and answers their commands."""

    def __init__(self, service: Service, mqtt_port: int) -> None:
        self.service = service
        self.port = mqtt_port
        self.devices: dict[str, Device] = {}
        self.results: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.broken_files: set[str] = set()  # images that download fine but fail to install
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._work: set[asyncio.Task[None]] = set()
        self._http = httpx.AsyncClient(timeout=30)
        self._open = asyncio.Event()  # cleared while reports are held back (hold/release)
        self._open.set()

    async def __aenter__(self) -> Fleet:
        self._client = aiomqtt.Client("127.0.0.1", self.port, identifier=None)
        await self._client.__aenter__()
        await self._client.subscribe("+/control/+", qos=2)
        self._task = asyncio.create_task(self._listen())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._work):
            task.cancel()
        await asyncio.gather(*self._work, return_exceptions=True)
        if self._client is not None:
            await self._client.__aexit__(None, None, None)
        await self._http.aclose()

    async def add(
        self, count: int, behaviour: Behaviour = "succeed", **fields: Any
    ) -> list[Device]:
        """Create `count` mqtt devices in the test project."""
        made = []
        for _ in range(count):
            data = await self.service.create_device(name="sim", **fields)
            device = Device(
                data["metadata"]["device_id"], data["metadata"]["device_token"], behaviour
            )
            self.devices[device.id] = device
            made.append(device)
        return made

    async def _listen(self) -> None:
        assert self._client is not None
        async for message in self._client.messages:
            device_id, _, command = str(message.topic).split("/", 2)
            device = self.devices.get(device_id)
            if device is None:
                continue
            payload = json.loads(message.payload)
            if device.lose_first_copy and f"command:{payload['command_id']}" not in device.lost:
                device.lost.append(f"command:{payload['command_id']}")
                continue
            seen = device.dedupe and any(
                c.get("command_id") == payload.get("command_id") for c in device.commands
            )
            device.commands.append({"command": command, **payload})
            if seen:
                # A device that drops duplicates does not obey a command twice: it publishes
                # its last result for it again (ARCHITECTURE §5).
                last = [
                    r for r in self.results[device.id] if r["command_id"] == payload["command_id"]
                ]
                if last:
                    again = self.report(device, command.split("/")[-1], last[-1])
                    task = asyncio.create_task(again)
                    self._work.add(task)
                    task.add_done_callback(self._work.discard)
                continue
            task = asyncio.create_task(self._obey(device, command.split("/")[-1], payload))
            self._work.add(task)
            task.add_done_callback(self._work.discard)

    def hold(self) -> None:
        """Devices keep receiving commands but publish no result until release()."""
        self._open.clear()

    def release(self) -> None:
        """Let the held results (and every later one) go out."""
        self._open.set()

    @property
    def busy(self) -> int:
        """How many commands the devices are still working on (0: every result is out)."""
        return len(self._work)

    async def publish_raw(self, device_id: str, command: str, payload: bytes) -> None:
        """Publish any bytes on a device's result topic (a broken or forged result)."""
        assert self._client is not None
        await self._client.publish(f"{device_id}/control/{command}/result", payload, qos=1)

    async def report(self, device: Device, command: str, payload: dict[str, Any]) -> None:
        """Publish a result as the device (waiting while the fleet is held)."""
        assert self._client is not None
        if not self._open.is_set():
            await self._open.wait()
        self.results[device.id].append(payload)
        final = payload["status"] in ("success", "failed", "rejected")
        if (
            final
            and device.lose_final_result
            and not any(entry.startswith("result:") for entry in device.lost)
        ):
            device.lost.append(f"result:{payload['status']}")
            return  # the device thinks it reported; the broker never had it
        await self._client.publish(
            f"{device.id}/control/{command}/result", json.dumps(payload), qos=1
        )

    async def _obey(self, device: Device, command: str, payload: dict[str, Any]) -> None:
        command_id = payload["command_id"]
        if device.behaviour == "silent":
            return
        await self._pause(device)
        await self.report(device, command, {"command_id": command_id, "status": "received"})
        if device.behaviour == "ack_only":
            return
        if device.behaviour == "reject":
            await self.report(device, command, {"command_id": command_id, "status": "rejected"})
            return
        await self._pause(device)
        response = await self._http.get(
            payload["url"], headers={"Authorization": f"Basic {device.token}"}
        )
        ok = (
            response.status_code == 200
            and len(response.content) == payload["size"]
            and hashlib.sha256(response.content).hexdigest() == payload["sha256"]
        )
        if not ok or device.behaviour == "fail" or payload["file_name"] in self.broken_files:
            error = "install failed" if ok else f"download failed: {response.status_code}"
            await self.report(
                device, command, {"command_id": command_id, "status": "failed", "error": error}
            )
            return
        device.installed.append(payload["file_name"])
        await self._pause(device)
        await self.report(device, command, {"command_id": command_id, "status": "installing"})
        await self._pause(device)
        version = payload.get("version")
        if device.behaviour == "wrong_version":
            version = "0.0.0-wrong"
        await self.report(
            device, command, {"command_id": command_id, "status": "success", "version": version}
        )
        contract = payload.get("health")
        if contract and command == "download_firmware":
            await self._soak(device, command, command_id, version, contract)

    async def _soak(
        self,
        device: Device,
        command: str,
        command_id: str,
        version: str | None,
        contract: dict[str, float],
    ) -> None:
        """The health contract: a report every half heartbeat until the soak has passed."""
        if device.health == "die":
            return
        loop = asyncio.get_running_loop()
        every_s = contract["heartbeat_s"] / 2
        ends = loop.time() + contract["soak_s"]
        while loop.time() < ends:
            await asyncio.sleep(every_s)  # the device's own cadence, not a test wait
            report = {"command_id": command_id, "status": "healthy", "version": version}
            if device.health == "revert":
                report["version"] = OLD_VERSION
            elif device.health == "unhealthy":
                report.update(status="unhealthy", error="watchdog reset")
            await self.report(device, command, report)
            if device.health != "healthy":
                return

    @staticmethod
    async def _pause(device: Device) -> None:
        if device.latency_s:
            await asyncio.sleep(device.latency_s)  # the device's own slowness, not a test wait
