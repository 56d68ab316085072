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
# Python's `\s` (the characters str.isspace() and str.strip() see), spelled out so that a
# JSON Schema validator, whose regexes are ECMA-262's, reads the documented patterns alike.
WHITESPACE = r"\t\n\v\f\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
TAG = re.compile(rf"^[^{WHITESPACE}:;,]{{1,64}}$")


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
