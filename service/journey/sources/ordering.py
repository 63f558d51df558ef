"""Event-time order for converted data sets.

Data sets are written per file (campaigns, then coupons, then transactions), but the journey
must see a customer's events in the order they happened, so converted events are sorted
before they are sent. The data sets here fit in memory; no external sort.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from journey.errors import InputError


def event_time(event: Mapping[str, Any]) -> float:
    """Seconds since the epoch of a touchpoint's ``timestamp`` (RFC 3339 with an offset)."""
    raw = event.get("timestamp")
    if not isinstance(raw, str):
        raise InputError(
            f"event {event.get('event_id')!r} has no string timestamp ({raw!r}); "
            f"every touchpoint needs an RFC 3339 timestamp such as 1997-01-01T12:00:00+00:00"
        )
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise InputError(
            f"event {event.get('event_id')!r} has timestamp {raw!r}, which is not RFC 3339; "
            f"write it like 1997-01-01T12:00:00+00:00"
        ) from None
    if parsed.tzinfo is None:
        # A naive time would silently take the machine's zone: refuse rather than guess.
        raise InputError(
            f"event {event.get('event_id')!r} has timestamp {raw!r} without an offset; "
            f"add one, e.g. {raw}+00:00"
        )
    return parsed.timestamp()


def in_event_time_order(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """All ``events`` sorted by event time; events with the same time keep their input order."""
    # sorted() is stable, which keeps ties (e.g. CDNOW's same-day purchases) in file order.
    return sorted(events, key=event_time)
