"""The hot-path scoring (journey.churn.risk / update, journey.core.painpoints) against the plain
formula it replaced, kept here verbatim as the oracle: on many random customers, looked at
again and again, every output must be the same (scores, levels, reasons, due times, pain points
and the state left behind), with the memo cold and warm."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from journey.churn import bgnbd, learned
from journey.churn.calibration import Calibration
from journey.churn.risk import (
    HIGH,
    LEVELS,
    MEDIUM,
    SIGNAL_NAMES,
    ChurnModel,
    RiskConfig,
    StageTimes,
    clear_memo,
    load_model,
)
from journey.churn.update import ChurnConfig, note_touchpoint, update
from journey.core import painpoints
from journey.core.clock import DAY_S, iso, utc_day
from journey.core.definition import load_definition
from journey.core.events import validate
from journey.core.machine import apply
from journey.core.painpoints import PainConfig, PainPoint
from journey.core.stages import AWARENESS, DECISION, STAGES, stage_name
from journey.core.state import CustomerState

REPO = Path(__file__).resolve().parents[2]
DEFINITION = load_definition(REPO / "schemas/journey.yaml")
T0 = 852_076_800.0  # 1997-01-01T00:00Z

# --- the oracle: the formula as written before the fast path --------------------------------


def ref_typical_s(times: StageTimes, stage: int) -> float:
    stage = min(max(stage, AWARENESS), DECISION)
    n = times._n[stage]
    if times.config.learn_move_on and n >= times.config.min_learn_samples:
        return math.exp(times._log_sum[stage] / n)
    return times.config.move_on_days[stage] * DAY_S


def ref_assess(state: CustomerState, at: float, model: ChurnModel, config: RiskConfig, stage_times: StageTimes | None) -> dict[str, Any]:
    at = max(at, state.last_seen if state.last_seen is not None else at)
    if model.learned is not None:
        return ref_learned_assess(state, at, model, config, stage_times)
    reasons: list[str] = []
    if state.first_purchase is not None:
        base_at, grid = ref_purchaser(state, model, config, reasons, at)
    else:
        base_at, grid = ref_non_purchaser(state, config, stage_times, reasons, at)
    keep, expiry = ref_signals(state, config, reasons, at)
    score = 1.0 - (1.0 - base_at(at)) * keep
    level = config.level(score)
    next_change = ref_next_change(level, keep, expiry, base_at, grid, at, config)
    return {"score": round(score, 6), "level": level, "reasons": reasons, "at": at, "next_change": next_change}


def ref_purchaser(state, model, config, reasons, at):  # type: ignore[no-untyped-def]
    params, unit = model.params.params, model.params.time_unit_days
    first = utc_day(state.first_purchase)
    last = utc_day(state.last_purchase if state.last_purchase is not None else state.first_purchase)
    x = float(max(state.purchase_days - 1, 0))
    t_x = (last - first) / unit
    H = config.horizon_days / unit
    mean_value = state.revenue / state.purchases if state.purchases else 0.0
    calibration = model.calibration

    def base(t: float) -> float:
        T = max(utc_day(t) - first, last - first) / unit
        p = bgnbd.p_no_purchase_within(params, x, t_x, T, H)
        if calibration is not None:
            p = calibration.apply(p, x, T - t_x, mean_value)
        return p

    day = utc_day(at)
    days_silent = max(day - last, 0)
    days = int(x) + 1
    reasons.append(f"no purchase for {days_silent} days")
    reasons.append("one purchase day only" if days == 1 else f"{days} purchase days")
    T_at = max(day - first, last - first) / unit
    reasons.append(
        f"model P(no purchase within {config.horizon_days:g} days)="
        f"{bgnbd.p_no_purchase_within(params, x, t_x, T_at, H):.2f}"
    )
    return base, lambda k: (day + k) * DAY_S


def ref_non_purchaser(state, config, stage_times, reasons, at):  # type: ignore[no-untyped-def]
    stage = min(max(state.stage, AWARENESS), DECISION)
    typical = ref_typical_s(stage_times or StageTimes(config), stage)
    last_seen = state.last_seen if state.last_seen is not None else at
    cap = config.silence_cap

    def base(t: float) -> float:
        return cap * (1.0 - 2.0 ** (-max(t - last_seen, 0.0) / typical))

    reasons.append(
        f"silent {max(at - last_seen, 0.0) / DAY_S:.1f} days in {STAGES[stage]} "
        f"(customers typically move on within {typical / DAY_S:.1f} days)"
    )
    return base, lambda k: at + 60.0 * k


def ref_signals(state, config, reasons, at):  # type: ignore[no-untyped-def]
    window = config.signal_window_days * DAY_S
    keep = 1.0
    expiries = []
    active: list[tuple[str, int]] = []
    if state.negatives and state.last_negative is not None and at - state.last_negative < window:
        active.extend(state.negatives.items())
        expiries.append(state.last_negative + window)
    carts, last_cart = painpoints.abandoned_carts(state)
    if carts and last_cart is not None and at - last_cart < window:
        active.append((painpoints.CART_ABANDONED, carts))
        expiries.append(last_cart + window)
    for kind, n in sorted(active):
        w = config.signal_weights.get(kind, config.default_signal_weight)
        keep *= (1.0 - w) ** min(n, config.max_signal_count)
        name = SIGNAL_NAMES.get(kind, kind.replace("_", " "))
        reasons.append(name if n == 1 else f"{name} x{n}")
    return keep, (min(expiries) if expiries else None)


def ref_next_change(level, keep, expiry, base, grid, at, config):  # type: ignore[no-untyped-def]
    limit = expiry if expiry is not None else at + config.lookahead_days * DAY_S
    if level == HIGH:
        return expiry
    threshold = config.high if level == MEDIUM else config.medium

    def reaches(k: int) -> bool:
        return 1.0 - (1.0 - base(grid(k))) * keep >= threshold

    lo, hi = 0, 1
    while grid(hi) < limit and not reaches(hi):
        lo, hi = hi, hi * 2
    if grid(hi) >= limit:
        a, b = lo, hi
        while b - a > 1:
            m = (a + b) // 2
            a, b = (m, b) if grid(m) < limit else (a, m)
        if a == lo or not reaches(a):
            return limit
        hi = a
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if reaches(mid) else (mid, hi)
    return grid(hi)


# --- the learned layer (journey.churn.learned), as plain formulas -----------------------------


def ref_sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def ref_time_values(layer: learned.Layer, p: float, repeat: int, span: int, t_days: int) -> list[float]:
    knots = layer.spec.recency_knots
    recency = t_days - span
    u = math.log1p(recency / 7.0)
    ramps = [min(max((u - lo) / (hi - lo), 0.0), 1.0) for lo, hi in pairwise(knots)]
    q = min(max(p, 1e-9), 1 - 1e-9)
    return [math.log(q / (1 - q)), *ramps, max(u - knots[-1], 0.0), *(r if repeat == 0 else 0.0 for r in ramps),
            math.log1p(recency * repeat / span) if repeat > 0 and span > 0 else 0.0,
            math.log1p(repeat), 1.0 if repeat == 0 else 0.0, math.log1p(span / 7.0)]


def ref_customer_values(layer: learned.Layer, state: CustomerState, at: float) -> tuple[list[float], float | None, dict[str, int]]:
    spec = layer.spec
    window = spec.signal_window_days * DAY_S
    orders, days = max(state.purchases, 1), max(state.purchase_days, 1)
    negatives = sum(state.negatives.values())
    values = [math.log1p(max(state.revenue / orders, 0.0)), math.log1p(max(state.revenue, 0.0)),
              math.log(max(state.purchases / days, 1.0)), math.log(max((state.events - negatives) / orders, 1.0))]
    values += [1.0 if state.stage >= 0 and STAGES[state.stage] == s else 0.0 for s in spec.stages]
    values += [state.channels.get(c, 0) / max(state.events, 1) for c in spec.channels]
    recent_negative = bool(state.negatives) and state.last_negative is not None and at - state.last_negative < window
    carts, last_cart = painpoints.abandoned_carts(state)
    recent_cart = carts > 0 and last_cart is not None and at - last_cart < window
    counts = {k: n for k, n in state.negatives.items() if n > 0}
    if carts:
        counts[painpoints.CART_ABANDONED] = carts
    for kind in spec.signals:
        n = counts.get(kind, 0)
        recent = recent_cart if kind == painpoints.CART_ABANDONED else (n > 0 and recent_negative)
        values += [math.log1p(n), 1.0 if recent else 0.0]
    expiries = ([state.last_negative + window] if recent_negative else []) + ([last_cart + window] if recent_cart else [])
    return values, (min(expiries) if expiries else None), counts


def ref_learned_assess(state, at, model, config, stage_times):  # type: ignore[no-untyped-def]
    layer = model.learned
    params, unit = model.params.params, model.params.time_unit_days
    n_time = len(layer.spec.time_names)
    customer, expiry, counts = ref_customer_values(layer, state, at)
    if state.first_purchase is not None:
        first = utc_day(state.first_purchase)
        last = utc_day(state.last_purchase if state.last_purchase is not None else state.first_purchase)
        repeat, span = max(state.purchase_days - 1, 0), last - first
        z_customer = 0.0
        for w, f in zip(layer.weights[n_time:], customer, strict=True):
            z_customer += w * f

        def p_within(t_days: int, horizon: float) -> float:
            return bgnbd.p_no_purchase_within(params, float(repeat), span / unit, t_days / unit, horizon / unit)

        def base(t: float) -> float:
            t_days = max(utc_day(t) - first, span)
            z = layer.intercept
            for w, f in zip(layer.weights[:n_time], ref_time_values(layer, p_within(t_days, layer.horizon_days), repeat, span, t_days), strict=True):
                z += w * f
            return ref_sigmoid(z + z_customer)

        day = utc_day(at)
        t_days = max(day - first, span)
        p_w = p_within(t_days, layer.horizon_days)
        facts = {"days_silent": t_days - span, "repeat": repeat, "span": span, "p": p_w, "horizon": layer.horizon_days,
                 "mean_value": state.revenue / max(state.purchases, 1), "revenue": state.revenue,
                 "orders_per_day": state.purchases / max(state.purchase_days, 1),
                 "touchpoints_per_order": (state.events - sum(state.negatives.values())) / max(state.purchases, 1),
                 "stage": STAGES[state.stage] if state.stage >= 0 else "none",
                 "channels": {c: n / max(state.events, 1) for c, n in state.channels.items()}, "signals": counts}
        explained = learned.explain_purchaser(layer, ref_time_values(layer, p_w, repeat, span, t_days), customer, facts)
        listed = any(r.code == "bgnbd_p_no_purchase" for r in explained) and layer.horizon_days == config.horizon_days
        reasons = learned.reason_texts(explained, [] if listed else [f"model P(no purchase within {config.horizon_days:g} days)="
                                                                     f"{p_within(t_days, config.horizon_days):.2f}"])
        grid = lambda k: (day + k) * DAY_S  # noqa: E731
    else:
        stage = min(max(state.stage, AWARENESS), DECISION)
        typical = ref_typical_s(stage_times or StageTimes(config), stage)
        last_seen = state.last_seen if state.last_seen is not None else at
        z_signals = 0.0
        for w, f, name in zip(layer.weights[n_time:], customer, layer.spec.customer_names, strict=True):
            if name.startswith("signal_"):
                z_signals += w * f
        odds = math.exp(z_signals)

        def base(t: float) -> float:
            b = config.silence_cap * (1.0 - 2.0 ** (-max(t - last_seen, 0.0) / typical))
            return b if odds == 1.0 else odds * b / (1.0 - b + odds * b)

        reasons = [f"silent {max(at - last_seen, 0.0) / DAY_S:.1f} days in {STAGES[stage]} "
                   f"(customers typically move on within {typical / DAY_S:.1f} days)"]
        now, silent = base(at), config.silence_cap * (1.0 - 2.0 ** (-max(at - last_seen, 0.0) / typical))
        explained = []
        for kind, n in sorted(counts.items()):
            part = sum(w * f for w, f, name in zip(layer.weights[n_time:], customer, layer.spec.customer_names, strict=True)
                       if name in (f"signal_count:{kind}", f"signal_recent:{kind}"))
            without = math.exp(z_signals - part)
            effect = now - (silent if without == 1.0 else without * silent / (1.0 - silent + without * silent))
            explained.append(learned.Reason(learned.signal_code(kind), n, effect, learned.signal_text(kind, n)))
        reasons += learned.reason_texts(explained)
        grid = lambda k: at + 60.0 * k  # noqa: E731
    score = base(at)
    level = config.level(score)
    next_change = ref_next_change(level, 1.0, expiry, base, grid, at, config)
    return {"score": round(score, 6), "level": level, "reasons": reasons, "at": at, "next_change": next_change}


def ref_evaluate(state: CustomerState, now: float, config: PainConfig) -> list[PainPoint]:
    pain = state.extra.get(painpoints.KEY) or {}
    found: list[PainPoint] = []
    w = config.abandonment_window_s
    for cart in sorted(pain.get("c") or (), key=lambda c: c[0]):
        ts, channel = cart
        purchased = painpoints._purchase_within(state, ts, w)
        if purchased is not None:
            painpoints._resolve(pain, cart, purchased)
        elif now >= ts + w:
            painpoints._resolve(pain, cart, ts + w)
            count, _ = pain.get("a") or (0, None)
            pain["a"] = [count + 1, ts + w]
            found.append(PainPoint(painpoints.CART_ABANDONED, stage_name(state.stage), channel, ts + w,
                                   {"cart_at": iso(ts), "window_hours": round(w / 3600, 3)}))
    stage = state.stage
    entered = state.reached[stage] if stage >= 0 else None
    if stage in config.stall_stages and entered is not None and pain.get("s") != stage:
        if now >= entered + config.stall_limit_s:
            pain["s"] = stage
            found.append(PainPoint(painpoints.STALLED, stage_name(stage), state.last_channel, entered + config.stall_limit_s,
                                   {"stage_entered_at": iso(entered), "limit_days": round(config.stall_limit_s / 86400, 3)}))
    painpoints._store(state, pain)
    return found


def ref_next_deadline(state: CustomerState, config: PainConfig) -> float | None:
    pain = state.extra.get(painpoints.KEY) or {}
    times = [c[0] + config.abandonment_window_s for c in pain.get("c") or ()]
    stage = state.stage
    entered = state.reached[stage] if stage >= 0 else None
    if stage in config.stall_stages and entered is not None and pain.get("s") != stage:
        times.append(entered + config.stall_limit_s)
    return min(times) if times else None


def ref_open_cart(state: CustomerState, ts: float, channel: str, config: PainConfig) -> None:
    pain = state.extra.get(painpoints.KEY) or {}
    if ts <= pain.get("r", float("-inf")):
        return
    w = config.abandonment_window_s
    carts = pain.setdefault("c", [])
    for cart in carts:
        if cart[0] <= ts <= cart[0] + w:
            return
    carts.append([ts, channel])
    carts.sort(key=lambda c: c[0])
    merged: list[list[Any]] = []
    for cart in carts:
        if merged and cart[0] <= merged[-1][0] + w:
            continue
        merged.append(cart)
    pain["c"] = merged[-painpoints.MAX_OPEN_CARTS:]
    painpoints._store(state, pain)


def ref_note(state: CustomerState, event_type: str, ts: float, channel: str, config: PainConfig) -> None:
    if event_type in config.cart_types:
        ref_open_cart(state, ts, channel, config)
    elif event_type in config.purchase_types:
        pain = state.extra.get(painpoints.KEY)
        if pain and pain.get("c"):
            w = config.abandonment_window_s
            for cart in [c for c in pain["c"] if c[0] <= ts <= c[0] + w]:
                painpoints._resolve(pain, cart, ts)
            painpoints._store(state, pain)


def ref_update(state: CustomerState, at: float, model: ChurnModel, config: ChurnConfig, stage_times: StageTimes | None) -> dict[str, Any]:
    at = max(at, state.last_seen if state.last_seen is not None else at)
    pains = ref_evaluate(state, at, config.pain)
    risk = ref_assess(state, at, model, config.risk, stage_times)
    deadlines = [t for t in (risk["next_change"], ref_next_deadline(state, config.pain)) if t is not None]
    due = min(deadlines) if deadlines else None
    previous = state.extra.get("churn")
    state.extra["churn"] = {"s": risk["score"], "l": LEVELS[risk["level"]], "at": risk["at"], "due": due}
    # The level changes so far: a first level of low is no change.
    changes = (previous or {}).get("n", 0) + (risk["level"] != (LEVELS.index(previous["l"]) if previous else 0))
    if changes:
        state.extra["churn"]["n"] = changes
    return {**risk, "pains": [vars_of(p) for p in pains], "due": due,
            "previous": LEVELS.index(previous["l"]) if previous else None}


# --- the comparison --------------------------------------------------------------------------


def vars_of(p: PainPoint) -> tuple[Any, ...]:
    return (p.kind, p.stage, p.channel, p.at, p.details, p.to_event("c"))


def new_update(state: CustomerState, at: float, model: ChurnModel, config: ChurnConfig, stage_times: StageTimes | None) -> dict[str, Any]:
    u = update(state, at, model, config, stage_times)
    r = u.risk
    return {"score": r.score, "level": r.level, "reasons": r.reasons, "at": r.at, "next_change": r.next_change,
            "pains": [vars_of(p) for p in u.pains], "due": u.due, "previous": u.previous_level}


TYPES = (
    ["page_view"] * 4 + ["product_view"] * 3 + ["add_to_cart"] * 3 + ["checkout_started", "purchase", "purchase",
     "complaint", "support_ticket", "refund", "return", "unsubscribe", "review_submitted", "subscription_renewed",
     "quote_requested"]
)


def random_events(rng: random.Random, start: float) -> list[tuple[str, float, dict[str, Any]]]:
    events = []
    t = start
    for _ in range(rng.randint(1, 14)):
        t += rng.choice([60.0, 3600.0, 6 * 3600.0, DAY_S, 3 * DAY_S, 11 * DAY_S, 40 * DAY_S]) * rng.random()
        type_ = rng.choice(TYPES)
        props: dict[str, Any] = {}
        if type_ == "purchase":
            props = {"order_id": f"o{rng.randint(0, 6)}", "amount": round(rng.uniform(0, 300), 2)}
        elif type_ == "review_submitted":
            props = {"rating": rng.randint(1, 5)}
        events.append((type_, t, props))
    return events


def random_layer(rng: random.Random) -> learned.Layer:
    """A learned layer with every kind of feature and random effects (signs free, but the
    silence features' >= 0), at a horizon of its own."""
    knots = sorted(rng.sample([0.0, 0.4, 0.9, 1.5, 2.2, 3.0, 3.6], 4))
    spec = learned.Spec(tuple(knots), stages=("consideration", "purchase", "retention"), channels=("ads", "email"),
                        signals=("cart_abandoned", "complaint", "refund", "return", "review_submitted", "support_ticket",
                                 "unsubscribe"), signal_window_days=rng.choice([10.0, 40.0]), horizon_days=rng.choice([60.0, 90.0]))
    weights = tuple(rng.uniform(0, 1) if learned.non_negative(n) else rng.choice([0.0, rng.uniform(-1.5, 1.5)]) for n in spec.names)
    return learned.Layer(spec, rng.uniform(-2, 1), weights, tuple(rng.uniform(0, 1) for _ in spec.names))


def random_models(rng: random.Random) -> list[ChurnModel]:
    shipped = load_model(REPO / "schemas/churn-params.json")
    plain = ChurnModel(bgnbd.ChurnParams(bgnbd.BGNBDParams(0.243, 4.414, 0.793, 2.426), time_unit_days=7.0))
    cal = Calibration(intercept=rng.uniform(-1, 1), weights=(rng.uniform(0, 1), rng.uniform(0, 0.5), rng.uniform(-1.5, 0), rng.uniform(-0.5, 0.5)), horizon_days=90)
    return [shipped, plain, ChurnModel(plain.params, cal), ChurnModel(plain.params, None, random_layer(rng))]


def compare_stream(seed: int, check: Callable[[dict[str, Any], dict[str, Any], str], None]) -> int:
    """Fold random customers through the machine and both updates, look at them again and
    again (new events, later clocks); return how many looks were compared."""
    rng = random.Random(seed)
    risk = RiskConfig(
        medium=rng.uniform(0.2, 0.55), high=rng.uniform(0.6, 0.95), signal_window_days=rng.choice([10.0, 40.0, 90.0]),
        min_learn_samples=rng.choice([3, 30]), horizon_days=rng.choice([30.0, 90.0]),
    )
    config = ChurnConfig(risk=risk, pain=PainConfig(abandonment_window_s=rng.choice([3600.0, 86400.0]), stall_limit_s=rng.choice([2, 14]) * DAY_S))
    times = StageTimes(risk)
    looks = 0
    for model in random_models(rng):
        for c in range(40):
            ref_state: CustomerState | None = None
            new_state: CustomerState | None = None
            clock = T0 + rng.uniform(0, 400) * DAY_S
            for round_ in range(rng.randint(1, 5)):
                for i, (type_, t, props) in enumerate(random_events(rng, clock)):
                    tp = validate({"event_id": f"{c}-{round_}-{i}", "customer_id": "c", "type": type_,
                                   "timestamp": iso(t), "channel": rng.choice(["ads", "email"]), "properties": props})
                    ref_state = apply(ref_state, tp, DEFINITION).state
                    new_state = apply(new_state, tp, DEFINITION).state
                    ref_note(ref_state, tp.type, tp.ts, tp.channel, config.pain)
                    note_touchpoint(new_state, tp.type, tp.ts, tp.channel, config)
                    if rng.random() < 0.3:  # transitions of other customers: the learned times move
                        times.observe(rng.randint(0, 2), rng.uniform(60, 20 * DAY_S))
                    clock = max(clock, t)
                assert ref_state is not None and new_state is not None
                for _ in range(rng.randint(1, 3)):
                    at = clock + rng.choice([-3600.0, 0.0, 60.0, 3600.0, DAY_S, 20 * DAY_S, 200 * DAY_S]) * rng.random()
                    if rng.random() < 0.3:
                        clear_memo()
                    label = f"seed {seed}, customer {c}, model {model.name}, at {iso(at)}"
                    check(ref_update(ref_state, at, model, config, times), new_update(new_state, at, model, config, times), label)
                    assert new_state.extra == ref_state.extra, label
                    looks += 1
                    # The timer looks again when due.
                    due = new_state.extra["churn"]["due"]
                    if due is not None and rng.random() < 0.5:
                        check(ref_update(ref_state, due, model, config, times), new_update(new_state, due, model, config, times), label + " (due)")
                        assert new_state.extra == ref_state.extra, label
                        looks += 1
                clock += rng.uniform(0, 30) * DAY_S
    return looks


def exact(ref: dict[str, Any], new: dict[str, Any], label: str) -> None:
    assert new == ref, label


@pytest.mark.parametrize("seed", range(8))
def test_fast_path_gives_the_plain_formulas_outputs(seed: int) -> None:
    assert compare_stream(seed, exact) > 300


def test_the_comparison_notices_a_difference() -> None:
    # The check above must be able to fail: one changed due time is caught.
    def off_by_a_minute(ref: dict[str, Any], new: dict[str, Any], label: str) -> None:
        if new["due"] is not None:
            new = {**new, "due": new["due"] + 60.0}
        exact(ref, new, label)

    with pytest.raises(AssertionError):
        compare_stream(0, off_by_a_minute)


def test_search_hints_never_change_the_answer() -> None:
    # Whatever the hint, _first_rise returns the first step that reaches (or the limit).
    from journey.churn.risk import _first_rise

    rng = random.Random(3)
    for _ in range(2000):
        crossing = rng.randint(1, 5000)
        limit_step = rng.randint(1, 6000)
        grid = lambda k: 100.0 + 60.0 * k  # noqa: E731
        limit = grid(limit_step) - rng.choice([0.0, 30.0])
        expected = grid(crossing) if grid(crossing) < limit else limit
        for hint in (None, 1, crossing - 1, crossing, crossing + 1, rng.randint(1, 10_000)):
            assert _first_rise(lambda k, c=crossing: k >= c, grid, limit, hint) == expected, (crossing, limit_step, hint)
