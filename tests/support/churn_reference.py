"""Churn-risk scores in closed form, written from the model's definition and not from journey.churn.

The model (docs/churn-model.md): BG/NBD (Fader, Hardie & Lee 2005, "Counting your customers the
easy way") counted in distinct UTC purchase days; the score of a purchaser is the probability of
no purchase within the horizon H, optionally through a logistic calibration, then raised by
active negative signals. A customer who never purchased gets a score from silence alone.

With x repeat purchase days, t_x the last purchase day and T the scoring day (both counted from
the first purchase day, in the params' time unit):

    P(alive | x, t_x, T) = 1 / (1 + [x > 0] * a / (b + x - 1) * ((alpha + T) / (alpha + t_x)) ** (r + x))
    P(no purchase in (T, T + H]) = (1 - P(alive)) + P(alive) * ((alpha + T) / (alpha + T + H)) ** (r + x)

(the second term: given alive, the purchase rate's posterior is Gamma(r + x, alpha + T), and a
live customer can only drop out right after a purchase). Everything here is plain ``math``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

DAY = 86400.0
#: The defaults of the worker and of `journey churn score` (documented settings, not code).
HORIZON_DAYS = 90.0
MEDIUM, HIGH = 0.5, 0.8
SIGNAL_WINDOW_DAYS = 90.0
MAX_SIGNAL_COUNT = 3
SIGNAL_WEIGHTS = {"complaint": 0.25, "support_ticket": 0.1, "refund": 0.2, "return": 0.15, "unsubscribe": 0.4,
                  "cart_abandoned": 0.1}
#: Silence-only score of a customer who never purchased: cap * (1 - 2 ** (-silence / typical)).
SILENCE_CAP = 0.9
TYPICAL_DAYS = {"awareness": 14.0, "consideration": 7.0, "decision": 3.0}
#: The calibration's clip of P before its log-odds.
CLIP = 1e-9


@dataclass(frozen=True)
class Params:
    r: float
    alpha: float
    a: float
    b: float
    unit_days: float = 7.0
    #: Logistic calibration: intercept and weights of (logit P, log1p recency, log1p x, log1p mean order value).
    intercept: float | None = None
    weights: tuple[float, ...] = ()

    @classmethod
    def from_file(cls, path: str | Path) -> Params:
        """The numbers of a params file (journey's JSON layout, read as plain JSON)."""
        d = json.loads(Path(path).read_text())
        cal = d.get("calibration")
        return cls(d["r"], d["alpha"], d["a"], d["b"], d["time_unit_days"],
                   cal["intercept"] if cal else None, tuple(cal["weights"]) if cal else ())


def p_alive(p: Params, x: float, t_x: float, T: float) -> float:
    if x == 0:
        return 1.0
    return 1.0 / (1.0 + p.a / (p.b + x - 1.0) * ((p.alpha + T) / (p.alpha + t_x)) ** (p.r + x))


def p_no_purchase_within(p: Params, x: float, t_x: float, T: float, H: float) -> float:
    alive = p_alive(p, x, t_x, T)
    return (1.0 - alive) + alive * ((p.alpha + T) / (p.alpha + T + H)) ** (p.r + x)


@dataclass
class Customer:
    """What the reference needs of a customer's history: purchases (time, order, amount),
    negative signals (time, type) and the last event of any kind."""

    purchases: list[tuple[float, str, float]] = field(default_factory=list)
    negatives: list[tuple[float, str]] = field(default_factory=list)
    last_seen: float | None = None
    stage: str | None = None

    def saw(self, at: float) -> None:
        self.last_seen = at if self.last_seen is None else max(self.last_seen, at)


def _day(t: float) -> int:
    return math.floor(t / DAY)


def _keep(c: Customer, at: float) -> float:
    """The share of the stay chance the active negative signals leave (1 with none)."""
    recent = [(t, kind) for t, kind in c.negatives if t <= at]
    if not recent or at - max(t for t, _ in recent) >= SIGNAL_WINDOW_DAYS * DAY:
        return 1.0  # the signals count while the latest is inside the window
    keep = 1.0
    for kind in sorted({k for _, k in recent}):
        n = sum(1 for _, k in recent if k == kind)
        keep *= (1.0 - SIGNAL_WEIGHTS[kind]) ** min(n, MAX_SIGNAL_COUNT)
    return keep


def score(p: Params, c: Customer, at: float) -> float:
    """The churn-risk score of ``c`` as of event time ``at`` (not rounded)."""
    if c.last_seen is not None:
        at = max(at, c.last_seen)
    keep = _keep(c, at)
    if not c.purchases:
        typical = TYPICAL_DAYS[c.stage or "awareness"] * DAY
        silence = max(at - (c.last_seen if c.last_seen is not None else at), 0.0)
        base = SILENCE_CAP * (1.0 - 2.0 ** (-silence / typical))
        return 1.0 - (1.0 - base) * keep
    days = sorted({_day(t) for t, _o, _a in c.purchases})
    first, last = days[0], days[-1]
    x = len(days) - 1
    span = last - first
    T_days = max(_day(at) - first, span)
    t_x, T, H = span / p.unit_days, T_days / p.unit_days, HORIZON_DAYS / p.unit_days
    q = p_no_purchase_within(p, x, t_x, T, H)
    if p.intercept is None:
        base = q
    else:
        orders = {o for _t, o, _a in c.purchases}
        mean_value = sum(a for _t, _o, a in c.purchases) / len(orders)
        qc = min(max(q, CLIP), 1.0 - CLIP)
        features = (math.log(qc / (1.0 - qc)), math.log1p(max(T - t_x, 0.0)), math.log1p(x), math.log1p(mean_value))
        z = p.intercept + sum(w * f for w, f in zip(p.weights, features, strict=True))
        base = 1.0 / (1.0 + math.exp(-z))
    return 1.0 - (1.0 - base) * keep


def level(s: float) -> str:
    return "high" if s >= HIGH else "medium" if s >= MEDIUM else "low"


STAGE_OF = {"page_view": "awareness", "ad_click": "awareness", "product_view": "consideration", "search": "consideration",
            "add_to_cart": "decision", "checkout_started": "decision"}
NEGATIVE = set(SIGNAL_WEIGHTS) - {"cart_abandoned"}


def customers_of(events: Iterable[Mapping[str, object]]) -> dict[str, Customer]:
    """Reference customers from touchpoint dicts (purchases, negative signals, staged types only)."""
    out: dict[str, Customer] = {}
    order = ["awareness", "consideration", "decision"]
    for e in events:
        c = out.setdefault(str(e["customer_id"]), Customer())
        t = datetime.fromisoformat(str(e["timestamp"])).timestamp()
        c.saw(t)
        etype = str(e["type"])
        props = e.get("properties") or {}
        assert isinstance(props, Mapping)
        if etype == "purchase":
            c.purchases.append((t, str(props.get("order_id", e["event_id"])), float(props.get("amount", 0.0))))
        elif etype in NEGATIVE:
            c.negatives.append((t, etype))
        elif etype in STAGE_OF and (c.stage is None or order.index(STAGE_OF[etype]) > order.index(c.stage)):
            c.stage = STAGE_OF[etype]
    return out
