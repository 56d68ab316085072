"""`?cursor=` of the paged listings, read back strictly: the next_cursor given, or a 400.

A cursor is opaque to callers: they pass back the next_cursor of the previous page, or leave
it out (or empty) for the first page. Two kinds are given: a position in a rollout's cohort
order (digits) and the last device id of a page of devices. Anything else is refused naming
the value and the fix, so a typo never turns into a 500 or into an empty page.
"""

from __future__ import annotations

import re

from orchestrator.errors import InvalidInput
from orchestrator.numerals import whole_number

MAX_POSITION_DIGITS = 15  # cohort positions: far past any fleet, exact as a JSON number
# Device ids are UUIDs (DeviceStore.create); the device listing pages on them.
DEVICE_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_SHOWN = 40  # characters of a refused cursor quoted in the message
# What the OpenAPI document says each cursor looks like (empty: the first page).
POSITION_CURSOR = f"^([0-9]{{1,{MAX_POSITION_DIGITS}}})?$"
DEVICE_CURSOR = f"^({DEVICE_ID.pattern.strip('^$')})?$"


def position_cursor(cursor: str | None) -> int:
    """The cohort position a rollout device listing's cursor names (0 for the first page)."""
    if not cursor:
        return 0
    position = whole_number(cursor, max_digits=MAX_POSITION_DIGITS)
    if position is None:
        raise _refused(cursor, f"must be 1 to {MAX_POSITION_DIGITS} ASCII digits")
    return position


def device_cursor(cursor: str | None) -> str | None:
    """The device id a device listing's cursor names (None for the first page)."""
    if not cursor:
        return None
    if not DEVICE_ID.fullmatch(cursor):
        raise _refused(cursor, "must be a device id")
    return cursor


def _refused(cursor: str, rule: str) -> InvalidInput:
    shown = repr(cursor)
    if len(cursor) > _SHOWN:
        shown = f"{cursor[:_SHOWN]!r}… ({len(cursor)} characters)"
    return InvalidInput(
        f"cursor {shown} is not one this API gave; pass the next_cursor of the previous "
        "page, or leave cursor out for the first page",
        errors=[{"loc": "query.cursor", "msg": f"{rule} (a next_cursor value)"}],
    )
