"""The BG/NBD churn model: likelihood, fit, scoring, RFM summaries and the params file.

The churn risk of customers who have purchased rests on this model (Fader, Hardie & Lee 2005).
The offline fit (``journey churn fit``) is kept apart from the per-customer scoring so the
worker's hot path needs only ``math`` and never loads scipy. Details: docs/churn-model.md.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np

from journey.errors import ChurnError

MODEL_NAME = "bgnbd"
SECONDS_PER_DAY = 86_400
PARAM_NAMES = ("r", "alpha", "a", "b")

#: Default box for every parameter (same units as the fit). Wide enough for any real data set
#: in days or weeks; a parameter that ends on an edge marks a degenerate fit.
DEFAULT_BOUNDS: Mapping[str, tuple[float, float]] = {
    "r": (1e-4, 1e4),
    "alpha": (1e-4, 1e6),
    "a": (1e-4, 1e4),
    "b": (1e-4, 1e4),
}

#: Mean dropout probability per repeat purchase, a/(a+b), below which the fit is called
#: degenerate: at 1e-3 a customer makes ~1000 repeat purchases before dropping out, i.e. the
#: model has stopped believing in churn at all.
DEGENERATE_DROPOUT = 1e-3


class ChurnParamsError(ChurnError):
    """A churn params file (or dict) cannot be used."""


# --------------------------------------------------------------------------------------------
# Parameters


@dataclass(frozen=True)
class BGNBDParams:
    """The four BG/NBD parameters; ``alpha`` is in the time unit the model was fitted in."""

    r: float
    alpha: float
    a: float
    b: float
    #: log(a), a hot-path constant computed once per params object (no effect on == or repr).
    log_a: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in PARAM_NAMES:
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ChurnParamsError(
                    f"BG/NBD parameter {name}={value!r} must be a finite number > 0; "
                    f"re-fit the model (`journey churn fit`) or fix the params file"
                )
        object.__setattr__(self, "log_a", math.log(self.a))

    def to_dict(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in PARAM_NAMES}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BGNBDParams:
        missing = [name for name in PARAM_NAMES if name not in data]
        if missing:
            raise ChurnParamsError(
                f"BG/NBD parameters {', '.join(missing)} are missing (got keys {sorted(data)}); "
                f"a params file needs r, alpha, a and b"
            )
        return cls(**{name: _as_float(name, data[name]) for name in PARAM_NAMES})


@dataclass(frozen=True)
class ChurnParams:
    """What the params file holds: the model, its time unit and where it came from."""

    params: BGNBDParams
    time_unit_days: float
    version: str = ""
    fitted_on: dict[str, Any] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.time_unit_days) and self.time_unit_days > 0):
            raise ChurnParamsError(
                f"time_unit_days={self.time_unit_days!r} must be a number of days > 0 "
                f"(7 for weeks, 1 for days)"
            )
        if not self.version:
            object.__setattr__(self, "version", params_version(self.params, self.time_unit_days))

    @property
    def unit_seconds(self) -> float:
        """Seconds in one model time unit: divide durations in seconds by this."""
        return self.time_unit_days * SECONDS_PER_DAY

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": MODEL_NAME,
            "version": self.version,
            "time_unit_days": self.time_unit_days,
            **self.params.to_dict(),
            "fitted_on": self.fitted_on,
            "diagnostics": self.diagnostics,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChurnParams:
        if not isinstance(data, Mapping):
            raise ChurnParamsError(f"churn params must be a JSON object, got {type(data).__name__}")
        model = data.get("model")
        if model != MODEL_NAME:
            raise ChurnParamsError(
                f"churn params declare model={model!r}; this worker only scores {MODEL_NAME!r}"
            )
        if "time_unit_days" not in data:
            raise ChurnParamsError(
                "churn params lack time_unit_days (7 = weeks, 1 = days); without it the "
                "parameters cannot be applied to event times"
            )
        return cls(
            params=BGNBDParams.from_dict(data),
            time_unit_days=_as_float("time_unit_days", data["time_unit_days"]),
            version=str(data.get("version") or ""),
            fitted_on=dict(data.get("fitted_on") or {}),
            diagnostics=dict(data.get("diagnostics") or {}),
        )


def params_version(params: BGNBDParams, time_unit_days: float) -> str:
    """A short, stable hash of the values: two files with the same numbers share a version."""
    payload = json.dumps({**params.to_dict(), "time_unit_days": float(time_unit_days)}, sort_keys=True)
    return f"{MODEL_NAME}-{hashlib.sha256(payload.encode()).hexdigest()[:10]}"


def save_params(path: str | Path, churn: ChurnParams) -> Path:
    """Write ``churn`` as JSON to ``path`` (parent folders created) and return the path."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(churn.to_dict(), indent=2, sort_keys=False) + "\n", encoding="utf-8")
    except OSError as exc:
        raise ChurnParamsError(
            f"cannot write churn params to {path}: {exc.strerror or exc}; "
            f"choose a writable path"
        ) from exc
    return path


def load_params(path: str | Path) -> ChurnParams:
    """Read a params file written by :func:`save_params` (``journey churn fit``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ChurnParamsError(
            f"churn params file {path} does not exist; run `journey churn fit` to create it "
            f"or point the worker at schemas/churn-params.json"
        ) from None
    except OSError as exc:
        raise ChurnParamsError(f"cannot read churn params file {path}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ChurnParamsError(
            f"churn params file {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
            f"{exc.msg}); re-create it with `journey churn fit`"
        ) from None
    try:
        return ChurnParams.from_dict(data)
    except ChurnParamsError as exc:
        raise ChurnParamsError(f"churn params file {path}: {exc}") from None


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ChurnParamsError(f"{name}={value!r} must be a number")
    return float(value)


# --------------------------------------------------------------------------------------------
# Likelihood and fit (numpy/scipy)


def log_likelihood(
    params: BGNBDParams | tuple[float, float, float, float],
    x: np.ndarray,
    t_x: np.ndarray,
    T: np.ndarray,
) -> np.ndarray:
    """Per-customer BG/NBD log-likelihood (FHL 2005, eq. 6), vectorized.

    L = B(a, b+x)/B(a, b) * G(r+x) a^r / (G(r) (alpha+T)^(r+x))
        + [x > 0] B(a+1, b+x-1)/B(a, b) * G(r+x) alpha^r / (G(r) (alpha+t_x)^(r+x));
    the two terms are combined with log-sum-exp so that neither under- nor overflows.
    """
    from scipy.special import betaln, gammaln

    if isinstance(params, BGNBDParams):
        r, alpha, a, b = params.r, params.alpha, params.a, params.b
    else:
        r, alpha, a, b = params
    x = np.asarray(x, dtype=float)
    t_x = np.asarray(t_x, dtype=float)
    T = np.asarray(T, dtype=float)
    common = gammaln(r + x) - gammaln(r) + r * np.log(alpha) - betaln(a, b)
    still_alive = betaln(a, b + x) - (r + x) * np.log(alpha + T)
    has_repeat = x > 0
    # betaln(a+1, b-1) is undefined for x == 0 (and b <= 1); the term is absent there anyway.
    dropped = np.where(
        has_repeat,
        betaln(a + 1.0, np.where(has_repeat, b + x - 1.0, 1.0)) - (r + x) * np.log(alpha + t_x),
        -np.inf,
    )
    out: np.ndarray = common + np.logaddexp(still_alive, dropped)
    return out


@dataclass(frozen=True)
class FitResult:
    params: BGNBDParams
    log_likelihood: float
    converged: bool
    degenerate: bool
    message: str
    n_customers: int = 0
    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)

    def diagnostics(self) -> dict[str, Any]:
        return {
            "log_likelihood": self.log_likelihood,
            "converged": self.converged,
            "degenerate": self.degenerate,
            "message": self.message,
            "n_customers": self.n_customers,
            "mean_dropout_probability": self.params.a / (self.params.a + self.params.b),
            "bounds": {k: list(v) for k, v in self.bounds.items()},
        }


def fit(
    x: np.ndarray,
    t_x: np.ndarray,
    T: np.ndarray,
    *,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    starts: Iterable[BGNBDParams] = (),
    quick: bool = False,
) -> FitResult:
    """Maximum-likelihood BG/NBD fit with every parameter kept inside ``bounds``.

    L-BFGS-B over log-parameters, with the analytic gradient, from several starting points (and
    any ``starts`` given, e.g. a neighbouring fit; ``quick``: those and one default start only);
    the best optimum wins. Customers with the
    same (x, t_x, T) are counted once with a weight, which changes nothing but the speed. The
    result always holds usable (bounded) params. ``degenerate`` is set when the optimum sits on
    a bound or the mean dropout probability a/(a+b) has collapsed towards zero: that happens
    when the data show no customer dropping out, so the likelihood keeps rising as p -> 0.
    """
    from scipy.optimize import minimize

    x, t_x, T = _check_summaries(x, t_x, T)
    box = {**DEFAULT_BOUNDS, **(bounds or {})}
    for name, (lo, hi) in box.items():
        if name not in PARAM_NAMES or not (0 < lo < hi and math.isfinite(hi)):
            raise ValueError(
                f"bounds[{name!r}]=({lo}, {hi}) is not usable: names are {PARAM_NAMES} and each "
                f"bound needs 0 < low < high < inf"
            )
    log_box = [(math.log(box[n][0]), math.log(box[n][1])) for n in PARAM_NAMES]
    n = len(x)
    rows, weight = np.unique(np.column_stack([x, t_x, T]), axis=0, return_counts=True)
    ux, ut_x, uT = rows[:, 0], rows[:, 1], rows[:, 2]
    weight = weight.astype(float)

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = _neg_log_likelihood_and_gradient(np.exp(theta), ux, ut_x, uT, weight)
        value /= n
        # Outside the numerically safe region return a large finite value so L-BFGS-B backs off.
        if not (math.isfinite(value) and np.all(np.isfinite(grad))):
            return 1e300, np.zeros(4)
        return value, grad / n

    best = None
    defaults = _starting_points(x, T)
    points = [tuple(p.to_dict()[k] for k in PARAM_NAMES) for p in starts] + (defaults[:1] if quick else defaults)
    for start in points:
        theta0 = np.clip(np.log(start), [lo for lo, _ in log_box], [hi for _, hi in log_box])
        res = minimize(objective, theta0, jac=True, method="L-BFGS-B", bounds=log_box, options={"maxiter": 2000})
        if best is None or res.fun < best.fun:
            best = res
    assert best is not None
    r, alpha, a, b = (float(v) for v in np.exp(best.x))
    # exp(log(bound)) can land a hair outside the box; clamp so the params are exactly usable.
    values = {n: min(max(v, box[n][0]), box[n][1]) for n, v in zip(PARAM_NAMES, (r, alpha, a, b), strict=True)}
    params = BGNBDParams(**values)
    degenerate, why = _degeneracy(params, box)
    if not degenerate and float(np.max(T)) <= 0.0:
        # Nobody has been observed for any time since their first purchase: the likelihood is flat
        # in the rate, so the optimum is wherever the search stopped.
        degenerate, why = True, (
            "degenerate BG/NBD fit: every customer's first purchase is on the last day of the history (T = 0 for "
            "all), so the data say nothing about purchase rates or dropout and the parameters are arbitrary. Fit on "
            "a history that goes on after the first purchases (an --until later than them)")
    converged = bool(best.success)
    if degenerate:
        message = why
    elif converged:
        message = f"converged: {best.message}"
    else:
        message = f"optimizer stopped before converging ({best.message}); the params are the best found"
    return FitResult(
        params=params,
        log_likelihood=float(np.sum(log_likelihood(params, x, t_x, T))),
        converged=converged,
        degenerate=degenerate,
        message=message,
        n_customers=n,
        bounds={k: (float(lo), float(hi)) for k, (lo, hi) in box.items()},
    )


def _neg_log_likelihood_and_gradient(
    theta: np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray, weight: np.ndarray
) -> tuple[float, np.ndarray]:
    """-sum(weight * LL) and its gradient with respect to the log-parameters.

    LL = common + logaddexp(A, B) (see :func:`log_likelihood`), with
    d common = (psi(r+x) - psi(r) + log alpha, r/alpha, psi(a+b) - psi(a), psi(a+b) - psi(b)),
    d A      = (-log(alpha+T), -(r+x)/(alpha+T), psi(a) - psi(a+b+x), psi(b+x) - psi(a+b+x)),
    d B      = (-log(alpha+t_x), -(r+x)/(alpha+t_x), psi(a+1) - psi(a+b+x), psi(b+x-1) - psi(a+b+x)),
    each term weighted by its share of exp(LL - common); d/d log(v) = v d/dv.
    """
    from scipy.special import betaln, digamma, gammaln

    r, alpha, a, b = (float(v) for v in theta)
    has_repeat = x > 0
    log_aT = np.log(alpha + T)
    log_atx = np.log(alpha + t_x)
    common = gammaln(r + x) - gammaln(r) + r * math.log(alpha) - betaln(a, b)
    A = betaln(a, b + x) - (r + x) * log_aT
    bx1 = np.where(has_repeat, b + x - 1.0, 1.0)
    B = np.where(has_repeat, betaln(a + 1.0, bx1) - (r + x) * log_atx, -np.inf)
    lse = np.logaddexp(A, B)
    ll = common + lse
    wA = np.exp(A - lse)
    wB = np.where(has_repeat, np.exp(B - lse), 0.0)
    psi_abx = digamma(a + b + x)
    d_r = digamma(r + x) - digamma(r) + math.log(alpha) - wA * log_aT - wB * log_atx
    d_alpha = r / alpha - wA * (r + x) / (alpha + T) - wB * (r + x) / (alpha + t_x)
    psi_ab = float(digamma(a + b))
    d_a = psi_ab - float(digamma(a)) + wA * (float(digamma(a)) - psi_abx) + wB * (float(digamma(a + 1.0)) - psi_abx)
    d_b = psi_ab - float(digamma(b)) + wA * (digamma(b + x) - psi_abx) + wB * (digamma(bx1) - psi_abx)
    grad = -np.array([r * (weight @ d_r), alpha * (weight @ d_alpha), a * (weight @ d_a), b * (weight @ d_b)])
    return -float(weight @ ll), grad


def _starting_points(x: np.ndarray, T: np.ndarray) -> list[tuple[float, float, float, float]]:
    # alpha is a time scale (rate = r/alpha), so tie its starts to the observed purchase rate.
    rate = max(float(np.sum(x)) / max(float(np.sum(T)), 1e-9), 1e-6)
    points = []
    for r in (0.5, 2.0):
        for a, b in ((1.0, 3.0), (0.2, 0.2), (5.0, 1.0)):
            points.append((r, r / rate, a, b))
    return points


def _degeneracy(params: BGNBDParams, box: Mapping[str, tuple[float, float]]) -> tuple[bool, str]:
    at_bound = []
    for name in PARAM_NAMES:
        lo, hi = box[name]
        value = getattr(params, name)
        # Within 1% (in log terms) of an edge counts as "ended on the bound".
        if math.log(value) - math.log(lo) < 0.01:
            at_bound.append(f"{name} hit its lower bound {lo:g}")
        elif math.log(hi) - math.log(value) < 0.01:
            at_bound.append(f"{name} hit its upper bound {hi:g}")
    dropout = params.a / (params.a + params.b)
    if not at_bound and dropout >= DEGENERATE_DROPOUT:
        return False, ""
    reasons = at_bound + ([f"mean dropout probability a/(a+b)={dropout:.3g}"] if dropout < DEGENERATE_DROPOUT else [])
    return True, (
        "degenerate BG/NBD fit: " + "; ".join(reasons) + ". The likelihood keeps rising as the "
        "dropout probability goes to zero (or a parameter runs off to a limit), which means the "
        "data show (almost) no customer dropping out, e.g. the calibration period is too short "
        "or everyone is still buying. The parameters are clamped to the bounds, so the scores "
        "remain usable: P(alive) is close to 1 and p_no_purchase_within is driven by the "
        "purchase-rate term (time since first purchase and the repeat count). Re-fit on a "
        "longer history to get a real dropout estimate."
    )


def _check_summaries(x: Any, t_x: Any, T: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
    if not (x.shape == t_x.shape == T.shape and x.ndim == 1):
        raise ValueError(f"x, t_x and T must be 1-D and equally long; got shapes {x.shape}, {t_x.shape}, {T.shape}")
    if len(x) == 0:
        raise ValueError("no customers to fit: x, t_x and T are empty (is the calibration period empty?)")
    bad = ~(np.isfinite(x) & np.isfinite(t_x) & np.isfinite(T) & (x >= 0) & (t_x >= 0) & (t_x <= T))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"customer #{i} has x={x[i]}, t_x={t_x[i]}, T={T[i]}; need finite values with "
            f"x >= 0 and 0 <= t_x <= T ({int(bad.sum())} such rows)"
        )
    return x, t_x, T


# --------------------------------------------------------------------------------------------
# Scoring: scalar (math only, hot path) and batch (numpy)


def p_alive(params: BGNBDParams, x: float, t_x: float, T: float) -> float:
    """P(still alive at T | x, t_x, T) = 1 / (1 + [x>0] a/(b+x-1) ((alpha+T)/(alpha+t_x))^(r+x)).

    1 for ``x == 0``: in BG/NBD a customer can only drop out right after a repeat purchase.
    """
    if x <= 0:
        return 1.0
    if not 0.0 <= t_x <= T:
        raise ValueError(f"need 0 <= t_x <= T, got t_x={t_x}, T={T} (same time unit as the params)")
    alpha = params.alpha
    # Log-odds of "dropped out" vs "alive"; evaluated in logs so large x or T cannot overflow.
    z = params.log_a - math.log(params.b + x - 1.0) + (params.r + x) * math.log((alpha + T) / (alpha + t_x))
    if z > 0.0:
        e = math.exp(-z)
        return e / (1.0 + e)
    return 1.0 / (1.0 + math.exp(z))


def p_no_purchase_within(params: BGNBDParams, x: float, t_x: float, T: float, H: float) -> float:
    """P(no purchase in (T, T+H]) = (1 - P(alive)) + P(alive) ((alpha+T)/(alpha+T+H))^(r+x).

    The churn-risk score. Given alive at T, the rate's posterior is Gamma(r+x, alpha+T) and a
    living customer cannot drop out without buying first, so the second term is exact. For
    ``x == 0`` P(alive) = 1 and the score comes from the second term alone.
    """
    if H < 0.0 or T < 0.0:
        raise ValueError(f"need horizon H >= 0 and T >= 0, got H={H}, T={T} (same time unit as the params)")
    alpha_T = params.alpha + T
    quiet = math.exp(-(params.r + x) * math.log1p(H / alpha_T))
    if x <= 0:
        return quiet
    alive = p_alive(params, x, t_x, T)
    return (1.0 - alive) + alive * quiet


def p_alive_batch(params: BGNBDParams, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Numpy twin of :func:`p_alive` over arrays of customers."""
    x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
    has_repeat = x > 0
    denom = np.where(has_repeat, params.b + x - 1.0, 1.0)
    z = np.log(params.a / denom) + (params.r + x) * np.log((params.alpha + T) / (params.alpha + t_x))
    # 1/(1+exp(z)) written as a stable logistic of -z.
    alive = np.exp(-np.logaddexp(0.0, z))
    return np.where(has_repeat, alive, 1.0)


def p_no_purchase_within_batch(
    params: BGNBDParams, x: np.ndarray, t_x: np.ndarray, T: np.ndarray, H: float | np.ndarray
) -> np.ndarray:
    """Numpy twin of :func:`p_no_purchase_within` over arrays of customers."""
    x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
    alive = p_alive_batch(params, x, t_x, T)
    quiet = np.exp(-(params.r + x) * np.log1p(np.asarray(H, dtype=float) / (params.alpha + T)))
    out: np.ndarray = (1.0 - alive) + alive * quiet
    return out


# --------------------------------------------------------------------------------------------
# RFM summaries from raw purchases


def summaries(
    purchases: Iterable[tuple[Hashable, datetime | date | int | float]],
    *,
    until: datetime | date | int | float,
    time_unit_days: float,
) -> tuple[list[Hashable], np.ndarray, np.ndarray, np.ndarray]:
    """Per-customer (x, t_x, T) from ``(customer_id, when)`` pairs, counted per UTC purchase DAY.

    ``when`` is an aware datetime, a date, or epoch seconds; everything is reduced to its UTC
    calendar day, so several purchases on one day count once (as in FHL 2005). Only purchases on
    or before ``until``'s UTC day are used; customers whose first purchase is after it are left
    out. In units of ``time_unit_days``:

    - x   = number of distinct purchase days after the first purchase day,
    - t_x = last purchase day - first purchase day,
    - T   = ``until`` day - first purchase day.

    Returns ``(ids, x, t_x, T)`` with ids in order of first appearance in ``purchases``.
    """
    if not (time_unit_days > 0):
        raise ChurnParamsError(
            f"time_unit_days={time_unit_days!r} must be > 0 (7 for weeks, 1 for days); "
            f"give `journey churn fit --time-unit-days` a positive number of days"
        )
    end = utc_day(until)
    days: dict[Hashable, set[int]] = {}
    for customer_id, when in purchases:
        day = utc_day(when)
        if day <= end:
            days.setdefault(customer_id, set()).add(day)
    ids = list(days)
    x = np.empty(len(ids))
    t_x = np.empty(len(ids))
    T = np.empty(len(ids))
    for i, customer_id in enumerate(ids):
        seen = days[customer_id]
        first = min(seen)
        x[i] = len(seen) - 1
        t_x[i] = max(seen) - first
        T[i] = end - first
    return ids, x, t_x / time_unit_days, T / time_unit_days


def utc_day(when: datetime | date | int | float) -> int:
    """Days since 1970-01-01 of ``when``'s UTC calendar day."""
    if isinstance(when, datetime):
        if when.tzinfo is None:
            raise ValueError(
                f"datetime {when.isoformat()} has no time zone; give an aware datetime "
                f"(e.g. tzinfo=timezone.utc) so its UTC day is unambiguous"
            )
        return int(when.timestamp() // SECONDS_PER_DAY)
    if isinstance(when, date):
        return when.toordinal() - _EPOCH_ORDINAL
    if isinstance(when, (int, float)) and not isinstance(when, bool) and math.isfinite(when):
        return int(when // SECONDS_PER_DAY)
    raise ValueError(f"purchase time {when!r} must be an aware datetime, a date, or epoch seconds")


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def fit_churn_params(
    purchases: Iterable[tuple[Hashable, datetime | date | int | float]],
    *,
    until: datetime | date | int | float,
    time_unit_days: float = 7.0,
    source: str = "",
    bounds: Mapping[str, tuple[float, float]] | None = None,
) -> tuple[ChurnParams, FitResult]:
    """Summaries + fit + the params-file record: what ``journey churn fit`` runs."""
    ids, x, t_x, T = summaries(purchases, until=until, time_unit_days=time_unit_days)
    result = fit(x, t_x, T, bounds=bounds)
    until_day = date.fromordinal(utc_day(until) + _EPOCH_ORDINAL)
    churn = ChurnParams(
        params=result.params,
        time_unit_days=float(time_unit_days),
        fitted_on={
            "source": source,
            "until": until_day.isoformat(),
            "customers": len(ids),
            "repeat_purchase_days": int(x.sum()),
            "counting": "distinct UTC purchase days; x = repeat days, t_x and T from the first day",
            "fitted_at": datetime.now(UTC).replace(microsecond=0).isoformat(),
        },
        diagnostics=result.diagnostics(),
    )
    return churn, result
