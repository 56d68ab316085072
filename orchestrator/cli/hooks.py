"""Deploy hooks from the shell: `ota hooks create|list|delete|deliveries`.

A hook turns a signed release delivery (GitHub's, or any sender's signed JSON body) into a
rollout of its plan template, with `${version}` and `${file}` filled in.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from orchestrator.api.schemas import HookDeliveryOut, HookOut
from orchestrator.cli.output import console, print_json
from orchestrator.cli.plans import Unreadable, read_plan_text
from orchestrator.cli.server import Json, Server, connected, run
from orchestrator.cli.webhooks import Secret, WebhookVerbs, add_verbs
from orchestrator.client import ApiError
from orchestrator.domain.hooks import parse_template
from orchestrator.errors import InvalidInput

hooks_app = typer.Typer(
    help="Deploy hooks: a signed release delivery starts a rollout of a plan template.",
    no_args_is_help=True,
)

DELIVERY_STYLE = {"accepted": "yellow", "started": "green", "failed": "red"}
# The service locates template problems as `plan:LINE:COLUMN:`; the user knows it as a file.
SERVICE_SOURCE = re.compile(r"\bplan:(\d+):(\d+):")
SAMPLE_BODY = '{"version": "2.1.0", "file": "fw-2.1.0.bin"}'


def delivery_url(url: str, api_url: str) -> str:
    """The hook's URL as a sender needs it: absolute, on the API's address if given as a path."""
    return api_url.rstrip("/") + url if url.startswith("/") else url


def _absolute(target: Server, hook: HookOut) -> HookOut:
    """The hook with its delivery URL as a sender needs it."""
    return hook.model_copy(update={"url": delivery_url(hook.url, target.api_url)})


def _template(path: Path) -> str:
    """The template's text once it passes the offline check the service makes too.

    Unreadable or empty: one line on stderr, exit 2. A bad template: every problem located
    as file:line:column, exit 1 (as `ota apply` does for plans).
    """
    try:
        text = read_plan_text(path)
    except Unreadable as exc:
        typer.echo(
            f"error: {exc}; pass --plan a plan template such as rollouts/webhook-template.yaml",
            err=True,
        )
        raise typer.Exit(2) from None
    if not text.strip():
        typer.echo(
            f"error: {path}: the plan template is empty; write a plan with ${{version}} and "
            "${file} where the release goes (see rollouts/webhook-template.yaml)",
            err=True,
        )
        raise typer.Exit(2)
    try:
        parse_template(text, source=str(path))
    except InvalidInput as exc:  # a PlanError too: one located problem per line
        typer.echo(exc.message, err=True)
        raise typer.Exit(1) from None
    return text


def _curl(url: str, secret: str) -> str:
    """A shell line that posts a deploy body signed the GitHub way with `secret`."""
    key = shlex.quote(secret)
    return (
        f"body='{SAMPLE_BODY}'; curl -sS -X POST {shlex.quote(url)} "
        "-H 'Content-Type: application/json' "
        '-H "X-Hub-Signature-256: sha256=$(printf %s "$body" | '
        f"openssl dgst -sha256 -hmac {key} | sed 's/^.*= //')\" "
        '--data-binary "$body"'
    )


@hooks_app.command("create")
@connected()
def create_hook(
    target: Server,
    name: Annotated[str, typer.Option(help="The hook's name (for people)")],
    plan: Annotated[
        Path,
        typer.Option(
            help="The plan template, YAML with ${version} and ${file}",
            metavar="FILE",
            show_default=False,
        ),
    ],
    secret: Secret = None,
    as_json: Json = False,
) -> None:
    """Register a plan template; prints the hook's URL and secret (the secret only this once)."""
    text = _template(plan)
    try:
        hook = run(lambda api: api.create_hook(name, text, secret), target)
    except ApiError as exc:
        located = SERVICE_SOURCE.search(exc.message) if exc.status == 400 else None
        if located is None:
            raise
        # A service whose checks differ from this CLI's: its `plan:` is this file.
        typer.echo(f"{plan}:{exc.message[located.start() + len('plan:') :]}", err=True)
        raise typer.Exit(1) from None
    hook = _absolute(target, hook)
    if as_json:
        print_json(hook)
        return
    url, out = hook.url, console()
    out.print(f"hook    {hook.id}  ({hook.name})")
    out.print(f"url     {url}")
    out.print(f"secret  {hook.secret}  (shown only now)")
    out.print(
        f"GitHub: repository Settings → Webhooks → Add webhook: Payload URL {url}, Content type "
        "application/json, Secret as above, events: Releases.",
        style="dim",
        soft_wrap=True,
    )
    out.print("Any other sender, signed the same way:", style="dim")
    out.print(_curl(url, hook.secret or ""), style="dim", soft_wrap=True, markup=False)


def _delivery_row(delivery: HookDeliveryOut) -> tuple[str | Text, ...]:
    return (
        delivery.received_at,
        delivery.id,
        delivery.scheme,
        delivery.version,
        delivery.file,
        Text(delivery.status, style=DELIVERY_STYLE.get(delivery.status, "")),
        delivery.rollout_id,
        delivery.reason,
    )


add_verbs(
    hooks_app,
    WebhookVerbs(
        noun="hook",
        id_help="The hook's id",
        kept_for="24 hours",
        list_doc="The project's hooks (their secrets are never shown again).",
        delete_doc="Delete a hook: its URL answers 404 from now on; rollouts it started go on.",
        deliveries_doc=(
            "The hook's deliveries of the last 24 hours, newest first, and what each one started."
        ),
        none="no hooks; add one with: ota hooks create --name N --plan FILE",
        records=lambda api: api.hooks(),
        delete=lambda api, hook_id: api.delete_hook(hook_id),
        deliveries=lambda api, hook_id: api.hook_deliveries(hook_id),
        columns=("id", "name", "url", "created"),
        row=lambda hook: (hook.id, hook.name, hook.url, hook.created_at),
        delivery_columns=(
            "received",
            "id",
            "scheme",
            "version",
            "file",
            "status",
            "rollout",
            "reason",
        ),
        delivery_row=_delivery_row,
        shown=_absolute,
    ),
)


def register(app: typer.Typer) -> None:
    """Add these verbs to the `ota` app."""
    app.add_typer(hooks_app, name="hooks")
