"""The one `Range: bytes=…` form a resuming device sends."""

from __future__ import annotations

import re

from orchestrator.errors import RangeNotSatisfiable

_SINGLE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Bytes [first, end) asked for, or None to send the whole file.

    A header this server does not understand (several ranges, another unit) is ignored, as
    RFC 9110 §14.2 allows; a single range past the end of the file is 416.
    """
    if not header:
        return None
    match = _SINGLE.match(header)
    if match is None:
        return None
    first_text, last_text = match.groups()
    if not first_text and not last_text:
        return None
    if not first_text:  # suffix: the last N bytes
        length = int(last_text)
        if length == 0 or size == 0:
            raise _unsatisfiable(header, size)
        return max(size - length, 0), size
    first = int(first_text)
    if last_text and int(last_text) < first:  # not a valid range (RFC 9110 §14.1.1): ignored
        return None
    # Checked before defaulting `last`: `bytes={size}-` would otherwise look like last < first
    # and send the whole file again to a device that already has all of it.
    if first >= size:
        raise _unsatisfiable(header, size)
    last = int(last_text) if last_text else size - 1
    return first, min(last, size - 1) + 1


def _unsatisfiable(header: str, size: int) -> RangeNotSatisfiable:
    return RangeNotSatisfiable(
        f"Range {header!r} asks for bytes past the end of the {size}-byte file; "
        f"resume from an offset below {size}",
        size=size,
    )
