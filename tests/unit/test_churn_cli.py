"""`journey churn fit` and `journey churn score`: the worker's code over a file."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from journey.churn import bgnbd
from journey.churn.offline import parse_as_of
from journey.churn.risk import load_model
from journey.cli import main

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data/cdnow/CDNOW_sample.txt"


def run(capsys, *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_fit_then_score_cdnow_sample(tmp_path, capsys):
    params = tmp_path / "params.json"
    out = run(capsys, "churn", "fit", str(SAMPLE), "--format", "cdnow", "--until", "1997-09-30", "--out", str(params))
    assert "2357 customers" in out and f"wrote {params}" in out
    model = load_model(params)
    assert model.calibration is not None and model.params.fitted_on["until"] == "1997-09-30"
    p = model.params.params
    assert (p.r, p.alpha, p.a, p.b) == pytest.approx((0.243, 4.414, 0.793, 2.426), rel=0.01)

    text = run(capsys, "churn", "score", str(SAMPLE), "--format", "cdnow", "--as-of", "1997-09-30", "--params", str(params))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 2357  # every customer of the calibration period
    assert set(rows[0]) == {"customer_id", "score", "level", "reasons"}
    assert {r["level"] for r in rows} <= {"low", "medium", "high"}
    assert all(0.0 <= float(r["score"]) <= 1.0 and r["reasons"] for r in rows)
    # A later date gives every customer at least the same risk (no new purchases in between).
    later = {r["customer_id"]: float(r["score"]) for r in csv.DictReader(io.StringIO(
        run(capsys, "churn", "score", str(SAMPLE), "--format", "cdnow", "--as-of", "1997-10-01", "--params", str(params))))}
    bought_on_oct_1 = {line.split()[0].lstrip("0") for line in SAMPLE.read_text().splitlines() if line.split()[2] == "19971001"}
    for r in rows:
        if r["customer_id"] not in bought_on_oct_1:
            assert later[r["customer_id"]] >= float(r["score"]) - 1e-9


def test_score_jsonl_with_cart_abandonment_and_a_plain_params_file(tmp_path, capsys):
    params = tmp_path / "plain.json"
    bgnbd.save_params(params, bgnbd.ChurnParams(bgnbd.BGNBDParams(0.243, 4.414, 0.793, 2.426), 7.0))
    events = [
        {"event_id": "1", "customer_id": "a", "type": "product_view", "timestamp": "2024-01-01T10:00:00+00:00", "channel": "search"},
        {"event_id": "2", "customer_id": "a", "type": "add_to_cart", "timestamp": "2024-01-01T10:05:00+00:00", "channel": "direct", "properties": {"cart_id": "k"}},
        {"event_id": "3", "customer_id": "b", "type": "add_to_cart", "timestamp": "2024-01-01T10:00:00+00:00", "channel": "direct"},
        {"event_id": "4", "customer_id": "b", "type": "purchase", "timestamp": "2024-01-01T12:00:00+00:00", "channel": "direct", "properties": {"order_id": "o", "amount": 5}},
        {"event_id": "5", "customer_id": "c", "type": "purchase", "timestamp": "2024-02-01T12:00:00+00:00", "channel": "direct"},
    ]
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in events) + "\n{broken\n")
    assert main(["churn", "score", str(path), "--format", "jsonl", "--as-of", "2024-01-03", "--params", str(params)]) == 0
    captured = capsys.readouterr()
    text = captured.out
    assert "skipped 1 invalid touchpoints" in captured.err
    rows = {r["customer_id"]: r for r in csv.DictReader(io.StringIO(text))}
    assert set(rows) == {"a", "b"}  # c has no event by then
    assert "cart abandoned" in rows["a"]["reasons"] and "silent" in rows["a"]["reasons"]
    assert "cart abandoned" not in rows["b"]["reasons"]


def test_as_of_accepts_a_day_or_a_time():
    assert parse_as_of("1997-09-30") == pytest.approx(parse_as_of("1997-10-01T00:00:00+00:00"), abs=0.01)
    assert parse_as_of("1997-09-30T12:00:00+00:00") < parse_as_of("1997-09-30")
    with pytest.raises(ValueError, match="UTC offset"):
        parse_as_of("1997-09-30T12:00:00")
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        parse_as_of("30/09/1997")
