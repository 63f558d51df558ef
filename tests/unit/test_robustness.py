"""Bad or odd input never escapes as an exception: whatever the bytes, the pure path either
processes them or says why not (a dead letter). A crash here would be a poison pill: the worker
would stop on the same record after every restart."""

from __future__ import annotations

import calendar
import json
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from journey.churn.risk import StageTimes, load_model
from journey.churn.update import ChurnConfig, note_touchpoint, update
from journey.core.aggregates import PartitionAggregate, summarize
from journey.core.definition import load_definition
from journey.core.events import InvalidTouchpoint, decode
from journey.core.machine import Limits
from journey.core.state import CustomerState
from journey.worker.pipeline import Pipeline, Record

ROOT = Path(__file__).resolve().parents[2]
DEFINITION = load_definition(ROOT / "schemas" / "journey.yaml")
MODEL = load_model(ROOT / "schemas" / "churn-params.json")

TYPES = ["page_view", "product_view", "add_to_cart", "checkout_started", "purchase", "subscription_renewed",
         "review_submitted", "referral_sent", "complaint", "refund", "unsubscribe", "wishlist_add", "x1_y2"]
EXTREME_TIMES = ["1900-01-01T00:00:00+14:00", "1900-01-01T00:00:00-12:00", "2199-12-31T23:59:59-12:00",
                 "1970-01-01T00:00:00Z", "1997-01-01T12:00:00+00:00", "2024-02-29T23:59:59.999999999+05:45"]
ODD_PROPERTIES: list[dict[str, Any]] = [
    {}, {"order_id": 0}, {"order_id": -(2**62)}, {"order_id": "x" * 10_000}, {"amount": 1e12},
    {"amount": -5}, {"amount": 0}, {"rating": 1}, {"rating": 5.0}, {"cart_id": ""},
    {"nested": {"deep": [1, {"x": None}]}}, {"currency": "EUR", "amount": 12.5, "order_id": "ü-ß-😀"},
]


def _event(rng: random.Random, customer: str) -> dict[str, Any]:
    e: dict[str, Any] = {
        "event_id": rng.choice([f"e{rng.randint(0, 50)}", "😀" * 50, " ", "a" * 200]),
        "customer_id": customer,
        "type": rng.choice(TYPES),
        "timestamp": rng.choice(EXTREME_TIMES),
        "properties": rng.choice(ODD_PROPERTIES),
    }
    if rng.random() < 0.3:
        e["channel"] = rng.choice(["email", "store", None])
    return e


def _mutate(rng: random.Random, raw: bytes) -> bytes:
    data = bytearray(raw)
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        pos = rng.randrange(len(data) + 1)
        if op < 0.4 and data:
            del data[min(pos, len(data) - 1)]
        elif op < 0.8:
            data.insert(pos, rng.randrange(256))
        else:
            data[pos:pos] = rng.choice([b"\\u0000", b'"', b"{", b"]", b"\xff", b"null", b"1e999"])
    return bytes(data)


_RFC3339 = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def _epoch(text: str) -> float:
    """RFC 3339 -> epoch seconds, by arithmetic (no datetime parser: it rejects 9 fraction digits)."""
    m = _RFC3339.fullmatch(text)
    assert m, text
    y, mo, d, h, mi, s = (int(g) for g in m.groups()[:6])
    fraction = float("0" + m.group(7)) if m.group(7) else 0.0
    zone = m.group(8)
    offset = 0 if zone in "Zz" else (1 if zone[0] == "+" else -1) * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)) + fraction - offset


def _assert_decoded_as_written(tp: Any, candidate: bytes) -> None:
    """A touchpoint that decoded holds what the bytes say, field by field (read by the stdlib's json)."""
    d = json.loads(candidate.decode("utf-8"))
    assert tp.event_id == d["event_id"]
    assert tp.customer_id == d.get("customer_id")
    assert tp.anonymous_id == d.get("anonymous_id")
    assert tp.profile_id == (d["customer_id"] if d.get("customer_id") is not None else d["anonymous_id"])
    assert tp.type == d["type"]
    assert tp.timestamp == d["timestamp"]
    assert tp.ts == pytest.approx(_epoch(d["timestamp"]), abs=1.01e-6), d["timestamp"]
    assert tp.channel == (d["channel"] if d.get("channel") is not None else "other")  # the schema's default
    assert tp.properties == (d["properties"] if d.get("properties") is not None else {})


def test_random_bytes_are_either_touchpoints_or_invalid_touchpoints():
    rng = random.Random(5)
    outcomes: Counter[str] = Counter()
    for _ in range(5000):
        raw = orjson.dumps(_event(rng, "c"))
        candidate = _mutate(rng, raw) if rng.random() < 0.8 else bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
        try:
            tp = decode(candidate)
        except InvalidTouchpoint as exc:
            assert exc.reason in {"not_utf8", "not_json", "not_object", "schema_violation"}
            assert exc.error
            outcomes[exc.reason] += 1
        else:
            _assert_decoded_as_written(tp, candidate)
            outcomes["decoded"] += 1
    # Both sides were exercised, and every kind of rejection.
    assert outcomes["decoded"] >= 200 and set(outcomes) == {"decoded", "not_utf8", "not_json", "not_object", "schema_violation"}, outcomes


def test_every_unmutated_event_decodes_to_its_fields():
    rng = random.Random(6)
    for _ in range(2000):
        raw = orjson.dumps(_event(rng, "c"))
        _assert_decoded_as_written(decode(raw), raw)


def test_odd_but_valid_histories_go_through_every_pure_step():
    rng = random.Random(9)
    pipe = Pipeline(DEFINITION, Limits(), summarize=summarize)
    config = ChurnConfig()
    stage_times = StageTimes(config.risk)
    states: dict[str, CustomerState] = {}
    aggregate = PartitionAggregate()
    for batch_no in range(60):
        records = []
        for i in range(40):
            customer = f"c{rng.randint(0, 25)}"
            records.append(Record(customer.encode(), orjson.dumps(_event(rng, customer)), "t", 0, batch_no * 40 + i))
        out = pipe.process(records, states)
        assert out.reasons == []  # every one of these is valid
        for key, (rec, state, before) in out.writes.items():
            tp = decode(rec.value)  # type: ignore[arg-type]
            note_touchpoint(state, tp.type, tp.ts, tp.channel, config)
            now = max(t for t in (state.last_seen, out.max_event_time) if t is not None)
            update(state, now, MODEL, config, stage_times)
            update(state, now + rng.choice([0.0, 86400.0, 10 * 365 * 86400.0]), MODEL, config, stage_times)
            aggregate.remove(before)
            aggregate.add(summarize(state))
            states[key] = CustomerState.from_wire(state.to_wire())
            orjson.dumps(state.to_public())
    # The incrementally kept aggregate still equals a recount of the final states.
    assert aggregate.to_wire() == PartitionAggregate.of(states.values()).to_wire()
    assert sum(sum(slots) for slots in aggregate.by_first.values()) == len(states)
