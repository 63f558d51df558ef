"""The worker's churn adapter without Kafka: the timer acknowledges outputs before it writes
states, never overwrites a newer state, and the index is rebuilt from the table."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from journey.core.clock import DAY_S, iso
from journey.core.definition import load_definition
from journey.core.events import validate
from journey.core.machine import Limits, apply
from journey.core.state import CustomerState
from journey.settings import Settings
from journey.worker.churn import ChurnSettings, ChurnWorker
from journey.worker.metrics import WorkerMetrics
from journey.worker.pipeline import BatchResult, Pipeline, Record

REPO = Path(__file__).resolve().parents[2]
DEFINITION = load_definition(REPO / "schemas/journey.yaml")
T0 = 978_350_400.0  # 2001-01-01T12:00Z


class Producer:
    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.sent: list[tuple[str, bytes, dict[str, Any]]] = []

    async def send(self, topic: str, key: bytes, value: bytes, *_: Any) -> "asyncio.Future[None]":
        self.sent.append((topic, key, orjson.loads(value)))
        future = asyncio.get_running_loop().create_future()

        def ack() -> None:
            self.log.append(f"ack {topic}")
            future.set_result(None)

        asyncio.get_running_loop().call_soon(ack)
        return future


class Table(dict):
    """A table that hands out copies, as the RocksDB store does."""

    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    def get(self, key: str, default: Any = None) -> Any:
        raw = super().get(key)
        return CustomerState.from_wire(raw) if raw is not None else default

    def __setitem__(self, key: str, state: CustomerState) -> None:
        self.log.append(f"write {key}")
        super().__setitem__(key, state.to_wire())

    def items(self):  # type: ignore[override]
        return [(k, CustomerState.from_wire(v)) for k, v in super().items()]


def make_worker() -> tuple[ChurnWorker, Producer, Table, list[str]]:
    log: list[str] = []
    producer, table = Producer(log), Table(log)
    settings = Settings(topic_touchpoints="tp", topic_churn_risk="risk", topic_pain_points="pain", partitions=2)
    app = SimpleNamespace(
        rebalancing=False, producer=producer,
        assignor=SimpleNamespace(assigned_actives=lambda: [SimpleNamespace(topic="tp", partition=0)]),
    )
    japp = SimpleNamespace(
        app=app, settings=settings, definition=DEFINITION, customers=table, metrics=WorkerMetrics(DEFINITION),
        state_lock=asyncio.Lock(), state_writes=None,
    )
    return ChurnWorker(japp, ChurnSettings.from_settings(Settings())), producer, table, log  # type: ignore[arg-type]


def buyer(customer: str, days: list[int], partition: int = 0) -> CustomerState:
    state = None
    for d in days:
        tp = validate({"event_id": f"{customer}-{d}", "customer_id": customer, "type": "purchase",
                       "timestamp": iso(T0 + d * DAY_S), "properties": {"order_id": f"o{d}", "amount": 30}})
        state = apply(state, tp, DEFINITION).state
    assert state is not None
    state.partition = partition
    return state


async def score_batch(worker: ChurnWorker, customer: str, state: CustomerState, table: Table) -> None:
    record = Record(customer.encode(), b"{}", "tp", state.partition or 0, 0)
    result = BatchResult(writes={customer: (record, state, None)}, max_event_time=state.last_seen)
    await worker.after_batch([record], result)
    table[customer] = state  # what handle_batch's write_states does next


async def test_timer_acknowledges_the_churn_event_before_writing_the_state():
    worker, producer, table, log = make_worker()
    state = buyer("c1", [0, 7, 14, 21, 28])
    await score_batch(worker, "c1", state, table)
    assert table.get("c1").extra["churn"]["l"] == "low"
    due = worker.index.due_time("c1")
    assert due is not None
    worker.clock.observe(due + 3600, time.time())  # another customer's later event (a replay)
    log.clear()
    assert await worker.tick() == 1
    assert log == ["ack risk", "write c1"]
    (topic, key, event), = producer.sent
    assert (topic, key, event["level"], event["previous_level"]) == ("risk", b"c1", "medium", "low")
    stored = table.get("c1").extra["churn"]
    assert stored["l"] == "medium" and stored["due"] == worker.index.due_time("c1") > due


async def test_timer_changes_reach_the_live_aggregates_with_the_state_before():
    worker, _producer, table, _log = make_worker()
    seen: list[tuple[str | None, str | None]] = []
    worker.japp.pipeline = SimpleNamespace(summarize=lambda st: st.extra["churn"]["l"] if st and "churn" in st.extra else None)
    worker.japp.aggregates = SimpleNamespace(
        observe=lambda records, result: seen.extend((before, st.extra["churn"]["l"]) for _r, st, before in result.writes.values())
    )
    state = buyer("c1", [0, 7, 14, 21, 28])
    await score_batch(worker, "c1", state, table)
    worker.clock.observe(worker.index.due_time("c1") + 3600, time.time())
    await worker.tick()
    assert seen == [("low", "medium")]


async def test_timer_never_overwrites_a_state_a_batch_wrote_meanwhile():
    worker, producer, table, log = make_worker()
    state = buyer("c1", [0, 7, 14, 21, 28])
    await score_batch(worker, "c1", state, table)
    due = worker.index.due_time("c1")
    worker.clock.observe(due + 3600, time.time())

    original_send = producer.send
    batches: list[asyncio.Future[None]] = []

    async def a_batch_lands() -> None:
        async with worker.japp.state_lock:  # as agents.handle_records does
            newer = buyer("c1", [0, 7, 14, 21, 28, 29])  # the batch applied a new purchase
            dict.__setitem__(table, "c1", newer.to_wire())

    async def send_while_a_batch_arrives(*args: Any) -> Any:
        batches.append(asyncio.ensure_future(a_batch_lands()))
        await asyncio.sleep(0.01)  # the batch gets every chance to run now
        return await original_send(*args)

    producer.send = send_while_a_batch_arrives  # type: ignore[method-assign]
    await worker.tick()
    await batches[0]
    assert table.get("c1").purchase_days == 6, "the timer wrote its older copy over the batch's state"


async def test_rebuild_indexes_this_workers_partitions_from_the_table():
    worker, _producer, table, _log = make_worker()
    for customer, partition in (("a", 0), ("b", 1)):
        state = buyer(customer, [0, 3], partition)
        await score_batch(worker, customer, state, table)
    never_scored = buyer("old", [0], partition=0)
    table["old"] = never_scored
    expected_a = worker.index.due_time("a")
    worker.index.clear()
    assert worker.rebuild() == 2  # "b" lives in a partition this worker no longer owns
    assert worker.index.due_time("a") == expected_a
    assert "b" not in worker.index
    assert worker.index.due_time("old") == float("-inf")  # assessed on the next tick


async def test_after_batch_notes_carts_and_emits_the_pain_point_when_due():
    worker, producer, table, _log = make_worker()
    tp = {"event_id": "e1", "customer_id": "k", "type": "add_to_cart", "timestamp": iso(T0), "channel": "ads"}
    record = Record(b"k", orjson.dumps(tp), "tp", 0, 0)
    result = Pipeline(DEFINITION, Limits()).process([record], {})
    await worker.after_batch([record], result)
    table["k"] = result.writes["k"][1]
    assert worker.index.due_time("k") == pytest.approx(T0 + 86400)
    worker.clock.observe(T0 + 86400 + 120, time.time())
    await worker.tick()
    pains = [e for t, _k, e in producer.sent if t == "pain"]
    assert [(p["kind"], p["channel"], p["at"]) for p in pains] == [("cart_abandoned", "ads", iso(T0 + 86400))]


async def test_after_batch_notes_only_the_applied_touchpoints_of_each_customer():
    worker, _producer, _table, _log = make_worker()

    def rec(event_id: str, customer: str, type_: str, at: float, key: bytes, offset: int) -> Record:
        tp = {"event_id": event_id, "customer_id": customer, "type": type_, "timestamp": iso(at), "channel": "ads",
              "properties": {"order_id": event_id, "amount": 5} if type_ == "purchase" else {}}
        return Record(key, orjson.dumps(tp), "tp", 0, offset)

    records = [
        rec("c1", "a", "add_to_cart", T0, b"a", 0),
        rec("c1", "a", "add_to_cart", T0 + 2 * DAY_S, b"a", 1),  # a duplicate (same id): not a second cart
        rec("c2", "b", "add_to_cart", T0, b"a", 2),  # keyed as another customer: re-published, not noted
        rec("c3", "b", "page_view", T0, b"b", 3),
        rec("p1", "c", "add_to_cart", T0, b"c", 4),
        rec("p2", "c", "purchase", T0 + 3600, b"c", 5),  # closes c's cart
    ]
    result = Pipeline(DEFINITION, Limits()).process(records, {})
    assert result.duplicates == 1 and len(result.rekeyed) == 1
    await worker.after_batch(records, result)
    pain = {key: state.extra.get("pain") for key, (_r, state, _b) in result.writes.items()}
    assert pain["a"] == {"c": [[T0, "ads"]]}
    assert pain["b"] is None
    assert pain["c"] == {"r": T0 + 3600}
    assert worker.index.due_time("a") == pytest.approx(T0 + DAY_S)
