"""Pain points on event time: cart abandonment (and its cancellation) and stalls."""

from __future__ import annotations

from pathlib import Path

import pytest

from journey.core import painpoints
from journey.core.definition import load_definition
from journey.core.events import validate
from journey.core.machine import apply
from journey.core.painpoints import PainConfig
from journey.core.state import CustomerState

REPO = Path(__file__).resolve().parents[2]
DEFINITION = load_definition(REPO / "schemas/journey.yaml")
H = 3600.0
T0 = 852_076_800.0  # 1997-01-01T00:00:00Z
CONFIG = PainConfig(abandonment_window_s=24 * H, stall_limit_s=14 * 86400.0)


class Customer:
    """Feeds touchpoints through the machine and the pain-point notes, as the worker does."""

    def __init__(self) -> None:
        self.state = CustomerState()
        self.n = 0

    def event(self, type_: str, at: float, channel: str = "direct", **props) -> None:
        from journey.core.clock import iso

        self.n += 1
        tp = validate({"event_id": f"e{self.n}", "customer_id": "c1", "type": type_, "timestamp": iso(at), "channel": channel, "properties": props})
        self.state = apply(self.state, tp, DEFINITION).state
        painpoints.note_touchpoint(self.state, tp.type, tp.ts, tp.channel, CONFIG)

    def evaluate(self, now: float) -> list[painpoints.PainPoint]:
        return painpoints.evaluate(self.state, now, CONFIG)


def test_cart_without_purchase_is_abandoned_once_when_the_window_ends():
    c = Customer()
    c.event("add_to_cart", T0, channel="ads", cart_id="k1")
    assert c.evaluate(T0 + 23 * H) == []
    assert painpoints.next_deadline(c.state, CONFIG) == T0 + 24 * H
    found = c.evaluate(T0 + 24 * H)
    assert [(p.kind, p.stage, p.channel, p.at) for p in found] == [("cart_abandoned", "decision", "ads", T0 + 24 * H)]
    assert c.evaluate(T0 + 48 * H) == []
    assert painpoints.abandoned_carts(c.state) == (1, T0 + 24 * H)
    event = found[0].to_event("c1")
    assert event["at"] == "1997-01-02T00:00:00+00:00" and event["details"]["window_hours"] == 24


def test_purchase_inside_the_window_cancels_the_cart():
    c = Customer()
    c.event("checkout_started", T0)
    c.event("purchase", T0 + 5 * H, order_id="o1", amount=10)
    assert c.evaluate(T0 + 100 * H) == []
    assert painpoints.abandoned_carts(c.state) == (0, None)
    assert painpoints.next_deadline(c.state, CONFIG) is None
    assert "pain" not in c.state.extra or "c" not in c.state.extra["pain"]


def test_purchase_after_the_window_does_not_cancel():
    c = Customer()
    c.event("add_to_cart", T0)
    c.event("purchase", T0 + 30 * H, order_id="o1")
    assert [p.kind for p in c.evaluate(T0 + 30 * H)] == ["cart_abandoned"]


def test_purchase_that_arrives_before_its_cart_event_still_cancels():
    c = Customer()
    c.event("purchase", T0 + 2 * H, order_id="o1")
    c.event("add_to_cart", T0)  # late arrival, happened before the purchase
    assert c.evaluate(T0 + 48 * H) == []


def test_a_late_cart_is_cancelled_by_any_purchase_in_its_window_not_only_the_last():
    c = Customer()
    c.event("purchase", T0 + 1 * H, order_id="o1")  # inside the cart's window
    c.event("purchase", T0 + 240 * H, order_id="o2")  # ten days later: the last purchase
    c.event("add_to_cart", T0)  # arrives last, happened first
    assert c.evaluate(T0 + 300 * H) == []
    assert painpoints.abandoned_carts(c.state) == (0, None)


def test_a_late_older_cart_of_its_own_is_reported_and_a_replay_of_a_decided_one_is_not():
    c = Customer()
    c.event("add_to_cart", T0 + 48 * H)
    c.event("purchase", T0 + 49 * H, order_id="o1")  # buys that cart
    assert c.evaluate(T0 + 100 * H) == []
    c.event("add_to_cart", T0 + 48.5 * H)  # a late copy of an event of the bought cart: a replay
    assert c.evaluate(T0 + 200 * H) == []
    c.event("add_to_cart", T0)  # two days earlier, a cart of its own that nothing bought
    found = c.evaluate(T0 + 200 * H)
    assert [(p.kind, p.at) for p in found] == [("cart_abandoned", T0 + 24 * H)]
    assert painpoints.abandoned_carts(c.state) == (1, T0 + 24 * H)


def test_the_decided_carts_memory_is_bounded_and_what_leaves_it_counts_as_decided():
    c = Customer()
    for day in range(painpoints.MAX_DECIDED_CARTS + 1):  # a cart a day, each bought within the hour
        c.event("add_to_cart", T0 + day * 24 * H)
        c.event("purchase", T0 + day * 24 * H + H, order_id=f"o{day}")
        assert c.evaluate(T0 + day * 24 * H + 2 * H) == []
    pain = c.state.extra["pain"]
    assert len(pain["d"]) == painpoints.MAX_DECIDED_CARTS and pain["r"] == T0 + H  # the first one's end
    c.event("add_to_cart", T0 - 100 * H)  # older than a window no longer kept: taken as decided
    assert "c" not in c.state.extra["pain"]


def test_cart_events_inside_an_open_window_are_one_cart_and_replays_are_ignored():
    c = Customer()
    c.event("add_to_cart", T0)
    c.event("add_to_cart", T0 + 3 * H)
    c.event("checkout_started", T0 + 20 * H)
    assert len(c.evaluate(T0 + 60 * H)) == 1
    c.event("add_to_cart", T0 + 3 * H)  # replayed after the decision
    assert c.evaluate(T0 + 200 * H) == []
    c.event("add_to_cart", T0 + 100 * H)  # a new cart later on
    assert len(c.evaluate(T0 + 200 * H)) == 1
    assert painpoints.abandoned_carts(c.state)[0] == 2


def test_stall_in_consideration_is_reported_once_per_stage():
    c = Customer()
    c.event("page_view", T0)
    c.event("product_view", T0 + H, channel="search")
    limit = CONFIG.stall_limit_s
    assert painpoints.next_deadline(c.state, CONFIG) == T0 + H + limit
    assert c.evaluate(T0 + H + limit - 1) == []
    found = c.evaluate(T0 + H + limit)
    assert [(p.kind, p.stage, p.channel) for p in found] == [("stalled", "consideration", "search")]
    assert c.evaluate(T0 + H + 2 * limit) == []
    # Moving on to decision starts a new clock.
    c.event("add_to_cart", T0 + 20 * 86400)
    c.evaluate(T0 + 20 * 86400 + 25 * H)  # the cart is abandoned meanwhile
    found = c.evaluate(T0 + 20 * 86400 + limit)
    assert [(p.kind, p.stage) for p in found] == [("stalled", "decision")]


def test_no_stall_in_awareness_or_after_purchase():
    c = Customer()
    c.event("page_view", T0)
    assert c.evaluate(T0 + 100 * 86400) == []
    c.event("purchase", T0 + 101 * 86400, order_id="o")
    assert c.evaluate(T0 + 300 * 86400) == []


def test_config_is_checked():
    with pytest.raises(ValueError, match="abandonment window"):
        PainConfig(abandonment_window_s=0)
