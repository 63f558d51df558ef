"""Event-time helpers: epoch seconds <-> RFC 3339."""

from __future__ import annotations

from datetime import UTC, datetime

DAY_S = 86400.0


def iso(ts: float | None) -> str | None:
    """Epoch seconds -> RFC 3339 in UTC, or None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=UTC).isoformat()


def parse_iso(value: str) -> float:
    """RFC 3339 (with offset) -> epoch seconds. A value without an offset is refused, not guessed."""
    dt = datetime.fromisoformat(value.upper() if len(value) > 10 else value)
    if dt.tzinfo is None:
        raise ValueError(f"time {value!r} has no UTC offset; write it like 2024-05-01T12:00:00+00:00")
    return dt.timestamp()


def utc_day(ts: float) -> int:
    """Days since the epoch (UTC) of an event time."""
    return int(ts // DAY_S)
