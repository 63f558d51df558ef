"""Funnel, stage and channel reports over a (merged) aggregate: plain arithmetic, no I/O.

"Reached a stage" = the customer's current stage is at or past it (stages only move forward,
and a customer who skipped a stage has still passed it), so reached counts never grow down
the funnel and conversions are at most 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from journey.core.aggregates import PartitionAggregate, bucket_value
from journey.core.events import CHANNELS
from journey.core.stages import STAGES


def stage_counts(agg: PartitionAggregate) -> dict[str, int]:
    """Customers standing in each stage now (every stage present, zeros included)."""
    slots = agg.slots()
    return {name: slots[i + 1] for i, name in enumerate(STAGES)}


def no_stage_count(agg: PartitionAggregate) -> int:
    """Customers seen whose events so far map to no stage."""
    return agg.slots()[0]


def reached_counts(slots: list[int]) -> list[int]:
    """Per stage, customers at or past it, from per-slot counts (slot 0 = no stage)."""
    out = [0] * len(STAGES)
    running = 0
    for i in range(len(STAGES) - 1, -1, -1):
        running += slots[i + 1]
        out[i] = running
    return out


def median_of_buckets(buckets: Mapping[int, int]) -> float | None:
    """The median of a bucketed histogram from its buckets' representative values (within 5% of
    the exact median for durations of a second or more; one under a second counts as 0.5 s). An
    even count: the mean of the two middle values, as the median is defined."""
    total = sum(buckets.values())
    if total <= 0:
        return None
    low_rank, high_rank = (total + 1) // 2, total // 2 + 1  # 1-based ranks of the middle value(s)
    low: float | None = None
    seen = 0
    for b in sorted(buckets):
        seen += buckets[b]
        if low is None and seen >= low_rank:
            low = bucket_value(b)
        if seen >= high_rank:
            return (low + bucket_value(b)) / 2  # type: ignore[operator]  # set at or before this bucket
    return None  # unreachable with non-negative counts


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def funnel(agg: PartitionAggregate, first_touch: str | None = None) -> list[dict[str, Any]]:
    """Per stage: reached, conversion from the previous stage and overall, drop-off, median wait."""
    reached = reached_counts(agg.slots(first_touch))
    top = reached[0]
    rows: list[dict[str, Any]] = []
    for i, name in enumerate(STAGES):
        prev = reached[i - 1] if i > 0 else None
        median = None
        if i > 0:
            median = median_of_buckets(agg.step_buckets(i - 1, first_touch))
        rows.append(
            {
                "stage": name,
                "reached": reached[i],
                "conversion_from_previous": _ratio(reached[i], prev) if prev is not None else None,
                "conversion_overall": _ratio(reached[i], top),
                # Customers who reached the previous stage and have not got here (yet).
                "drop_off": prev - reached[i] if prev is not None else None,
                "drop_off_rate": (1.0 - reached[i] / prev) if prev else None,
                "median_seconds_from_previous": None if median is None else round(median, 3),
            }
        )
    return rows


def channel_report(agg: PartitionAggregate) -> dict[str, dict[str, Any]]:
    """Per channel (every channel, zeros included): touchpoints, customers, customers reaching each stage, attribution."""
    out: dict[str, dict[str, Any]] = {}
    names = sorted(set(CHANNELS) | set(agg.touchpoints) | set(agg.by_channel))
    for ch in names:
        slots = agg.by_channel.get(ch, [0] * (len(STAGES) + 1))
        reached = reached_counts(slots)
        out[ch] = {
            "touchpoints": agg.touchpoints.get(ch, 0),
            "customers": sum(slots),
            "reached": dict(zip(STAGES, reached, strict=True)),
            "first_touch_purchases": agg.first_touch.get(ch, 0),
            "last_touch_purchases": agg.last_touch.get(ch, 0),
        }
    return out


def attribution(agg: PartitionAggregate) -> dict[str, dict[str, int]]:
    """Purchasers by the channel credited under each model."""
    return {"first_touch": dict(sorted(agg.first_touch.items())), "last_touch": dict(sorted(agg.last_touch.items()))}

