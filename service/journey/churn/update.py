"""One customer's churn and pain-point update as of an event time: the step the worker's batch
hook, its timer and ``journey churn score`` all take, so they cannot disagree."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from journey.churn.risk import LEVELS, LOW, ChurnModel, Risk, RiskConfig, StageTimes, assess, record
from journey.core import painpoints
from journey.core.clock import iso
from journey.core.ids import stable_id
from journey.core.painpoints import PainConfig, PainPoint
from journey.core.state import CustomerState


@dataclass(frozen=True)
class ChurnConfig:
    risk: RiskConfig = field(default_factory=RiskConfig)
    pain: PainConfig = field(default_factory=PainConfig)


@dataclass(slots=True)
class Update:
    risk: Risk
    previous_level: int | None
    pains: list[PainPoint]
    #: When this customer must be looked at again (None: only when an event arrives).
    due: float | None
    #: The customer's level changes so far, this one included (churn.risk.record).
    changes: int = 0
    #: When the customer's journey began (CustomerState.first_seen): part of the event's id.
    journey_start: float | None = None

    @property
    def level_changed(self) -> bool:
        # A customer seen for the first time "was" low: only a first medium/high is news.
        before = LOW if self.previous_level is None else self.previous_level
        return self.risk.level != before

    def churn_event(self, customer_id: str, model: ChurnModel) -> dict[str, Any]:
        r = self.risk
        previous = LEVELS[self.previous_level] if self.previous_level is not None else None
        return {
            "event_id": churn_event_id(customer_id, self.journey_start, self.changes, previous, r.level_name),
            "customer_id": customer_id,
            "score": r.score,
            "level": r.level_name,
            "previous_level": previous,
            "reasons": r.reasons,
            "reason_codes": r.reason_codes,
            "at": _iso_at(r.at),
            "model": {"name": model.name, "version": model.version},
        }


def churn_event_id(customer_id: str, journey_start: float | None, changes: int, previous_level: str | None, level: str) -> str:
    """Deterministic: the customer's n-th level change, from and to the same levels, has the
    same id however often a replay publishes it (its score and ``at`` follow the clock and may
    differ), so consumers drop the repeats; a replay that lands on another level gets a new id.
    ``journey_start`` (the state's first_seen) keeps a journey begun anew after a forget and its
    undo, whose count starts again, from reusing the ids of the one forgotten."""
    return stable_id(customer_id, journey_start, changes, previous_level, level)


_last_iso: tuple[float | None, str | None] = (None, None)


def _iso_at(at: float) -> str | None:
    """iso(), remembering the last answer: a batch's customers are mostly assessed at one clock."""
    global _last_iso
    last = _last_iso
    if last[0] == at:
        return last[1]
    text = iso(at)
    _last_iso = (at, text)  # one assignment: a reader sees an old pair or the new one
    return text


def note_touchpoint(state: CustomerState, event_type: str, ts: float, channel: str, config: ChurnConfig) -> None:
    """What the update needs to know of each applied touchpoint (carts and purchases)."""
    painpoints.note_touchpoint(state, event_type, ts, channel, config.pain)


def update(
    state: CustomerState,
    at: float,
    model: ChurnModel,
    config: ChurnConfig,
    stage_times: StageTimes | None = None,
) -> Update:
    """Pain points due by ``at``, then the churn risk (abandoned carts count in it), kept in the state."""
    last_seen = state.last_seen
    if last_seen is not None and last_seen > at:
        at = last_seen
    pains, deadline = painpoints.evaluate_due(state, at, config.pain)
    risk = assess(state, at, model, config.risk, stage_times)
    change = risk.next_change
    due = deadline if change is None else change if deadline is None else min(change, deadline)
    previous, changes = record(state, risk, due)
    return Update(risk, previous, pains, due, changes, state.first_seen)
