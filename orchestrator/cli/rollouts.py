"""Rollout verbs against the API: plan, apply, status, list, events and the operator actions."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from orchestrator.api.rollout_schemas import ExclusionOut, RolloutEvent, RolloutOut, WavePreview
from orchestrator.cli.output import console, print_json, show_records, table
from orchestrator.cli.plan_simulation import (
    DEFAULT_LATENCY,
    ByStratum,
    Devices,
    FailureRate,
    ResultLatency,
    Runs,
    Seed,
    Simulate,
    fleet_of,
    simulate_plan,
)
from orchestrator.cli.plans import Unreadable, read_plan_text
from orchestrator.cli.progress import STATE_STYLE, exit_code, percent, render, watch
from orchestrator.cli.server import Json, Server, connected, run
from orchestrator.client import ApiClient
from orchestrator.domain.plans import PlanError, parse_plan
from orchestrator.domain.states import OPERATOR_ACTIONS, RolloutAction
from orchestrator.domain.synthetic_fleet import RUNS

SHOWN_EXCLUDED = 5

PlanPath = Annotated[Path, typer.Argument(help="The plan, YAML or JSON", metavar="PLAN.yaml")]
RolloutId = Annotated[str, typer.Argument(help="The rollout's id", metavar="ID")]
Watch = Annotated[
    bool, typer.Option("--watch", "-w", help="Follow it live; exit 0 if it completes, 1 if not")
]


def _checked_plan(path: Path) -> str:
    """The plan's text once it passes the offline check; exit 1 with every problem if not."""
    try:
        text = read_plan_text(path)
        parse_plan(text, source=str(path))
    except Unreadable as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    except PlanError as exc:
        for problem in exc.problems:
            typer.echo(str(problem), err=True)
        raise typer.Exit(1) from None
    return text


@connected()
def plan(
    target: Server,
    path: PlanPath,
    as_json: Json = False,
    simulated: Simulate = False,
    devices: Devices = None,
    failure_rate: FailureRate = None,
    runs: Runs = RUNS,
    by_stratum: ByStratum = None,
    result_latency: ResultLatency = DEFAULT_LATENCY,
    seed: Seed = 0,
) -> None:
    """Dry run on the server: the devices each wave reaches, and who is left out and why.

    With --simulate, offline instead: the plan run --runs times against a synthetic fleet of
    --devices whose true failure rate is --failure-rate; how often it halts, completes or
    pauses, how many devices it reaches and how many bad installs it lets through.
    """
    text = _checked_plan(path)
    if simulated:
        fleet = fleet_of(devices, failure_rate, by_stratum, result_latency)
        simulate_plan(parse_plan(text), fleet, runs=runs, seed=seed, as_json=as_json)
        return
    preview = run(lambda api: api.preview_rollout(text), target)
    if as_json:
        print_json(preview)
        return
    out = console()
    out.print(f"[bold]{preview.name}[/]: {preview.total} devices, nothing started")
    stratified = any(wave.strata for wave in preview.waves)
    columns = ("wave", "adds", "reaches", "approval", "bake") + (("strata",) if stratified else ())
    waves = table(columns, right=("adds", "reaches"))
    for wave in preview.waves:
        row = _wave_row(wave)
        if stratified:
            row += (", ".join(f"{label} {n}" for label, n in wave.strata.items()),)
        waves.add_row(*row)
    out.print(waves)
    if preview.versions:
        mix = ", ".join(f"{version} {n}" for version, n in preview.versions.items())
        out.print(f"firmware versions: {mix}")
    for warning in preview.warnings:
        out.print(f"[yellow]warning[/]: {warning}")
    if not preview.exclusions:
        out.print("excluded: none")
        return
    out.print(f"excluded: {len(preview.exclusions)} devices")
    by_reason: dict[str, list[ExclusionOut]] = {}
    for exclusion in preview.exclusions:
        by_reason.setdefault(exclusion.reason, []).append(exclusion)
    for reason, items in sorted(by_reason.items()):
        ids = ", ".join(item.device_id for item in items[:SHOWN_EXCLUDED])
        more = f" and {len(items) - SHOWN_EXCLUDED} more" if len(items) > SHOWN_EXCLUDED else ""
        out.print(f"  {len(items)} {items[0].why} ({reason}): {ids}{more}")


def _wave_row(wave: WavePreview) -> tuple[str, ...]:
    return wave.name, str(wave.devices), str(wave.reach), wave.approval, wave.bake


@connected()
def apply(target: Server, path: PlanPath, watch_it: Watch = False, as_json: Json = False) -> None:
    """Start a rollout from a plan; with --watch, follow it to its end."""
    text = _checked_plan(path)
    out = console()

    async def go(api: ApiClient) -> RolloutOut:
        rollout = await api.create_rollout(text)
        if as_json and not watch_it:
            return rollout
        waves = len(rollout.waves)
        out.print(
            f"started [bold]{rollout.name}[/] {rollout.id}: {rollout.total} devices "
            f"in {waves} wave{'' if waves == 1 else 's'}"
        )
        if not watch_it:
            out.print(f"follow it with: ota status {rollout.id} --watch", style="dim")
            return rollout
        return await watch(api, rollout.id, out)

    rollout = run(go, target)
    if as_json:
        print_json(rollout)
    if watch_it:
        raise typer.Exit(exit_code(rollout))


@connected()
def status(
    target: Server, rollout_id: RolloutId, watch_it: Watch = False, as_json: Json = False
) -> None:
    """A rollout's waves, counts by state and failure rate; with --watch, live to its end."""
    out = console()

    async def go(api: ApiClient) -> RolloutOut:
        if watch_it:
            return await watch(api, rollout_id, out)
        return await api.rollout(rollout_id)

    rollout = run(go, target)
    if as_json:
        print_json(rollout)
    elif not watch_it:
        out.print(render(rollout))
    if watch_it:
        raise typer.Exit(exit_code(rollout))


@connected()
def list_rollouts(
    target: Server,
    state: Annotated[str, typer.Option(help="Only rollouts in this state")] = "",
    as_json: Json = False,
) -> None:
    """The project's rollouts, newest first."""
    rollouts = run(lambda api: api.rollouts(state=state), target)
    show_records(
        rollouts,
        as_json=as_json,
        none="no rollouts" + (f" in state {state}" if state else ""),
        columns=("id", "name", "state", "wave", "devices", "failure rate", "updated"),
        row=_rollout_row,
    )


def _rollout_row(rollout: RolloutOut) -> tuple[str | Text, ...]:
    return (
        rollout.id,
        rollout.name,
        Text(rollout.state, style=STATE_STYLE.get(rollout.state, "")),
        rollout.wave,
        str(rollout.total),
        f"{percent(rollout.failure_rate)} / {percent(rollout.max_failure_rate)}",
        rollout.updated_at,
    )


@connected()
def events(target: Server, rollout_id: RolloutId, as_json: Json = False) -> None:
    """The audit trail: who or what changed the rollout, when, and why (with the figures)."""
    trail = run(lambda api: api.rollout_events(rollout_id), target)
    show_records(
        trail,
        as_json=as_json,
        none="no events",
        columns=("at", "by", "action", "state", "why"),
        row=_event_row,
        fold=True,
    )


def _event_row(event: RolloutEvent) -> tuple[str, ...]:
    change = f"{event.from_state or '-'} → {event.to}" if event.to else ""
    why = event.reason
    if event.details:
        why += "\n" + json.dumps(event.details, separators=(", ", ": "))
    return event.at, event.actor, event.action, change, why


def _action(action: RolloutAction) -> Callable[..., None]:
    @connected()
    def act(
        target: Server,
        rollout_id: RolloutId,
        reason: Annotated[str, typer.Option(help="Recorded in the audit trail")] = "",
        as_json: Json = False,
    ) -> None:
        rollout = run(
            lambda api: api.rollout_action(rollout_id, action, reason),
            target,
        )
        if as_json:
            print_json(rollout)
            return
        state = rollout.state
        console().print(
            f"{rollout.name} {rollout.id}: [{STATE_STYLE.get(state, '')}]{state}[/]"
            + (f" ({rollout.reason})" if rollout.reason else "")
        )

    act.__doc__ = OPERATOR_ACTIONS[action]
    return act


def register(app: typer.Typer) -> None:
    """Add these verbs to the `ota` app."""
    app.command("plan")(plan)
    app.command("apply")(apply)
    app.command("status")(status)
    app.command("list")(list_rollouts)
    app.command("events")(events)
    for action in OPERATOR_ACTIONS:
        app.command(action.value)(_action(action))
