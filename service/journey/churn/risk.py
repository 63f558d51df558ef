"""Churn risk of one customer as of an event time: score, level, reasons, and when it next changes.

Pure (no Kafka): the worker, ``journey churn score`` and the benchmark all call :func:`assess`.

- Customers who have purchased: the BG/NBD probability of no purchase within the horizon H,
  P = (1 - P(alive)) + P(alive) ((alpha+T)/(alpha+T+H))^(r+x), counted per UTC purchase DAY
  (x = distinct purchase days - 1, t_x and T from the first purchase day, in the params' time
  unit), then passed through the backtest calibration of the params file when it has one
  (journey.churn.calibration). Everything is per day, so the score changes at midnight UTC.
- Customers who have not purchased: silence (time since their last touchpoint) against how long
  customers typically take to move on from their stage (learned from the stream's transitions,
  or configured): score = cap * (1 - 2^(-silence/typical)); half the cap after one typical time.
- Negative signals (complaint, support ticket, low rating, refund, return, unsubscribe, abandoned
  cart) each take a share w of what is left of the chance to stay: score = 1 - (1 - base) *
  prod (1 - w)^n (n capped), while the latest such signal is younger than the signal window.
  Every one present is listed in the reasons.
- Levels: low < medium threshold <= medium < high threshold <= high.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from journey.churn import bgnbd
from journey.churn.calibration import Calibration, CalibrationError
from journey.core import painpoints
from journey.core.clock import DAY_S, utc_day
from journey.core.stages import AWARENESS, CONSIDERATION, DECISION, STAGES
from journey.core.state import CustomerState

LEVELS = ("low", "medium", "high")
LOW, MEDIUM, HIGH = range(3)
KEY = "churn"

DEFAULT_SIGNAL_WEIGHTS: Mapping[str, float] = {
    "complaint": 0.25,
    "support_ticket": 0.1,
    "review_submitted": 0.2,  # a low rating (the machine only counts bad reviews as negative)
    "refund": 0.2,
    "return": 0.15,
    "unsubscribe": 0.4,
    painpoints.CART_ABANDONED: 0.1,
}
#: How signal types read in reasons.
SIGNAL_NAMES: Mapping[str, str] = {"review_submitted": "low rating", painpoints.CART_ABANDONED: "cart abandoned"}


@dataclass(frozen=True)
class RiskConfig:
    horizon_days: float = 90.0
    medium: float = 0.5
    high: float = 0.8
    #: Configured typical days to move on from awareness, consideration, decision.
    move_on_days: tuple[float, float, float] = (14.0, 7.0, 3.0)
    #: Learn the typical times from the stream's transitions once a stage has enough of them.
    learn_move_on: bool = True
    min_learn_samples: int = 30
    #: Highest score silence alone can give a customer who never purchased.
    silence_cap: float = 0.9
    signal_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_SIGNAL_WEIGHTS))
    #: Weight of a negative type the table above does not name (types come from journey.yaml).
    default_signal_weight: float = 0.1
    signal_window_days: float = 90.0
    max_signal_count: int = 3
    #: How far ahead the next level change is looked for.
    lookahead_days: float = 730.0

    def __post_init__(self) -> None:
        if not (0.0 < self.medium < self.high <= 1.0):
            raise ValueError(f"churn thresholds need 0 < medium < high <= 1; got medium={self.medium}, high={self.high}")
        if not (self.horizon_days > 0 and self.signal_window_days > 0 and self.lookahead_days > 0):
            raise ValueError("churn horizon, signal window and lookahead must be > 0 days")
        if not (0.0 < self.silence_cap <= 1.0) or not all(d > 0 for d in self.move_on_days):
            raise ValueError(f"silence_cap must be in (0, 1] and move_on_days > 0; got {self.silence_cap}, {self.move_on_days}")
        for name, w in self.signal_weights.items():
            if not 0.0 <= w < 1.0:
                raise ValueError(f"signal weight {name}={w} must be in [0, 1)")

    def level(self, score: float) -> int:
        return HIGH if score >= self.high else MEDIUM if score >= self.medium else LOW


@dataclass(frozen=True)
class ChurnModel:
    """The fitted BG/NBD parameters and, optionally, their backtest calibration (one params file)."""

    params: bgnbd.ChurnParams
    calibration: Calibration | None = None

    @property
    def name(self) -> str:
        return bgnbd.MODEL_NAME + ("+backtest" if self.calibration is not None else "")

    @property
    def version(self) -> str:
        return self.params.version + (f"+{self.calibration.version}" if self.calibration is not None else "")

    def to_dict(self) -> dict[str, Any]:
        data = self.params.to_dict()
        if self.calibration is not None:
            data["calibration"] = self.calibration.to_dict()
        return data


def load_model(path: str | Path) -> ChurnModel:
    """Read a params file: the BG/NBD part (journey.churn.bgnbd) and its optional calibration."""
    params = bgnbd.load_params(path)
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    calibration = None
    if data.get("calibration") is not None:
        try:
            calibration = Calibration.from_dict(data["calibration"])
        except CalibrationError as exc:
            raise bgnbd.ChurnParamsError(f"churn params file {path}: {exc}") from None
    return ChurnModel(params, calibration)


def save_model(path: str | Path, model: ChurnModel) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(model.to_dict(), indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise bgnbd.ChurnParamsError(f"cannot write churn params to {path}: {exc.strerror or exc}; choose a writable path") from exc
    return path


class StageTimes:
    """How long customers typically stay in awareness, consideration and decision before moving on.

    Learned as the geometric mean of the observed times (robust to the long tail of slow
    movers); the configured value is used until a stage has enough observations.
    """

    def __init__(self, config: RiskConfig) -> None:
        self.config = config
        self._n = [0, 0, 0]
        self._log_sum = [0.0, 0.0, 0.0]

    def observe(self, from_stage: int, seconds: float | None) -> None:
        if seconds is None or not AWARENESS <= from_stage <= DECISION:
            return
        self._n[from_stage] += 1
        self._log_sum[from_stage] += math.log(max(seconds, 1.0))

    def typical_s(self, stage: int) -> float:
        stage = min(max(stage, AWARENESS), DECISION)
        n = self._n[stage]
        if self.config.learn_move_on and n >= self.config.min_learn_samples:
            return math.exp(self._log_sum[stage] / n)
        return self.config.move_on_days[stage] * DAY_S

    def learned(self) -> dict[str, int]:
        return {STAGES[i]: self._n[i] for i in range(3)}


@dataclass(slots=True)
class Risk:
    score: float
    level: int
    reasons: list[str]
    at: float
    #: The event time at which the level would next change (or a signal expires) if nothing
    #: happens; None when it cannot change any more.
    next_change: float | None

    @property
    def level_name(self) -> str:
        return LEVELS[self.level]


def assess(
    state: CustomerState,
    at: float,
    model: ChurnModel,
    config: RiskConfig,
    stage_times: StageTimes | None = None,
) -> Risk:
    """Score ``state`` as of event time ``at`` (not before the customer's last event)."""
    at = max(at, state.last_seen if state.last_seen is not None else at)
    reasons: list[str] = []
    if state.first_purchase is not None:
        base_at, grid = _purchaser(state, model, config, reasons, at)
    else:
        base_at, grid = _non_purchaser(state, config, stage_times or StageTimes(config), reasons, at)
    keep, expiry = _signals(state, config, reasons, at)
    score = 1.0 - (1.0 - base_at(at)) * keep
    level = config.level(score)
    next_change = _next_change(level, keep, expiry, base_at, grid, at, config)
    return Risk(score=round(score, 6), level=level, reasons=reasons, at=at, next_change=next_change)


def record(state: CustomerState, risk: Risk, due: float | None) -> int | None:
    """Keep the assessment in the customer's state (compact); return the previous level."""
    previous = state.extra.get(KEY)
    state.extra[KEY] = {"s": risk.score, "l": risk.level_name, "at": risk.at, "due": due}
    return LEVELS.index(previous["l"]) if previous else None


def stored_due(state: CustomerState) -> float | None:
    churn = state.extra.get(KEY)
    return churn.get("due") if churn else None


# --------------------------------------------------------------------------------------------


def _purchaser(
    state: CustomerState, model: ChurnModel, config: RiskConfig, reasons: list[str], at: float
) -> tuple[Callable[[float], float], Callable[[int], float]]:
    params, unit = model.params.params, model.params.time_unit_days
    first = utc_day(state.first_purchase)  # type: ignore[arg-type]
    last = utc_day(state.last_purchase if state.last_purchase is not None else state.first_purchase)  # type: ignore[arg-type]
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
    # The score only changes at UTC midnight: step through day starts.
    return base, lambda k: (day + k) * DAY_S


def _non_purchaser(
    state: CustomerState, config: RiskConfig, stage_times: StageTimes, reasons: list[str], at: float
) -> tuple[Callable[[float], float], Callable[[int], float]]:
    stage = min(max(state.stage, AWARENESS), DECISION)
    typical = stage_times.typical_s(stage)
    last_seen = state.last_seen if state.last_seen is not None else at
    cap = config.silence_cap

    def base(t: float) -> float:
        return cap * (1.0 - 2.0 ** (-max(t - last_seen, 0.0) / typical))

    reasons.append(
        f"silent {max(at - last_seen, 0.0) / DAY_S:.1f} days in {STAGES[stage]} "
        f"(customers typically move on within {typical / DAY_S:.1f} days)"
    )
    return base, lambda k: at + 60.0 * k  # minute steps


def _signals(state: CustomerState, config: RiskConfig, reasons: list[str], at: float) -> tuple[float, float | None]:
    """(share of the stay chance left after the active negative signals, when they expire)."""
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


def _next_change(
    level: int,
    keep: float,
    expiry: float | None,
    base: Callable[[float], float],
    grid: Callable[[int], float],
    at: float,
    config: RiskConfig,
) -> float | None:
    """First grid time after ``at`` where the level rises, or the signal expiry if earlier.

    The base score never falls while the customer is silent, so the first crossing of the next
    threshold is found by doubling steps and then bisection: O(log) evaluations, no scan.
    """
    limit = expiry if expiry is not None else at + config.lookahead_days * DAY_S
    if level == HIGH:
        return expiry
    threshold = config.high if level == MEDIUM else config.medium

    def reaches(k: int) -> bool:
        return 1.0 - (1.0 - base(grid(k))) * keep >= threshold

    # grid(0) is at (or the start of its day): below the threshold, as level says.
    lo, hi = 0, 1
    while grid(hi) < limit and not reaches(hi):
        lo, hi = hi, hi * 2
    if grid(hi) >= limit:
        # The last grid point before the limit decides whether the crossing comes in time.
        a, b = lo, hi
        while b - a > 1:
            m = (a + b) // 2
            a, b = (m, b) if grid(m) < limit else (a, m)
        if a == lo or not reaches(a):
            return limit  # nothing changes before the limit: look again then
        hi = a
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if reaches(mid) else (mid, hi)
    return grid(hi)
