"""Fitting the learned churn layer and proving it out of time (``journey churn fit``).

The history up to ``until`` is cut at a grid of days (snapshots). At each snapshot every customer
who has purchased is observed as the worker would see them then (the same feature code), and
labelled: no purchase in the next W days (W = the horizon H, or shorter when the history is too
short for H; the report says so). BG/NBD is re-fitted at each snapshot on what came before it.

- **Out-of-time validation.** At each of 2-3 evaluation cuts inside the history, a layer is
  fitted on the snapshots whose labels end by the cut (what came before) and scored at the cut
  against what happened in the next W days. Every candidate is measured there: the plain BG/NBD
  probability, recency alone, the learned layer (and, when BG/NBD is degenerate, the learned
  layer without the BG/NBD term).
- **Selection.** The learned layer ships only where it beats the plain BG/NBD probability out
  of time by a clear margin (mean AUC gain over the cuts >= ``MARGIN``, and no cut where it is
  worse by more than ``MARGIN``); otherwise the plain probability ships (calibrated), and the
  report says why.
- **Regularisation.** L2, its strength chosen by a time split inside each fit's own snapshots
  (fit on the older ones, scored on the newest).
- **Calibration.** No map, or an anchor to the BG/NBD base rate at the scoring date, whichever
  has the lower calibration error out of time. No Platt map: the cuts are W/3 apart, so a map
  fitted on other cuts would learn from labels in a cut's future.

numpy/scipy, offline only. Details: docs/churn-model.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np

from journey.churn import learned
from journey.churn.calibration import roc_auc

__all__ = ["roc_auc"]
from journey.churn.learned import Layer, Observation, Spec
from journey.core import painpoints
from journey.core.stages import STAGES
from journey.errors import ChurnError

#: Mean out-of-time AUC gain the learned layer needs over the plain BG/NBD probability to ship.
MARGIN = 0.005
#: L2 strengths tried (on the standardised features; indicators and counts as they are).
LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1)
DEFAULT_LAMBDA = 1e-2
#: Fewest customers (at one snapshot) with a signal, a stage or a channel for it to get an effect.
MIN_SUPPORT = 30
#: Fewest customers, and of each outcome, a snapshot needs to be fitted or scored on.
MIN_ROWS = 200
MIN_PER_LABEL = 20
#: Fewest days of history before the first snapshot.
MIN_HISTORY_DAYS = 28
#: The shortest label window a longer horizon is validated on when the history is short.
MIN_WINDOW_DAYS = 14
MAX_EVAL_CUTS = 3
MAX_TRAIN_SNAPSHOTS = 4
MAX_CHANNELS = 8
RECENCY_QUANTILES = (0.0, 0.2, 0.4, 0.6, 0.8, 0.95)


class ValidationSkipped(ChurnError):
    """The history cannot carry an out-of-time validation (the reason is the message)."""


# --------------------------------------------------------------------------------------------
# The plan: label window, snapshots, evaluation cuts


@dataclass(frozen=True)
class Plan:
    window_days: int
    step_days: int
    #: Snapshot days, newest first (g_0 = until - W, g_1 = g_0 - step, ...).
    grid: tuple[int, ...]
    #: Evaluation cuts (a subset of the grid, newest first) and, for each, its training snapshots.
    cuts: tuple[int, ...]
    training: Mapping[int, tuple[int, ...]]
    #: The final layer's training snapshots.
    final: tuple[int, ...]
    #: The last day of the history (observed too, unlabelled: the level of the shipped score).
    until: int
    note: str = ""


def plan(first_day: int, until_day: int, horizon_days: float) -> Plan:
    """The largest label window W <= H that leaves 2+ evaluation cuts, and its snapshots."""
    horizon = max(int(round(horizon_days)), 1)
    # Windows shrink down to 14 days, or to H itself for a shorter horizon (a weekly one of a
    # shop bought from every few days is validated on 7-day windows).
    shortest = min(horizon, MIN_WINDOW_DAYS)
    for window in range(horizon, shortest - 1, -7 if horizon > MIN_WINDOW_DAYS else -1):
        step = max(round(window / 3), 7)
        start = until_day - window
        grid = []
        d = start
        while d >= first_day + MIN_HISTORY_DAYS:
            grid.append(d)
            d -= step
        lag = math.ceil(window / step)
        cuts = [grid[k] for k in range(min(MAX_EVAL_CUTS, max(len(grid) - lag, 0)))]
        if len(cuts) < 2:
            continue
        training = {c: tuple(g for g in grid if g <= c - window)[:MAX_TRAIN_SNAPSHOTS] for c in cuts}
        used = sorted({*cuts, *(g for t in training.values() for g in t), *grid[:MAX_TRAIN_SNAPSHOTS]}, reverse=True)
        note = "" if window == horizon else (
            f"the history ({until_day - first_day} days) is too short to validate a {horizon}-day horizon out of time "
            f"at two cuts; validated, fitted and calibrated on {window}-day windows instead (P(no purchase within "
            f"{window} days), which ranks like the {horizon}-day one)")
        return Plan(window, step, tuple(used), tuple(cuts), training, tuple(grid[:MAX_TRAIN_SNAPSHOTS]), until_day, note)
    raise ValidationSkipped(
        f"the history has {until_day - first_day} days of purchases; an out-of-time validation needs two cuts, "
        f"each with {MIN_HISTORY_DAYS}+ days of history and a label window of {shortest}+ days after the training "
        f"snapshots (about {MIN_HISTORY_DAYS + 3 * max(shortest, 7)}+ days in all)")


# --------------------------------------------------------------------------------------------
# Rows: one snapshot's purchasers


@dataclass
class Rows:
    day: int
    ids: list[str]
    #: repeat purchase days, first-to-last purchase days, days since the first purchase.
    repeat: np.ndarray
    span: np.ndarray
    t_days: np.ndarray
    observations: list[Observation]
    #: BG/NBD P(no purchase within W) with the fit of this snapshot; set by the caller.
    p: np.ndarray = field(default_factory=lambda: np.empty(0))
    #: The same within H (the last day of the history only).
    p_h: np.ndarray = field(default_factory=lambda: np.empty(0))
    degenerate: bool = False
    #: True: no purchase in the W days after the snapshot.
    y: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=bool))
    customer_cache: dict[Spec, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def usable(self) -> bool:
        """Fitted (a BG/NBD probability and a label for everyone), big enough, both outcomes."""
        if len(self.p) != len(self) or len(self.y) != len(self):
            return False
        n_pos = int(self.y.sum())
        return len(self) >= MIN_ROWS and min(n_pos, len(self) - n_pos) >= MIN_PER_LABEL


def time_matrix(spec: Spec, rows: Rows) -> np.ndarray:
    """Numpy twin of learned.time_features over a snapshot (tested to agree)."""
    p = np.clip(rows.p, 1e-9, 1.0 - 1e-9)
    recency = rows.t_days - rows.span
    u = np.log1p(recency / 7.0)
    knots = spec.recency_knots
    cols = [np.log(p / (1.0 - p))]
    for lo, hi in zip(knots, knots[1:], strict=False):
        cols.append(np.clip((u - lo) / (hi - lo), 0.0, 1.0))
    cols.append(np.maximum(u - knots[-1], 0.0))
    repeat = rows.repeat.astype(float)
    for lo, hi in zip(knots, knots[1:], strict=False):
        cols.append(np.where(repeat == 0, np.clip((u - lo) / (hi - lo), 0.0, 1.0), 0.0))
    span = rows.span.astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        overdue = np.where((repeat > 0) & (span > 0), np.log1p(recency * repeat / np.where(span > 0, span, 1.0)), 0.0)
    cols += [overdue, np.log1p(repeat), (repeat == 0).astype(float), np.log1p(span / 7.0)]
    return np.column_stack(cols)


def customer_matrix(spec: Spec, rows: Rows) -> np.ndarray:
    cached = rows.customer_cache.get(spec)
    if cached is None:
        width = len(spec.customer_names)
        cached = np.array([learned.customer_features(spec, o) for o in rows.observations]).reshape(len(rows), width)
        rows.customer_cache[spec] = cached
    return cached


def design(spec: Spec, rows: Rows) -> np.ndarray:
    return np.hstack([time_matrix(spec, rows), customer_matrix(spec, rows)])


def make_spec(rows: Sequence[Rows], window_days: float, signal_window_days: float) -> tuple[Spec, dict[str, Any]]:
    """The features the history supports: recency knots from its quantiles; the stages, channels
    and signals that enough rows have (the rest get no effect, and the report says so)."""
    recency = np.concatenate([r.t_days - r.span for r in rows])
    u = np.log1p(recency / 7.0)
    knots: list[float] = []
    for k in np.quantile(u, RECENCY_QUANTILES):
        if not knots or k > knots[-1] + 0.05:
            knots.append(float(round(k, 6)))
    if len(knots) < 2:
        knots = [knots[0] if knots else 0.0, (knots[0] if knots else 0.0) + 1.0]
    observations = [o for r in rows for o in r.observations]

    def customers_with(value: Callable[[Observation], float]) -> int:
        """Customers with it (value > 0) at one snapshot (the most of any): support counts
        customers, not customer-snapshots."""
        return max(sum(1 for o in r.observations if value(o) > 0) for r in rows)

    def in_stage(i: int) -> Callable[[Observation], float]:
        return lambda o: float(o.stage == i)

    def not_in_stage(i: int) -> Callable[[Observation], float]:
        return lambda o: float(o.stage != i)

    def channel(c: str) -> Callable[[Observation], float]:
        return lambda o: float(o.channels.get(c, 0))

    def signal(k: str) -> Callable[[Observation], float]:
        return lambda o: float(learned.signal_count(o, k)[0])

    smallest = min(len(r) for r in rows)
    stages = tuple(s for i, s in enumerate(STAGES)
                   if customers_with(in_stage(i)) >= MIN_SUPPORT and customers_with(not_in_stage(i)) >= MIN_SUPPORT)
    seen_channels: dict[str, int] = {}
    for o in observations:
        for c in o.channels:
            seen_channels[c] = seen_channels.get(c, 0) + 1
    varied = []
    for c, _k in sorted(seen_channels.items(), key=lambda kv: (-kv[1], kv[0])):
        shares = {round(o.channels.get(c, 0) / max(o.events, 1), 9) for o in observations}
        if customers_with(channel(c)) >= MIN_SUPPORT and len(shares) > 1:
            varied.append(c)
    channels = tuple(varied[:MAX_CHANNELS])
    kinds = sorted({k for o in observations for k, m in o.negatives.items() if m > 0}
                   | ({painpoints.CART_ABANDONED} if any(o.carts > 0 for o in observations) else set()))
    support = {k: customers_with(signal(k)) for k in kinds}
    signals = tuple(k for k in kinds if support[k] >= MIN_SUPPORT and smallest - support[k] >= MIN_SUPPORT)
    report = {
        "signals": {k: {"customers": m, "learned": k in signals} for k, m in support.items()},
        "stages": list(stages),
        "channels": list(channels),
    }
    spec = Spec(tuple(knots), stages, channels, signals, signal_window_days, float(window_days))
    return spec, report


# --------------------------------------------------------------------------------------------
# The regularised logistic fit


@dataclass(frozen=True)
class Fit:
    spec: Spec
    intercept: float
    weights: np.ndarray
    means: np.ndarray
    lam: float

    def z(self, X: np.ndarray) -> np.ndarray:
        out: np.ndarray = self.intercept + X @ self.weights
        return out

    def layer(self, shipped: str, a: float = 1.0, b: float = 0.0, fitted_on: dict[str, Any] | None = None) -> Layer:
        return Layer(self.spec, float(a * self.intercept + b), tuple(float(a * w) for w in self.weights),
                     tuple(float(m) for m in self.means), shipped, fitted_on or {})


def fit_logistic(spec: Spec, X: np.ndarray, y: np.ndarray, lam: float, drop: Sequence[str] = ()) -> Fit:
    """Ridge logistic regression: mean log-loss + lam * |scaled weights|^2, the weights of the
    features that grow with silence kept >= 0. Constant features and ``drop`` get weight 0."""
    from scipy.optimize import minimize  # the fit only: scoring never loads scipy

    names = spec.names
    mean = X.mean(axis=0)
    sd = X.std(axis=0)
    active = np.array([s > 1e-9 and n not in drop for n, s in zip(names, sd, strict=True)])
    scale = np.array([1.0 if learned.unscaled(n) else max(s, 1e-9) for n, s in zip(names, sd, strict=True)])
    cols = np.flatnonzero(active)
    Z = (X[:, cols] - mean[cols]) / scale[cols]
    yf = y.astype(float)
    n = len(yf)
    base = min(max(float(yf.mean()), 1e-6), 1 - 1e-6)

    def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = w[0] + Z @ w[1:]
        loss = float(np.sum(np.logaddexp(0.0, z) - yf * z)) / n + lam * float(w[1:] @ w[1:])
        r = (np.exp(-np.logaddexp(0.0, -z)) - yf) / n
        grad = np.concatenate([[r.sum()], Z.T @ r + 2 * lam * w[1:]])
        return loss, grad

    bounds = [(None, None)] + [((0.0, None) if learned.non_negative(names[j]) else (None, None)) for j in cols]
    w0 = np.zeros(len(cols) + 1)
    w0[0] = math.log(base / (1 - base))
    res = minimize(objective, w0, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": 5000})
    weights = np.zeros(len(names))
    weights[cols] = res.x[1:] / scale[cols]
    # Bounds hold on the scaled weights; scaling is positive, so they hold here too (clip -0.0).
    for j in cols:
        if learned.non_negative(names[j]):
            weights[j] = max(weights[j], 0.0)
    intercept = float(res.x[0] - np.sum(weights[cols] * mean[cols]))
    return Fit(spec, intercept, weights, mean, lam)


def fit_on(
    spec: Spec, training: Sequence[Rows], drop: Sequence[str] = ()
) -> tuple[Fit, dict[str, Any]]:
    """Fit on the training snapshots, the L2 strength chosen by a time split among them: fitted on
    the older snapshots, scored (AUC) on the newest. One snapshot only: the default strength."""
    choice: dict[str, Any] = {}
    if len(training) >= 2:
        newest, older = training[0], training[1:]
        X_old = np.vstack([design(spec, r) for r in older])
        y_old = np.concatenate([r.y for r in older])
        X_new = design(spec, newest)
        aucs = {}
        for lam in LAMBDAS:
            f = fit_logistic(spec, X_old, y_old, lam, drop)
            aucs[lam] = roc_auc(f.z(X_new), newest.y)
        lam = max(LAMBDAS, key=lambda v: (round(aucs[v], 4), v))  # ties: the stronger penalty
        choice = {"lambda": lam, "lambda_auc": {f"{k:g}": round(v, 4) for k, v in aucs.items()},
                  "lambda_split": f"fitted on {', '.join(day_text(r.day) for r in older)}, scored on {day_text(newest.day)}"}
    else:
        lam = DEFAULT_LAMBDA
        choice = {"lambda": lam, "lambda_split": "one training snapshot: default strength"}
    X = np.vstack([design(spec, r) for r in training])
    y = np.concatenate([r.y for r in training])
    return fit_logistic(spec, X, y, lam, drop), choice


def fit_platt(z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(a, b) of the one-feature logistic sigmoid(a z + b), a > 0 (it keeps the order): recency alone."""
    from scipy.optimize import minimize

    yf = y.astype(float)

    def objective(v: np.ndarray) -> tuple[float, np.ndarray]:
        s = v[0] * z + v[1]
        loss = float(np.mean(np.logaddexp(0.0, s) - yf * s))
        r = (np.exp(-np.logaddexp(0.0, -s)) - yf) / len(yf)
        return loss, np.array([float(r @ z), float(r.sum())])

    res = minimize(objective, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B", bounds=[(1e-3, 20.0), (None, None)])
    return float(res.x[0]), float(res.x[1])


# --------------------------------------------------------------------------------------------
# Measures


def sigmoid(z: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.exp(-np.logaddexp(0.0, -z))
    return out


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-9, 1 - 1e-9)
    out: np.ndarray = np.log(p / (1 - p))
    return out


def brier(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((p - y.astype(float)) ** 2))


def ece(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over deciles of the score: sum of |mean score - churn rate|
    weighted by the share of customers in the decile."""
    order = np.argsort(p, kind="mergesort")
    total = 0.0
    for part in np.array_split(order, bins):
        if len(part):
            total += len(part) / len(p) * abs(float(p[part].mean()) - float(y[part].mean()))
    return total


def precision_at(p: np.ndarray, y: np.ndarray, share: float = 0.1) -> float:
    """Churn rate among the ``share`` of customers with the highest scores."""
    k = max(int(math.ceil(share * len(p))), 1)
    top = np.argsort(-p, kind="mergesort")[:k]
    return float(y[top].mean())


def measures(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    return {"auc": roc_auc(p, y), "brier": brier(p, y), "ece": ece(p, y), "precision_top10": precision_at(p, y)}


# --------------------------------------------------------------------------------------------
# The whole validation


@dataclass
class Outcome:
    layer: Layer
    report: dict[str, Any]


def validate_and_fit(
    snapshots: Mapping[int, Rows],
    the_plan: Plan,
    *,
    horizon_days: float,
    signal_window_days: float,
    degenerate: bool,
    log: Callable[[str], None] = lambda _s: None,
) -> Outcome:
    """Validate every candidate out of time, choose what ships, fit it on the newest snapshots."""
    W = the_plan.window_days
    oot: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"bgnbd": [], "learned": [], "features": []}
    per_cut: list[dict[str, Any]] = []
    used_cuts: list[int] = []
    for cut in the_plan.cuts:
        target = snapshots[cut]
        training = [snapshots[d] for d in the_plan.training[cut] if snapshots[d].usable()]
        if not target.usable() or not training:
            log(f"  cut {day_text(cut)}: skipped ({len(target)} customers, {len(training)} usable training snapshots)")
            continue
        spec, _ = make_spec(training, W, signal_window_days)
        fit, choice = fit_on(spec, training)
        z = fit.z(design(spec, target))
        recency_fit = _recency_model(training)
        rec_p = recency_fit(target)
        rows = {
            "bgnbd": target.p,
            "recency": rec_p,
            "learned": sigmoid(z),
        }
        oot["bgnbd"].append((logit(target.p), target.y))
        oot["learned"].append((z, target.y))
        if degenerate:
            fspec = spec
            ffit, _ = fit_on(fspec, training, drop=(learned.BGNBD_LOG_ODDS,))
            fz = ffit.z(design(fspec, target))
            rows["features"] = sigmoid(fz)
            oot["features"].append((fz, target.y))
        entry = {"cut": day_text(cut), "customers": len(target), "churn_rate": round(float(target.y.mean()), 4),
                 "training": [day_text(r.day) for r in training], "lambda": choice["lambda"],
                 "bgnbd_degenerate": target.degenerate,
                 "measures": {k: _rounded(measures(v, target.y)) for k, v in rows.items()}}
        per_cut.append(entry)
        used_cuts.append(cut)
    if len(per_cut) < 2:
        raise ValidationSkipped(
            f"only {len(per_cut)} evaluation cut(s) had {MIN_ROWS}+ customers with {MIN_PER_LABEL}+ of each outcome "
            f"and a usable training snapshot; two are needed")

    # Selection: the learned score (or, with a degenerate BG/NBD, the better of it and the
    # features alone) against the plain BG/NBD probability, cut by cut.
    def gains(name: str) -> list[float]:
        return [c["measures"][name]["auc"] - c["measures"]["bgnbd"]["auc"] for c in per_cut]

    candidate = "learned"
    if degenerate and np.mean(gains("features")) > np.mean(gains("learned")):
        candidate = "features"
    g = gains(candidate)
    ships = float(np.mean(g)) >= MARGIN and min(g) >= -MARGIN
    label = {"learned": "the learned score", "features": "the learned score without the BG/NBD term"}[candidate]
    if ships:
        why = (f"{label} beats the plain BG/NBD probability out of time by a clear margin (AUC gain by cut "
               f"{', '.join(f'{v:+.3f}' for v in g)}: mean {np.mean(g):+.3f} >= {MARGIN}, none below -{MARGIN}): it ships")
    else:
        short = f"mean {np.mean(g):+.3f} < {MARGIN}" if np.mean(g) < MARGIN else f"a cut below -{MARGIN}"
        why = (f"{label} does not beat the plain BG/NBD probability out of time by a clear margin (AUC gain by cut "
               f"{', '.join(f'{v:+.3f}' for v in g)}: {short}): the plain BG/NBD probability ships, calibrated (below)")
    shipped = candidate if ships else "bgnbd"

    # Calibration, measured out of time like everything else. "anchor": shift the log-odds so the
    # mean score equals the BG/NBD fit's mean probability at the scoring date (a fit on what came
    # before it: it follows the base rate). No Platt map (a * z + b fitted on the cuts' scores):
    # the cuts' label windows overlap, so its error could only be measured with labels from a
    # cut's future, and would look better than it is.
    pairs = oot[shipped]
    anchored = [(z + anchor_shift(z, snapshots[cut].p), y) for (z, y), cut in zip(pairs, used_cuts, strict=True)]
    options: dict[str, list[np.ndarray]] = {
        "none": [sigmoid(z) for z, _ in pairs],
        "anchor": [sigmoid(z) for z, _ in anchored],
    }
    errors = {k: float(np.mean([ece(p, y) for p, (_z, y) in zip(v, pairs, strict=True)])) for k, v in options.items()}
    method = min(options, key=lambda k: (round(errors[k], 4), len(k)))  # ties: the simpler one
    measured = ", ".join(f"{k} {v:.3f}" for k, v in errors.items())
    calibration_why = (f"{CALIBRATION_NAMES[method]}: the lowest out-of-time ECE of {measured} "
                       "(no Platt map: it could only be measured with labels from a cut's future)")
    if W != round(horizon_days):
        # Fitted on W-day labels: only the anchor (to the BG/NBD probability within H at the end
        # of the history) makes the shipped score the H-day probability it is named as.
        method = "anchor"
        calibration_why = (f"{CALIBRATION_NAMES[method]}, which carries the {W}-day score to the {horizon_days:g}-day "
                           f"level (out-of-time ECE of the {W}-day score: {measured})")
    for entry, p, (_z, y) in zip(per_cut, options[method], pairs, strict=True):
        entry["measures"]["shipped"] = _rounded(measures(p, y))
    calibration = {"method": method, "a": 1.0, "b": 0.0, "ece": {k: round(v, 4) for k, v in errors.items()},
                   "why": calibration_why}

    # The shipped layer, fitted on the newest snapshots.
    final_rows = [snapshots[d] for d in the_plan.final if snapshots[d].usable()]
    if not final_rows:
        raise ValidationSkipped(f"none of the newest snapshots ({', '.join(day_text(d) for d in the_plan.final)}) has "
                                f"{MIN_ROWS}+ customers with {MIN_PER_LABEL}+ of each outcome to fit the shipped layer on")
    spec, spec_report = make_spec(final_rows, W, signal_window_days)
    if shipped == "bgnbd":
        fit = Fit(spec, 0.0, _only(spec, learned.BGNBD_LOG_ODDS), _means(spec, final_rows), 0.0)
        final_choice: dict[str, Any] = {"lambda": None, "lambda_split": "plain BG/NBD: nothing fitted"}
    else:
        drop = (learned.BGNBD_LOG_ODDS,) if shipped == "features" else ()
        fit, final_choice = fit_on(spec, final_rows, drop)
    shift = 0.0
    if method.startswith("anchor"):
        # The level of the shipped score: the BG/NBD mean probability within H at the end of the history.
        end = snapshots[the_plan.until]
        shift = anchor_shift(fit.z(design(spec, end)), end.p_h)
        calibration["anchor_shift"] = round(shift, 6)
    fit = Fit(fit.spec, fit.intercept + shift, fit.weights, fit.means, fit.lam)
    table = _table(per_cut)
    report = {
        "label_window_days": W,
        "horizon_days": horizon_days,
        "note": the_plan.note,
        "cuts": per_cut,
        "table": table,
        "selection": {"shipped": shipped, "candidate": candidate, "margin": MARGIN,
                      "auc_gain": [round(v, 4) for v in g], "rule": f"mean gain >= {MARGIN}, every cut >= -{MARGIN}",
                      "why": why},
        "calibration": calibration,
        "final": {"training": [day_text(r.day) for r in final_rows], **final_choice},
        "features": spec_report,
        "degenerate_bgnbd": degenerate,
    }
    layer = fit.layer(shipped, fitted_on={"validation": report})
    report["effects"] = effects(layer)
    return Outcome(layer, report)


CALIBRATION_NAMES = {
    "none": "no calibration map",
    "anchor": "anchored to the BG/NBD mean probability at the scoring date",
}


def anchor_shift(z: np.ndarray, p: np.ndarray) -> float:
    """The shift b with mean(sigmoid(z + b)) = mean(p) (bisection: the mean rises with b)."""
    target = float(np.mean(p))
    lo, hi = -30.0, 30.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if float(np.mean(sigmoid(z + mid))) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def effects(layer: Layer) -> dict[str, float]:
    """The layer's weights by feature (log-odds per unit), zeros left out."""
    return {n: round(w, 6) for n, w in zip(layer.spec.names, layer.weights, strict=True) if w != 0.0}


def _only(spec: Spec, name: str) -> np.ndarray:
    w = np.zeros(len(spec.names))
    w[spec.names.index(name)] = 1.0
    return w


def _means(spec: Spec, rows: Sequence[Rows]) -> np.ndarray:
    out: np.ndarray = np.vstack([design(spec, r) for r in rows]).mean(axis=0)
    return out


def _recency_model(training: Sequence[Rows]) -> Callable[[Rows], np.ndarray]:
    """Recency alone as a probability: a logistic on log1p(weeks since the last purchase)."""
    x = np.concatenate([np.log1p((r.t_days - r.span) / 7.0) for r in training])
    y = np.concatenate([r.y for r in training])
    a, b = fit_platt((x - x.mean()) / max(float(x.std()), 1e-9), y)
    mu, sd = float(x.mean()), max(float(x.std()), 1e-9)
    return lambda rows: sigmoid(a * (np.log1p((rows.t_days - rows.span) / 7.0) - mu) / sd + b)


ROW_NAMES = {
    "bgnbd": "plain BG/NBD P(no purchase within W)",
    "recency": "recency alone",
    "learned": "learned (uncalibrated)",
    "features": "learned without BG/NBD (features alone)",
    "shipped": "shipped score",
}


def _table(per_cut: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for key in ("bgnbd", "recency", "learned", "features", "shipped"):
        if key not in per_cut[0]["measures"]:
            continue
        mean = {m: float(np.mean([c["measures"][key][m] for c in per_cut])) for m in ("auc", "brier", "ece", "precision_top10")}
        rows.append({"model": key, "name": ROW_NAMES[key], **_rounded(mean),
                     "by_cut": {c["cut"]: c["measures"][key]["auc"] for c in per_cut}})
    return rows


def format_table(report: Mapping[str, Any]) -> list[str]:
    """The validation table as text lines (what `journey churn fit` and the benchmark print)."""
    cuts = report["cuts"]
    W = report["label_window_days"]
    lines = [
        f"out-of-time validation: label = no purchase within {W} days after the cut; "
        f"cuts {', '.join(c['cut'] for c in cuts)} ({', '.join(str(c['customers']) for c in cuts)} customers, "
        f"churn {', '.join(format(c['churn_rate'], '.0%') for c in cuts)}); each fitted on the snapshots before it",
    ]
    if report.get("note"):
        lines.append(f"  note: {report['note']}")
    head = f"  {'model':<42}{'AUC':>7}{'Brier':>8}{'ECE':>7}{'prec@10%':>10}   AUC by cut"
    lines.append(head)
    for row in report["table"]:
        name = row["name"]
        if row["model"] == "shipped":
            method = report["calibration"]["method"]
            name = f"shipped: {report['selection']['shipped']}" + ("" if method == "none" else f" ({method})")
        by_cut = " ".join(f"{v:.3f}" for v in row["by_cut"].values())
        lines.append(f"  {name:<42}{row['auc']:>7.3f}{row['brier']:>8.3f}{row['ece']:>7.3f}{row['precision_top10']:>10.3f}   {by_cut}")
    if report.get("degenerate_bgnbd"):
        lines.append("  BG/NBD is degenerate (dropout -> 0): the plain row is its NBD limit (no dropout), and the learned "
                     "score was also tried without the BG/NBD term (features alone)")
    lines.append(f"  selection: {report['selection']['why']}")
    lines.append(f"  calibration: {report['calibration']['why']}")
    return lines


def _rounded(d: Mapping[str, float]) -> dict[str, float]:
    return {k: round(float(v), 4) for k, v in d.items()}


def day_text(day: int) -> str:
    return date.fromordinal(day + date(1970, 1, 1).toordinal()).isoformat()
