"""What the rollout routes show: a rollout with its counts, a dry run, a page of its devices."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from orchestrator.api.rollout_schemas import (
    ExclusionOut,
    FirmwareOut,
    RolloutDeviceOut,
    RolloutOut,
    RolloutPreview,
    StratumOut,
    WaveOut,
    WavePreview,
)
from orchestrator.domain.cohorts import EXCLUSION_TEXT, Cohort, wave_reach, wave_sizes
from orchestrator.domain.counters import by_state, strata_tallies, tally_of
from orchestrator.domain.gate_check import check_first_wave
from orchestrator.domain.plan_values import format_duration
from orchestrator.domain.plans import Plan, shown_plan
from orchestrator.domain.policy import evidence_in_words
from orchestrator.domain.states import DeviceState, allowed_actions
from orchestrator.store import Stores
from orchestrator.store.rollouts import RolloutRecord
from orchestrator.timeutil import iso_of_ms

SCAN_CHUNK = 500  # cohort positions read per step while listing a rollout's devices
SCAN_BUDGET = 20_000  # positions one listing request scans at most before it returns a cursor


def stored_plan(record: RolloutRecord) -> Plan:
    """The rollout's plan as it was accepted, to show it by (its target left out)."""
    return shown_plan(record.plan)


def _firmware(file: str, version: str | None) -> FirmwareOut:
    return FirmwareOut(file=file, version=version)


def rollout_out(
    record: RolloutRecord, counters: Mapping[str, int], plan: Plan | None = None
) -> RolloutOut:
    """The rollout view from its record and its raw counters (and its plan, when read)."""
    plan = plan or stored_plan(record)
    index = min(max(record.wave, 0), len(plan.waves) - 1)
    tally = tally_of(counters)
    waves = [
        WaveOut(name=wave.name, target=reach, counts=by_state(counters, i))
        for i, (wave, reach) in enumerate(zip(plan.waves, record.reach, strict=False))
    ]
    return RolloutOut(
        id=record.id,
        name=record.name,
        state=record.state.value,
        reason=record.reason,
        wave=plan.waves[index].name,
        wave_index=index,
        waves=waves,
        counts=by_state(counters),
        failure_rate=tally.failure_rate,
        failures={kind.value: n for kind, n in tally.failures.items()},
        max_failure_rate=plan.policy.max_failure_rate,
        evidence=evidence_in_words(plan.policy, tally.finished, tally.failed),
        created_at=record.created_at,
        updated_at=record.updated_at,
        created_by=record.created_by,
        firmware=_firmware(plan.firmware.file, plan.firmware.version),
        rollback=_firmware(plan.rollback.file, plan.rollback.version) if plan.rollback else None,
        total=record.total,
        actions=[action.value for action in allowed_actions(record.state)],
        strata=[
            StratumOut(
                stratum=label,
                finished=tally.finished,
                failed=tally.failed,
                failure_rate=tally.failure_rate,
            )
            for label, tally in strata_tallies(counters).items()
        ],
    )


async def load_rollout_out(stores: Stores, record: RolloutRecord) -> RolloutOut:
    """The rollout view, reading its counters."""
    return rollout_out(record, await stores.rollouts.counts(record.id))


def preview(plan: Plan, cohort: Cohort) -> RolloutPreview:
    """The dry run's answer: devices per wave and every exclusion with its reason in words."""
    total = len(cohort.device_ids)
    reach, sizes = wave_reach(plan.waves, total), wave_sizes(plan.waves, total)
    check = check_first_wave(plan, reach[0]) if total else None
    gate = [check.warning()] if check is not None and check.too_small else []
    return RolloutPreview(
        name=plan.name,
        total=total,
        waves=[
            WavePreview(
                name=wave.name,
                devices=size,
                reach=reached,
                approval=wave.approval,
                bake=format_duration(wave.bake_s),
                strata=cohort.strata_in(reached - size, reached),
            )
            for wave, size, reached in zip(plan.waves, sizes, reach, strict=True)
        ],
        versions=cohort.versions,
        warnings=[*unreached_strata(plan, cohort, reach[0] if reach else 0), *gate],
        exclusions=[
            ExclusionOut(
                device_id=exclusion.device_id,
                reason=exclusion.reason.value,
                detail=exclusion.detail,
                why=EXCLUSION_TEXT[exclusion.reason],
            )
            for exclusion in cohort.exclusions
        ],
    )


def unreached_strata(plan: Plan, cohort: Cohort, first_reach: int) -> list[str]:
    """A warning for each stratum the first wave holds no device of."""
    everywhere = cohort.strata_in(0, len(cohort.device_ids))
    first = cohort.strata_in(0, first_reach)
    missed = [label for label in everywhere if label not in first]
    if not missed:
        return []
    wave = plan.waves[0].name
    fix = (
        f"give wave {wave} at least {len(cohort.strata)} devices (one per stratum) to reach "
        "every stratum"
    )
    return [
        f"stratum {label} ({everywhere[label]} devices) has no device in the first wave {wave} "
        f"({first_reach} devices); its failures are first judged in a later wave; {fix}"
        for label in missed
    ]


def _iso_from_ms(value: str | None) -> str | None:
    if not value or not value.isdigit():
        return None
    return iso_of_ms(int(value))


def device_out(
    device_id: str, record: Mapping[str, str], wave_names: Sequence[str]
) -> RolloutDeviceOut:
    """One device of a rollout from its stored record."""
    wave = record.get("wave", "0")
    index = int(wave) if wave.isdigit() else 0
    return RolloutDeviceOut(
        device_id=device_id,
        state=record.get("state", ""),
        wave=wave_names[index] if index < len(wave_names) else wave,
        command_id=record.get("command_id") or None,
        attempts=int(record.get("attempts", "0") or 0),
        failure=record.get("failure") or None,
        error=record.get("error") or None,
        updated_at=_iso_from_ms(record.get("updated_at")),
    )


async def device_page(
    stores: Stores,
    record: RolloutRecord,
    wanted: DeviceState | None,
    position: int,
    limit: int,
) -> tuple[list[RolloutDeviceOut], int | None]:
    """Up to `limit` devices (in `wanted` state) from cohort position `position` on, and the
    position the next page starts at (None: there is none).

    The cursor is a position in the cohort order, which a finished rollout's compaction keeps
    (store/rollout_archive.py): a cursor given before it pages on the same after it. A filtered
    page scans at most SCAN_BUDGET positions, so it may hold fewer than `limit` devices while
    next_cursor is not null.
    """
    wave_names = [wave.name for wave in stored_plan(record).waves]
    found: list[RolloutDeviceOut] = []
    end = min(record.total, position + SCAN_BUDGET)
    # Unfiltered, every position is a device of the page (or the next page's first).
    step = SCAN_CHUNK if wanted is not None else min(SCAN_CHUNK, limit + 1)
    while position < end:
        stop = min(position + step, end)
        state = "" if wanted is None else wanted.value
        for at, device_id, row in await stores.archive.rows(record.id, position, stop, state=state):
            if not row:
                continue
            if len(found) == limit:  # one more match: the next page starts here
                return found, at
            found.append(device_out(device_id, row, wave_names))
        position = stop
    return found, position if position < record.total else None
