"""Touchpoint decoding: reasons for bad input, and the hand-written checks agree with the JSON Schema."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator, FormatChecker

from journey.core.definition import DefinitionError, load_definition, parse_definition
from journey.core.events import InvalidTouchpoint, decode, validate

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "schemas" / "touchpoint.schema.json").read_text())
VALIDATOR = Draft202012Validator(SCHEMA, format_checker=FormatChecker())

GOOD: dict[str, Any] = {
    "event_id": "e-1",
    "customer_id": "c-1",
    "type": "add_to_cart",
    "timestamp": "2024-05-01T12:00:00+02:00",
    "channel": "search",
    "properties": {"cart_id": "k9", "amount": 12.5, "currency": "EUR"},
}


def test_a_good_touchpoint_decodes():
    tp = decode(orjson.dumps(GOOD))
    assert tp.profile_id == "c-1"
    assert tp.ts == 1714557600.0  # 10:00 UTC
    assert tp.channel == "search"


def test_channel_defaults_to_other_and_anonymous_visitors_are_keyed_by_their_id():
    data = {k: v for k, v in GOOD.items() if k not in ("channel", "customer_id")}
    data["anonymous_id"] = "anon-7"
    tp = validate(data)
    assert tp.channel == "other" and tp.profile_id == "anon-7"


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"{not json", "not_json"),
        (b"\xff\xfe{\"a\": 1}", "not_utf8"),
        (b"[1, 2]", "not_object"),
        (b'"text"', "not_object"),
    ],
)
def test_undecodable_values_have_a_reason(raw: bytes, reason: str):
    with pytest.raises(InvalidTouchpoint) as info:
        decode(raw)
    assert info.value.reason == reason


def test_errors_name_the_field_and_the_event():
    bad = dict(GOOD, timestamp="2024-05-01T12:00:00")
    with pytest.raises(InvalidTouchpoint) as info:
        validate(bad)
    assert info.value.reason == "schema_violation"
    assert "timestamp" in info.value.error and "e-1" in info.value.error and "offset" in info.value.error


def _mutations(rng: random.Random) -> list[dict[str, Any]]:
    """Valid and invalid variants of a touchpoint, near the edges of every rule."""
    fields = {
        "event_id": ["x", "", 5, None, "a" * 200, "a" * 201],
        "customer_id": ["c", "", None, 3, "ok"],
        "anonymous_id": ["a", "", None, 7],
        "type": ["purchase", "Purchase", "add-to-cart", "add__cart", "a1_b2", "_x", "x_", 9, "a" * 101],
        "timestamp": ["2024-05-01T12:00:00Z", "2024-05-01t12:00:00z", "2024-05-01 12:00:00.123+05:30", "2024-05-01T12:00:00.123+05:30",
                      "2024-05-01T12:00:00", "2024-13-01T12:00:00Z", "0001-01-01T00:00:00Z", "1899-12-31T23:59:59Z",
                      "2199-12-31T23:59:59+05:00", "2200-01-01T00:00:00Z", "1900-01-01T00:00:00-01:00", "2024-05-01", 1714557600, "yesterday"],
        "channel": ["email", "store", "fax", None, 3],
        "properties": [None, {}, [], "x", {"rating": 5}, {"rating": 0}, {"rating": 4.0}, {"rating": True},
                       {"order_id": 12}, {"order_id": 1.5}, {"order_id": None}, {"amount": "3"},
                       {"amount": 3}, {"amount": -2.5}, {"amount": 1e308}, {"amount": -1e12}, {"amount": 1e12 + 1},
                       {"currency": "eur"}, {"currency": "USD"}, {"cart_id": False},
                       {"extra": {"nested": 1}}],
    }
    out = []
    for _ in range(1500):
        data = copy.deepcopy(GOOD)
        for _ in range(rng.randint(1, 2)):
            field = rng.choice(list(fields))
            choice = rng.choice(fields[field] + ["<absent>"])
            if choice == "<absent>":
                data.pop(field, None)
            else:
                data[field] = choice
        out.append(data)
    return out


def test_hand_written_checks_agree_with_the_json_schema():
    rng = random.Random(11)
    disagreements = []
    for data in _mutations(rng):
        schema_ok = VALIDATOR.is_valid(data)
        try:
            validate(data)
            ours_ok = True
        except InvalidTouchpoint:
            ours_ok = False
        if schema_ok != ours_ok:
            disagreements.append((data, schema_ok, ours_ok))
    assert disagreements == []


def test_the_default_definition_loads_and_rejects_bad_edits(tmp_path: Path):
    d = load_definition(ROOT / "schemas" / "journey.yaml")
    assert d.type_stage["add_to_cart"] == 2
    with pytest.raises(DefinitionError, match="mapped to two stages"):
        parse_definition({"version": "v", "rules": {"awareness": ["a"], "decision": ["a"]}})
    with pytest.raises(DefinitionError, match="not 'purchase'"):
        parse_definition({"version": "v", "rules": {"purchase": ["buy"]}})
    with pytest.raises(DefinitionError, match="version"):
        parse_definition({"rules": {}})
    with pytest.raises(DefinitionError, match="does not exist"):
        load_definition(tmp_path / "missing.yaml")
