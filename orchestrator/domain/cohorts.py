"""Which devices a rollout targets, in which order, and how many each wave reaches.

Cohorts are deterministic: eligible devices are ordered by sha256(rollout name, device id), so
re-running a plan picks the same canaries, and the canaries are spread across the fleet rather
than being the oldest or newest devices.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from orchestrator.domain.commands import is_allowed
from orchestrator.domain.devices import metadata_matches
from orchestrator.domain.plans import TargetSpec, WaveSpec
from orchestrator.domain.strata import NONE, labels, proportional_order, value_reader

ROLLOUT_COMMAND = "download_firmware"


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What cohort selection needs to know about a device."""

    id: str
    source: str
    tags: frozenset[str]
    brand: str
    model: str
    allowed_commands: tuple[str, ...] = ()
    active_rollout: str | None = None  # the id of another active rollout holding the device
    metadata: Mapping[str, str] = field(default_factory=dict)  # custom metadata
    version: str = ""  # the firmware version it last reported ('' = none known)


class ExclusionReason(StrEnum):
    """Why a device the target names will not take part."""

    HTTP_ONLY = "http_only"
    COMMAND_NOT_ALLOWED = "command_not_allowed"
    IN_ACTIVE_ROLLOUT = "in_active_rollout"
    EXCLUDED_BY_PLAN = "excluded_by_plan"
    NOT_FOUND = "not_found"


EXCLUSION_TEXT = {
    ExclusionReason.HTTP_ONLY: "an http device cannot receive commands",
    ExclusionReason.COMMAND_NOT_ALLOWED: "its allowed_commands do not include download_firmware",
    ExclusionReason.IN_ACTIVE_ROLLOUT: "it is in another active rollout",
    ExclusionReason.EXCLUDED_BY_PLAN: "the plan's target.exclude lists it",
    ExclusionReason.NOT_FOUND: "target.devices names it but the project has no such device",
}


@dataclass(frozen=True, slots=True)
class Exclusion:
    """A device left out, and why."""

    device_id: str
    reason: ExclusionReason
    detail: str = ""  # e.g. the other rollout's id


@dataclass(frozen=True)
class Cohort:
    """The devices a rollout will update, in wave order, and those it leaves out.

    With strata (`policy.by`), `strata` lists each stratum's labels once and `stratum_of`
    gives each device's index into it, in device order (both empty without).
    """

    device_ids: list[str]
    exclusions: list[Exclusion]
    strata: list[tuple[str, ...]] = field(default_factory=list)
    stratum_of: list[int] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)  # devices by last reported version

    def strata_in(self, start: int, stop: int) -> dict[str, int]:
        """Devices at positions [start, stop) of the order by stratum label ({} without)."""
        found: dict[str, int] = {}
        for index in self.stratum_of[start:stop]:
            for label in self.strata[index]:
                found[label] = found.get(label, 0) + 1
        return dict(sorted(found.items()))


def matches(target: TargetSpec, device: DeviceInfo, listed: frozenset[str] | None = None) -> bool:
    """True when the device meets every criterion of the target (AND).

    `listed` is `frozenset(target.devices)`, made once by a caller that checks many devices:
    looking an id up in the list itself costs the length of the list, every time.
    """
    if target.tags and not device.tags.issuperset(target.tags):
        return False
    if target.brand is not None and device.brand != target.brand:
        return False
    if target.model is not None and device.model != target.model:
        return False
    if target.metadata and not metadata_matches(device.metadata, target.metadata.items()):
        return False
    if target.versions and device.version not in target.versions:
        return False
    if listed is None:
        listed = frozenset(target.devices)
    return not target.devices or device.id in listed


def order_key(rollout_name: str, device_id: str) -> str:
    """The sort key spreading devices over waves: sha256 of the name and the id."""
    return hashlib.sha256(f"{rollout_name}\x00{device_id}".encode()).hexdigest()


KEY_CHARS = 64  # an order key's length (sha256 in hex)
RUN = 1000  # items sorted at once in C; longer lists are sorted in runs and merged


def _sorted(items: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """sorted(items), in runs sorted by C and merged in Python.

    list.sort holds the GIL for all of its work, a fifth of a second for 150,000 devices;
    merging runs is Python code, so another thread (the event loop) gets its turn meanwhile.
    """
    if len(items) <= RUN:
        return sorted(items)
    return list(heapq.merge(*(sorted(items[at : at + RUN]) for at in range(0, len(items), RUN))))


class CohortBuilder:
    """select() fed a page of devices at a time, keeping only ids between pages.

    A fleet of 150,000 devices never lives in memory as objects all at once (the collector's
    full passes over them would stall the event loop), and cohort() does its long work in
    Python-level loops, fit for a thread.
    """

    def __init__(self, rollout_name: str, target: TargetSpec, by: Sequence[str] = ()) -> None:
        self._name = rollout_name
        self._target = target
        self._by = tuple(by)
        self._strata: dict[tuple[str, ...], int] = {}  # labels -> stratum index
        self._by_values: dict[tuple[str, ...], int] = {}  # values under `by` -> stratum index
        self._readers = [value_reader(entry) for entry in self._by]
        self._stratum_of: dict[str, int] = {}  # eligible device id -> stratum index
        self._versions: dict[str, int] = {}  # eligible devices by last reported version
        self._listed = frozenset(target.devices)
        self._excluded = frozenset(target.exclude)
        self._seen: set[str] = set()
        self._runs: list[list[str]] = []  # sorted runs of order key + device id
        self._exclusions: list[tuple[str, str, str]] = []  # (reason, device id, detail)

    def add(self, devices: Iterable[DeviceInfo]) -> None:
        """Sort these devices into eligible and excluded."""
        run: list[str] = []
        for device in devices:
            self._seen.add(device.id)
            if not matches(self._target, device, self._listed):
                continue
            reason, detail = _exclusion(device, self._excluded)
            if reason is None:
                run.append(order_key(self._name, device.id) + device.id)
                version = device.version or NONE
                self._versions[version] = self._versions.get(version, 0) + 1
                if self._by:
                    self._stratum_of[device.id] = self._stratum(device)
            else:
                self._exclusions.append((reason, device.id, detail))
        run.sort()
        self._runs.append(run)

    def _stratum(self, device: DeviceInfo) -> int:
        values = tuple(read(device) for read in self._readers)
        index = self._by_values.get(values)
        if index is None:
            index = self._by_values[values] = len(self._strata)
            self._strata[labels(self._by, values)] = index
        return index

    def cohort(self) -> Cohort:
        """The eligible devices in deterministic order, and the exclusions, with why.

        With strata, each stratum keeps its hash order and the waves take every stratum in
        proportion (strata.proportional_order).
        """
        eligible = [entry[KEY_CHARS:] for entry in heapq.merge(*self._runs)]
        stratum_of: list[int] = []
        strata = sorted(self._strata)  # numbered in label order, whatever order pages came in
        if self._by:
            renumbered = {self._strata[labels]: index for index, labels in enumerate(strata)}
            of = self._stratum_of
            in_hash_order = [renumbered[of[device_id]] for device_id in eligible]
            order = proportional_order(in_hash_order)
            eligible = [eligible[at] for at in order]
            stratum_of = [in_hash_order[at] for at in order]
        missing = ExclusionReason.NOT_FOUND
        exclusions = self._exclusions + [
            (missing, device_id, "")
            for device_id in self._target.devices
            if device_id not in self._seen
        ]
        return Cohort(
            device_ids=eligible,
            exclusions=[
                Exclusion(device_id, ExclusionReason(reason), detail)
                for reason, device_id, detail in _sorted(exclusions)
            ],
            strata=strata,
            stratum_of=stratum_of,
            versions=dict(sorted(self._versions.items())),
        )


def _exclusion(device: DeviceInfo, excluded: frozenset[str]) -> tuple[str | None, str]:
    """Why a device the target matches cannot take part (the first reason), or None."""
    if device.id in excluded:
        return ExclusionReason.EXCLUDED_BY_PLAN, ""
    if device.source != "mqtt":
        return ExclusionReason.HTTP_ONLY, ""
    if not is_allowed(ROLLOUT_COMMAND, list(device.allowed_commands)):
        return ExclusionReason.COMMAND_NOT_ALLOWED, ""
    if device.active_rollout:
        return ExclusionReason.IN_ACTIVE_ROLLOUT, device.active_rollout
    return None, ""


def select(
    rollout_name: str, target: TargetSpec, devices: Iterable[DeviceInfo], by: Sequence[str] = ()
) -> Cohort:
    """The eligible devices in deterministic order, and the matching ones excluded, with why."""
    builder = CohortBuilder(rollout_name, target, by)
    builder.add(devices)
    return builder.cohort()


def wave_reach(waves: Sequence[WaveSpec], total: int) -> list[int]:
    """How many devices of `total` each wave reaches in all (cumulative, monotone, last = total).

    `devices: N` reaches N (at most the total); `percent: P` reaches ceil(P% of total), so a
    small fleet's 1% canary is still one device.
    """
    reach: list[int] = []
    previous = 0
    for index, wave in enumerate(waves):
        if index == len(waves) - 1:
            wanted = total
        elif wave.devices is not None:
            wanted = wave.devices
        else:
            assert wave.percent is not None
            wanted = math.ceil(round(wave.percent * total / 100, 9))
        previous = max(previous, min(wanted, total))
        reach.append(previous)
    return reach


def wave_sizes(waves: Sequence[WaveSpec], total: int) -> list[int]:
    """How many new devices each wave adds (the differences of wave_reach)."""
    reach = wave_reach(waves, total)
    return [count - (reach[i - 1] if i else 0) for i, count in enumerate(reach)]
