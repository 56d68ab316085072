"""What the bench prints: the measurements, a Markdown table, and the one-line summary."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import platform
import statistics
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from bench.raw import Rate
from orchestrator.embedded import mosquitto_binary
from orchestrator.service import service_loop_factory

CREATE_BATCH = 100  # devices created per asyncio.gather (redis-py's pool holds 100 connections)
OVERSHOOT_MAX_IN_FLIGHT = 200
OVERSHOOT_MIN_DEVICES = 20
OVERSHOOT_MAX_FAILURE_RATE = 0.05
BURST_GAP_S = 0.08  # a pause this long between two commands ends a burst (TICK_S is 0.1)


@dataclass
class Round:
    """The raw zmqtt baselines and run 2 (answers held), measured back to back."""

    zmqtt_publish: Rate | None = None
    zmqtt_receive: Rate | None = None
    result_publisher: Rate | None = None  # the fleet publishing results, in the receive baseline
    dispatch_alone: Rate | None = None  # engine, fleet holding its answers
    ingest_burst: Rate | None = None  # engine, held answers published at once
    raw_cpu_us: float = 0.0  # this process's CPU time per result, zmqtt's raw receive
    engine_cpu_us: float = 0.0  # the same in the engine's burst

    @property
    def dispatch_ratio(self) -> float:
        return ratio(self.dispatch_alone, self.zmqtt_publish)

    @property
    def ingest_ratio(self) -> float:
        return ratio(self.ingest_burst, self.zmqtt_receive)


def median_round(rounds: list[Round], by: Callable[[Round], float]) -> Round:
    """The round whose ratio is the median (the lower one of the middle two); empty: blank."""
    if not rounds:
        return Round()
    ranked = sorted(rounds, key=by)
    return ranked[(len(ranked) - 1) // 2]


@dataclass
class Results:
    """Everything measured in one run of the bench."""

    devices: int
    overshoot_devices: int
    download: bool
    rounds: list[Round] = field(default_factory=list)
    aiomqtt_publish: Rate | None = None
    aiomqtt_receive: Rate | None = None
    zmqtt_batched_publish: Rate | None = None  # FastStream/zmqtt on the engine's transport
    zmqtt_batched_receive: Rate | None = None  # zmqtt on the engine's transport
    dispatch: Rate | None = None  # engine, fleet answering at once
    dispatch_first_command_s: float = 0.0
    ingest_interleaved: Rate | None = None
    overshoot: int | None = None
    overshoot_sent: int = 0
    overshoot_state: str = ""
    raw_bytes_per_command: float = 0.0
    engine_bytes_per_command: float = 0.0
    redis_calls: dict[str, dict[str, float]] = field(default_factory=dict)
    cpu_busy: dict[str, float] = field(default_factory=dict)  # this process's CPU s / wall s
    bursts: dict[str, str] = field(default_factory=dict)  # how commands arrived, per run
    arrivals: dict[str, list[float]] = field(default_factory=dict)  # s after the rollout began
    notes: list[str] = field(default_factory=list)
    setup_s: dict[str, float] = field(default_factory=dict)


def bursts(arrivals: list[float], gap_s: float = BURST_GAP_S) -> str:
    """How the commands came: bursts (one per dispatch step) and the pauses between them."""
    times = sorted(arrivals)
    if len(times) < 2:
        return "too few commands to tell"
    groups: list[list[float]] = [[times[0]]]
    for previous, current in itertools.pairwise(times):
        if current - previous > gap_s:
            groups.append([])
        groups[-1].append(current)
    sizes = [len(group) for group in groups]
    spans = [group[-1] - group[0] for group in groups]
    pauses = [later[0] - earlier[-1] for earlier, later in itertools.pairwise(groups)]
    text = (
        f"{len(groups)} bursts of median {statistics.median(sizes):.0f} commands, each "
        f"received over median {statistics.median(spans) * 1000:.0f} ms"
    )
    if pauses:
        text += f", with median {statistics.median(pauses) * 1000:.0f} ms of silence between bursts"
        text += f" ({sum(pauses) / (times[-1] - times[0]):.0%} of the dispatch time)"
    return text


def per_device(before: dict[str, int], after: dict[str, int], devices: int) -> dict[str, float]:
    """Redis calls per device between two command_stats snapshots, biggest first."""
    delta = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    shown = {name: calls / devices for name, calls in delta.items() if calls}
    return dict(sorted(shown.items(), key=lambda item: -item[1]))


def _rate(rate: Rate | None) -> str:
    if rate is None:
        return "not measured"
    text = f"{rate.per_s:,.0f}/s ({rate.count:,} in {rate.seconds:.2f} s)"
    return f"{text}; {rate.note}" if rate.note else text


def ratio(engine: Rate | None, reference: Rate | None) -> float:
    """engine / reference, 0 when either is missing."""
    if engine is None or reference is None or not reference.per_s:
        return 0.0
    return engine.per_s / reference.per_s


def _ratios(values: Iterable[float]) -> str:
    return ", ".join(f"{value:.2f}" for value in values) or "none measured"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


def _mosquitto_version() -> str:
    binary = mosquitto_binary()
    if binary is None:
        return "?"
    completed = subprocess.run([binary, "-h"], capture_output=True, text=True, check=False)
    first = (completed.stdout or completed.stderr).splitlines()
    return first[0].removeprefix("mosquitto version ").strip() if first else "?"


def _redis_version(binary: str) -> str:
    completed = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    for part in completed.stdout.split():
        if part.startswith("v="):
            return part[2:]
    return "?"


def report(results: Results, wall_s: float, command: str, redis_binary: str) -> str:
    """The Markdown table, the notes, and last the one-line summary."""
    # Each pair of rows comes from the round whose ratio is the median: one slow stretch of a
    # second or two, in the engine's run or in the baseline's, moves a single round a lot.
    by_dispatch = median_round(results.rounds, lambda r: r.dispatch_ratio)
    by_ingest = median_round(results.rounds, lambda r: r.ingest_ratio)
    zp, zr = by_dispatch.zmqtt_publish, by_ingest.zmqtt_receive
    dispatch_ratio, ingest_ratio = by_dispatch.dispatch_ratio, by_ingest.ingest_ratio
    n = results.devices
    rows = [
        (
            "zmqtt raw publish (FastStream MQTTBroker, QoS 2, 500 in flight)",
            _rate(zp),
            "1.00 (reference)",
        ),
        (
            "aiomqtt raw publish (QoS 2, 500 in flight)",
            _rate(results.aiomqtt_publish),
            f"{ratio(results.aiomqtt_publish, zp):.2f} of zmqtt",
        ),
        (
            "zmqtt raw publish through the engine's transport (zmqtt's client, its writes "
            "sent once per loop turn)",
            _rate(results.zmqtt_batched_publish),
            f"{ratio(results.zmqtt_batched_publish, zp):.2f} of zmqtt",
        ),
        (
            "**engine dispatch**, fleet holds its answers (rollout created → last command "
            "received; no results meanwhile)",
            _rate(by_dispatch.dispatch_alone),
            f"**{dispatch_ratio:.2f}**",
        ),
        (
            "engine dispatch, fleet answers at once (results ingested meanwhile)",
            _rate(results.dispatch),
            f"{ratio(results.dispatch, zp):.2f}",
        ),
        (
            "zmqtt raw receive (zmqtt alone, `$share/bench/+/control/+/result`, QoS 1)",
            _rate(zr),
            "1.00 (reference)",
        ),
        (
            "aiomqtt raw receive (`$share`, QoS 1)",
            _rate(results.aiomqtt_receive),
            f"{ratio(results.aiomqtt_receive, zr):.2f} of zmqtt",
        ),
        (
            "zmqtt raw receive through the engine's transport (its writes sent once per loop turn)",
            _rate(results.zmqtt_batched_receive),
            f"{ratio(results.zmqtt_batched_receive, zr):.2f} of zmqtt",
        ),
        (
            "**engine ingest**, burst (held answers published at once → `succeeded` = N)",
            _rate(by_ingest.ingest_burst),
            f"**{ingest_ratio:.2f}**",
        ),
        (
            "engine ingest, interleaved with dispatch (first answer → `succeeded` = N)",
            _rate(results.ingest_interleaved),
            f"{ratio(results.ingest_interleaved, zr):.2f}",
        ),
        (
            "the fleet's result publisher (aiomqtt, QoS 1, 500 in flight), in the receive baseline",
            _rate(by_ingest.result_publisher),
            "the ceiling of both receive rates",
        ),
    ]
    download_note = (
        "the fleet downloads the firmware before answering (--download)"
        if results.download
        else "the fleet answers **without downloading** the firmware (--download to fetch it)"
    )
    overshoot = "not measured" if results.overshoot is None else str(results.overshoot)
    rows.append(
        (
            f"overshoot: commands received after the threshold was crossed "
            f"({results.overshoot_devices:,} devices all failing; max_failure_rate "
            f"{OVERSHOOT_MAX_FAILURE_RATE:.0%}, min_devices {OVERSHOOT_MIN_DEVICES})",
            f"{overshoot} (of {results.overshoot_sent} sent; rollout {results.overshoot_state})",
            f"design bound: max_in_flight {OVERSHOOT_MAX_IN_FLIGHT}",
        )
    )
    lines = [
        f"## OTA orchestrator bench: {n:,} devices",
        "",
        "| measurement | rate | ratio |",
        "| --- | --- | --- |",
        *(f"| {a} | {b} | {c} |" for a, b, c in rows),
        "",
        "Ratios: engine rate / zmqtt raw rate through FastStream's MQTTBroker (the engine "
        "publishes and reads results with zmqtt directly, on a transport of its own that sends "
        "its writes once per loop turn); aiomqtt rows and the rows through "
        "the engine's transport: that rate / zmqtt's with its own transport. Bold: the "
        "summary line's numbers, each the median of "
        f"{len(results.rounds)} rounds; a round is the zmqtt baselines and then run 2, back to "
        "back. The zmqtt and run 2 rows show the median round; the other rows are measured "
        "once and compared with those.",
        "",
        f"- dispatch ratio by round: {_ratios(r.dispatch_ratio for r in results.rounds)}",
        f"- ingest ratio by round: {_ratios(r.ingest_ratio for r in results.rounds)}",
        f"- {download_note}; {n:,} HTTP downloads measure the HTTP server, not the engine",
        f"- devices were created straight through DeviceStore ({CREATE_BATCH} at a time), not "
        "over HTTP, which would take minutes",
        f"- first command received {results.dispatch_first_command_s:.2f} s after the rollout "
        "was created (the API's 201 answer; counted in the dispatch time)",
        f"- command size: engine {results.engine_bytes_per_command:.0f} B, raw "
        f"{results.raw_bytes_per_command:.0f} B",
        *(f"- {note}" for note in results.notes),
    ]
    for run, text in results.bursts.items():
        lines.append(f"- commands in {run}: {text}")
    busy = ", ".join(f"{phase} {share:.0%}" for phase, share in results.cpu_busy.items())
    lines += [
        "",
        f"CPU of this process (the service and the bench's side; 100% = one core): {busy}",
        "",
    ]
    if results.rounds:
        raw_us = ", ".join(f"{r.raw_cpu_us:.0f}" for r in results.rounds)
        engine_us = ", ".join(f"{r.engine_cpu_us:.0f}" for r in results.rounds)
        lines += [
            "CPU time of this process per result received, by round: zmqtt raw receive "
            f"{raw_us} µs; engine ingest burst {engine_us} µs",
            "",
        ]
    lines += [
        "Redis calls per device (INFO commandstats; commands inside Lua scripts count too):",
        "",
    ]
    for phase, calls in results.redis_calls.items():
        shown = ", ".join(f"{name} {count:.2f}" for name, count in calls.items() if count >= 0.01)
        lines.append(f"- {phase}: {shown}")
    timings = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in results.setup_s.items())
    lines += [
        "",
        "| machine | |",
        "| --- | --- |",
        f"| CPUs | {os.cpu_count()} |",
        f"| Python | {platform.python_version()} ({platform.python_implementation()}) |",
        f"| event loop (the service's and the raw clients') | {_event_loop()} |",
        f"| mosquitto | {_mosquitto_version()} |",
        f"| redis-server | {_redis_version(redis_binary)} |",
        f"| faststream / zmqtt / aiomqtt / paho-mqtt / redis-py | {_version('faststream')} / "
        f"{_version('zmqtt')} / {_version('aiomqtt')} / {_version('paho-mqtt')} / "
        f"{_version('redis')} |",
        f"| command | `{command}` |",
        f"| wall time | {wall_s:.1f} s ({timings}) |",
        "",
        f"dispatch_ratio={dispatch_ratio:.2f} ingest_ratio={ingest_ratio:.2f} "
        f"overshoot={overshoot} devices={n}",
    ]
    return "\n".join(lines)


def _event_loop() -> str:
    loop = service_loop_factory()
    return "asyncio" if loop is asyncio.new_event_loop else f"uvloop {_version('uvloop')}"


def log_problems(path: Path) -> list[str]:
    """Warnings and errors of the service's JSON log, counted by message, most frequent first."""
    counts: dict[str, int] = {}
    with contextlib.suppress(OSError), path.open() as log:
        for line in log:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("level") in ("warning", "error", "critical"):
                detail = str(entry.get("error", ""))[:120]
                key = f"{entry['level']}: {entry.get('event', '')}" + (
                    f" ({detail})" if detail else ""
                )
                counts[key] = counts.get(key, 0) + 1
    ranked = sorted(counts.items(), key=lambda item: -item[1])
    return [f"service log: {count} x {key}" for key, count in ranked[:5]]
