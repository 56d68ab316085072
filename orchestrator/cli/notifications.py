"""Rollout notifications from the shell: `ota notifications create|list|delete|deliveries`.

A subscription sends the project's rollout events (all of them, or the ones named) to a URL,
signed with its secret; each notice is retried until delivered or given up, and every attempt
is kept.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from orchestrator.cli.server import ApiKey, ApiUrl, Json, Project, print_json, run, server
from orchestrator.domain.notices import Notice

notifications_app = typer.Typer(
    help="Rollout notifications: the project's rollout events, posted to a URL.",
    no_args_is_help=True,
)

EVENTS = tuple(notice.value for notice in Notice)
NotificationId = Annotated[str, typer.Argument(help="The subscription's id", metavar="ID")]
STATE_STYLE = {"pending": "yellow", "delivered": "green", "failed": "red"}


def _console() -> Console:
    return Console(highlight=False)


def checked_events(events: list[str] | None) -> list[str] | None:
    """The --event values, once each; exit 2 naming the valid ones for an unknown name."""
    if not events:
        return None
    unknown = [event for event in events if event not in EVENTS]
    if unknown:
        typer.echo(
            f"error: --event {unknown[0]!r} is not a rollout event; use one of "
            f"{', '.join(EVENTS)}, or leave --event out for every event",
            err=True,
        )
        raise typer.Exit(2)
    return list(dict.fromkeys(events))


def _events_text(events: list[str] | None) -> str:
    return ", ".join(events) if events else "every event"


def _last_status(attempts: list[dict[str, Any]]) -> str:
    """The last attempt's HTTP status, or its error when there was no answer."""
    if not attempts:
        return ""
    last = attempts[-1]
    if last.get("status_code") is not None:
        return str(last["status_code"])
    return str(last.get("error") or "")


@notifications_app.command("create")
def create_notification(
    url: Annotated[str, typer.Option(help="Where the events are posted (http or https)")],
    event: Annotated[
        list[str] | None,
        typer.Option(
            help=f"An event to send (repeatable; default every event): {', '.join(EVENTS)}",
            show_default=False,
        ),
    ] = None,
    secret: Annotated[
        str | None,
        typer.Option(
            help="The HMAC secret deliveries are signed with; generated when left out",
            show_default=False,
        ),
    ] = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
    project: Project = None,
    as_json: Json = False,
) -> None:
    """Subscribe a URL to the project's rollout events; prints the secret only this once."""
    events = checked_events(event)
    created = run(
        lambda api: api.create_notification(url, events, secret), server(api_url, api_key, project)
    )
    if as_json:
        print_json(created)
        return
    console = _console()
    console.print(f"notification  {created['id']}")
    console.print(f"url           {created['url']}")
    console.print(f"events        {_events_text(created.get('events'))}")
    console.print(f"secret        {created['secret']}  (shown only now)")


@notifications_app.command("list")
def list_notifications(
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
    project: Project = None,
    as_json: Json = False,
) -> None:
    """The project's notification subscriptions (their secrets are never shown again)."""
    subscriptions = run(lambda api: api.notifications(), server(api_url, api_key, project))
    if as_json:
        print_json(subscriptions)
        return
    console = _console()
    if not subscriptions:
        console.print("no notifications; add one with: ota notifications create --url URL")
        return
    table = Table(box=None, header_style="dim")
    for column in ("id", "url", "events", "created"):
        table.add_column(column, overflow="fold")
    for subscription in subscriptions:
        table.add_row(
            subscription["id"],
            subscription["url"],
            _events_text(subscription.get("events")),
            subscription.get("created_at", ""),
        )
    console.print(table)


@notifications_app.command("delete")
def delete_notification(
    notification_id: NotificationId,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
    project: Project = None,
    as_json: Json = False,
) -> None:
    """Delete a subscription; notices still queued for it are not sent."""
    answer = run(
        lambda api: api.delete_notification(notification_id), server(api_url, api_key, project)
    )
    if as_json:
        print_json(answer)
        return
    typer.echo(f"deleted notification {notification_id}")


@notifications_app.command("deliveries")
def deliveries(
    notification_id: NotificationId,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
    project: Project = None,
    as_json: Json = False,
) -> None:
    """The subscription's notices of the last 7 days, newest first, with their attempts."""
    notices = run(
        lambda api: api.notification_deliveries(notification_id),
        server(api_url, api_key, project),
    )
    if as_json:
        print_json(notices)
        return
    console = _console()
    if not notices:
        console.print(f"no deliveries to notification {notification_id} in the last 7 days")
        return
    table = Table(box=None, header_style="dim")
    for column in ("created", "event", "rollout", "state", "attempts", "last", "next attempt"):
        table.add_column(
            column, overflow="fold", justify="right" if column == "attempts" else "left"
        )
    for notice in notices:
        attempts = notice.get("attempts") or []
        state = notice.get("state", "")
        table.add_row(
            notice.get("created_at", ""),
            notice.get("type", ""),
            notice.get("rollout_id", ""),
            Text(state, style=STATE_STYLE.get(state, "")),
            str(len(attempts)),
            _last_status(attempts),
            notice.get("next_attempt_at") or "",
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add these verbs to the `ota` app."""
    app.add_typer(notifications_app, name="notifications")
