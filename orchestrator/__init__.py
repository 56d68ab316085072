"""OTA rollout orchestrator: ship firmware to fleets in waves, halt or roll back on failure."""

__version__ = "0.1.0"
