"""The synthetic touchpoint generator: contract, ordering, realism of the mix, speed, memory."""

from __future__ import annotations

import itertools
import json
import tracemalloc
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator, FormatChecker

from journey.sources.generator import (
    GeneratorMix,
    bad_events,
    emissions,
    generate,
    live_feed,
)

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
START = datetime(2024, 3, 1, tzinfo=UTC)
CHANNELS = {"social", "email", "search", "ads", "direct", "referral", "store", "support", "other"}
STAGES = ["awareness", "consideration", "decision", "purchase", "retention", "advocacy"]


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    checker = FormatChecker()
    # Without rfc3339-validator installed, jsonschema silently skips "date-time".
    assert not checker.conforms("2024-01-01T12:00:00", "date-time"), "date-time format is not being checked"
    schema = json.loads((SCHEMAS / "touchpoint.schema.json").read_text())
    return Draft202012Validator(schema, format_checker=checker)


@pytest.fixture(scope="module")
def journey() -> dict:
    return yaml.safe_load((SCHEMAS / "journey.yaml").read_text())


@pytest.fixture(scope="module")
def sample() -> list:
    return list(emissions(3000, seed=11, start=START))


@pytest.fixture(scope="module")
def events(sample) -> list[dict]:
    return [e.event for e in sample]


def ts(event: dict) -> datetime:
    return datetime.fromisoformat(event["timestamp"])


def who(event: dict) -> str:
    return event.get("customer_id") or event["anonymous_id"]


def by_customer(events: list[dict]) -> dict[str, list[dict]]:
    """Each known customer's first deliveries, in event-time order."""
    seen: set[str] = set()
    out: dict[str, list[dict]] = defaultdict(list)
    for e in events:
        if "customer_id" in e and e["event_id"] not in seen:
            seen.add(e["event_id"])
            out[e["customer_id"]].append(e)
    for timeline in out.values():
        timeline.sort(key=ts)
    return out


# --- determinism


def test_same_seed_same_events_other_seed_other_events() -> None:
    first = list(generate(300, seed=3, start=START))
    again = list(generate(300, seed=3, start=START))
    other = list(generate(300, seed=4, start=START))
    assert first == again
    assert [e["type"] for e in first] != [e["type"] for e in other]


# --- contract


def test_every_event_validates_against_the_touchpoint_schema(validator, events) -> None:
    for event in events:
        errors = [e.message for e in validator.iter_errors(event)]
        assert not errors, (event, errors)


def test_purchase_cart_and_review_properties(events) -> None:
    for e in events:
        p = e["properties"]
        if e["type"] == "purchase":
            assert p["order_id"] and len(p["currency"]) == 3
            # An order's line carries its amount; a status report of it (paid, shipped) none, so
            # that revenue, which sums the lines, counts each order once.
            if "status" in p:
                assert "amount" not in p
            else:
                assert isinstance(p["amount"], float) and p["amount"] > 0
        elif e["type"] == "add_to_cart":
            assert p["cart_id"]
        elif e["type"] == "review_submitted":
            assert p["rating"] in {1, 2, 3, 4, 5}


def test_event_ids_unique_except_deliberate_duplicates(sample) -> None:
    originals = Counter(e.event["event_id"] for e in sample if not e.duplicate)
    assert max(originals.values()) == 1
    dups = [e for e in sample if e.duplicate]
    assert dups, "no duplicate deliveries in the sample"
    first = {e.event["event_id"]: e.event for e in sample if not e.duplicate}
    for d in dups:
        assert d.event == first[d.event["event_id"]]


def test_naive_start_is_refused_with_a_hint() -> None:
    with pytest.raises(ValueError, match="time zone"):
        generate(1, start=datetime(2024, 1, 1))


def test_mix_rejects_a_non_probability() -> None:
    with pytest.raises(ValueError, match="GeneratorMix.late"):
        GeneratorMix(late=1.5)


# --- ordering


def test_event_time_order_except_late_events(sample) -> None:
    dues = [e.due for e in sample]
    assert dues == sorted(dues)
    in_order = [ts(e.event) for e in sample if not e.late]
    assert in_order == sorted(in_order)
    late = [e for e in sample if e.late and not e.duplicate]
    assert late, "no late events in the sample"
    # A late event really is behind: its event time is before something already sent.
    newest = datetime.min.replace(tzinfo=UTC)
    behind = 0
    for e in sample:
        t = ts(e.event)
        if e.late and not e.duplicate and t < newest:
            behind += 1
        newest = max(newest, t)
    assert behind >= len(late) * 0.9


def test_without_late_or_duplicates_the_stream_is_fully_ordered() -> None:
    mix = GeneratorMix(late=0.0, duplicate=0.0)
    events = list(generate(1000, seed=5, start=START, mix=mix))
    times = [ts(e) for e in events]
    assert times == sorted(times)
    assert len({e["event_id"] for e in events}) == len(events)


def test_customers_arrive_within_the_span() -> None:
    span = timedelta(days=2)
    firsts: dict[str, datetime] = {}
    for e in generate(500, seed=2, start=START, span=span):
        firsts.setdefault(who(e), ts(e))
    assert START <= min(firsts.values()) and max(firsts.values()) < START + span


# --- realism of the mix


def test_every_channel_is_used(events) -> None:
    assert {e.get("channel", "other") for e in events} == CHANNELS


def test_every_type_of_the_journey_definition_occurs(events, journey) -> None:
    wanted = {t for types in journey["rules"].values() for t in types}
    wanted |= set(journey["purchase"]["types"]) | set(journey["purchase"]["renewal_types"])
    wanted |= set(journey["advocacy"]["types"]) | {journey["advocacy"]["review_type"]}
    wanted |= set(journey["negative"]["types"])
    assert wanted - {e["type"] for e in events} == set()


def test_unknown_types_and_anonymous_visitors_occur(events, journey) -> None:
    known = {t for types in journey["rules"].values() for t in types}
    known |= set(journey["purchase"]["types"]) | set(journey["purchase"]["renewal_types"])
    known |= set(journey["advocacy"]["types"]) | set(journey["negative"]["types"]) | {"review_submitted"}
    assert {e["type"] for e in events} - known
    anonymous = [e for e in events if "customer_id" not in e]
    assert anonymous and all(e["anonymous_id"] for e in anonymous)


def test_first_touch_from_outside_then_direct(events) -> None:
    timelines = by_customer(events)
    first = Counter(t[0]["channel"] for t in timelines.values())
    outside = sum(first[c] for c in ("ads", "social", "search", "email", "referral"))
    assert outside / sum(first.values()) > 0.8
    later = Counter(e.get("channel") for t in timelines.values() for e in t[1:])
    assert later.most_common(1)[0][0] == "direct"
    assert all(e["channel"] == "support" for e in events if e["type"] == "support_ticket")
    assert any(e["channel"] == "store" for e in events if e["type"] == "purchase")


def _stage_reached(timeline: list[dict], journey: dict) -> str:
    stage_of = {t: s for s, types in journey["rules"].items() for t in types}
    best = 0
    orders: set = set()
    for e in timeline:
        if e["type"] == "purchase":
            orders.add(e["properties"]["order_id"])
            best = max(best, STAGES.index("purchase" if len(orders) == 1 else "retention"))
        elif e["type"] in stage_of:
            best = max(best, STAGES.index(stage_of[e["type"]]))
    return STAGES[best]


def test_drop_off_at_every_stage(events, journey) -> None:
    reached = Counter(_stage_reached(t, journey) for t in by_customer(events).values())
    for stage in ("awareness", "consideration", "decision", "purchase", "retention"):
        assert reached[stage] > 0, (stage, reached)


def test_abandoned_carts_repeat_buyers_and_split_orders(events) -> None:
    timelines = by_customer(events)
    abandoned = [
        c for c, t in timelines.items()
        if any(e["type"] in ("add_to_cart", "checkout_started") for e in t)
        and not any(e["type"] == "purchase" for e in t)
    ]
    assert abandoned
    orders = {c: {e["properties"]["order_id"] for e in t if e["type"] == "purchase"} for c, t in timelines.items()}
    assert sum(len(o) >= 2 for o in orders.values()) > 0
    assert sum(len(o) == 1 for o in orders.values()) > 0
    events_per_order = Counter(
        e["properties"]["order_id"] for t in timelines.values() for e in t if e["type"] == "purchase"
    )
    assert max(events_per_order.values()) >= 2
    # Order ids belong to one customer only.
    owners = defaultdict(set)
    for c, o in orders.items():
        for order_id in o:
            owners[order_id].add(c)
    assert all(len(v) == 1 for v in owners.values())


def test_advocates_complainers_and_early_reviews(events) -> None:
    advocates = complainers = early = renewals = 0
    for t in by_customer(events).values():
        bought = False
        for e in t:
            kind, rating = e["type"], e["properties"].get("rating")
            if kind == "purchase":
                bought = True
            elif kind == "review_submitted" and not bought:
                early += 1
            elif kind == "review_submitted" and rating >= 4:
                advocates += 1
            elif kind == "review_submitted" and rating <= 2:
                complainers += 1
            elif kind == "subscription_renewed" and bought:
                renewals += 1
    assert advocates and complainers and early and renewals


def test_about_ten_events_per_customer() -> None:
    n = 2000
    per_customer = sum(1 for _ in generate(n, seed=9, start=START)) / n
    assert 8 <= per_customer <= 12


def test_mix_is_tunable() -> None:
    everyone_anonymous = list(generate(200, seed=1, start=START, mix=GeneratorMix(anonymous=1.0)))
    assert all("customer_id" not in e for e in everyone_anonymous)
    nobody_buys = list(generate(500, seed=1, start=START, mix=GeneratorMix(to_purchase=0.0, store_purchase=0.0)))
    assert not any(e["type"] == "purchase" for e in nobody_buys)


# --- memory and speed


def test_memory_holds_only_live_journeys() -> None:
    n = 3000
    tracemalloc.start()
    try:
        count = sum(1 for _ in generate(n, seed=1, start=START))
        lazy_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        held = list(generate(n, seed=1, start=START))
        materialised = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert count == len(held)
    assert lazy_peak < materialised / 4, (lazy_peak, materialised)


# --- live feed


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_live_feed_paces_by_wall_clock_and_validates(validator) -> None:
    t0 = 1_700_000_000.0
    rate = 40.0
    feed = live_feed(rate, seed=3, clock=FakeClock(t0))
    window = list(itertools.takewhile(lambda pair: pair[0] < t0 + 300, feed))
    dues = [due for due, _ in window]
    assert dues == sorted(dues) and dues[0] >= t0
    assert 0.75 * rate * 300 < len(window) < 1.25 * rate * 300
    on_time = 0
    for due, event in window:
        assert not list(validator.iter_errors(event))
        lag = due - ts(event).timestamp()
        assert lag > -0.001  # never stamped in the future
        on_time += lag < 0.001
    assert on_time > 0.95 * len(window)


def test_live_feed_shows_customers_reaching_advocacy_within_a_minute() -> None:
    t0 = 1_700_000_000.0
    feed = live_feed(20.0, seed=5, clock=FakeClock(t0))
    minute = [event for due, event in itertools.takewhile(lambda p: p[0] < t0 + 60, feed)]
    timelines = by_customer(minute)
    bought_then_advocated = [
        c for c, t in timelines.items()
        if any(e["type"] == "purchase" for e in t)
        and any(e["type"] in ("referral_sent", "social_share") for e in t)
    ]
    assert bought_then_advocated
    repeat = [c for c, t in timelines.items() if len({e["properties"].get("order_id") for e in t if e["type"] == "purchase"}) >= 2]
    assert repeat


def test_live_feed_restart_uses_fresh_ids() -> None:
    a = [e for _, e in itertools.islice(live_feed(10, seed=1, clock=FakeClock(1_700_000_000.0)), 200)]
    b = [e for _, e in itertools.islice(live_feed(10, seed=1, clock=FakeClock(1_700_000_900.0)), 200)]
    assert not {e["event_id"] for e in a} & {e["event_id"] for e in b}
    assert not {who(e) for e in a} & {who(e) for e in b}


def test_live_feed_refuses_a_non_positive_rate() -> None:
    with pytest.raises(ValueError, match="rate_per_s"):
        live_feed(0, seed=1)


# --- malformed payloads


def test_bad_events_are_all_rejected_and_varied(validator) -> None:
    reasons = Counter()
    payloads = list(itertools.islice(bad_events(1), 40))
    assert payloads == list(itertools.islice(bad_events(1), 40))
    for raw in payloads:
        assert isinstance(raw, bytes)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            reasons["utf-8"] += 1
            continue
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            reasons["json"] += 1
            continue
        errors = list(validator.iter_errors(doc))
        assert errors, f"bad event passes the schema: {text}"
        reasons["schema"] += 1
    assert set(reasons) == {"utf-8", "json", "schema"}
    assert any(b"event_id" not in raw for raw in payloads)
