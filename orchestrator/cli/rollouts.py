"""Rollout verbs against the API: plan, apply, status, list, events and the operator actions."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from orchestrator.cli.plans import Unreadable, read_plan_text
from orchestrator.cli.progress import STATE_STYLE, exit_code, percent, render, watch
from orchestrator.cli.server import ApiKey, ApiUrl, Json, Project, print_json, run, server
from orchestrator.client import ApiClient
from orchestrator.domain.plans import PlanError, parse_plan

ACTIONS = {
    "pause": "Stop sending; devices already sent go on. `ota resume` continues.",
    "resume": "Continue a paused rollout.",
    "promote": "Start the wave that waits for manual approval.",
    "abort": "Stop for good: unused keys are revoked, devices not yet sent are cancelled.",
    "rollback": "Send the plan's rollback firmware to every device that took the new one.",
}
SHOWN_EXCLUDED = 5

PlanPath = Annotated[Path, typer.Argument(help="The plan, YAML or JSON", metavar="PLAN.yaml")]
RolloutId = Annotated[str, typer.Argument(help="The rollout's id", metavar="ID")]
Watch = Annotated[
    bool, typer.Option("--watch", "-w", help="Follow it live; exit 0 if it completes, 1 if not")
]


def _console() -> Console:
    return Console(highlight=False)


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


def plan(
    path: PlanPath,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
    project: Project = None,
    as_json: Json = False,
) -> None:
    """Dry run on the server: the devices each wave reaches, and who is left out and why."""
    text = _checked_plan(path)
    preview = run(
        lambda api: api.create_rollout(text, dry_run=True), server(api_url, api_key, project)
    )
    if as_json:
        print_json(preview)
        return
    console = _console()
    console.print(f"[bold]{preview['name']}[/]: {preview['total']} devices, nothing started")
    table = Table(box=None, header_style="dim")
    for column in ("wave", "adds", "reaches", "approval", "bake"):
        table.add_column(column, justify="right" if column in ("adds", "reaches") else "left")
    for wave in preview["waves"]:
        table.add_row(
            wave["name"], str(wave["devices"]), str(wave["reach"]), wave["approval"], wave["bake"]
        )
    console.print(table)
    excluded = preview.get("exclusions", [])
    if not excluded:
        console.print("excluded: none")
        return
    console.print(f"excluded: {len(excluded)} devices")
    by_reason: dict[str, list[Mapping[str, Any]]] = {}
    for exclusion in excluded:
        by_reason.setdefault(exclusion["reason"], []).append(exclusion)
    for reason, items in sorted(by_reason.items()):
        ids = ", ".join(item["device_id"] for item in items[:SHOWN_EXCLUDED])
        more = f" and {len(items) - SHOWN_EXCLUDED} more" if len(items) > SHOWN_EXCLUDED else ""
        console.print(f"  {len(items)} {items[0]['why']} ({reason}): {ids}{more}")


def apply(
    path: PlanPath,
    watch_it: Watch = False,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
    project: Project = None,
    as_json: Json = False,
) -> None:
    """Start a rollout from a plan; with --watch, follow it to its end."""
    text = _checked_plan(path)
    console = _console()

    async def go(api: ApiClient) -> dict[str, Any]:
        rollout = await api.create_rollout(text)
        if as_json and not watch_it:
            return rollout
        waves = len(rollout["waves"])
        console.print(
            f"started [bold]{rollout['name']}[/] {rollout['id']}: {rollout['total']} devices "
            f"in {waves} wave{'' if waves == 1 else 's'}"
        )
        if not watch_it:
            console.print(f"follow it with: ota status {rollout['id']} --watch", style="dim")
            return rollout
        return await watch(api, rollout["id"], console)

    rollout = run(go, server(api_url, api_key, project))
    if as_json:
        print_json(rollout)
    if watch_it:
        raise typer.Exit(exit_code(rollout))


def status(
    rollout_id: RolloutId,
    watch_it: Watch = False,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
    project: Project = None,
    as_json: Json = False,
) -> None:
    """A rollout's waves, counts by state and failure rate; with --watch, live to its end."""
    console = _console()

    async def go(api: ApiClient) -> dict[str, Any]:
        if watch_it:
            return await watch(api, rollout_id, console)
        return await api.rollout(rollout_id)

    rollout = run(go, server(api_url, api_key, project))
    if as_json:
        print_json(rollout)
    elif not watch_it:
        console.print(render(rollout))
    if watch_it:
        raise typer.Exit(exit_code(rollout))


def list_rollouts(
    state: Annotated[str, typer.Option(help="Only rollouts in this state")] = "",
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
    project: Project = None,
    as_json: Json = False,
) -> None:
    """The project's rollouts, newest first."""
    rollouts = run(lambda api: api.rollouts(state=state), server(api_url, api_key, project))
    if as_json:
        print_json(rollouts)
        return
    console = _console()
    if not rollouts:
        console.print("no rollouts" + (f" in state {state}" if state else ""))
        return
    table = Table(box=None, header_style="dim")
    for column in ("id", "name", "state", "wave", "devices", "failure rate", "updated"):
        table.add_column(column)
    for rollout in rollouts:
        table.add_row(
            rollout["id"],
            rollout["name"],
            Text(rollout["state"], style=STATE_STYLE.get(rollout["state"], "")),
            rollout["wave"],
            str(rollout["total"]),
            f"{percent(rollout['failure_rate'])} / {percent(rollout['max_failure_rate'])}",
            rollout["updated_at"],
        )
    console.print(table)


def events(
    rollout_id: RolloutId,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
    project: Project = None,
    as_json: Json = False,
) -> None:
    """The audit trail: who or what changed the rollout, when, and why (with the figures)."""
    trail = run(lambda api: api.rollout_events(rollout_id), server(api_url, api_key, project))
    if as_json:
        print_json(trail)
        return
    table = Table(box=None, header_style="dim")
    for column in ("at", "by", "action", "state", "why"):
        table.add_column(column, overflow="fold")
    for event in trail:
        change = ""
        if event.get("to"):
            change = f"{event.get('from') or '-'} → {event['to']}"
        why = event.get("reason", "")
        if event.get("details"):
            why += "\n" + json.dumps(event["details"], separators=(", ", ": "))
        table.add_row(
            event.get("at", ""), event.get("actor", ""), event.get("action", ""), change, why
        )
    _console().print(table)


def _action(name: str) -> Any:
    def act(
        rollout_id: RolloutId,
        reason: Annotated[str, typer.Option(help="Recorded in the audit trail")] = "",
        api_url: ApiUrl = None,
        api_key: ApiKey = None,
        project: Project = None,
        as_json: Json = False,
    ) -> None:
        rollout = run(
            lambda api: api.rollout_action(rollout_id, name, reason),
            server(api_url, api_key, project),
        )
        if as_json:
            print_json(rollout)
            return
        state = rollout["state"]
        _console().print(
            f"{rollout['name']} {rollout['id']}: [{STATE_STYLE.get(state, '')}]{state}[/]"
            + (f" ({rollout['reason']})" if rollout.get("reason") else "")
        )

    act.__doc__ = ACTIONS[name]
    return act


def register(app: typer.Typer) -> None:
    """Add these verbs to the `ota` app."""
    app.command("plan")(plan)
    app.command("apply")(apply)
    app.command("status")(status)
    app.command("list")(list_rollouts)
    app.command("events")(events)
    for name in ACTIONS:
        app.command(name)(_action(name))
