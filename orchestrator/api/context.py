"""What every request handler needs, built once per app."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from fastapi import Request

from orchestrator.blobs import BlobStore
from orchestrator.domain.auth import Principal
from orchestrator.engine.plan_reader import PlanReader
from orchestrator.metrics import Metrics
from orchestrator.settings import Settings
from orchestrator.store import Stores
from orchestrator.transport.dynsec import DeviceProvisioner
from orchestrator.transport.exposure import BrokerExposure
from orchestrator.transport.mqtt import CommandTransport


@dataclass(frozen=True)
class AppContext:
    """The collaborators of one app instance (no import-time singletons)."""

    settings: Settings
    stores: Stores
    blobs: BlobStore
    transport: CommandTransport
    metrics: Metrics
    # Keeps the broker's dynamic security in step with devices (settled to `dynsec`).
    provisioner: DeviceProvisioner | None = None
    # Whether the broker lets in anonymous clients (probed at start, shown by /readyz).
    exposure: BrokerExposure = field(default_factory=BrokerExposure)
    # Reads plans; a big one in a worker process, so the API keeps answering meanwhile.
    plans: PlanReader = field(default_factory=PlanReader)


def get_context(request: Request) -> AppContext:
    """The app's context (FastAPI dependency)."""
    context: AppContext = request.app.state.context
    return context


R = TypeVar("R")


@dataclass(frozen=True)
class Found(Generic[R]):
    """What a route's dependency found: the record its path names, in a project the caller
    may use, with the context and the caller."""

    context: AppContext
    principal: Principal
    record: R
