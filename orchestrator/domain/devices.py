"""Devices: where they send data from, the rules on their tags and custom metadata, and when
the service last heard from them."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
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

# Custom metadata: string keys and values next to allowed_commands in `metadata`.
MAX_METADATA_ENTRIES = 64  # besides allowed_commands
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 256
# No whitespace (keys are names) and no ':' (`?metadata=key:value` splits at the first one).
METADATA_KEY = re.compile(rf"^[^{WHITESPACE}:]{{1,{MAX_METADATA_KEY_CHARS}}}$")
ALLOWED_COMMANDS_KEY = "allowed_commands"  # the seed's key: "a;b;c", its own rules
RESERVED_METADATA_KEYS = ("device_id", "device_token")  # the service's, in every answer
_KEY_RULE = f"1 to {MAX_METADATA_KEY_CHARS} characters without spaces or ':'"

# The service writes a device's last_seen at most this often: a result or a download within
# this long of the stored time changes nothing, so a chatty device costs no writes.
LAST_SEEN_EVERY_S = 60
# The result statuses whose `version` is the firmware the device runs: the registry records it
# as the device's firmware version (`target.versions` and `policy.by: [version]` select on it).
# A health report names the image running after the reboot (the old one, when it reverted).
VERSION_REPORTS = ("success", "healthy", "unhealthy")


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


def metadata_key_problem(key: str) -> str | None:
    """What is wrong with `key` as a custom metadata key (None: nothing)."""
    if key in RESERVED_METADATA_KEYS:
        return "is set by the service and cannot be given; leave it out"
    if key == ALLOWED_COMMANDS_KEY:
        return "is not custom metadata; select devices by their custom keys"
    if not METADATA_KEY.fullmatch(key):
        return f"must be {_KEY_RULE}"
    return None


def metadata_value_problem(value: object) -> str | None:
    """What is wrong with `value` as a custom metadata value (None: nothing)."""
    if not isinstance(value, str):
        return "must be text"
    if len(value) > MAX_METADATA_VALUE_CHARS:
        return f"must be at most {MAX_METADATA_VALUE_CHARS} characters, got {len(value)}"
    return None


def _shown(key: str) -> str:
    return repr(key if len(key) <= 80 else key[:77] + "...")


def validate_metadata(
    entries: Mapping[str, str | None], *, loc: str = "body.metadata", removals: bool = False
) -> dict[str, str | None]:
    """Custom metadata entries (allowed_commands left out) within the limits.

    `removals` lets a value be None (a PATCH removing the key). InvalidInput names the first
    bad key and the limit it breaks.
    """
    for key, value in entries.items():
        problem = metadata_key_problem(key)
        if problem is None and not (removals and value is None):
            problem = metadata_value_problem(value)
            if problem is not None and removals:
                problem += " (or null to remove the key)"
        if problem is not None:
            raise InvalidInput(
                f"metadata key {_shown(key)} {problem}",
                errors=[{"loc": f"{loc}.{key}", "msg": problem}],
            )
    _check_count(entries, loc)
    return dict(entries)


def merge_metadata(
    current: Mapping[str, str], changes: Mapping[str, str | None], *, loc: str = "body.metadata"
) -> dict[str, str]:
    """`current` with `changes` applied (JSON merge patch: None removes a key), within limits."""
    merged = dict(current)
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    _check_count(merged, loc)
    return merged


def _check_count(entries: Mapping[str, object], loc: str) -> None:
    if len(entries) <= MAX_METADATA_ENTRIES:
        return
    over = list(entries)[MAX_METADATA_ENTRIES]
    raise InvalidInput(
        f"metadata may hold at most {MAX_METADATA_ENTRIES} keys besides allowed_commands, "
        f"got {len(entries)} (the first one over the limit is {_shown(over)}); remove some "
        '(in a PATCH, "key": null removes a key)',
        errors=[{"loc": f"{loc}.{over}", "msg": f"more than {MAX_METADATA_ENTRIES} keys"}],
    )


def parse_metadata_filters(
    values: Iterable[str], *, loc: str = "query.metadata"
) -> list[tuple[str, str]]:
    """`key:value` filters (`?metadata=site:berlin`, repeatable) as pairs; InvalidInput else."""
    pairs: list[tuple[str, str]] = []
    for text in values:
        key, sep, value = text.partition(":")
        problem = metadata_key_problem(key) if sep else "must be written key:value"
        if problem is None:
            problem = metadata_value_problem(value)
        if problem is not None:
            raise InvalidInput(
                f"metadata filter {_shown(text)} {problem}; write ?metadata=key:value, "
                f"the key {_KEY_RULE}, the value at most {MAX_METADATA_VALUE_CHARS} characters",
                errors=[{"loc": loc, "msg": problem}],
            )
        pairs.append((key, value))
    return pairs


def metadata_matches(metadata: Mapping[str, str], wanted: Iterable[tuple[str, str]]) -> bool:
    """True when the device's metadata holds every wanted key with exactly that value."""
    return all(metadata.get(key) == value for key, value in wanted)


def last_seen_due(last_seen_s: int, now_s: int) -> bool:
    """Whether hearing from a device last seen at `last_seen_s` (0: never) is worth a write."""
    return now_s - last_seen_s >= LAST_SEEN_EVERY_S
