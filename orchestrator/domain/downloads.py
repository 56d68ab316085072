"""What one download key may deliver: one file, with room to resume, never over and over."""

from __future__ import annotations

DELIVERY_ALLOWANCE = 2  # file sizes one key may send in all, resumes and restarts included


def delivery_budget_bytes(size: int) -> int:
    """The most bytes one key may ever send for a file of `size` bytes, whatever the Ranges.

    Twice the file: the one delivery, plus one file's worth for what a broken transfer costs.
    Bytes that sat in socket buffers when a link broke are counted yet sent again on resume, a
    resume may start anywhere inside the delivered prefix, and a device that lost its partial
    image (a reboot) may start over once. A fixed 10% would not cover one lost socket buffer
    (hundreds of KiB) of a small image; anything more than twice would let a key serve the
    file again and again.
    """
    return DELIVERY_ALLOWANCE * size
