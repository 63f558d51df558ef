"""Pain points: where a customer gets stuck, decided on event time.

Two are detected, an abandoned cart (``cart_abandoned``) and a customer standing too long in
consideration or decision (``stalled``), with a compact per-customer memory in
``CustomerState.extra["pain"]``. Details: docs/journey-rules.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from journey.core.clock import iso
from journey.core.ids import stable_id
from journey.core.stages import CONSIDERATION, DECISION, stage_name
from journey.core.state import CustomerState
from journey.errors import SettingsError

KEY = "pain"
CART_ABANDONED = "cart_abandoned"
STALLED = "stalled"
#: Open carts remembered per customer (bounded memory; the oldest goes first).
MAX_OPEN_CARTS = 4
#: Decided carts' windows remembered per customer (a late event inside one is a replay).
MAX_DECIDED_CARTS = 4


@dataclass(frozen=True)
class PainConfig:
    cart_types: frozenset[str] = frozenset({"add_to_cart", "checkout_started"})
    purchase_types: frozenset[str] = frozenset({"purchase"})
    abandonment_window_s: float = 24 * 3600.0
    stall_stages: frozenset[int] = frozenset({CONSIDERATION, DECISION})
    stall_limit_s: float = 14 * 86400.0

    def __post_init__(self) -> None:
        if not (self.abandonment_window_s > 0 and self.stall_limit_s > 0):
            raise SettingsError(
                f"pain points: abandonment window ({self.abandonment_window_s} s) and stall limit "
                f"({self.stall_limit_s} s) must be > 0; set JOURNEY_CHURN_ABANDONMENT_WINDOW_HOURS "
                f"and JOURNEY_CHURN_STALL_DAYS to positive numbers (or unset them for the defaults)"
            )


@dataclass(slots=True)
class PainPoint:
    kind: str
    stage: str | None
    channel: str | None
    at: float
    details: dict[str, Any] = field(default_factory=dict)

    def pain_point_id(self, customer_id: str) -> str:
        """Deterministic: a pain point's time follows from the state (a cart's window end, a
        stage's stall limit), so a replay reports it with the same id. A cart's id leaves the
        stage out: a replay whose batch holds more of the customer's events may find the same
        cart at a later stage."""
        return stable_id(customer_id, self.kind, self.stage if self.kind == STALLED else "", self.at)

    def to_event(self, customer_id: str) -> dict[str, Any]:
        return {
            "pain_point_id": self.pain_point_id(customer_id),
            "customer_id": customer_id,
            "kind": self.kind,
            "stage": self.stage,
            "channel": self.channel,
            "at": iso(self.at),
            "details": self.details,
        }


def note_touchpoint(state: CustomerState, event_type: str, ts: float, channel: str, config: PainConfig) -> None:
    """Remember what a touchpoint means for carts (call after the machine applied it)."""
    if event_type in config.cart_types:
        _open_cart(state, ts, channel, config)
    elif event_type in config.purchase_types:
        pain = state.extra.get(KEY)
        if pain and pain.get("c"):
            w = config.abandonment_window_s
            for cart in [c for c in pain["c"] if c[0] <= ts <= c[0] + w]:
                _resolve(pain, cart, ts)
            _store(state, pain)


def evaluate(state: CustomerState, now: float, config: PainConfig) -> list[PainPoint]:
    """Pain points that have become due by event time ``now`` (each reported once)."""
    return evaluate_due(state, now, config)[0]


def evaluate_due(state: CustomerState, now: float, config: PainConfig) -> tuple[list[PainPoint], float | None]:
    """:func:`evaluate`, and then :func:`next_deadline`, in one pass over the state."""
    extra = state.extra
    pain = extra.get(KEY)
    stage = state.stage
    if not pain and stage not in config.stall_stages:
        # Nothing open and nothing to stall in: most customers of a stream.
        if KEY in extra:
            del extra[KEY]
        return [], None
    if not pain:
        pain = {}
    found: list[PainPoint] = []
    w = config.abandonment_window_s
    for cart in sorted(pain.get("c") or (), key=lambda c: c[0]):
        ts, channel = cart
        purchased = _purchase_within(state, ts, w)
        if purchased is not None:
            _resolve(pain, cart, purchased)
        elif now >= ts + w:
            _resolve(pain, cart, ts + w)
            count, _ = pain.get("a") or (0, None)
            pain["a"] = [count + 1, ts + w]
            found.append(
                PainPoint(CART_ABANDONED, stage_name(state.stage), channel, ts + w,
                          {"cart_at": iso(ts), "window_hours": round(w / 3600, 3)})
            )
    entered = state.reached[stage] if stage >= 0 else None
    deadline = None
    if stage in config.stall_stages and entered is not None and pain.get("s") != stage:
        if now >= entered + config.stall_limit_s:
            pain["s"] = stage
            found.append(
                PainPoint(STALLED, stage_name(stage), state.last_channel, entered + config.stall_limit_s,
                          {"stage_entered_at": iso(entered), "limit_days": round(config.stall_limit_s / 86400, 3)})
            )
        else:
            deadline = entered + config.stall_limit_s
    _store(state, pain)
    carts = pain.get("c")
    if carts:
        # next_deadline's order: the carts' window ends, then the stall.
        times = [c[0] + w for c in carts]
        if deadline is not None:
            times.append(deadline)
        deadline = min(times)
    return found, deadline


def next_deadline(state: CustomerState, config: PainConfig) -> float | None:
    """The event time at which :func:`evaluate` could next report something, if nothing happens."""
    pain = state.extra.get(KEY) or {}
    times = [c[0] + config.abandonment_window_s for c in pain.get("c") or ()]
    stage = state.stage
    entered = state.reached[stage] if stage >= 0 else None
    if stage in config.stall_stages and entered is not None and pain.get("s") != stage:
        times.append(entered + config.stall_limit_s)
    return min(times) if times else None


def abandoned_carts(state: CustomerState) -> tuple[int, float | None]:
    """(how many carts were abandoned, when the last one was) for the churn model."""
    pain = state.extra.get(KEY)
    if not pain or "a" not in pain:
        return 0, None
    count, last = pain["a"]
    return int(count), last


def _open_cart(state: CustomerState, ts: float, channel: str, config: PainConfig) -> None:
    pain = state.extra.get(KEY) or {}
    if ts <= pain.get("r", float("-inf")) or any(start <= ts <= end for start, end in pain.get("d", ())):
        return  # a replayed or very late event of a cart already decided
    carts = pain.get("c")
    if not carts:  # the usual case: the customer's only open cart
        pain["c"] = [[ts, channel]]
        state.extra[KEY] = pain
        return
    w = config.abandonment_window_s
    for cart in carts:
        if cart[0] <= ts <= cart[0] + w:
            return  # part of an open cart
    carts.append([ts, channel])
    carts.sort(key=lambda c: c[0])
    # A cart that was opened earlier and falls inside the new one's window joins it.
    merged: list[list[Any]] = []
    for cart in carts:
        if merged and cart[0] <= merged[-1][0] + w:
            continue
        merged.append(cart)
    pain["c"] = merged[-MAX_OPEN_CARTS:]
    _store(state, pain)


def _purchase_within(state: CustomerState, ts: float, window: float) -> float | None:
    """The earliest purchase the state knows of (its orders' times, the first and the last
    purchase) from ``ts`` to ``ts + window``, or None. Any of them, not the last only: a cart that
    arrives after later purchases was still bought within its window."""
    end = ts + window
    found = None
    for t in (state.first_purchase, state.last_purchase, *state.order_times):
        if t is not None and ts <= t <= end and (found is None or t < found):
            found = t
    return found


def _resolve(pain: dict[str, Any], cart: list[Any], decided_until: float) -> None:
    """Close ``cart``: cart events from its start to ``decided_until`` (the purchase, or the
    window's end) belonged to it, so a replay of one of them cannot open a new cart. The last
    MAX_DECIDED_CARTS such windows are kept ("d"), so that a late cart event outside them, an
    older cart of its own, still opens one; events up to the end of a window no longer kept
    ("r") count as decided."""
    pain["c"] = [c for c in pain.get("c", []) if c[0] != cart[0]]
    windows = [*pain.get("d", ()), [cart[0], decided_until]]
    if len(windows) > MAX_DECIDED_CARTS:
        forgotten = windows.pop(0)[1]
        pain["r"] = max(pain.get("r", forgotten), forgotten)
    pain["d"] = windows


def _store(state: CustomerState, pain: dict[str, Any]) -> None:
    if pain.get("c") == []:
        del pain["c"]
    if pain:
        state.extra[KEY] = pain
    else:
        state.extra.pop(KEY, None)
