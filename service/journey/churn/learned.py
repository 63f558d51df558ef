"""The learned churn score: a regularised logistic layer over what journey keeps of a customer.

``journey churn fit`` learns, from the history it is given, what each signal means for that
business (journey.churn.validation; docs/churn-model.md): the BG/NBD log-odds, recency, frequency
and value, every negative signal's count and recency, the stage and the channel mix. No sign is
imposed on a signal; a signal that is absent or rare in the history gets no effect. The one
constraint kept is that silence never lowers the risk: the weights of the features that grow
while a customer is silent (the BG/NBD log-odds, the recency ramps, "overdue") are >= 0.

This module is the scoring half: plain ``math``, no numpy, so the worker's hot path can use it.
The same two functions compute the features for the fit and for the score, so they cannot
disagree:

- :func:`time_features` depends only on (repeat purchase days, first-to-last purchase days, days
  since the first purchase) and the BG/NBD probability: the hot path memoises it;
- :func:`customer_features` of :func:`observe` (the rest: value, stage, channels, signals),
  constant while the customer is silent except when a signal leaves its window.

The score of a purchaser is ``sigmoid(intercept + sum(w * time) + sum(w * customer))`` (summed in
that order). A customer who never purchased keeps the silence score of journey.churn.risk, its
odds multiplied by ``exp(sum(w * signal features))``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from operator import mul, sub
from typing import Any

from journey.core import painpoints
from journey.core.clock import DAY_S
from journey.core.memo import remember
from journey.core.stages import STAGES
from journey.core.state import CustomerState
from journey.errors import ChurnError

METHOD = "oot-logistic"
#: What a layer holds: the learned score, the plain BG/NBD probability (Platt-scaled, when the
#: learned score did not beat it out of time), the learned score without the BG/NBD term (when
#: the BG/NBD fit is degenerate), or the BG/NBD probability as it is (``--no-calibration``).
SHIPPED = ("learned", "bgnbd", "features", "bgnbd-raw")
BGNBD_LOG_ODDS = "bgnbd_log_odds"
_EPS = 1e-9
#: How signal types read in reasons and reason codes.
SIGNAL_NAMES: Mapping[str, str] = {"review_submitted": "low rating", painpoints.CART_ABANDONED: "cart abandoned"}
SIGNAL_CODES: Mapping[str, str] = {"review_submitted": "low_rating", painpoints.CART_ABANDONED: "cart_abandoned"}


class LayerError(ChurnError):
    """A stored learned layer cannot be used."""


@dataclass(frozen=True)
class Spec:
    """Which features a layer has: everything but the weights."""

    #: Knots of the recency ramps, in log1p(weeks since the last purchase day), increasing.
    recency_knots: tuple[float, ...]
    stages: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    signals: tuple[str, ...] = ()
    signal_window_days: float = 90.0
    #: The horizon of the BG/NBD term and of the label the layer was fitted on.
    horizon_days: float = 90.0

    def __post_init__(self) -> None:
        knots = self.recency_knots
        if len(knots) < 2 or any(b <= a for a, b in zip(knots, knots[1:], strict=False)):
            raise LayerError(f"recency knots {knots!r} must be 2+ increasing numbers")
        if not (self.signal_window_days > 0 and self.horizon_days > 0):
            raise LayerError("the layer's signal window and horizon must be > 0 days")
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise LayerError(f"unknown stages {unknown} (stages are {', '.join(STAGES)})")

    @cached_property  # a frozen dataclass: cached in the instance __dict__
    def time_names(self) -> tuple[str, ...]:
        ramps = tuple(f"recency_ramp_{i + 1}" for i in range(len(self.recency_knots) - 1))
        once = tuple(f"recency_once_ramp_{i + 1}" for i in range(len(self.recency_knots) - 1))
        return (BGNBD_LOG_ODDS, *ramps, "recency_tail", *once, "overdue", "log1p_repeat_days", "one_time_buyer",
                "log1p_purchase_span_weeks")

    @cached_property
    def customer_names(self) -> tuple[str, ...]:
        names = ["log1p_mean_order_value", "log1p_revenue", "log_orders_per_purchase_day", "log_touchpoints_per_order"]
        names += [f"stage:{s}" for s in self.stages]
        names += [f"channel:{c}" for c in self.channels]
        for kind in self.signals:
            names += [f"signal_count:{kind}", f"signal_recent:{kind}"]
        return tuple(names)

    @cached_property
    def names(self) -> tuple[str, ...]:
        return self.time_names + self.customer_names


#: Features whose weight must be >= 0 (they grow while the customer is silent).
def non_negative(name: str) -> bool:
    return name == BGNBD_LOG_ODDS or name.startswith("recency_") or name == "overdue"


#: Features on a natural 0..few scale (indicators, shares, log counts): penalised as they are,
#: so that a rare one is shrunk to nothing; the others are standardised first.
def unscaled(name: str) -> bool:
    return name.startswith(("stage:", "channel:", "signal_")) or name == "one_time_buyer"


# --------------------------------------------------------------------------------------------
# Features


def log_odds(p: float) -> float:
    p = min(max(p, _EPS), 1.0 - _EPS)
    return math.log(p / (1.0 - p))


def time_features(spec: Spec, p: float, repeat: int, span_days: int, t_days: int) -> list[float]:
    """The features that depend on the purchase days and the day only (``t_days`` >= ``span_days``).

    ``p`` is the BG/NBD probability of no purchase within ``spec.horizon_days``.
    """
    recency = t_days - span_days
    u = math.log1p(recency / 7.0)
    knots = spec.recency_knots
    out = [log_odds(p)]
    for lo, hi in zip(knots, knots[1:], strict=False):
        out.append(min(max((u - lo) / (hi - lo), 0.0), 1.0))
    out.append(max(u - knots[-1], 0.0))
    for lo, hi in zip(knots, knots[1:], strict=False):
        out.append(min(max((u - lo) / (hi - lo), 0.0), 1.0) if repeat == 0 else 0.0)
    out.append(math.log1p(recency * repeat / span_days) if repeat > 0 and span_days > 0 else 0.0)
    out.append(math.log1p(repeat))
    out.append(1.0 if repeat == 0 else 0.0)
    out.append(math.log1p(span_days / 7.0))
    return out


@dataclass(slots=True)  # not frozen: built for every assessment, and a frozen __init__ is slower
class Observation:
    """What the customer features need of a state as of a time (dicts are the state's own)."""

    stage: int
    channels: Mapping[str, int]
    events: int
    purchases: int
    purchase_days: int
    revenue: float
    negatives: Mapping[str, int]
    negatives_recent: bool
    carts: int
    carts_recent: bool
    #: When a recent signal leaves its window (None: none is recent).
    expiry: float | None


def observe(state: CustomerState, at: float, window_days: float) -> Observation:
    window = window_days * DAY_S
    last_negative = state.last_negative
    negatives_recent = bool(state.negatives) and last_negative is not None and at - last_negative < window
    carts, last_cart = painpoints.abandoned_carts(state)
    carts_recent = carts > 0 and last_cart is not None and at - last_cart < window
    expiry = None
    if negatives_recent:
        expiry = last_negative + window  # type: ignore[operator]
    if carts_recent:
        cart_end = last_cart + window  # type: ignore[operator]
        expiry = cart_end if expiry is None else min(expiry, cart_end)
    return Observation(state.stage, state.channels, state.events, state.purchases, state.purchase_days,
                       state.revenue, state.negatives, negatives_recent, carts, carts_recent, expiry)


def snapshot(obs: Observation) -> Observation:
    """``obs`` with copies of the state's dicts (the fit keeps observations while the fold goes on)."""
    return Observation(obs.stage, dict(obs.channels), obs.events, obs.purchases, obs.purchase_days, obs.revenue,
                       dict(obs.negatives), obs.negatives_recent, obs.carts, obs.carts_recent, obs.expiry)


def signal_count(obs: Observation, kind: str) -> tuple[int, bool]:
    if kind == painpoints.CART_ABANDONED:
        return obs.carts, obs.carts_recent
    n = obs.negatives.get(kind, 0)
    return n, n > 0 and obs.negatives_recent


def customer_features(spec: Spec, obs: Observation) -> list[float]:
    orders = obs.purchases if obs.purchases > 1 else 1
    days = obs.purchase_days if obs.purchase_days > 1 else 1
    revenue = obs.revenue if obs.revenue > 0.0 else 0.0
    negatives = obs.negatives
    touches = (obs.events - sum(negatives.values()) if negatives else obs.events) / orders
    per_day = obs.purchases / days
    out = [
        math.log1p(revenue / orders),
        math.log1p(revenue),
        math.log(per_day) if per_day > 1.0 else 0.0,
        math.log(touches) if touches > 1.0 else 0.0,
    ]
    if spec.stages:
        stage = STAGES[obs.stage] if obs.stage >= 0 else None
        for s in spec.stages:
            out.append(1.0 if s == stage else 0.0)
    if spec.channels:
        events = obs.events if obs.events > 1 else 1
        channels = obs.channels
        for c in spec.channels:
            out.append(channels.get(c, 0) / events)
    for kind in spec.signals:
        n, recent = signal_count(obs, kind)
        out.append(math.log1p(n))
        out.append(1.0 if recent else 0.0)
    return out


# --------------------------------------------------------------------------------------------
# The layer


@dataclass(frozen=True)
class Layer:
    spec: Spec
    intercept: float
    weights: tuple[float, ...]
    #: The features' means in the fit's rows: the reasons' "typical customer".
    means: tuple[float, ...]
    shipped: str = "learned"
    fitted_on: dict[str, Any] = field(default_factory=dict, compare=False)
    _time_w: tuple[float, ...] = field(init=False, repr=False, compare=False)
    _customer_w: tuple[tuple[int, float], ...] = field(init=False, repr=False, compare=False)
    _signal_w: tuple[tuple[int, float], ...] = field(init=False, repr=False, compare=False)
    explain_plan: ExplainPlan = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = self.spec.names
        if len(self.weights) != len(names) or len(self.means) != len(names):
            raise LayerError(f"the layer has {len(names)} features but {len(self.weights)} weights and {len(self.means)} means")
        if not all(math.isfinite(v) for v in (self.intercept, *self.weights, *self.means)):
            raise LayerError("the layer's intercept, weights and means must be finite numbers")
        for name, w in zip(names, self.weights, strict=True):
            if non_negative(name) and w < 0:
                raise LayerError(f"the weight of {name} is {w} < 0: the score would fall with silence")
        if self.shipped not in SHIPPED:
            raise LayerError(f"shipped={self.shipped!r} is not one of {', '.join(SHIPPED)}")
        n_time = len(self.spec.time_names)
        customer = self.spec.customer_names
        object.__setattr__(self, "_time_w", self.weights[:n_time])
        object.__setattr__(self, "_customer_w", tuple((i, w) for i, w in enumerate(self.weights[n_time:]) if w != 0.0))
        object.__setattr__(self, "_signal_w", tuple(
            (i, w) for i, w in enumerate(self.weights[n_time:]) if w != 0.0 and customer[i].startswith("signal_")))
        object.__setattr__(self, "explain_plan", ExplainPlan.of(self))

    @property
    def horizon_days(self) -> float:
        return self.spec.horizon_days

    @property
    def version(self) -> str:
        payload = json.dumps([self.spec.names, self.spec.recency_knots, self.intercept, list(self.weights),
                              self.spec.horizon_days, self.spec.signal_window_days, self.shipped])
        return "oot-" + hashlib.sha256(payload.encode()).hexdigest()[:8]

    # --- scoring (the hot path's pieces)
    def time_z(self, p: float, repeat: int, span_days: int, t_days: int) -> float:
        """intercept + the time features' terms, in feature order."""
        z = self.intercept
        for w, f in zip(self._time_w, time_features(self.spec, p, repeat, span_days, t_days), strict=True):
            z += w * f
        return z

    def customer_z(self, values: Sequence[float]) -> float:
        """The customer features' terms, in feature order (zero weights skipped: adding 0 changes nothing)."""
        z = 0.0
        for i, w in self._customer_w:
            z += w * values[i]
        return z

    def signal_z(self, values: Sequence[float]) -> float:
        """The signal features' terms alone: what shifts the log-odds of a customer who never purchased."""
        z = 0.0
        for i, w in self._signal_w:
            z += w * values[i]
        return z

    # --- the params file
    def to_dict(self) -> dict[str, Any]:
        s = self.spec
        return {
            "method": METHOD,
            "shipped": self.shipped,
            "horizon_days": s.horizon_days,
            "signal_window_days": s.signal_window_days,
            "recency_knots": list(s.recency_knots),
            "stages": list(s.stages),
            "channels": list(s.channels),
            "signals": list(s.signals),
            "features": list(s.names),
            "intercept": self.intercept,
            "weights": list(self.weights),
            "means": list(self.means),
            "fitted_on": self.fitted_on,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Layer:
        if not isinstance(data, Mapping) or data.get("method") != METHOD:
            got = data.get("method") if isinstance(data, Mapping) else data
            raise LayerError(f"the learned layer must have method {METHOD!r}, got {got!r}; re-create it with `journey churn fit`")
        try:
            spec = Spec(
                recency_knots=tuple(float(k) for k in data["recency_knots"]),
                stages=tuple(str(s) for s in data.get("stages") or ()),
                channels=tuple(str(c) for c in data.get("channels") or ()),
                signals=tuple(str(k) for k in data.get("signals") or ()),
                signal_window_days=float(data["signal_window_days"]),
                horizon_days=float(data["horizon_days"]),
            )
            if list(data["features"]) != list(spec.names):
                raise LayerError(f"the layer lists features {data['features']} but its spec has {list(spec.names)}")
            return cls(
                spec=spec,
                intercept=float(data["intercept"]),
                weights=tuple(float(w) for w in data["weights"]),
                means=tuple(float(m) for m in data["means"]),
                shipped=str(data.get("shipped") or "learned"),
                fitted_on=dict(data.get("fitted_on") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise LayerError(f"the learned layer is missing or has a bad {exc}; re-create it with `journey churn fit`") from None


def sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def with_odds(base: float, odds: float) -> float:
    """``base`` with its odds multiplied by ``odds`` (``base`` itself when ``odds`` is 1)."""
    if odds == 1.0:
        return base
    return odds * base / (1.0 - base + odds * base)


# --------------------------------------------------------------------------------------------
# Reasons: what raised the score and what lowered it


@dataclass(frozen=True, slots=True)
class Reason:
    code: str
    value: float | int | str
    #: How much this moved the score, in probability points: against no silence for the days
    #: without a purchase, against not having it for a signal, and otherwise against the typical
    #: customer of the history the layer was fitted on.
    effect: float
    text: str

    def as_code(self) -> dict[str, Any]:
        return {"code": self.code, "value": self.value, "effect": round(self.effect, 6)}


def signal_text(kind: str, n: int) -> str:
    name = SIGNAL_NAMES.get(kind, kind.replace("_", " "))
    return name if n == 1 else f"{name} x{n}"


def signal_code(kind: str) -> str:
    return f"{SIGNAL_CODES.get(kind, kind)}_count"


#: Feature groups of a purchaser's reasons: code -> the features whose terms it adds up.
def _groups(spec: Spec) -> list[tuple[str, tuple[str, ...]]]:
    ramps = tuple(n for n in spec.time_names if n.startswith("recency_")) + ("overdue",)
    groups = [
        ("no_purchase_days", ramps),
        ("repeat_purchase_days", ("log1p_repeat_days", "one_time_buyer")),
        ("purchase_span_days", ("log1p_purchase_span_weeks",)),
        ("bgnbd_p_no_purchase", (BGNBD_LOG_ODDS,)),
        ("mean_order_value", ("log1p_mean_order_value",)),
        ("revenue", ("log1p_revenue",)),
        ("orders_per_purchase_day", ("log_orders_per_purchase_day",)),
        ("touchpoints_per_order", ("log_touchpoints_per_order",)),
        ("stage", tuple(f"stage:{s}" for s in spec.stages)),
    ]
    groups += [(f"channel_{c}_share", (f"channel:{c}",)) for c in spec.channels]
    groups += [(signal_code(k), (f"signal_count:{k}", f"signal_recent:{k}")) for k in spec.signals]
    return groups


@dataclass(frozen=True, slots=True)
class ExplainPlan:
    """What explain_purchaser needs of a layer besides the customer, worked out once per layer:
    each group's feature indices, whether any of its weights is learned, its signal kind."""

    #: (code, feature indices, learned, signal kind or None), in _groups' order, groups without features left out.
    groups: tuple[tuple[str, tuple[int, ...], bool, str | None], ...]
    #: The effects' reference point: the fit's means, no signal (the silence features are set per customer).
    reference: tuple[float, ...]
    #: The time features that measure silence (recency ramps, overdue).
    silence: tuple[int, ...]
    #: (repeat days, span) -> ``reference`` with the silence features as on the last purchase
    #: day: a pure function of the two, worked out once for the customers that share them.
    silent_references: dict[tuple[int, int], tuple[float, ...]] = field(default_factory=dict, repr=False, compare=False)

    #: Entries of silent_references kept before it starts over.
    MAX_SILENT = 1 << 14

    @classmethod
    def of(cls, layer: Layer) -> ExplainPlan:
        names = layer.spec.names
        index = {n: i for i, n in enumerate(names)}
        groups = []
        for code, members in _groups(layer.spec):
            if not members:
                continue
            idx = tuple(index[m] for m in members)
            kind = members[0].split(":", 1)[1] if members[0].startswith("signal_count:") else None
            groups.append((code, idx, any(layer.weights[i] != 0.0 for i in idx), kind))
        reference = tuple(0.0 if n.startswith("signal_") else m for n, m in zip(names, layer.means, strict=True))
        silence = tuple(i for i, n in enumerate(layer.spec.time_names) if n.startswith("recency_") or n == "overdue")
        return cls(tuple(groups), reference, silence)


def explain_purchaser(
    layer: Layer,
    time_values: Sequence[float],
    customer_values: Sequence[float],
    facts: Mapping[str, Any],
) -> list[Reason]:
    """One Reason per feature group with an effect (the recency, the purchase days and every
    signal the customer has are always listed), in a fixed order."""
    plan, weights = layer.explain_plan, layer.weights
    values = [*time_values, *customer_values]
    if len(values) != len(weights):
        raise ValueError(f"{len(values)} feature values for a layer of {len(weights)} weights")
    z = layer.intercept + sum(map(mul, weights, values))
    score = sigmoid(z)
    # What each effect is measured against: no silence (the silence features as on the last
    # purchase day), no signal, and otherwise the typical customer of the fit (the means).
    repeat, span = facts["repeat"], facts["span"]
    memo = plan.silent_references
    reference = memo.get((repeat, span))
    if reference is None:
        silent_now = time_features(layer.spec, 0.5, repeat, span, span)
        filled = list(plan.reference)
        for i in plan.silence:
            filled[i] = silent_now[i]
        reference = remember(memo, (repeat, span), tuple(filled), plan.MAX_SILENT)
    # Each feature's term against the reference, once (a group adds up its own).
    against = list(map(mul, weights, map(sub, values, reference)))
    term = against.__getitem__
    reasons = []
    signals_seen: set[str] = set()
    signals = facts["signals"]
    for code, idx, learned, kind in plan.groups:
        if learned:
            delta = sum(map(term, idx))
            effect = score - sigmoid(z - delta)
        else:
            effect = 0.0
        if kind is not None:
            n = int(signals.get(kind, 0))
            if n == 0 and abs(effect) < 0.005:
                continue
            if n > 0:
                signals_seen.add(kind)
            reasons.append(Reason(code, n, effect, signal_text(kind, n) if n else f"no {signal_text(kind, 1)}"))
            continue
        if not learned and code not in ("no_purchase_days", "repeat_purchase_days"):
            continue
        value, text = _fact(code, facts)
        reasons.append(Reason(code, value, effect, text))
    for kind, n in sorted(signals.items()):
        if n > 0 and kind not in signals_seen:  # a signal the history did not have: no effect
            reasons.append(Reason(signal_code(kind), int(n), 0.0, signal_text(kind, int(n))))
    return reasons


def _fact(code: str, facts: Mapping[str, Any]) -> tuple[float | int | str, str]:
    if code == "no_purchase_days":
        return facts["days_silent"], f"no purchase for {facts['days_silent']} days"
    if code == "repeat_purchase_days":
        days = facts["repeat"] + 1
        return facts["repeat"], "one purchase day only" if days == 1 else f"{days} purchase days"
    if code == "purchase_span_days":
        return facts["span"], f"first to last purchase {facts['span']} days"
    if code == "bgnbd_p_no_purchase":
        return round(facts["p"], 6), f"BG/NBD P(no purchase within {facts['horizon']:g} days)={facts['p']:.2f}"
    if code == "mean_order_value":
        return round(facts["mean_value"], 4), f"mean order value {facts['mean_value']:.2f}"
    if code == "revenue":
        return round(facts["revenue"], 4), f"revenue {facts['revenue']:.2f}"
    if code == "orders_per_purchase_day":
        return round(facts["orders_per_day"], 4), f"{facts['orders_per_day']:.2f} orders per purchase day"
    if code == "touchpoints_per_order":
        return round(facts["touchpoints_per_order"], 4), f"{facts['touchpoints_per_order']:.1f} touchpoints per order"
    if code == "stage":
        return facts["stage"], f"stage {facts['stage']}"
    channel = code[len("channel_"):-len("_share")]
    share = facts["channels"].get(channel, 0.0)
    return round(share, 4), f"{share:.0%} of touchpoints via {channel}"


def reason_texts(reasons: Sequence[Reason], tail: Sequence[str] = ()) -> list[str]:
    """What raised the score (largest first), then what lowered it (largest first), then the rest."""
    if not reasons:
        return list(tail)  # a silent customer without signals: nothing but its head line
    raised = sorted((r for r in reasons if r.effect >= 0.005), key=lambda r: -r.effect)
    lowered = sorted((r for r in reasons if r.effect <= -0.005), key=lambda r: r.effect)
    flat = [r for r in reasons if -0.005 < r.effect < 0.005]
    out = [f"{r.text}: raises the risk (+{r.effect:.2f})" for r in raised]
    out += [f"{r.text}: lowers the risk ({r.effect:.2f})" for r in lowered]
    out += [r.text for r in flat]
    out += list(tail)
    return out
