"""The stage machine: one touchpoint applied to one customer's state.

It holds the rules that move a customer through the stages (schemas/journey.yaml holds the type
lists), applied so that the final stage never depends on arrival order. Details: docs/journey-rules.md.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from journey.core.clock import utc_day
from journey.core.definition import JourneyDefinition, Kind
from journey.core.events import Touchpoint
from journey.core.stages import ADVOCACY, NO_STAGE, PURCHASE, RETENTION, STAGES
from journey.core.state import RECENT_TRANSITIONS, CustomerState, id_hash


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on per-customer memory."""

    dedupe_window: int = 32
    order_window: int = 16
    day_window: int = 16


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
        key = f"{self.customer_id}\x1f{self.from_stage}\x1f{self.to_stage}\x1f{self.trigger_event_id}"
        return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()

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


@dataclass(slots=True)
class Outcome:
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
    eid = id_hash(tp.event_id)
    seen = st.seen
    if eid in seen:
        return Outcome(st, None, True, _OTHER)
    seen.append(eid)
    if len(seen) > limits.dedupe_window:
        del seen[0]

    ts = tp.ts
    channel = tp.channel
    last_touch_before = st.last_channel
    # The touch: counts, and first/last touch by event time so late events land where they belong.
    st.events += 1
    channels = st.channels
    channels[channel] = channels.get(channel, 0) + 1
    if st.first_seen is None or ts < st.first_seen:
        st.first_seen = ts
        st.first_channel = channel
    if st.last_seen is None or ts >= st.last_seen:
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
            if st.attribution is None:
                # Last touch = the touch before the purchase itself (the purchase is not a channel's win).
                st.attribution = [st.first_channel, last_touch_before or channel]
            target = _record_purchase(st, tp, eid, limits)
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


def _record_purchase(st: CustomerState, tp: Touchpoint, eid: int, limits: Limits) -> int:
    props = tp.properties
    amount = props.get("amount")
    if isinstance(amount, (int, float)) and not isinstance(amount, bool):
        # Every purchase event carries its own part of the order (lines of one basket).
        st.revenue += amount
    order_id = props.get("order_id")
    order = id_hash(str(order_id)) if order_id is not None else eid
    ts = tp.ts
    if order not in st.orders:
        _remember(st.orders, order, limits.order_window)
        st.purchases += 1
        day = utc_day(ts)
        if day not in st.days:
            _remember(st.days, day, limits.day_window)
            st.purchase_days += 1
        if st.last_purchase is None or ts > st.last_purchase:
            st.last_purchase = ts
    if st.first_purchase is None or ts < st.first_purchase:
        st.first_purchase = ts
    first = st.first_purchase
    _reach(st, PURCHASE, first)
    target = PURCHASE
    if st.purchases >= 2:
        target = RETENTION
        # The repeat happened at the latest purchase known (approximate once orders fall out of the window).
        _reach(st, RETENTION, st.last_purchase if st.last_purchase is not None else ts)
    # Signals that arrived before this purchase but happened after it now count.
    if st.renewal_max is not None and st.renewal_max >= first:
        target = max(target, RETENTION)
        _reach(st, RETENTION, max(first, st.renewal_max))
    if st.advocacy_max is not None and st.advocacy_max >= first:
        target = ADVOCACY
        _reach(st, ADVOCACY, st.advocacy_max)
    return target


def _reach(st: CustomerState, stage: int, ts: float) -> None:
    if st.reached[stage] is None or ts < st.reached[stage]:  # type: ignore[operator]
        st.reached[stage] = ts


def _remember(window: list[int], value: int, size: int) -> None:
    window.append(value)
    if len(window) > size:
        del window[0]
