"""The batch protocol (worker/batch.py) on a real RocksDB store, with a producer whose
acknowledgements the test controls: outputs before the changelog, the changelog before the
store, stages in order, input offsets last; a failure at any step writes nothing after it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from faust.types import TP

from journey.core.state import CustomerState
from journey.worker.app import JourneyApp
from journey.worker.batch import BatchProtocol
from journey.worker.pipeline import Record
from support.protocol import Producer, attach_protocol, settle, worker_app

INPUT = "touchpoints"


@pytest.fixture
def japp(tmp_path: Path) -> JourneyApp:
    return worker_app(tmp_path, topic_touchpoints=INPUT)


def _protocol(japp: JourneyApp) -> tuple[BatchProtocol, Producer, list[Any], list[str]]:
    producer = Producer()
    protocol, acked, failures = attach_protocol(japp, producer)
    return protocol, producer, acked, failures


def _state(events: int, partition: int = 0) -> CustomerState:
    st = CustomerState()
    st.events, st.partition = events, partition
    return st


def _stored(protocol: BatchProtocol, key: str, partition: int = 0) -> CustomerState | None:
    raw = protocol.store.store._db_for_partition(partition).get(key.encode())
    return CustomerState.from_wire(raw) if raw is not None else None


async def test_outputs_then_changelog_then_store_then_offsets_in_stage_order(japp: JourneyApp) -> None:
    protocol, producer, acked, failures = _protocol(japp)
    changelog = protocol.store.changelog_topic
    state = _state(1)
    spans_a, spans_b = {TP(INPUT, 0): (0, 9)}, {TP(INPUT, 0): (10, 19)}
    a = await protocol.stage([("c1", 0, state)], [("out", b"c1", b"a", None)], spans=spans_a)
    state.events = 2  # the next batch changes the same object in place
    b = await protocol.stage([("c1", 0, state)], [("out", b"c1", b"b", None)], spans=spans_b)
    state.events = 3  # ... and the one after, not yet staged
    assert protocol.store.read("c1", 0) is state  # reads see the staged object before the store does

    await settle()
    assert producer.topics() == ["out", "out"], "the changelog went out before the outputs were acknowledged"
    producer.ack("out")
    await settle()
    assert producer.topics() == ["out", "out", changelog, changelog]
    assert [CustomerState.from_wire(items[0][1]).events for t, _, items, _ in producer.sent if t == changelog] == [1, 2]
    assert _stored(protocol, "c1") is None, "the store was written before the changelog was acknowledged"
    assert not acked

    producer.ack(changelog)
    await asyncio.wait_for(asyncio.gather(a.done, b.done), timeout=2)
    assert _stored(protocol, "c1").events == 2  # type: ignore[union-attr]
    assert acked == [spans_a, spans_b] and not failures
    assert protocol.store.store.persisted_offset(TP(changelog, 0)) == 1  # a restart replays only what follows


async def test_a_stage_whose_outputs_failed_writes_nothing_and_nor_do_later_ones(japp: JourneyApp) -> None:
    protocol, producer, acked, failures = _protocol(japp)
    a = await protocol.stage([("c1", 0, _state(1))], [("out", b"c1", b"a", None)], spans={TP(INPUT, 0): (0, 0)})
    b = await protocol.stage([("c2", 0, _state(1))], [], spans={TP(INPUT, 0): (1, 1)})
    await settle()
    producer.ack("out", RuntimeError("outputs not acknowledged"))
    for stage in (a, b):
        with pytest.raises(RuntimeError, match="not acknowledged"):
            await asyncio.wait_for(stage.done, timeout=2)
    assert _stored(protocol, "c1") is None and _stored(protocol, "c2") is None
    assert producer.topics() == ["out"]  # no changelog record either
    assert not acked and len(failures) == 2
    # What the log says: the step, the error, the topics and offsets, and no customer key.
    assert "the outputs' acknowledgements failed with RuntimeError: outputs not acknowledged" in failures[0]
    assert f"{INPUT}[0] 0-0" in failures[0] and "out" in failures[0] and "c1" not in failures[0]
    assert "the stage before failed" in failures[1] and f"{INPUT}[0] 1-1" in failures[1]


async def test_a_changelog_not_acknowledged_leaves_the_store_and_the_offsets_alone(japp: JourneyApp) -> None:
    protocol, producer, acked, failures = _protocol(japp)
    a = await protocol.stage([("c1", 0, _state(1))], [], spans={TP(INPUT, 0): (0, 0)})
    await settle()
    producer.ack(protocol.store.changelog_topic, RuntimeError("changelog not acknowledged"))
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(a.done, timeout=2)
    assert _stored(protocol, "c1") is None and not acked and failures
    assert "the changelog's acknowledgements failed with RuntimeError: changelog not acknowledged" in failures[0]
    assert protocol.store.changelog_topic in failures[0] and "min.insync.replicas" in failures[0]


async def test_run_batch_applies_emits_and_makes_the_batch_durable(japp: JourneyApp) -> None:
    protocol, producer, acked, failures = _protocol(japp)
    event = {"event_id": "e1", "customer_id": "c1", "type": "page_view", "timestamp": "2026-01-01T00:00:00Z"}
    bad = Record(b"c2", b"{not json", INPUT, 1, 7)
    records = [Record(b"c1", orjson.dumps(event), INPUT, 0, 3), bad]
    stage = await protocol.run_batch(records, {TP(INPUT, 0): (3, 3), TP(INPUT, 1): (7, 7)})
    await settle()
    settings = japp.settings
    assert sorted(producer.topics()) == sorted([settings.topic_transitions, settings.topic_dead_letter])
    producer.ack(settings.topic_transitions)
    producer.ack(settings.topic_dead_letter)
    await settle()
    producer.ack(protocol.store.changelog_topic)
    await asyncio.wait_for(stage.done, timeout=2)
    assert _stored(protocol, "c1").events == 1  # type: ignore[union-attr]
    assert acked == [{TP(INPUT, 0): (3, 3), TP(INPUT, 1): (7, 7)}] and not failures


async def test_a_staged_state_is_read_back_even_when_the_cache_has_evicted_it(japp: JourneyApp) -> None:
    producer = Producer()
    protocol, _acked, _failures = attach_protocol(japp, producer)
    protocol.store.cache = type(protocol.store.cache)(1)  # room for one decoded state only
    states = {f"c{i}": _state(i) for i in range(3)}
    stage = await protocol.stage([(k, 0, s) for k, s in states.items()], [])
    assert len(protocol.store.cache) == 1
    for key, state in states.items():  # the store has none of them yet: reads must not go there
        assert protocol.store.read(key, 0) is state
    await settle()
    producer.ack(protocol.store.changelog_topic)
    await asyncio.wait_for(stage.done, timeout=2)
    assert not protocol.store.pending  # written: held no longer
    assert protocol.store.read("c0", 0).events == 0  # type: ignore[union-attr]  # now from RocksDB


async def test_a_damaged_stored_state_costs_its_record_not_the_partition(japp: JourneyApp) -> None:
    """A stored state no journey wrote (damaged): the touchpoint that needs it is dead-lettered with
    an error that says what to do and names no customer, the state is left as it is, and the
    batch's other records are applied (before: the worker exited on it, every restart again)."""
    protocol, producer, acked, failures = _protocol(japp)
    protocol.store.store._db_for_partition(0).put(b"c2", b'{"not": "a state"}')
    events = [{"event_id": f"e{i}", "customer_id": c, "type": "page_view", "timestamp": "2026-01-01T00:00:00Z"}
              for i, c in enumerate(["c1", "c2", "c3"])]
    records = [Record(e["customer_id"].encode(), orjson.dumps(e), INPUT, 0, i) for i, e in enumerate(events)]
    stage = await protocol.run_batch(records, {TP(INPUT, 0): (0, 2)})
    await settle()
    settings = japp.settings
    [(key, value)] = producer.records(settings.topic_dead_letter)
    letter = orjson.loads(value)  # type: ignore[arg-type]
    assert key == b"c2" and letter["reason"] == "processing_error" and letter["offset"] == 1
    assert "partition 0 cannot be read" in letter["error"] and "journey forget" in letter["error"]
    assert "c2" not in letter["error"]
    for topic in (settings.topic_transitions, settings.topic_dead_letter):
        producer.ack(topic)
    await settle()
    producer.ack(protocol.store.changelog_topic)
    await asyncio.wait_for(stage.done, timeout=2)
    assert _stored(protocol, "c1").events == 1 and _stored(protocol, "c3").events == 1  # type: ignore[union-attr]
    assert protocol.store.store._db_for_partition(0).get(b"c2") == b'{"not": "a state"}'  # left as it is
    assert acked == [{TP(INPUT, 0): (0, 2)}] and not failures


def test_the_tables_codec_passes_over_a_damaged_state_but_not_a_newer_one() -> None:
    """The table's own reads (the rebuilds after a rebalance, lookups) see a damaged state as a
    missing one; a newer journey's state still stops the worker, for a newer worker to read."""
    from journey.errors import NewerEncoding
    from journey.worker.app import StateCodec

    codec = StateCodec()
    assert codec._loads(b'{"not": "a state"}') is None and codec._loads(b"\xff") is None
    assert codec._loads(_state(3).to_wire()).events == 3  # type: ignore[union-attr]
    with pytest.raises(NewerEncoding):
        codec._loads(b"[99]")


async def test_the_customer_lookup_reads_a_staged_forget_as_gone_before_the_store_is_written(japp: JourneyApp) -> None:
    """A forget's confirmation is acknowledged (step 5) before its tombstone reaches the store
    (step 8): the lookup reads what the batches read, staged states first, so from the
    confirmation on the customer is gone; it caches nothing of its own."""
    from types import SimpleNamespace

    from journey.worker.views import lookup

    producer = Producer(auto_ack=True)
    protocol, _acked, _failures = attach_protocol(japp, producer)
    await asyncio.wait_for((await protocol.stage([("c1", 0, _state(5))], [])).done, timeout=2)
    protocol.store.forget()  # cold, as after a restart
    view = SimpleNamespace(batches=protocol, customers=japp.customers,
                           app=SimpleNamespace(producer=SimpleNamespace(key_partition=lambda topic, key: TP(topic, 0))))
    assert lookup(view, "c1").events == 5  # type: ignore[arg-type, union-attr]  # from RocksDB
    assert len(protocol.store.cache) == 0
    producer.auto_ack = False
    stage = await protocol.stage([("c1", 0, None)], [])  # the forget, staged; the store still has the state
    assert _stored(protocol, "c1") is not None and japp.customers.get("c1") is not None  # what the view read before
    assert lookup(view, "c1") is None  # type: ignore[arg-type]
    await settle()
    producer.ack(protocol.store.changelog_topic)
    await asyncio.wait_for(stage.done, timeout=2)
    assert lookup(view, "c1") is None and _stored(protocol, "c1") is None  # type: ignore[arg-type]
