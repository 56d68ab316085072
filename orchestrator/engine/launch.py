"""Starting a rollout from a plan: check its files, select its cohort, create it atomically.

Shared by the rollouts API (a person applies a plan) and the engine (a hook delivery asks
for one), so both refuse the same plans with the same words.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from orchestrator.domain.cohorts import Cohort, CohortBuilder, DeviceInfo, wave_reach
from orchestrator.domain.files import FileType
from orchestrator.domain.plans import Plan
from orchestrator.errors import Conflict, InvalidInput, ProjectDeleting
from orchestrator.store import Stores
from orchestrator.store.rollouts import CreateOutcome
from orchestrator.timeutil import isoformat_z, utc_now

DEVICE_PAGE = 1000  # devices read per step while selecting a cohort
SHOWN_DEVICES = 5  # device ids named in a conflict message


async def check_files(stores: Stores, project_id: str, plan: Plan) -> None:
    """Firmware (and rollback) files must be uploaded firmware of the project."""
    wanted = [("firmware.file", plan.firmware.file)]
    if plan.rollback is not None:
        wanted.append(("rollback.file", plan.rollback.file))
    for loc, name in wanted:
        stored = await stores.files.get(project_id, name)
        if stored is None or stored.type is not FileType.FIRMWARE:
            raise InvalidInput(
                f"{loc} names {name!r} but the project has no firmware file of that name; "
                f"upload it first (ota files upload {name} --type firmware, or POST "
                f"/v2/projects/{project_id}/files with type=firmware)",
                errors=[{"loc": loc, "msg": f"no firmware file {name!r} in the project"}],
            )


async def _device_pages(stores: Stores, project_id: str) -> AsyncIterator[list[DeviceInfo]]:
    """Every device of the project as cohort selection sees it, a page at a time."""
    cursor: str | None = None
    while True:
        page = await stores.devices.page(project_id, cursor=cursor, limit=DEVICE_PAGE)
        holders = await stores.rollout_devices.device_rollouts([d.id for d in page.devices])
        yield [
            DeviceInfo(
                id=device.id,
                source=device.source.value,
                tags=frozenset(device.tags),
                brand=device.brand,
                model=device.model,
                allowed_commands=tuple(device.allowed_commands),
                active_rollout=holder,
                metadata=device.metadata,
                version=device.firmware_version,
            )
            for device, holder in zip(page.devices, holders, strict=True)
        ]
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


async def cohort_of(stores: Stores, project_id: str, plan: Plan) -> Cohort:
    """The plan's cohort among the project's devices now, with the exclusions."""
    cohort = CohortBuilder(plan.name, plan.target, plan.policy.by)
    async for page in _device_pages(stores, project_id):
        cohort.add(page)  # a page is a few milliseconds; what it keeps is only ids
    # Ordering 150,000 devices takes about a second of Python; in a thread the event loop gets
    # its turn every few milliseconds meanwhile (sys.getswitchinterval()).
    return await asyncio.to_thread(cohort.cohort)


def _some(device_ids: tuple[str, ...]) -> str:
    shown = ", ".join(device_ids[:SHOWN_DEVICES])
    more = len(device_ids) - SHOWN_DEVICES
    return shown + (f" and {more} more" if more > 0 else "")


async def launch(
    stores: Stores,
    project_id: str,
    plan: Plan,
    cohort: Cohort,
    *,
    created_by: str,
    rollout_id: str | None = None,
) -> tuple[str, CreateOutcome]:
    """Create the rollout `pending` for the engine; InvalidInput or Conflict (ProjectDeleting
    too) when it cannot.

    With `rollout_id`, a rollout already made under that id is not made twice (the outcome
    says `exists`).
    """
    if not cohort.device_ids:
        reasons = sorted({exclusion.reason.value for exclusion in cohort.exclusions})
        why = f" (excluded: {', '.join(reasons)})" if reasons else ""
        raise InvalidInput(
            f"the target matches no eligible device{why}; check target against the project's "
            "devices, or run the plan with ?dry_run=true to see the exclusions",
            errors=[{"loc": "target", "msg": "matches no eligible device"}],
        )
    reach = wave_reach(plan.waves, len(cohort.device_ids))
    # The rollout announces these bytes and no others, whatever happens to the names later.
    pins: dict[str, tuple[str, int]] = {}
    for spec in (plan.firmware, plan.rollback):
        stored = await stores.files.get(project_id, spec.file) if spec is not None else None
        if spec is not None and stored is None:
            raise InvalidInput(
                f"the firmware file {spec.file!r} was deleted while the rollout was being "
                "created; upload it again and apply the plan again",
                errors=[{"loc": "firmware.file", "msg": f"no firmware file {spec.file!r}"}],
            )
        if stored is not None:
            pins[stored.name] = (stored.sha256, stored.size)
    made_id, outcome = await stores.rollouts.create(
        project_id=project_id,
        name=plan.name,
        plan=plan.model_dump(mode="json", by_alias=True),
        device_ids=cohort.device_ids,
        reach=reach,
        created_at=isoformat_z(utc_now()),
        created_by=created_by,
        rollout_id=rollout_id,
        pins=pins,
        strata=cohort.strata,
        stratum_of=cohort.stratum_of,
    )
    if outcome.project_deleting:
        raise ProjectDeleting(project_id)
    if outcome.name_taken_by is not None:
        raise Conflict(
            f"rollout {outcome.name_taken_by} named {plan.name!r} is still active in this "
            "project; wait for it to finish or abort it, or give the plan another name"
        )
    if outcome.devices_taken:
        taken = outcome.devices_taken
        raise Conflict(
            f"{len(taken)} devices of the target joined another active rollout meanwhile "
            f"({_some(taken)}); run the plan again to leave them out, or wait for that rollout"
        )
    return made_id, outcome
