"""Devices: where they send data from, and the rules on their tags."""

from __future__ import annotations

import re
from enum import StrEnum

from orchestrator.errors import InvalidInput


class DeviceSource(StrEnum):
    """How a device talks to the platform (seed 003); only mqtt devices take commands."""

    HTTP = "http"
    MQTT = "mqtt"


DEFAULT_BRAND = "Custom"
DEFAULT_MODEL = "Custom"
DEFAULT_AVATAR = "https://static.qubitro.com/portal/device/avatar/default.png"
NEVER_SEEN = "0001-01-01T00:00:00Z"
TAG = re.compile(r"^[^\s:;,]{1,64}$")


def validate_tags(tags: list[str]) -> list[str]:
    """The tags, de-duplicated in order; InvalidInput names the first bad one."""
    for index, tag in enumerate(tags):
        if not TAG.fullmatch(tag):
            raise InvalidInput(
                f"tags[{index}] must be 1 to 64 characters without spaces, ':', ';' or ',', "
                f"got {tag!r}",
                errors=[{"loc": f"body.tags.{index}", "msg": "invalid tag"}],
            )
    return list(dict.fromkeys(tags))
