"""Per-customer journey state, and its compact wire encoding for the changelog.

It must hold millions of customers, so every unbounded memory (event ids, order ids, purchase
days, transitions) is a bounded window, and ids are kept as 63- or 64-bit hashes, not strings.
"""

from __future__ import annotations

from binascii import a2b_base64, b2a_base64
from hashlib import blake2b
from typing import Any

import orjson
from xxhash import xxh3_64_digest

from journey.core.stages import NO_STAGE, STAGES
from journey.errors import EncodingError, NewerEncoding

_MASK63 = (1 << 63) - 1
#: Recent transitions kept for the customer view.
RECENT_TRANSITIONS = 10
ENCODING_VERSION = 4
#: Bytes of one event key in CustomerState.seen.
EVENT_KEY_SIZE = 8
#: Kinds of the touchpoints kept in CustomerState.pre_purchase.
TOUCH, RENEWAL_SIGNAL, ADVOCACY_SIGNAL = 0, 1, 2
#: CustomerState.extra key of a state read from an encoding before version 3 (written before
#: journey knew anonymous ids): whether its key was a customer's is not known (core.identity).
UPGRADED_KEY = "upgraded"


def id_hash(value: str) -> int:
    """A stable (process-independent) 63-bit hash of an id; Python's hash() is salted per process.
    Order ids, and the event ids of states written before version 4 (CustomerState.seen_legacy)."""
    return int.from_bytes(blake2b(value.encode(), digest_size=8).digest(), "big") & _MASK63


def event_key(event_id: str) -> bytes:
    """An event id as kept in CustomerState.seen: its 64-bit XXH3 hash (a stable, specified hash,
    about a tenth of id_hash's cost: it runs once per event)."""
    return xxh3_64_digest(event_id.encode())


def has_key(seen: bytes | bytearray, key: bytes | bytearray) -> bool:
    """Whether ``key`` is one of the EVENT_KEY_SIZE-byte keys of ``seen`` (a match must start on
    a key's boundary, not straddle two)."""
    i = seen.find(key)
    while i > 0 and i % EVENT_KEY_SIZE:
        i = seen.find(key, i + 1)
    return i >= 0


#: What CustomerState.from_wire can raise on a damaged record (a ValueError covers orjson's and
#: base64's errors and EncodingError): anything else, a MemoryError say, is not the record's fault.
DECODE_ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError, KeyError, IndexError, AttributeError)


class CustomerState:
    """Everything journey remembers about one customer (or anonymous visitor)."""

    __slots__ = (
        "stage", "reached", "events", "channels", "first_channel", "last_channel",
        "first_seen", "last_seen", "purchases", "purchase_days", "revenue",
        "first_purchase", "last_purchase", "orders", "days", "advocacy_max", "renewal_max",
        "negatives", "last_negative", "seen", "recent", "partition", "attribution", "extra",
        "order_times", "pre_purchase", "seen_legacy",
    )

    def __init__(self) -> None:
        self.stage: int = NO_STAGE
        #: Event time each stage was first reached (None: never, or skipped).
        self.reached: list[float | None] = [None] * len(STAGES)
        self.events: int = 0
        self.channels: dict[str, int] = {}
        self.first_channel: str | None = None
        self.last_channel: str | None = None
        self.first_seen: float | None = None
        self.last_seen: float | None = None
        #: Distinct purchases (orders), distinct purchase days (UTC), and revenue.
        self.purchases: int = 0
        self.purchase_days: int = 0
        self.revenue: float = 0.0
        self.first_purchase: float | None = None
        self.last_purchase: float | None = None
        self.orders: list[int] = []
        #: Each order's time (its earliest line), aligned with ``orders``; None: not known (a
        #: state written before version 3).
        self.order_times: list[float | None] = []
        self.days: list[int] = []
        #: Latest event time of an advocacy signal / a renewal, wherever it stood relative to
        #: purchases: a late purchase can make an earlier-arrived signal count.
        self.advocacy_max: float | None = None
        self.renewal_max: float | None = None
        self.negatives: dict[str, int] = {}
        self.last_negative: float | None = None
        #: The latest event ids applied (dedupe), oldest first: event_key()s end to end, one
        #: contiguous object (a list of ints is an object per id, and the check ran over them all).
        self.seen: bytearray = bytearray()
        #: Event ids from a state written before version 4, as id_hash()es, oldest first: older
        #: than every key in ``seen``, so they leave the window first (None once they have).
        self.seen_legacy: list[int] | None = None
        #: Recent transitions, oldest first: [from_stage, to_stage, at, trigger_type, channel].
        self.recent: list[list[Any]] = []
        #: The Kafka partition this customer lives in (set by the worker), so the live aggregates
        #: and timers of a partition can be rebuilt from the table after a rebalance.
        self.partition: int | None = None
        #: [first-touch channel, last-touch channel before the first purchase] once the customer
        #: has purchased: the earliest touchpoint, and the latest non-purchase touchpoint at or
        #: before the first purchase, by event time (whatever the arrival order).
        self.attribution: list[str | None] | None = None
        #: The non-purchase touchpoints at or before the first purchase (all of them before any
        #: purchase), as [time, channel, kind] sorted, the latest ``Limits.touch_window`` kept:
        #: what a purchase arriving late, or an earlier one, needs to find the touch before it
        #: and the renewals and advocacy signals that now count (kind: TOUCH, RENEWAL_SIGNAL,
        #: ADVOCACY_SIGNAL).
        self.pre_purchase: list[list[Any]] = []
        #: Room for other concerns' per-customer state (churn, pain points), kept in one record.
        self.extra: dict[str, Any] = {}

    # --- encoding -----------------------------------------------------------------------
    # A positional JSON array (the slots in _WIRE_FIELDS order after the version): a third
    # smaller than the keyed v1 object and about twice as fast both ways, which matters because
    # every changed customer is encoded once per batch. Version 3 appended order_times and
    # pre_purchase to version 2's fields; version 4 holds ``seen`` as base64 of its event keys and
    # appends seen_legacy. v1 to v3 records are still read (_upgrade, _legacy_seen).
    def to_wire(self) -> bytes:
        return orjson.dumps(
            [
                ENCODING_VERSION, self.stage, self.reached, self.events, self.channels,
                self.first_channel, self.last_channel, self.first_seen, self.last_seen,
                self.purchases, self.purchase_days, round(self.revenue, 4), self.first_purchase,
                self.last_purchase, self.orders, self.days, self.advocacy_max, self.renewal_max,
                self.negatives, self.last_negative, b2a_base64(self.seen, newline=False).decode("ascii"),
                self.recent, self.partition, self.attribution, self.extra, self.order_times,
                self.pre_purchase, self.seen_legacy,
            ]
        )

    @classmethod
    def from_wire(cls, raw: bytes) -> CustomerState:
        return cls.from_value(orjson.loads(raw))

    @classmethod
    def from_value(cls, d: Any) -> CustomerState:
        """A state from its encoding already read as JSON (a merge request carries one inside)."""
        st = cls.__new__(cls)
        if type(d) is list and len(d) == len(_WIRE_FIELDS) + 1 and d[0] == ENCODING_VERSION:
            (
                _, st.stage, st.reached, st.events, st.channels, st.first_channel, st.last_channel,
                st.first_seen, st.last_seen, st.purchases, st.purchase_days, st.revenue,
                st.first_purchase, st.last_purchase, st.orders, st.days, st.advocacy_max,
                st.renewal_max, st.negatives, st.last_negative, seen, st.recent, st.partition,
                st.attribution, st.extra, st.order_times, st.pre_purchase, st.seen_legacy,
            ) = d
            st.seen = bytearray(a2b_base64(seen, strict_mode=True))
            return st
        if type(d) is list and len(d) == _V3_LENGTH and d[0] == 3:
            (
                _, st.stage, st.reached, st.events, st.channels, st.first_channel, st.last_channel,
                st.first_seen, st.last_seen, st.purchases, st.purchase_days, st.revenue,
                st.first_purchase, st.last_purchase, st.orders, st.days, st.advocacy_max,
                st.renewal_max, st.negatives, st.last_negative, st.seen, st.recent, st.partition,
                st.attribution, st.extra, st.order_times, st.pre_purchase,
            ) = d
            _legacy_seen(st)
            return st
        if type(d) is list and len(d) == _V2_LENGTH and d[0] == 2:
            (
                _, st.stage, st.reached, st.events, st.channels, st.first_channel, st.last_channel,
                st.first_seen, st.last_seen, st.purchases, st.purchase_days, st.revenue,
                st.first_purchase, st.last_purchase, st.orders, st.days, st.advocacy_max,
                st.renewal_max, st.negatives, st.last_negative, st.seen, st.recent, st.partition,
                st.attribution, st.extra,
            ) = d
            _upgrade(st)
            _legacy_seen(st)
            return st
        if type(d) is dict and d.get("v") == 1:
            return cls._from_v1(d)
        version = d[0] if type(d) is list and d else d.get("v") if type(d) is dict else None
        if type(version) is int and version > ENCODING_VERSION:
            raise NewerEncoding(
                f"customer state encoding {version!r} is not one this journey reads (it reads 1 to "
                f"{ENCODING_VERSION}); was the changelog written by a newer journey? Run that version"
            )
        shown = version if type(version) is int else type(version).__name__  # a damaged record's content may be personal
        raise EncodingError(
            f"not a customer state journey writes (encoding {shown}; this journey reads 1 to "
            f"{ENCODING_VERSION}, and no version wrote this shape): the record is damaged or was written by another program"
        )

    @classmethod
    def _from_v1(cls, d: dict[str, Any]) -> CustomerState:
        st = cls()
        st.stage = d["s"]
        st.reached = d["r"]
        st.events = d["n"]
        st.channels = d["ch"]
        st.first_channel = d["fc"]
        st.last_channel = d["lc"]
        st.first_seen = d["fs"]
        st.last_seen = d["ls"]
        st.purchases = d["p"]
        st.purchase_days = d["pd"]
        st.revenue = d["rev"]
        st.first_purchase = d["fp"]
        st.last_purchase = d["lp"]
        st.orders = d["o"]
        st.days = d["d"]
        st.advocacy_max = d["am"]
        st.renewal_max = d["rm"]
        st.negatives = d["ng"]
        st.last_negative = d["nl"]
        st.seen = d["sn"]
        st.recent = d["tr"]
        st.partition = d.get("pt")
        st.attribution = d.get("at")
        st.extra = d.get("x") or {}
        _upgrade(st)
        _legacy_seen(st)
        return st

    def copy(self) -> CustomerState:
        """An independent copy (containers copied; nested values in ``extra`` copied one level).

        Written out slot by slot: a generic loop over the slots cost ~20 us a state, more than
        applying an event (tests/unit/test_state.py checks that every slot is covered)."""
        new = CustomerState.__new__(CustomerState)
        new.stage, new.events, new.purchases, new.purchase_days = self.stage, self.events, self.purchases, self.purchase_days
        new.first_channel, new.last_channel, new.first_seen, new.last_seen = (
            self.first_channel, self.last_channel, self.first_seen, self.last_seen)
        new.revenue, new.first_purchase, new.last_purchase = self.revenue, self.first_purchase, self.last_purchase
        new.advocacy_max, new.renewal_max, new.last_negative = self.advocacy_max, self.renewal_max, self.last_negative
        new.partition = self.partition
        new.reached, new.orders, new.order_times, new.days, new.seen = (
            self.reached[:], self.orders[:], self.order_times[:], self.days[:], self.seen[:])
        new.seen_legacy = self.seen_legacy[:] if self.seen_legacy is not None else None
        new.channels, new.negatives = self.channels.copy(), self.negatives.copy()
        new.recent = [t[:] for t in self.recent]
        new.pre_purchase = [e[:] for e in self.pre_purchase]
        new.attribution = self.attribution[:] if self.attribution is not None else None
        new.extra = {k: (v.copy() if isinstance(v, (dict, list)) else v) for k, v in self.extra.items()}
        return new

    def to_public(self) -> dict[str, Any]:
        """A readable view of the state for the customer endpoint (no hashes)."""
        from journey.core.clock import iso

        return {
            "stage": STAGES[self.stage] if self.stage >= 0 else None,
            "stage_entered_at": iso(self.reached[self.stage]) if self.stage >= 0 else None,
            "reached": {STAGES[i]: iso(t) for i, t in enumerate(self.reached) if t is not None},
            "touchpoints": self.events,
            "channels": dict(self.channels),
            "first_touch_channel": self.first_channel,
            "last_touch_channel": self.last_channel,
            "first_seen": iso(self.first_seen),
            "last_seen": iso(self.last_seen),
            "purchases": self.purchases,
            "purchase_days": self.purchase_days,
            "revenue": round(self.revenue, 2),
            "first_purchase": iso(self.first_purchase),
            "last_purchase": iso(self.last_purchase),
            "negative_signals": dict(self.negatives),
            "purchase_attribution": (
                {"first_touch": self.attribution[0], "last_touch": self.attribution[1]} if self.attribution else None
            ),
            "recent_transitions": [
                {
                    "from_stage": STAGES[f] if f is not None and f >= 0 else None,
                    "to_stage": STAGES[t],
                    "at": iso(at),
                    "trigger_type": trig,
                    "channel": ch,
                }
                for f, t, at, trig, ch in self.recent
            ],
            **(_public_extra(self.extra) if self.extra else {}),
        }


def _public_extra(extra: dict[str, Any]) -> dict[str, Any]:
    """The other concerns' memories (churn.risk, core.painpoints, core.identity keep them in
    ``extra`` in a compact form) as the customer endpoint shows them: named fields, RFC 3339
    times. A key this build does not know is shown as it is."""
    from journey.core.clock import iso

    shown: dict[str, Any] = {}
    for key, value in extra.items():
        if key == UPGRADED_KEY:
            continue
        if key == "churn" and isinstance(value, dict):
            shown["churn_risk"] = {"level": value.get("l"), "score": value.get("s"), "as_of": iso(value.get("at")),
                                   "next_check": iso(value.get("due"))}
        elif key == "pain" and isinstance(value, dict):
            abandoned = value.get("a") or [0, None]
            stalled = value.get("s")
            shown["pain_points"] = {
                "open_carts": [{"opened_at": iso(ts), "channel": channel} for ts, channel in value.get("c") or ()],
                "carts_abandoned": abandoned[0], "last_cart_abandoned_at": iso(abandoned[1]),
                "stalled_in": STAGES[stalled] if type(stalled) is int and 0 <= stalled < len(STAGES) else None,
            }
        elif key == "id" and isinstance(value, dict):
            shown["identity"] = {"merged_anonymous_ids": list(value.get("m") or ()),
                                 "anonymous_ids_asked_to_link": list(value.get("l") or ()),
                                 "anonymous_visitor": bool(value.get("a"))}
        else:
            shown[key] = value
    return shown


def _upgrade(st: CustomerState) -> None:
    """Fill the fields version 3 added, for a state read from version 1 or 2, from what those
    kept: order times are unknown; of the touchpoints before the first purchase only the first
    and last touch are known (no purchase yet), or the frozen last touch of the attribution,
    placed at the first purchase (it then stays, as before, unless an earlier purchase comes)."""
    st.order_times = [None] * len(st.orders)
    st.extra[UPGRADED_KEY] = 1
    pre: list[list[Any]] = []
    if st.first_purchase is None:
        for ts, channel in ((st.first_seen, st.first_channel), (st.last_seen, st.last_channel)):
            if ts is not None and channel is not None and [ts, channel, TOUCH] not in pre:
                pre.append([ts, channel, TOUCH])
    elif st.attribution and st.attribution[1] is not None:
        pre.append([st.first_purchase, st.attribution[1], TOUCH])
    pre.sort()
    st.pre_purchase = pre


def _legacy_seen(st: CustomerState) -> None:
    """Version 1 to 3 kept event ids as id_hash()es in ``seen``: they move to ``seen_legacy``,
    checked until they leave the window, so a replay across the upgrade is still a duplicate."""
    st.seen_legacy = st.seen or None  # type: ignore[assignment]  # the list read from the wire
    st.seen = bytearray()


#: The slots in the order of the wire array (after the version).
_WIRE_FIELDS = (
    "stage", "reached", "events", "channels", "first_channel", "last_channel", "first_seen",
    "last_seen", "purchases", "purchase_days", "revenue", "first_purchase", "last_purchase",
    "orders", "days", "advocacy_max", "renewal_max", "negatives", "last_negative", "seen",
    "recent", "partition", "attribution", "extra", "order_times", "pre_purchase", "seen_legacy",
)
#: Version 2's array: the version and the fields before order_times; version 3's, those before seen_legacy.
_V2_LENGTH = 1 + _WIRE_FIELDS.index("order_times")
_V3_LENGTH = 1 + _WIRE_FIELDS.index("seen_legacy")
assert set(_WIRE_FIELDS) == set(CustomerState.__slots__) and len(_WIRE_FIELDS) == len(CustomerState.__slots__)
