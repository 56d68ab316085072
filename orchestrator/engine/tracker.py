"""Follows devices through their results and their download-key use.

A result that is malformed, names an unknown command, comes from another device than the one
the command went to, or arrives after the device's final state changes nothing: it is counted
in `ota_results_ignored_total{reason}` and logged.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from structlog.contextvars import bound_contextvars

from orchestrator.domain.plans import Plan
from orchestrator.domain.states import (
    FAILURE_TYPES,
    FINAL_DEVICE_STATES,
    DeviceEvent,
    DeviceState,
    result_event,
)
from orchestrator.engine.context import EngineContext
from orchestrator.errors import StoreUnavailable
from orchestrator.transport.results import DeviceResult, IgnoredReason

log = structlog.get_logger(__name__)

STORE_RETRIES = 20  # about 30 s of backoff before a result is given up

PROGRESS_EVENTS = frozenset(
    {
        DeviceEvent.RECEIVED,
        DeviceEvent.KEY_CLAIMED,
        DeviceEvent.DOWNLOADING,
        DeviceEvent.KEY_DELIVERED,
        DeviceEvent.INSTALLING,
    }
)
TOOK_FIRMWARE = frozenset(
    {
        DeviceEvent.KEY_CLAIMED,
        DeviceEvent.DOWNLOADING,
        DeviceEvent.KEY_DELIVERED,
        DeviceEvent.INSTALLING,
        DeviceEvent.SUCCESS,
        DeviceEvent.WRONG_VERSION,
    }
)
FINAL_STATE_VALUES = frozenset(state.value for state in FINAL_DEVICE_STATES)


class Tracker:
    """Turns results and key events into device transitions."""

    def __init__(self, context: EngineContext) -> None:
        self._context = context
        self._plans: dict[str, Plan] = {}

    def _ignore(self, reason: str, **fields: Any) -> None:
        self._context.metrics.results_ignored.labels(reason).inc()
        log.info("result ignored", reason=reason, **fields)

    async def _plan(self, rollout_id: str) -> Plan | None:
        plan = self._plans.get(rollout_id)
        if plan is None:
            record = await self._context.stores.rollouts.get(rollout_id)
            if record is None:
                return None
            plan = self._plans[rollout_id] = Plan.model_validate(record.plan)
        return plan

    async def on_result(self, parsed: DeviceResult | IgnoredReason, topic: str) -> None:
        """Handle one message from `{device_id}/control/{command}/result`."""
        if isinstance(parsed, IgnoredReason):
            self._ignore(parsed.value, topic=topic)
            return
        with bound_contextvars(device_id=parsed.device_id, command_id=parsed.command_id):
            # The subscriber acknowledges the message once this returns, so a Redis outage
            # must not end it early: retry until Redis answers (bounded; then it is logged).
            delay_s = 0.05
            for attempt in range(STORE_RETRIES):
                try:
                    await self._on_result(parsed)
                    return
                except StoreUnavailable as exc:
                    if attempt == STORE_RETRIES - 1:
                        log.error("result lost: Redis unavailable", error=exc.message)
                        raise
                    await asyncio.sleep(delay_s)
                    delay_s = min(delay_s * 2, 2.0)

    async def _on_result(self, result: DeviceResult) -> None:
        record = await self._context.stores.commands.get(result.command_id)
        if record is None:
            self._ignore("unknown_command")
            return
        if record["device_id"] != result.device_id:
            self._ignore("wrong_device", sent_to=record["device_id"])
            return
        self._context.metrics.command_results.labels(record["command"], result.status).inc()
        rollout_id = record.get("rollout_id", "")
        if not rollout_id:
            log.info("command result", command=record["command"], status=result.status)
            return
        plan = await self._plan(rollout_id)
        if plan is None:
            self._ignore("unknown_rollout", rollout_id=rollout_id)
            return
        with bound_contextvars(rollout_id=rollout_id):
            if record.get("kind") == "rollback":
                await self._on_rollback_result(rollout_id, plan, result)
            else:
                event = result_event(
                    result.status, version=result.version, expected_version=plan.firmware.version
                )
                await self.apply(rollout_id, plan, result.device_id, event, result.command_id)

    async def _on_rollback_result(self, rollout_id: str, plan: Plan, result: DeviceResult) -> None:
        expected = plan.rollback.version if plan.rollback else None
        if result.status == "success" and (not expected or result.version == expected):
            event = DeviceEvent.ROLLBACK_SUCCESS
        elif result.status in {"success", "failed", "rejected"}:
            event = DeviceEvent.ROLLBACK_FAILURE
        else:
            return  # progress of a rollback install: the deadline still applies
        stores = self._context.stores
        applied = await stores.rollouts.transition(
            rollout_id,
            result.device_id,
            event,
            command_id=result.command_id,
            command_field="rollback_command_id",
            drop_deadline=True,
        )
        if not applied.applied:
            self._ignore(self._why(applied.old, applied.refused))
        else:
            log.info("rollback result", state=applied.new)

    async def apply(
        self, rollout_id: str, plan: Plan, device_id: str, event: DeviceEvent, command_id: str
    ) -> None:
        """Apply a device's event, with its deadline, retries and download bookkeeping."""
        rollouts = self._context.stores.rollouts
        device = await rollouts.device(rollout_id, device_id)
        if not device:
            self._ignore("unknown_device", rollout_id=rollout_id)
            return
        extra: dict[str, str | int] = {}
        if event in TOOK_FIRMWARE:
            extra["downloaded"] = 1
        deadline_ms: int | None = None
        final = event not in PROGRESS_EVENTS
        if not final:
            sent_at = int(device.get("sent_at") or self._context.clock_ms())
            deadline_ms = sent_at + int(plan.policy.device_timeout_s * 1000)
        failure = FAILURE_TYPES.get(event)
        result = await rollouts.transition(
            rollout_id,
            device_id,
            event,
            command_id=command_id,
            deadline_ms=deadline_ms,
            drop_deadline=final,
            failure_type=failure.value if failure else "",
            extra=extra,
            retries=plan.policy.retries if failure else -1,
        )
        if not result.applied:
            if event not in (DeviceEvent.KEY_CLAIMED, DeviceEvent.KEY_DELIVERED):
                self._ignore(self._why(result.old, result.refused), trigger=event.value)
            return
        if result.new == DeviceState.SUCCEEDED.value and device.get("key"):
            # The device says it has the firmware: its key has done its work.
            await self._context.stores.download_keys.revoke(device["key"])
        if final:
            log.debug("device final", rollout_id=rollout_id, state=result.new, trigger=event.value)

    @staticmethod
    def _why(old_state: str, refused: str) -> str:
        if refused == "missing":
            return "unknown_device"
        if refused == "command_mismatch":
            return "stale_command"
        if old_state in FINAL_STATE_VALUES:
            return "late"
        return "duplicate"

    async def on_download_event(self, event: dict[str, str]) -> None:
        """A download key was claimed or fully delivered (from the download events stream)."""
        rollout_id = event.get("rollout_id", "")
        if not rollout_id:
            return
        plan = await self._plan(rollout_id)
        if plan is None:
            return
        kind = (
            DeviceEvent.KEY_CLAIMED
            if event.get("event") == "claimed"
            else DeviceEvent.KEY_DELIVERED
        )
        with bound_contextvars(rollout_id=rollout_id, device_id=event.get("device_id", "")):
            await self.apply(
                rollout_id, plan, event.get("device_id", ""), kind, event.get("command_id", "")
            )
