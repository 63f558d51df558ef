"""The hostile-input corpus: malformed and hostile records any producer could write to the input
topic, each with the outcome journey promises for it.

Every record either lands on the dead-letter topic with its reason, or is applied as the table
says; nothing else (no crash, no restart, no effect on other customers' journeys). The same
cases run in-process through the pipeline (tests/unit/test_hostile_corpus.py) and through a real
worker on the broker (tests/integration/test_hostile_input.py).

======================================  =========================================================
kind                                    outcome
======================================  =========================================================
not UTF-8 (Latin-1, CESU surrogates)    dead letter ``not_utf8`` (the value kept as base64)
not JSON (text, truncated, trailing     dead letter ``not_json``
garbage, empty, a UTF-8 BOM, an
escaped lone surrogate)
JSON that is not an object (array,      dead letter ``not_object``
string, number, ``null``)
NaN, Infinity, -Infinity, 1e999         dead letter ``not_json``: not JSON numbers (orjson refuses
                                        them, and 1e999 overflows to infinity)
duplicate JSON keys                     applied; the last occurrence wins (as in orjson, Python's
                                        json and JavaScript's JSON.parse). A duplicate
                                        customer_id whose last value is not the record's key is
                                        re-keyed to that last value like any other key mismatch
1,000-deep nesting                      in properties: applied (properties are free-form and never
                                        kept); as the whole value: ``not_object``; as a field the
                                        schema types: ``schema_violation``; 1,025 deep (past
                                        orjson's limit of 1,024): ``not_json``
a 5 MB value                            a valid touchpoint with a 5 MB property: applied (the
                                        property is not kept); a 5 MB event id:
                                        ``schema_violation``, the dead letter carrying the whole
                                        value (so the dead-letter topic must accept what the
                                        input topic does; the test broker has no size limit, a
                                        Kafka broker's message.max.bytes must be raised for both)
20,000 properties                       applied
ids with NUL bytes                      applied: ids are opaque strings, kept and keyed exactly
                                        (the Kafka key holds the NUL too)
10,000-character ids (customer,         ``schema_violation`` (ids are 1 to 200 characters)
anonymous, event)
far-future / far-past timestamps        outside the years 1900-2199: ``schema_violation``; at the
                                        edges (1900-01-01, 2199-12-31): applied at that time (the
                                        churn event clock ignores times over an hour ahead of the
                                        wall clock, so one cannot age everyone else)
negative amounts                        applied: a negative line is a correction and lowers the
                                        revenue; a negative line of a new order is still an order
1e308 (and any amount over 1e12)        ``schema_violation`` (amounts are bounded to +-1e12, so
                                        no sum of lines overflows)
a rating of "5"                         ``schema_violation`` (a rating is an integer 1-5)
a key that disagrees with the body      re-published under the body's id (no key, or another
(another id, or no key)                 customer's key) and applied there, once; nothing happens
                                        under the key's id
a forged journey-control header         dead letter ``bad_identity_request`` (journey's identity
(not JSON, a request under the wrong    requests and aliased touchpoints travel on the input topic
key, an aliased touchpoint with no      with this header; see tests/unit/test_fuzz.py for forged
key, an unknown value)                  ones that still crash the pipeline)
a tombstone (null value)                dead letter ``empty_value`` (value null)
the same event id with a different      the first one applied; the later one dropped as a
body                                    duplicate delivery (counted in
                                        journey_duplicate_touchpoints_total): event ids are
                                        unique per event, the body is not compared
======================================  =========================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from journey.core.identity import ALIASED, CONTROL_HEADER, LINK, MERGE

#: The time the cases' good events happen at (any time inside the schema's years would do).
T = "2024-06-01T09:00:00+00:00"

BIG = 5 * 1024 * 1024
WIDE = 20_000
DEEP = 1_000


@dataclass(frozen=True)
class Sent:
    """One record the producer writes, and the dead-letter reason it must get (None: not dead-lettered)."""

    key: bytes | None
    value: bytes | None
    dead_letter: str | None = None
    #: The journey-control header's value (journey's own identity records carry one; anyone can forge it).
    control: bytes | None = None

    @property
    def headers(self) -> list[tuple[str, bytes]] | None:
        return [(CONTROL_HEADER, self.control)] if self.control is not None else None


@dataclass(frozen=True)
class Case:
    kind: str
    #: What must happen, in words (the table above).
    outcome: str
    records: tuple[Sent, ...]
    #: The transitions the case makes: customer id -> [(from stage, to stage, trigger event id)].
    transitions: dict[str, list[tuple[str | None, str, str]]] = field(default_factory=dict)
    #: Records dropped as duplicate deliveries.
    duplicates: int = 0
    #: Records re-published under their body's id (a key mismatch).
    rekeyed: int = 0
    #: customer id -> fields their customer view (CustomerState.to_public()) must hold.
    views: dict[str, dict[str, Any]] = field(default_factory=dict)


def _tp(event_id: str, customer: str, etype: str = "page_view", ts: str = T, **extra: Any) -> dict[str, Any]:
    return {"event_id": event_id, "customer_id": customer, "type": etype, "timestamp": ts, **extra}


def _keyed(event: dict[str, Any]) -> Sent:
    return Sent(event["customer_id"].encode(), orjson.dumps(event))


def _deep(depth: int) -> bytes:
    """``depth`` nested JSON arrays (orjson writes at most 255 levels, so built as text)."""
    return b"[" * depth + b"0" + b"]" * depth


def _with_raw(event: dict[str, Any], field_path: tuple[str, ...], raw: bytes) -> bytes:
    """``event`` as JSON with the value at ``field_path`` replaced by the JSON text ``raw``."""
    marker = "\x00RAW"
    target = event
    for name in field_path[:-1]:
        target = target[name]
    target[field_path[-1]] = marker
    return orjson.dumps(event).replace(orjson.dumps(marker), raw)


def corpus(prefix: str) -> list[Case]:
    """Every case, with ids starting with ``prefix`` (unique per run)."""
    p = prefix
    dead = "dead-lettered"
    cases = [
        Case("not UTF-8", f"{dead}: not_utf8", (
            Sent(f"{p}u1".encode(), b"\xff\xfe{\"event_id\": \"x\"}", "not_utf8"),
            Sent(f"{p}u1".encode(), _tp_bytes(p, "u1").replace(b"page_view", b"caf\xe9"), "not_utf8"),
            Sent(f"{p}u1".encode(), b'{"event_id": "\xed\xa0\x80"}', "not_utf8"),  # a surrogate, CESU-8 style
        )),
        Case("not JSON", f"{dead}: not_json", (
            Sent(f"{p}j1".encode(), b"{this is not json", "not_json"),
            Sent(f"{p}j1".encode(), _tp_bytes(p, "j1")[:-7], "not_json"),
            Sent(f"{p}j1".encode(), _tp_bytes(p, "j1") + b" trailing", "not_json"),
            Sent(f"{p}j1".encode(), b"", "not_json"),
            Sent(f"{p}j1".encode(), b"\xef\xbb\xbf" + _tp_bytes(p, "j1"), "not_json"),
            Sent(f"{p}j1".encode(), _tp_bytes(p, "j1").replace(b'"page_view"', b'"page_view\\ud800"'), "not_json"),
        )),
        Case("JSON that is not an object", f"{dead}: not_object", (
            Sent(f"{p}o1".encode(), b"[" + _tp_bytes(p, "o1") + b"]", "not_object"),
            Sent(f"{p}o1".encode(), b'"a string"', "not_object"),
            Sent(f"{p}o1".encode(), b"42", "not_object"),
            Sent(f"{p}o1".encode(), b"null", "not_object"),
        )),
        Case("NaN and Infinity", f"{dead}: not_json", tuple(
            Sent(f"{p}n1".encode(), _with_raw(_tp(f"{p}n1-e", f"{p}n1", "purchase", properties={"amount": 0}), ("properties", "amount"), raw), "not_json")
            for raw in (b"NaN", b"Infinity", b"-Infinity", b"1e999")
        )),
        Case("duplicate JSON keys", "applied, the last occurrence wins; a duplicate customer_id is re-keyed to its last value", (
            Sent(f"{p}dk".encode(), _tp_bytes(p, "dk").replace(b'"type":"page_view"', b'"type":"page_view","type":"add_to_cart"')),
            Sent(f"{p}dk-first".encode(), _tp_bytes(p, "dk-first", event_id=f"{p}dk-2").replace(
                f'"customer_id":"{p}dk-first"'.encode(), f'"customer_id":"{p}dk-first","customer_id":"{p}dk-last"'.encode())),
        ), transitions={f"{p}dk": [(None, "decision", f"{p}dk-e")], f"{p}dk-last": [(None, "awareness", f"{p}dk-2")]}, rekeyed=1),
        Case("1,000-deep nesting", "applied in properties; not_object as the value; schema_violation in a typed field; not_json past 1,024", (
            Sent(f"{p}deep".encode(), _with_raw(_tp(f"{p}deep-e", f"{p}deep", properties={"tree": 0}), ("properties", "tree"), _deep(DEEP))),
            Sent(f"{p}deep".encode(), _deep(DEEP), "not_object"),
            Sent(f"{p}deep".encode(), _with_raw(_tp("x", f"{p}deep"), ("event_id",), _deep(DEEP)), "schema_violation"),
            Sent(f"{p}deep".encode(), _with_raw(_tp(f"{p}deep-a", f"{p}deep", "purchase", properties={"amount": 0}), ("properties", "amount"), _deep(DEEP)), "schema_violation"),
            Sent(f"{p}deep".encode(), _with_raw(_tp(f"{p}deep-f", f"{p}deep", properties={"tree": 0}), ("properties", "tree"), _deep(1025)), "not_json"),
        ), transitions={f"{p}deep": [(None, "awareness", f"{p}deep-e")]}),
        Case("a 5 MB value", "applied when valid (the property is not kept); schema_violation for a 5 MB event id, the dead letter holding it all", (
            _keyed(_tp(f"{p}big-e", f"{p}big", "add_to_cart", properties={"blob": "x" * BIG})),
            Sent(f"{p}big".encode(), orjson.dumps(_tp("y" * BIG, f"{p}big")), "schema_violation"),
        ), transitions={f"{p}big": [(None, "decision", f"{p}big-e")]}),
        Case("20,000 properties", "applied", (
            _keyed(_tp(f"{p}wide-e", f"{p}wide", "product_view", properties={f"k{i}": i for i in range(WIDE)})),
        ), transitions={f"{p}wide": [(None, "consideration", f"{p}wide-e")]}),
        Case("ids with NUL bytes", "applied under the exact id", (
            _keyed(_tp(f"{p}nul-e", f"{p}nul\x00id")),
            _keyed(_tp(f"{p}nul\x00ev", f"{p}nul-ev", "product_view")),
        ), transitions={f"{p}nul\x00id": [(None, "awareness", f"{p}nul-e")], f"{p}nul-ev": [(None, "consideration", f"{p}nul\x00ev")]}),
        Case("10,000-character ids", f"{dead}: schema_violation", (
            Sent(f"{p}L{'c' * 9990}".encode()[:10_000], orjson.dumps(_tp(f"{p}long-e1", f"{p}L{'c' * 9990}"[:10_000])), "schema_violation"),
            Sent(f"{p}long".encode(), orjson.dumps(_tp("e" * 10_000, f"{p}long")), "schema_violation"),
            Sent(f"{p}L{'a' * 9990}".encode()[:10_000], orjson.dumps(
                {"event_id": f"{p}long-e3", "anonymous_id": f"{p}L{'a' * 9990}"[:10_000], "type": "page_view", "timestamp": T}), "schema_violation"),
        )),
        Case("far-future and far-past timestamps", "schema_violation outside 1900-2199; applied at the edges", (
            Sent(f"{p}time".encode(), orjson.dumps(_tp(f"{p}time-1", f"{p}time", ts="9999-12-31T23:59:59Z")), "schema_violation"),
            Sent(f"{p}time".encode(), orjson.dumps(_tp(f"{p}time-2", f"{p}time", ts="0001-01-01T00:00:00Z")), "schema_violation"),
            Sent(f"{p}time".encode(), orjson.dumps(_tp(f"{p}time-3", f"{p}time", ts="2200-01-01T00:00:00Z")), "schema_violation"),
            Sent(f"{p}time".encode(), orjson.dumps(_tp(f"{p}time-4", f"{p}time", ts="1899-12-31T23:59:59Z")), "schema_violation"),
            Sent(f"{p}time".encode(), orjson.dumps(_tp(f"{p}time-5", f"{p}time", ts="+20000-01-01T00:00:00Z")), "schema_violation"),
            _keyed(_tp(f"{p}future-e", f"{p}future", ts="2199-12-31T23:59:59Z")),
            _keyed(_tp(f"{p}past-e", f"{p}past", ts="1900-01-01T00:00:00Z")),
        ), transitions={f"{p}future": [(None, "awareness", f"{p}future-e")], f"{p}past": [(None, "awareness", f"{p}past-e")]},
            views={f"{p}future": {"first_seen": "2199-12-31T23:59:59+00:00"}, f"{p}past": {"first_seen": "1900-01-01T00:00:00+00:00"}}),
        Case("negative amounts", "applied: a correction lowers the revenue; a negative line of a new order is an order", (
            _keyed(_tp(f"{p}refund-e", f"{p}refund", "purchase", properties={"order_id": "r1", "amount": -25.5, "currency": "EUR"})),
            _keyed(_tp(f"{p}corr-1", f"{p}corr", "purchase", properties={"order_id": "c1", "amount": 100, "currency": "EUR"})),
            _keyed(_tp(f"{p}corr-2", f"{p}corr", "purchase", "2024-06-01T09:05:00+00:00",
                       properties={"order_id": "c1", "amount": -30, "currency": "EUR"})),
        ), transitions={f"{p}refund": [(None, "purchase", f"{p}refund-e")], f"{p}corr": [(None, "purchase", f"{p}corr-1")]},
            views={f"{p}refund": {"revenue": -25.5, "purchases": 1}, f"{p}corr": {"revenue": 70.0, "purchases": 1}}),
        Case("1e308 amounts", f"{dead}: schema_violation (amounts are bounded to +-1e12)", (
            Sent(f"{p}huge".encode(), orjson.dumps(_tp(f"{p}huge-1", f"{p}huge", "purchase", properties={"order_id": "h", "amount": 1e308})), "schema_violation"),
            Sent(f"{p}huge".encode(), orjson.dumps(_tp(f"{p}huge-2", f"{p}huge", "purchase", properties={"order_id": "h", "amount": -1e308})), "schema_violation"),
            Sent(f"{p}huge".encode(), orjson.dumps(_tp(f"{p}huge-3", f"{p}huge", "purchase", properties={"order_id": "h", "amount": 1e12 + 1})), "schema_violation"),
        )),
        Case('a rating of "5"', f"{dead}: schema_violation", (
            Sent(f"{p}rate".encode(), orjson.dumps(_tp(f"{p}rate-1", f"{p}rate", "review_submitted", properties={"rating": "5"})), "schema_violation"),
        )),
        Case("a key that disagrees with the body", "re-keyed to the body's id and applied there once", (
            Sent(f"{p}someone-else".encode(), orjson.dumps(_tp(f"{p}rk-e", f"{p}rekeyed", "product_view"))),
            Sent(None, orjson.dumps(_tp(f"{p}nk-e", f"{p}nokey", "add_to_cart"))),
        ), transitions={f"{p}rekeyed": [(None, "consideration", f"{p}rk-e")], f"{p}nokey": [(None, "decision", f"{p}nk-e")]}, rekeyed=2),
        Case("a forged journey-control header", f"{dead}: bad_identity_request", (
            Sent(f"{p}fg".encode(), b"{not json", "bad_identity_request", LINK),
            Sent(f"{p}fg-a".encode(), orjson.dumps({"anonymous_id": f"{p}fg-a", "customer_id": f"{p}fg", "at": 1.7e9,
                                                 "trigger_event_id": "e"}), "bad_identity_request", MERGE),  # wrong key
            Sent(None, _tp_bytes(p, "fg"), "bad_identity_request", ALIASED),  # an aliased touchpoint needs a key
            Sent(f"{p}fg".encode(), _tp_bytes(p, "fg"), "bad_identity_request", b"unknown"),
        )),
        Case("a tombstone", f"{dead}: empty_value", (Sent(f"{p}tomb".encode(), None, "empty_value"),)),
        Case("the same event id with a different body", "the first applied, the later one dropped as a duplicate", (
            _keyed(_tp(f"{p}dup-e", f"{p}dup", "page_view")),
            _keyed(_tp(f"{p}dup-e", f"{p}dup", "purchase", properties={"order_id": "d1", "amount": 99.0})),
        ), transitions={f"{p}dup": [(None, "awareness", f"{p}dup-e")]}, duplicates=1,
            views={f"{p}dup": {"touchpoints": 1, "purchases": 0, "revenue": 0.0}}),
    ]
    return cases


def _tp_bytes(p: str, who: str, *, event_id: str | None = None) -> bytes:
    return orjson.dumps(_tp(event_id or f"{p}{who}-e", f"{p}{who}"))
