"""Live aggregates of one input partition: a pure function of that partition's customer states.

The worker keeps one :class:`PartitionAggregate` per partition it owns and updates it by
difference (``remove(summary before) + add(summary after)`` for every customer a batch changed);
after a rebalance it rebuilds it from the table. The sidecar merges the partitions' latest
snapshots. Because an aggregate only ever reflects states (never a stream of events), replays,
duplicates and ownership changes cannot make the counts drift: whoever holds the states can
recompute the same numbers.

What is counted, per partition:
- customers per current stage, broken down by first-touch channel (the funnel's filter); a
  customer "reached" a stage when their current stage is at or past it;
- per channel, touchpoints and the current stage of the customers with at least one touchpoint
  in that channel ("customers reaching each stage per channel");
- first- and last-touch attribution of purchases (CustomerState.attribution);
- log-spaced histograms of the time between consecutive stages, by first-touch channel;
- customers per churn-risk level and pain points (abandoned carts, stalls), from what the churn
  and pain-point concerns keep in ``state.extra``.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, NamedTuple

from journey.core import painpoints
from journey.core.stages import STAGES
from journey.core.state import CustomerState

WIRE_VERSION = 1
#: Slot 0 holds customers with no stage yet, slot i + 1 those in stage i.
SLOTS = len(STAGES) + 1
#: Steps between consecutive stages: step i is STAGES[i] -> STAGES[i + 1].
STEPS = len(STAGES) - 1
#: Histogram buckets grow by 10%: the geometric middle of a bucket is within 5% of any value in it.
BUCKET_RATIO = 1.1
_LOG_RATIO = math.log(BUCKET_RATIO)
#: Channel key for a customer with no touchpoint channel at all (cannot happen for applied events).
NO_CHANNEL = "none"
#: Where the churn concern keeps a customer's assessment: extra["churn"]["l"] = "low" | "medium" | "high"
#: (journey.churn.risk.KEY and record(); not imported: that module pulls in numpy and scipy).
CHURN_KEY = "churn"


class Summary(NamedTuple):
    """What the aggregate needs of one customer's state (small, immutable, cheap to build)."""

    slot: int
    first_channel: str
    channels: tuple[tuple[str, int], ...]
    attribution: tuple[str, str] | None
    #: (step, bucket) for every pair of consecutive stages the customer reached.
    steps: tuple[tuple[int, int], ...]
    churn_level: str | None
    pain_points: tuple[tuple[str, int], ...]


def bucket_of(seconds: float) -> int:
    """Histogram bucket of a duration: 0 holds [0, 1 s); bucket b >= 1 holds [R^(b-1), R^b) seconds."""
    if seconds < 1.0:
        return 0
    return 1 + int(math.log(seconds) / _LOG_RATIO)


def bucket_value(bucket: int) -> float:
    """A representative duration of a bucket (its geometric middle; 0.5 s for the first)."""
    if bucket <= 0:
        return 0.5
    return BUCKET_RATIO ** (bucket - 0.5)


def summarize(state: CustomerState | None) -> Summary | None:
    """The part of a customer's state the live aggregates count (None: no customer)."""
    if state is None:
        return None
    reached = state.reached
    steps = []
    for i in range(STEPS):
        a, b = reached[i], reached[i + 1]
        if a is not None and b is not None:
            # A late event can put an earlier stage's time after a later one's: count it as no wait.
            steps.append((i, bucket_of(b - a) if b > a else 0))
    attribution = state.attribution
    extra = state.extra
    return Summary(
        slot=state.stage + 1 if state.stage >= 0 else 0,
        first_channel=state.first_channel or NO_CHANNEL,
        channels=tuple(state.channels.items()),
        attribution=(attribution[0] or NO_CHANNEL, attribution[1] or NO_CHANNEL) if attribution else None,
        steps=tuple(steps),
        churn_level=_churn_level(extra) if extra else None,
        pain_points=_pain_points(state) if extra else (),
    )


def _churn_level(extra: Mapping[str, Any]) -> str | None:
    churn = extra.get(CHURN_KEY)
    level = churn.get("l") if isinstance(churn, dict) else None
    return level if isinstance(level, str) else None


def _pain_points(state: CustomerState) -> tuple[tuple[str, int], ...]:
    """Pain points the customer's state records: abandoned carts (all of them), and a stall (the latest)."""
    out = []
    abandoned, _ = painpoints.abandoned_carts(state)
    if abandoned:
        out.append((painpoints.CART_ABANDONED, abandoned))
    pain = state.extra.get(painpoints.KEY)
    if pain and pain.get("s") is not None:
        out.append((painpoints.STALLED, 1))
    return tuple(out)


class PartitionAggregate:
    """Counts over a set of customer states; add/remove keep it equal to a recount."""

    __slots__ = ("by_first", "by_channel", "touchpoints", "first_touch", "last_touch", "durations", "churn", "pain")

    def __init__(self) -> None:
        #: first-touch channel -> customers per slot (no stage, then each stage).
        self.by_first: dict[str, list[int]] = {}
        #: channel -> customers with at least one touchpoint in it, per slot.
        self.by_channel: dict[str, list[int]] = {}
        #: channel -> touchpoints applied.
        self.touchpoints: dict[str, int] = {}
        #: channel -> purchasers attributed to it (first touch / last touch before the purchase).
        self.first_touch: dict[str, int] = {}
        self.last_touch: dict[str, int] = {}
        #: first-touch channel -> per step, {bucket: customers}.
        self.durations: dict[str, list[dict[int, int]]] = {}
        self.churn: dict[str, int] = {}
        self.pain: dict[str, int] = {}

    @classmethod
    def of(cls, states: Iterable[CustomerState]) -> "PartitionAggregate":
        agg = cls()
        for st in states:
            agg.add(summarize(st))
        return agg

    # --- updates ---------------------------------------------------------------------------
    def add(self, summary: Summary | None) -> None:
        if summary is not None:
            self._apply(summary, 1)

    def remove(self, summary: Summary | None) -> None:
        if summary is not None:
            self._apply(summary, -1)

    def _apply(self, s: Summary, sign: int) -> None:
        slot = s.slot
        _bump_slot(self.by_first, s.first_channel, slot, sign)
        for ch, n in s.channels:
            _bump_slot(self.by_channel, ch, slot, sign)
            _bump(self.touchpoints, ch, sign * n)
        if s.attribution is not None:
            _bump(self.first_touch, s.attribution[0], sign)
            _bump(self.last_touch, s.attribution[1], sign)
        if s.steps:
            per_step = self.durations.get(s.first_channel)
            if per_step is None:
                per_step = self.durations[s.first_channel] = [{} for _ in range(STEPS)]
            for step, bucket in s.steps:
                _bump(per_step[step], bucket, sign)
            if sign < 0 and not any(per_step):
                del self.durations[s.first_channel]
        if s.churn_level is not None:
            _bump(self.churn, s.churn_level, sign)
        for kind, n in s.pain_points:
            _bump(self.pain, kind, sign * n)

    def merge_in(self, other: "PartitionAggregate") -> None:
        for ch, slots in other.by_first.items():
            _add_slots(self.by_first, ch, slots)
        for ch, slots in other.by_channel.items():
            _add_slots(self.by_channel, ch, slots)
        for mine, theirs in (
            (self.touchpoints, other.touchpoints), (self.first_touch, other.first_touch),
            (self.last_touch, other.last_touch), (self.churn, other.churn), (self.pain, other.pain),
        ):
            for k, n in theirs.items():
                _bump(mine, k, n)
        for ch, per_step in other.durations.items():
            mine_steps = self.durations.setdefault(ch, [{} for _ in range(STEPS)])
            for step, buckets in enumerate(per_step):
                for b, n in buckets.items():
                    _bump(mine_steps[step], b, n)

    # --- reading ---------------------------------------------------------------------------
    def slots(self, first_touch: str | None = None) -> list[int]:
        """Customers per slot (no stage, then each stage), optionally of one first-touch channel."""
        if first_touch is not None:
            return list(self.by_first.get(first_touch, [0] * SLOTS))
        total = [0] * SLOTS
        for slots in self.by_first.values():
            for i, n in enumerate(slots):
                total[i] += n
        return total

    def step_buckets(self, step: int, first_touch: str | None = None) -> dict[int, int]:
        """{bucket: customers} of the time from STAGES[step] to STAGES[step + 1]."""
        out: dict[int, int] = {}
        sources = [self.durations.get(first_touch)] if first_touch is not None else list(self.durations.values())
        for per_step in sources:
            if per_step is None:
                continue
            for b, n in per_step[step].items():
                out[b] = out.get(b, 0) + n
        return out

    def is_empty(self) -> bool:
        return not self.by_first

    # --- wire ------------------------------------------------------------------------------
    def to_wire(self) -> dict[str, Any]:
        """A JSON-ready dict (the aggregates topic carries it inside a snapshot)."""
        return {
            "v": WIRE_VERSION,
            "by_first_touch": self.by_first,
            "by_channel": self.by_channel,
            "touchpoints": self.touchpoints,
            "first_touch_purchases": self.first_touch,
            "last_touch_purchases": self.last_touch,
            # JSON keys are strings: buckets go as flat [bucket, count, bucket, count, ...] lists.
            "durations": {
                ch: [[x for b, n in sorted(buckets.items()) for x in (b, n)] for buckets in per_step]
                for ch, per_step in self.durations.items()
            },
            "churn_risk": self.churn,
            "pain_points": self.pain,
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> "PartitionAggregate":
        version = data.get("v")
        if version != WIRE_VERSION:
            raise ValueError(
                f"aggregate snapshot has wire version {version!r}, this build reads {WIRE_VERSION}; "
                f"run the same journey version in workers and sidecar"
            )
        agg = cls()
        agg.by_first = {ch: list(map(int, v)) for ch, v in data["by_first_touch"].items()}
        agg.by_channel = {ch: list(map(int, v)) for ch, v in data["by_channel"].items()}
        agg.touchpoints = dict(data["touchpoints"])
        agg.first_touch = dict(data["first_touch_purchases"])
        agg.last_touch = dict(data["last_touch_purchases"])
        agg.durations = {
            ch: [dict(zip(flat[0::2], flat[1::2])) for flat in per_step]
            for ch, per_step in data["durations"].items()
        }
        agg.churn = dict(data.get("churn_risk") or {})
        agg.pain = dict(data.get("pain_points") or {})
        return agg

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PartitionAggregate) and self.to_wire() == other.to_wire()

    def __repr__(self) -> str:
        return f"PartitionAggregate(customers={sum(self.slots())})"


def merge(aggregates: Iterable[PartitionAggregate]) -> PartitionAggregate:
    """One aggregate over the union of the partitions' customers (partitions never share one)."""
    out = PartitionAggregate()
    for agg in aggregates:
        out.merge_in(agg)
    return out


def _bump(counts: dict[Any, int], key: Any, n: int) -> None:
    value = counts.get(key, 0) + n
    if value:
        counts[key] = value
    else:
        del counts[key]  # zeros are dropped: a recount and an add/remove history compare equal


def _bump_slot(table: dict[str, list[int]], key: str, slot: int, sign: int) -> None:
    slots = table.get(key)
    if slots is None:
        slots = table[key] = [0] * SLOTS
    slots[slot] += sign
    if sign < 0 and not any(slots):
        del table[key]


def _add_slots(table: dict[str, list[int]], key: str, slots: list[int]) -> None:
    mine = table.get(key)
    if mine is None:
        table[key] = list(slots)
    else:
        for i, n in enumerate(slots):
            mine[i] += n

