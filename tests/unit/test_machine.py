"""The stage machine: rules, forward-only moves, skips, dedupe, orders, late events, odd types."""

from __future__ import annotations

import itertools
import math
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from journey.core.definition import Kind, load_definition
from journey.core.events import validate
from journey.core.machine import Limits, apply
from journey.core.state import EVENT_KEY_SIZE, UPGRADED_KEY, CustomerState, event_key, id_hash
from support.journey_reference import observable, reference

ROOT = Path(__file__).resolve().parents[2]
DEFINITION = load_definition(ROOT / "schemas" / "journey.yaml")
T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)

_ids = itertools.count()


def tp(etype: str, minutes: float = 0, *, customer: str = "c1", event_id: str | None = None,
       channel: str = "web_unused", **props: Any):
    data: dict[str, Any] = {
        "event_id": event_id or f"e{next(_ids)}",
        "customer_id": customer,
        "type": etype,
        "timestamp": (T0 + timedelta(minutes=minutes)).isoformat(),
    }
    if channel != "web_unused":
        data["channel"] = channel
    if props:
        data["properties"] = props
    return validate(data)


def run(events, state: CustomerState | None = None, limits: Limits = Limits()):
    transitions = []
    for e in events:
        out = apply(state, e, DEFINITION, limits)
        state = out.state
        if out.transition:
            transitions.append(out.transition.to_event())
    return state, transitions


def moves(transitions) -> list[tuple[str | None, str]]:
    return [(t["from_stage"], t["to_stage"]) for t in transitions]


def test_first_staged_event_creates_the_customer_in_that_stage():
    state, ts = run([tp("product_view")])
    assert moves(ts) == [(None, "consideration")]
    assert ts[0]["skipped_stages"] == ["awareness"]
    assert ts[0]["seconds_in_previous_stage"] is None
    assert ts[0]["journey_version"] == DEFINITION.version


def test_each_rule_maps_to_its_stage():
    for etype, stage in [("ad_click", "awareness"), ("pricing_view", "consideration"),
                         ("checkout_started", "decision"), ("purchase", "purchase")]:
        _, ts = run([tp(etype)])
        assert moves(ts) == [(None, stage)], etype


def test_stages_only_move_forward():
    state, ts = run([tp("add_to_cart", 0), tp("page_view", 1), tp("product_view", 2)])
    assert moves(ts) == [(None, "decision")]
    assert state.stage == 2


def test_full_path_with_time_in_stage_and_skips():
    state, ts = run([tp("ad_click", 0), tp("add_to_cart", 30), tp("purchase", 90, order_id="o1")])
    assert moves(ts) == [(None, "awareness"), ("awareness", "decision"), ("decision", "purchase")]
    assert ts[1]["skipped_stages"] == ["consideration"]
    assert ts[1]["seconds_in_previous_stage"] == 30 * 60
    assert ts[2]["seconds_in_previous_stage"] == 60 * 60
    assert ts[2]["skipped_stages"] == []


def test_duplicate_delivery_never_counts_twice():
    e = tp("purchase", 0, event_id="same", amount=10)
    state, ts = run([e, e, e])
    assert moves(ts) == [(None, "purchase")]
    assert state.purchases == 1 and state.revenue == 10 and state.events == 1
    out = apply(state, e, DEFINITION)
    assert out.duplicate and out.transition is None


def test_dedupe_memory_is_bounded():
    limits = Limits(dedupe_window=4)
    state, _ = run([tp("page_view", i, event_id=f"x{i}") for i in range(10)], limits=limits)
    assert state.seen == b"".join(event_key(f"x{i}") for i in range(6, 10))
    # The oldest ids fell out of the window: a very late duplicate of one counts again.
    again = apply(state, tp("page_view", 0, event_id="x0"), DEFINITION, limits)
    assert not again.duplicate


def test_several_events_of_one_order_are_one_purchase():
    state, ts = run([tp("purchase", 0, order_id="A", amount=5), tp("purchase", 1, order_id="A", amount=7)])
    assert state.purchases == 1
    assert state.revenue == 12  # each line carries its part of the order
    assert moves(ts) == [(None, "purchase")]


def test_a_second_distinct_order_is_retention():
    state, ts = run([tp("purchase", 0, order_id="A"), tp("purchase", 60 * 24 * 5, order_id="B")])
    assert moves(ts) == [(None, "purchase"), ("purchase", "retention")]
    assert state.purchases == 2 and state.purchase_days == 2


def test_purchases_without_order_id_are_distinct_by_event_id():
    state, ts = run([tp("purchase", 0), tp("purchase", 5)])
    assert moves(ts)[-1] == ("purchase", "retention")
    assert state.purchase_days == 1  # same UTC day


def test_integer_order_ids_match_their_text():
    state, _ = run([tp("purchase", 0, order_id=42), tp("purchase", 1, order_id="42")])
    assert state.purchases == 1


def test_renewal_after_a_purchase_is_retention_and_before_one_is_nothing():
    _, ts = run([tp("subscription_renewed", 0)])
    assert ts == []
    _, ts = run([tp("purchase", 0, order_id="A"), tp("subscription_renewed", 10)])
    assert moves(ts)[-1] == ("purchase", "retention")


def test_advocacy_only_once_the_customer_has_purchased():
    state, ts = run([tp("review_submitted", 0, rating=5), tp("referral_sent", 1), tp("social_share", 2)])
    assert ts == [] and state.stage == -1
    state, ts = run([tp("purchase", 0, order_id="A"), tp("review_submitted", 5, rating=4)])
    assert moves(ts)[-1] == ("purchase", "advocacy")
    assert ts[-1]["skipped_stages"] == ["retention"]


def test_ratings_between_bad_and_good_change_nothing():
    state, ts = run([tp("purchase", 0, order_id="A"), tp("review_submitted", 5, rating=3)])
    assert state.stage == 3 and state.negatives == {}


def test_negative_signals_are_kept_without_moving():
    state, ts = run([tp("page_view", 0), tp("complaint", 1), tp("support_ticket", 2),
                     tp("review_submitted", 3, rating=1), tp("refund", 4), tp("unsubscribe", 5), tp("return", 6)])
    assert moves(ts) == [(None, "awareness")]
    assert state.negatives == {"complaint": 1, "support_ticket": 1, "review_submitted": 1,
                               "refund": 1, "unsubscribe": 1, "return": 1}
    assert state.last_negative is not None


def test_unknown_types_are_counted_and_change_nothing():
    state, ts = run([tp("wishlist_add", 0, channel="email")])
    assert ts == [] and state.stage == -1 and state.events == 1
    assert state.channels == {"email": 1}
    assert DEFINITION.classify("wishlist_add", {}) is Kind.OTHER


def test_late_event_is_applied_by_the_same_rules():
    # The purchase arrives before the earlier add_to_cart: the cart changes no stage, but its time is kept.
    state, ts = run([tp("purchase", 60, order_id="A"), tp("add_to_cart", 0)])
    assert moves(ts) == [(None, "purchase")]
    assert state.reached[2] == (T0).timestamp()
    assert state.first_seen == T0.timestamp()


def test_late_purchase_makes_an_earlier_arrived_review_count():
    # Review (after the purchase in event time) arrives first, the purchase late.
    state, ts = run([tp("review_submitted", 10, rating=5), tp("purchase", 0, order_id="A")])
    assert state.stage == 5
    assert moves(ts) == [(None, "advocacy")]
    # purchase was reached on the way, retention was not
    assert ts[0]["skipped_stages"] == ["awareness", "consideration", "decision", "retention"]


def test_review_before_the_purchase_in_event_time_never_counts():
    state, _ = run([tp("purchase", 10, order_id="A"), tp("review_submitted", 0, rating=5)])
    assert state.stage == 3


def _journey(rng: random.Random) -> list:
    types = ["ad_click", "page_view", "product_view", "search", "add_to_cart", "checkout_started",
             "purchase", "purchase", "subscription_renewed", "review_submitted", "referral_sent",
             "complaint", "wishlist_add", "social_share"]
    events = []
    for _ in range(rng.randint(1, 9)):
        etype = rng.choice(types)
        props: dict[str, Any] = {}
        if etype == "purchase":
            props["order_id"] = rng.choice(["o1", "o2", "o3"])
        if etype == "review_submitted":
            props["rating"] = rng.randint(1, 5)
        events.append(tp(etype, rng.randint(0, 1000), **props))
    return events


def test_final_stage_never_depends_on_arrival_order():
    rng = random.Random(3)
    for _ in range(300):
        events = _journey(rng)
        final = run(events)[0].stage
        for _ in range(5):
            shuffled = events[:]
            rng.shuffle(shuffled)
            assert run(shuffled)[0].stage == final, [(e.type, e.ts, e.properties) for e in shuffled]


# --- the whole observable state, for every arrival order, against an independent reference ----------
_TYPES = ["ad_click", "page_view", "email_open", "product_view", "search", "add_to_cart", "checkout_started",
          "purchase", "purchase", "purchase", "subscription_renewed", "review_submitted", "referral_sent",
          "complaint", "wishlist_add", "social_share"]
_CHANNELS = ["ads", "email", "direct", "search", None]  # None: the schema's default ("other")


def _rich_journey(rng: random.Random, n: int) -> list:
    """``n`` events of one customer on a coarse time grid (ties in event time are common), across a
    UTC midnight, with channels, multi-line orders whose lines differ in time, and amounts."""
    events = []
    for _ in range(n):
        etype = rng.choice(_TYPES)
        props: dict[str, Any] = {}
        if etype == "purchase":
            props = {"order_id": rng.choice(["o1", "o2", "o3"]), "amount": rng.choice([10.0, 2.5, 0.25])}
        if etype == "review_submitted":
            props["rating"] = rng.randint(1, 5)
        channel = rng.choice(_CHANNELS)
        extra = {"channel": channel} if channel is not None else {}
        events.append(tp(etype, rng.randint(0, 12) * 100, customer="c1", **extra, **props))
    return events


def _arrivals(rng: random.Random, events: list, limit: int) -> list[list]:
    """Every arrival order of ``events`` when there are at most ``limit``, else ``limit`` shuffles;
    half of them with one event delivered twice."""
    orders = [list(p) for p in itertools.permutations(events)] if math.factorial(len(events)) <= limit else [
        rng.sample(events, len(events)) for _ in range(limit)]
    for order in orders[::2]:
        order.insert(rng.randrange(len(order) + 1), rng.choice(events))
    return orders


def _assert_every_arrival_gives_the_reference(rng: random.Random, events: list, limit: int, limits: Limits = Limits()) -> int:
    expected = reference(events)
    n = 0
    for order in _arrivals(rng, events, limit):
        got = observable(run(order, limits=limits)[0])
        if got != expected:
            diff = {k: (got[k], expected[k]) for k in expected if got[k] != expected[k]}
            arrival = [(e.type, (e.ts - T0.timestamp()) / 60, e.channel, e.properties) for e in order]
            raise AssertionError(f"arrival order {arrival}: state differs from the reference (got, expected): {diff}")
        n += 1
    return n


def test_every_arrival_order_gives_the_whole_reference_state():
    rng = random.Random(11)
    checked = 0
    for _ in range(150):
        checked += _assert_every_arrival_gives_the_reference(rng, _rich_journey(rng, rng.randint(1, 6)), limit=720)
    assert checked > 20_000


def test_shuffled_longer_journeys_give_the_whole_reference_state():
    # Exact while the history fits the state's bounded memories: here, windows as long as the journey.
    rng = random.Random(12)
    for _ in range(300):
        n = rng.randint(7, 14)
        limits = Limits(touch_window=n, order_window=n, day_window=n)
        _assert_every_arrival_gives_the_reference(rng, _rich_journey(rng, n), limit=8, limits=limits)


def test_past_the_touch_window_a_late_earlier_purchase_is_credited_to_a_kept_touch():
    # Twelve touches before a purchase, then a purchase earlier than all but the first two: the
    # touch before it (search) has fallen out of the window (the latest 8 are kept); the last touch
    # is then the first touch (the earliest is always known), never a touch after the purchase.
    events = [tp("ad_click", 0, channel="ads"), tp("search", 2, channel="search"),
              *(tp("page_view", 10 + i, channel="email") for i in range(10)),
              tp("purchase", 100, channel="store", order_id="A"), tp("purchase", 5, channel="store", order_id="B")]
    state, _ = run(events)
    assert Limits().touch_window == 8 and state.attribution == ["ads", "ads"]
    state, _ = run(events, limits=Limits(touch_window=12))
    assert state.attribution == ["ads", "search"]  # exact within the window


def test_a_touch_arriving_after_the_purchase_is_still_credited_by_event_time():
    # The purchase arrives first; the touches before it (event time) arrive late.
    state, _ = run([tp("purchase", 30, channel="store", order_id="A"), tp("ad_click", 0, channel="ads"),
                    tp("email_open", 20, channel="email"), tp("page_view", 40, channel="social")])
    assert state.attribution == ["ads", "email"]
    assert state.first_channel == "ads" and state.last_channel == "social"


def test_an_earlier_purchase_arriving_late_moves_the_last_touch_before_it():
    state, _ = run([tp("ad_click", 0, channel="ads"), tp("search", 10, channel="search"), tp("email_open", 20, channel="email"),
                    tp("purchase", 30, channel="store", order_id="A"), tp("purchase", 15, channel="store", order_id="B")])
    assert state.attribution == ["ads", "search"]
    assert state.reached[4] == (T0 + timedelta(minutes=30)).timestamp()  # retention: the second order
    assert state.last_purchase == (T0 + timedelta(minutes=30)).timestamp()


def test_transition_ids_are_deterministic():
    events = [tp("ad_click", 0, event_id="a"), tp("purchase", 1, event_id="b", order_id="o")]
    _, first = run(events)
    _, again = run(events)
    assert [t["transition_id"] for t in first] == [t["transition_id"] for t in again]
    assert len({t["transition_id"] for t in first}) == 2


def test_first_and_last_touch_follow_event_time():
    state, _ = run([tp("page_view", 10, channel="email"), tp("ad_click", 0, channel="ads"),
                    tp("product_view", 20, channel="direct")])
    assert state.first_channel == "ads" and state.last_channel == "direct"
    assert state.channels == {"email": 1, "ads": 1, "direct": 1}


def test_purchase_attribution_takes_first_touch_and_the_touch_before_the_purchase():
    state, _ = run([tp("ad_click", 0, channel="ads"), tp("email_open", 5, channel="email"),
                    tp("purchase", 9, channel="store", order_id="A")])
    assert state.attribution == ["ads", "email"]


def test_state_round_trips_through_its_wire_encoding():
    state, _ = run([tp("ad_click", 0, channel="ads"), tp("purchase", 9, order_id="A", amount=3.5),
                    tp("complaint", 12), tp("review_submitted", 20, rating=5)])
    again = CustomerState.from_wire(state.to_wire())
    assert again.to_wire() == state.to_wire()
    assert again.to_public() == state.to_public()


def test_state_stays_compact_for_a_busy_customer():
    events = [tp("page_view", i) for i in range(200)] + [tp("purchase", 300 + i, order_id=f"o{i}") for i in range(50)]
    state, _ = run(events)
    assert len(state.seen) == Limits().dedupe_window * EVENT_KEY_SIZE
    assert len(state.orders) == Limits().order_window
    assert state.purchases == 50
    assert len(state.order_times) == Limits().order_window and len(state.pre_purchase) == Limits().touch_window
    # Encoding 3 keeps each order's time and the latest touches before the first purchase (~450
    # bytes more here than encoding 2's ~1,250); encoding 4's event keys in base64 take ~250 fewer
    # than a list of integers. Bounded all the same.
    assert len(state.to_wire()) < 1600
    more, _ = run([tp("page_view", 400 + i) for i in range(100)], state=state)
    assert len(more.to_wire()) <= len(state.to_wire()) + 20


#: The fields of encodings 1 and 2 (encoding 3 added order_times and pre_purchase; encoding 4
#: holds seen as event_key()s in base64, where 1 to 3 held a list of id_hash()es).
V2_FIELDS = ("stage", "reached", "events", "channels", "first_channel", "last_channel", "first_seen", "last_seen",
             "purchases", "purchase_days", "revenue", "first_purchase", "last_purchase", "orders", "days", "advocacy_max",
             "renewal_max", "negatives", "last_negative", "seen", "recent", "partition", "attribution", "extra")


def _old_encodings(state: CustomerState, event_ids: list[str] | None = None) -> dict[str, bytes]:
    """The state as versions 1 to 3 wrote it, remembering ``event_ids`` (the way they kept them)."""
    legacy = [id_hash(e) for e in event_ids or ()][-Limits().dedupe_window:]
    fields = {f: legacy if f == "seen" else getattr(state, f) for f in V2_FIELDS}
    v1 = orjson.dumps({
        "v": 1, "s": state.stage, "r": state.reached, "n": state.events, "ch": state.channels,
        "fc": state.first_channel, "lc": state.last_channel, "fs": state.first_seen, "ls": state.last_seen,
        "p": state.purchases, "pd": state.purchase_days, "rev": state.revenue, "fp": state.first_purchase,
        "lp": state.last_purchase, "o": state.orders, "d": state.days, "am": state.advocacy_max,
        "rm": state.renewal_max, "ng": state.negatives, "nl": state.last_negative, "sn": legacy,
        "tr": state.recent, "pt": state.partition, "at": state.attribution, "x": state.extra,
    })
    v2 = orjson.dumps([2, *fields.values()])
    v3 = orjson.dumps([3, *fields.values(), state.order_times, state.pre_purchase])
    return {"v1": v1, "v2": v2, "v3": v3}


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_states_written_in_older_encodings_are_still_read(version):
    state, _ = run([tp("ad_click", 0, channel="ads"), tp("email_open", 5, channel="email"),
                    tp("purchase", 9, order_id="A", amount=3.5), tp("complaint", 12)])
    state.extra = {"churn": {"l": "low"}}
    old = CustomerState.from_wire(_old_encodings(state)[version])
    assert old.to_public() == state.to_public()
    assert old.extra.pop(UPGRADED_KEY) == 1  # written before anonymous ids: core.identity reads it
    same = [f for f in V2_FIELDS if f != "seen"]
    assert {f: getattr(old, f) for f in same} == {f: getattr(state, f) for f in same}
    # What encoding 3 adds is filled from what the old one kept: order times unknown; the frozen
    # last touch stands at the first purchase (it stays, unless an earlier purchase arrives).
    assert old.order_times == [None]
    assert old.pre_purchase == [[state.first_purchase, "email", 0]]
    assert CustomerState.from_wire(old.to_wire()).to_wire() == old.to_wire()
    later, _ = run([tp("page_view", 7, channel="social"), tp("purchase", 30, order_id="B"), tp("purchase", 2, order_id="A")], state=old)
    assert (later.stage, later.purchases, later.purchase_days) == (4, 2, 1)
    assert later.attribution == ["ads", "ads"]  # the purchase at 2 is before every touch kept but the first


@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
def test_a_replay_across_the_upgrade_to_encoding_4_is_still_a_duplicate(version):
    events = [tp("ad_click", 0, channel="ads", event_id="e0"), tp("purchase", 9, order_id="A", amount=3.5, event_id="e1"),
              tp("page_view", 12, event_id="e2")]
    state, _ = run(events)
    old = CustomerState.from_wire(_old_encodings(state, ["e0", "e1", "e2"])[version])
    assert old.seen == b"" and old.seen_legacy == [id_hash("e0"), id_hash("e1"), id_hash("e2")]
    for e in events:  # replayed after the upgrade: nothing counts twice
        assert apply(old, e, DEFINITION).duplicate
    assert (old.events, old.purchases, old.revenue) == (3, 1, 3.5)
    again = CustomerState.from_wire(old.to_wire())  # encoding 4 keeps the old ids as they were
    assert again.seen_legacy == old.seen_legacy and apply(again, events[0], DEFINITION).duplicate
    # New ids take the window's room from the oldest old ones first, and the old memory ends.
    limits = Limits(dedupe_window=4)
    run([tp("page_view", 20 + i, event_id=f"n{i}") for i in range(2)], state=again, limits=limits)
    assert again.seen_legacy == [id_hash("e1"), id_hash("e2")] and len(again.seen) == 2 * EVENT_KEY_SIZE
    assert not apply(again, events[0], DEFINITION, limits).duplicate  # "e0" left the window
    run([tp("page_view", 30 + i, event_id=f"m{i}") for i in range(2)], state=again, limits=limits)
    assert again.seen_legacy is None and len(again.seen) == 4 * EVENT_KEY_SIZE


def test_a_key_straddling_two_remembered_keys_is_not_a_duplicate():
    key = event_key("x")
    state, _ = run([tp("page_view", 0, event_id="y")])
    state.seen = bytearray(b"AAAA" + key + b"BBBB")  # two keys: AAAA + key[:4], key[4:] + BBBB
    assert not apply(state, tp("page_view", 1, event_id="x"), DEFINITION).duplicate
    assert state.seen.endswith(key) and apply(state, tp("page_view", 1, event_id="x"), DEFINITION).duplicate


def test_an_old_state_that_remembered_no_event_ids_keeps_no_legacy_memory():
    old = CustomerState.from_wire(_old_encodings(CustomerState())["v3"])
    assert old.seen == b"" and old.seen_legacy is None


def test_a_customer_who_never_purchased_keeps_first_and_last_touch_across_the_upgrade():
    state, _ = run([tp("ad_click", 0, channel="ads"), tp("page_view", 5, channel="email"), tp("search", 8, channel="search")])
    old = CustomerState.from_wire(_old_encodings(state)["v2"])
    assert old.pre_purchase == [[state.first_seen, "ads", 0], [state.last_seen, "search", 0]]
    later, _ = run([tp("purchase", 9, order_id="A", channel="store")], state=old)
    assert later.attribution == ["ads", "search"]


def test_an_unknown_state_encoding_is_refused_with_what_to_do():
    with pytest.raises(ValueError, match="encoding 9 .*newer journey"):
        CustomerState.from_wire(orjson.dumps([9, 1, 2]))


def test_an_event_id_and_an_order_id_that_read_the_same_are_two_orders():
    # A purchase without order_id is its own order under its event id; another purchase whose
    # order_id happens to be that same text is another order (ids of two kinds, e.g. numbered
    # from 1 by two systems).
    events = [tp("purchase", 0, event_id="o1"), tp("purchase", 60 * 24, order_id="o1")]
    for order in (events, events[::-1]):
        state, _ = run(order)
        assert state.purchases == 2 and state.stage == 4  # retention
        assert observable(state) == reference(events)
