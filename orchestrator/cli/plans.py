"""Offline verbs on rollout plans: `ota validate` and `ota schema`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from orchestrator.domain.gate_check import check_first_wave
from orchestrator.domain.hooks import is_template, parse_template
from orchestrator.domain.plans import PlanError, parse_plan, plan_json_schema
from orchestrator.errors import InvalidInput


class Unreadable(Exception):
    """A plan file that cannot be read as text; the message is its whole located line."""


def read_plan_text(path: Path) -> str:
    """The file's text (UTF-8, a BOM allowed); Unreadable says where and why otherwise."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise Unreadable(f"{path}: cannot read the plan: {reason}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - data.rfind(b"\n", 0, exc.start)
        message = f"the plan is not UTF-8 text (byte 0x{data[exc.start]:02x}); save it as UTF-8"
        raise Unreadable(f"{path}:{line}:{column}: {message}") from None


def validate(
    plans: Annotated[
        list[Path], typer.Argument(help="Plan files, YAML or JSON", metavar="PLAN.yaml...")
    ],
) -> None:
    """Check plan files offline: one line per problem, file:line:column (exit 1 if any).

    A file with ${version} placeholders is checked as a hook's plan template, filled in with
    sample values. A plan with policy.confidence whose first wave is too small for its gate
    gets a warning (not a failure) with the chance and the size that would be enough.
    """
    failed = False
    for path in plans:
        kind = ""
        try:
            text = read_plan_text(path)
            if is_template(text):
                kind = "hook template, "
                plan = parse_template(text, source=str(path))
            else:
                plan = parse_plan(text, source=str(path))
        except Unreadable as exc:
            typer.echo(str(exc), err=True)
            failed = True
        except PlanError as exc:
            for problem in exc.problems:
                typer.echo(str(problem), err=True)
            failed = True
        except InvalidInput as exc:  # a template's placeholders
            typer.echo(exc.message, err=True)
            failed = True
        else:
            count = len(plan.waves)
            typer.echo(f"ok  {path}  ({kind}{plan.name}, {count} wave{'' if count == 1 else 's'})")
            check = check_first_wave(plan)
            if check is not None and check.too_small:
                typer.echo(f"warning  {path}: {check.warning()}")
    if failed:
        raise typer.Exit(1)


def schema() -> None:
    """Print the JSON Schema of rollout plans, for editors (yaml-language-server and the like)."""
    typer.echo(json.dumps(plan_json_schema(), indent=2))


def register(app: typer.Typer) -> None:
    """Add these verbs to the `ota` app."""
    app.command("validate")(validate)
    app.command("schema")(schema)
