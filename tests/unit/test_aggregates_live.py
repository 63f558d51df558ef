"""The worker's LiveAggregates.observe over real pipeline batches, without Kafka: each owned
partition's aggregate stays equal to a recount of that partition's states."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import orjson

from journey.core.aggregates import PartitionAggregate, summarize
from journey.core.clock import iso
from journey.core.definition import load_definition
from journey.core.events import CHANNELS
from journey.core.machine import Limits
from journey.core.state import CustomerState
from journey.worker.aggregates import LiveAggregates
from journey.worker.batch import spans_of
from journey.worker.pipeline import Pipeline, Record

DEFINITION = load_definition(Path(__file__).resolve().parents[2] / "schemas" / "journey.yaml")
TYPES = ["page_view", "product_view", "add_to_cart", "checkout_started", "purchase", "referral_sent", "support_ticket"]
T0 = 1_700_000_000.0


def _live(owned: set[int]) -> LiveAggregates:
    settings = SimpleNamespace(topic_touchpoints="touchpoints", app_id="journey", web_port=6066)
    live = LiveAggregates(SimpleNamespace(settings=settings))  # type: ignore[arg-type]
    live.assigned = set(owned)
    live.parts = {p: PartitionAggregate() for p in owned}
    return live


def test_observe_keeps_each_owned_partition_equal_to_a_recount() -> None:
    rng = random.Random(3)
    pipe = Pipeline(DEFINITION, Limits(), summarize=summarize)
    live = _live({0, 1})  # partition 2 is someone else's
    states: dict[str, CustomerState] = {}
    next_offset = [0, 0, 0]
    highest: dict[int, int] = {}
    for batch_no in range(40):
        records = []
        for i in range(50):
            c = rng.randrange(40)
            p = c % 3
            event = {
                "event_id": f"e{batch_no}-{i}", "customer_id": f"c{c}", "type": rng.choice(TYPES),
                "timestamp": iso(T0 + batch_no * 3600 + rng.uniform(-7200, 0)), "channel": rng.choice(sorted(CHANNELS)),
                "properties": {"order_id": f"o{c}", "amount": 5.0, "currency": "EUR"},
            }
            records.append(Record(f"c{c}".encode(), orjson.dumps(event), "touchpoints", p, next_offset[p]))
            highest[p] = next_offset[p]
            next_offset[p] += 1
        result = pipe.process(records, states)
        for key, (_rec, state, _before) in result.writes.items():
            states[key] = state
        live.observe(spans_of(records), result)  # as the ingest hands them over: (first, last) offsets
    for p in (0, 1):
        mine = [st for st in states.values() if st.partition == p]
        assert mine
        assert live.parts[p] == PartitionAggregate.of(mine)
        assert live.offsets[p] == highest[p]
    assert 2 not in live.parts and 2 not in live.offsets


def test_a_partition_given_back_after_a_missed_generation_is_rebuilt_from_the_table() -> None:
    """A worker dropped from the group (a session timeout) while another member processed its
    partition, then given the partition back: the table holds the other member's writes (Faust
    recovers them), so the aggregate must be rebuilt, not kept; a rebalance it took part in keeps it."""
    from faust.types import TP

    pipe = Pipeline(DEFINITION, Limits(), summarize=summarize, copy_reads=False)
    table: dict[str, CustomerState] = {}
    assignment = {TP("touchpoints", 0)}
    app = SimpleNamespace(consumer=SimpleNamespace(assignment=lambda: assignment), consumer_generation_id=1)
    settings = SimpleNamespace(topic_touchpoints="touchpoints", app_id="journey", web_port=6066)
    live = LiveAggregates(SimpleNamespace(settings=settings, app=app, customers=table))  # type: ignore[arg-type]

    def event(i: int, customer: str, etype: str) -> Record:
        value = {"event_id": f"e{i}", "customer_id": customer, "type": etype, "timestamp": iso(T0 + i),
                 "properties": {"order_id": "o1", "amount": 5.0}}
        return Record(customer.encode(), orjson.dumps(value), "touchpoints", 0, i)

    def process(records: list[Record], observed: bool) -> None:
        result = pipe.process(records, table)
        table.update({k: s for k, (_r, s, _b) in result.writes.items() if s is not None})
        if observed:
            live.observe(spans_of(records), result)

    live.on_assigned(assignment)
    live.on_recovered()
    process([event(0, "c1", "page_view"), event(1, "c2", "page_view")], observed=True)
    app.consumer_generation_id = 2  # a rebalance this worker took part in: kept as it is
    live.on_assigned(assignment)
    live.on_recovered()
    assert live.parts[0].slots() == PartitionAggregate.of(table.values()).slots()
    # Generation 3 went on without this worker: another member applied these to the table.
    process([event(2, "c1", "purchase"), event(3, "c3", "page_view")], observed=False)
    app.consumer_generation_id = 4
    live.on_assigned(assignment)
    live.on_recovered()
    assert live.parts[0].slots() == PartitionAggregate.of(table.values()).slots()
