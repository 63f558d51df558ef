"""A forget through the batch protocol on a real RocksDB store: the outputs first, then a
tombstone on the changelog, then the delete in the store, then the offsets; reads see the
customer gone from the moment the batch is staged, and the live aggregates drop them at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
from faust.types import TP

from journey.core.aggregates import PartitionAggregate
from journey.core.privacy import FORGET, ForgetRequest, is_marker, marker_key
from journey.core.state import CustomerState
from journey.worker.app import JourneyApp
from journey.worker.pipeline import Record, control_headers
from journey.worker.privacy import Privacy
from support.protocol import Producer, attach_protocol, settle, worker_app

INPUT = "touchpoints"


def _stored(japp: JourneyApp, key: str, partition: int = 0) -> CustomerState | None:
    raw = japp.batches.store.store._db_for_partition(partition).get(key.encode())  # type: ignore[union-attr]
    return CustomerState.from_wire(raw) if raw is not None else None


async def _durable(producer: Producer, japp: JourneyApp, stage: object, topics: list[str]) -> None:
    await settle()
    for topic in topics:
        producer.ack(topic)
    await settle()
    producer.ack(japp.batches.store.changelog_topic)  # type: ignore[union-attr]
    await asyncio.wait_for(stage.done, timeout=2)  # type: ignore[attr-defined]


async def test_forget_is_a_tombstone_then_a_delete_in_the_batch_protocols_order(tmp_path: Path) -> None:
    japp = worker_app(tmp_path, topic_touchpoints=INPUT)
    producer = Producer()
    protocol, acked, failures = attach_protocol(japp, producer)
    assert japp.aggregates is not None
    japp.aggregates.parts[0] = PartitionAggregate()  # partition 0 is owned (as after a recovery)
    settings = japp.settings
    view = {"event_id": "e1", "customer_id": "c1", "type": "product_view", "timestamp": "2026-01-01T00:00:00Z"}
    stage = await protocol.run_batch([Record(b"c1", orjson.dumps(view), INPUT, 0, 0)], {TP(INPUT, 0): (0, 0)})
    await _durable(producer, japp, stage, [settings.topic_transitions])
    assert _stored(japp, "c1") is not None and sum(japp.aggregates.parts[0].slots()) == 1

    out = japp.pipeline.identity.control_output(FORGET, "c1", ForgetRequest("c1", "r1", 1.7e9).to_bytes())
    control, signature = control_headers(out.headers or ())
    forget = Record(b"c1", out.value, INPUT, 0, 1, None, control, signature)
    stage = await protocol.run_batch([forget], {TP(INPUT, 0): (1, 1)})
    assert protocol.store.read("c1", 0) is None, "reads must see the customer gone once the forget is staged"
    assert sum(japp.aggregates.parts[0].slots()) == 0, "the live aggregate still counts a forgotten customer"
    await settle()
    assert settings.topic_privacy in producer.topics()
    assert protocol.store.changelog_topic not in producer.topics()[2:], "the changelog went before the outputs were acknowledged"
    await _durable(producer, japp, stage, [settings.topic_privacy])
    changelog = producer.records(protocol.store.changelog_topic)
    privacy = japp.pipeline.privacy
    assert isinstance(privacy, Privacy)
    mk = marker_key(privacy.salt, "c1")
    assert (b"c1", None) in changelog, "no tombstone for the forgotten customer on the changelog"
    assert sorted(k for k, _ in changelog[-2:]) == sorted([b"c1", mk.encode()])  # type: ignore[type-var]
    assert _stored(japp, "c1") is None and is_marker(_stored(japp, mk))
    assert acked[-1] == {TP(INPUT, 0): (1, 1)} and not failures
    [announced] = [orjson.loads(v) for _k, v in producer.records(settings.topic_privacy)]  # type: ignore[arg-type]
    assert (announced["type"], announced["customer_id"], announced["request_id"]) == ("customer_forgotten", "c1", "r1")


def _forget_record(japp: JourneyApp, offset: int, request_id: str = "r1") -> Record:
    out = japp.pipeline.identity.control_output(FORGET, "c1", ForgetRequest("c1", request_id, 1.7e9).to_bytes())
    control, signature = control_headers(out.headers or ())
    return Record(b"c1", out.value, INPUT, 0, offset, None, control, signature)


async def _customer_c1(japp: JourneyApp, producer: Producer) -> None:
    view = {"event_id": "e1", "customer_id": "c1", "type": "product_view", "timestamp": "2026-01-01T00:00:00Z"}
    stage = await japp.batches.run_batch([Record(b"c1", orjson.dumps(view), INPUT, 0, 0)], {TP(INPUT, 0): (0, 0)})  # type: ignore[union-attr]
    await _durable(producer, japp, stage, [japp.settings.topic_transitions])


async def test_a_forget_whose_changelog_write_failed_is_applied_again_by_the_replay(tmp_path: Path) -> None:
    """Killed between the outputs (customer_forgotten acknowledged) and the changelog: the replay
    finds the state, deletes it and announces again with the same request id."""
    japp = worker_app(tmp_path, topic_touchpoints=INPUT)
    producer = Producer()
    protocol, acked, failures = attach_protocol(japp, producer)
    await _customer_c1(japp, producer)
    stage = await protocol.run_batch([_forget_record(japp, 1)], {TP(INPUT, 0): (1, 1)})
    await settle()
    producer.ack(japp.settings.topic_privacy)
    await settle()
    producer.ack(protocol.store.changelog_topic, RuntimeError("killed before the changelog had it"))
    try:
        await asyncio.wait_for(stage.done, timeout=2)  # type: ignore[attr-defined]
    except RuntimeError:
        pass
    assert failures and _stored(japp, "c1") is not None and acked[-1] != {TP(INPUT, 0): (1, 1)}

    # The next owner (same disk: nothing of the forget reached it) replays the batch.
    producer2 = Producer(auto_ack=True)
    protocol2, acked2, failures2 = attach_protocol(japp, producer2)
    stage = await protocol2.run_batch([_forget_record(japp, 1)], {TP(INPUT, 0): (1, 1)})
    await asyncio.wait_for(stage.done, timeout=2)  # type: ignore[attr-defined]
    assert _stored(japp, "c1") is None and not failures2 and acked2 == [{TP(INPUT, 0): (1, 1)}]
    notices = [orjson.loads(v) for p in (producer, producer2) for _k, v in p.records(japp.settings.topic_privacy)]  # type: ignore[arg-type]
    assert [n["request_id"] for n in notices] == ["r1", "r1"]


async def test_a_forget_replayed_after_it_was_durable_does_nothing(tmp_path: Path) -> None:
    """Killed after the store was written, before the offset commit: the replay writes nothing and
    publishes nothing; a new request for the same id is only confirmed."""
    japp = worker_app(tmp_path, topic_touchpoints=INPUT)
    producer = Producer(auto_ack=True)
    protocol, _acked, failures = attach_protocol(japp, producer)
    await _customer_c1(japp, producer)
    for offset in (1, 1):  # the second time: the replay
        stage = await protocol.run_batch([_forget_record(japp, offset)], {TP(INPUT, 0): (offset, offset)})
        await asyncio.wait_for(stage.done, timeout=2)  # type: ignore[attr-defined]
    changelog = producer.records(protocol.store.changelog_topic)
    assert len(producer.records(japp.settings.topic_privacy)) == 1, "the replay announced again"
    assert [v is None for _k, v in changelog] == [False, True, False], "the replay wrote to the changelog again"
    stage = await protocol.run_batch([_forget_record(japp, 2, "r2")], {TP(INPUT, 0): (2, 2)})
    await asyncio.wait_for(stage.done, timeout=2)  # type: ignore[attr-defined]
    notices = [orjson.loads(v)["request_id"] for _k, v in producer.records(japp.settings.topic_privacy)]  # type: ignore[arg-type]
    assert notices == ["r1", "r2"] and len(producer.records(protocol.store.changelog_topic)) == 3 and not failures


async def test_a_customer_whose_state_is_damaged_can_still_be_forgotten(tmp_path: Path) -> None:
    """The damaged-state error tells the operator to forget the customer: the forget must then
    delete the key, write the marker and announce it, not dead-letter the request (it is keyed
    by the customer id: the dead-letter topic must not keep it). A damaged marker still
    suppresses, and an undo lifts it."""
    japp = worker_app(tmp_path, topic_touchpoints=INPUT)
    producer = Producer()
    protocol, acked, failures = attach_protocol(japp, producer)
    settings = japp.settings
    protocol.store.store._db_for_partition(0).put(b"c1", b'{"not": "a state"}')
    stage = await protocol.run_batch([_forget_record(japp, 0)], {TP(INPUT, 0): (0, 0)})
    await settle()
    assert settings.topic_dead_letter not in producer.topics()
    await _durable(producer, japp, stage, [settings.topic_privacy])
    privacy = japp.pipeline.privacy
    assert isinstance(privacy, Privacy)
    mk = marker_key(privacy.salt, "c1")
    assert protocol.store.store._db_for_partition(0).get(b"c1") is None and is_marker(_stored(japp, mk))
    [announced] = [orjson.loads(v) for _k, v in producer.records(settings.topic_privacy)]  # type: ignore[arg-type]
    assert (announced["type"], announced["customer_id"]) == ("customer_forgotten", "c1")

    protocol.store.forget()  # as after a restart: the next reads go to RocksDB
    protocol.store.store._db_for_partition(0).put(mk.encode(), b"garbage")  # the marker damaged
    view = {"event_id": "e9", "customer_id": "c1", "type": "product_view", "timestamp": "2026-01-02T00:00:00Z"}
    stage = await protocol.run_batch([Record(b"c1", orjson.dumps(view), INPUT, 0, 1)], {TP(INPUT, 0): (1, 1)})
    await settle()
    assert privacy.suppressed == 1 and settings.topic_transitions not in producer.topics()
    assert acked[-1] == {TP(INPUT, 0): (1, 1)} and not failures
