"""Starting the rollouts that hook deliveries asked for, each exactly once.

A request reaches one replica through the deploy stream's consumer group. The rollout is
created under the id the delivery was promised, and creation refuses an id already used, so a
request handled again after a crash does not start a second rollout. What became of the
delivery (started, or failed and why) is written on it for `ota hooks deliveries`.
"""

from __future__ import annotations

from collections.abc import Mapping

import structlog

from orchestrator.engine.context import EngineContext
from orchestrator.engine.launch import check_files, cohort_of, launch
from orchestrator.errors import Conflict, InvalidInput
from orchestrator.store.hooks import DeployRequest, request_of

log = structlog.get_logger(__name__)


class DeployStarter:
    """Handles deploy requests from the stream."""

    def __init__(self, context: EngineContext) -> None:
        self._context = context

    async def on_request(self, entry_id: str, raw: Mapping[str, str]) -> None:
        """Start the requested rollout, or record why it cannot start; raise only to retry."""
        try:
            request = request_of(raw)
        except KeyError as exc:
            log.warning("deploy request malformed; dropped", entry_id=entry_id, missing=str(exc))
            return
        with structlog.contextvars.bound_contextvars(
            rollout_id=request.rollout_id, hook_id=request.hook_id
        ):
            try:
                created, devices = await self._start(request)
            except (InvalidInput, Conflict) as exc:
                await self._settle(request, "failed", exc.message)
                log.warning("hook deploy not started", reason=exc.message)
                return
            reason = (
                f"rollout started over {devices} devices"
                if created
                else "rollout started (by an earlier attempt)"
            )
            await self._settle(request, "started", reason)
            log.info("hook deploy started", devices=devices, delivery_id=request.delivery_id)

    async def _start(self, request: DeployRequest) -> tuple[bool, int]:
        stores = self._context.stores
        if await stores.rollouts.get(request.rollout_id) is not None:
            return False, 0
        plan = await self._context.plans.parse(request.plan, source=request.actor)
        await check_files(stores, request.project_id, plan)
        cohort = await cohort_of(stores, request.project_id, plan)
        _, outcome = await launch(
            stores,
            request.project_id,
            plan,
            cohort,
            created_by=request.actor,
            rollout_id=request.rollout_id,
        )
        return not outcome.exists, len(cohort.device_ids)

    async def _settle(self, request: DeployRequest, status: str, reason: str) -> None:
        await self._context.stores.hooks.settle(
            request.hook_id, request.delivery_id, status=status, reason=reason
        )
        self._context.metrics.webhook_deliveries.labels(status).inc()
