"""Rollout notifications: audit entries turned into signed JSON posted to subscribers.

Each audit entry reaches one replica through the notices stream's consumer group; for every
subscription of the rollout's project that asked for the event it queues one notice (its id
derived from the entry, so an entry handled twice queues nothing new). A sender loop posts due
notices with Standard Webhooks headers and a CloudEvents-style body, records every attempt,
and retries failures with exponential backoff until the attempts run out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Mapping
from typing import Any

import httpx
import structlog

from orchestrator import __version__
from orchestrator.domain.counters import by_state, tally_of
from orchestrator.domain.destinations import masked_url
from orchestrator.domain.hooks import sign_standard
from orchestrator.domain.notices import Notice, cloudevent_type, notice_of
from orchestrator.domain.plans import shown_plan
from orchestrator.engine.context import EngineContext
from orchestrator.engine.egress import checked_client
from orchestrator.errors import OrchestratorError
from orchestrator.store.notifications import NoticeDelivery
from orchestrator.store.rollouts import RolloutRecord
from orchestrator.timeutil import isoformat_z, utc_now

log = structlog.get_logger(__name__)

SEND_EVERY_S = 0.5  # how often due notices are looked for
SEND_BATCH = 50  # notices posted at once at most
TIMEOUT_S = 10.0  # one attempt's limit
VISIBILITY_MS = 60_000  # a claimed notice is tried again after this if its sender vanished
MAX_BACKOFF_S = 3600.0
ERROR_TEXT = 300  # characters of a failed attempt's error kept (never the answer's body)


def figures(record: RolloutRecord, counters: Mapping[str, int]) -> dict[str, Any]:
    """The rollout's numbers as a notification carries them."""
    plan = shown_plan(record.plan)
    index = min(max(record.wave, 0), len(plan.waves) - 1)
    return {
        "id": record.id,
        "project_id": record.project_id,
        "name": record.name,
        "state": record.state.value,
        "reason": record.reason,
        "firmware": {"file": plan.firmware.file, "version": plan.firmware.version},
        "wave": plan.waves[index].name,
        "wave_index": index,
        "waves": len(plan.waves),
        "target": record.total,
        "counts": by_state(counters),
        "failure_rate": tally_of(counters).failure_rate,
        "max_failure_rate": plan.policy.max_failure_rate,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    }


def _status_error(status_code: int) -> str:
    phrase = httpx.codes.get_reason_phrase(status_code)
    error = f"HTTP {status_code}" + (f" {phrase}" if phrase else "")
    if 300 <= status_code < 400:
        error += " (redirects are not followed; subscribe to the final URL)"
    return error


def backoff_s(attempt: int, base_s: float) -> float:
    """Seconds before attempt `attempt + 1`: doubling from `base_s`, one hour at most."""
    return float(min(base_s * 2 ** (attempt - 1), MAX_BACKOFF_S))


class Notifier:
    """Queues notices from audit entries and sends them."""

    def __init__(self, context: EngineContext) -> None:
        self._context = context

    async def on_entry(self, entry_id: str, raw: Mapping[str, str]) -> None:
        """Queue a notice per interested subscriber for one audit entry."""
        stores = self._context.stores
        try:
            rollout_id = raw["rollout_id"]
            event: dict[str, Any] = json.loads(raw["event"])
        except (KeyError, json.JSONDecodeError):
            log.warning("notice entry malformed; dropped", entry_id=entry_id)
            return
        notice = notice_of(
            str(event.get("action", "")), str(event.get("from", "")), str(event.get("to", ""))
        )
        if notice is None:
            return
        found = await stores.rollouts.snapshots([rollout_id])
        if not found:
            return
        record, counters = found[0]
        wanted = [
            s
            for s in await stores.notifications.of_project(record.project_id)
            if s.wants(notice.value)
        ]
        if not wanted:
            return
        data = {
            "event": notice.value,
            "change": {
                key: event[key]
                for key in ("from", "to", "action", "actor", "reason", "details", "at")
                if key in event
            },
            "rollout": figures(record, counters),
        }
        queued = []
        for subscription in wanted:
            notice_id = f"msg_{entry_id}_{subscription.id}"
            body = self._body(notice_id, notice, record, event, data)
            queued.append(
                (
                    notice_id,
                    subscription.id,
                    {"type": notice.value, "rollout_id": rollout_id, "body": body},
                )
            )
        made = await stores.notifications.enqueue(queued)
        log.info("notices queued", rollout_id=rollout_id, notice=notice.value, notices=made)

    @staticmethod
    def _body(
        notice_id: str,
        notice: Notice,
        record: RolloutRecord,
        event: Mapping[str, Any],
        data: Mapping[str, Any],
    ) -> str:
        return json.dumps(
            {
                "specversion": "1.0",
                "id": notice_id,
                "source": f"/v2/projects/{record.project_id}/rollouts/{record.id}",
                "type": cloudevent_type(notice),
                "subject": record.id,
                "time": event.get("at") or isoformat_z(utc_now()),
                "datacontenttype": "application/json",
                "data": data,
            },
            separators=(",", ":"),
        )

    async def send_forever(self, stopping: asyncio.Event) -> None:
        """Post due notices until `stopping` is set."""
        async with checked_client(
            self._context.settings.notify_allow,
            timeout_s=TIMEOUT_S,
            user_agent=f"ota-orchestrator/{__version__}",
        ) as http:
            while not stopping.is_set():
                sent = 0
                try:
                    sent = await self.send_due(http)
                except OrchestratorError as exc:
                    log.warning("notices unavailable; retrying", error=exc.message)
                if sent < SEND_BATCH:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stopping.wait(), SEND_EVERY_S)

    async def send_due(self, http: httpx.AsyncClient) -> int:
        """Post the notices due now (at most a batch); how many were tried."""
        claimed = await self._context.stores.notifications.claim(
            now=self._context.clock_ms(), visibility_ms=VISIBILITY_MS, limit=SEND_BATCH
        )
        await asyncio.gather(*(self._send(http, notice) for notice in claimed))
        return len(claimed)

    async def _send(self, http: httpx.AsyncClient, notice: NoticeDelivery) -> None:
        stores = self._context.stores
        settings = self._context.settings
        subscription = await stores.notifications.get(notice.subscription_id)
        at = isoformat_z(utc_now())
        if subscription is None:
            gone = {
                "at": at,
                "status_code": None,
                "error": "subscription deleted",
                "duration_ms": 0,
            }
            await stores.notifications.record(notice.id, gone, state="failed", next_ms=None)
            return
        body = notice.body.encode()
        timestamp = int(time.time())
        started = time.perf_counter()
        status_code: int | None = None
        error: str | None = None
        try:
            response = await http.post(
                subscription.url,
                content=body,
                headers={
                    "Content-Type": "application/json",
                    "webhook-id": notice.id,
                    "webhook-timestamp": str(timestamp),
                    "webhook-signature": sign_standard(
                        subscription.secret, notice.id, timestamp, body
                    ),
                },
            )
            status_code = response.status_code
            if not response.is_success:
                # Never the answer's body: it would show whatever the URL leads to.
                error = _status_error(status_code)
        # InvalidURL is no HTTPError: a URL stored before the API checked it with httpx.
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            error = f"{type(exc).__name__}: {exc}"[:ERROR_TEXT] or type(exc).__name__
        duration_ms = int((time.perf_counter() - started) * 1000)
        attempt: dict[str, Any] = {
            "at": at,
            "status_code": status_code,
            "error": error,
            "duration_ms": duration_ms,
        }
        tries = len(notice.attempts) + 1
        if error is None:
            state, next_ms, result = "delivered", None, "delivered"
        elif tries >= settings.notify_attempts:
            state, next_ms, result = "failed", None, "failed"
        else:
            delay_ms = int(backoff_s(tries, settings.notify_retry_s) * 1000)
            state, next_ms, result = "pending", self._context.clock_ms() + delay_ms, "retrying"
        await stores.notifications.record(notice.id, attempt, state=state, next_ms=next_ms)
        self._context.metrics.notices.labels(result).inc()
        log.info(
            "notice sent" if error is None else "notice not delivered",
            notice_id=notice.id,
            rollout_id=notice.rollout_id,
            url=masked_url(subscription.url),  # a token may sit in its query
            attempt=tries,
            status_code=status_code,
            error=error,
            next_attempt_ms=next_ms,
        )
