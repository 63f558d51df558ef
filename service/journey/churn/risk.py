"""Churn risk of one customer as of an event time: score, level, reasons, and when it next changes.

Pure (no Kafka), so the worker, ``journey churn score`` and the benchmark all call one function,
:func:`assess`. Details: docs/churn-model.md.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from journey.churn import bgnbd, learned
from journey.churn.calibration import Calibration, CalibrationError
from journey.churn.calibration import features as calibration_features
from journey.churn.learned import Layer, LayerError, Reason
from journey.core import painpoints
from journey.core.aggregates import passed
from journey.core.clock import DAY_S
from journey.core.memo import remember
from journey.core.stages import AWARENESS, DECISION, STAGES
from journey.core.state import CustomerState
from journey.errors import SettingsError

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
            raise SettingsError(
                f"churn thresholds need 0 < medium < high <= 1; got medium={self.medium}, high={self.high}; "
                f"set JOURNEY_CHURN_MEDIUM_THRESHOLD and JOURNEY_CHURN_HIGH_THRESHOLD accordingly"
            )
        if not (self.horizon_days > 0 and self.signal_window_days > 0 and self.lookahead_days > 0):
            raise SettingsError(
                f"churn horizon ({self.horizon_days}), signal window ({self.signal_window_days}) and lookahead "
                f"({self.lookahead_days}) must be > 0 days; set JOURNEY_CHURN_HORIZON_DAYS (or --horizon-days) "
                f"to a positive number"
            )
        if not (0.0 < self.silence_cap <= 1.0) or not all(d > 0 for d in self.move_on_days):
            raise ValueError(f"silence_cap must be in (0, 1] and move_on_days > 0; got {self.silence_cap}, {self.move_on_days}")
        for name, w in self.signal_weights.items():
            if not 0.0 <= w < 1.0:
                raise ValueError(f"signal weight {name}={w} must be in [0, 1)")

    def level(self, score: float) -> int:
        return HIGH if score >= self.high else MEDIUM if score >= self.medium else LOW


#: Model names by what the learned layer ships (journey.churn.learned.SHIPPED).
_SHIPPED_NAMES: Mapping[str, str] = {
    "learned": "bgnbd+learned", "features": "learned-features", "bgnbd": "bgnbd+validated", "bgnbd-raw": "bgnbd",
}


@dataclass(frozen=True)
class ChurnModel:
    """The fitted BG/NBD parameters and what turns them into the score (one params file): the
    learned layer of `journey churn fit` (journey.churn.learned), or, in params files written
    before it, an optional backtest calibration (journey.churn.calibration) with the hand-set
    signal weights of RiskConfig."""

    params: bgnbd.ChurnParams
    calibration: Calibration | None = None
    learned: Layer | None = None

    # Cached: every churn event names the model, and the layer's version is a hash.
    @cached_property
    def name(self) -> str:
        if self.learned is not None:
            return _SHIPPED_NAMES[self.learned.shipped]
        return bgnbd.MODEL_NAME + ("+backtest" if self.calibration is not None else "")

    @cached_property
    def version(self) -> str:
        if self.learned is not None:
            return f"{self.params.version}+{self.learned.version}"
        return self.params.version + (f"+{self.calibration.version}" if self.calibration is not None else "")

    @property
    def fitted_horizon_days(self) -> float | None:
        """The horizon the score was fitted for (the learned layer's, or an old calibration's);
        None for plain parameters, which score any horizon."""
        if self.learned is not None:
            return self.learned.horizon_days
        return self.calibration.horizon_days if self.calibration is not None else None

    def horizon_mismatch(self, horizon_days: float) -> str | None:
        """What to tell a user who asks for ``horizon_days`` from a model fitted for another
        horizon (None: no mismatch). A learned score is the probability for its own horizon,
        whatever is asked; the reasons' BG/NBD line follows the ask."""
        fitted = self.fitted_horizon_days
        if fitted is None or fitted == horizon_days:
            return None
        what = (f"the score stays the probability of no purchase within {fitted:g} days" if self.learned is not None
                else "its calibration does not hold for another horizon")
        return (f"the churn params were fitted for a {fitted:g}-day horizon but {horizon_days:g} days were asked "
                f"(JOURNEY_CHURN_HORIZON_DAYS or --horizon-days): {what}; re-run `journey churn fit --horizon-days "
                f"{horizon_days:g}`, or ask for {fitted:g} days")

    def to_dict(self) -> dict[str, Any]:
        data = self.params.to_dict()
        if self.calibration is not None:
            data["calibration"] = self.calibration.to_dict()
        if self.learned is not None:
            data["learned"] = self.learned.to_dict()
        return data


def load_model(path: str | Path) -> ChurnModel:
    """Read a params file: the BG/NBD part (journey.churn.bgnbd) and its learned layer, or (older
    files) its optional backtest calibration."""
    params = bgnbd.load_params(path)
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    calibration = None
    layer = None
    try:
        if data.get("calibration") is not None:
            calibration = Calibration.from_dict(data["calibration"])
        if data.get("learned") is not None:
            layer = Layer.from_dict(data["learned"])
    except (CalibrationError, LayerError) as exc:
        raise bgnbd.ChurnParamsError(f"churn params file {path}: {exc}") from None
    return ChurnModel(params, calibration, layer)


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
        # Read once per scored customer, changed once per transition: computed on first read.
        self._typical: list[float | None] = [None, None, None]

    def observe(self, from_stage: int, seconds: float | None) -> None:
        if seconds is None or not AWARENESS <= from_stage <= DECISION:
            return
        self._n[from_stage] += 1
        self._log_sum[from_stage] += math.log(max(seconds, 1.0))
        self._typical[from_stage] = None

    def observe_reached(self, reached: Sequence[float | None]) -> None:
        """A customer's moves out of awareness, consideration and decision, from the times they
        reached each stage: what the stream's transitions showed, recounted from a stored state
        (a stage reached only after a higher one was no move; see core.aggregates.passed)."""
        times = passed(reached)
        for stage in range(AWARENESS, DECISION + 1):
            since = times[stage]
            if since is None:
                continue
            for later in times[stage + 1:]:
                if later is not None:
                    self.observe(stage, later - since)
                    break

    def typical_s(self, stage: int) -> float:
        stage = min(max(stage, AWARENESS), DECISION)
        typical = self._typical[stage]
        if typical is None:
            n = self._n[stage]
            if self.config.learn_move_on and n >= self.config.min_learn_samples:
                typical = math.exp(self._log_sum[stage] / n)
            else:
                typical = self.config.move_on_days[stage] * DAY_S
            self._typical[stage] = typical
        return typical

    def learned(self) -> dict[str, int]:
        return {STAGES[i]: self._n[i] for i in range(3)}


class Risk:
    """One assessment. The reasons (text, and machine-readable codes) are written out only when
    read (an event or the CLI needs them; most assessments of a stream change nothing and are
    never shown)."""

    __slots__ = ("score", "level", "at", "next_change", "_reasons", "_codes", "_why")

    def __init__(
        self,
        score: float,
        level: int,
        reasons: list[str] | None = None,
        at: float = 0.0,
        next_change: float | None = None,
        *,
        why: tuple[Any, ...] | None = None,
    ) -> None:
        self.score = score
        self.level = level
        self.at = at
        #: The event time at which the level would next change (or a signal expires) if nothing
        #: happens; None when it cannot change any more.
        self.next_change = next_change
        self._reasons = reasons if reasons is not None or why is not None else []
        self._codes: list[dict[str, Any]] | None = None if why is not None else []
        self._why = why

    @property
    def reasons(self) -> list[str]:
        reasons = self._reasons
        if reasons is None:
            reasons = self._explain()[0]
        return reasons

    @reasons.setter
    def reasons(self, value: list[str]) -> None:
        self._reasons = value

    @property
    def reason_codes(self) -> list[dict[str, Any]]:
        """``[{"code", "value", "effect"}]``: what raised (+) or lowered (-) the score, in
        probability points (docs/churn-model.md)."""
        codes = self._codes
        if codes is None:
            codes = self._explain()[1]
        return codes

    def _explain(self) -> tuple[list[str], list[dict[str, Any]]]:
        """Write the texts and the codes once, together (an event reads both: each is as costly
        to write as the score was to compute)."""
        assert self._why is not None
        texts, reasons = _write_reasons(*self._why)
        codes = [r.as_code() for r in reasons]
        if self._reasons is None:
            self._reasons = texts
        if self._codes is None:
            self._codes = codes
        return self._reasons, self._codes

    @property
    def level_name(self) -> str:
        return LEVELS[self.level]

    def _fields(self) -> tuple[Any, ...]:
        return (self.score, self.level, self.reasons, self.at, self.next_change)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Risk) and self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Risk(score={self.score!r}, level={self.level!r}, reasons={self.reasons!r}, "
            f"at={self.at!r}, next_change={self.next_change!r})"
        )


def assess(
    state: CustomerState,
    at: float,
    model: ChurnModel,
    config: RiskConfig,
    stage_times: StageTimes | None = None,
) -> Risk:
    """Score ``state`` as of event time ``at`` (not before the customer's last event)."""
    last_seen = state.last_seen
    if last_seen is not None and last_seen > at:
        at = last_seen
    layer = model.learned
    if layer is not None:
        # The learned layer: the signals' effects are its weights (no hand-set ones).
        obs = learned.observe(state, at, layer.spec.signal_window_days)
        values = learned.customer_features(layer.spec, obs)
        seen = (obs, values)
        if state.first_purchase is not None:
            return _purchaser(state, model, config, at, 1.0, obs.expiry, _NO_SIGNALS, layer.customer_z(values), seen)
        odds = math.exp(layer.signal_z(values))
        return _non_purchaser(state, config, stage_times, at, 1.0, obs.expiry, _NO_SIGNALS, odds, layer, seen)
    keep, expiry, active = _signals(state, config, at)
    if state.first_purchase is not None:
        return _purchaser(state, model, config, at, keep, expiry, active)
    return _non_purchaser(state, config, stage_times, at, keep, expiry, active)


_LEVEL_INDEX = {name: i for i, name in enumerate(LEVELS)}


def record(state: CustomerState, risk: Risk, due: float | None) -> tuple[int | None, int]:
    """Keep the assessment in the customer's state (compact); return the previous level and the
    level changes so far.

    ``n`` counts the level changes so far (a first level of low is none, as it is not news), so a
    change replayed from the same state gets the same number, and its event the same id."""
    previous = state.extra.get(KEY)
    level = _LEVEL_INDEX[previous["l"]] if previous else None
    changes = previous.get("n", 0) if previous else 0
    entry: dict[str, Any] = {"s": risk.score, "l": LEVELS[risk.level], "at": risk.at, "due": due}
    if risk.level != (LOW if level is None else level):
        changes += 1
    if changes:
        entry["n"] = changes
    state.extra[KEY] = entry
    return level, changes


def stored_due(state: CustomerState) -> float | None:
    churn = state.extra.get(KEY)
    return churn.get("due") if churn else None


# --------------------------------------------------------------------------------------------
# The hot path: every customer of every batch is assessed, so each part avoids calls,
# closures and allocations that its result does not need. The arithmetic is the formula's,
# operation for operation (tests/unit/test_churn_fastpath.py holds it to the plain version).


def _purchaser(
    state: CustomerState,
    model: ChurnModel,
    config: RiskConfig,
    at: float,
    keep: float,
    expiry: float | None,
    active: Sequence[tuple[str, int]],
    z_customer: float | None = None,
    observed: tuple[learned.Observation, list[float]] | None = None,
) -> Risk:
    curve = _curve(model, config.horizon_days)
    first_purchase: float = state.first_purchase  # type: ignore[assignment]
    last_purchase = state.last_purchase if state.last_purchase is not None else first_purchase
    first = int(first_purchase // DAY_S)
    span = int(last_purchase // DAY_S) - first
    repeat = max(state.purchase_days - 1, 0)
    calibration = model.calibration
    if z_customer is not None:
        z_value = z_customer  # the learned layer's customer terms
    elif calibration is not None:
        mean_value = state.revenue / state.purchases if state.purchases else 0.0
        z_value = calibration.weights[3] * math.log1p(max(mean_value, 0.0))
    else:
        z_value = 0.0
    logistic = z_customer is not None or calibration is not None
    values, get = curve.values, curve.get
    day = int(at // DAY_S)

    def base_on(d: int) -> float:
        # The score of UTC day d: T = max(d - first, span) days, in the params' unit.
        t_days = d - first
        key = (repeat, span, t_days if t_days > span else span)
        entry = values.get(key) or get(key)
        if not logistic:
            return entry[0]
        z = entry[1] + z_value
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)

    score = 1.0 - (1.0 - base_on(day)) * keep
    # The model's own probability for the reasons (its own lookup: the memo may start over
    # during the search below).
    p_at = get((repeat, span, max(day - first, span)))[0]
    level, threshold, limit = _band(score, config, at, expiry)
    if threshold is None:
        next_change = expiry
    else:

        def reaches(k: int) -> bool:
            return 1.0 - (1.0 - base_on(day + k)) * keep >= threshold

        # Where this curve crossed this threshold before (this customer at an earlier look, or
        # another one with the same purchase history): a hint, checked by the search.
        crossing = (repeat, span, z_value, keep, threshold)
        seen = curve.crossings.get(crossing)
        hint = seen - (day - first) if seen is not None else None
        # The score only changes at UTC midnight: step through day starts.
        next_change = _first_rise(reaches, lambda k: (day + k) * DAY_S, limit, hint)
        if next_change is not None and next_change < limit:
            curve.remember(crossing, int(next_change // DAY_S) - first)
    if observed is not None:
        t_days = max(day - first, span)
        why: tuple[Any, ...] = (config, "learned", model.learned, repeat, span, t_days, p_at, curve, observed)
    else:
        why = (config, True, max(day - (first + span), 0), repeat + 1, p_at, active, score, keep)
    return Risk(round(score, 6), level, None, at, next_change, why=why)


def _band(score: float, config: RiskConfig, at: float, expiry: float | None) -> tuple[int, float | None, float]:
    """(level of the score, the threshold of the next level up or None at the top, how far
    ahead to look for the moment it is reached)."""
    level = HIGH if score >= config.high else MEDIUM if score >= config.medium else LOW
    if level == HIGH:
        return level, None, 0.0
    limit = expiry if expiry is not None else at + config.lookahead_days * DAY_S
    return level, (config.high if level == MEDIUM else config.medium), limit


def _non_purchaser(
    state: CustomerState,
    config: RiskConfig,
    stage_times: StageTimes | None,
    at: float,
    keep: float,
    expiry: float | None,
    active: Sequence[tuple[str, int]],
    odds: float = 1.0,
    layer: Layer | None = None,
    seen: tuple[learned.Observation, list[float]] | None = None,
) -> Risk:
    stage = min(max(state.stage, AWARENESS), DECISION)
    typical = stage_times.typical_s(stage) if stage_times is not None else config.move_on_days[stage] * DAY_S
    last_seen = state.last_seen if state.last_seen is not None else at
    cap = config.silence_cap
    if layer is not None:
        # Learned signal effects multiply the odds of the silence score.
        silence_score = cap * (1.0 - 2.0 ** (-max(at - last_seen, 0.0) / typical))
        score = _with_odds(silence_score, odds)
    else:
        score = 1.0 - (1.0 - cap * (1.0 - 2.0 ** (-max(at - last_seen, 0.0) / typical))) * keep
    level, threshold, limit = _band(score, config, at, expiry)
    if threshold is None:
        next_change = expiry
    else:

        def reaches(k: int) -> bool:
            t = at + 60.0 * k
            base = cap * (1.0 - 2.0 ** (-max(t - last_seen, 0.0) / typical))
            score_then: float = _with_odds(base, odds) if layer is not None else 1.0 - (1.0 - base) * keep
            return score_then >= threshold

        # The first minute the base score reaches what the threshold needs, solved for; the
        # search below checks it (and its neighbours) with the formula itself.
        hint = None
        if layer is not None:
            need = threshold / (odds * (1.0 - threshold) + threshold)
        else:
            need = 1.0 - (1.0 - threshold) / keep if keep > 0.0 else math.inf
        if 0.0 < need / cap < 1.0:
            silence = -typical * math.log2(1.0 - need / cap)
            steps = (silence - (at - last_seen)) / 60.0
            if steps < 1e15:
                hint = max(math.ceil(steps), 1)
        next_change = _first_rise(reaches, lambda k: at + 60.0 * k, limit, hint)  # minute steps
    if seen is not None:
        why: tuple[Any, ...] = (config, "silent", layer, max(at - last_seen, 0.0), stage, typical, seen, odds, score, silence_score)
    else:
        why = (config, False, max(at - last_seen, 0.0), stage, typical, active, score, keep)
    return Risk(round(score, 6), level, None, at, next_change, why=why)


def _signals(state: CustomerState, config: RiskConfig, at: float) -> tuple[float, float | None, Sequence[tuple[str, int]]]:
    """(share of the stay chance left after the active negative signals, when they expire, the
    active signals in order)."""
    negatives = state.negatives
    pain = state.extra.get(painpoints.KEY)
    if not negatives and (not pain or "a" not in pain):
        return 1.0, None, _NO_SIGNALS
    window = config.signal_window_days * DAY_S
    keep = 1.0
    expiries = []
    active: list[tuple[str, int]] = []
    if negatives and state.last_negative is not None and at - state.last_negative < window:
        active.extend(negatives.items())
        expiries.append(state.last_negative + window)
    carts, last_cart = painpoints.abandoned_carts(state)
    if carts and last_cart is not None and at - last_cart < window:
        active.append((painpoints.CART_ABANDONED, carts))
        expiries.append(last_cart + window)
    active.sort()
    for kind, n in active:
        w = config.signal_weights.get(kind, config.default_signal_weight)
        keep *= (1.0 - w) ** min(n, config.max_signal_count)
    return keep, (min(expiries) if expiries else None), active


_NO_SIGNALS: tuple[tuple[str, int], ...] = ()
_with_odds = learned.with_odds


def _write_reasons(config: RiskConfig, kind: bool | str, *why: Any) -> tuple[list[str], list[Reason]]:
    """(the reasons' text, their codes) of an assessment (``why``: what the scoring kept)."""
    if kind == "learned":
        return _learned_reasons(config, *why)
    if kind == "silent":
        return _learned_silence_reasons(config, *why)
    a, b, c, active, score, keep = why
    if kind:
        days_silent, days, p = a, b, c
        reasons = [
            f"no purchase for {days_silent} days",
            "one purchase day only" if days == 1 else f"{days} purchase days",
            f"model P(no purchase within {config.horizon_days:g} days)={p:.2f}",
        ]
        codes = [Reason("no_purchase_days", days_silent, 0.0, reasons[0]),
                 Reason("repeat_purchase_days", days - 1, 0.0, reasons[1]),
                 Reason("bgnbd_p_no_purchase", round(p, 6), 0.0, reasons[2])]
    else:
        silence, stage, typical = a, b, c
        reasons = [
            f"silent {silence / DAY_S:.1f} days in {STAGES[stage]} "
            f"(customers typically move on within {typical / DAY_S:.1f} days)"
        ]
        base = 1.0 - (1.0 - score) / keep if keep > 0.0 else score
        codes = [Reason("silent_days", round(silence / DAY_S, 3), base, reasons[0])]
    # Hand-set signal weights (params files from before the learned layer): a signal's effect is
    # the score less the score without it.
    for signal, n in active:
        name = SIGNAL_NAMES.get(signal, signal.replace("_", " "))
        text = name if n == 1 else f"{name} x{n}"
        reasons.append(text)
        w = config.signal_weights.get(signal, config.default_signal_weight)
        part = (1.0 - w) ** min(n, config.max_signal_count)
        without = 1.0 - (1.0 - score) / part if part > 0.0 else score
        codes.append(Reason(learned.signal_code(signal), n, score - without, text))
    return reasons, codes


def _learned_reasons(
    config: RiskConfig, layer: Layer, repeat: int, span: int, t_days: int, p_h: float, curve: _Curve,
    seen: tuple[learned.Observation, list[float]],
) -> tuple[list[str], list[Reason]]:
    obs, values = seen
    p_w = curve.p_layer(repeat, span, t_days)
    orders = max(obs.purchases, 1)
    facts = {
        "days_silent": t_days - span, "repeat": repeat, "span": span, "p": p_w, "horizon": layer.horizon_days,
        "mean_value": obs.revenue / orders, "revenue": obs.revenue, "orders_per_day": obs.purchases / max(obs.purchase_days, 1),
        "touchpoints_per_order": (obs.events - sum(obs.negatives.values())) / orders, "stage": STAGES[obs.stage] if obs.stage >= 0 else "none",
        "channels": {c: n / max(obs.events, 1) for c, n in obs.channels.items()},
        "signals": {k: learned.signal_count(obs, k)[0] for k in _signal_kinds(obs)},
    }
    time_values = curve.layer_time_features(repeat, span, t_days)
    reasons = learned.explain_purchaser(layer, time_values, values, facts)
    listed = any(r.code == "bgnbd_p_no_purchase" for r in reasons) and layer.horizon_days == config.horizon_days
    tail = [] if listed else [f"model P(no purchase within {config.horizon_days:g} days)={p_h:.2f}"]
    return learned.reason_texts(reasons, tail), reasons


def _learned_silence_reasons(
    config: RiskConfig, layer: Layer, silence: float, stage: int, typical: float,
    seen: tuple[learned.Observation, list[float]], odds: float, score: float, base: float,
) -> tuple[list[str], list[Reason]]:
    obs, values = seen
    text = (f"silent {silence / DAY_S:.1f} days in {STAGES[stage]} "
            f"(customers typically move on within {typical / DAY_S:.1f} days)")
    reasons = [Reason("silent_days", round(silence / DAY_S, 3), base, text)]
    z = math.log(odds)
    names = layer.spec.customer_names
    for kind in _signal_kinds(obs):
        n = learned.signal_count(obs, kind)[0]
        if n <= 0:
            continue
        part = sum(layer.weights[len(layer.spec.time_names) + i] * values[i]
                   for i, name in enumerate(names) if name in (f"signal_count:{kind}", f"signal_recent:{kind}"))
        effect = score - learned.with_odds(base, math.exp(z - part))
        reasons.append(Reason(learned.signal_code(kind), n, effect, learned.signal_text(kind, n)))
    head, rest = reasons[0], reasons[1:]
    return [head.text, *learned.reason_texts(rest)], reasons


def _signal_kinds(obs: learned.Observation) -> list[str]:
    if not obs.negatives and obs.carts <= 0:
        return []  # most customers: no signal at all
    kinds = sorted(k for k, n in obs.negatives.items() if n > 0)
    if obs.carts > 0:
        kinds.append(painpoints.CART_ABANDONED)
    return sorted(kinds)


def _first_rise(reaches: Callable[[int], bool], grid: Callable[[int], float], limit: float, hint: int | None = None) -> float:
    """First grid time after ``grid(0)`` where ``reaches``, or ``limit`` if that is not earlier.

    ``reaches`` is false at 0 and, once true, stays true (the base score never falls while the
    customer is silent), so there is one step k with ``reaches(k)`` and not ``reaches(k - 1)``.
    It is found by doubling steps and then bisection: O(log) evaluations, no scan. A ``hint``
    (a guess of k) only changes where the doubling starts from, not the answer: from the hint
    backwards when it already reaches, else forwards from it.
    """
    lo = 0
    if hint is not None and hint >= 1:
        if reaches(hint):
            hi, back = hint, 1
            while True:
                k = hint - back
                if k <= 0:
                    break  # 0 never reaches
                if not reaches(k):
                    lo = k
                    break
                hi, back = k, back * 2
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if reaches(mid) else (mid, hi)
            return grid(hi) if grid(hi) < limit else limit
        lo = hint
    base, step = lo, 1
    hi = base + step
    while grid(hi) < limit and not reaches(hi):
        lo, step = hi, step * 2
        hi = base + step
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


class _Curve:
    """BG/NBD's P(no purchase within H) of (repeat days, last - first purchase day, days since
    the first), with the calibration's terms that need no more than those (all but the mean
    order value's). Exact memoization: a pure function of integers, shared by all customers."""

    __slots__ = ("model", "params", "unit", "H", "values", "crossings", "layer_H", "time_values")

    #: Entries kept before the memo starts over (a few MB).
    MAX = 1 << 17
    #: Entries of ``time_values`` kept before it starts over: each holds a tuple of floats (~0.5
    #: KiB), so fewer than the other memos (~10 MB at most).
    MAX_TIME_VALUES = 1 << 14

    def __init__(self, model: ChurnModel, horizon_days: float) -> None:
        self.model = model
        self.params = model.params.params
        self.unit = model.params.time_unit_days
        self.H = horizon_days / self.unit
        layer = model.learned
        #: The learned layer's own horizon (its BG/NBD term), in the params' unit.
        self.layer_H = layer.horizon_days / self.unit if layer is not None else self.H
        self.values: dict[tuple[int, int, int], tuple[float, float]] = {}
        #: (repeat days, span, mean order value's term, signals' keep, threshold) -> the first
        #: day (since the first purchase) the score reached the threshold: search hints.
        self.crossings: dict[tuple[int, int, float, float, float], int] = {}
        #: (repeat days, span, days since the first) -> the learned layer's time features (the
        #: reasons' values; a batch's purchasers mostly share a few of these).
        self.time_values: dict[tuple[int, int, int], tuple[float, ...]] = {}

    def remember(self, crossing: tuple[int, int, float, float, float], day: int) -> None:
        remember(self.crossings, crossing, day, self.MAX)

    def get(self, key: tuple[int, int, int]) -> tuple[float, float]:
        entry = self.values.get(key)
        if entry is not None:
            return entry
        repeat, span, T_days = key
        x = float(repeat)
        t_x = span / self.unit
        T = T_days / self.unit
        p = bgnbd.p_no_purchase_within(self.params, x, t_x, T, self.H)
        z = 0.0
        calibration = self.model.calibration
        layer = self.model.learned
        if layer is not None:
            p_w = p if self.layer_H == self.H else bgnbd.p_no_purchase_within(self.params, x, t_x, T, self.layer_H)
            z = layer.time_z(p_w, repeat, span, T_days)
        elif calibration is not None:
            # Calibration.apply's sum, in its order, up to (not with) the mean order value's term.
            f = calibration_features(p, x, T - t_x, 0.0)
            w = calibration.weights
            z = calibration.intercept
            z += w[0] * f[0]
            z += w[1] * f[1]
            z += w[2] * f[2]
        return remember(self.values, key, (p, z), self.MAX)

    def layer_time_features(self, repeat: int, span: int, t_days: int) -> tuple[float, ...]:
        """learned.time_features of the layer at (repeat days, span, days since the first), with
        its P(no purchase) (:meth:`p_layer`): the reasons' time values, memoized."""
        key = (repeat, span, t_days)
        values = self.time_values.get(key)
        if values is None:
            layer = self.model.learned
            assert layer is not None
            time_values = learned.time_features(layer.spec, self.p_layer(repeat, span, t_days), repeat, span, t_days)
            values = remember(self.time_values, key, tuple(time_values), self.MAX_TIME_VALUES)
        return values

    def p_layer(self, repeat: int, span: int, t_days: int) -> float:
        """BG/NBD P(no purchase within the learned layer's horizon) (the reasons' value)."""
        p = self.get((repeat, span, t_days))[0]
        if self.layer_H == self.H:
            return p
        return bgnbd.p_no_purchase_within(self.params, float(repeat), span / self.unit, t_days / self.unit, self.layer_H)


_curves: dict[tuple[int, float], _Curve] = {}


def clear_memo() -> None:
    """Forget the memoized curve values and crossings (benchmarks: start cold)."""
    _curves.clear()


def _curve(model: ChurnModel, horizon_days: float) -> _Curve:
    curve = _curves.get((id(model), horizon_days))
    if curve is None or curve.model is not model:
        if len(_curves) > 16:
            _curves.clear()
        curve = _curves[(id(model), horizon_days)] = _Curve(model, horizon_days)
    return curve
