"""Drives one rollout while this replica holds its lease: it carries out the steps the domain's
step function (domain.progress.decide) chooses, and keeps deadlines.

Every step re-reads the rollout from Redis, so a driver that crashes or loses its lease leaves
nothing behind: the next holder continues from the same state. Publishing, re-publishing what
a crash left unsent and re-sending to silent devices is the CommandSender's (engine.sender).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from orchestrator.domain.audit import AuditNote
from orchestrator.domain.plans import Plan, PlanError, stored_plan
from orchestrator.domain.progress import (
    DISPATCH_BATCH,
    Advance,
    Breach,
    Bucket,
    Complete,
    Dispatch,
    EndRollback,
    Finished,
    Inconclusive,
    Look,
    SendRollback,
    Start,
    Step,
    Wait,
    WaveDone,
    decide,
)
from orchestrator.domain.states import (
    TERMINAL_ROLLOUT_STATES,
    DeviceEvent,
    DeviceState,
    RolloutAction,
    RolloutState,
)
from orchestrator.engine import actions
from orchestrator.engine.commands import health_contract
from orchestrator.engine.context import EngineContext
from orchestrator.engine.sender import COMMAND, CommandSender, changed_since_pinned
from orchestrator.errors import OrchestratorError
from orchestrator.store.device_events import TransitionRequest
from orchestrator.store.download_keys import DownloadKey
from orchestrator.store.rollout_devices import EXPIRE_BATCH, Grant
from orchestrator.store.rollouts import RolloutRecord
from orchestrator.supervisor import backoff_s
from orchestrator.timeutil import isoformat_z, utc_now

log = structlog.get_logger(__name__)

TICK_S = 0.1  # how often a driver looks at its rollout
LEASE_MS = 15_000  # a replica that stops renewing loses the rollout after this
SCAN_CHUNK = 500  # devices read, and moved in one script call, when cancelling
SWEEP_BATCHES = 20  # batches of devices past their deadline dealt with per step, at most
# A halt cancels the devices sent a command they have not started on; a rollout's end cancels
# those never sent one.
UNSTARTED = frozenset({DeviceState.SENT})
# The states a policy breach leaves a rollout in; its unstarted devices are cancelled there.
_STOPPED_BY_POLICY = frozenset({RolloutState.HALTED, RolloutState.ROLLING_BACK})
NEVER_SENT = frozenset({DeviceState.PENDING})
ENGINE = "engine"
GIVE_UP_AFTER = 3  # unexpected step failures in a row before the engine gives up on a rollout
MAX_FAILED_STEP_PAUSE_S = 5.0  # the longest pause before a failed step is tried again
ERROR_TEXT = 300  # characters of an exception's text kept in a rollout's reason


# What a passed deadline did, by the state it found the device in (else: it timed out).
_DEADLINE_NOTES = {
    DeviceState.VERIFYING.value: "device soak ended",
    DeviceState.ROLLBACK_SENT.value: "device rollback timed out",
}


def _note(action: AuditNote) -> dict[str, Any]:
    """An audit entry by the engine that records no state change."""
    return {"at": isoformat_z(utc_now()), "actor": ENGINE, "action": action}


class RolloutDriver:
    """One rollout's loop."""

    def __init__(self, rollout_id: str, context: EngineContext) -> None:
        self.rollout_id = rollout_id
        self._context = context
        self._store = context.stores.rollouts
        self._devices = context.stores.rollout_devices
        self._leases = context.stores.leases
        self._owner = context.settings.instance_id
        self._bucket = Bucket(0.0, context.clock_ms())
        self._took_at_ms = context.clock_ms()  # when this replica began to drive the rollout
        self._stopping = asyncio.Event()
        self._again = False  # more work is waiting: step again at once, without a tick
        self._plan: Plan | None = None
        self._sender = CommandSender(rollout_id, context, halt=self._halt)
        self.log = log.bind(rollout_id=rollout_id)

    def stop(self) -> None:
        """Finish the current step, then give the rollout back."""
        self._stopping.set()

    async def run(self) -> None:
        """Step until the rollout is finished, the lease is lost or stop() is called.

        A step that fails unexpectedly is logged with its traceback and tried again after a
        growing pause. After GIVE_UP_AFTER such failures in a row, or at once when the stored
        plan no longer validates, the engine gives up on the rollout (see give_up) and steps it
        again only once its state changes (a person acts).
        """
        failures = 0
        given_up: tuple[str, str] | None = None  # (state, updated_at) when the engine gave up
        try:
            while not self._stopping.is_set():
                if not await self._leases.acquire(self.rollout_id, self._owner, LEASE_MS):
                    self.log.info("lease lost; another replica drives the rollout")
                    return
                pause_s = TICK_S
                try:
                    if given_up is not None:
                        [now] = await self._store.state_times([self.rollout_id])
                        given_up = given_up if now == given_up else None
                    if given_up is None and not await self.step():
                        return
                    failures = 0
                except PlanError as exc:  # the stored plan: trying again cannot cure it
                    problems = "; ".join(problem.message for problem in exc.problems)
                    given_up = await self.give_up(
                        f"its plan no longer validates: {problems}",
                        fix="abort it and apply a corrected plan",
                    )
                except OrchestratorError as exc:
                    self.log.warning("rollout step failed; retrying", error=exc.message)
                except Exception as exc:
                    failures += 1
                    pause_s = backoff_s(failures, TICK_S, MAX_FAILED_STEP_PAUSE_S)
                    self.log.exception("rollout step failed", failures=failures, retry_in_s=pause_s)
                    if failures >= GIVE_UP_AFTER:
                        error = f"{type(exc).__name__}: {exc}"[:ERROR_TEXT]
                        given_up = await self.give_up(
                            f"a step failed {failures} times in a row ({error}); the engine's log "
                            "has the traceback"
                        )
                        failures = 0
                if self._again:
                    self._again = False
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), pause_s)
        finally:
            # Publishes under way finish (each is bounded by the transport's timeout) before
            # the lease goes: the next holder must not re-send what is still on its way.
            await self._sender.drain()
            with contextlib.suppress(OrchestratorError):
                await self._leases.release(self.rollout_id, self._owner)

    async def step(self) -> bool:
        """One look at the rollout; False once there is nothing left to do.

        PlanError when the stored plan no longer validates (a maximum added since it started).
        """
        record = await self._store.get(self.rollout_id)
        if record is None:
            return False
        if record.state in TERMINAL_ROLLOUT_STATES:  # finishing needs no plan
            await self._finish(record)
            return False
        if record.cancel_unstarted and record.state in _STOPPED_BY_POLICY:
            await self._cancel_unstarted()  # the halt's own step was cut short
        if self._plan is None:  # a rollout's plan never changes
            self._plan = stored_plan(record.plan)
        plan = self._plan
        await self._sender.republish(record, plan)
        await self._sweep(record, plan)
        await self._sender.resend_to_silent(record, plan)
        step = decide(plan, await self._look(record), rollout_id=self.rollout_id)
        await self._carry_out(record, plan, step)
        return True

    async def _look(self, record: RolloutRecord) -> Look:
        """What the step function needs: the record, and the counters when they matter."""
        judged = record.state in (RolloutState.RUNNING, RolloutState.ROLLING_BACK)
        counts = await self._store.counts(self.rollout_id) if judged else {}
        rollback_cursor = 0
        if record.state is RolloutState.ROLLING_BACK:
            rollback_cursor = await self._store.rollback_cursor(self.rollout_id)
        return Look(
            state=record.state,
            wave=record.wave,
            cursor=record.cursor,
            reach=record.reach,
            wave_done_at_ms=record.wave_done_at_ms,
            counts=counts,
            now_ms=self._context.clock_ms(),
            bucket=self._bucket,
            connected=self._context.transport.connected,
            rollback_cursor=rollback_cursor,
            reason=record.reason,
            inconclusive_wave=record.inconclusive_wave,
        )

    async def give_up(self, why: str, *, fix: str = "") -> tuple[str, str] | None:
        """Stop driving a rollout the engine cannot drive, saying why and `fix`.

        A running rollout is halted with the reason. In any other state a halt would change
        what a person's next action means (`resume` would skip an approval or turn a rollback
        into the new firmware again), so the state stays and its reason and an audit event
        (`engine_gave_up`) say why. Returns the rollout's (state, updated_at) afterwards, or
        None when nothing was recorded (the state changed meanwhile: step again).
        """
        record = await self._store.get(self.rollout_id)
        if record is None:
            return None
        reason = f"the engine cannot drive this rollout: {why}"
        self.log.error("engine gave up on the rollout", reason=reason, state=record.state.value)
        if record.state is RolloutState.RUNNING:
            reason += f"; {fix or 'fix the cause, then resume it, or abort it'}"
            if not await self._change(record, RolloutAction.HALT, reason):
                return None
        else:
            reason += (
                f"; {fix or 'fix the cause and act on it (the engine tries again), or abort it'}"
            )
            event = _note(AuditNote.ENGINE_GAVE_UP)
            details = {"state": record.state.value}
            await self._context.stores.audit.add(
                self.rollout_id,
                {**event, "reason": reason, "details": details},
                fields={"reason": reason},
            )
        [now] = await self._store.state_times([self.rollout_id])
        return now

    # --- state changes -------------------------------------------------------------------

    async def _change(
        self,
        record: RolloutRecord,
        action: RolloutAction,
        reason: str,
        details: Mapping[str, Any] | None = None,
        extra: Mapping[str, str | int] | None = None,
        notes: Sequence[Mapping[str, Any]] = (),
        then: tuple[RolloutAction, str] | None = None,
    ) -> bool:
        applied = await actions.apply(
            self._context.stores,
            record,
            action,
            actor=ENGINE,
            reason=reason,
            details=details,
            extra=extra,
            notes=notes,
            then=then,
        )
        changed, to = applied.changed, applied.new
        if changed:
            self.log.info(
                "rollout state changed",
                from_state=record.state.value,
                to_state=to.value,
                reason=reason,
                **(dict(details) if details else {}),
            )
        return changed

    # --- carrying out the steps --------------------------------------------------------------

    async def _halt(self, record: RolloutRecord, reason: str) -> bool:
        return await self._change(record, RolloutAction.HALT, reason)

    async def _carry_out(self, record: RolloutRecord, plan: Plan, step: Step) -> None:
        match step:
            case Start(approval=approval):
                # A first wave that waits for approval is waited for in the start's own step:
                # a crash between the two would send it unapproved.
                then = (RolloutAction.WAIT_APPROVAL, approval) if approval else None
                self._again = await self._change(
                    record, RolloutAction.START, "started by the engine", then=then
                )
            case Dispatch():
                await self._dispatch(record, plan, step)
            case Wait(bucket=bucket):
                if bucket is not None:
                    self._bucket = bucket
            case WaveDone(at_ms=at_ms, reason=reason, bake_s=bake_s):
                event = _note(AuditNote.WAVE_DONE)
                await self._context.stores.audit.add(
                    self.rollout_id, {**event, "reason": reason}, fields={"wave_done_at_ms": at_ms}
                )
                self._again = not bake_s  # nothing to bake: judge at once
            case Advance(wave=wave, reason=reason, figures=numbers, approval=approval):
                passed = {**_note(AuditNote.WAVE_STARTED), "reason": reason, "details": numbers}
                moved: dict[str, str | int] = {"wave": wave, "wave_done_at_ms": 0}
                if approval:
                    # One step: a crash between the wave and the wait would send the next wave
                    # without its approval.
                    await self._change(
                        record,
                        RolloutAction.WAIT_APPROVAL,
                        approval,
                        numbers,
                        extra=moved,
                        notes=[passed],
                    )
                else:
                    await self._context.stores.audit.add(self.rollout_id, passed, fields=moved)
            case Breach(action=action, reason=reason, figures=numbers):
                # The change notes that the unstarted devices are to be cancelled: if the engine
                # dies before it has cancelled them, the next step of any replica does (step()).
                pending = {"cancel_unstarted": 1}
                if not await self._change(record, action, reason, numbers, extra=pending):
                    return
                self._context.metrics.rollout_halts.inc()
                if action is RolloutAction.ROLLBACK:
                    self._context.metrics.rollbacks.inc()
                await self._cancel_unstarted()
            case Inconclusive(wave=wave, reason=reason, figures=numbers):
                # The wave is noted with the pause, in one step: promoted, it passes.
                await self._change(
                    record,
                    RolloutAction.WAIT_APPROVAL,
                    reason,
                    numbers,
                    extra={"inconclusive_wave": wave},
                )
            case Complete(reason=reason, figures=numbers):
                await self._change(record, RolloutAction.COMPLETE, reason, numbers)
            case SendRollback(start=start, stop=stop):
                await self._send_rollback(record, plan, start, stop)
            case EndRollback(action=action, reason=reason, figures=numbers):
                await self._change(record, action, reason, numbers)
            case Finished():
                pass

    async def _dispatch(self, record: RolloutRecord, plan: Plan, step: Dispatch) -> None:
        self._bucket = step.bucket
        stored = await self._context.stores.files.get(record.project_id, plan.firmware.file)
        if stored is None:
            await self._change(
                record,
                RolloutAction.HALT,
                f"the firmware file {plan.firmware.file} is no longer in the project; upload it "
                "again and start a new rollout",
            )
            return
        changed = changed_since_pinned(record, stored)
        if changed is not None:
            await self._change(record, RolloutAction.HALT, changed)
            return
        await self._sender.wait_for_room()
        sent = await self._devices.dispatch(
            self.rollout_id,
            count=step.count,
            reach=step.reach,
            ack_deadline_ms=step.ack_deadline_ms,
            grant=Grant(
                project_id=record.project_id,
                file_name=stored.name,
                size=stored.size,
                sha256=stored.sha256,
                key_ttl_s=self._context.settings.download_key_ttl_s,
                command=COMMAND,
            ),
        )
        self._context.metrics.download_keys_issued.inc(len(sent))
        self._bucket = self._bucket.spend(len(sent))
        self._again = len(sent) == DISPATCH_BATCH
        keys = [
            DownloadKey(
                key=item.key,
                device_id=item.device_id,
                project_id=record.project_id,
                file_name=stored.name,
                size=stored.size,
                command_id=item.command_id,
                rollout_id=self.rollout_id,
                expires_at_ms=item.key_expires_at_ms,
                sha256=stored.sha256,
            )
            for item in sent
        ]
        self._sender.start_sending(
            stored, plan.firmware.version, keys, health=health_contract(plan)
        )

    # --- deadlines -----------------------------------------------------------------------

    async def _sweep(self, record: RolloutRecord, plan: Plan) -> None:
        """Devices past their deadline time out (or fail their rollback) and lose their key,
        a batch per script call; what is left past SWEEP_BATCHES waits for the next step."""
        at_ms = self._context.clock_ms()
        # Soaks are judged only once this replica has listened for a whole heartbeat: reports
        # sent while no engine drove the rollout (queued by the broker, or gone to a replica that
        # died) must not read as silence, nor a soak pass over an unhealthy report not yet read.
        health = plan.policy.health
        hold = health is not None and at_ms - self._took_at_ms < health.heartbeat_s * 1000
        for _ in range(SWEEP_BATCHES):
            expired = await self._devices.expire(
                self.rollout_id, at_ms=at_ms, retries=plan.policy.retries, hold_soaks=hold
            )
            for device_id, result in expired:
                if result.applied:
                    what = _DEADLINE_NOTES.get(result.old, "device timed out")
                    self.log.info(what, device_id=device_id, state=result.new)
            if len(expired) < EXPIRE_BATCH:
                return

    # --- halts and rollbacks -------------------------------------------------------------

    async def _cancel(
        self, device_ids: list[str], only_from: frozenset[DeviceState], *, sent: bool
    ) -> None:
        """Cancel those of the devices in `only_from`, a script call per SCAN_CHUNK; with
        `sent`, each loses its deadline and its download key in the same step."""
        for start in range(0, len(device_ids), SCAN_CHUNK):
            await self._devices.transitions(
                [
                    TransitionRequest(
                        self.rollout_id,
                        device_id,
                        DeviceEvent.CANCEL,
                        only_from=only_from,
                        drop_deadline=sent,
                        revoke_key=sent,
                    )
                    for device_id in device_ids[start : start + SCAN_CHUNK]
                ]
            )

    async def _cancel_unstarted(self) -> None:
        """Revoke the keys no device has started to use; those devices become cancelled."""
        # Devices in `sent` all have a deadline, so the deadline set finds them.
        await self._cancel(
            await self._devices.with_deadlines(self.rollout_id), UNSTARTED, sent=True
        )
        await self._store.set_fields(self.rollout_id, cancel_unstarted=0)

    async def _send_rollback(
        self, record: RolloutRecord, plan: Plan, start: int, stop: int
    ) -> None:
        """Send the rollback firmware to the devices at order[start:stop] that took the new one.

        The devices move to rollback_sent, marked unpublished, in one script call: a crash
        before the publish leaves them for republish, and a step done again moves none twice.
        """
        if start == 0:
            await self._cancel_unstarted()
        ids = await self._devices.order_slice(self.rollout_id, start, stop)
        devices = await self._devices.device_states(self.rollout_id, ids)
        deadline = self._context.clock_ms() + int(plan.policy.device_timeout_s * 1000)
        now = self._context.clock_ms()
        took = [
            d for d, device in zip(ids, devices, strict=True) if device.get("downloaded") == "1"
        ]
        command_ids = [uuid.uuid4().hex for _ in took]
        results = await self._devices.transitions(
            [
                TransitionRequest(
                    self.rollout_id,
                    device_id,
                    DeviceEvent.ROLLBACK_SEND,
                    deadline_ms=deadline,
                    extra={"rollback_command_id": command_id, "seen_at": now, "resends": 0},
                    unpublished=True,
                )
                for device_id, command_id in zip(took, command_ids, strict=True)
            ]
        )
        sends = [
            (device_id, command_id)
            for device_id, command_id, result in zip(took, command_ids, results, strict=True)
            if result.applied
        ]
        await self._sender.publish(record, plan, sends, rollback=True)
        await self._store.set_fields(self.rollout_id, rollback_cursor=stop)

    # --- the end -------------------------------------------------------------------------

    async def _cancel_pending(self, record: RolloutRecord) -> None:
        """Devices never sent a command become cancelled (the rollout will not reach them)."""
        for start in range(0, record.total, SCAN_CHUNK):
            ids = await self._devices.order_slice(self.rollout_id, start, start + SCAN_CHUNK)
            await self._cancel(ids, NEVER_SENT, sent=False)

    async def _finish(self, record: RolloutRecord) -> None:
        """The rollout ended: say so, and clean up after a rollout an older version ended.

        Today the terminal state change cancels, revokes and frees in its own step and takes
        the rollout out of the active set; one still in it was ended by an older version.
        """
        freed = 0
        if await self._store.is_active(self.rollout_id):
            await self._cancel_unstarted()
            await self._cancel_pending(record)
            freed = await self._devices.release_devices(self.rollout_id)
            await self._store.deactivate(self.rollout_id)
        self.log.info("rollout finished", state=record.state.value, devices_freed_late=freed)
