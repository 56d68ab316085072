"""Sending a rollout's commands: first sends, re-sends to silent devices, re-publishes.

A driver hands its sender the devices to send to; the sender issues or reuses their download
keys, writes the bookkeeping, and publishes in the background so the next batch is prepared
meanwhile. What a crash or a failed publish left unsent is published again with the same
command id, and a device in flight that stays silent too long is sent its command again.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Mapping

import structlog

from orchestrator.domain.plans import Plan
from orchestrator.domain.policy import RESENDS, resend_after_s
from orchestrator.domain.states import DeviceState
from orchestrator.engine.commands import download_payload, health_contract
from orchestrator.engine.context import EngineContext
from orchestrator.errors import OrchestratorError, TransportUnavailable
from orchestrator.store.download_keys import DownloadKey
from orchestrator.store.files import StoredFile
from orchestrator.store.rollouts import RolloutRecord
from orchestrator.supervisor import spawn
from orchestrator.timeutil import iso_of_ms, isoformat_z, utc_now

log = structlog.get_logger(__name__)

COMMAND = "download_firmware"
WORKING = (DeviceState.SENT, DeviceState.DOWNLOADING, DeviceState.INSTALLING)
PUBLISHING_BATCHES = 2  # batches being published while the next one is prepared
SCAN_CHUNK = 500  # devices read at once when looking for silent ones
# A driver looks for silent devices every quarter of the silence allowed, and at most every
# second: each look reads every device in flight, so a 10-minute ack_timeout looks every 37 s.
RESEND_CHECKS_PER_SILENCE = 4
RESEND_CHECK_MIN_MS = 1000
# States whose command may not have arrived (a publish a crash cut short): sent again at once.
UNACKNOWLEDGED = frozenset({DeviceState.SENT.value, DeviceState.ROLLBACK_SENT.value})
# States in which a silent device is sent its command again (same command id).
RESENDABLE = frozenset({*(state.value for state in WORKING), DeviceState.ROLLBACK_SENT.value})


def changed_since_pinned(record: RolloutRecord, stored: StoredFile) -> str | None:
    """Why `stored` is not the file the rollout was made with, or None when it is."""
    pin = record.pins.get(stored.name)
    if pin is None or pin == (stored.sha256, stored.size):
        return None
    sha256, size = pin
    return (
        f"the firmware file {stored.name} now holds other bytes (sha256 {stored.sha256}, "
        f"{stored.size} bytes) than when the rollout was created (sha256 {sha256}, {size} "
        "bytes); upload the new image under a new name and start a new rollout"
    )


class CommandSender:
    """One rollout's publishing; `halt` stops the rollout when its firmware changed."""

    def __init__(
        self,
        rollout_id: str,
        context: EngineContext,
        *,
        halt: Callable[[RolloutRecord, str], Awaitable[bool]],
    ) -> None:
        self.rollout_id = rollout_id
        self._context = context
        self._store = context.stores.rollout_devices
        self._halt = halt
        self._missing_file_logged = False
        self._publishing: set[asyncio.Task[None]] = set()
        self._in_flight: set[str] = set()  # devices whose publish is under way
        self._next_resend_check_ms = 0
        self.log = log.bind(rollout_id=rollout_id)

    async def wait_for_room(self) -> None:
        """Wait while PUBLISHING_BATCHES batches are being published."""
        if len(self._publishing) >= PUBLISHING_BATCHES:
            await asyncio.wait(self._publishing, return_when=asyncio.FIRST_COMPLETED)

    async def drain(self) -> None:
        """Wait for the publishes under way (each is bounded by the transport's timeout)."""
        await asyncio.gather(*self._publishing, return_exceptions=True)

    async def publish(
        self,
        record: RolloutRecord,
        plan: Plan,
        sends: list[tuple[str, str]],
        *,
        rollback: bool = False,
        reuse: list[DownloadKey] | None = None,
        waiting: frozenset[str] | None = None,
    ) -> None:
        """Send the (rollback) firmware to (device, command id) pairs, a few round trips for all.

        Keys, device bookkeeping and command records are written in one round trip each before
        anything is published; a device whose publish fails stays unpublished for republish.
        (A dispatch writes all of that in its own script.) A new key is recorded only on a
        device still in a `waiting` state (default: rollback_sent for a rollback, else the
        states a command is re-sent in); one that finished meanwhile is sent nothing and its
        new key is revoked.
        """
        if not sends and not reuse:
            return
        context = self._context
        stores = context.stores
        firmware = plan.rollback if rollback and plan.rollback else plan.firmware
        stored = await stores.files.get(record.project_id, firmware.file)
        if stored is None:
            if not self._missing_file_logged:
                self.log.error(
                    "the rollout's firmware file is gone; devices will time out",
                    file_name=firmware.file,
                )
                self._missing_file_logged = True
            return
        changed = changed_since_pinned(record, stored)
        if changed is not None:
            # Never announce other bytes than the rollout was made with; devices left without
            # their command time out, and a rollout still sending its new firmware halts.
            self.log.error("the rollout's firmware file changed; not sent", reason=changed)
            if not rollback:
                await self._halt(record, changed)
            return
        ttl_s = context.settings.download_key_ttl_s
        fresh = await stores.download_keys.issue(
            sends,
            project_id=record.project_id,
            file_name=stored.name,
            size=stored.size,
            ttl_s=ttl_s,
            rollout_id=self.rollout_id,
            sha256=stored.sha256,
        )
        context.metrics.download_keys_issued.inc(len(fresh))
        if waiting is None:
            waiting = frozenset({DeviceState.ROLLBACK_SENT.value}) if rollback else RESENDABLE
        recorded = await self._store.set_keys(
            self.rollout_id, fresh, rollback=rollback, waiting=waiting
        )
        for unused in {k.key for k in fresh} - {k.key for k in recorded}:
            await stores.download_keys.revoke(unused)
        keys = [*recorded, *(reuse or [])]
        sent_at = isoformat_z(utc_now())
        await stores.commands.record(
            [(k.device_id, k.command_id) for k in keys],
            project_id=record.project_id,
            command=COMMAND,
            sent_at=sent_at,
            rollout_id=self.rollout_id,
            kind="rollback" if rollback else "update",
        )

        self.start_sending(
            stored, firmware.version, keys, health=None if rollback else health_contract(plan)
        )

    def start_sending(
        self,
        stored: StoredFile,
        version: str | None,
        keys: list[DownloadKey],
        *,
        health: Mapping[str, float] | None = None,
    ) -> None:
        """Publish in the background: the next batch is prepared meanwhile. `health`: the soak's
        contract the payload carries (health_contract)."""
        if not keys:
            return
        self._in_flight.update(k.device_id for k in keys)
        task = spawn(
            functools.partial(self._send, stored, version, keys, health),
            name=f"publish-{self.rollout_id}",
            restart=False,  # what a failed send left unpublished, _republish sends again
        )
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _send(
        self,
        stored: StoredFile,
        version: str | None,
        keys: list[DownloadKey],
        health: Mapping[str, float] | None,
    ) -> None:
        """Publish each device's command; what fails stays unpublished for republish."""
        context = self._context
        data = {"health": dict(health)} if health else None
        public_url = context.settings.public_url
        expiry = {  # most batches share one expiry
            ms: iso_of_ms(ms) for ms in {k.expires_at_ms for k in keys}
        }

        async def publish_one(key: DownloadKey) -> str | None:
            payload = download_payload(
                stored,
                key=key.key,
                public_url=public_url,
                expires_at=expiry[key.expires_at_ms],
                command_id=key.command_id,
                rollout_id=self.rollout_id,
                version=version,
                data=data,
            )
            try:
                await context.transport.publish_command(key.device_id, COMMAND, payload)
            except TransportUnavailable as exc:
                self.log.warning(
                    "publish failed; will retry", device_id=key.device_id, error=exc.message
                )
                return None
            return key.device_id

        try:
            published = [d for d in await asyncio.gather(*map(publish_one, keys)) if d]
            await self._store.mark_published(self.rollout_id, *published)
            context.metrics.commands_sent.labels(COMMAND).inc(len(published))
        except OrchestratorError as exc:
            self.log.warning("publish bookkeeping failed; will re-send", error=exc.message)
        finally:
            self._in_flight.difference_update(k.device_id for k in keys)

    async def republish(self, record: RolloutRecord, plan: Plan) -> None:
        """Publish again, with the same command id, what a crash may have left unsent."""
        if not self._context.transport.connected:
            return
        in_flight = self._in_flight
        # A send that ends while the set is read marks its devices published, then takes them
        # out of _in_flight: what was in flight before the read must be left out too.
        was_in_flight = set(in_flight)
        unpublished = await self._store.unpublished(self.rollout_id)
        device_ids = [d for d in unpublished if d not in was_in_flight and d not in in_flight]
        if not device_ids:
            return
        devices = await self._store.device_states(self.rollout_id, device_ids)
        settled = await self._send_again(
            record, plan, dict(zip(device_ids, devices, strict=True)), waiting=UNACKNOWLEDGED
        )
        await self._store.mark_published(self.rollout_id, *settled)

    async def resend_to_silent(self, record: RolloutRecord, plan: Plan) -> None:
        """Send the same command again to devices in flight that have been silent too long.

        A device that lost its command (a broker that lost its state, a clean session) gets it
        again, and one that handled it answers with its last result again (ARCHITECTURE §5),
        so a lost command or result is repaired before it becomes a timeout.
        """
        now = self._context.clock_ms()
        if now < self._next_resend_check_ms or not self._context.transport.connected:
            return
        after_ms = int(resend_after_s(plan.policy) * 1000)
        self._next_resend_check_ms = now + max(
            RESEND_CHECK_MIN_MS, after_ms // RESEND_CHECKS_PER_SILENCE
        )
        was_in_flight = set(self._in_flight)
        candidates = [
            d for d in await self._store.with_deadlines(self.rollout_id) if d not in was_in_flight
        ]
        for start in range(0, len(candidates), SCAN_CHUNK):
            ids = candidates[start : start + SCAN_CHUNK]
            silent: dict[str, dict[str, str]] = {}
            for device_id, device in zip(
                ids, await self._store.device_states(self.rollout_id, ids), strict=True
            ):
                if device.get("state") not in RESENDABLE or device_id in self._in_flight:
                    continue
                if int(device.get("resends") or 0) >= RESENDS:
                    continue  # the deadline decides now
                last_ms = max(
                    int(device.get(name) or 0) for name in ("seen_at", "sent_at", "resent_at")
                )
                if now - last_ms >= after_ms:
                    silent[device_id] = device
            if not silent:
                continue
            await self._store.note_resends(self.rollout_id, list(silent), at_ms=now)
            await self._send_again(record, plan, silent, waiting=RESENDABLE)
            self._context.metrics.commands_resent.labels(COMMAND).inc(len(silent))
            self.log.info(
                "command sent again to silent devices",
                devices=len(silent),
                silent_for_s=after_ms / 1000,
            )

    async def _send_again(
        self,
        record: RolloutRecord,
        plan: Plan,
        devices: Mapping[str, Mapping[str, str]],
        *,
        waiting: frozenset[str],
    ) -> list[str]:
        """Publish each device's current command again, same command id; the devices settled.

        A device whose state is not in `waiting` (final, or moved on) is settled and skipped.
        """
        work: dict[bool, tuple[list[tuple[str, str]], list[DownloadKey]]] = {
            False: ([], []),
            True: ([], []),
        }
        settled: list[str] = []
        for device_id, device in devices.items():
            state = device.get("state")
            if state not in waiting:
                settled.append(device_id)
                continue
            rollback = state == DeviceState.ROLLBACK_SENT.value
            command_id = device["rollback_command_id" if rollback else "command_id"]
            new, reused = work[rollback]
            # The device may have the command already and drop this copy as a duplicate, so
            # it must find the same key working: re-send a live key, issue one only if it died.
            old = await self._context.stores.download_keys.get(
                device.get("rollback_key" if rollback else "key", "") or "-"
            )
            if old is not None and old.command_id == command_id:
                reused.append(old)
            else:
                new.append((device_id, command_id))
        for rollback, (new, reused) in work.items():
            await self.publish(record, plan, new, rollback=rollback, reuse=reused, waiting=waiting)
        return settled
