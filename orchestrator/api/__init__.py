"""HTTP adapter: the seed device-communication API and the orchestrator's own routes."""

from orchestrator.api.app import create_app

__all__ = ["create_app"]
