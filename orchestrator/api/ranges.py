"""The one `Range: bytes=…` form a resuming device sends."""

from __future__ import annotations

import re

from orchestrator.errors import RangeNotSatisfiable
from orchestrator.numerals import whole_number

_SINGLE = re.compile(r"^\s*bytes\s*=\s*([0-9]*)\s*-\s*([0-9]*)\s*$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Bytes [first, end) asked for, or None to send the whole file.

    A header this server does not understand (several ranges, another unit, a number of more
    digits than any file size has) is ignored, as RFC 9110 §14.2 allows; a single range past
    the end of the file is 416.
    """
    if not header:
        return None
    match = _SINGLE.match(header)
    if match is None:
        return None
    first_text, last_text = match.groups()
    first, last = whole_number(first_text), whole_number(last_text)
    if (first_text and first is None) or (last_text and last is None):
        return None
    if first is None:  # suffix: the last N bytes
        if last is None:
            return None
        if last == 0 or size == 0:
            raise _unsatisfiable(header, size)
        return max(size - last, 0), size
    if last is not None and last < first:  # not a valid range (RFC 9110 §14.1.1): ignored
        return None
    # Checked before defaulting `last`: `bytes={size}-` would otherwise look like last < first
    # and send the whole file again to a device that already has all of it.
    if first >= size:
        raise _unsatisfiable(header, size)
    return first, size if last is None else min(last, size - 1) + 1


def _unsatisfiable(header: str, size: int) -> RangeNotSatisfiable:
    return RangeNotSatisfiable(
        f"Range {header!r} asks for bytes past the end of the {size}-byte file; "
        f"resume from an offset below {size}",
        size=size,
    )
