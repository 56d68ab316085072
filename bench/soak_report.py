"""What `make soak` measured, and the Markdown it prints (bench/README.md explains it)."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass, field

from bench.report import _mosquitto_version, _version
from orchestrator.embedded_nginx import nginx_binary

MB = 1e6
MIB = 1024 * 1024
RSS_GROWTH_AIM_MB = 100.0  # service memory growth while serving the downloads, at most
DIRECT_RATIO_AIM = 0.5  # the service's own streaming, against nginx alone
OFFLOAD_RATIO_AIM = 0.9  # the service with nginx offload, against nginx alone
# Key kinds by what they hold, for the per-device breakdown. A finished rollout's compacted
# records (`rollout:{id}:archive`, and the `rollouts:archived` index) are rollout state too.
CATEGORIES = (
    # devtoken: only tokens made before tokens carried their device id; the project's id sets
    # are cut in leaves (project:{id}:devices:index, …:index:{id}, …:bounds).
    ("registry", ("device:{id}", "devtoken:{id}", "project:{id}:devices:", "project:{id}:tag:")),
    (
        "rollout state",
        (
            "rollout:",
            "rollout:{id}:archive",
            "device:{id}:rollout",
            "rollouts:",
            "rollouts:archived",
        ),
    ),
    ("download keys (TTL: OTA_DOWNLOAD_KEY_TTL)", ("dk:", "device:{id}:dkeys")),
    ("command records (TTL 24 h)", ("command:",)),
    ("event streams (capped)", ("events:",)),
)


@dataclass
class Wave:
    """One wave of the rollout: its devices, how long it took, the service's RSS at its end."""

    devices: int
    seconds: float
    service_rss: int


@dataclass
class RolloutFigures:
    """The fleet-size half of the soak."""

    devices: int
    create_s: float = 0.0
    rollout_s: float = 0.0
    state: str = ""
    succeeded: int = 0
    commands_received: int = 0
    waves: list[Wave] = field(default_factory=list)
    service_rss_start: int = 0
    service_rss_before_rollout: int = 0
    service_rss_created: int = 0  # once the API has created the rollout (its cohort resolved)
    service_rss_end: int = 0
    redis_before: int = 0
    redis_registry: int = 0
    redis_after: int = 0
    memory: dict[str, tuple[int, int]] = field(default_factory=dict)  # kind: (keys, bytes)
    scan_s: float = 0.0
    compact_s: float = 0.0  # compacting the finished rollout (store/rollout_archive.py)
    redis_compacted: int = 0  # used_memory once it is compacted
    memory_compacted: dict[str, tuple[int, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def kept_bytes_per_device(self) -> float:
        """What a device keeps costing once its rollout is compacted: registry + rollout state,
        by MEMORY USAGE (command records and download-key sets expire within a day)."""
        memory = self.memory_compacted or self.memory
        kept = sum(
            size
            for kind, (_, size) in memory.items()
            if category(kind) in ("registry", "rollout state")
        )
        return kept / self.devices

    @property
    def bytes_per_device(self) -> float:
        """Redis used_memory after the rollout, less before the devices, per device."""
        return (self.redis_after - self.redis_before) / self.devices

    @property
    def bytes_per_device_compacted(self) -> float:
        """Redis used_memory once the rollout is compacted, less before the devices, per device."""
        return (self.redis_compacted - self.redis_before) / self.devices

    @property
    def rss_growth_mb(self) -> float:
        """The service's RSS at the end of the rollout less at its start, in MiB."""
        return (self.service_rss_end - self.service_rss_start) / MIB


@dataclass
class DownloadRun:
    """One way of serving the file to every client at once."""

    label: str
    pace_bytes_s: float  # each client's read pace; 0: as fast as it can
    clients: int
    ok: int
    bytes: int
    wall_s: float
    client_median_bytes_s: float
    first_byte_p50_s: float
    first_byte_p95_s: float
    sha256_ok: bool
    errors: list[str]
    service_rss_before: int = 0
    service_rss_peak: int = 0
    service_cpu: float = 0.0
    keys_spent: int = -1  # -1: no keys (nginx alone)

    @property
    def mb_s(self) -> float:
        """All clients' bytes over the time from the first request to the last byte."""
        return self.bytes / MB / self.wall_s if self.wall_s else 0.0

    @property
    def rss_growth_mb(self) -> float:
        """The service's RSS at its peak during the run, less before it, in MiB."""
        return (self.service_rss_peak - self.service_rss_before) / MIB


@dataclass
class DownloadFigures:
    """The download half of the soak."""

    clients: int
    firmware_bytes: int
    pace_bytes_s: float
    runs: list[DownloadRun] = field(default_factory=list)

    def run(self, label: str, pace: float) -> DownloadRun | None:
        """The run of this way at this pace, if it ran."""
        return next((r for r in self.runs if r.label == label and r.pace_bytes_s == pace), None)

    def ratio(self, label: str, pace: float) -> float:
        """A way's MB/s over nginx alone's, at the same pace."""
        run, reference = self.run(label, pace), self.run("nginx alone", pace)
        if run is None or reference is None or not reference.mb_s:
            return 0.0
        return run.mb_s / reference.mb_s


@dataclass
class SoakResults:
    """Everything the soak measured."""

    rollout: RolloutFigures
    downloads: DownloadFigures
    notes: list[str] = field(default_factory=list)

    @classmethod
    def new(
        cls, *, devices: int, clients: int, firmware_bytes: int, pace_bytes_s: float
    ) -> SoakResults:
        return cls(RolloutFigures(devices), DownloadFigures(clients, firmware_bytes, pace_bytes_s))


def category(kind: str) -> str:
    """Which part of the product a key kind belongs to."""
    for name, starts in CATEGORIES:
        if kind in starts or any(kind.startswith(s) for s in starts if s.endswith(":")):
            return name
    return "other"


def _pace(pace_bytes_s: float) -> str:
    return f"{pace_bytes_s / MB:g} MB/s per client" if pace_bytes_s else "as fast as they read"


def _mib(value: float) -> str:
    return f"{value / MIB:,.1f} MiB"


def _rollout_tables(figures: RolloutFigures) -> list[str]:
    n = figures.devices
    lines = [
        f"## A rollout to {n:,} devices",
        "",
        f"Devices created through the store in {figures.create_s:.1f} s; the rollout "
        f"(waves of {', '.join(f'{p}%' for p in (1, 10, 50, 100))}, the fleet answering each "
        f"command at once) ended `{figures.state}` after {figures.rollout_s:.1f} s with "
        f"{figures.succeeded:,} devices succeeded ({figures.commands_received:,} commands "
        "received by the fleet).",
        "",
        "| wave | devices | seconds | devices/s | service RSS at its end |",
        "| --- | --- | --- | --- | --- |",
    ]
    for number, wave in enumerate(figures.waves, start=1):
        rate = wave.devices / wave.seconds if wave.seconds else 0.0
        lines.append(
            f"| {number} | {wave.devices:,} | {wave.seconds:.1f} | {rate:,.0f} | "
            f"{_mib(wave.service_rss)} |"
        )
    lines += [
        "",
        "| memory | value |",
        "| --- | --- |",
        f"| service RSS at start (ready, no devices) | {_mib(figures.service_rss_start)} |",
        f"| service RSS before the rollout ({n:,} devices registered) | "
        f"{_mib(figures.service_rss_before_rollout)} |",
        f"| service RSS once the rollout was created (the API resolved its cohort) | "
        f"{_mib(figures.service_rss_created)} |",
        f"| service RSS after the rollout | {_mib(figures.service_rss_end)} |",
        f"| **service RSS growth** (after the rollout − at start) | "
        f"**{figures.rss_growth_mb:+.1f} MiB** |",
        f"| Redis used_memory before the devices | {_mib(figures.redis_before)} |",
        f"| Redis used_memory after registering them | {_mib(figures.redis_registry)} "
        f"({(figures.redis_registry - figures.redis_before) / n:,.0f} B/device) |",
        f"| Redis used_memory after the rollout | {_mib(figures.redis_after)} |",
        f"| **Redis per device** (after the rollout − before the devices) | "
        f"**{figures.bytes_per_device:,.0f} B** |",
        f"| Redis used_memory once the rollout is compacted ({figures.compact_s:.1f} s) | "
        f"{_mib(figures.redis_compacted)} |",
        f"| **Redis per device, compacted** (then − before the devices) | "
        f"**{figures.bytes_per_device_compacted:,.0f} B** |",
        "",
        f"Redis keys by kind after the rollout (MEMORY USAGE of every key, read in "
        f"{figures.scan_s:.1f} s; the sum is below used_memory, which also counts Redis's own "
        "tables):",
        "",
        *_kind_tables(figures.memory, n),
    ]
    if figures.memory_compacted:
        lines += [
            "",
            "The same once the finished rollout is compacted (as the engine's sweep does a "
            "minute after its end):",
            "",
            *_kind_tables(figures.memory_compacted, n),
        ]
    return lines


def _kind_tables(memory: dict[str, tuple[int, int]], n: int) -> list[str]:
    """Keys and bytes by kind, then bytes per device by part."""
    lines = [
        "| part | key kind | keys | bytes | bytes/device |",
        "| --- | --- | --- | --- | --- |",
    ]
    ranked = sorted(memory.items(), key=lambda item: (category(item[0]), -item[1][1]))
    totals: dict[str, int] = {}
    for kind, (keys, size) in ranked:
        totals[category(kind)] = totals.get(category(kind), 0) + size
        if size / n >= 0.5 or keys >= n // 10:
            lines.append(f"| {category(kind)} | `{kind}` | {keys:,} | {size:,} | {size / n:,.1f} |")
    small = [k for k, (keys, size) in ranked if not (size / n >= 0.5 or keys >= n // 10)]
    if small:
        lines.append(f"| | {len(small)} other kinds (per-rollout, per-project) | | | < 0.5 |")
    lines += ["", "| part | bytes/device |", "| --- | --- |"]
    for name, size in sorted(totals.items(), key=lambda item: -item[1]):
        lines.append(f"| {name} | {size / n:,.0f} |")
    lines.append(f"| **all keys** | **{sum(totals.values()) / n:,.0f}** |")
    return lines


def _download_tables(figures: DownloadFigures) -> list[str]:
    size_mb = figures.firmware_bytes / MB
    lines = [
        f"## {figures.clients} concurrent downloads of a {size_mb:.0f} MB firmware",
        "",
        "| way | client pace | MB/s (all clients) | ratio to nginx alone | median client MB/s | "
        "first byte p50 / p95 | service RSS growth | service CPU | keys spent | ok |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in figures.runs:
        pace = _pace(run.pace_bytes_s)
        spent = "–" if run.keys_spent < 0 else f"{run.keys_spent}/{run.clients}"
        service = run.label != "nginx alone"
        lines.append(
            f"| {run.label} | {pace} | {run.mb_s:,.0f} | "
            f"{figures.ratio(run.label, run.pace_bytes_s):.2f} | "
            f"{run.client_median_bytes_s / MB:.2f} | "
            f"{run.first_byte_p50_s * 1000:,.0f} / {run.first_byte_p95_s * 1000:,.0f} ms | "
            f"{f'{run.rss_growth_mb:+.1f} MiB' if service else '–'} | "
            f"{f'{run.service_cpu:.0%}' if service else '–'} | {spent} | "
            f"{run.ok}/{run.clients}{'' if run.sha256_ok else ' (sha256 differs)'} |"
        )
        for error in run.errors:
            lines.append(f"|  | error: {error} | | | | | | | | |")
    return lines


def best_way(figures: DownloadFigures) -> tuple[str, float]:
    """The service way with the higher ratio at the slow pace, and that ratio."""
    pace = figures.pace_bytes_s
    ways = [(label, figures.ratio(label, pace)) for label in ("service", "service + x-accel")]
    return max(ways, key=lambda way: way[1])


def summary_line(results: SoakResults) -> str:
    """The last line: the figures to compare between runs."""
    rollout, downloads = results.rollout, results.downloads
    pace = downloads.pace_bytes_s
    label, ratio = best_way(downloads)
    best = downloads.run(label, pace)
    nginx = downloads.run("nginx alone", pace)
    growth = max(
        (run.rss_growth_mb for run in downloads.runs if run.label != "nginx alone"), default=0.0
    )
    return (
        f"devices={rollout.devices} "
        f"redis_bytes_per_device={rollout.kept_bytes_per_device():.0f} "
        f"redis_used_bytes_per_device={rollout.bytes_per_device:.0f} "
        f"compacted_used_bytes_per_device={rollout.bytes_per_device_compacted:.0f} "
        f"service_rss_growth_mb={rollout.rss_growth_mb:.1f} "
        f"download_mb_s={best.mb_s if best else 0:.0f} nginx_mb_s={nginx.mb_s if nginx else 0:.0f} "
        f"download_ratio={ratio:.2f} download_rss_growth_mb={growth:.1f}"
    )


def _aims(figures: DownloadFigures) -> list[str]:
    if not figures.runs:
        return []
    growth = max((r.rss_growth_mb for r in figures.runs if r.label != "nginx alone"), default=0.0)
    lines = ["", "Aims, at each pace:", ""]
    lines.append(
        f"- service memory growth at most {RSS_GROWTH_AIM_MB:.0f} MB: largest {growth:.1f} MiB, "
        f"{'met' if growth <= RSS_GROWTH_AIM_MB else 'NOT met'}"
    )
    for pace in sorted({r.pace_bytes_s for r in figures.runs}, reverse=True):
        name = _pace(pace)
        direct, offload = figures.ratio("service", pace), figures.ratio("service + x-accel", pace)
        lines.append(
            f"- {name}: service {direct:.2f} of nginx (aim {DIRECT_RATIO_AIM}: "
            f"{'met' if direct >= DIRECT_RATIO_AIM else 'NOT met'}), with offload {offload:.2f} "
            f"(aim {OFFLOAD_RATIO_AIM}: {'met' if offload >= OFFLOAD_RATIO_AIM else 'NOT met'})"
        )
    return lines


def _unspent(figures: DownloadFigures) -> list[str]:
    """A note for each run whose clients all got the file but left keys unspent."""
    return [
        f"{run.label}, {_pace(run.pace_bytes_s)}: {run.ok - run.keys_spent} of "
        f"{run.ok} keys whose clients read the whole file were not spent"
        + (
            ": the service counts its last chunk only if the connection is still up at its "
            "next await, and these clients close as soon as they have the last byte"
            if run.label == "service"
            else ""
        )
        for run in figures.runs
        if 0 <= run.keys_spent < run.ok
    ]


def _nginx_version() -> str:
    binary = nginx_binary()
    if binary is None:
        return "nginx ?"
    completed = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    return completed.stderr.strip().removeprefix("nginx version: ").replace("/", " ")


def report(results: SoakResults, wall_s: float, command: str) -> str:
    """The Markdown tables, the notes, then the summary line last."""
    lines = [
        f"# Soak: `{command}`",
        "",
        f"Python {platform.python_version()}, uvicorn {_version('uvicorn')}, "
        f"mosquitto {_mosquitto_version()}, {_nginx_version()}, {os.cpu_count()} CPUs shared "
        "by every process; "
        f"{wall_s:.0f} s in all.",
        "",
        *_rollout_tables(results.rollout),
    ]
    if results.downloads.runs:
        lines += ["", *_download_tables(results.downloads), *_aims(results.downloads)]
    notes = results.rollout.notes + results.notes + _unspent(results.downloads)
    if notes:
        lines += ["", "Notes:", "", *(f"- {note}" for note in notes)]
    lines += ["", "```", summary_line(results), "```"]
    return "\n".join(lines)
