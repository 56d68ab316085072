"""The `ota` command line (Typer + Rich)."""

from __future__ import annotations

import sys

import typer
from pydantic import ValidationError

from orchestrator.cli import (
    admin,
    demo,
    hooks,
    notifications,
    plans,
    projects,
    rollouts,
    seedapi,
    simulate,
)
from orchestrator.embedded import EmbeddedError
from orchestrator.errors import OrchestratorError

app = typer.Typer(
    name="ota",
    help="Ship firmware to device fleets in waves; halt or roll back when devices fail.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
admin.register(app)
projects.register(app)
plans.register(app)
rollouts.register(app)
seedapi.register(app)
hooks.register(app)
notifications.register(app)
simulate.register(app)
demo.register(app)


def main() -> None:
    """Run the CLI; known errors print one line on stderr (exit 1, or 2 for bad settings)."""
    try:
        app()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        # A setting read from a variable named otherwise has that name (its alias) as `loc`.
        name = where.upper() if where.startswith("ota_") else f"OTA_{where.upper()}"
        name = name if where else "a setting"
        print(f"error: {name}: {first.get('msg')}", file=sys.stderr)
        raise SystemExit(2) from None
    except OrchestratorError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        raise SystemExit(1) from None
    except EmbeddedError as exc:  # an embedded Redis or broker that could not start
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
