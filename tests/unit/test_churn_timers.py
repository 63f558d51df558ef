"""The churn timer index: due customers in order, lazy invalidation, partitions, rebuild."""

from __future__ import annotations

import random

from journey.churn.timers import DueIndex


def test_pops_only_what_is_due_in_time_order():
    index = DueIndex()
    index.schedule("c", 30.0)
    index.schedule("a", 10.0)
    index.schedule("b", 20.0)
    assert index.pop_due(5.0) == []
    assert index.pop_due(20.0) == ["a", "b"]
    assert len(index) == 1 and "c" in index
    assert index.next_due() == 30.0


def test_rescheduling_invalidates_the_old_entry():
    index = DueIndex()
    index.schedule("a", 10.0)
    index.schedule("a", 50.0)  # pushed back
    assert index.pop_due(20.0) == []
    index.schedule("a", 15.0)  # brought forward
    assert index.pop_due(20.0) == ["a"]
    assert index.pop_due(100.0) == []  # the 50.0 entry is stale now


def test_none_cancels_and_limit_bounds_a_tick():
    index = DueIndex()
    for i in range(10):
        index.schedule(f"k{i}", float(i))
    index.schedule("k3", None)
    first = index.pop_due(100.0, limit=4)
    assert first == ["k0", "k1", "k2", "k4"]
    assert index.pop_due(100.0) == ["k5", "k6", "k7", "k8", "k9"]
    assert len(index) == 0 and index.next_due() is None


def test_drop_partitions_and_rebuild():
    index = DueIndex()
    index.schedule("a", 1.0, partition=0)
    index.schedule("b", 2.0, partition=1)
    index.schedule("c", 3.0, partition=2)
    assert index.drop_partitions({1, 2}) == 2
    assert index.pop_due(10.0) == ["a"]
    index.rebuild([("x", 5.0, 3), ("y", None, 3), ("z", 4.0, 3)])
    assert len(index) == 2
    assert index.pop_due(10.0) == ["z", "x"]


def test_matches_a_brute_force_model_and_stays_compact():
    rng = random.Random(4)
    index = DueIndex()
    model: dict[str, float] = {}
    now = 0.0
    for step in range(20_000):
        key = f"c{rng.randrange(300)}"
        if rng.random() < 0.1:
            index.schedule(key, None)
            model.pop(key, None)
        else:
            due = now + rng.uniform(0, 100)
            index.schedule(key, due)
            model[key] = due
        if step % 50 == 0:
            now += rng.uniform(0, 20)
            expected = sorted((d, k) for k, d in model.items() if d <= now)
            got = index.pop_due(now)
            assert got == [k for _, k in expected]
            for k in got:
                del model[k]
    assert len(index) == len(model)
    # Stale entries are dropped: memory stays proportional to the live customers.
    assert len(index._heap) <= 2 * len(model) + 1024
