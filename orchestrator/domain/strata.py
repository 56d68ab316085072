"""Strata: how a plan's `policy.by` splits a rollout's devices, and the stratum labels.

`by: [model]` makes every model of the target a stratum of its own: the failure policy judges
each with the plan's limits (as well as the whole rollout), and the waves take devices of every
stratum in proportion. A device's stratum under one `by` entry is a label `{entry}={value}`:
`model=TH-300`, `brand=Acme`, `version=2.0.3` (the firmware version the device last reported
before the rollout), `tag:hw-=hw-rev2` (its tag starting with the prefix; the first in order
when it has several). A device with no such value is in the stratum `{entry}=(none)`.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from typing import Protocol

from orchestrator.domain.devices import TAG

FIELDS = ("model", "brand", "version")  # `by` entries naming a device field
TAG_PREFIX = "tag:"  # `by: [tag:<prefix>]`
NONE = "(none)"  # the value of a device that has none
MAX_BY = 4  # `by` entries at most
FORMS = "model, brand, version or tag:<prefix> (such as tag:hw-)"


def by_problem(entry: object) -> str | None:
    """What is wrong with one `policy.by` entry (None: nothing)."""
    if not isinstance(entry, str):
        return f"must be {FORMS}"
    if entry in FIELDS:
        return None
    if entry.startswith(TAG_PREFIX):
        prefix = entry.removeprefix(TAG_PREFIX)
        if prefix and TAG.fullmatch(prefix):
            return None
        return (
            "must name a tag prefix after tag: of 1 to 64 characters without spaces, ':', ';' "
            "or ',' (such as tag:hw-)"
        )
    return f"must be {FORMS}"


class Stratified(Protocol):
    """What a device must tell to be put in its strata (cohorts.DeviceInfo does)."""

    @property
    def model(self) -> str: ...
    @property
    def brand(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def tags(self) -> frozenset[str]: ...


def value_reader(entry: str) -> Callable[[Stratified], str]:
    """Reads a device's value under one `by` entry (NONE when it has none)."""
    if entry in FIELDS:
        return lambda device: getattr(device, entry) or NONE
    prefix = entry.removeprefix(TAG_PREFIX)
    return lambda device: min((t for t in device.tags if t.startswith(prefix)), default=NONE)


def labels(by: Sequence[str], values: Sequence[str]) -> tuple[str, ...]:
    """The stratum labels of a device whose values under `by` are `values`."""
    return tuple(f"{entry}={value}" for entry, value in zip(by, values, strict=True))


def proportional_order(strata: Sequence[int]) -> list[int]:
    """Positions 0..n-1 (already in hash order, stratum `strata[i]` each) in wave order.

    Each stratum keeps its own hash order; the k-th device of a stratum of s devices is placed
    at k/s of the way (ties in hash order), so every prefix of the result holds each stratum in
    proportion (within one device), and the first devices are one of each stratum: a first
    wave of at least as many devices as there are strata reaches every stratum. The strata are
    merged in Python (heapq.merge), not by one long sort that would hold the GIL throughout.
    """
    members: dict[int, list[int]] = {}
    for position, stratum in enumerate(strata):
        members.setdefault(stratum, []).append(position)
    runs = [
        [(rank / len(positions), position) for rank, position in enumerate(positions)]
        for positions in members.values()
    ]
    return [position for _, position in heapq.merge(*runs)]
