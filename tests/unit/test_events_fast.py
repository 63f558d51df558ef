"""The fast path of journey.core.events gives the strict path's verdict, error and values, always.

validate() accepts common, certainly valid touchpoints without the regexes and datetime, from
caches of pieces already checked; everything else goes to _validate_strict. These tests hold the
two to the same outcome (Touchpoint fields, or reason and message) on cold and warm caches.
"""

from __future__ import annotations

import calendar
import copy
import random
import sys
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import orjson
import pytest

from journey.core import events
from journey.core.events import InvalidTouchpoint, Touchpoint, _validate_strict, decode, touchpoint, validate

FIELDS = ("event_id", "customer_id", "anonymous_id", "type", "timestamp", "ts", "channel", "properties", "profile_id")

GOOD: dict[str, Any] = {
    "event_id": "s7-e15",
    "customer_id": "s7-c7",
    "type": "ad_click",
    "timestamp": "2024-01-01T01:45:22.306+00:00",
    "channel": "ads",
    "properties": {"campaign": "new-arrivals"},
}


@pytest.fixture(autouse=True)
def cold_caches() -> Iterator[None]:
    caches = (events._VALID_TYPES, events._VALID_CURRENCIES, events._HOURS, events._MINUTE_SECONDS, events._TAILS, events._ZONES)
    for c in caches:
        c.clear()
    yield
    for c in caches:
        c.clear()


def outcome(fn: Any, data: Any) -> tuple[Any, ...]:
    try:
        tp = fn(data)
    except InvalidTouchpoint as exc:
        return ("invalid", exc.reason, exc.error)
    assert type(tp) is Touchpoint
    return ("ok",) + tuple(getattr(tp, f) for f in FIELDS)


def assert_same_as_strict(data: Any) -> tuple[Any, ...]:
    strict = outcome(_validate_strict, copy.deepcopy(data))
    assert outcome(validate, copy.deepcopy(data)) == strict, data  # cold caches for this value
    assert outcome(validate, copy.deepcopy(data)) == strict, data  # warm
    try:
        raw = orjson.dumps(data)
    except TypeError:  # not JSON (a set, a tuple key...): no record can carry it
        return strict
    if orjson.loads(raw) == data:  # decode() reads the bytes with msgspec first, orjson after
        assert outcome(decode, raw) == strict, raw
    return strict


# --- timestamps ------------------------------------------------------------------------------


def random_timestamp(rng: random.Random) -> str:
    year = rng.choice([1900, 2199, 2000, 2100, 1904, 2024, rng.randint(1900, 2199)])
    month = rng.randint(1, 12)
    if rng.random() < 0.1 and calendar.isleap(year):
        month, day = 2, 29
    else:
        day = rng.randint(1, calendar.monthrange(year, month)[1])
    clock = f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.choice([0, 59, rng.randint(0, 59)]):02d}"
    digits = rng.choice([0, 0, 3, 6, rng.randint(1, 9)])
    frac = "." + "".join(rng.choice("0123456789") for _ in range(digits)) if digits else ""
    if rng.random() < 0.3:
        zone = rng.choice("Zz")
    else:
        zone = f"{rng.choice('+-')}{rng.choice([0, 23, rng.randint(0, 23)]):02d}:{rng.choice([0, 59, rng.randint(0, 59)]):02d}"
    return f"{year:04d}-{month:02d}-{day:02d}{rng.choice('Tt')}{clock}{frac}{zone}"


def test_fast_timestamps_equal_fromisoformat_to_the_bit():
    rng = random.Random(5)
    stamps = [random_timestamp(rng) for _ in range(20_000)]
    for attempt in ("cold", "warm"):
        for ts in stamps:
            us = events._epoch_us(ts)
            assert us is not None, ts
            expected = datetime.fromisoformat(ts.upper()).timestamp()
            assert us / 1_000_000 == expected, (attempt, ts, us / 1_000_000, expected)
    # and through validate(), where warm pieces are summed without _epoch_us
    for ts in stamps[:2_000]:
        assert validate(dict(GOOD, timestamp=ts)).ts == datetime.fromisoformat(ts.upper()).timestamp(), ts


@pytest.mark.parametrize(
    "ts",
    [
        "2023-02-29T00:00:00Z",  # not a leap year
        "1900-02-29T00:00:00Z",  # nor is 1900
        "2100-02-29T00:00:00+01:00",
        "2024-02-30T00:00:00Z",
        "2024-04-31T00:00:00Z",
        "2024-00-10T00:00:00Z",
        "2024-13-01T00:00:00Z",
        "2024-01-00T00:00:00Z",
        "2024-01-01T24:00:00Z",
        "2024-01-01T23:60:00Z",
        "2024-01-01T23:59:60Z",
        "2024-01-01T00:00:00+24:00",
        "1899-12-31T23:59:59Z",
        "2200-01-01T00:00:00Z",
        "2024-01-01T00:00:00",
        "2024-01-01T00:00:00.+00:00",
        "2024-01-01T00:00:00,5+00:00",
        "2024-01-01 00:00:00Z",
        "2024-01-01T00:00Z",
        "2024-01-01T00:00:00+0000",
        "2024-01-01T00:00:00+00",
        "2024-01-01T00:00:00+00:00:00",
        "2024-01-01T00:00:00 Z",
        "2024-01-01T00:00:00Z ",
        "2024-01-0\u0661T00:00:00Z",  # an Arabic-Indic digit: the regex's \\d takes it, fromisoformat does not
        "2024-01-01T00:00:00.12345\u0666Z",  # int() reads Arabic-Indic digits too
        "2024-01-01T00:00:00.\u0661\u0662\u0663\u0664\u0665\u0666+01:00",
        "2024-01-01T00:00:00\uff0b00:00",
        "2024-W01-1T00:00:00Z",
        "",
        "Z",
    ],
)
def test_invalid_timestamps_are_rejected_with_the_strict_message(ts: str):
    assert events._epoch_us(ts) is None
    for warm in ("2024-01-01T00:00:00.123456Z", "2024-01-01T00:00:00.123456+01:00"):  # pieces of the same shapes
        validate(dict(GOOD, timestamp=warm))
    result = assert_same_as_strict(dict(GOOD, timestamp=ts))
    assert result[0] == "invalid" and "field timestamp" in result[2]


@pytest.mark.parametrize(
    "ts",
    [
        "2024-01-01T00:00:00+00:60",  # odd but valid for the schema and fromisoformat: 1 h
        "2024-01-01T00:00:00.1234567890123+05:30",  # more digits than the fast path reads
        "2024-01-01T00:00:00.1234567890Z",
    ],
)
def test_valid_timestamps_outside_the_fast_shapes_still_pass(ts: str):
    assert events._epoch_us(ts) is None
    result = assert_same_as_strict(dict(GOOD, timestamp=ts))
    assert result[0] == "ok" and result[FIELDS.index("ts") + 1] == datetime.fromisoformat(ts).timestamp()


# --- whole touchpoints -----------------------------------------------------------------------


def variants(rng: random.Random) -> Iterator[dict[str, Any]]:
    """Touchpoints near every edge the fast path decides on, valid and not."""
    choices: dict[str, list[Any]] = {
        "event_id": ["e", "", None, 5, "a" * 200, "a" * 201, ["e"]],
        "customer_id": ["c", "", None, 3, "c" * 200, "c" * 201, ["c"]],
        "anonymous_id": ["a", "", None, 7, "a" * 201, {"a": 1}],
        "type": ["purchase", "add_to_cart", "Purchase", "a__b", "_x", "a" * 100, "a" * 101, 9, None, ["purchase"]],
        "timestamp": ["2024-05-01T12:00:00Z", "2024-05-01t12:00:00.5z", "2024-02-30T00:00:00Z", "2024-05-01T12:00:00",
                      1714557600, None, ["2024-05-01T12:00:00Z"], "2024-05-01T12:00:00.123456789-03:30"],
        "channel": ["email", "ads", "fax", "ADS", None, 3],
        "properties": [None, {}, [], "x", {"rating": 5}, {"rating": 0}, {"rating": 4.0}, {"rating": True},
                       {"order_id": 12}, {"order_id": 1.0}, {"order_id": 1.5}, {"order_id": None}, {"order_id": True},
                       {"cart_id": "k"}, {"cart_id": None}, {"cart_id": False}, {"amount": 3}, {"amount": 2.5},
                       {"amount": "3"}, {"amount": True}, {"amount": None}, {"currency": "EUR"}, {"currency": "eur"},
                       {"currency": "EURO"}, {"currency": None}, {"currency": 978},
                       {"order_id": "o", "amount": 9.99, "currency": "GBP"}, {"product_id": "p", "cart_id": 4},
                       {"campaign": "x", "nested": {"a": [1]}}],
        "extra": ["anything", None],
    }
    for _ in range(4000):
        data = copy.deepcopy(GOOD)
        for _ in range(rng.randint(0, 3)):
            name = rng.choice(list(choices))
            value = rng.choice(choices[name] + ["<absent>"])
            if value == "<absent>":
                data.pop(name, None)
            else:
                data[name] = value
        yield data


def test_fast_and_strict_paths_agree_on_values_and_errors():
    rng = random.Random(3)
    seen = set()
    for data in variants(rng):
        seen.add(assert_same_as_strict(data)[0])
    assert seen == {"ok", "invalid"}


def test_non_dicts_and_dict_subclasses_get_the_strict_verdict():
    class Mapping(dict):  # type: ignore[type-arg]
        pass

    for data in ([GOOD], "x", None, Mapping(GOOD)):
        assert_same_as_strict(data)


TYPICAL = [
    GOOD,
    dict(GOOD, type="purchase", properties={"order_id": "o-1", "amount": 12.5, "currency": "EUR"}),
    dict(GOOD, type="purchase", properties={"order_id": 17, "amount": 3, "currency": "USD"}),
    dict(GOOD, type="add_to_cart", properties={"cart_id": "k-1", "product_id": "p"}),
    dict(GOOD, type="review_submitted", properties={"rating": 4}),
    dict(GOOD, timestamp="2024-01-01T01:45:22Z", properties={}),
    dict(GOOD, timestamp="2024-01-01t01:45:22.123456z"),
    dict(GOOD, timestamp="2024-07-01T01:45:22.5-07:00"),
    {k: v for k, v in GOOD.items() if k != "customer_id"} | {"anonymous_id": "v-1"},
    GOOD | {"anonymous_id": "v-1"},
    {k: v for k, v in GOOD.items() if k not in ("channel", "properties")},
    GOOD | {"channel": None, "properties": None},
    GOOD | {"context": {"ip": "192.0.2.1", "library": ["a", 1]}},  # fields journey does not read
    dict(GOOD, properties={"count": 2**63, "price": 1.5, "flag": True, "none": None}),
    dict(GOOD, type="purchase", properties={"order_id": "o-2", "items": [{"sku": "a", "qty": 2}]}),  # nested: read by orjson
]


@pytest.mark.parametrize("data", TYPICAL)
def test_typical_touchpoints_never_need_the_strict_path(data: dict[str, Any], monkeypatch: pytest.MonkeyPatch):
    expected = outcome(_validate_strict, data)
    assert expected[0] == "ok"
    validate(copy.deepcopy(data))  # warm the caches

    def strict(_: Any) -> Touchpoint:
        raise AssertionError("took the strict path")

    monkeypatch.setattr(events, "_validate_strict", strict)
    assert outcome(decode, orjson.dumps(data)) == expected


def test_touchpoints_built_directly_know_their_profile_id():
    tp = touchpoint("e", None, "v-1", "page_view", "2024-01-01T00:00:00Z", 1704067200.0, "other", {})
    assert (tp.profile_id, tp.ts) == ("v-1", 1704067200.0)
    assert touchpoint("e", "c-1", "v-1", "page_view", "2024-01-01T00:00:00Z", 1704067200.0, "other", {}).profile_id == "c-1"
    assert outcome(validate, GOOD) == outcome(_validate_strict, GOOD) == outcome(decode, orjson.dumps(GOOD))


def test_caches_stay_bounded_and_correct(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(events, "CACHE_MAX", 50)
    rng = random.Random(9)
    for i in range(400):
        ts = random_timestamp(rng)
        data = dict(GOOD, type=f"type_{i}", timestamp=ts, properties={"currency": "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(3))})
        tp = validate(data)
        assert (tp.type, tp.ts) == (f"type_{i}", datetime.fromisoformat(ts.upper()).timestamp())
        assert max(len(events._VALID_TYPES), len(events._VALID_CURRENCIES), len(events._HOURS), len(events._TAILS)) <= 50
    assert len(events._MINUTE_SECONDS) <= 3600


@pytest.mark.parametrize("channel", [[], {}, ["ads"], {"a": 1}, 3, True])
def test_a_channel_of_the_wrong_json_type_is_a_schema_violation_not_a_crash(channel):
    raw = orjson.dumps({"event_id": "e", "customer_id": "c", "type": "page_view",
                        "timestamp": "2024-01-01T00:00:00+00:00", "channel": channel})
    with pytest.raises(InvalidTouchpoint) as info:
        decode(raw)
    assert info.value.reason == "schema_violation" and "channel" in info.value.error


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (b'"\xd1"', "not_utf8"),  # msgspec skips an unknown field's bytes unchecked
        (b'"\xed\xa0\x80"', "not_utf8"),  # a UTF-8-encoded surrogate
        (b"1e400", "not_json"),  # orjson refuses a number beyond a double; msgspec would skip it
        (b'"fine"', None),
    ],
)
def test_a_field_journey_does_not_know_is_read_as_strictly_as_any_other(extra: bytes, reason: str | None):
    raw = orjson.dumps(GOOD)[:-1] + b',"context":' + extra + b"}"
    if reason is None:
        assert decode(raw).event_id == GOOD["event_id"]
    else:
        with pytest.raises(InvalidTouchpoint) as exc:
            decode(raw)
        assert exc.value.reason == reason


@pytest.mark.parametrize("order_id", [2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**30])
def test_an_integer_order_id_is_read_as_orjson_reads_it(order_id: int):
    # The order's hash in the state follows from str(order_id): a record replayed across this
    # decoder's change must give the same one (orjson reads beyond 64 bits as a float).
    raw = orjson.dumps(dict(GOOD, type="purchase", properties={"amount": 1})).replace(b'"amount":1', b'"amount":1,"order_id":%d' % order_id)
    got = decode(raw).properties["order_id"]
    assert (type(got), got) == (type(orjson.loads(raw)["properties"]["order_id"]), orjson.loads(raw)["properties"]["order_id"])


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"9" * 400, "not_json"),  # msgspec reads any integer; orjson refuses one beyond a double
        (b"-" + b"9" * 400, "not_json"),
        (b"[" + b"9" * 400 + b"]", "not_json"),
        (b'{"a":' * 1500 + b"1" + b"}" * 1500, "not_json"),  # orjson's depth limit, whatever the recursion limit
        (b"18446744073709551616", None),  # read as orjson reads it: a float
        (b"[18446744073709551616, {}]", None),
    ],
)
def test_properties_are_read_as_orjson_reads_them(value: bytes, reason: str | None):
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10_000)  # msgspec's own depth limit is the interpreter's
    try:
        raw = orjson.dumps(GOOD)[:-2] + b',"x":' + value + b"}}"
        if reason is None:
            assert decode(raw).properties["x"] == orjson.loads(raw)["properties"]["x"]
            assert type(decode(raw).properties["x"]) is type(orjson.loads(raw)["properties"]["x"])
        else:
            with pytest.raises(InvalidTouchpoint) as exc:
                decode(raw)
            assert exc.value.reason == reason
    finally:
        sys.setrecursionlimit(limit)
