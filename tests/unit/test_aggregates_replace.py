"""PartitionAggregate.replace against remove + add and a recount, on states the machine rarely
or never makes: first touch changed, reached times moved earlier or out of order, channels
dropped, attribution changed, churn levels and pain points coming and going."""

from __future__ import annotations

import random

import pytest

from journey.core import painpoints
from journey.core.aggregates import PartitionAggregate, summarize
from journey.core.events import CHANNELS
from journey.core.stages import STAGES
from journey.core.state import CustomerState

T0 = 1_700_000_000.0
CHANNEL_LIST = sorted(CHANNELS)


def _random_state(rng: random.Random) -> CustomerState:
    st = CustomerState()
    st.stage = rng.randint(-1, len(STAGES) - 1)
    # Mostly increasing times with gaps from seconds to weeks; sometimes out of order or missing.
    t = T0 + rng.uniform(0, 86400)
    for i in range(len(STAGES)):
        t += rng.choice([0.2, 5.0, 3600.0, 86400.0 * rng.uniform(0.5, 30)])
        st.reached[i] = rng.choice([t, t, None, T0 + rng.uniform(-1e6, 1e6)])
    st.channels = {ch: rng.randint(1, 5) for ch in rng.sample(CHANNEL_LIST, rng.randint(0, 4))}
    st.first_channel = rng.choice([None, *CHANNEL_LIST[:4]])
    st.attribution = rng.choice([None, [rng.choice(CHANNEL_LIST[:3]), rng.choice(CHANNEL_LIST[:3])], [None, "email"]])
    if rng.random() < 0.7:
        st.extra["churn"] = {"s": 0.5, "l": rng.choice(["low", "medium", "high", 3])}
    pain: dict = {}
    if rng.random() < 0.3:
        pain["a"] = [rng.randint(1, 3), T0]
    if rng.random() < 0.3:
        pain["s"] = rng.choice([1, 2])
    if rng.random() < 0.3:
        pain["c"] = [[T0, "email"]]
    if pain:
        st.extra[painpoints.KEY] = pain
    return st


def _variant(rng: random.Random, st: CustomerState) -> CustomerState:
    """``st`` with a few parts changed (or none), as one batch might change a customer."""
    new = st.copy()
    for _ in range(rng.randint(0, 3)):
        part = rng.randrange(9)
        if part == 0:
            new.stage = rng.randint(-1, len(STAGES) - 1)
        elif part == 1:
            i = rng.randrange(len(STAGES))
            new.reached[i] = rng.choice([None, T0 + rng.uniform(-1e5, 1e7)])
        elif part == 2:
            ch = rng.choice(CHANNEL_LIST)
            new.channels[ch] = new.channels.get(ch, 0) + 1
        elif part == 3 and new.channels:
            del new.channels[rng.choice(list(new.channels))]
        elif part == 4:
            new.first_channel = rng.choice([None, *CHANNEL_LIST[:4]])
        elif part == 5:
            new.attribution = rng.choice([None, ["email", "ads"], ["ads", None]])
        elif part == 6:
            new.extra["churn"] = {"l": rng.choice(["low", "medium", "high"])}
        elif part == 7:
            keep = rng.randrange(len(STAGES))  # one reached stage left: no step at all
            new.reached = [t if i == keep else None for i, t in enumerate(new.reached)]
        else:
            new.extra[painpoints.KEY] = rng.choice([{}, {"a": [rng.randint(1, 4), T0]}, {"s": 1}, {"c": [[T0, "ads"]]}])
    return new


@pytest.mark.parametrize("seed", range(4))
def test_replace_equals_remove_add_and_a_recount(seed: int) -> None:
    rng = random.Random(seed)
    others = [_random_state(rng) for _ in range(30)]
    for _ in range(300):
        before = rng.choice([None, _random_state(rng)])
        after = rng.choice([None, _variant(rng, before) if before is not None else _random_state(rng)])
        base = rng.sample(others, rng.choice([0, 1, 3, 15]))  # few others: entries must also disappear
        agg = PartitionAggregate.of([*base, *([before] if before is not None else [])])
        by_steps = PartitionAggregate.of([*base, *([before] if before is not None else [])])
        agg.replace(summarize(before), summarize(after))
        by_steps.remove(summarize(before))
        by_steps.add(summarize(after))
        recount = PartitionAggregate.of([*base, *([after] if after is not None else [])])
        assert agg.to_wire() == recount.to_wire()
        assert by_steps.to_wire() == recount.to_wire()


def test_replace_of_a_customer_with_itself_changes_nothing() -> None:
    rng = random.Random(7)
    states = [_random_state(rng) for _ in range(50)]
    agg = PartitionAggregate.of(states)
    wire = agg.to_wire()
    for st in states:
        agg.replace(summarize(st), summarize(st.copy()))
    assert agg.to_wire() == wire


def test_replacing_every_customer_by_nothing_empties_it() -> None:
    rng = random.Random(8)
    states = [_random_state(rng) for _ in range(50)]
    agg = PartitionAggregate.of(states)
    for st in states:
        agg.replace(summarize(st), None)
    assert agg.is_empty()
    assert agg.to_wire() == PartitionAggregate().to_wire()


def test_summary_is_a_snapshot() -> None:
    # The pipeline summarizes a state and the batch changes it afterwards: the summary must not follow.
    rng = random.Random(9)
    st = _random_state(rng)
    st.channels = {"email": 1}
    st.reached[0] = T0
    summary = summarize(st)
    agg = PartitionAggregate()
    agg.add(summary)
    st.channels["email"] += 1
    st.channels["ads"] = 1
    st.reached[0] = None
    agg.remove(summary)
    assert agg.is_empty()
