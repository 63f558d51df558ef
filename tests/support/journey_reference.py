"""What a customer's journey state should be, computed from the whole set of their events at once.

Independent of journey.core.machine: the rules are read from schemas/journey.yaml (data) and
applied here by their definition, over all events sorted by event time, so the result cannot
depend on the order the events arrived in. The stage machine applies events one at a time, in
arrival order; its observable state must equal this for every arrival order.

The rules (README "Stages", schemas/journey.yaml):
- a staged type reaches its stage; a stage's first-reached time is its earliest such event;
- purchases: an order is its order_id (or the event id without one); its time is its earliest
  line; the first order reaches purchase, the second (by time) retention; revenue sums every line;
  purchase days are the distinct UTC days of the orders; last purchase is the latest order;
- a renewal at or after the first purchase reaches retention, an advocacy signal (or a review of
  min_rating or more) at or after it reaches advocacy; a bad review or a negative type is a
  negative signal; the stage is the highest stage reached;
- first touch is the earliest touchpoint by event time, last touch the latest; purchase
  attribution is [first touch, the latest non-purchase touchpoint at or before the first
  purchase (the first touch when there is none)]. Ties in event time go to the smallest channel
  name for "earliest" and the largest for "latest", so they too are order-free.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
_DEF = yaml.safe_load((REPO / "schemas" / "journey.yaml").read_text())
STAGES: list[str] = _DEF["stages"]
STAGE_OF = {t: STAGES.index(stage) for stage, types in _DEF["rules"].items() for t in types}
PURCHASE_TYPES = set(_DEF["purchase"]["types"])
RENEWAL_TYPES = set(_DEF["purchase"]["renewal_types"])
ADVOCACY_TYPES = set(_DEF["advocacy"]["types"])
REVIEW = _DEF["advocacy"]["review_type"]
GOOD = _DEF["advocacy"]["min_rating"]
BAD = _DEF["negative"]["max_bad_rating"]
NEGATIVE_TYPES = set(_DEF["negative"]["types"])
PURCHASE, RETENTION, ADVOCACY = (STAGES.index(s) for s in ("purchase", "retention", "advocacy"))
DEFAULT_CHANNEL = "other"  # the touchpoint schema's default
DAY = 86400.0


def _kind(etype: str, props: Mapping[str, Any]) -> str:
    if etype in STAGE_OF:
        return "staged"
    if etype in PURCHASE_TYPES:
        return "purchase"
    if etype == REVIEW:
        rating = props.get("rating")
        if isinstance(rating, (int, float)) and not isinstance(rating, bool):
            if rating >= GOOD:
                return "advocacy"
            if rating <= BAD:
                return "negative"
        return "other"
    if etype in ADVOCACY_TYPES:
        return "advocacy"
    if etype in NEGATIVE_TYPES:
        return "negative"
    if etype in RENEWAL_TYPES:
        return "renewal"
    return "other"


def reference(events: Iterable[Any]) -> dict[str, Any]:
    """The observable state of the customer whose touchpoints (journey.core.events.Touchpoint, or
    anything with event_id, type, ts, channel and properties) are ``events``. Deliveries of one
    event id count once."""
    unique: dict[str, Any] = {}
    for e in events:
        unique.setdefault(e.event_id, e)
    evs = list(unique.values())
    if not evs:
        raise ValueError("no events")
    touches = [(e.ts, e.channel) for e in evs]
    kinds = {e.event_id: _kind(e.type, e.properties or {}) for e in evs}

    reached: list[float | None] = [None] * len(STAGES)

    def reach(stage: int, ts: float) -> None:
        if reached[stage] is None or ts < reached[stage]:  # type: ignore[operator]
            reached[stage] = ts

    for e in evs:
        if kinds[e.event_id] == "staged":
            reach(STAGE_OF[e.type], e.ts)

    purchases = [e for e in evs if kinds[e.event_id] == "purchase"]
    order_time: dict[tuple[str, str], float] = {}
    revenue = 0.0
    for e in purchases:
        props = e.properties or {}
        oid = props.get("order_id")
        order = ("order", str(oid)) if oid is not None else ("event", e.event_id)
        order_time[order] = min(order_time.get(order, math.inf), e.ts)
        amount = props.get("amount")
        if isinstance(amount, (int, float)) and not isinstance(amount, bool):
            revenue += amount
    first_purchase = min((e.ts for e in purchases), default=None)
    times = sorted(order_time.values())
    attribution = None
    if first_purchase is not None:
        reach(PURCHASE, first_purchase)
        if len(times) >= 2:
            reach(RETENTION, times[1])
        for e in evs:
            if e.ts >= first_purchase and kinds[e.event_id] == "renewal":
                reach(RETENTION, e.ts)
            if e.ts >= first_purchase and kinds[e.event_id] == "advocacy":
                reach(ADVOCACY, e.ts)
        before = [(e.ts, e.channel) for e in evs if kinds[e.event_id] != "purchase" and e.ts <= first_purchase]
        attribution = [min(touches)[1], max(before)[1] if before else min(touches)[1]]
    # The stage: the highest reached (a skipped stage stays None but is passed).
    stage = max((i for i, t in enumerate(reached) if t is not None), default=-1)

    negatives: Counter[str] = Counter()
    negative_times = []
    for e in evs:
        if kinds[e.event_id] == "negative":
            negatives[e.type] += 1
            negative_times.append(e.ts)
    return {
        "stage": stage,
        "reached": reached,
        "first_seen": min(touches)[0],
        "last_seen": max(touches)[0],
        "first_channel": min(touches)[1],
        "last_channel": max(touches)[1],
        "events": len(evs),
        "channels": dict(Counter(ch for _, ch in touches)),
        "purchases": len(order_time),
        "purchase_days": len({math.floor(t / DAY) for t in times}),
        "revenue": revenue,
        "first_purchase": first_purchase,
        "last_purchase": times[-1] if times else None,
        "attribution": attribution,
        "negatives": dict(negatives),
        "last_negative": max(negative_times, default=None),
    }


def observable(state: Any) -> dict[str, Any]:
    """The same fields, read from a journey.core.state.CustomerState."""
    return {
        "stage": state.stage,
        "reached": list(state.reached),
        "first_seen": state.first_seen,
        "last_seen": state.last_seen,
        "first_channel": state.first_channel,
        "last_channel": state.last_channel,
        "events": state.events,
        "channels": dict(state.channels),
        "purchases": state.purchases,
        "purchase_days": state.purchase_days,
        "revenue": state.revenue,
        "first_purchase": state.first_purchase,
        "last_purchase": state.last_purchase,
        "attribution": list(state.attribution) if state.attribution is not None else None,
        "negatives": dict(state.negatives),
        "last_negative": state.last_negative,
    }
