"""Churn risk: the BG/NBD score per customer, silence for non-purchasers, signals, levels,
reasons, the next level change, the backtest calibration and the params file."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from journey.churn import bgnbd
from journey.churn.calibration import (
    FEATURES,
    Calibration,
    CalibrationError,
    Order,
    features,
    features_batch,
    fit_calibration,
    roc_auc,
)
from journey.churn.risk import HIGH, LOW, MEDIUM, ChurnModel, RiskConfig, StageTimes, assess, load_model, save_model
from journey.churn.update import ChurnConfig, note_touchpoint, update
from journey.core.clock import DAY_S, iso, utc_day
from journey.core.definition import load_definition
from journey.core.events import validate
from journey.core.machine import apply
from journey.core.painpoints import PainPoint
from journey.core.stages import CONSIDERATION, DECISION
from journey.core.state import CustomerState

REPO = Path(__file__).resolve().parents[2]
DEFINITION = load_definition(REPO / "schemas/journey.yaml")
PARAMS = bgnbd.ChurnParams(bgnbd.BGNBDParams(0.243, 4.414, 0.793, 2.426), time_unit_days=7.0)
PLAIN = ChurnModel(PARAMS)
T0 = 852_076_800.0 + 12 * 3600  # 1997-01-01T12:00Z


def customer(events: list[tuple[str, float, dict]]) -> CustomerState:
    state = None
    for i, (type_, at, props) in enumerate(events):
        tp = validate({"event_id": f"e{i}", "customer_id": "c", "type": type_, "timestamp": iso(at), "channel": "email", "properties": props})
        state = apply(state, tp, DEFINITION).state
    assert state is not None
    return state


def buyer(days: list[int], amount: float = 20.0) -> CustomerState:
    return customer([("purchase", T0 + d * DAY_S, {"order_id": f"o{i}", "amount": amount}) for i, d in enumerate(days)])


# --- purchasers


def test_purchaser_score_is_the_bgnbd_formula_in_days():
    state = buyer([0, 10, 10, 40])  # 3 distinct days -> x = 2 (same-day orders count once)
    at = T0 + 100 * DAY_S + 3600
    risk = assess(state, at, PLAIN, RiskConfig(horizon_days=90))
    expected = bgnbd.p_no_purchase_within(PARAMS.params, 2, 40 / 7, 100 / 7, 90 / 7)
    assert risk.score == pytest.approx(expected, abs=1e-6)
    assert risk.reasons[:2] == ["no purchase for 60 days", "3 purchase days"]
    assert f"={expected:.2f}" in risk.reasons[2]


def test_one_time_buyer_is_riskier_the_longer_the_silence():
    config = RiskConfig()
    scores = [assess(buyer([0]), T0 + d * DAY_S, PLAIN, config).score for d in range(0, 400, 20)]
    assert all(b > a for a, b in pairwise(scores))
    assert scores[0] > 0  # not the zero risk of 1 - P(alive)


def test_levels_follow_the_thresholds():
    config = RiskConfig(medium=0.3, high=0.6)
    assert (config.level(0.29), config.level(0.3), config.level(0.59), config.level(0.6)) == (LOW, MEDIUM, MEDIUM, HIGH)
    with pytest.raises(ValueError, match="medium < high"):
        RiskConfig(medium=0.7, high=0.6)


def test_scoring_never_goes_before_the_customers_last_event():
    state = buyer([0, 30])
    early = assess(state, T0, PLAIN, RiskConfig())  # the clock lags behind this customer's events
    assert early.at == state.last_seen
    assert early.reasons[0] == "no purchase for 0 days"


# --- non-purchasers


def test_non_purchaser_silence_against_the_typical_move_on_time_with_a_cap():
    config = RiskConfig(move_on_days=(14.0, 7.0, 3.0), silence_cap=0.9)
    state = customer([("page_view", T0, {}), ("product_view", T0 + 3600, {})])  # consideration
    last = T0 + 3600
    assert assess(state, last, PLAIN, config).score == 0.0
    one_typical = assess(state, last + 7 * DAY_S, PLAIN, config)
    assert one_typical.score == pytest.approx(0.45)
    assert "typically move on within 7.0 days" in one_typical.reasons[0]
    assert assess(state, last + 1000 * DAY_S, PLAIN, config).score == pytest.approx(0.9, abs=1e-6)


def test_stage_times_are_learned_from_transitions_after_enough_samples():
    config = RiskConfig(move_on_days=(14.0, 7.0, 3.0), min_learn_samples=5)
    times = StageTimes(config)
    for s in (1, 4, 16, 2):
        times.observe(CONSIDERATION, s * DAY_S)
    assert times.typical_s(CONSIDERATION) == 7 * DAY_S  # not enough yet
    times.observe(CONSIDERATION, 4 * DAY_S)
    assert times.typical_s(CONSIDERATION) == pytest.approx(math.exp(np.mean(np.log([1, 4, 16, 2, 4]))) * DAY_S)
    assert times.typical_s(DECISION) == 3 * DAY_S
    assert StageTimes(replace(config, learn_move_on=False)).typical_s(CONSIDERATION) == 7 * DAY_S


# --- negative signals


def test_negative_signals_raise_the_risk_are_listed_and_expire():
    config = RiskConfig(signal_window_days=30)
    base = buyer([0, 20])
    flagged = customer(
        [("purchase", T0, {"order_id": "a"}), ("purchase", T0 + 20 * DAY_S, {"order_id": "b"}),
         ("complaint", T0 + 25 * DAY_S, {}), ("complaint", T0 + 26 * DAY_S, {}),
         ("review_submitted", T0 + 27 * DAY_S, {"rating": 1})]
    )
    at = T0 + 40 * DAY_S
    plain, risky = assess(base, at, PLAIN, config), assess(flagged, at, PLAIN, config)
    keep = (1 - 0.25) ** 2 * (1 - 0.2)
    assert risky.score == pytest.approx(1 - (1 - plain.score) * keep, abs=1e-6)
    assert "complaint x2" in risky.reasons and "low rating" in risky.reasons
    # Expiry: 30 days after the latest signal, and it is when the index must look again.
    assert risky.next_change is not None and risky.next_change <= T0 + 57 * DAY_S
    later = assess(flagged, T0 + 58 * DAY_S, PLAIN, config)
    assert later.score == pytest.approx(assess(base, T0 + 58 * DAY_S, PLAIN, config).score)
    assert not any("complaint" in r for r in later.reasons)


def test_abandoned_cart_is_a_reason():
    config = ChurnConfig()
    state = customer([("purchase", T0, {"order_id": "a"}), ("add_to_cart", T0 + 10 * DAY_S, {})])
    from journey.core import painpoints

    painpoints.note_touchpoint(state, "add_to_cart", T0 + 10 * DAY_S, "email", config.pain)
    u = update(state, T0 + 12 * DAY_S, PLAIN, config)
    assert [p.kind for p in u.pains] == ["cart_abandoned"]
    assert "cart abandoned" in u.risk.reasons


# --- the next level change


@pytest.mark.parametrize("seed", range(6))
def test_next_change_is_exactly_when_the_level_first_changes(seed):
    rng = random.Random(seed)
    config = RiskConfig(medium=rng.uniform(0.2, 0.5), high=rng.uniform(0.6, 0.95), signal_window_days=40)
    cal = Calibration(intercept=-0.2, weights=(0.4, 0.2, -1.0, -0.2), horizon_days=90)
    for _ in range(25):
        kind = rng.random()
        if kind < 0.5:
            days = sorted(rng.sample(range(0, 300), rng.randint(1, 6)))
            state = buyer(days, amount=rng.uniform(5, 100))
        else:
            events = [("page_view", T0, {})] + ([("product_view", T0 + 3 * DAY_S, {})] if kind < 0.8 else [])
            state = customer(events)
        if rng.random() < 0.3:
            state.negatives["complaint"] = 1
            state.last_negative = state.last_seen
        model = ChurnModel(PARAMS, cal if rng.random() < 0.5 else None)
        at = state.last_seen + rng.uniform(0, 60) * DAY_S
        risk = assess(state, at, model, config)
        if risk.next_change is None:
            assert risk.level == HIGH
            continue
        assert risk.next_change > at
        # Purchasers' scores change at UTC midnight; non-purchasers' are looked at per minute.
        step = 1.0 if state.first_purchase is not None else 60.0
        before = assess(state, risk.next_change - step, model, config)
        after = assess(state, risk.next_change, model, config)
        assert before.level == risk.level, "the level changed before next_change"
        signals_expire = state.last_negative is not None and risk.next_change == state.last_negative + 40 * DAY_S
        lookahead = risk.next_change == at + config.lookahead_days * DAY_S
        assert after.level != risk.level or signals_expire or lookahead


def test_score_only_rises_with_silence_even_calibrated():
    cal = Calibration(intercept=0.1, weights=(0.5, 0.3, -1.2, -0.3), horizon_days=90)
    for days in ([0], [0, 5, 9], [0, 50, 51, 52, 140]):
        state = buyer(days)
        scores = [assess(state, state.last_seen + d * DAY_S, ChurnModel(PARAMS, cal), RiskConfig()).score for d in range(0, 720, 3)]
        assert all(b >= a for a, b in pairwise(scores))


# --- update: levels in the state, events only on change


def test_update_keeps_compact_state_and_reports_level_changes_only():
    config = ChurnConfig(risk=RiskConfig(medium=0.5, high=0.8))
    state = buyer([0, 3, 6, 9, 12, 15])
    first = update(state, state.last_seen, PLAIN, config)
    assert first.previous_level is None and first.risk.level == LOW and not first.level_changed
    assert set(state.extra["churn"]) == {"s", "l", "at", "due"}
    assert first.due == state.extra["churn"]["due"] == first.risk.next_change
    again = update(state, state.last_seen + DAY_S, PLAIN, config)
    assert not again.level_changed
    later = update(state, first.due, PLAIN, config)
    assert later.level_changed and later.previous_level == LOW and later.risk.level == MEDIUM
    event = later.churn_event("c", PLAIN)
    assert event["previous_level"] == "low" and event["level"] == "medium"
    assert event["model"] == {"name": "bgnbd", "version": PARAMS.version}
    assert event["at"] == iso(first.due) and event["reasons"]


def test_a_replayed_level_change_has_the_same_event_id_and_a_later_one_another():
    # At-least-once: a batch or tick whose churn event was acknowledged but whose state was not
    # written runs again from the old state, at a later clock. Same change, same id.
    config = ChurnConfig(risk=RiskConfig(medium=0.5, high=0.8))
    state = buyer([0, 3, 6, 9, 12, 15])
    first = update(state, state.last_seen, PLAIN, config)
    before = state.copy()
    later = update(state, first.due, PLAIN, config)
    replayed = update(before.copy(), first.due + DAY_S / 2, PLAIN, config)
    assert later.level_changed and replayed.level_changed and later.risk.level == replayed.risk.level == MEDIUM
    event, again = later.churn_event("c", PLAIN), replayed.churn_event("c", PLAIN)
    assert event["at"] != again["at"] and event["event_id"] == again["event_id"]
    assert len(event["event_id"]) == 32 and event["event_id"] != later.churn_event("d", PLAIN)["event_id"]
    assert not update(state, first.due + DAY_S / 2, PLAIN, config).level_changed  # not news, no event
    # The next change (to high, later back to medium after a purchase) gets ids of its own.
    high = update(state, later.due, PLAIN, config)
    assert high.level_changed and high.risk.level == HIGH
    ids = [event["event_id"], high.churn_event("c", PLAIN)["event_id"]]
    assert len(set(ids)) == 2 and state.extra["churn"]["n"] == 2
    # A replay that lands on another level than the first run did is another event: another id.
    skipped = update(before.copy(), later.due, PLAIN, config)
    assert skipped.risk.level == HIGH and skipped.churn_event("c", PLAIN)["event_id"] not in ids


def test_a_replayed_pain_point_has_the_same_id():
    config = ChurnConfig()
    state = customer([("page_view", 0, {}), ("add_to_cart", 0.1, {})])
    note_touchpoint(state, "add_to_cart", state.last_seen, "email", config)  # as the worker's churn hook does
    before = state.copy()
    window = config.pain.abandonment_window_s
    first = update(state, state.last_seen + window + DAY_S, PLAIN, config)
    replayed = update(before, before.last_seen + window + 2 * DAY_S, PLAIN, config)
    assert [p.kind for p in first.pains] == [p.kind for p in replayed.pains] and first.pains
    ids = [p.to_event("c")["pain_point_id"] for p in first.pains]
    assert ids == [p.to_event("c")["pain_point_id"] for p in replayed.pains]
    assert len(set(ids)) == len(ids) and ids[0] != first.pains[0].to_event("d")["pain_point_id"]
    # A replay whose batch held more of the customer's events finds the same cart at a later stage.
    cart = next(p for p in first.pains if p.kind == "cart_abandoned")
    later = PainPoint(cart.kind, "purchase", cart.channel, cart.at, cart.details)
    assert later.to_event("c")["pain_point_id"] == cart.to_event("c")["pain_point_id"]
    stalled = PainPoint("stalled", "decision", "email", cart.at)
    assert stalled.pain_point_id("c") != PainPoint("stalled", "consideration", "email", cart.at).pain_point_id("c")


def test_a_journey_begun_anew_after_a_forget_does_not_reuse_the_forgotten_ones_event_ids():
    # The change count lives in the state, which a forget deletes: after an undo it starts again.
    config = ChurnConfig(risk=RiskConfig(medium=0.5, high=0.8))
    ids = []
    for start_day in (0, 400):  # the forgotten journey, then the new one
        state = buyer([start_day + d for d in (0, 3, 6, 9, 12, 15)])
        first = update(state, state.last_seen, PLAIN, config)
        change = update(state, first.due, PLAIN, config)
        assert change.level_changed and change.changes == 1
        ids.append(change.churn_event("c", PLAIN)["event_id"])
    assert ids[0] != ids[1]


# --- calibration


def test_calibration_features_scalar_and_batch_agree_and_apply_is_logistic():
    rng = np.random.default_rng(2)
    p, x, rec, m = rng.uniform(0, 1, 50), rng.integers(0, 9, 50), rng.uniform(0, 40, 50), rng.uniform(0, 300, 50)
    batch = features_batch(p, x, rec, m)
    np.testing.assert_allclose([features(*row) for row in zip(p, x, rec, m, strict=True)], batch, rtol=1e-12)
    cal = Calibration(intercept=0.3, weights=(0.5, 0.2, -0.7, -0.1), horizon_days=90)
    z = 0.3 + batch @ np.array(cal.weights)
    np.testing.assert_allclose(cal.apply_batch(p, x, rec, m), 1 / (1 + np.exp(-z)), rtol=1e-12)
    np.testing.assert_allclose([cal.apply(*row) for row in zip(p, x, rec, m, strict=True)], 1 / (1 + np.exp(-z)), rtol=1e-12)
    with pytest.raises(CalibrationError, match="fall with silence"):
        Calibration(intercept=0, weights=(-0.1, 0, 0, 0), horizon_days=90)


def simulated_orders(n: int, rng: np.random.Generator, days: int = 400) -> list[Order]:
    """Customers whose purchase rate and spend both depend on a hidden loyalty; some leave."""
    orders = []
    for c in range(n):
        loyalty = rng.uniform()
        rate = 0.005 + 0.08 * loyalty**2
        life = rng.exponential(60 + 400 * loyalty)
        start = rng.uniform(0, days / 3)
        t = start
        value = 10 + 80 * loyalty
        orders.append(Order(str(c), T0 + t * DAY_S, value))
        while True:
            t += rng.exponential(1 / rate)
            if t > start + life or t > days:
                break
            orders.append(Order(str(c), T0 + t * DAY_S, value * rng.uniform(0.8, 1.2)))
    return orders


def test_backtest_calibration_uses_only_the_history_and_helps_when_the_model_is_wrong():
    rng = np.random.default_rng(8)
    orders = simulated_orders(3000, rng)
    until = utc_day(T0) + 300
    cal, report = fit_calibration(orders, until_day=until, time_unit_days=7.0, horizon_days=60)
    assert report["cut_day"] < iso(until * DAY_S)[:10] and report["label_window_days"] == 60
    assert all(w >= 0 for w, nonneg in zip(cal.weights, (True, True), strict=False) if nonneg)
    # Orders after `until` change nothing: the fit never sees them.
    future = [Order(o.customer_id, o.ts + 1000 * DAY_S, o.amount) for o in orders[:500]]
    again, _ = fit_calibration(orders + future, until_day=until, time_unit_days=7.0, horizon_days=60)
    assert again.weights == pytest.approx(cal.weights) and again.intercept == pytest.approx(cal.intercept)
    # On what really happens next (days 300..360), the calibrated score ranks at least as well.
    from journey.churn.calibration import customer_summaries

    ids, x, t_x, T, mean_value = customer_summaries(orders, until, 7.0)
    params = bgnbd.fit(x, t_x, T).params
    p = bgnbd.p_no_purchase_within_batch(params, x, t_x, T, 60 / 7)
    bought = {o.customer_id for o in orders if until < utc_day(o.ts) <= until + 60}
    y = np.array([c not in bought for c in ids])
    assert roc_auc(cal.apply_batch(p, x, T - t_x, mean_value), y) >= roc_auc(p, y) - 0.002


def test_backtest_needs_enough_history():
    rng = np.random.default_rng(1)
    orders = simulated_orders(100, rng, days=30)
    with pytest.raises(CalibrationError, match="needs"):
        fit_calibration(orders, until_day=utc_day(T0) + 30, time_unit_days=7.0, horizon_days=90)


def test_model_file_round_trip_and_errors(tmp_path):
    cal = Calibration(intercept=0.3, weights=(0.5, 0.2, -0.7, -0.1), horizon_days=90, fitted_on={"cut_day": "x"})
    model = ChurnModel(PARAMS, cal)
    path = save_model(tmp_path / "p.json", model)
    loaded = load_model(path)
    assert loaded == model and loaded.version == model.version and "+cal-" in loaded.version
    assert loaded.name == "bgnbd+backtest"
    assert bgnbd.load_params(path) == PARAMS  # still a valid plain BG/NBD params file
    data = path.read_text().replace('"log1p_mean_order_value"', '"spend"')
    path.write_text(data)
    with pytest.raises(bgnbd.ChurnParamsError, match=str(path)):
        load_model(path)
    assert list(FEATURES) == ["log_odds_bgnbd", "log1p_recency", "log1p_repeat_days", "log1p_mean_order_value"]


def test_shipped_params_are_learned_for_the_default_horizon():
    model = load_model(REPO / "schemas/churn-params.json")
    assert model.learned is not None and model.calibration is None
    assert model.learned.horizon_days == RiskConfig().horizon_days
    assert model.learned.spec.signal_window_days == RiskConfig().signal_window_days
    assert model.name == "bgnbd+learned"
