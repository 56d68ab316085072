"""`ota demo`: one command, nothing else running, a staged rollout on a simulated fleet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from orchestrator.cli.output import console
from orchestrator.simulator import parse_rate

DEFAULT_DEVICES = 200


def _rate(value: str) -> float:
    try:
        return parse_rate(value, "--fail-rate")
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def demo(
    devices: Annotated[
        int, typer.Option(min=1, max=5000, help="Simulated devices in the fleet")
    ] = DEFAULT_DEVICES,
    fail_rate: Annotated[
        str,
        typer.Option(
            help="Share of devices whose install of the new firmware fails (0.5 or 50%); "
            "past the plan's 10% the rollout rolls back"
        ),
    ] = "0",
    plan: Annotated[
        Path | None,
        typer.Option(help="The plan to run (default: rollouts/demo.yaml of this checkout)"),
    ] = None,
    timeout: Annotated[
        float, typer.Option(min=10, help="Give up if the rollout has not ended after this many s")
    ] = 600,
    health: Annotated[
        bool,
        typer.Option(
            help="Run a plan with a health soak (rollouts/demo-health.yaml) and an image that "
            "reverts on some devices after their success: the soak stops the rollout"
        ),
    ] = False,
) -> None:
    """A staged rollout on a simulated fleet, on embedded Redis and MQTT; ends with a summary."""
    from orchestrator.demo import (
        HEALTH_REVERT_RATE,
        REPO_HEALTH_PLAN,
        REPO_PLAN,
        print_summary,
        run_demo,
    )

    rate = _rate(fail_rate)
    plan_path = plan or (REPO_HEALTH_PLAN if health else REPO_PLAN)
    if not plan_path.is_file():
        raise typer.BadParameter(
            f"{plan_path} does not exist; pass --plan with a plan file", param_hint="--plan"
        )
    from orchestrator.logs import configure_logging

    configure_logging("console", "warning")  # the progress view is the output; problems only
    out = console()
    result = run_demo(
        devices=devices,
        fail_rate=rate,
        plan_path=plan_path,
        timeout_s=timeout,
        console=out,
        revert_rate=HEALTH_REVERT_RATE if health else 0.0,
    )
    print_summary(result, out)


def register(app: typer.Typer) -> None:
    """Add this verb to the `ota` app."""
    app.command("demo")(demo)
