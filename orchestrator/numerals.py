"""Whole numbers written as text by callers (cursors, headers): ASCII digits, a bounded count.

`str.isdigit()` is true for '³' and '٣' as well as '3'; `int()` refuses the first, reads the
second as 3, and refuses any text of more than 4,300 digits. So text from outside is read
here, never with `isdigit()` and `int()`: anything but 1 to `max_digits` ASCII digits is None,
for the caller to refuse with a message of its own.
"""

from __future__ import annotations

MAX_DIGITS = 18  # below 2**63, and far below int()'s 4,300-digit limit


def whole_number(text: str, *, max_digits: int = MAX_DIGITS) -> int | None:
    """`text` as an int when it is 1 to `max_digits` ASCII digits; None otherwise."""
    if 0 < len(text) <= max_digits and text.isascii() and text.isdigit():
        return int(text)
    return None
