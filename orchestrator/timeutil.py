"""UTC timestamps in the seed's form (`2024-01-15T10:30:00Z`)."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def utc_now() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def isoformat_z(moment: datetime) -> str:
    """`moment` as ISO 8601 in UTC to the second, with a `Z` suffix."""
    return moment.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_of_ms(ms: int) -> str:
    """Epoch milliseconds as `isoformat_z` writes a time."""
    return isoformat_z(datetime.fromtimestamp(ms / 1000, UTC))


def epoch_ms(text: str) -> int | None:
    """Epoch milliseconds of an ISO 8601 time (naive means UTC); None when it is not one."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def now_ms() -> int:
    """Epoch milliseconds."""
    return int(time.time() * 1000)
