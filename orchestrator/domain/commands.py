"""Device commands: the seed's command types, custom names, and `allowed_commands`."""

from __future__ import annotations

import re

from orchestrator.domain.devices import WHITESPACE
from orchestrator.domain.files import FileType
from orchestrator.errors import InvalidInput

SEED_COMMANDS = (
    "configuration",
    "send_configuration",
    "download_firmware",
    "download_logo",
    "reboot",
    "reset",
)
FILE_COMMANDS: dict[str, FileType] = {
    "download_firmware": FileType.FIRMWARE,
    "download_logo": FileType.LOGO,
}
# A command name becomes an MQTT topic level, so no '/', '+', '#' or '$' may appear in it.
COMMAND_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_ALLOWED_PART = rf"[{WHITESPACE}]*(?:[A-Za-z0-9_.-]{{1,64}}[{WHITESPACE}]*)?"
# What parse_allowed_commands accepts: command names separated by ';', spaces around them.
ALLOWED_COMMANDS = re.compile(rf"^{_ALLOWED_PART}(?:;{_ALLOWED_PART})*$")


def validate_command_name(name: str, *, loc: str = "body.command") -> str:
    """`name` if it can be a topic level; InvalidInput naming the rule (at `loc`) otherwise."""
    if not COMMAND_NAME.fullmatch(name):
        raise InvalidInput(
            f"command {name!r} must be 1 to 64 letters, digits, '_', '.' or '-' "
            "(it becomes the topic level in {device_id}/control/{command})",
            errors=[{"loc": loc, "msg": f"must match {COMMAND_NAME.pattern}"}],
        )
    return name


def parse_allowed_commands(value: str) -> list[str]:
    """The list in `"a;b;c"`; empty means every command is allowed (seed 000)."""
    names = [part.strip() for part in value.split(";") if part.strip()]
    for name in names:
        validate_command_name(name, loc="body.metadata.allowed_commands")
    return list(dict.fromkeys(names))


def is_allowed(command: str, allowed: list[str]) -> bool:
    """True when the device accepts `command`: an empty list accepts all."""
    return not allowed or command in allowed
