"""Live aggregates of one input partition: a pure function of that partition's customer states.

Because an aggregate only ever reflects states (never a stream of events), replays, duplicates
and ownership changes cannot make the counts drift: whoever holds the states can recompute the
same numbers. Details: docs/journey-rules.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from journey.core import painpoints
from journey.core.identity import ALIAS_KEY
from journey.core.privacy import FORGOTTEN_KEY
from journey.core.stages import STAGES
from journey.core.state import CustomerState
from journey.errors import EncodingError

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


#: What the aggregate needs of one customer's state: a plain tuple (cheapest to build, by far),
#: built only by :func:`summarize` and never changed afterwards. Fields, in order:
#: slot, first-touch channel, {channel: touchpoints} (a copy), attribution (first, last) or None,
#: the reached times (the step buckets derive from them, and only where they changed),
#: churn level or None, abandoned carts, stalled (0 or 1).
Summary = tuple[int, str, dict[str, int], tuple[str, str] | None, tuple[float | None, ...], str | None, int, int]


def bucket_of(seconds: float) -> int:
    """Histogram bucket of a duration: 0 holds [0, 1 s); bucket b >= 1 holds [R^(b-1), R^b) seconds."""
    if seconds < 1.0:
        return 0
    return 1 + int(math.log(seconds) / _LOG_RATIO)


def bucket_value(bucket: int) -> float:
    """A representative duration of a bucket (its geometric middle; 0.5 s for the first)."""
    if bucket <= 0:
        return 0.5
    value: float = BUCKET_RATIO ** (bucket - 0.5)
    return value


def passed(reached: Sequence[float | None]) -> tuple[float | None, ...]:
    """The reached times as the step histograms read them: a stage's time later than a higher
    stage's is left out (None), since the customer was past it then (a product view after the
    purchase reaches consideration in the state, but is no step of the funnel). A function of
    the times alone, so whatever order the events came in."""
    out = list(reached)
    low = math.inf
    for i in range(len(out) - 1, -1, -1):
        t = out[i]
        if t is not None:
            if t > low:
                out[i] = None
            else:
                low = t
    return tuple(out)


def summarize(state: CustomerState | None) -> Summary | None:
    """The part of a customer's state the live aggregates count (None: no customer).

    On the hot path (twice per changed customer per batch): it copies and derives nothing it
    can leave to :meth:`PartitionAggregate.replace`, which mostly finds the parts unchanged.
    """
    if state is None:
        return None
    extra = state.extra
    if extra and (ALIAS_KEY in extra or FORGOTTEN_KEY in extra):
        return None  # a linked anonymous id (counted with the customer's journey), or a forgotten id's marker
    stage = state.stage
    attribution = state.attribution
    level = None
    abandoned = stalled = 0
    if extra:
        churn = extra.get(CHURN_KEY)
        if isinstance(churn, dict):
            level = churn.get("l")
            if not isinstance(level, str):
                level = None
        pain = extra.get(painpoints.KEY)
        if pain:
            # "a" holds the abandoned carts (painpoints' format): most pain memories only hold
            # open carts, and the call is a good part of this function's cost.
            if "a" in pain:
                abandoned = painpoints.abandoned_carts(state)[0]
            if pain.get("s") is not None:
                stalled = 1
    return (
        stage + 1 if stage >= 0 else 0,
        state.first_channel or NO_CHANNEL,
        state.channels.copy(),
        (attribution[0] or NO_CHANNEL, attribution[1] or NO_CHANNEL) if attribution else None,
        tuple(state.reached),
        level,
        abandoned,
        stalled,
    )


class PartitionAggregate:
    """Counts over a set of customer states; add/remove/replace keep it equal to a recount."""

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
    def of(cls, states: Iterable[CustomerState]) -> PartitionAggregate:
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

    # replace() and what it calls are the worker's hot path (a few times per event): the dict
    # updates of _bump and _bump_slot are written out there, where they are most frequent.
    def replace(self, before: Summary | None, after: Summary | None) -> None:
        """``remove(before)`` then ``add(after)``, touching only the counts the two differ in.

        Most changed customers keep their first touch, attribution, churn level and pain
        points, and many their stage and channels: those parts cost one comparison each.
        """
        if before is None:  # a customer the batch created
            if after is not None:
                self._apply(after, 1)
            return
        if after is None:
            self._apply(before, -1)
            return
        # The after side is counted before the before side is taken away, so an entry is only
        # deleted when its counts really end at zero (as in a recount). A customer moving between
        # slots of an entry that holds them before and after leaves it non-zero: no check.
        b_slot, b_first, b_ch, b_attr, b_reached, b_churn, b_abandoned, b_stalled = before
        a_slot, a_first, a_ch, a_attr, a_reached, a_churn, a_abandoned, a_stalled = after
        moved = b_slot != a_slot
        if b_first != a_first:
            _bump_slot(self.by_first, a_first, a_slot, 1)
            _bump_slot(self.by_first, b_first, b_slot, -1)
        elif moved:
            slots = self.by_first.get(a_first)
            if slots is not None:  # always, while the aggregate counts ``before``
                slots[a_slot] += 1
                slots[b_slot] -= 1
            else:
                _move_slot(self.by_first, a_first, b_slot, a_slot)
        if moved or b_ch != a_ch:
            by_channel, touchpoints = self.by_channel, self.touchpoints
            common = 0
            for ch, n in a_ch.items():
                m = b_ch.get(ch)
                if m is None:
                    _bump_slot(by_channel, ch, a_slot, 1)
                    _bump(touchpoints, ch, n)
                    continue
                common += 1
                if moved:
                    slots = by_channel.get(ch)
                    if slots is not None:
                        slots[a_slot] += 1
                        slots[b_slot] -= 1
                    else:
                        _move_slot(by_channel, ch, b_slot, a_slot)
                if m != n:
                    value = touchpoints.get(ch, 0) + n - m
                    if value:
                        touchpoints[ch] = value
                    else:
                        touchpoints.pop(ch, None)
            if common < len(b_ch):  # channels the state no longer has (the machine never drops one)
                for ch, m in b_ch.items():
                    if ch not in a_ch:
                        _bump_slot(by_channel, ch, b_slot, -1)
                        _bump(touchpoints, ch, -m)
        if b_attr != a_attr:
            if a_attr is not None:
                _bump(self.first_touch, a_attr[0], 1)
                _bump(self.last_touch, a_attr[1], 1)
            if b_attr is not None:
                _bump(self.first_touch, b_attr[0], -1)
                _bump(self.last_touch, b_attr[1], -1)
        if b_first != a_first:
            self._apply_steps(a_first, a_reached, 1)
            self._apply_steps(b_first, b_reached, -1)
        elif b_reached != a_reached:
            self._replace_steps(a_first, b_reached, a_reached)
        if b_churn != a_churn:
            if a_churn is not None:
                _bump(self.churn, a_churn, 1)
            if b_churn is not None:
                _bump(self.churn, b_churn, -1)
        if b_abandoned != a_abandoned:
            _bump(self.pain, painpoints.CART_ABANDONED, a_abandoned - b_abandoned)
        if b_stalled != a_stalled:
            _bump(self.pain, painpoints.STALLED, a_stalled - b_stalled)

    def _apply(self, s: Summary, sign: int) -> None:
        slot, first, channels, attribution, reached, churn, abandoned, stalled = s
        _bump_slot(self.by_first, first, slot, sign)
        by_channel, touchpoints = self.by_channel, self.touchpoints
        for ch, n in channels.items():
            _bump_slot(by_channel, ch, slot, sign)
            _bump(touchpoints, ch, sign * n)
        if attribution is not None:
            _bump(self.first_touch, attribution[0], sign)
            _bump(self.last_touch, attribution[1], sign)
        if reached.count(None) < STEPS:  # a step needs two reached stages
            self._apply_steps(first, reached, sign)
        if churn is not None:
            _bump(self.churn, churn, sign)
        if abandoned:
            _bump(self.pain, painpoints.CART_ABANDONED, sign * abandoned)
        if stalled:
            _bump(self.pain, painpoints.STALLED, sign * stalled)

    def _apply_steps(self, first: str, reached: tuple[float | None, ...], sign: int) -> None:
        per_step = None
        reached = passed(reached)
        t0 = reached[0]
        for i in range(STEPS):
            t1 = reached[i + 1]
            if t0 is not None and t1 is not None:
                # A late event can put an earlier stage's time after a later one's: no wait.
                bucket = bucket_of(t1 - t0) if t1 > t0 else 0
                if per_step is None:
                    per_step = self.durations.get(first)
                    if per_step is None:
                        per_step = self.durations[first] = [{} for _ in range(STEPS)]
                _bump(per_step[i], bucket, sign)
            t0 = t1
        if per_step is not None and sign < 0 and not any(per_step):
            del self.durations[first]

    def _replace_steps(self, first: str, b_reached: tuple[float | None, ...], a_reached: tuple[float | None, ...]) -> None:
        """Same first touch, other reached times: only the steps whose ends moved change."""
        per_step = None
        removed = False
        b_reached, a_reached = passed(b_reached), passed(a_reached)
        b0, a0 = b_reached[0], a_reached[0]
        for i in range(STEPS):
            b1, a1 = b_reached[i + 1], a_reached[i + 1]
            if b0 != a0 or b1 != a1:
                old = None if b0 is None or b1 is None else (bucket_of(b1 - b0) if b1 > b0 else 0)
                new = None if a0 is None or a1 is None else (bucket_of(a1 - a0) if a1 > a0 else 0)
                if old != new:
                    if per_step is None:
                        per_step = self.durations.get(first)
                        if per_step is None:
                            per_step = self.durations[first] = [{} for _ in range(STEPS)]
                    if new is not None:
                        _bump(per_step[i], new, 1)
                    if old is not None:
                        _bump(per_step[i], old, -1)
                        removed = True
            b0, a0 = b1, a1
        if removed and not any(per_step):  # type: ignore[arg-type]
            del self.durations[first]

    def merge_in(self, other: PartitionAggregate) -> None:
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
    def from_wire(cls, data: Mapping[str, Any]) -> PartitionAggregate:
        version = data.get("v")
        if version != WIRE_VERSION:
            raise EncodingError(
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
            ch: [dict(zip(flat[0::2], flat[1::2], strict=False)) for flat in per_step]
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
        counts.pop(key, None)  # zeros are dropped: a recount and an add/remove history compare equal


def _bump_slot(table: dict[str, list[int]], key: str, slot: int, sign: int) -> None:
    slots = table.get(key)
    if slots is None:
        slots = table[key] = [0] * SLOTS
    slots[slot] += sign
    if sign < 0 and not any(slots):
        del table[key]


def _move_slot(table: dict[str, list[int]], key: str, frm: int, to: int) -> None:
    """One customer counted under ``key`` moves from slot ``frm`` to slot ``to``."""
    slots = table.get(key)
    if slots is None:
        slots = table[key] = [0] * SLOTS
    slots[to] += 1
    slots[frm] -= 1
    if not any(slots):
        del table[key]


def _add_slots(table: dict[str, list[int]], key: str, slots: list[int]) -> None:
    mine = table.get(key)
    if mine is None:
        table[key] = list(slots)
    else:
        for i, n in enumerate(slots):
            mine[i] += n

