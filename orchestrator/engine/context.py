"""What the engine's parts share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from orchestrator.engine.plan_reader import PlanReader
from orchestrator.metrics import Metrics
from orchestrator.settings import Settings
from orchestrator.store import Stores
from orchestrator.timeutil import now_ms
from orchestrator.transport.mqtt import CommandTransport


@dataclass(frozen=True)
class EngineContext:
    """The engine's collaborators, injected so tests build as many engines as they like."""

    settings: Settings
    stores: Stores
    transport: CommandTransport
    metrics: Metrics
    clock_ms: Callable[[], int] = field(default=now_ms)
    plans: PlanReader = field(default_factory=PlanReader)
