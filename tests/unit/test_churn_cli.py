"""`journey churn fit` and `journey churn score`: the worker's code over a file."""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import datetime
from itertools import pairwise
from pathlib import Path

import pytest

from journey.churn import bgnbd
from journey.churn.offline import parse_as_of
from journey.churn.risk import load_model
from journey.cli import main
from support import churn_reference as ref

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data/cdnow/CDNOW_sample.txt"
#: A params file in the format shipped before the learned layer (tests/unit/data/README.md).
PARAMS_V1 = Path(__file__).resolve().parent / "data/churn-params-v1.json"


def run(capsys, *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_fit_then_score_cdnow_sample(tmp_path, capsys):
    params = tmp_path / "params.json"
    out = run(capsys, "churn", "fit", str(SAMPLE), "--format", "cdnow", "--until", "1997-09-30", "--out", str(params))
    assert "2357 customers" in out and f"wrote {params}" in out
    model = load_model(params)
    assert model.learned is not None and model.params.fitted_on["until"] == "1997-09-30"
    p = model.params.params
    assert (p.r, p.alpha, p.a, p.b) == pytest.approx((0.243, 4.414, 0.793, 2.426), rel=0.01)
    # The out-of-time validation: printed, and kept in the params file.
    assert "out-of-time validation" in out and "selection:" in out and "calibration:" in out
    for name in ("plain BG/NBD", "recency alone", "shipped: "):
        assert name in out
    report = model.learned.fitted_on["validation"]
    assert len(report["cuts"]) >= 2 and all(c["cut"] < "1997-09-30" for c in report["cuts"])
    assert [r["model"] for r in report["table"]][:2] == ["bgnbd", "recency"] and report["table"][-1]["model"] == "shipped"
    for row in report["table"]:
        assert set(row) >= {"auc", "brier", "ece", "precision_top10"}
    assert report["selection"]["shipped"] in ("learned", "bgnbd") and report["selection"]["why"]

    text = run(capsys, "churn", "score", str(SAMPLE), "--format", "cdnow", "--as-of", "1997-09-30", "--params", str(params))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 2357  # every customer of the calibration period
    assert list(rows[0]) == ["customer_id", "score", "level", "reasons", "reason_codes"]
    assert {r["level"] for r in rows} <= {"low", "medium", "high"}
    assert all(0.0 <= float(r["score"]) <= 1.0 and r["reasons"] for r in rows)
    for r in rows[:50]:
        codes = json.loads(r["reason_codes"])
        assert {c["code"] for c in codes} >= {"no_purchase_days", "repeat_purchase_days"}
        assert all(set(c) == {"code", "value", "effect"} and isinstance(c["effect"], float) for c in codes)
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


# --- reference scores: the closed form of tests/support/churn_reference.py, not journey.churn -------
def _purchase(customer: str, when: str, order: str, amount: float) -> dict:
    return {"event_id": f"{customer}-{order}", "customer_id": customer, "type": "purchase", "timestamp": when,
            "channel": "direct", "properties": {"order_id": order, "amount": amount}}


SCRIPTED = [
    # one purchase day: x = 0, P(alive) = 1
    _purchase("once", "2024-03-01T12:00:00+00:00", "o1", 20.0),
    # four purchase days a fortnight apart (two orders on the last day), then silence
    *(_purchase("steady", f"2024-{m}T12:00:00+00:00", o, a) for m, o, a in
      [("01-05", "s1", 10.0), ("01-19", "s2", 30.0), ("02-02", "s3", 25.0), ("03-01", "s4", 5.0), ("03-01", "s5", 15.0)]),
    # bought yesterday and a month before
    _purchase("recent", "2024-06-01T12:00:00+00:00", "r1", 60.0),
    _purchase("recent", "2024-06-29T09:30:00+00:00", "r2", 40.0),
    # two purchases, then two complaints inside the signal window
    _purchase("unhappy", "2024-04-01T12:00:00+00:00", "u1", 12.0),
    _purchase("unhappy", "2024-05-01T12:00:00+00:00", "u2", 12.0),
    {"event_id": "u-c1", "customer_id": "unhappy", "type": "complaint", "timestamp": "2024-06-10T08:00:00+00:00", "channel": "support"},
    {"event_id": "u-c2", "customer_id": "unhappy", "type": "complaint", "timestamp": "2024-06-12T08:00:00+00:00", "channel": "support"},
    # a year since the last of three purchase days
    *(_purchase("lapsed", f"2023-{m}T18:00:00+00:00", f"l{i}", 8.0) for i, m in enumerate(["04-10", "05-10", "06-10"])),
    # never purchased: silence alone (10.5 days in consideration)
    {"event_id": "b1", "customer_id": "browser", "type": "product_view", "timestamp": "2024-06-20T00:00:00+00:00", "channel": "search"},
]
AS_OF = "2024-06-30T12:00:00+00:00"


def _score_file(tmp_path: Path, capsys, params: Path) -> dict[str, dict[str, str]]:
    path = tmp_path / "scripted.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in SCRIPTED) + "\n")
    text = run(capsys, "churn", "score", str(path), "--format", "jsonl", "--as-of", AS_OF, "--params", str(params))
    return {r["customer_id"]: r for r in csv.DictReader(io.StringIO(text))}


@pytest.mark.parametrize("params_file", ["plain", "v1"], ids=["bgnbd", "bgnbd+calibration (v1 file)"])
def test_scores_equal_the_closed_form_reference(tmp_path, capsys, params_file):
    # Params files without the learned layer score as they always did (hand-set signal weights).
    if params_file == "plain":
        path = tmp_path / "plain.json"
        bgnbd.save_params(path, bgnbd.ChurnParams(bgnbd.BGNBDParams(0.243, 4.414, 0.793, 2.426), 7.0))
        params = ref.Params(0.243, 4.414, 0.793, 2.426, 7.0)
    else:
        path = PARAMS_V1  # the default model as shipped before the learned layer, with its calibration
        params = ref.Params.from_file(path)
        assert params.intercept is not None
    rows = _score_file(tmp_path, capsys, path)
    customers = ref.customers_of(SCRIPTED)
    assert set(rows) == set(customers)
    at = datetime.fromisoformat(AS_OF).timestamp()
    expected = {c: ref.score(params, customers[c], at) for c in customers}
    got = {c: float(rows[c]["score"]) for c in customers}
    assert got == pytest.approx(expected, abs=2e-6)  # printed with 6 decimals
    assert {c: rows[c]["level"] for c in customers} == {c: ref.level(s) for c, s in expected.items()}
    # The script covers the model's cases: repeat and single buyers, both sides of a threshold, signals.
    assert expected["lapsed"] > expected["steady"] > expected["recent"]
    assert expected["unhappy"] > ref.score(params, ref.Customer(purchases=customers["unhappy"].purchases,
                                                                last_seen=customers["unhappy"].last_seen), at)
    assert len({ref.level(s) for s in expected.values()}) >= 2


# --- the learned layer, in closed form (written from docs/churn-model.md, not from journey.churn) ----
NEGATIVE_TYPES = {"complaint", "support_ticket", "refund", "return", "unsubscribe"}
STAGE_DAYS = {"awareness": 14.0, "consideration": 7.0, "decision": 3.0}


def learned_reference(params: dict, events: list[dict], customer: str, at: float) -> float:
    layer = params["learned"]
    day = 86400.0
    mine = sorted((e for e in events if e["customer_id"] == customer), key=lambda e: e["timestamp"])
    times = [datetime.fromisoformat(e["timestamp"]).timestamp() for e in mine]
    at = max([at, *times])
    purchases = [(t, e["properties"].get("order_id", e["event_id"]), float(e["properties"].get("amount", 0.0)))
                 for t, e in zip(times, mine, strict=True) if e["type"] == "purchase"]
    negatives = [(t, e["type"]) for t, e in zip(times, mine, strict=True)
                 if e["type"] in NEGATIVE_TYPES or (e["type"] == "review_submitted" and e["properties"].get("rating", 5) <= 2)]
    window = layer["signal_window_days"] * day
    recent = bool(negatives) and at - max(t for t, _ in negatives) < window
    f: dict[str, float] = {}
    for kind in layer["signals"]:
        n = sum(1 for _, k in negatives if k == kind)
        f[f"signal_count:{kind}"] = math.log1p(n)
        f[f"signal_recent:{kind}"] = 1.0 if n and recent else 0.0
    w = dict(zip(layer["features"], layer["weights"], strict=True))
    if not purchases:
        staged = [ref.STAGE_OF[e["type"]] for e in mine if e["type"] in ref.STAGE_OF]
        stage = max(staged, key=["awareness", "consideration", "decision"].index) if staged else "awareness"
        base = 0.9 * (1.0 - 2.0 ** (-(at - times[-1]) / (STAGE_DAYS[stage] * day)))
        odds = math.exp(sum(w[k] * v for k, v in f.items()))
        return odds * base / (1 - base + odds * base)
    days = sorted({math.floor(t / day) for t, _o, _a in purchases})
    x, span = len(days) - 1, days[-1] - days[0]
    t_days = max(math.floor(at / day) - days[0], span)
    unit = params["time_unit_days"]
    p = ref.p_no_purchase_within(ref.Params(params["r"], params["alpha"], params["a"], params["b"], unit),
                                 x, span / unit, t_days / unit, layer["horizon_days"] / unit)
    recency = t_days - span
    u = math.log1p(recency / 7.0)
    knots = layer["recency_knots"]
    for i, (lo, hi) in enumerate(pairwise(knots)):
        ramp = min(max((u - lo) / (hi - lo), 0.0), 1.0)
        f[f"recency_ramp_{i + 1}"] = ramp
        f[f"recency_once_ramp_{i + 1}"] = ramp if x == 0 else 0.0
    orders = {o for _t, o, _a in purchases}
    revenue = sum(a for _t, _o, a in purchases)
    stage = "retention" if len(orders) > 1 else "purchase"
    f.update({
        "bgnbd_log_odds": math.log(p / (1 - p)), "recency_tail": max(u - knots[-1], 0.0),
        "overdue": math.log1p(recency * x / span) if x else 0.0, "log1p_repeat_days": math.log1p(x),
        "one_time_buyer": 1.0 if x == 0 else 0.0, "log1p_purchase_span_weeks": math.log1p(span / 7.0),
        "log1p_mean_order_value": math.log1p(revenue / len(orders)), "log1p_revenue": math.log1p(revenue),
        "log_orders_per_purchase_day": math.log(len(orders) / len(days)),
        "log_touchpoints_per_order": math.log(max((len(mine) - len(negatives)) / len(orders), 1.0)),
    })
    for s in layer["stages"]:
        f[f"stage:{s}"] = 1.0 if s == stage else 0.0
    for c in layer["channels"]:
        f[f"channel:{c}"] = sum(1 for e in mine if e["channel"] == c) / len(mine)
    z = layer["intercept"] + sum(w[k] * f[k] for k in layer["features"])
    return 1.0 / (1.0 + math.exp(-z))


def test_shipped_learned_scores_equal_the_closed_form(tmp_path, capsys):
    path = REPO / "schemas/churn-params.json"  # the worker's default model: the learned layer
    params = json.loads(path.read_text())
    assert params["learned"]["method"] == "oot-logistic"
    rows = _score_file(tmp_path, capsys, path)
    at = datetime.fromisoformat(AS_OF).timestamp()
    expected = {c: learned_reference(params, SCRIPTED, c, at) for c in rows}
    got = {c: float(r["score"]) for c, r in rows.items()}
    assert got == pytest.approx(expected, abs=2e-6)  # printed with 6 decimals
    assert {c: r["level"] for c, r in rows.items()} == {c: ref.level(s) for c, s in expected.items()}
    assert expected["lapsed"] > expected["steady"] > expected["recent"]
    assert len({ref.level(s) for s in expected.values()}) >= 2
    # No effect for a signal the CDNOW history never had: the complaints change nothing.
    calm = [e for e in SCRIPTED if e["type"] != "complaint"]
    assert learned_reference(params, calm, "unhappy", at) == pytest.approx(expected["unhappy"], abs=1e-12)
    codes = json.loads(rows["unhappy"]["reason_codes"])
    assert {"code": "complaint_count", "value": 2, "effect": 0.0} in codes


def test_old_params_files_still_load_and_keep_their_model(tmp_path):
    old = load_model(PARAMS_V1)
    assert old.learned is None and old.calibration is not None and old.name == "bgnbd+backtest"
    assert old.version == json.loads(PARAMS_V1.read_text())["version"] + "+" + old.calibration.version


def test_a_horizon_other_than_the_fitted_one_is_said(capsys):
    """A learned score is the probability for the horizon it was fitted on: asking another one
    changes only a line of the reasons, so the command says so (the worker logs the same)."""
    shipped = REPO / "schemas/churn-params.json"
    model = load_model(shipped)
    assert model.fitted_horizon_days == 90.0 and model.horizon_mismatch(90.0) is None
    argv = ["churn", "score", str(SAMPLE), "--format", "cdnow", "--as-of", "1997-09-30", "--params", str(shipped)]
    assert main([*argv, "--horizon-days", "30"]) == 0
    err = capsys.readouterr().err
    assert "fitted for a 90-day horizon but 30 days were asked" in err and "--horizon-days 30" in err
    assert main(argv) == 0
    assert "horizon" not in capsys.readouterr().err


def test_a_horizon_longer_than_the_history_validates_is_anchored_to_it(tmp_path, capsys):
    """The sample's 39 weeks cannot validate 273 days at two cuts: the layer is fitted on shorter
    windows, and only the anchor makes its score the 273-day probability it is named as."""
    params = tmp_path / "params.json"
    out = run(capsys, "churn", "fit", str(SAMPLE), "--format", "cdnow", "--until", "1997-09-30", "--out", str(params),
              "--horizon-days", "273")
    report = load_model(params).learned.fitted_on["validation"]
    assert report["label_window_days"] < 273 and "too short" in report["note"]
    assert report["calibration"]["method"] == "anchor" and "to the 273-day level" in report["calibration"]["why"]
    assert "to the 273-day level" in out
