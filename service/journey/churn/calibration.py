"""Backtest calibration of the BG/NBD churn score: a small logistic layer learned in the past.

BG/NBD ranks customers of different purchase frequencies against each other worse than it ranks
them within one frequency. This layer corrects that the way a forecaster would check it: replay
the model on the history we have, inside the training history only. Details: docs/churn-model.md.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from journey.churn import bgnbd
from journey.errors import ChurnError

FEATURES = ("log_odds_bgnbd", "log1p_recency", "log1p_repeat_days", "log1p_mean_order_value")
#: Features whose weight must be >= 0 (they grow while the customer is silent).
NON_NEGATIVE = (True, True, False, False)
#: Fewest customers, and fewest of each label, the backtest needs to be worth trusting.
MIN_CUSTOMERS = 200
MIN_PER_LABEL = 20
#: Ridge penalty on the standardized weights: keeps a constant feature (e.g. no amounts in
#: the data) at zero instead of letting it drift.
L2 = 1e-3
_EPS = 1e-9


class CalibrationError(ChurnError):
    """The backtest cannot be run on this history, or a stored calibration is unusable."""


@dataclass(frozen=True)
class Calibration:
    intercept: float
    weights: tuple[float, ...]
    horizon_days: float
    fitted_on: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if len(self.weights) != len(FEATURES) or not all(math.isfinite(w) for w in (self.intercept, *self.weights)):
            raise CalibrationError(
                f"calibration needs a finite intercept and {len(FEATURES)} finite weights "
                f"({', '.join(FEATURES)}); got {self.intercept!r}, {self.weights!r}. "
                f"Re-create the params file with `journey churn fit`"
            )
        for name, w, nonneg in zip(FEATURES, self.weights, NON_NEGATIVE, strict=True):
            if nonneg and w < 0:
                raise CalibrationError(f"calibration weight of {name} is {w} < 0: the score would fall with silence")

    @property
    def version(self) -> str:
        payload = json.dumps([float(self.intercept), [float(w) for w in self.weights], float(self.horizon_days)])
        return "cal-" + hashlib.sha256(payload.encode()).hexdigest()[:8]

    def apply(self, p_no_purchase: float, x: float, recency: float, mean_value: float) -> float:
        z = self.intercept
        for w, f in zip(self.weights, features(p_no_purchase, x, recency, mean_value), strict=True):
            z += w * f
        return _sigmoid(z)

    def apply_batch(self, p: np.ndarray, x: np.ndarray, recency: np.ndarray, mean_value: np.ndarray) -> np.ndarray:
        z = self.intercept + features_batch(p, x, recency, mean_value) @ np.asarray(self.weights)
        out: np.ndarray = np.exp(-np.logaddexp(0.0, -z))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "backtest-logistic",
            "features": list(FEATURES),
            "intercept": self.intercept,
            "weights": list(self.weights),
            "horizon_days": self.horizon_days,
            "fitted_on": self.fitted_on,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        if not isinstance(data, Mapping) or list(data.get("features") or []) != list(FEATURES):
            raise CalibrationError(
                f"calibration must list features {list(FEATURES)}; got "
                f"{data.get('features') if isinstance(data, Mapping) else data!r}. "
                f"Re-create the params file with `journey churn fit`"
            )
        try:
            return cls(
                intercept=float(data["intercept"]),
                weights=tuple(float(w) for w in data["weights"]),
                horizon_days=float(data["horizon_days"]),
                fitted_on=dict(data.get("fitted_on") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CalibrationError(f"calibration is missing or has a bad {exc}; re-create it with `journey churn fit`") from None


def features(p_no_purchase: float, x: float, recency: float, mean_value: float) -> tuple[float, float, float, float]:
    """The calibration features of one customer (recency in model time units)."""
    p = min(max(p_no_purchase, _EPS), 1.0 - _EPS)
    return (
        math.log(p / (1.0 - p)),
        math.log1p(max(recency, 0.0)),
        math.log1p(max(x, 0.0)),
        math.log1p(max(mean_value, 0.0)),
    )


def features_batch(p: np.ndarray, x: np.ndarray, recency: np.ndarray, mean_value: np.ndarray) -> np.ndarray:
    """Numpy twin of :func:`features`: one row per customer."""
    p = np.clip(np.asarray(p, dtype=float), _EPS, 1.0 - _EPS)
    return np.column_stack(
        [
            np.log(p / (1.0 - p)),
            np.log1p(np.maximum(np.asarray(recency, dtype=float), 0.0)),
            np.log1p(np.maximum(np.asarray(x, dtype=float), 0.0)),
            np.log1p(np.maximum(np.asarray(mean_value, dtype=float), 0.0)),
        ]
    )


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


# --------------------------------------------------------------------------------------------
# The backtest


@dataclass(frozen=True)
class Order:
    customer_id: Hashable
    #: Event time, epoch seconds.
    ts: float
    amount: float


def customer_summaries(
    orders: Sequence[Order], until_day: int, time_unit_days: float
) -> tuple[list[Hashable], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ids, x, t_x, T, mean order value) of the customers with an order on or before ``until_day``."""
    ids, x, t_x, T = bgnbd.summaries(
        ((o.customer_id, o.ts) for o in orders if bgnbd.utc_day(o.ts) <= until_day),
        until=until_day * bgnbd.SECONDS_PER_DAY,
        time_unit_days=time_unit_days,
    )
    totals: dict[Hashable, list[float]] = {}
    for o in orders:
        if bgnbd.utc_day(o.ts) <= until_day:
            t = totals.setdefault(o.customer_id, [0.0, 0])
            t[0] += o.amount
            t[1] += 1
    mean_value = np.array([totals[c][0] / totals[c][1] for c in ids])
    return ids, x, t_x, T, mean_value


def fit_calibration(
    orders: Sequence[Order],
    *,
    until_day: int,
    time_unit_days: float,
    horizon_days: float,
) -> tuple[Calibration, dict[str, Any]]:
    """Run the backtest described in the module docstring; return the calibration and a report."""
    if not orders:
        raise CalibrationError("no purchases to calibrate on")
    first_day = min(bgnbd.utc_day(o.ts) for o in orders)
    span = until_day - first_day
    window = int(min(horizon_days, span // 2))
    if window < 7:
        raise CalibrationError(
            f"the history before {until_day} has {span} days of purchases; the backtest needs at least "
            f"14 (a cut and a label window of 7+ days each). The score stays the plain BG/NBD probability"
        )
    cut = until_day - window
    ids, x, t_x, T, mean_value = customer_summaries(orders, cut, time_unit_days)
    later = {o.customer_id for o in orders if cut < bgnbd.utc_day(o.ts) <= until_day}
    y = np.array([c not in later for c in ids], dtype=float)
    n_pos = int(y.sum())
    if len(ids) < MIN_CUSTOMERS or min(n_pos, len(ids) - n_pos) < MIN_PER_LABEL:
        raise CalibrationError(
            f"the backtest cut at day {cut} has {len(ids)} customers ({n_pos} without a later purchase); "
            f"it needs {MIN_CUSTOMERS}+ with {MIN_PER_LABEL}+ of each outcome. Use a longer history"
        )
    inner = bgnbd.fit(x, t_x, T)
    H = horizon_days / time_unit_days
    p = bgnbd.p_no_purchase_within_batch(inner.params, x, t_x, T, H)
    X = features_batch(p, x, T - t_x, mean_value)
    intercept, weights = _logistic(X, y)
    calibration = Calibration(
        intercept=intercept,
        weights=tuple(weights),
        horizon_days=float(horizon_days),
        fitted_on={
            "cut_day": _day_text(cut),
            "until": _day_text(until_day),
            "label_window_days": window,
            "customers": len(ids),
            "no_purchase_share": round(n_pos / len(ids), 4),
            "inner_bgnbd": inner.params.to_dict(),
            "inner_bgnbd_degenerate": inner.degenerate,
        },
    )
    report = {
        "cut_day": _day_text(cut),
        "label_window_days": window,
        "customers": len(ids),
        "backtest_auc_bgnbd": roc_auc(p, y),
        "backtest_auc_calibrated": roc_auc(calibration.apply_batch(p, x, T - t_x, mean_value), y),
    }
    return calibration, report


def _logistic(X: np.ndarray, y: np.ndarray) -> tuple[float, list[float]]:
    from scipy.optimize import minimize  # the fit only: scoring never loads scipy

    mean = X.mean(axis=0)
    sd = X.std(axis=0)
    sd[sd < 1e-12] = 1.0  # a constant feature: its weight stays 0 under the ridge
    Z = np.column_stack([np.ones(len(X)), (X - mean) / sd])
    n = len(y)

    def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = Z @ w
        loss = float(np.sum(np.logaddexp(0.0, z) - y * z)) / n + L2 * float(w[1:] @ w[1:])
        grad = Z.T @ (1.0 / (1.0 + np.exp(-z)) - y) / n
        grad[1:] += 2 * L2 * w[1:]
        return loss, grad

    bounds = [(None, None)] + [((0.0, None) if nonneg else (None, None)) for nonneg in NON_NEGATIVE]
    res = minimize(objective, np.zeros(Z.shape[1]), jac=True, method="L-BFGS-B", bounds=bounds)
    w = res.x[1:] / sd  # back to raw features; positive scaling keeps the signs
    intercept = float(res.x[0] - np.sum(w * mean))
    return intercept, [float(v) for v in w]


def roc_auc(scores: Iterable[float], labels: Iterable[bool]) -> float:
    """ROC AUC (Mann-Whitney U, ties at half): the chance a positive outranks a negative."""
    s = np.asarray(list(scores) if not isinstance(scores, np.ndarray) else scores, dtype=float)
    y = np.asarray(list(labels) if not isinstance(labels, np.ndarray) else labels, dtype=bool)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both positive and negative labels")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(len(s))
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    for a, b in zip(starts, ends, strict=True):
        ranks[order[a:b]] = (a + 1 + b) / 2.0
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _day_text(day: int) -> str:
    from datetime import date

    return date.fromordinal(day + date(1970, 1, 1).toordinal()).isoformat()
