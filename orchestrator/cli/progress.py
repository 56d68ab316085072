"""How a rollout looks in a terminal: a bar per wave, counts by state, the failure rate
against its threshold, and the reason when it stopped; `watch` redraws it until the end."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from orchestrator.api.rollout_schemas import RolloutOut
from orchestrator.client import ApiClient
from orchestrator.domain.states import FINAL_DEVICE_STATES, TERMINAL_ROLLOUT_STATES, RolloutState

POLL_S = 1.0
# Where a watch stops: the rollout is over, or waits for an operator after a halt.
ENDED = frozenset(state.value for state in TERMINAL_ROLLOUT_STATES) | {RolloutState.HALTED.value}
FINAL = frozenset(state.value for state in FINAL_DEVICE_STATES)
STATE_STYLE = {
    "completed": "bold green",
    "running": "bold cyan",
    "pending": "cyan",
    "paused": "yellow",
    "waiting_approval": "bold yellow",
    "halted": "bold red",
    "rolling_back": "bold magenta",
    "rolled_back": "magenta",
    "rollback_failed": "bold red",
    "aborted": "red",
}
COUNT_STYLE = {
    "verifying": "yellow",  # succeeded, watched through the health soak
    "succeeded": "green",
    "failed": "red",
    "rejected": "red",
    "timed_out": "red",
    "rolled_back": "magenta",
    "rollback_failed": "red",
    "cancelled": "dim",
    "pending": "dim",
}
HINTS = {
    "waiting_approval": "waiting for approval: ota promote {id}",
    "paused": "paused: ota resume {id}",
    "halted": "halted: ota rollback {id} (if the plan has a rollback) or ota abort {id}",
}


def percent(rate: float) -> str:
    """0.0312 as `3.1%`."""
    return f"{rate * 100:.1f}%"


def counts_text(counts: Mapping[str, int]) -> Text:
    """The non-zero counts, `succeeded 12  failed 1`, coloured by state."""
    text = Text()
    for state, count in counts.items():
        if count:
            if text:
                text.append("  ")
            text.append(f"{state} {count}", style=COUNT_STYLE.get(state, ""))
    return text or Text("-", style="dim")


def _failure_bar(rate: float, limit: float) -> RenderableType:
    """The failure rate against its threshold: green, yellow past 80% of it, red over it."""
    style = "green" if rate < 0.8 * limit else "yellow" if rate <= limit else "red"
    line = Text("failure rate ")
    line.append(percent(rate), style=f"bold {style}")
    line.append(f" of {percent(limit)} allowed")
    bar = ProgressBar(
        total=max(limit, 1e-9), completed=min(rate, limit), width=30, complete_style=style
    )
    table = Table.grid(padding=(0, 2))
    table.add_row(line, bar)
    return table


def render(rollout: RolloutOut) -> RenderableType:
    """One rollout as the API returns it, for the terminal."""
    state = rollout.state
    title = Text()
    title.append(rollout.name, style="bold")
    title.append(f"  {rollout.id}  ", style="dim")
    title.append(state, style=STATE_STYLE.get(state, ""))
    waves = rollout.waves
    if state in ("running", "paused", "waiting_approval") and waves:
        title.append(f"  wave {rollout.wave_index + 1} of {len(waves)} ({rollout.wave})")
    firmware = rollout.firmware
    sub = Text(f"firmware {firmware.version or '?'} ({firmware.file})")
    if rollout.rollback:
        sub.append(f"  rollback {rollout.rollback.version or '?'}", style="dim")
    sub.append(f"  {rollout.total} devices", style="dim")

    table = Table(box=None, pad_edge=False, show_header=True, header_style="dim")
    table.add_column("wave")
    table.add_column("progress")
    table.add_column("done", justify="right")
    table.add_column("devices by state")
    for index, wave in enumerate(waves):
        counts = wave.counts
        size = sum(counts.values())
        done = sum(n for s, n in counts.items() if s in FINAL)
        name = Text(wave.name, style="bold" if index == rollout.wave_index else "")
        bar = ProgressBar(total=max(size, 1), completed=done if size else 0, width=24)
        table.add_row(name, bar, f"{done}/{size}", counts_text(counts))

    parts: list[RenderableType] = [title, sub, table]
    parts.append(_failure_bar(rollout.failure_rate, rollout.max_failure_rate))
    if rollout.evidence:
        parts.append(Text(f"sequential test {rollout.evidence}", style="dim"))
    parts.append(Text("all ").append_text(counts_text(rollout.counts)))
    if rollout.failures:
        parts.append(Text("failures ").append_text(counts_text(rollout.failures)))
    for stratum in rollout.strata:
        rate = f"{stratum.failure_rate * 100:.1f}%"
        line = f"  {stratum.stratum}: {stratum.failed} of {stratum.finished} failed ({rate})"
        over = stratum.failure_rate > rollout.max_failure_rate
        parts.append(Text(line, style="red" if over else "dim"))
    if rollout.reason:
        parts.append(Text(f"reason: {rollout.reason}", style="italic"))
    hint = HINTS.get(state)
    if hint:
        parts.append(Text(hint.format(id=rollout.id), style="yellow"))
    return Group(*parts)


async def watch(api: ApiClient, rollout_id: str, console: Console) -> RolloutOut:
    """Redraw the rollout every second until it ends (or halts); the last view read."""
    rollout = await api.rollout(rollout_id)
    with Live(render(rollout), console=console, refresh_per_second=4, transient=False) as live:
        while rollout.state not in ENDED:
            await asyncio.sleep(POLL_S)
            rollout = await api.rollout(rollout_id)
            live.update(render(rollout))
    return rollout


def exit_code(rollout: RolloutOut) -> int:
    """0 for a completed rollout, 1 for any other end."""
    return 0 if rollout.state is RolloutState.COMPLETED else 1
