"""The stage machine: one touchpoint applied to one customer's state.

It holds the rules that move a customer through the stages (schemas/journey.yaml holds the type
lists), applied so that the final stage never depends on arrival order. Details: docs/journey-rules.md.

The state's other observable parts do not depend on arrival order either (while a customer's
history fits the bounded windows of Limits): first-reached times, first and last touch (ties in
event time: the smallest channel name is the earliest, the largest the latest), purchase
attribution (the first touch, and the latest non-purchase touchpoint at or before the first
purchase), orders (an order happened at its earliest line), purchase days, counts.
tests/unit/test_machine.py holds every arrival order to a reference computed from all events.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Any

import msgspec

from journey.core.clock import utc_day
from journey.core.definition import JourneyDefinition, Kind
from journey.core.events import Touchpoint
from journey.core.ids import stable_id
from journey.core.stages import ADVOCACY, NO_STAGE, PURCHASE, RETENTION, STAGES
from journey.core.state import (
    ADVOCACY_SIGNAL,
    EVENT_KEY_SIZE,
    RECENT_TRANSITIONS,
    RENEWAL_SIGNAL,
    TOUCH,
    CustomerState,
    event_key,
    has_key,
    id_hash,
)


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on per-customer memory."""

    dedupe_window: int = 32
    order_window: int = 16
    day_window: int = 16
    #: Non-purchase touchpoints kept from before the first purchase (the latest ones by event
    #: time): attribution and signals stay exact while a customer has at most this many before a
    #: purchase that arrives late, or earlier than the one known.
    touch_window: int = 8


@dataclass(slots=True)
class Transition:
    customer_id: str
    from_stage: int
    to_stage: int
    at: float
    at_text: str
    trigger_event_id: str
    trigger_type: str
    channel: str
    seconds_in_previous_stage: float | None
    journey_version: str
    #: Stages between from and to that the customer never reached.
    skipped: list[str]

    @property
    def transition_id(self) -> str:
        # Deterministic: replaying the same trigger for the same customer gives the same id,
        # so downstream consumers can drop the duplicates an at-least-once replay produces.
        return stable_id(self.customer_id, self.from_stage, self.to_stage, self.trigger_event_id)

    def to_event(self) -> dict[str, Any]:
        return {
            "transition_id": self.transition_id,
            "customer_id": self.customer_id,
            "from_stage": STAGES[self.from_stage] if self.from_stage >= 0 else None,
            "to_stage": STAGES[self.to_stage],
            "at": self.at_text,
            "trigger_event_id": self.trigger_event_id,
            "trigger_type": self.trigger_type,
            "channel": self.channel,
            "seconds_in_previous_stage": self.seconds_in_previous_stage,
            "skipped_stages": self.skipped,
            "journey_version": self.journey_version,
        }


class Outcome(msgspec.Struct, gc=False):
    """What apply() did. A Struct, not a dataclass: one is built per event, and msgspec's
    constructor is C (about 0.1 us against 0.2; gc=False: it never holds a cycle)."""

    state: CustomerState
    transition: Transition | None
    duplicate: bool
    kind: Kind


_STAGED, _PURCHASE, _RENEWAL, _ADVOCACY, _NEGATIVE, _OTHER = (
    Kind.STAGED, Kind.PURCHASE, Kind.RENEWAL, Kind.ADVOCACY, Kind.NEGATIVE, Kind.OTHER,
)


def apply(
    state: CustomerState | None,
    tp: Touchpoint,
    definition: JourneyDefinition,
    limits: Limits = Limits(),
) -> Outcome:
    """Apply one touchpoint to a customer's state (mutated in place; a new one when None)."""
    # The worker's hot path: once per event, so written flat (no helper calls for the common case).
    st = state if state is not None else CustomerState()
    key = event_key(tp.event_id)
    seen = st.seen
    legacy = st.seen_legacy
    if (key in seen and has_key(seen, key)) or (legacy is not None and id_hash(tp.event_id) in legacy):
        return Outcome(st, None, True, _OTHER)
    seen += key
    if len(seen) + (0 if legacy is None else len(legacy) * EVENT_KEY_SIZE) > limits.dedupe_window * EVENT_KEY_SIZE:
        if legacy:  # older than every key in seen
            del legacy[0]
            if not legacy:
                st.seen_legacy = None
        else:
            del seen[:EVENT_KEY_SIZE]

    ts = tp.ts
    channel = tp.channel
    # The touch: counts, and first/last touch by event time so late events land where they belong
    # (ties: the smallest channel name first, the largest last, whatever arrives first).
    st.events += 1
    channels = st.channels
    channels[channel] = channels.get(channel, 0) + 1
    first_seen = st.first_seen
    first_moved = first_seen is None or ts < first_seen or (ts == first_seen and channel < (st.first_channel or ""))
    if first_moved:
        st.first_seen = ts
        st.first_channel = channel
    last_seen = st.last_seen
    if last_seen is None or ts > last_seen or (ts == last_seen and channel > (st.last_channel or "")):
        st.last_seen = ts
        st.last_channel = channel

    etype = tp.type
    target = definition.type_stage.get(etype)
    if target is not None:
        kind = _STAGED
    else:
        target = NO_STAGE
        kind = definition.classify(etype, tp.properties)
        if kind is _PURCHASE:
            target = _record_purchase(st, tp, limits)
        elif kind is _RENEWAL:
            st.renewal_max = ts if st.renewal_max is None else max(st.renewal_max, ts)
            if st.first_purchase is not None and ts >= st.first_purchase:
                target = RETENTION
        elif kind is _ADVOCACY:
            st.advocacy_max = ts if st.advocacy_max is None else max(st.advocacy_max, ts)
            if st.first_purchase is not None and ts >= st.first_purchase:
                target = ADVOCACY
        elif kind is _NEGATIVE:
            st.negatives[etype] = st.negatives.get(etype, 0) + 1
            st.last_negative = ts if st.last_negative is None else max(st.last_negative, ts)

    if kind is not _PURCHASE:
        first_purchase = st.first_purchase
        if first_purchase is None or ts <= first_purchase:
            # A touch before the first purchase: the last touch (or, later, the signals) may be it.
            code = RENEWAL_SIGNAL if kind is _RENEWAL else ADVOCACY_SIGNAL if kind is _ADVOCACY else TOUCH
            _note_touch(st.pre_purchase, [ts, channel, code], limits.touch_window)
            if first_purchase is not None:
                st.attribution = _attribution(st)
        elif first_moved and st.attribution is not None:
            st.attribution = _attribution(st)

    if target == NO_STAGE:
        return Outcome(st, None, False, kind)
    reached = st.reached
    if kind is not _PURCHASE:  # a purchase records its own reached times
        if reached[target] is None or ts < reached[target]:  # type: ignore[operator]
            reached[target] = ts
    previous = st.stage
    if target <= previous:
        return Outcome(st, None, False, kind)

    since = reached[previous] if previous >= 0 else None
    st.stage = target
    transition = Transition(
        customer_id=tp.profile_id,
        from_stage=previous,
        to_stage=target,
        at=ts,
        at_text=tp.timestamp,
        trigger_event_id=tp.event_id,
        trigger_type=etype,
        channel=channel,
        seconds_in_previous_stage=None if since is None else max(0.0, ts - since),
        journey_version=definition.version,
        skipped=[STAGES[i] for i in range(previous + 1, target) if reached[i] is None] if target > previous + 1 else [],
    )
    recent = st.recent
    recent.append([previous, target, ts, etype, channel])
    if len(recent) > RECENT_TRANSITIONS:
        del recent[0]
    return Outcome(st, transition, False, kind)


#: What a purchase without an order id is named for the order memory (control characters: no
#: real order id starts so).
EVENT_ORDER_PREFIX = "\x00event\x00"


def _record_purchase(st: CustomerState, tp: Touchpoint, limits: Limits) -> int:
    props = tp.properties
    amount = props.get("amount")
    if isinstance(amount, (int, float)) and not isinstance(amount, bool):
        # Every purchase event carries its own part of the order (lines of one basket).
        st.revenue += amount
    order_id = props.get("order_id")
    # Without an order id, the purchase event is its own order, under a name no order id has:
    # event "o1" and order "o1" are two orders. (States before 2026-12-01 hashed the bare event
    # id; a replay of such a purchase is a duplicate event, dropped before it gets here.)
    order = id_hash(str(order_id) if order_id is not None else EVENT_ORDER_PREFIX + tp.event_id)
    ts = tp.ts
    orders, times = st.orders, st.order_times
    try:
        i = orders.index(order)
    except ValueError:
        i = -1
    if i < 0:
        # A new order, at this line's time (until an earlier line of it comes).
        orders.append(order)
        times.append(ts)
        if len(orders) > limits.order_window:
            del orders[0]
            del times[0]
        st.purchases += 1
        day = utc_day(ts)
        if day not in st.days:
            _remember(st.days, day, limits.day_window)
            st.purchase_days += 1
        if st.last_purchase is None or ts > st.last_purchase:
            st.last_purchase = ts
    else:
        old = times[i]
        if old is None:
            times[i] = ts  # from a state that did not keep order times: its day was counted then
        elif ts < old:
            # An earlier line of a known order: the order happened then.
            times[i] = ts
            old_day, day = utc_day(old), utc_day(ts)
            if day != old_day:
                if day not in st.days:
                    _remember(st.days, day, limits.day_window)
                    st.purchase_days += 1
                if old_day in st.days and not any(t is not None and utc_day(t) == old_day for t in times):
                    st.days.remove(old_day)
                    st.purchase_days -= 1
            if st.last_purchase == old:
                st.last_purchase = max(t for t in times if t is not None)
    first_moved = st.first_purchase is None or ts < st.first_purchase
    if first_moved:
        st.first_purchase = ts
    first: float = st.first_purchase  # type: ignore[assignment]
    _reach(st, PURCHASE, first)
    target = PURCHASE
    if st.purchases >= 2:
        target = RETENTION
        # The repeat happened at the second order's time (approximate once orders fall out of the window).
        known = sorted(t for t in times if t is not None)
        _reach(st, RETENTION, known[1] if len(known) >= 2 else (st.last_purchase if st.last_purchase is not None else ts))
    pre = st.pre_purchase
    if first_moved:
        # Signals that arrived before this purchase but happened at or after it count now, each
        # from its own time; then only what lies at or before the first purchase is kept.
        cut = bisect_left(pre, [first])
        for signal_ts, _channel, code in pre[cut:]:
            if code == RENEWAL_SIGNAL:
                _reach(st, RETENTION, signal_ts)
            elif code == ADVOCACY_SIGNAL:
                _reach(st, ADVOCACY, signal_ts)
        del pre[bisect_right(pre, [first, _AFTER_EVERY_CHANNEL]):]
    target = signals_after(st, first, target)
    st.attribution = _attribution(st)
    return target


#: Sorts after every [time, channel, kind] entry of that time (channels are plain strings).
_AFTER_EVERY_CHANNEL = "\U0010ffff"


def _attribution(st: CustomerState) -> list[str | None]:
    """[first touch, the latest non-purchase touch at or before the first purchase (ties: the
    largest channel name), or the first touch when there is none]."""
    pre = st.pre_purchase
    return [st.first_channel, pre[-1][1] if pre else st.first_channel]


def _note_touch(pre: list[list[Any]], entry: list[Any], size: int) -> None:
    """Keep ``entry`` in the sorted list ``pre`` (once), with at most ``size`` entries: the latest."""
    if not pre or entry > pre[-1]:
        pre.append(entry)
    else:
        i = bisect_left(pre, entry)
        if pre[i] == entry:
            return
        pre.insert(i, entry)
    if len(pre) > size:
        del pre[0]


def signals_after(st: CustomerState, first: float, target: int) -> int:
    """The stage ``target`` rises to once renewals and advocacy signals at or after the first
    purchase ``first`` count (a signal that fell out of the window counts at its latest time)."""
    if st.renewal_max is not None and st.renewal_max >= first:
        target = max(target, RETENTION)
        if st.reached[RETENTION] is None:
            _reach(st, RETENTION, st.renewal_max)
    if st.advocacy_max is not None and st.advocacy_max >= first:
        target = ADVOCACY
        if st.reached[ADVOCACY] is None:
            _reach(st, ADVOCACY, st.advocacy_max)
    return target


def _reach(st: CustomerState, stage: int, ts: float) -> None:
    if st.reached[stage] is None or ts < st.reached[stage]:  # type: ignore[operator]
        st.reached[stage] = ts


def _remember(window: list[int], value: int, size: int) -> None:
    window.append(value)
    if len(window) > size:
        del window[0]
