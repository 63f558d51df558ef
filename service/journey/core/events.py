"""Touchpoints: decoding and validating the input wire format (schemas/touchpoint.schema.json).

msgspec reads a record's JSON straight into a Touchpoint (types and id lengths checked in C), and
the rest of the JSON Schema is checked by hand, from caches of pieces already found valid: a
generic validator costs more than the rest of the hot path together. Anything unusual goes to a
strict path that words the error; tests/unit/test_events*.py hold all paths and the JSON Schema
to the same verdicts. Details: docs/journey-rules.md.
"""

from __future__ import annotations

import re
import reprlib
from datetime import date, datetime
from typing import TYPE_CHECKING, Annotated, Any, Final, TypeGuard

import msgspec
import orjson

from journey.core.memo import remember
from journey.errors import InputError

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


class InvalidTouchpoint(InputError):
    """A touchpoint that cannot be processed. ``reason`` is machine-readable, the message is for people."""

    def __init__(self, reason: str, error: str) -> None:
        super().__init__(error)
        self.reason = reason
        self.error = error


class _Derived:
    """Touchpoint's attributes that decoding computes: never read off the wire (and not carried
    by msgspec's copies, pickling or equality, which nothing in journey uses)."""

    __slots__ = ("ts", "profile_id")
    #: Event time, seconds since the epoch (UTC).
    ts: float
    #: The id the journey is kept under: the customer, or the anonymous visitor when there is
    #: none. An attribute set in decoding, not a property: it is read for every event.
    profile_id: str


#: An id on the wire: a string of 1 to MAX_ID_LEN characters (msgspec checks it in C).
_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LEN)]


class Touchpoint(_Derived, msgspec.Struct, kw_only=True, forbid_unknown_fields=True, gc=False):
    """A valid touchpoint. The fields are the wire format's: decode() reads them in C, straight
    into this object. A record with other top-level fields takes the orjson path, then the
    cached checks as any other (msgspec would skip their bytes unchecked, and journey refuses
    what is not UTF-8 JSON wherever it is). Build one by hand with :func:`touchpoint`."""

    event_id: _Id
    type: str
    timestamp: str
    customer_id: _Id | None = None
    anonymous_id: _Id | None = None
    if TYPE_CHECKING:  # after decoding; null on the wire becomes the default (_complete)
        channel: str
        properties: dict[str, Any]
    else:
        channel: str | None = DEFAULT_CHANNEL
        properties: dict[str, Any] | None = {}


def touchpoint(
    event_id: str, customer_id: str | None, anonymous_id: str | None, type: str, timestamp: str, ts: float,  # noqa: A002
    channel: str, properties: dict[str, Any],
) -> Touchpoint:
    """A Touchpoint from values already checked (the strict path, tests)."""
    tp = Touchpoint(event_id=event_id, customer_id=customer_id, anonymous_id=anonymous_id, type=type,
                    timestamp=timestamp, channel=channel, properties=properties)
    tp.ts = ts
    tp.profile_id = customer_id if customer_id is not None else anonymous_id  # type: ignore[assignment]
    return tp


def decode(raw: bytes) -> Touchpoint:
    """Bytes off the wire -> a valid Touchpoint, or InvalidTouchpoint with the reason."""
    try:
        tp = _decode_wire(raw)  # types and id lengths checked in C
    except Exception:  # noqa: BLE001 - anything msgspec refuses, the path below judges and words
        pass
    else:
        if _complete(tp, wire=True):
            return tp
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


_decode_wire = msgspec.json.Decoder(Touchpoint).decode
_WIRE_FIELDS: Final[frozenset[str]] = frozenset(f.name for f in msgspec.structs.fields(Touchpoint))


# --- fast path -------------------------------------------------------------------------------
# Strings already found valid. Each cache is bounded (cleared when full), so a producer sending
# ever new values costs the strict checks' time, never unbounded memory.
CACHE_MAX: Final[int] = 10_000
_VALID_TYPES: set[str] = set()
_VALID_CURRENCIES: set[str] = set()
# A timestamp is read as three remembered pieces, each worth microseconds since the epoch:
# 'YYYY-MM-DDTHH' -> the hour (as if UTC); ':MM:SS' -> into the hour (3600 keys at most);
# what follows the seconds ('Z', '+HH:MM', '.fff+HH:MM', ...) -> the fraction less the offset.
# Their sum over 10**6 is datetime.fromisoformat(ts.upper()).timestamp() to the bit: that too is
# whole microseconds over 10**6 (timedelta.total_seconds()), and int / int rounds correctly.
_HOURS: dict[str, int] = {}
_MINUTE_SECONDS: dict[str, int] = {}
_TAILS: dict[str, int] = {}
#: 'Z' or '+HH:MM' -> the offset in microseconds, for the tails not remembered whole.
_ZONES: dict[str, int] = {}
_EPOCH_ORDINAL: Final[int] = date(1970, 1, 1).toordinal()
# The properties _check_properties looks at, by what they must be (exact types here: a bool, or
# a float rating like 4.0, is for the strict path to judge); all others are free-form.
_PROPERTY_RULES: Final[dict[str, str]] = {
    "order_id": "id", "cart_id": "id", "amount": "number", "currency": "currency", "rating": "rating",
}
#: The integers orjson reads as ints (it reads a larger one as a float, or refuses it beyond a
#: double); msgspec reads any as an int, so a property beyond them goes to the orjson path.
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


#: The largest order line amount, either sign (a negative line is a correction and lowers revenue).
MAX_AMOUNT: Final[float] = 1e12


def validate(data: Any) -> Touchpoint:
    """A decoded JSON value -> Touchpoint, checking every rule of the touchpoint schema."""
    if type(data) is dict:
        if not _WIRE_FIELDS.issuperset(data):
            # Other fields are allowed (and were read already); the Struct refuses them only so
            # that decode() never skips bytes unchecked.
            data = {k: v for k, v in data.items() if k in _WIRE_FIELDS}
        try:
            tp = msgspec.convert(data, Touchpoint)
        except Exception:  # noqa: BLE001 - the strict path judges and words it
            pass
        else:
            if _complete(tp, wire=False):
                return tp
    return _validate_strict(data)


def _complete(tp: Touchpoint, *, wire: bool) -> bool:
    """The rules msgspec did not check, from the caches of pieces already found valid; sets
    ``ts`` and ``profile_id``. False: not surely valid (the strict path then judges). ``wire``:
    msgspec read the bytes, not orjson (see _properties_surely_valid)."""
    customer_id = tp.customer_id
    etype = tp.type
    properties = tp.properties
    if properties is None:
        tp.properties = properties = {}
    if tp.channel is None:
        tp.channel = DEFAULT_CHANNEL
    if (
        (customer_id is None and tp.anonymous_id is None)
        or (etype not in _VALID_TYPES and not _remember_type(etype))
        or tp.channel not in CHANNELS
        or (properties and not _properties_surely_valid(properties, wire))
    ):
        return False
    timestamp = tp.timestamp
    try:
        us = _HOURS[timestamp[:13]] + _MINUTE_SECONDS[timestamp[13:19]]
    except KeyError:
        parsed = _epoch_us(timestamp)
        if parsed is None:
            return False
        us = parsed
    else:
        # The tail apart, with .get: microsecond fractions are never remembered whole, and a
        # KeyError on every such event would cost more than the rest of this function.
        rest = timestamp[19:]
        tail = _TAILS.get(rest)
        if tail is None:
            # '.ffffff' and a zone seen before: the common tail not remembered, read in place.
            offset = _ZONES.get(rest[7:])
            digits = rest[1:7]
            if offset is not None and rest[0] == "." and digits.isdigit() and digits.isascii():
                tail = int(digits) - offset
            else:
                tail = _tail_us(rest)
                if tail is None:
                    return False
        us += tail
    tp.ts = us / 1_000_000
    tp.profile_id = customer_id if customer_id is not None else tp.anonymous_id  # type: ignore[assignment]  # one is a str (checked above)
    return True


def _epoch_us(ts: str) -> int | None:
    """'YYYY-MM-DDTHH:MM:SS[.f](Z|+HH:MM)' -> microseconds since the epoch, remembering its pieces.

    Only ASCII digits, years 1900-2199, a real date and time, 1 to 9 fraction digits (truncated
    to microseconds, as datetime.fromisoformat does) and offsets up to 23:59; None for anything
    else, which the strict path then judges.
    """
    if len(ts) < 20 or not ts.isascii():  # ASCII: str.isdigit() below then means 0-9 only
        return None
    head, minute_second, rest = ts[:13], ts[13:19], ts[19:]
    hour = _HOURS.get(head)
    if hour is None:
        y, mo, d, h = head[0:4], head[5:7], head[8:10], head[11:13]
        if not (
            head[4] == "-" and head[7] == "-" and head[10] in "Tt"
            and y.isdigit() and mo.isdigit() and d.isdigit() and h.isdigit()
            and 1900 <= int(y) <= 2199 and int(h) <= 23
        ):
            return None
        try:
            days = date(int(y), int(mo), int(d)).toordinal() - _EPOCH_ORDINAL
        except ValueError:  # Feb 30 and the like
            return None
        hour = (days * 86_400 + int(h) * 3_600) * 1_000_000
        remember(_HOURS, head, hour, CACHE_MAX)
    minute_seconds = _MINUTE_SECONDS.get(minute_second)
    if minute_seconds is None:
        mm, ss = minute_second[1:3], minute_second[4:6]
        if not (
            minute_second[0] == ":" and minute_second[3] == ":" and mm.isdigit() and ss.isdigit()
            and int(mm) <= 59 and int(ss) <= 59
        ):
            return None
        minute_seconds = (int(mm) * 60 + int(ss)) * 1_000_000
        _MINUTE_SECONDS[minute_second] = minute_seconds
    tail = _TAILS.get(rest)
    if tail is None:
        tail = _tail_us(rest)
        if tail is None:
            return None
    return hour + minute_seconds + tail


def _tail_us(rest: str) -> int | None:
    """'[.f](Z|+HH:MM)' -> the fraction's microseconds less the offset's; None if it is not that."""
    if not rest or not rest.isascii():  # ASCII: isdigit() then means 0-9 only
        return None
    if rest[-1] in "Zz":
        frac, zone = rest[:-1], rest[-1:]
    else:
        frac, zone = rest[:-6], rest[-6:]
    offset = _ZONES.get(zone)
    if offset is None:
        offset = _offset_us(zone)
        if offset is None:
            return None
    if not frac:
        remember(_TAILS, rest, -offset, CACHE_MAX)
        return -offset
    digits = frac[1:]
    if not (frac[0] == "." and 0 < len(digits) <= 9 and digits.isdigit()):
        return None
    # Truncated to microseconds, as fromisoformat does.
    tail = (int(digits) if len(digits) == 6 else int(digits[:6].ljust(6, "0"))) - offset
    if len(digits) <= 3:  # whole seconds and milliseconds repeat; remembering microseconds would only churn
        remember(_TAILS, rest, tail, CACHE_MAX)
    return tail


def _offset_us(zone: str) -> int | None:
    """'Z' or '+HH:MM' -> the offset in microseconds (remembered); None if it is neither."""
    if zone in ("Z", "z"):
        offset = 0
    else:
        hh, mm = zone[1:3], zone[4:6]
        if not (
            len(zone) == 6 and zone[0] in "+-" and zone[3] == ":" and hh.isdigit() and mm.isdigit()
            and int(hh) <= 23 and int(mm) <= 59
        ):
            return None
        offset = (int(hh) * 3_600 + int(mm) * 60) * 1_000_000
        if zone[0] == "-":
            offset = -offset
    remember(_ZONES, zone, offset, CACHE_MAX)
    return offset


def _remember_type(etype: str) -> bool:
    """Whether ``etype`` is a valid type string, remembering it if so."""
    if len(etype) > MAX_TYPE_LEN or not _TYPE_RE.fullmatch(etype):
        return False
    if len(_VALID_TYPES) >= CACHE_MAX:
        _VALID_TYPES.clear()
    _VALID_TYPES.add(etype)
    return True


def _remember_currency(currency: str) -> bool:
    if not _CURRENCY_RE.fullmatch(currency):
        return False
    if len(_VALID_CURRENCIES) >= CACHE_MAX:
        _VALID_CURRENCIES.clear()
    _VALID_CURRENCIES.add(currency)
    return True


def _properties_surely_valid(p: dict[str, Any], wire: bool) -> bool:
    """True only when _check_properties would pass ``p`` and, with ``wire`` (msgspec read the
    bytes), orjson would have read the same values; False means "ask them"."""
    for key, v in p.items():
        t = type(v)
        if wire:
            if t is int:
                if not _INT_MIN <= v <= _INT_MAX:
                    return False  # orjson reads it as a float, or refuses it (beyond a double)
            elif t is dict or t is list:
                return False  # nested: orjson's depth limit and numbers judge it
        rule = _PROPERTY_RULES.get(key)
        if rule is None:
            continue
        if rule == "id":
            if t is not str and t is not int:
                return False
        elif rule == "number":
            if (t is not float and t is not int) or not -MAX_AMOUNT <= v <= MAX_AMOUNT:
                return False
        elif rule == "currency":
            if t is not str or (v not in _VALID_CURRENCIES and not _remember_currency(v)):
                return False
        elif t is not int or not 1 <= v <= 5:  # rating
            return False
    return True


# --- strict path -----------------------------------------------------------------------------


def _validate_strict(data: Any) -> Touchpoint:
    """The schema's rules one by one, in order, each failure worded for the producer."""
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
    elif not isinstance(channel, str) or channel not in CHANNELS:
        raise _violation("channel", channel, f"one of {', '.join(sorted(CHANNELS))}", event_id)
    properties = data.get("properties")
    if properties is None:
        properties = {}
    elif not isinstance(properties, dict):
        raise _violation("properties", properties, "a JSON object", event_id)
    elif properties:
        _check_properties(properties, event_id)
    return touchpoint(event_id, customer_id, anonymous_id, etype, timestamp, ts, channel, properties)


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
    if isinstance(amount, (int, float)) and not -MAX_AMOUNT <= amount <= MAX_AMOUNT:
        # A sum of a few amounts near the float limit is infinite, which no state can record.
        raise _violation("properties.amount", amount, f"a number from -{MAX_AMOUNT:.0e} to {MAX_AMOUNT:.0e}", event_id)
    currency = p.get("currency")
    if "currency" in p and (not isinstance(currency, str) or not _CURRENCY_RE.fullmatch(currency)):
        raise _violation("properties.currency", currency, "a three-letter ISO 4217 code such as EUR", event_id)
    rating = p.get("rating")
    if "rating" in p and not (_is_integer(rating) and 1 <= rating <= 5):
        raise _violation("properties.rating", rating, "an integer from 1 to 5", event_id)
    if "cart_id" in p and p["cart_id"] is None:
        raise _violation("properties.cart_id", None, "a string or an integer", event_id)


def _is_integer(v: Any) -> TypeGuard[int | float]:
    # JSON Schema's "integer" admits 4.0; a bool is not a number there.
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())


def _violation(field: str, value: Any, expected: str, event_id: Any = None) -> InvalidTouchpoint:
    shown = _shown(value)
    where = f"event {event_id!r}: " if isinstance(event_id, str) else ""
    got = "it is missing or null" if value is None else f"got {shown}"
    return InvalidTouchpoint("schema_violation", f"{where}field {field} must be {expected}; {got}")


# The offending value as shown in an error: a few levels and items of it, never the whole. repr()
# of a value nested 1,000 deep (which orjson reads) raises RecursionError, and of a 5 MB value
# would build 5 MB only to cut it.
_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlong = 40


def _shown(value: Any) -> str:
    if isinstance(value, str):
        shown = repr(value[:80])
    else:
        try:
            shown = _REPR.repr(value)
        except (RecursionError, ValueError):  # a deep dict subclass; an int too long to print
            shown = f"<{type(value).__name__}>"
    return shown if len(shown) <= 80 else shown[:77] + "..."
