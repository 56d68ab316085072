"""`ota simulate`: a fleet of simulated devices that obeys the service's commands until Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn

import typer
from rich.console import Console
from rich.filesize import decimal
from rich.table import Table

from orchestrator.cli.output import console
from orchestrator.cli.server import Server, connected
from orchestrator.client import ApiClient
from orchestrator.simulator import (
    DEFAULT_BOOK_PATH,
    Behaviour,
    FleetStats,
    parse_fail_version,
    parse_latency,
    parse_rate,
    parse_stall,
)

if TYPE_CHECKING:
    from faststream.mqtt.utils import MQTTUrl

DEFAULT_MQTT_URL = "mqtt://127.0.0.1:1883"
STATUSES = ("received", "downloading", "installing", "success", "failed", "rejected")
HEALTH_STATUSES = ("healthy", "unhealthy")  # health reports, under a soak (shown when sent)


def behaviour_from_options(
    *,
    fail_rate: str = "0",
    fail_version: Sequence[str] = (),
    offline: str = "0",
    reject: str = "0",
    latency: str = "0",
    broken_download: str = "0",
    wrong_version: str = "0",
    stall: str = "0",
    stall_at: str = "50%",
    stall_for: float = 60.0,
    stall_hangup: bool = False,
    revert: str = "0",
    die_after_success: str = "0",
    seed: int = 0,
) -> Behaviour:
    """The Behaviour the options spell; ValueError naming the option, the value and the fix."""
    return Behaviour(
        fail_rate=parse_rate(fail_rate, "--fail-rate"),
        fail_versions=dict(parse_fail_version(text) for text in fail_version),
        reject_rate=parse_rate(reject, "--reject"),
        offline_rate=parse_rate(offline, "--offline"),
        latency_s=parse_latency(latency),
        broken_download_rate=parse_rate(broken_download, "--broken-download"),
        wrong_version_rate=parse_rate(wrong_version, "--wrong-version"),
        stall_rate=parse_rate(stall, "--stall"),
        stall=parse_stall(stall_at, stall_for, hangup=stall_hangup),
        revert_rate=parse_rate(revert, "--revert"),
        die_after_success_rate=parse_rate(die_after_success, "--die-after-success"),
        seed=seed,
    )


def status_line(stats: FleetStats, elapsed_s: float) -> str:
    """One line of progress: connections, commands, results by status, downloads."""
    shown = (*STATUSES, *HEALTH_STATUSES)
    results = " ".join(f"{s} {stats.results[s]}" for s in shown if stats.results[s])
    bad_images = stats.size_mismatches + stats.checksum_failures
    return (
        f"{elapsed_s:6.0f}s  {stats.connected}/{stats.devices - stats.offline} connected"
        f" ({stats.offline} offline) · {stats.commands} commands · {results or 'no results'}"
        f" · {stats.downloads} downloads ({stats.resumed_downloads} resumed,"
        f" {stats.stalled_downloads} stalled, {decimal(stats.bytes_downloaded)})"
        f" · {bad_images} bad images"
    )


def stats_table(stats: FleetStats) -> Table:
    """The end-of-run summary."""
    table = Table(title="simulated fleet", show_header=False, title_justify="left")
    table.add_column("what")
    table.add_column("count", justify="right")
    rows: list[tuple[str, object]] = [
        ("devices", stats.devices),
        ("offline (never connected)", stats.offline),
        ("connections", stats.connects),
        ("failed connection attempts", stats.connect_failures),
        ("tokens rotated (old login refused)", stats.tokens_rotated),
        ("commands obeyed", stats.commands),
        ("duplicate commands dropped", stats.duplicates),
        ("malformed messages ignored", stats.malformed),
        *((f"results: {s}", stats.results[s]) for s in STATUSES),
        *((f"results: {s}", stats.results[s]) for s in HEALTH_STATUSES if stats.results[s]),
        ("downloads", stats.downloads),
        ("resumed downloads", stats.resumed_downloads),
        ("stalled downloads", stats.stalled_downloads),
        ("bytes downloaded", f"{stats.bytes_downloaded} ({decimal(stats.bytes_downloaded)})"),
        ("size mismatches", stats.size_mismatches),
        ("checksum failures", stats.checksum_failures),
    ]
    for what, count in rows:
        table.add_row(what, str(count))
    return table


def _usage_error(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@connected()
def simulate(
    target: Server,
    devices: Annotated[int, typer.Option(help="How many devices to simulate")] = 10,
    fail_rate: Annotated[
        str, typer.Option(help="Fraction of firmware installs that fail (0.05 or 5%)")
    ] = "0",
    fail_version: Annotated[
        list[str] | None,
        typer.Option(help="VERSION=RATE: installs of VERSION also fail at RATE (repeatable)"),
    ] = None,
    offline: Annotated[str, typer.Option(help="Fraction of devices that never connect")] = "0",
    reject: Annotated[
        str, typer.Option(help="Fraction of commands answered rejected after received")
    ] = "0",
    latency: Annotated[
        str, typer.Option(help="MIN..MAX seconds of delay before each result, e.g. 0.1..0.5")
    ] = "0",
    broken_download: Annotated[
        str,
        typer.Option(help="Fraction of downloads that break off half-way and resume with Range"),
    ] = "0",
    wrong_version: Annotated[
        str, typer.Option(help="Fraction of firmware successes that report another version")
    ] = "0",
    stall: Annotated[
        str,
        typer.Option(
            help="Fraction of downloads that stall once: stop reading at --stall-at for "
            "--stall-for seconds, then go on or resume with Range"
        ),
    ] = "0",
    stall_at: Annotated[
        str, typer.Option(help="How far a stalling download gets first (0.3 or 30%)")
    ] = "50%",
    stall_for: Annotated[
        float, typer.Option(help="Seconds a stalling download reads nothing")
    ] = 60.0,
    stall_hangup: Annotated[
        bool,
        typer.Option(
            help="A stalling download closes its connection and comes back after --stall-for "
            "(default: it holds the connection open)"
        ),
    ] = False,
    revert: Annotated[
        str,
        typer.Option(
            help="Under a health soak: fraction of firmware successes whose health reports "
            "then name the old version (the bootloader went back)"
        ),
    ] = "0",
    die_after_success: Annotated[
        str,
        typer.Option(
            help="Under a health soak: fraction of firmware successes followed by no health "
            "report at all (the device bricked after its reboot)"
        ),
    ] = "0",
    seed: Annotated[int, typer.Option(help="Seed of every random draw (same seed, same run)")] = 0,
    tags: Annotated[
        str, typer.Option(help="Comma-separated tags the devices carry (new ones get them)")
    ] = "",
    mqtt_url: Annotated[
        str | None,
        typer.Option(envvar="OTA_MQTT_URL", show_default=DEFAULT_MQTT_URL, help="The MQTT broker"),
    ] = None,
    mqtt_version: Annotated[
        str, typer.Option(envvar="OTA_MQTT_VERSION", help="MQTT protocol: 5.0 or 3.1.1")
    ] = "5.0",
    state: Annotated[
        Path, typer.Option(help="Device book: ids and tokens of the devices made so far")
    ] = DEFAULT_BOOK_PATH,
    duration: Annotated[
        float | None, typer.Option(help="Stop after this many seconds (default: at Ctrl-C)")
    ] = None,
    status_every: Annotated[float, typer.Option(help="Seconds between status lines")] = 5.0,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the final stats as JSON on stdout")
    ] = False,
) -> None:
    """Simulate devices that register (or reuse) themselves and obey commands, until Ctrl-C."""
    try:
        behaviour = behaviour_from_options(
            fail_rate=fail_rate,
            fail_version=fail_version or (),
            offline=offline,
            reject=reject,
            latency=latency,
            broken_download=broken_download,
            wrong_version=wrong_version,
            stall=stall,
            stall_at=stall_at,
            stall_for=stall_for,
            stall_hangup=stall_hangup,
            revert=revert,
            die_after_success=die_after_success,
            seed=seed,
        )
    except ValueError as exc:
        _usage_error(str(exc))
    # Here, not above: the MQTT and logging libraries load only when devices are to run.
    from faststream.mqtt.utils import parse_mqtt_url

    from orchestrator.logs import configure_logging

    try:
        broker = parse_mqtt_url(mqtt_url or DEFAULT_MQTT_URL)
    except ValueError as exc:
        _usage_error(f"--mqtt-url {mqtt_url!r}: {exc} Write it like mqtt://host:1883.")
    if devices < 0:
        _usage_error(f"--devices must be 0 or more, got {devices}")
    if mqtt_version not in ("5.0", "3.1.1"):
        _usage_error(f"--mqtt-version must be 5.0 or 3.1.1, got {mqtt_version!r}")
    if duration is not None and not duration > 0:
        _usage_error(f"--duration must be a number of seconds above 0, got {duration}")
    if not status_every > 0:
        _usage_error(f"--status-every must be a number of seconds above 0, got {status_every}")
    version: Literal["5.0", "3.1.1"] = "5.0" if mqtt_version == "5.0" else "3.1.1"
    configure_logging("console" if sys.stderr.isatty() else "json", "warning")
    out = console(stderr=json_output)
    run = _Run(
        api=target.client(),
        broker=broker,
        mqtt_version=version,
        state=state,
        behaviour=behaviour,
        devices=devices,
        tags=tuple(tag.strip() for tag in tags.split(",") if tag.strip()),
        duration_s=duration,
        status_every_s=status_every,
        console=out,
    )
    stats = asyncio.run(run.main())
    if json_output:
        typer.echo(json.dumps(stats.as_dict(), indent=2))
    else:
        out.print(stats_table(stats))


@dataclass
class _Run:
    """One `ota simulate` run: start the fleet, report every few seconds, stop at the end."""

    api: ApiClient
    broker: MQTTUrl
    mqtt_version: Literal["5.0", "3.1.1"]
    state: Path
    behaviour: Behaviour
    devices: int
    tags: tuple[str, ...]
    duration_s: float | None
    status_every_s: float
    console: Console

    async def main(self) -> FleetStats:
        from orchestrator.simulator import Fleet

        broker, state = self.broker, self.state
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        started = loop.time()
        try:
            async with self.api:
                fleet = Fleet(
                    self.api,
                    broker.host,
                    broker.port,
                    self.behaviour,
                    state_path=state,
                    mqtt_version=self.mqtt_version,
                    mqtt_tls=broker.tls,
                )
                async with fleet:
                    if not await _unless_stopped(fleet.start(self.devices, tags=self.tags), stop):
                        return fleet.stats
                    stats = fleet.stats
                    self.console.print(
                        f"{stats.devices} simulated devices ({stats.offline} offline) on "
                        f"{broker.host}:{broker.port}; device book {state}; Ctrl-C stops",
                        markup=False,
                        soft_wrap=True,
                    )
                    if stats.tokens_rotated:
                        self.console.print(
                            f"{stats.tokens_rotated} devices of the book were refused by the "
                            "broker (made before it kept per-device logins): their tokens were "
                            "rotated and the book updated",
                            markup=False,
                            soft_wrap=True,
                        )
                    deadline = None if self.duration_s is None else started + self.duration_s
                    while not stop.is_set():
                        wait_s = self.status_every_s
                        if deadline is not None:
                            wait_s = min(wait_s, deadline - loop.time())
                            if wait_s <= 0:
                                break
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), wait_s)
                        line = status_line(fleet.stats, loop.time() - started)
                        self.console.print(line, markup=False, soft_wrap=True)
                return fleet.stats
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)


async def _unless_stopped(work: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """Run `work` unless `stop` is set first (Ctrl-C while starting); True when it finished."""
    task = asyncio.create_task(work)
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return False
    task.result()  # its error, if any
    return True


def register(app: typer.Typer) -> None:
    """Add `simulate` to the `ota` app."""
    app.command("simulate")(simulate)
