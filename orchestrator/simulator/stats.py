"""What a simulated fleet has done so far: connections, commands, results and downloads."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class FleetStats:
    """Counters of one fleet; `Fleet.stats` hands out copies, the devices update the original."""

    devices: int = 0  # simulated devices in the fleet, offline ones included
    offline: int = 0  # of them, the ones that never connect (Behaviour.offline_rate)
    connected: int = 0  # connected to the broker right now
    connects: int = 0  # successful connections, reconnections included
    connect_failures: int = 0  # connection attempts that failed
    tokens_rotated: int = 0  # devices given a new token after the broker refused their login
    commands: int = 0  # commands obeyed (duplicates and malformed messages not counted)
    duplicates: int = 0  # commands not obeyed again: their command_id was handled already
    malformed: int = 0  # messages that were not a usable command (logged and ignored)
    results: Counter[str] = field(default_factory=Counter)  # results published, by status
    downloads: int = 0  # file downloads begun
    resumed_downloads: int = 0  # requests that resumed a download with Range
    stalled_downloads: int = 0  # downloads that stalled on purpose (Behaviour.stall_rate)
    bytes_downloaded: int = 0
    size_mismatches: int = 0  # downloads whose byte count differed from the payload's size
    checksum_failures: int = 0  # downloads whose sha256 differed from the payload's sha256

    def copy(self) -> FleetStats:
        """A snapshot that later updates do not change."""
        return dataclasses.replace(self, results=Counter(self.results))

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for JSON."""
        values = dataclasses.asdict(self)
        values["results"] = dict(sorted(self.results.items()))
        return values
