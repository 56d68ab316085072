"""The simulated fleet: devices registered (or reused) through the API, connected in batches.

`Fleet.start(n)` takes `n` devices from the device book (those the service still knows and
that carry the wanted tags), creates the missing ones through the API, writes the book, then
connects the online devices `connect_batch` at a time. A device whose broker login is refused
has its token rotated through the API once (a device made before the service kept the broker's
accounts has none there until then). `Fleet.stop()` disconnects them and writes the book
again, with the devices' tokens and the firmware versions they installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import resource
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Self

import httpx
import structlog

from orchestrator.client import ApiClient
from orchestrator.errors import OrchestratorError, TransportUnavailable
from orchestrator.simulator.behaviour import Behaviour
from orchestrator.simulator.book import DeviceBook, DeviceIdentity
from orchestrator.simulator.device import BrokerAddress, SimulatedDevice
from orchestrator.simulator.download import device_http
from orchestrator.simulator.stats import FleetStats

log = structlog.get_logger(__name__)

CONNECT_BATCH = 100  # devices connecting at once; each batch waits for its first attempts
CONNECT_WAIT_S = 15.0  # longest wait for one batch's first attempts
CREATE_CONCURRENCY = 16  # device-creation requests in flight
SAVE_EVERY = 200  # created devices between two writes of the book, so Ctrl-C loses none
MAX_DOWNLOADS = 64  # HTTP connections the fleet downloads over at once; more devices wait
DOWNLOAD_TIMEOUT_S = 60.0  # connect, read and write timeouts of one download request
STOP_TIMEOUT_S = 15.0  # longest wait for the devices to disconnect
_SPARE_FILES = 64  # file descriptors besides the device sockets (logs, HTTP, the process)


class Fleet:
    """Simulated devices of the API client's project; `start`, read `stats`, `stop`."""

    def __init__(
        self,
        api: ApiClient,
        mqtt_host: str,
        mqtt_port: int,
        behaviour: Behaviour | None = None,
        *,
        state_path: Path | None = None,
        mqtt_version: Literal["5.0", "3.1.1"] = "5.0",
        mqtt_tls: bool = False,
        connect_batch: int = CONNECT_BATCH,
        max_downloads: int = MAX_DOWNLOADS,
        name_prefix: str = "sim",
    ) -> None:
        if connect_batch < 1 or max_downloads < 1:
            raise ValueError(
                f"connect_batch and max_downloads must be at least 1, got {connect_batch} "
                f"and {max_downloads}"
            )
        self.api = api
        self.broker = BrokerAddress(mqtt_host, mqtt_port, mqtt_version, mqtt_tls)
        self.behaviour = behaviour or Behaviour()
        self.book = DeviceBook(state_path) if state_path is not None else None
        self._connect_batch = connect_batch
        self._max_downloads = max_downloads
        self._name_prefix = name_prefix
        self._stats = FleetStats()
        self._devices: list[SimulatedDevice] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._http: httpx.AsyncClient | None = None
        self._booked: list[DeviceIdentity] = []  # every device of the project in the book
        self._started = False
        self._renewing = asyncio.Semaphore(CREATE_CONCURRENCY)  # token rotations in flight

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def stats(self) -> FleetStats:
        """A snapshot of the fleet's counters."""
        return self._stats.copy()

    @property
    def devices(self) -> tuple[SimulatedDevice, ...]:
        """The devices of this run, offline ones included."""
        return tuple(self._devices)

    async def start(self, n_devices: int, *, tags: Sequence[str] = ()) -> None:
        """Register or reuse `n_devices` devices carrying `tags`, and connect the online ones.

        Returns once every online device has made its first connection attempt (those that
        failed keep trying in the background). TransportUnavailable when none could connect.
        """
        if self._started:
            raise RuntimeError("this fleet was started already; make a new Fleet for a new run")
        if n_devices < 0:
            raise ValueError(f"n_devices must be 0 or more, got {n_devices}")
        self._started = True
        identities = await self._provision(n_devices, tuple(tags))
        self._http = device_http(DOWNLOAD_TIMEOUT_S, self._max_downloads)
        self._devices = [
            SimulatedDevice(
                identity,
                broker=self.broker,
                behaviour=self.behaviour,
                http=self._http,
                stats=self._stats,
                renew_token=self._renew_token,
            )
            for identity in identities
        ]
        online = [device for device in self._devices if not device.offline]
        self._stats.devices = len(self._devices)
        self._stats.offline = len(self._devices) - len(online)
        _raise_open_file_limit(len(online) + self._max_downloads + _SPARE_FILES)
        for first in range(0, len(online), self._connect_batch):
            batch = online[first : first + self._connect_batch]
            for device in batch:
                self._tasks.append(asyncio.create_task(device.run(), name=f"device {device.id}"))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CONNECT_WAIT_S):
                    for device in batch:
                        await device.first_attempt.wait()
        if online and not any(device.connected for device in online):
            reason = next((d.last_error for d in online if d.last_error), "no answer")
            await self.stop()
            raise TransportUnavailable(
                f"none of the {len(online)} simulated devices could connect to the MQTT broker "
                f"at {self.broker.host}:{self.broker.port} ({reason}); is it running there? "
                "Set --mqtt-url or OTA_MQTT_URL"
            )
        waiting = sum(1 for device in online if not device.connected)
        renewed = self._stats.tokens_rotated
        if renewed and self.book is not None:
            self.book.save(self.api.project_id, self._current_book())  # the old tokens are dead
        log.info(
            "simulated fleet started",
            devices=len(self._devices),
            offline=self._stats.offline,
            still_connecting=waiting,
            tokens_rotated=renewed,
        )

    async def stop(self) -> None:
        """Disconnect every device, close the downloads, and write the book; safe to repeat."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await asyncio.gather(*tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self.book is not None and self._devices:
            self.book.save(self.api.project_id, self._current_book())

    def _current_book(self) -> list[DeviceIdentity]:
        """The book's devices with the tokens and firmware versions this run's devices have."""
        running = {device.id: device for device in self._devices}
        self._booked = [
            dataclasses.replace(d, token=device.identity.token, version=device.version)
            if (device := running.get(d.id)) is not None
            else d
            for d in self._booked
        ]
        return self._booked

    async def _renew_token(self, device_id: str) -> str | None:
        """A new token for a device the broker refused, through the API; None if refused."""
        async with self._renewing:
            try:
                token = await self.api.rotate_device_token(device_id)
            except OrchestratorError as exc:
                log.warning(
                    "the broker refused a simulated device and its token could not be rotated",
                    device_id=device_id,
                    error=exc.message,
                )
                return None
        self._stats.tokens_rotated += 1
        log.info(
            "the broker refused a simulated device's login: its token was rotated",
            device_id=device_id,
        )
        return token

    # --- devices from the book and from the API -------------------------------------------

    async def _provision(self, count: int, tags: tuple[str, ...]) -> list[DeviceIdentity]:
        project_id = self.api.project_id
        booked = self.book.load(project_id) if self.book is not None and project_id else []
        if booked:
            booked = await self._still_registered(booked)
        self._booked = booked
        reused = [device for device in booked if device.has_tags(tags)][:count]
        created: list[DeviceIdentity] = []
        try:
            await self._create(count - len(reused), tags, created)
        finally:
            self._booked = booked + created
            if self.book is not None and self.api.project_id:
                self.book.save(self.api.project_id, self._booked)
        if reused or created:
            log.info("simulated devices ready", reused=len(reused), created=len(created))
        return reused + created

    async def _still_registered(self, booked: list[DeviceIdentity]) -> list[DeviceIdentity]:
        """The booked devices the service still has, with the tags and names it has for them."""
        registered = {device.id: device async for device in self.api.devices()}
        kept = []
        for identity in booked:
            current = registered.get(identity.id)
            if current is not None:
                tags = tuple(current.tags)
                kept.append(dataclasses.replace(identity, name=current.name, tags=tags))
        if len(kept) < len(booked):
            log.info(
                "devices deleted from the service left the book", count=len(booked) - len(kept)
            )
        return kept

    async def _create(
        self, count: int, tags: tuple[str, ...], created: list[DeviceIdentity]
    ) -> None:
        """Create `count` mqtt devices, appending each to `created` as soon as it exists."""
        numbers = iter(range(len(self._booked) + 1, len(self._booked) + count + 1))
        failures: list[Exception] = []

        async def worker() -> None:
            for number in numbers:  # one iterator shared by the workers: each number once
                if failures:
                    return
                try:
                    data = await self.api.create_device(
                        name=f"{self._name_prefix}-{number:05d}",
                        description="simulated device (ota simulate)",
                        source="mqtt",
                        tags=list(tags),
                    )
                except Exception as exc:  # the first error ends the creation; it is raised below
                    failures.append(exc)
                    return
                created.append(
                    DeviceIdentity(
                        id=data.id,
                        token=data.metadata.device_token or "",
                        name=data.name,
                        tags=tuple(data.tags),
                    )
                )
                if self.book is not None and len(created) % SAVE_EVERY == 0:
                    self.book.save(self.api.project_id, self._booked + created)

        await asyncio.gather(*(worker() for _ in range(min(count, CREATE_CONCURRENCY))))
        if failures:
            raise failures[0]


def _raise_open_file_limit(needed: int) -> None:
    """Lift the soft limit on open files towards `needed` (one socket per device)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        log.warning(
            "too few file descriptors for every device; raise the hard limit (ulimit -Hn)",
            needed=needed,
            limit=target,
        )
