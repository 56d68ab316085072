"""Every MQTT topic the orchestrator uses (ARCHITECTURE §5)."""

from __future__ import annotations

_CONTROL = "control"
_RESULT = "result"
_WILDCARDS = frozenset("+#")


def command_topic(device_id: str, command: str) -> str:
    """Where a device receives `command` (QoS 2, not retained)."""
    return f"{device_id}/{_CONTROL}/{command}"


def result_topic(device_id: str, command: str) -> str:
    """Where a device answers `command`."""
    return f"{device_id}/{_CONTROL}/{command}/{_RESULT}"


def data_topic(device_id: str) -> str:
    """Where a device publishes its own data (telemetry), as Qubitro's device examples do."""
    return device_id


def parse_result_topic(topic: str) -> tuple[str, str] | None:
    """`(device_id, command)` of a `{device_id}/control/{command}/result` topic, else None.

    Both levels must be non-empty (the `+` wildcard also matches an empty level), free of
    wildcards, and the device id must not start with `$` (a broker-reserved namespace).
    """
    levels = topic.split("/")
    if len(levels) != 4 or levels[1] != _CONTROL or levels[3] != _RESULT:
        return None
    device_id, command = levels[0], levels[2]
    for level in (device_id, command):
        if not level or not _WILDCARDS.isdisjoint(level):
            return None
    if device_id.startswith("$"):
        return None
    return device_id, command


RESULTS_FILTER = "+/control/+/result"
SHARED_RESULTS_FILTER = f"$share/ota-engine/{RESULTS_FILTER}"  # engine replicas share results
