"""The one `Range: bytes=…` form a resuming device sends (with its If-Range), and what a proxy
says it sent."""

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


def requested_range(
    header: str | None, if_range: str | None, size: int, entity_tag: str
) -> tuple[int, int] | None:
    """`parse_range`, unless an If-Range names another version of the file than `entity_tag`.

    Then the Range is ignored and the whole file is sent (RFC 9110 §13.1.5): the bytes the
    client holds belong to something else. Only the entity tag can match (strong comparison);
    the service sends no Last-Modified, so a date in If-Range never does.
    """
    if if_range is not None and if_range.strip() != entity_tag:
        return None
    return parse_range(header, size)


def _unsatisfiable(header: str, size: int) -> RangeNotSatisfiable:
    return RangeNotSatisfiable(
        f"Range {header!r} asks for bytes past the end of the {size}-byte file; "
        f"resume from an offset below {size}",
        size=size,
    )


_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


def delivered_span(status: int, content_range: str, body_bytes: int) -> tuple[int, int]:
    """Bytes [first, end) of the file a proxy's response carried, from what it says it sent.

    `status`, `content_range` and `body_bytes` are the proxy's own account of the response
    (nginx's `$status`, `$sent_http_content_range`, `$body_bytes_sent`). A 200 carried the file
    from byte 0, a 206 from the start of its Content-Range; any other status (nginx's own 416
    page, an error) carried none of it.
    """
    if body_bytes <= 0:
        return 0, 0
    if status == 200:
        return 0, body_bytes
    match = _CONTENT_RANGE.match(content_range.strip())
    if status != 206 or match is None:
        return 0, 0
    first, last = int(match.group(1)), int(match.group(2))
    return first, first + max(0, min(body_bytes, last + 1 - first))
