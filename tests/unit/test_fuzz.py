"""Property-based fuzzing (hypothesis) of the pure path a hostile producer reaches.

- decode: whatever the bytes (or the decoded value), a Touchpoint or InvalidTouchpoint, nothing else;
- the hand-written validator and the JSON Schema agree on touchpoint-shaped values;
- apply: every valid touchpoint applies without an exception, and the state it leaves encodes
  and decodes to itself;
- the pipeline: any sequence of records (any key, value and journey-control header, its own
  re-keyed outputs fed back) is processed without an exception escaping.

Each property is bounded (max_examples) to run in a few seconds; the corpus of hand-picked
hostile records is tests/support/hostile.py.
"""

from __future__ import annotations

import json
import re
import string
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker, validators

from journey.core.definition import load_definition
from journey.core.events import CHANNELS, MAX_AMOUNT, InvalidTouchpoint, Touchpoint, decode, validate
from journey.core.identity import ALIASED, LINK, MERGE, sign
from journey.core.machine import Limits, apply
from journey.core.state import ENCODING_VERSION, CustomerState
from journey.errors import NewerEncoding
from journey.worker.pipeline import BatchResult, IdentityRules, Pipeline, Record, control_headers

KEY = IdentityRules().key

ROOT = Path(__file__).resolve().parents[2]
DEFINITION = load_definition(ROOT / "schemas" / "journey.yaml")
LIMITS = Limits()
REASONS = {"not_utf8", "not_json", "not_object", "schema_violation"}

# Each property runs in a few seconds (well under 10 on a shared 2-core machine).
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- JSON-ish values ---------------------------------------------------------------------------
#: Integers as orjson reads them (64-bit; larger ones come back as floats).
json_ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
json_scalars = st.none() | st.booleans() | json_ints | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
#: What Python callers of validate() may pass besides: NaN and infinities, big integers, tuples.
python_values = st.recursive(
    json_scalars | st.floats() | st.integers(),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


def nested(depth: int, leaf: Any = 0) -> Any:
    """``depth`` levels of arrays and objects around ``leaf``, built without recursion."""
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"n": value}
    return value


# --- near-valid touchpoints --------------------------------------------------------------------
TYPES = sorted(
    set(DEFINITION.type_stage) | DEFINITION.purchase_types | DEFINITION.renewal_types | DEFINITION.advocacy_types
    | DEFINITION.negative_types | {DEFINITION.review_type, "identify", "wishlist_add", "x1_y2"}
)
EPOCH_MIN = datetime(1900, 1, 2, tzinfo=UTC)
EPOCH_MAX = datetime(2199, 12, 30, tzinfo=UTC)


@st.composite
def timestamps(draw: st.DrawFn) -> str:
    """RFC 3339 times in the schema's years, in every shape it allows (offsets, t/z, 0-9 fraction digits)."""
    moment = draw(st.datetimes(min_value=EPOCH_MIN.replace(tzinfo=None), max_value=EPOCH_MAX.replace(tzinfo=None)))
    minutes = draw(st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59))
    local = moment + timedelta(minutes=minutes)
    text = local.strftime("%Y-%m-%d") + draw(st.sampled_from("Tt")) + local.strftime("%H:%M:%S")
    digits = draw(st.integers(min_value=0, max_value=9))
    if digits:
        text += "." + draw(st.text(alphabet=string.digits, min_size=digits, max_size=digits))
    if minutes == 0 and draw(st.booleans()):
        return text + draw(st.sampled_from("Zz"))
    sign = "+" if minutes >= 0 else "-"
    return text + f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


ids = st.text(min_size=1, max_size=12) | st.sampled_from(["c1", "c2", "a\x00b", "ü😀", " ", "x" * 200])
amounts = st.floats(min_value=-MAX_AMOUNT, max_value=MAX_AMOUNT, allow_nan=False) | st.integers(-10**12, 10**12)


@st.composite
def valid_properties(draw: st.DrawFn) -> dict[str, Any] | None:
    props: dict[str, Any] = draw(st.dictionaries(st.text(max_size=8).filter(lambda k: k not in PROPERTY_RULES), json_values, max_size=3))
    for name, strategy in PROPERTY_RULES.items():
        if draw(st.booleans()):
            props[name] = draw(strategy)
    return props if props or draw(st.booleans()) else draw(st.sampled_from([None, {}]))


PROPERTY_RULES: dict[str, st.SearchStrategy[Any]] = {
    "order_id": ids | st.integers(-(2**63), 2**63 - 1) | st.sampled_from([4.0, -0.0]),
    "cart_id": ids | st.integers(0, 10),
    "amount": amounts,
    "currency": st.sampled_from(["EUR", "USD", "JPY"]),
    "rating": st.integers(1, 5) | st.sampled_from([1.0, 5.0]),
}


@st.composite
def valid_touchpoints(draw: st.DrawFn, customers: st.SearchStrategy[str] = ids, event_ids: st.SearchStrategy[str] = ids) -> dict[str, Any]:
    data: dict[str, Any] = {"event_id": draw(event_ids), "type": draw(st.sampled_from(TYPES)), "timestamp": draw(timestamps())}
    who = draw(st.sampled_from(["customer", "anonymous", "both"]))
    if who != "anonymous":
        data["customer_id"] = draw(customers)
    if who != "customer":
        data["anonymous_id"] = draw(customers)
    channel = draw(st.sampled_from([*sorted(CHANNELS), None, "<absent>"]))
    if channel != "<absent>":
        data["channel"] = channel
    properties = draw(valid_properties())
    if properties is not None or draw(st.booleans()):
        data["properties"] = properties
    if draw(st.booleans()):
        data.update(draw(st.dictionaries(st.sampled_from(["extra", "context", "version"]), json_values, max_size=2)))
    return data


#: A value for one field that is sometimes right, sometimes wrong in every way the schema has.
near_values: dict[str, st.SearchStrategy[Any]] = {
    "event_id": ids | json_values | st.sampled_from(["", "x" * 201]),
    "customer_id": ids | json_values | st.sampled_from(["", "x" * 201, None]),
    "anonymous_id": ids | json_values | st.sampled_from(["", None]),
    "type": st.sampled_from(TYPES) | st.from_regex(r"[a-z_0-9A-Z\-]{0,12}", fullmatch=True) | json_values,
    "timestamp": timestamps() | st.text(max_size=30) | json_values
    | st.sampled_from(["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "2024-02-30T00:00:00Z", "2024-05-01T12:00:00"]),
    "channel": st.sampled_from([*sorted(CHANNELS), None, "fax", "EMAIL"]) | json_values,
    "properties": valid_properties() | json_values
    | st.dictionaries(st.sampled_from(sorted(PROPERTY_RULES)), json_values | amounts | st.sampled_from(["5", 1e308, -1e308, 0, 6]), max_size=3),
}


@st.composite
def near_touchpoints(draw: st.DrawFn) -> dict[str, Any]:
    """A valid touchpoint with one to three fields replaced or removed."""
    data = draw(valid_touchpoints())
    for name in draw(st.lists(st.sampled_from(sorted(near_values)), min_size=1, max_size=3)):
        if draw(st.integers(0, 4)) == 0:
            data.pop(name, None)
        else:
            data[name] = draw(near_values[name])
    return data


def _check_decoded(raw: bytes) -> Touchpoint | None:
    try:
        tp = decode(raw)
    except InvalidTouchpoint as exc:
        assert exc.reason in REASONS and exc.error
        return None
    assert type(tp) is Touchpoint and tp.profile_id in (tp.customer_id, tp.anonymous_id)
    return tp


# --- decode ------------------------------------------------------------------------------------
@FAST
@given(st.binary(max_size=200))
def test_decode_of_any_bytes_is_a_touchpoint_or_invalid(raw: bytes) -> None:
    _check_decoded(raw)


@FAST
@given(json_values | near_touchpoints())
def test_decode_of_any_json_value_is_a_touchpoint_or_invalid(value: Any) -> None:
    _check_decoded(orjson.dumps(value))


@FAST
@given(near_touchpoints(), st.data())
def test_decode_of_mangled_json_is_a_touchpoint_or_invalid(value: dict[str, Any], data: st.DataObject) -> None:
    raw = bytearray(orjson.dumps(value))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw)))
        patch = data.draw(st.binary(min_size=0, max_size=4) | st.sampled_from([b"NaN", b"-Infinity", b"1e999", b"\\u0000", b'"', b"\xff", b"{", b"]"]))
        cut = data.draw(st.integers(0, 3))
        raw[at:at + cut] = patch
    _check_decoded(bytes(raw))


@FAST
@given(python_values | near_touchpoints(), st.sampled_from(sorted(near_values)), st.integers(0, 1100))
def test_validate_of_any_python_value_is_a_touchpoint_or_invalid(value: Any, field: str, depth: int) -> None:
    """validate() is public: NaN, infinities, big integers and deep nesting anywhere must not escape either."""
    try:
        validate(value)
    except InvalidTouchpoint:
        pass
    if isinstance(value, dict):
        try:
            validate({**value, field: nested(depth, value.get(field))})
        except InvalidTouchpoint:
            pass


# --- the validator and the schema --------------------------------------------------------------
def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    """JSON Schema's "pattern" is an ECMA-262 regex, whose $ matches only at the very end; Python's
    re lets it match before a final newline too (so jsonschema would pass "EUR\\n")."""
    if isinstance(instance, str) and not re.search(pattern.replace("$", r"\Z"), instance):
        from jsonschema.exceptions import ValidationError

        yield ValidationError(f"{instance!r} does not match {pattern!r}")


SCHEMA = json.loads((ROOT / "schemas" / "touchpoint.schema.json").read_text())
assert "\\$" not in json.dumps(SCHEMA), "_ecma_pattern assumes no escaped $ in the schema's patterns"
_Validator = validators.extend(Draft202012Validator, {"pattern": _ecma_pattern})
SCHEMA_VALIDATOR = _Validator(SCHEMA, format_checker=FormatChecker())


@SLOW
@given(near_touchpoints() | valid_touchpoints())
def test_the_validator_agrees_with_the_json_schema(value: dict[str, Any]) -> None:
    schema_ok = SCHEMA_VALIDATOR.is_valid(value)
    try:
        validate(value)
        ours_ok = True
    except InvalidTouchpoint:
        ours_ok = False
    assert schema_ok == ours_ok, value


# --- apply -------------------------------------------------------------------------------------
def _roundtrips(state: CustomerState) -> None:
    wire = state.to_wire()
    assert CustomerState.from_wire(wire).to_wire() == wire


@SLOW
@given(st.lists(valid_touchpoints(customers=st.just("c"), event_ids=st.sampled_from([f"e{i}" for i in range(40)])), min_size=1, max_size=60))
def test_valid_touchpoints_apply_and_the_state_roundtrips(events: list[dict[str, Any]]) -> None:
    state: CustomerState | None = None
    for data in events:
        tp = decode(orjson.dumps(data))  # the strategy makes only valid ones
        outcome = apply(state, tp, DEFINITION, LIMITS)
        state = outcome.state
        _roundtrips(state)
        orjson.dumps(state.to_public())
        if outcome.transition is not None:
            orjson.dumps(outcome.transition.to_event())
        # what the changelog holds is what the next event meets
        state = CustomerState.from_wire(state.to_wire()) if len(events) % 2 else state


# --- the pipeline ------------------------------------------------------------------------------
utf8_keys = st.none() | st.sampled_from([b"c1", b"c2", b"a1", b"a\x00b", "ü".encode()]) | st.text(max_size=6).map(str.encode)
keys = utf8_keys | st.binary(max_size=12) | st.just(b"\xff\xfe")
#: Epoch seconds in the touchpoint schema's years (1900-2199).
sane_times = st.floats(min_value=-2_208_988_800.0, max_value=7_289_567_999.0)


@st.composite
def wire_states(draw: st.DrawFn) -> Any:
    """The state of a merge request: none, a real one (as the worker writes it), or one from_wire refuses."""
    kind = draw(st.sampled_from(["none", "real", "refused"]))
    if kind == "none":
        return None
    if kind == "refused":
        return draw(json_scalars | st.just({"v": 1}) | st.just({"v": 9}) | st.lists(st.integers(4, 9), min_size=1, max_size=3))
    state = None
    for data in draw(st.lists(valid_touchpoints(customers=st.just("a1")), min_size=1, max_size=4)):
        state = apply(state, validate(data), DEFINITION, LIMITS).state
    return orjson.loads(state.to_wire())  # type: ignore[union-attr]


requests = st.fixed_dictionaries(
    {"anonymous_id": st.sampled_from(["a1", "a2", "c1", ""]), "customer_id": st.sampled_from(["c1", "c2", "a1"]),
     "at": sane_times | st.integers(0, 2**31) | st.sampled_from(["1", None]), "trigger_event_id": st.sampled_from(["e1", "e2"])},
    optional={"state": wire_states()},
)
touchpoint_values = (
    st.none() | st.binary(max_size=40)
    | st.builds(orjson.dumps, valid_touchpoints(customers=st.sampled_from(["c1", "c2", "a1", "a2"])))
    | st.builds(orjson.dumps, near_touchpoints() | json_values)
)


@st.composite
def records(draw: st.DrawFn) -> list[Record]:
    """Touchpoints under any key, and forged identity requests (a record with journey's control
    header, which any producer can write). Left out: the forged records that crash the pipeline
    today (KNOWN_CRASHES below, each its own test). Most forged records carry a valid signature
    (as if the producer knew the deployment's key), so the checks behind it are fuzzed too."""
    out = []
    for offset in range(draw(st.integers(1, 12))):
        control = draw(st.sampled_from([None, None, None, LINK, MERGE, ALIASED, b"other"]))
        if control in (LINK, MERGE):
            key, value = draw(keys), draw(st.builds(orjson.dumps, requests) | touchpoint_values)
        elif control == ALIASED:
            key, value = draw(keys), draw(touchpoint_values | st.builds(orjson.dumps, requests))
        else:
            key, value = draw(keys), draw(touchpoint_values | st.builds(orjson.dumps, requests))
        signature = None
        if control is not None and key is not None and value is not None and draw(st.integers(0, 4)):
            signature = sign(KEY, control, key, value)
        out.append(Record(key, value, "touchpoints", draw(st.integers(0, 3)), offset, None, control, signature))
    return out


def _check_result(result: BatchResult) -> None:
    for key, (_rec, state, _before) in result.writes.items():
        assert isinstance(key, str)
        _roundtrips(state)
    for transition in result.transitions:
        orjson.dumps(transition.to_event())
    for output in result.dead_letters:
        assert orjson.loads(output.value)["reason"]


@settings(SLOW, max_examples=50)
@given(st.lists(records(), min_size=1, max_size=4), st.booleans())
def test_the_pipeline_never_raises_for_any_records(batches: list[list[Record]], copy_reads: bool) -> None:
    pipeline = Pipeline(DEFINITION, LIMITS, copy_reads=copy_reads, identity=IdentityRules())
    states: dict[str, CustomerState] = {}
    for batch in batches:
        pending, rounds = batch, 0
        while pending and rounds < 6:  # what it re-publishes to the input topic comes back to it
            rounds += 1
            result = pipeline.process(pending, states)
            _check_result(result)
            for key, (_rec, state, _before) in result.writes.items():
                states[key] = CustomerState.from_wire(state.to_wire())
            pending = [
                Record(o.key, o.value, "touchpoints", 0, i, None, *(control_headers(o.headers) if o.headers else (None, None)))
                for i, o in enumerate(result.rekeyed)
            ]


def _request(**fields: Any) -> bytes:
    return orjson.dumps({"anonymous_id": "a1", "customer_id": "c1", "at": 1.7e9, "trigger_event_id": "e1", **fields})


_EMPTY_WIRE = orjson.loads(CustomerState().to_wire())
#: Forged records (journey's control header, on the input topic) that made Pipeline.process raise
#: (the batch failed, the worker exited to replay it and met the same record after every restart),
#: found by the property above: each must now be a bad_identity_request dead letter, unsigned or signed.
KNOWN_CRASHES = {
    "aliased, key not UTF-8": Record(b"\xff", orjson.dumps(
        {"event_id": "e", "customer_id": "c1", "type": "page_view", "timestamp": "2024-01-01T00:00:00Z"}), "tp", 0, 0, None, ALIASED),
    "link, at out of datetime's range": Record(b"a1", _request(at=1e300), "tp", 0, 0, None, LINK),
    "merge, state of wrong types": Record(b"c1", _request(state=[ENCODING_VERSION, "x", 5] + [{}] * (len(_EMPTY_WIRE) - 3)),
                                          "tp", 0, 0, None, MERGE),
    "merge, state of nulls": Record(b"c1", _request(state=[ENCODING_VERSION] + [None] * (len(_EMPTY_WIRE) - 1)), "tp", 0, 0, None, MERGE),
    "merge, stage out of range": Record(b"c1", _request(state=[ENCODING_VERSION, 99, *_EMPTY_WIRE[2:]]), "tp", 0, 0, None, MERGE),
    "merge, version 3 state of nulls": Record(b"c1", _request(state=[3] + [None] * 26), "tp", 0, 0, None, MERGE),
    # Merged into the customer's state, then failed the aggregates (unhashable) after the outputs went.
    "merge, a channel that is not a string": Record(b"c1", _request(state=[*_EMPTY_WIRE[:5], ["x"], *_EMPTY_WIRE[6:]]), "tp", 0, 0,
                                                    None, MERGE),
    # A count at 64 bits: the customer's next touchpoint would make it one no encoding can write.
    "merge, a count at 64 bits": Record(b"c1", _request(state=[*_EMPTY_WIRE[:3], 2**64 - 1, *_EMPTY_WIRE[4:]]), "tp", 0, 0, None, MERGE),
}


def _signed(rec: Record) -> Record:
    """``rec`` (a control record) with this deployment's signature."""
    control = control_headers(rec.headers)[0]
    return Record(rec.key, rec.value, rec.topic, rec.partition, rec.offset, None, control,
                  sign(KEY, control, rec.key, rec.value))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(KNOWN_CRASHES))
def test_forged_control_records_are_dead_lettered(name: str) -> None:
    forged = KNOWN_CRASHES[name]
    assert Pipeline(DEFINITION, LIMITS).process([forged], {}).reasons == ["bad_identity_request"]  # unsigned
    result = Pipeline(DEFINITION, LIMITS).process([_signed(forged)], {})  # signed: the checks behind the signature
    assert result.reasons == ["bad_identity_request"] and not result.writes


def test_a_state_from_a_newer_journey_stops_the_batch_rather_than_being_dead_lettered() -> None:
    """Met during a rolling upgrade (a newer worker wrote it): the batch fails, the worker exits
    without committing, and a newer worker reads the record again. A dead letter would lose it."""
    newer = [ENCODING_VERSION + 1, *_EMPTY_WIRE[1:]]
    merge = _signed(Record(b"c1", _request(state=newer), "tp", 0, 0, None, MERGE))
    with pytest.raises(NewerEncoding, match=f"encoding {ENCODING_VERSION + 1} "):
        Pipeline(DEFINITION, LIMITS).process([merge], {})
    link = _signed(Record(b"a1", _request(), "tp", 0, 0, None, LINK))

    def stored(_key: str, _partition: int) -> CustomerState:  # the anonymous id's state, as a newer worker wrote it
        return CustomerState.from_wire(orjson.dumps(newer))

    with pytest.raises(NewerEncoding):
        Pipeline(DEFINITION, LIMITS).process([link], read=stored)
    # A state of a known version but the wrong shape is the record's fault: a dead letter, as before.
    assert Pipeline(DEFINITION, LIMITS).process([_signed(KNOWN_CRASHES["merge, state of nulls"])], {}).reasons == ["bad_identity_request"]


@pytest.mark.parametrize("depth", [10, 500, 1000, 1023])
def test_deep_nesting_anywhere_is_decoded_or_invalid(depth: int) -> None:
    """Explicit depths (hypothesis rarely builds deep values): orjson reads up to 1024 levels."""
    good = {"event_id": "e", "customer_id": "c", "type": "page_view", "timestamp": "2024-01-01T00:00:00Z"}
    for field in [*near_values, "extra"]:
        _check_decoded(_dumps_deep({**good, field: "\x00DEEP"}, depth))
    _check_decoded(_dumps_deep({**good, "properties": {"amount": "\x00DEEP"}}, depth))
    _check_decoded(_dumps_deep("\x00DEEP", depth))


def _dumps_deep(template: Any, depth: int) -> bytes:
    """orjson.dumps(template) with the string "\\x00DEEP" replaced by ``depth`` nested levels (orjson
    writes at most 255 levels itself)."""
    inner = b"[" * depth + b"0" + b"]" * depth
    return orjson.dumps(template).replace(b'"\\u0000DEEP"', inner)
