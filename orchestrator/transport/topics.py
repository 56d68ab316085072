"""Every MQTT topic the orchestrator uses (ARCHITECTURE §5)."""

from __future__ import annotations


def command_topic(device_id: str, command: str) -> str:
    """Where a device receives `command` (QoS 2, not retained)."""
    return f"{device_id}/control/{command}"


def result_topic(device_id: str, command: str) -> str:
    """Where a device answers `command`."""
    return f"{device_id}/control/{command}/result"


RESULTS_FILTER = "+/control/+/result"
SHARED_RESULTS_FILTER = f"$share/ota-engine/{RESULTS_FILTER}"  # engine replicas share results
