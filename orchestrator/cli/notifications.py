"""Rollout notifications from the shell: `ota notifications create|list|delete|deliveries`.

A subscription sends the project's rollout events (all of them, or the ones named) to a URL,
signed with its secret; each notice is retried until delivered or given up, and every attempt
is kept.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.text import Text

from orchestrator.api.schemas import NoticeAttemptOut, NoticeOut, NotificationOut
from orchestrator.cli.output import console, print_json
from orchestrator.cli.server import Json, Server, connected, run
from orchestrator.cli.webhooks import Secret, WebhookVerbs, add_verbs
from orchestrator.domain.notices import Notice

notifications_app = typer.Typer(
    help="Rollout notifications: the project's rollout events, posted to a URL.",
    no_args_is_help=True,
)

EVENTS = tuple(notice.value for notice in Notice)
STATE_STYLE = {"pending": "yellow", "delivered": "green", "failed": "red"}


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


def _last_status(attempts: list[NoticeAttemptOut]) -> str:
    """The last attempt's HTTP status, or its error when there was no answer."""
    if not attempts:
        return ""
    last = attempts[-1]
    if last.status_code is not None:
        return str(last.status_code)
    return last.error or ""


@notifications_app.command("create")
@connected()
def create_notification(
    target: Server,
    url: Annotated[str, typer.Option(help="Where the events are posted (http or https)")],
    event: Annotated[
        list[str] | None,
        typer.Option(
            help=f"An event to send (repeatable; default every event): {', '.join(EVENTS)}",
            show_default=False,
        ),
    ] = None,
    secret: Secret = None,
    as_json: Json = False,
) -> None:
    """Subscribe a URL to the project's rollout events; prints the secret only this once."""
    events = checked_events(event)
    created = run(lambda api: api.create_notification(url, events, secret), target)
    if as_json:
        print_json(created)
        return
    out = console()
    out.print(f"notification  {created.id}")
    out.print(f"url           {created.url}")
    out.print(f"events        {_events_text(created.events)}")
    out.print(f"secret        {created.secret}  (shown only now)")


def _row(subscription: NotificationOut) -> tuple[str, ...]:
    return (
        subscription.id,
        subscription.url,
        _events_text(subscription.events),
        subscription.created_at,
    )


def _delivery_row(notice: NoticeOut) -> tuple[str | Text, ...]:
    return (
        notice.created_at,
        notice.type,
        notice.rollout_id,
        Text(notice.state, style=STATE_STYLE.get(notice.state, "")),
        str(len(notice.attempts)),
        _last_status(notice.attempts),
        notice.next_attempt_at or "",
    )


add_verbs(
    notifications_app,
    WebhookVerbs(
        noun="notification",
        id_help="The subscription's id",
        kept_for="7 days",
        list_doc="The project's notification subscriptions (their secrets are never shown again).",
        delete_doc="Delete a subscription; notices still queued for it are not sent.",
        deliveries_doc=(
            "The subscription's notices of the last 7 days, newest first, with their attempts."
        ),
        none="no notifications; add one with: ota notifications create --url URL",
        records=lambda api: api.notifications(),
        delete=lambda api, subscription_id: api.delete_notification(subscription_id),
        deliveries=lambda api, subscription_id: api.notification_deliveries(subscription_id),
        columns=("id", "url", "events", "created"),
        row=_row,
        delivery_columns=(
            "created",
            "event",
            "rollout",
            "state",
            "attempts",
            "last",
            "next attempt",
        ),
        delivery_row=_delivery_row,
        right=("attempts",),
    ),
)


def register(app: typer.Typer) -> None:
    """Add these verbs to the `ota` app."""
    app.add_typer(notifications_app, name="notifications")
