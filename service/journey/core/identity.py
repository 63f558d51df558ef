"""Identity: an anonymous visitor's journey becomes a known customer's, exactly, in the stream.

The rules (which ids link, first link wins, junk ids never link) and the merge of two states,
as plain functions over plain data; worker/pipeline.py carries them out with Kafka records
(link and merge requests keyed by the id whose partition must act). Details: docs/identity.md.
"""

from __future__ import annotations

import hashlib
import hmac
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from journey.core.clock import iso, utc_day
from journey.core.machine import signals_after
from journey.core.stages import ADVOCACY, PURCHASE, RETENTION, STAGES
from journey.core.state import (
    ADVOCACY_SIGNAL,
    EVENT_KEY_SIZE,
    RENEWAL_SIGNAL,
    UPGRADED_KEY,
    CustomerState,
    event_key,
    has_key,
    id_hash,
)
from journey.errors import InputError

#: Anonymous ids that name no one (SDK placeholders); configurable (JOURNEY_IDENTITY_JUNK_IDS).
DEFAULT_JUNK_IDS = frozenset({"", "undefined", "null", "none", "nil", "anonymous", "unknown", "0", "-1"})

#: The link-only touchpoint type (Segment's identify): links its two ids, moves no stage.
IDENTIFY = "identify"

#: CustomerState.extra keys: the customer's identity memory (links asked for, ids merged, and
#: whether the key was ever seen as a customer id), and the alias of a linked anonymous id.
IDS_KEY = "id"
ALIAS_KEY = "alias"

#: Kafka header of the worker's own records on the input topic, and its values; the signature
#: header proves a record was written by a worker of this deployment (JOURNEY_CONTROL_SECRET).
CONTROL_HEADER = "journey-control"
SIGNATURE_HEADER = "journey-signature"
#: On every record the workers write to the input topic: the app id of the deployment that wrote
#: it. Another deployment reading the same topic (a rebuild under a new app id) drops them, but
#: forgets: it writes its own from the originals, and would otherwise apply both.
ORIGIN_HEADER = "journey-origin"
LINK, MERGE, ALIASED = b"link", b"merge", b"alias"
#: Event times a request may carry: the touchpoint schema's range (1900-01-01 to 2199-12-31).
EARLIEST, LATEST = -2208988800.0, 7258118399.0


def control_key(secret: str | None, app_id: str) -> bytes:
    """The signing key: the configured secret, else one derived from the app id (any producer
    that knows the app id can then forge; set JOURNEY_CONTROL_SECRET in production)."""
    return hashlib.sha256((secret if secret is not None else f"journey-control:{app_id}").encode()).digest()


def sign(key: bytes, control: bytes, record_key: bytes, value: bytes) -> bytes:
    """The signature of one control record (key, kind and value all covered)."""
    return hmac.digest(key, b"\x1f".join((control, record_key, value)), "sha256")[:16]


def signed(key: bytes, signature: bytes | None, control: bytes, record_key: bytes | None, value: bytes | None) -> bool:
    if signature is None or record_key is None or value is None:
        return False
    return hmac.compare_digest(signature, sign(key, control, record_key, value))


def junk_ids(setting: str | None) -> frozenset[str]:
    """The junk ids of a comma-separated setting (compared lower-cased, stripped)."""
    if setting is None:
        return DEFAULT_JUNK_IDS
    return frozenset(part.strip().lower() for part in setting.split(",")) | {""}


def linkable(anonymous_id: str | None, junk: frozenset[str]) -> bool:
    return anonymous_id is not None and anonymous_id.strip().lower() not in junk


# --- aliases: the anonymous id's record once it is linked --------------------------------------
def make_alias(customer_id: str, at: float, trigger_event_id: str, shipped: CustomerState | None = None) -> CustomerState:
    """The record an anonymous id keeps once linked: whom its events belong to now, and the
    dedupe memory of the state it shipped to the customer (see :func:`shipped_before`)."""
    st = CustomerState()
    st.extra[ALIAS_KEY] = [customer_id, at, trigger_event_id]
    if shipped is not None:
        st.seen = shipped.seen[:]
        st.seen_legacy = shipped.seen_legacy[:] if shipped.seen_legacy is not None else None
    return st


def shipped_before(alias: CustomerState, event_id: str) -> bool:
    """Whether an event reaching an alias was in the state it shipped with the merge: a replay
    of the anonymous partition after the alias was written, or a producer's retry. The customer
    may no longer remember it (its dedupe memory keeps its own newest events first), so it must
    not be re-keyed to them again."""
    seen, legacy = alias.seen, alias.seen_legacy
    key = event_key(event_id)
    return (key in seen and has_key(seen, key)) or (legacy is not None and id_hash(event_id) in legacy)


def alias_of(state: CustomerState | None) -> str | None:
    """The customer a linked anonymous id belongs to (None: not an alias)."""
    if state is None or not state.extra:
        return None
    alias = state.extra.get(ALIAS_KEY)
    return alias[0] if alias else None


# --- the customer's identity memory (bounded) --------------------------------------------------
def _memory(state: CustomerState) -> dict[str, Any]:
    """The identity memory, created on first use: "l" links asked for, "m" ids merged, "a" set
    on an anonymous visitor's profile (most customers never need any of it)."""
    ids: dict[str, Any] | None = state.extra.get(IDS_KEY)
    if ids is None:
        ids = state.extra[IDS_KEY] = {}
    return ids


def mark_anonymous(state: CustomerState, new: bool) -> None:
    """An anonymous-only touchpoint under the state's key. A ``new`` profile is marked: a link may
    make it a customer's alias. One that already exists is not (an id seen as a customer_id stays
    a customer whichever came first), unless it was written before journey knew anonymous ids
    (UPGRADED_KEY): that one is marked as it always was."""
    extra = state.extra
    if not new:
        if UPGRADED_KEY not in extra:
            return
        del extra[UPGRADED_KEY]
    ids = extra.get(IDS_KEY)
    if ids is None:
        extra[IDS_KEY] = {"a": 1}
    elif "a" not in ids:
        ids["a"] = 1


def mark_customer(state: CustomerState) -> bool:
    """The state's key has come as a customer_id: it is never anyone's alias from now on.
    Returns whether the state changed."""
    extra = state.extra
    if not extra:
        return False
    changed = extra.pop(UPGRADED_KEY, None) is not None
    ids = extra.get(IDS_KEY)
    if ids is not None and "a" in ids:
        del ids["a"]
        return True
    return changed


def is_customer(state: CustomerState | None) -> bool:
    """A profile that is not an anonymous visitor's (it began with, or has since seen, a
    customer_id, by a touchpoint, an identify or a merge): never anyone's alias. A profile written
    before journey knew anonymous ids, and not seen since, is not: a link naming its key as an
    anonymous id is the best word on what it was (most likely a device)."""
    if state is None:
        return False
    extra = state.extra
    if not extra:
        return True
    if UPGRADED_KEY in extra:
        return False
    ids = extra.get(IDS_KEY)
    return ids is None or "a" not in ids


def _remembered(window: Sequence[Any], value: Any, size: int) -> list[Any]:
    """``window`` with ``value`` added, the last ``size`` kept: a new list, never the old one
    changed (a copy of a state -- copy() copies extra one level deep -- shares the old one)."""
    return [*window, value][-size:]


def needs_link(state: CustomerState, anonymous_id: str, window: int) -> bool:
    """Whether a link request for ``anonymous_id`` must go out (and note that it does).

    Each customer remembers the last ``window`` anonymous ids it asked to link; past that, a
    request may go out again, which the anonymous id's side recognises and ignores."""
    ids = _memory(state)
    links = ids.get("l", ())
    if anonymous_id in links:  # the ids as they are: a short list, no hashing on the hot path
        return False
    ids["l"] = _remembered(links, anonymous_id, window)
    return True


def already_merged(state: CustomerState | None, anonymous_id: str) -> bool:
    if state is None or not state.extra or IDS_KEY not in state.extra:
        return False
    return anonymous_id in state.extra[IDS_KEY].get("m", ())


# --- requests ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LinkRequest:
    """To the anonymous id's partition: ``anonymous_id`` is ``customer_id`` from ``at`` on."""

    anonymous_id: str
    customer_id: str
    at: float
    trigger_event_id: str
    #: Where the record that asked for the link was: (input topic, partition, offset) (None: a
    #: request from an older worker). The merge carries it back, so that a forget applied at that
    #: partition after it can refuse the merge even once an undo has lifted the suppression
    #: (docs/privacy.md).
    origin: tuple[str, int, int] | None = None

    def to_bytes(self) -> bytes:
        data: dict[str, Any] = {"anonymous_id": self.anonymous_id, "customer_id": self.customer_id,
                                "at": self.at, "trigger_event_id": self.trigger_event_id}
        if self.origin is not None:
            data["origin"] = self.origin
        return orjson.dumps(data)


@dataclass(frozen=True, slots=True)
class MergeRequest:
    """To the customer's partition: the anonymous profile's state (None: it had none)."""

    anonymous_id: str
    customer_id: str
    at: float
    trigger_event_id: str
    #: The state's encoding: CustomerState.to_wire()'s bytes in a request built here, the JSON
    #: value read (not encoded again) in one decoded.
    state: bytes | list[Any] | None
    #: The link request's origin (LinkRequest.origin).
    origin: tuple[str, int, int] | None = None

    def to_bytes(self) -> bytes:
        state = orjson.Fragment(self.state) if type(self.state) is bytes else self.state
        data: dict[str, Any] = {"anonymous_id": self.anonymous_id, "customer_id": self.customer_id, "at": self.at,
                                "trigger_event_id": self.trigger_event_id, "state": state}
        if self.origin is not None:
            data["origin"] = self.origin
        return orjson.dumps(data)

    def anonymous_state(self) -> CustomerState:
        """The anonymous profile's state (raises what CustomerState's decoding raises). From a
        decoded request it is built on the request's own lists and dicts: call it once."""
        state = self.state
        if state is None:
            return CustomerState()
        return CustomerState.from_wire(state) if type(state) is bytes else CustomerState.from_value(state)


class BadRequest(InputError):
    """A control record that is not what this worker writes."""


def json_object(raw: bytes | None, what: str = "") -> dict[str, Any]:
    """A control record's value as a JSON object, or BadRequest saying ``what`` it is not."""
    try:
        data = orjson.loads(raw or b"")
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"{what}not JSON: {exc}") from None
    if type(data) is not dict:
        raise BadRequest(f"{what}not a JSON object")
    return data


def _fields(raw: bytes | None) -> dict[str, Any]:
    data = json_object(raw)
    for name in ("anonymous_id", "customer_id", "trigger_event_id"):
        if type(data.get(name)) is not str or not data[name]:
            raise BadRequest(f"{name} must be a non-empty string")
    if type(data.get("at")) not in (int, float) or not EARLIEST <= data["at"] <= LATEST:
        raise BadRequest("at must be a number of epoch seconds between 1900 and 2199")
    origin = data.get("origin")
    if origin is not None:
        if not (type(origin) is list and len(origin) == 3 and type(origin[0]) is str
                and type(origin[1]) is int and type(origin[2]) is int and origin[1] >= 0 and origin[2] >= 0):
            raise BadRequest("origin must be [input topic, partition, offset] or absent")
        data["origin"] = (origin[0], origin[1], origin[2])
    return data


def decode_link(raw: bytes | None) -> LinkRequest:
    d = _fields(raw)
    return LinkRequest(d["anonymous_id"], d["customer_id"], float(d["at"]), d["trigger_event_id"], d.get("origin"))


def decode_merge(raw: bytes | None) -> MergeRequest:
    d = _fields(raw)
    state = d.get("state")
    if state is not None and type(state) is not list:
        raise BadRequest("state must be a customer state's encoding or null")
    return MergeRequest(d["anonymous_id"], d["customer_id"], float(d["at"]), d["trigger_event_id"], state, d.get("origin"))


def identity_event(kind: str, anonymous_id: str, customer_id: str, at: float, trigger_event_id: str,
                   linked_customer_id: str | None = None) -> dict[str, Any]:
    """An event of journey.identities (schemas/identity.schema.json)."""
    event: dict[str, Any] = {"type": kind, "anonymous_id": anonymous_id, "customer_id": customer_id,
                             "at": iso(at), "trigger_event_id": trigger_event_id}
    if linked_customer_id is not None:
        event["linked_customer_id"] = linked_customer_id
    return event


# --- the merge ---------------------------------------------------------------------------------
def merge(into: CustomerState, other: CustomerState, anonymous_id: str, *, order_window: int, day_window: int,
          dedupe_window: int, touch_window: int, alias_window: int) -> tuple[int, int]:
    """Fold ``other`` (the anonymous profile) into ``into`` (the customer), in place, as if
    ``into`` had seen both ids' events: the higher stage, each stage's first-reached time the
    earlier, distinct orders and purchase days united, dedupe memories united, counts summed,
    first and last touch by event time. Returns (stage before, stage after)."""
    before = into.stage
    ids = _memory(into)
    ids.pop("a", None)  # a customer now, whatever it was
    ids["m"] = _remembered(ids.get("m", ()), anonymous_id, alias_window)
    into.events += other.events
    for channel, n in other.channels.items():
        into.channels[channel] = into.channels.get(channel, 0) + n
    if other.first_seen is not None and (
        into.first_seen is None or other.first_seen < into.first_seen
        or (other.first_seen == into.first_seen and (other.first_channel or "") < (into.first_channel or ""))
    ):
        into.first_seen, into.first_channel = other.first_seen, other.first_channel
    if other.last_seen is not None and (
        into.last_seen is None or other.last_seen > into.last_seen
        or (other.last_seen == into.last_seen and (other.last_channel or "") > (into.last_channel or ""))
    ):
        into.last_seen, into.last_channel = other.last_seen, other.last_channel
    # Orders: distinct across both (an order happened at its earliest line).
    times = dict(zip(into.orders, into.order_times, strict=True))
    for order, ts in zip(other.orders, other.order_times, strict=True):
        if order in times:
            into.purchases -= 1  # the same order under both ids
            known = times[order]
            times[order] = ts if known is None else known if ts is None else min(known, ts)
        else:
            times[order] = ts
    into.purchases += other.purchases
    kept = sorted(times.items(), key=lambda kv: (kv[1] is None, kv[1] or 0.0))[-order_window:] if len(times) > order_window else list(times.items())
    into.orders = [o for o, _ in kept]
    into.order_times = [t for _, t in kept]
    into.revenue += other.revenue
    into.first_purchase = _min(into.first_purchase, other.first_purchase)
    known_times = [t for t in into.order_times if t is not None]
    if len(known_times) == into.purchases:
        # Every order is still in the window with its time: days and the last purchase follow
        # exactly (an order shared by both ids happened at its earlier line).
        days = sorted({utc_day(t) for t in known_times})
        into.purchase_days = len(days)
        into.days = days[-day_window:]
        into.last_purchase = max(known_times) if known_times else _max(into.last_purchase, other.last_purchase)
    else:
        shared_days = set(into.days) & set(other.days)
        into.purchase_days += other.purchase_days - len(shared_days)
        into.days = sorted(set(into.days) | set(other.days))[-day_window:]
        into.last_purchase = _max(into.last_purchase, other.last_purchase)
    into.renewal_max = _max(into.renewal_max, other.renewal_max)
    into.advocacy_max = _max(into.advocacy_max, other.advocacy_max)
    for kind, n in other.negatives.items():
        into.negatives[kind] = into.negatives.get(kind, 0) + n
    into.last_negative = _max(into.last_negative, other.last_negative)
    into.seen, into.seen_legacy = _seen_union(into, other, dedupe_window)
    into.reached = [_min(a, b) for a, b in zip(into.reached, other.reached, strict=True)]
    # The touches before the first purchase, and the signals that count once a purchase is known.
    pre = sorted({tuple(e) for e in (*into.pre_purchase, *other.pre_purchase)})
    stage = max(into.stage, other.stage)
    first = into.first_purchase
    if first is not None:
        stage = max(stage, PURCHASE)
        _reach(into, PURCHASE, first)
        order_times = sorted(t for t in into.order_times if t is not None)
        if into.purchases >= 2:
            stage = max(stage, RETENTION)
            _reach(into, RETENTION, order_times[1] if len(order_times) >= 2 else (into.last_purchase or first))
        for ts, _channel, code in pre[bisect_left(pre, (first,)):]:
            if code == RENEWAL_SIGNAL:
                _reach(into, RETENTION, ts)
            elif code == ADVOCACY_SIGNAL:
                _reach(into, ADVOCACY, ts)
        stage = signals_after(into, first, stage)
        pre = [e for e in pre if e[0] <= first]
    into.pre_purchase = [list(e) for e in pre[-touch_window:]]
    if first is not None:
        last_touch = into.pre_purchase[-1][1] if into.pre_purchase else into.first_channel
        into.attribution = [into.first_channel, last_touch]
    into.stage = stage
    return before, stage


#: array's typecode of an EVENT_KEY_SIZE-byte unsigned integer.
_KEY_TYPECODE = "Q"
assert array(_KEY_TYPECODE).itemsize == EVENT_KEY_SIZE


def _seen_union(into: CustomerState, other: CustomerState, window: int) -> tuple[bytearray, list[int] | None]:
    """Both dedupe memories united (the other's ids first, as older), the latest ``window`` kept;
    ids from before version 4 (seen_legacy) are older than every other and go first."""
    size = EVENT_KEY_SIZE
    mine, theirs = into.seen, other.seen
    # The keys as machine integers (array does the slicing in C; the round trip is exact).
    keys = set(array(_KEY_TYPECODE, mine))  # a set: windows may be large
    seen = bytearray(array(_KEY_TYPECODE, [k for k in array(_KEY_TYPECODE, theirs) if k not in keys])) + mine
    del seen[:max(0, len(seen) - window * size)]
    room = window - len(seen) // size
    known = into.seen_legacy or []
    ids = set(known)
    legacy = [h for h in other.seen_legacy or () if h not in ids] + known
    return seen, (legacy[-room:] if room > 0 and legacy else None)


def check_mergeable(st: CustomerState) -> None:
    """Raise BadRequest unless ``st`` has the shape merge() relies on (a decoded state from a
    request is journey's own encoding, but a forged or damaged one must cost one record)."""
    ok = (
        type(st.stage) is int and type(st.reached) is list and len(st.reached) == len(STAGES)
        and -1 <= st.stage < len(STAGES) and _times(st.reached)
        and _ints((st.events, st.purchases, st.purchase_days), 0, _MAX_COUNT)
        and _name(st.first_channel) and _name(st.last_channel)
        and type(st.channels) is dict and _ints(st.channels.values(), 0, _MAX_COUNT)
        and type(st.negatives) is dict and _ints(st.negatives.values(), 0, _MAX_COUNT)
        and type(st.revenue) in (int, float) and -_MAX_REVENUE <= st.revenue <= _MAX_REVENUE
        and _times((st.first_seen, st.last_seen, st.first_purchase, st.last_purchase,
                    st.renewal_max, st.advocacy_max, st.last_negative))
        and type(st.orders) is list and type(st.order_times) is list and len(st.orders) == len(st.order_times)
        and _times(st.order_times) and _ints(st.orders, 0, _MAX_HASH) and type(st.days) is list
        and _ints(st.days, -_MAX_COUNT, _MAX_COUNT)
        and type(st.seen) is bytearray and len(st.seen) % EVENT_KEY_SIZE == 0
        and (st.seen_legacy is None or (type(st.seen_legacy) is list and _ints(st.seen_legacy, 0, _MAX_HASH)))
        and type(st.pre_purchase) is list and _touches(st.pre_purchase)
        and type(st.extra) is dict and ALIAS_KEY not in st.extra
    )
    if not ok:
        raise BadRequest("the anonymous state in the merge request is not a customer state this journey writes")


#: The event times a state may hold (a margin around what a touchpoint may carry).
_LOWEST, _HIGHEST = EARLIEST - 1e9, LATEST + 1e9


def _time(v: Any) -> bool:
    return type(v) in (int, float) and _LOWEST <= v <= _HIGHEST


def _times(values: Sequence[Any]) -> bool:
    """Every value None or an event time (plain loops: a merge checks dozens)."""
    for v in values:
        if v is not None and not _time(v):
            return False
    return True


#: Revenue either way: finite, and finite still once the customer's is added (not NaN, which
#: would encode as null and fail the customer's next purchase).
_MAX_REVENUE = 1e300
#: The largest count a merged state may carry: the customer's own count is added to it, and the
#: sum must still encode (orjson writes integers up to 64 bits).
_MAX_COUNT = 2**53
#: An id_hash() (order ids, event ids kept before encoding 4).
_MAX_HASH = 2**63 - 1


def _ints(values: Iterable[Any], lowest: int, highest: int) -> bool:
    """Every value an integer from ``lowest`` to ``highest`` (counts, hashes, purchase days)."""
    for n in values:
        if type(n) is not int or not lowest <= n <= highest:
            return False
    return True


def _name(value: Any) -> bool:
    """A channel as the state keeps it: a string, or None (anything else would reach the
    customer's attribution and the live aggregates, or fail encoding after the outputs went)."""
    return value is None or type(value) is str


def _touches(entries: list[Any]) -> bool:
    for e in entries:
        if type(e) is not list or len(e) != 3:
            return False
        if not _time(e[0]) or type(e[1]) is not str or type(e[2]) is not int:
            return False
    return True


def _reach(st: CustomerState, stage: int, ts: float) -> None:
    if st.reached[stage] is None or ts < st.reached[stage]:  # type: ignore[operator]
        st.reached[stage] = ts


def _min(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _max(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)

