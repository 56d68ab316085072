"""`ota plan PLAN.yaml --simulate`: the plan run many times offline against a synthetic fleet."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from orchestrator.cli.output import console, print_json, table
from orchestrator.domain.plan_values import format_duration, parse_failure_rate
from orchestrator.domain.plans import Plan
from orchestrator.domain.synthetic_fleet import (
    LATENCY_S,
    MAX_DEVICES,
    Fleet,
    parse_fleet,
    parse_latency,
)

if TYPE_CHECKING:
    from orchestrator.domain.simulation import Summary

Simulate = Annotated[
    bool,
    typer.Option(
        "--simulate",
        help="Offline: run the plan many times against a synthetic fleet, no server needed",
    ),
]
Devices = Annotated[
    int | None,
    typer.Option("--devices", help="With --simulate: the fleet's size", min=1, max=MAX_DEVICES),
]
FailureRate = Annotated[
    str | None,
    typer.Option(
        "--failure-rate", help="With --simulate: the fleet's true failure rate, 5% or 0.05"
    ),
]
Runs = Annotated[
    int, typer.Option("--runs", help="With --simulate: how many runs (seeded, repeatable)", min=1)
]
ByStratum = Annotated[
    list[str] | None,
    typer.Option(
        "--by-stratum",
        help=(
            "With --simulate: KEY=VALUE:RATE[@SHARE], the true rate of one stratum (and its "
            "share of the fleet; equal shares when left out); repeat for more"
        ),
    ),
]
_DEFAULT_LATENCY = f"{format_duration(LATENCY_S[0])}..{format_duration(LATENCY_S[1])}"
ResultLatency = Annotated[
    str,
    typer.Option(
        "--result-latency", help="With --simulate: a device's time to its result, a range"
    ),
]
Seed = Annotated[int, typer.Option("--seed", help="With --simulate: the runs' seed")]


def fleet_of(
    devices: int | None, failure_rate: str | None, strata: list[str] | None, latency: str
) -> Fleet:
    """The synthetic fleet the options describe; a usage error naming the option otherwise."""
    if devices is None or failure_rate is None:
        raise typer.BadParameter(
            "--simulate needs --devices N and --failure-rate R (such as --devices 10000 "
            "--failure-rate 2%)",
            param_hint="--simulate",
        )
    try:
        parse_failure_rate(failure_rate)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--failure-rate") from None
    try:
        parse_latency(latency)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--result-latency") from None
    try:
        return parse_fleet(devices, failure_rate, strata or [], latency)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--by-stratum") from None


def simulate_plan(plan: Plan, fleet: Fleet, *, runs: int, seed: int, as_json: bool) -> None:
    """Run the simulation and print its summary: a table, or one JSON object."""
    # Here, not above: numpy and the simulator are loaded only by the verbs that simulate.
    from orchestrator.domain.simulation import default_workers, simulate

    summary = simulate(plan, fleet, runs=runs, seed=seed, workers=default_workers())
    if as_json:
        print_json(summary.as_json())
        return
    out = console()
    out.print(_headline(plan, fleet, summary))
    shown = table(("outcome", "share of runs"), right=("share of runs",))
    shown.add_row("halted (or rolled back)", _share(summary.p_halt))
    shown.add_row("paused as inconclusive", _share(summary.p_inconclusive_pause))
    shown.add_row("completed", _share(summary.p_complete))
    out.print(shown)
    figures = table(("per run", "mean", "95th percentile"), right=("mean", "95th percentile"))
    figures.add_row("devices reached", f"{summary.reached_mean:,.1f}", f"{summary.reached_p95:,}")
    figures.add_row(
        "bad installs", f"{summary.bad_installs_mean:,.2f}", f"{summary.bad_installs_p95:,}"
    )
    figures.add_row("duration", format_duration(round(summary.duration_s_mean)), "")
    out.print(figures)


def _headline(plan: Plan, fleet: Fleet, summary: Summary) -> str:
    confidence = plan.policy.confidence
    gate = f"confidence {confidence * 100:.4g}%" if confidence is not None else "no confidence"
    strata = "".join(f", {s}" for s in fleet.strata)
    low, high = fleet.latency_s
    return (
        f"[bold]{plan.name}[/]: {summary.runs:,} simulated runs on {fleet.devices:,} devices "
        f"failing at {fleet.true_failure_rate * 100:.4g}%{strata} (results after "
        f"{format_duration(low)}..{format_duration(high)}); max_failure_rate "
        f"{plan.policy.max_failure_rate * 100:.4g}%, {gate}"
    )


def _share(p: float) -> str:
    return f"{p * 100:.1f}%"


DEFAULT_LATENCY = _DEFAULT_LATENCY
