"""How fast the plan simulator runs: `python -m bench.simulation` (part of `make bench`).

It times `simulate()` (what `ota plan PLAN.yaml --simulate` runs), 2,000 runs of a 10,000-device
fleet, for three plans: rollouts/canary.yaml as written (rate 20/s, max_in_flight 200, four
waves), the same with `confidence: 95%`, and the same waves with no rate and no max_in_flight
(each wave sent in steps of 500). Each at a healthy true failure rate (2%: most runs reach
every device, the slow case) and a bad one (10%). It prints a Markdown table (wall time, runs
per second, microseconds per simulated device) and last one line:

    simulate_s=… runs=2000 devices=10000

where simulate_s is the canary with confidence at 2%. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from orchestrator.domain.plans import Plan, parse_plan
from orchestrator.domain.simulation import Summary, default_workers, simulate
from orchestrator.domain.synthetic_fleet import Fleet

CANARY = Path(__file__).resolve().parents[1] / "rollouts" / "canary.yaml"


def plans() -> dict[str, Plan]:
    """The plans timed, by the name the table gives them."""
    text = CANARY.read_text()
    confident = text.replace("  on_failure: halt", "  on_failure: halt\n  confidence: 95%")
    unlimited = "\n".join(
        line for line in confident.splitlines() if not line.startswith(("  rate:", "  max_in_"))
    )
    return {
        "canary.yaml": parse_plan(text),
        "canary.yaml + confidence 95%": parse_plan(confident),
        "same, no rate or max_in_flight": parse_plan(unlimited),
    }


def timed(plan: Plan, fleet: Fleet, runs: int, workers: int) -> tuple[float, Summary]:
    """Seconds of one simulate() call, and its summary."""
    started = time.perf_counter()
    summary = simulate(plan, fleet, runs=runs, workers=workers)
    return time.perf_counter() - started, summary


def main() -> int:
    """Time the simulator; print the table and the summary line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument(
        "--workers", type=int, default=default_workers(), help="processes (as the CLI uses)"
    )
    parser.add_argument("--only", action="store_true", help="time the headline case only")
    args = parser.parse_args()
    print("| plan | true failure rate | wall s | runs/s | µs per device sent | p_halt |")
    print("| --- | --- | --- | --- | --- | --- |")
    headline = 0.0
    for name, plan in plans().items():
        for rate in (0.02, 0.10):
            headline_case = name.endswith("confidence 95%") and rate == 0.02
            if args.only and not headline_case:
                continue
            seconds, summary = timed(plan, Fleet(args.devices, rate), args.runs, args.workers)
            sent = summary.reached_mean * summary.runs
            print(
                f"| {name} | {rate:.0%} | {seconds:.1f} | {args.runs / seconds:,.0f} | "
                f"{seconds / sent * 1e6:.2f} | {summary.p_halt:.3f} |",
                flush=True,
            )
            if headline_case:
                headline = seconds
    print(
        f"simulate_s={headline:.1f} runs={args.runs} devices={args.devices} workers={args.workers}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
