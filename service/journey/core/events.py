"""Touchpoints: decoding and validating the input wire format (schemas/touchpoint.schema.json).

The checks here implement the JSON Schema by hand because a generic validator costs more than
the rest of the hot path together; tests/unit/test_events.py holds the two to the same verdicts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import orjson

CHANNELS: Final[frozenset[str]] = frozenset(
    {"social", "email", "search", "ads", "direct", "referral", "store", "support", "other"}
)
DEFAULT_CHANNEL: Final[str] = "other"
MAX_ID_LEN: Final[int] = 200
MAX_TYPE_LEN: Final[int] = 100

_TYPE_RE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")
# Years 1900-2199: a wider range is almost surely a bug upstream, and far dates break date maths.
_TS_RE = re.compile(r"(?:19|2[01])\d{2}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})")
_CURRENCY_RE = re.compile(r"[A-Z]{3}")


class InvalidTouchpoint(ValueError):
    """A touchpoint that cannot be processed. ``reason`` is machine-readable, the message is for people."""

    def __init__(self, reason: str, error: str) -> None:
        super().__init__(error)
        self.reason = reason
        self.error = error


@dataclass(slots=True)
class Touchpoint:
    event_id: str
    customer_id: str | None
    anonymous_id: str | None
    type: str
    timestamp: str
    #: Event time, seconds since the epoch (UTC).
    ts: float
    channel: str
    properties: dict[str, Any]

    @property
    def profile_id(self) -> str:
        """The id the journey is kept under: the customer, or the anonymous visitor when there is none."""
        return self.customer_id if self.customer_id is not None else self.anonymous_id  # type: ignore[return-value]


def decode(raw: bytes) -> Touchpoint:
    """Bytes off the wire -> a valid Touchpoint, or InvalidTouchpoint with the reason."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as uexc:
            raise InvalidTouchpoint(
                "not_utf8",
                f"the value is not UTF-8 text ({uexc.reason} at byte {uexc.start}); "
                f"publish touchpoints as UTF-8 JSON",
            ) from None
        raise InvalidTouchpoint("not_json", f"the value is not JSON: {exc}") from None
    return validate(data)


def validate(data: Any) -> Touchpoint:
    """A decoded JSON value -> Touchpoint, checking every rule of the touchpoint schema."""
    if not isinstance(data, dict):
        raise InvalidTouchpoint("not_object", f"a touchpoint must be a JSON object, got {type(data).__name__}")
    event_id = data.get("event_id")
    if not isinstance(event_id, str) or not 0 < len(event_id) <= MAX_ID_LEN:
        raise _violation("event_id", event_id, f"a string of 1 to {MAX_ID_LEN} characters, unique per event")
    customer_id = _optional_id(data, "customer_id")
    anonymous_id = _optional_id(data, "anonymous_id")
    if customer_id is None and anonymous_id is None:
        raise InvalidTouchpoint(
            "schema_violation",
            f"event {event_id!r}: neither customer_id nor anonymous_id is set; every touchpoint needs one",
        )
    etype = data.get("type")
    if not isinstance(etype, str) or len(etype) > MAX_TYPE_LEN or not _TYPE_RE.fullmatch(etype):
        raise _violation("type", etype, "a snake_case event type such as add_to_cart", event_id)
    timestamp = data.get("timestamp")
    if not isinstance(timestamp, str) or not _TS_RE.fullmatch(timestamp):
        raise _violation("timestamp", timestamp, "an RFC 3339 time with an offset in the years 1900-2199, e.g. 2024-05-01T12:00:00+00:00", event_id)
    try:
        # upper(): RFC 3339 allows 't' and 'z', fromisoformat does not.
        ts = datetime.fromisoformat(timestamp.upper()).timestamp()
    except ValueError as exc:
        raise _violation("timestamp", timestamp, f"a real date and time ({exc})", event_id) from None
    channel = data.get("channel", DEFAULT_CHANNEL)
    if channel is None:
        channel = DEFAULT_CHANNEL
    elif channel not in CHANNELS:
        raise _violation("channel", channel, f"one of {', '.join(sorted(CHANNELS))}", event_id)
    properties = data.get("properties")
    if properties is None:
        properties = {}
    elif not isinstance(properties, dict):
        raise _violation("properties", properties, "a JSON object", event_id)
    elif properties:
        _check_properties(properties, event_id)
    return Touchpoint(event_id, customer_id, anonymous_id, etype, timestamp, ts, channel, properties)


def _optional_id(data: dict[str, Any], field: str) -> str | None:
    value = data.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_LEN:
        raise _violation(field, value, f"a string of 1 to {MAX_ID_LEN} characters or absent", data.get("event_id"))
    return value


def _check_properties(p: dict[str, Any], event_id: str) -> None:
    for key in ("order_id", "cart_id"):
        v = p.get(key)
        if v is not None and not (isinstance(v, str) or _is_integer(v)):
            raise _violation(f"properties.{key}", v, "a string or an integer", event_id)
    if "order_id" in p and p["order_id"] is None:
        raise _violation("properties.order_id", None, "a string or an integer", event_id)
    amount = p.get("amount")
    if "amount" in p and (isinstance(amount, bool) or not isinstance(amount, (int, float))):
        raise _violation("properties.amount", amount, "a number", event_id)
    currency = p.get("currency")
    if "currency" in p and (not isinstance(currency, str) or not _CURRENCY_RE.fullmatch(currency)):
        raise _violation("properties.currency", currency, "a three-letter ISO 4217 code such as EUR", event_id)
    rating = p.get("rating")
    if "rating" in p and not (_is_integer(rating) and 1 <= rating <= 5):
        raise _violation("properties.rating", rating, "an integer from 1 to 5", event_id)
    if "cart_id" in p and p["cart_id"] is None:
        raise _violation("properties.cart_id", None, "a string or an integer", event_id)


def _is_integer(v: Any) -> bool:
    # JSON Schema's "integer" admits 4.0; a bool is not a number there.
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())


def _violation(field: str, value: Any, expected: str, event_id: Any = None) -> InvalidTouchpoint:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    where = f"event {event_id!r}: " if isinstance(event_id, str) else ""
    got = "it is missing or null" if value is None else f"got {shown}"
    return InvalidTouchpoint("schema_violation", f"{where}field {field} must be {expected}; {got}")
