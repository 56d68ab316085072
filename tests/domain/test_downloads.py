"""What a transfer's watcher does: renew the key's claim, or end a transfer that stalled."""

from __future__ import annotations

import pytest

from orchestrator.domain.downloads import TransferCheck, check_transfer

STALL_LIMIT_S = 30.0  # half the 60 s claim lease
RENEW_EVERY_S = 10.0


def test_a_moving_transfer_waits_for_its_next_renewal() -> None:
    assert check_transfer(
        now_s=105.0, last_progress_s=104.0, renew_due_s=110.0, stall_limit_s=STALL_LIMIT_S
    ) == (TransferCheck.WAIT, 110.0)


def test_a_due_renewal_is_made_while_the_transfer_moves() -> None:
    assert check_transfer(
        now_s=110.0, last_progress_s=109.0, renew_due_s=110.0, stall_limit_s=STALL_LIMIT_S
    ) == (TransferCheck.RENEW, 110.0)


def test_a_transfer_that_stops_moving_is_looked_at_again_when_its_stall_limit_is_reached() -> None:
    """Not at the next renewal after it: the stall limit is the bound, not a renewal later."""
    verdict, look_at_s = check_transfer(
        now_s=130.0, last_progress_s=101.0, renew_due_s=140.0, stall_limit_s=STALL_LIMIT_S
    )
    assert (verdict, look_at_s) == (TransferCheck.WAIT, 131.0)
    assert check_transfer(
        now_s=look_at_s, last_progress_s=101.0, renew_due_s=140.0, stall_limit_s=STALL_LIMIT_S
    ) == (TransferCheck.STALLED, 131.0)


@pytest.mark.parametrize("renew_due_s", [120.0, 131.0, 200.0])
def test_a_stalled_transfer_is_ended_rather_than_renewed(renew_due_s: float) -> None:
    verdict, _ = check_transfer(
        now_s=131.0, last_progress_s=101.0, renew_due_s=renew_due_s, stall_limit_s=STALL_LIMIT_S
    )
    assert verdict is TransferCheck.STALLED


def test_a_watcher_ends_a_stall_within_its_limit_whatever_the_renewal_period() -> None:
    """Stepping the watcher as the service does: it ends the transfer when the transfer has
    sent nothing for the stall limit, never a renewal period later."""
    last_progress_s = 3.0  # the last chunk went out then; nothing after it
    now_s, renew_due_s = 0.0, RENEW_EVERY_S
    renewals = 0
    while True:
        verdict, look_at_s = check_transfer(
            now_s=now_s,
            last_progress_s=last_progress_s,
            renew_due_s=renew_due_s,
            stall_limit_s=STALL_LIMIT_S,
        )
        if verdict is TransferCheck.STALLED:
            break
        if verdict is TransferCheck.RENEW:
            renewals += 1
            renew_due_s = now_s + RENEW_EVERY_S
            continue
        now_s = look_at_s
    assert now_s == last_progress_s + STALL_LIMIT_S
    assert renewals == 3  # at 10, 20 and 30 s: the claim never lapsed meanwhile
