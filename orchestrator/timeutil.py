"""UTC timestamps in the seed's form (`2024-01-15T10:30:00Z`)."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def isoformat_z(moment: datetime) -> str:
    """`moment` as ISO 8601 in UTC to the second, with a `Z` suffix."""
    return moment.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
