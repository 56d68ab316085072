"""Follows devices through their results and their download-key use.

A result that is malformed, names an unknown command, comes from another device than the one
the command went to, or arrives after the device's final state changes nothing: it is counted
in `ota_results_ignored_total{reason}` and logged.
"""

from __future__ import annotations

import asyncio
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from orchestrator.domain.plans import Plan, PlanError, stored_plan
from orchestrator.domain.states import (
    FAILURE_TYPES,
    FINAL_DEVICE_STATES,
    HEALTH_EVENTS,
    RESULT_EVENTS,
    DeviceEvent,
    result_event,
)
from orchestrator.engine.context import EngineContext
from orchestrator.errors import StoreRefused, StoreUnavailable
from orchestrator.store.device_events import ResultRules, StatusRules, TransitionRequest
from orchestrator.store.rollout_devices import ResultOutcome
from orchestrator.timeutil import utc_now
from orchestrator.transport.results import DeviceResult, IgnoredReason, ParsedResult

log = structlog.get_logger(__name__)

STORE_RETRIES = 20  # refusals (not outages) before a batch of results is given up
MAX_BACKOFF_S = 2.0  # between tries while Redis is away
RECENT_ROLLOUTS = 8  # rollouts whose result rules go with every batch, most recently heard first

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
        DeviceEvent.VERIFY,
        DeviceEvent.REVERTED,
    }
)
# Under a health soak: a success starts the soak, a healthy report keeps it going; both set the
# device's next heartbeat deadline (at most the soak's end) instead of dropping its deadline.
SOAK_EVENTS = frozenset({DeviceEvent.VERIFY, DeviceEvent.HEALTHY})
# Failures of a device that installed the firmware and then went wrong: sending it the same
# firmware again would not change the verdict, so they are never retried.
NOT_RETRIED = frozenset({DeviceEvent.UNHEALTHY, DeviceEvent.REVERTED})
TOOK_FIRMWARE_FIELDS = {"downloaded": 1}  # set on a device that fetched or installed the firmware
FINAL_STATE_VALUES = frozenset(state.value for state in FINAL_DEVICE_STATES)


@dataclass(frozen=True, slots=True)
class Work:
    """A device event to apply, and whether a refusal goes unreported."""

    request: TransitionRequest
    quiet: bool


class Tracker:
    """Turns results and key events into device transitions."""

    def __init__(self, context: EngineContext) -> None:
        self._context = context
        self._plans: dict[str, Plan] = {}
        # Rules sent with each batch: a result about another rollout costs one more round trip.
        self._recent: OrderedDict[str, ResultRules] = OrderedDict()

    def _ignore(self, reason: str, **fields: Any) -> None:
        self._context.metrics.results_ignored.labels(reason).inc()
        log.info("result ignored", reason=reason, **fields)

    async def _plan(self, rollout_id: str) -> Plan | None:
        plan = self._plans.get(rollout_id)
        if plan is None:
            record = await self._context.stores.rollouts.get(rollout_id)
            if record is None:
                return None
            try:
                plan = self._plans[rollout_id] = stored_plan(record.plan)
            except PlanError as exc:  # its driver gives up on it too; other results go on
                log.error(
                    "rollout plan no longer validates", rollout_id=rollout_id, error=exc.message
                )
                return None
        return plan

    async def on_results(self, batch: Sequence[ParsedResult]) -> None:
        """Handle messages from `{device_id}/control/{command}/result`, in arrival order.

        The subscriber acknowledges them once this returns, so a Redis outage must not end it
        early: while Redis is unreachable or failing over, try again until it answers (at stop
        the batch stays unacknowledged and comes back). Applying a batch again is harmless: a
        repeated event finds the device moved on and is counted as ignored.
        """
        results: list[DeviceResult] = []
        for parsed, topic in batch:
            if isinstance(parsed, IgnoredReason):
                self._ignore(parsed.value, topic=topic)
            else:
                results.append(parsed)
        if not results:
            return
        delay_s = 0.05
        refusals = 0
        while True:
            try:
                await self._on_results(results)
                return
            except StoreRefused as exc:  # a lasting error: retrying cannot cure it
                refusals += 1
                if refusals == STORE_RETRIES:
                    log.error(
                        "results lost: Redis refused them", error=exc.message, results=len(results)
                    )
                    raise
            except StoreUnavailable as exc:
                # Unreachable or failing over: hold the batch (and so its acknowledgement) until
                # Redis is back; the broker keeps the rest meanwhile.
                if delay_s >= MAX_BACKOFF_S:
                    log.warning("results wait for Redis", error=exc.message, results=len(results))
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, MAX_BACKOFF_S)

    async def _on_results(self, results: Sequence[DeviceResult]) -> None:
        rules: dict[str, ResultRules | None] = dict(self._recent)
        applied = await self._context.stores.rollout_devices.apply_results(results, rules)
        while applied.needed:  # a rollout seen for the first time: its rules, then again
            for rollout_id in applied.needed:
                rules[rollout_id] = await self._result_rules(rollout_id)
            applied = await self._context.stores.rollout_devices.apply_results(results, rules)
        metrics = self._context.metrics
        answered: Counter[tuple[str, str]] = Counter()  # (command, status)
        sent_ats: Counter[str] = Counter()
        heard_from: set[str] = set()
        # A device of a compacted rollout has no hash left: its result is late, not unknown.
        missing = {o.rollout_id for o in applied.outcomes if o.outcome == "missing"}
        compacted = await self._context.stores.archive.archived(sorted(missing)) if missing else ()
        for result, outcome in zip(results, applied.outcomes, strict=True):
            if outcome.matched:
                answered[outcome.command, result.status] += 1
                sent_ats[outcome.sent_at] += 1
            if outcome.rollout_id:
                heard_from.add(outcome.rollout_id)
            if outcome.outcome != "applied":
                self._report(result, outcome, compacted=outcome.rollout_id in compacted)
        for (command, status), count in answered.items():
            metrics.command_results.labels(command, status).inc(count)
        metrics.observe_result_latencies(sent_ats, utc_now())
        for rollout_id in heard_from:
            found = rules.get(rollout_id)
            if found is not None:
                self._recent[rollout_id] = found
                self._recent.move_to_end(rollout_id)
        while len(self._recent) > RECENT_ROLLOUTS:
            self._recent.popitem(last=False)

    def _report(self, result: DeviceResult, outcome: ResultOutcome, *, compacted: bool) -> None:
        """Count and log a result that moved no device (`compacted`: its rollout is)."""
        ids = {"device_id": result.device_id, "command_id": result.command_id}
        match outcome.outcome:
            case "unknown_command":
                self._ignore("unknown_command", **ids)
            case "wrong_device":
                self._ignore("wrong_device", sent_to=outcome.detail, **ids)
            case "no_rollout":
                log.info("command result", command=outcome.command, status=result.status, **ids)
            case "unknown_rollout":
                self._ignore("unknown_rollout", rollout_id=outcome.rollout_id, **ids)
            case "no_event" if result.status in HEALTH_EVENTS:
                # A health report about a rollout without a soak (or about its rollback).
                self._ignore("no_soak", rollout_id=outcome.rollout_id, **ids)
            case "no_event":
                pass  # progress of a rollback install: the deadline still applies
            case "missing" if compacted:
                self._ignore("late", trigger=outcome.event, rollout_id=outcome.rollout_id, **ids)
            case refused:
                self._ignore(
                    self._why(outcome.detail, refused),
                    trigger=outcome.event,
                    rollout_id=outcome.rollout_id,
                    **ids,
                )

    async def _result_rules(self, rollout_id: str) -> ResultRules | None:
        """What each result means for the rollout's devices (None: no such rollout)."""
        plan = await self._plan(rollout_id)
        if plan is None:
            return None

        def install(version: str | None) -> dict[str, TransitionRequest]:
            expected = plan.firmware.version
            return {
                status: self._work(
                    rollout_id,
                    plan,
                    "",
                    result_event(status, version=version, expected_version=expected),
                    "",
                ).request
                for status in RESULT_EVENTS
            }

        def rollback(version: str | None) -> dict[str, TransitionRequest]:
            requests = {}
            for status in RESULT_EVENTS:
                event = self._rollback_event(plan, status, version)
                if event is not None:
                    requests[status] = TransitionRequest(
                        rollout_id,
                        "",
                        event,
                        command_field="rollback_command_id",
                        drop_deadline=True,
                    )
            return requests

        # Matched: the result reports the expected version (or none is expected); mismatched:
        # another one, which these functions see as the absent version.
        firmware = plan.firmware.version
        back = plan.rollback.version if plan.rollback else None
        kinds = {"rollback": StatusRules(back or "", rollback(back), rollback(None))}
        if plan.policy.health is not None:
            return ResultRules(default=self._soak_rules(rollout_id, plan), kinds=kinds)
        return ResultRules(
            default=StatusRules(firmware or "", install(firmware), install(None)), kinds=kinds
        )

    def _soak_rules(self, rollout_id: str, plan: Plan) -> StatusRules:
        """What install results and health reports mean under the plan's health soak: a report
        naming another version than the firmware's is a revert; one naming none is judged by its
        status alone (a success still needs the version, as without a soak)."""
        expected = plan.firmware.version

        def meaning(version: str | None) -> dict[str, TransitionRequest]:
            return {
                status: self._work(
                    rollout_id,
                    plan,
                    "",
                    result_event(status, version=version, expected_version=expected, soak=True),
                    "",
                ).request
                for status in (*RESULT_EVENTS, *HEALTH_EVENTS)
            }

        other = f"{expected}+another"  # any version but the expected one
        return StatusRules(expected or "", meaning(expected), meaning(other), meaning(None))

    @staticmethod
    def _rollback_event(plan: Plan, status: str, version: str | None) -> DeviceEvent | None:
        """What a result about a rollback command means (None: progress, which moves nothing)."""
        expected = plan.rollback.version if plan.rollback else None
        if status == "success" and (not expected or version == expected):
            return DeviceEvent.ROLLBACK_SUCCESS
        if status in {"success", "failed", "rejected"}:
            return DeviceEvent.ROLLBACK_FAILURE
        return None  # progress of a rollback install: the deadline still applies

    @staticmethod
    def _work(
        rollout_id: str, plan: Plan, device_id: str, event: DeviceEvent, command_id: str
    ) -> Work:
        health = plan.policy.health
        soak = health is not None and event in SOAK_EVENTS
        final = event not in PROGRESS_EVENTS and not soak
        failure = FAILURE_TYPES.get(event)
        request = TransitionRequest(
            rollout_id,
            device_id,
            event,
            command_id=command_id,
            # A progress event keeps the device's deadline at device_timeout after its send.
            deadline_after_sent_ms=(
                None if final or soak else int(plan.policy.device_timeout_s * 1000)
            ),
            heartbeat_ms=int(health.heartbeat_s * 1000) if soak and health else None,
            soak_ms=int(health.soak_s * 1000) if health and event is DeviceEvent.VERIFY else 0,
            drop_deadline=final,
            failure_type=failure.value if failure else "",
            marks=TOOK_FIRMWARE_FIELDS if event in TOOK_FIRMWARE else None,
            retries=plan.policy.retries if failure and event not in NOT_RETRIED else -1,
        )
        # Key claims and deliveries repeat what results already said: no noise when refused.
        return Work(request, quiet=event in (DeviceEvent.KEY_CLAIMED, DeviceEvent.KEY_DELIVERED))

    async def _apply(self, work: Sequence[Work]) -> None:
        """Apply the events in one call (which revokes the keys of devices that succeeded)."""
        if not work:
            return
        stores = self._context.stores
        outcomes = await stores.rollout_devices.transitions([item.request for item in work])
        for item, outcome in zip(work, outcomes, strict=True):
            request = item.request
            if not outcome.applied:
                if not item.quiet:
                    self._ignore(
                        self._why(outcome.old, outcome.refused),
                        trigger=request.event.value,
                        rollout_id=request.rollout_id,
                        device_id=request.device_id,
                        command_id=request.command_id,
                    )
                continue

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
        work = self._work(
            rollout_id, plan, event.get("device_id", ""), kind, event.get("command_id", "")
        )
        await self._apply([work])
