"""What one download key may deliver (one file, with room to resume, never over and over), and
when a transfer holding its claim renews it or is ended as stalled."""

from __future__ import annotations

from enum import StrEnum

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


class TransferCheck(StrEnum):
    """What the watcher of a transfer does when it looks."""

    WAIT = "wait"  # look again later
    RENEW = "renew"  # renew the key's claim now
    STALLED = "stalled"  # end the transfer: it sent nothing for the stall limit


def check_transfer(
    *, now_s: float, last_progress_s: float, renew_due_s: float, stall_limit_s: float
) -> tuple[TransferCheck, float]:
    """What the watcher of a transfer does at `now_s`, and when it looks next.

    A transfer that has sent nothing for `stall_limit_s` (well inside the claim lease) is
    ended then, not at the next renewal after it, so one stalled connection never holds the
    key longer than the limit says; a moving transfer has its claim renewed when due.
    """
    stall_at_s = last_progress_s + stall_limit_s
    if now_s >= stall_at_s:
        return TransferCheck.STALLED, now_s
    if now_s >= renew_due_s:
        return TransferCheck.RENEW, now_s
    return TransferCheck.WAIT, min(stall_at_s, renew_due_s)
