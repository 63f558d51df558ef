"""The worker's batch hot path, without Kafka: a dict stands in for the Faust table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from journey.core.definition import load_definition
from journey.core.machine import Limits
from journey.core.state import CustomerState
from journey.worker.pipeline import Pipeline, Record

ROOT = Path(__file__).resolve().parents[2]
DEFINITION = load_definition(ROOT / "schemas" / "journey.yaml")


def rec(customer: str | None, event: dict | bytes | None, partition: int = 0, offset: int = 0, key: bytes | None = b"") -> Record:
    value = event if isinstance(event, (bytes, type(None))) else orjson.dumps(event)
    if key == b"":
        key = customer.encode() if customer else None
    return Record(key, value, "touchpoints", partition, offset, timestamp=1000)


def tp(eid: str, customer: str, etype: str, minute: int = 0, **props) -> dict:
    e = {"event_id": eid, "customer_id": customer, "type": etype, "timestamp": f"2024-01-01T00:{minute:02d}:00Z"}
    if props:
        e["properties"] = props
    return e


def test_a_batch_is_decoded_deduped_applied_and_written_once_per_customer():
    states: dict[str, CustomerState] = {}
    pipe = Pipeline(DEFINITION, Limits(), summarize=lambda s: None if s is None else s.stage)
    batch = [
        rec("a", tp("1", "a", "page_view"), partition=1, offset=10),
        rec("b", tp("2", "b", "add_to_cart"), partition=2, offset=20),
        rec("a", tp("3", "a", "product_view", 1), partition=1, offset=11),
        rec("a", tp("3", "a", "product_view", 1), partition=1, offset=12),  # duplicate delivery
        rec("a", b"{nope", partition=1, offset=13),
        rec("c", tp("4", "c", "page_view"), partition=3, offset=30, key=None),  # unkeyed: re-keyed
        rec("a", None, partition=1, offset=14),
    ]
    out = pipe.process(batch, states)
    assert [(t.customer_id, t.to_stage) for t in out.transitions] == [("a", 0), ("b", 2), ("a", 1)]
    assert out.trigger_timestamps == [1.0, 1.0, 1.0]
    assert out.duplicates == 1
    assert out.reasons == ["not_json", "empty_value"]
    assert [r.key for r in out.rekeyed] == [b"c"]
    assert set(out.writes) == {"a", "b"}
    record, state, before = out.writes["a"]
    assert record.partition == 1 and state.partition == 1 and state.stage == 1 and before is None
    dead = orjson.loads(out.dead_letters[0].value)
    assert dead["offset"] == 13 and dead["partition"] == 1 and dead["value"] == "{nope"
    assert out.max_event_time is not None


def test_state_from_the_table_is_continued_and_summarized_before_the_batch():
    states: dict[str, CustomerState] = {}
    pipe = Pipeline(DEFINITION, Limits(), summarize=lambda s: None if s is None else s.stage)
    first = pipe.process([rec("a", tp("1", "a", "purchase", order_id="o1"))], states)
    states["a"] = first.writes["a"][1]
    second = pipe.process([rec("a", tp("2", "a", "purchase", 5, order_id="o2")), rec("a", tp("3", "a", "social_share", 6))], states)
    assert [(t.from_stage, t.to_stage) for t in second.transitions] == [(3, 4), (4, 5)]
    assert second.writes["a"][2] == 3  # the stage before this batch, not after its first event


def test_the_table_is_untouched_until_the_batch_writes():
    states: dict[str, CustomerState] = {}
    pipe = Pipeline(DEFINITION, Limits())
    states["a"] = pipe.process([rec("a", tp("1", "a", "page_view"))], states).writes["a"][1]
    stored = states["a"].to_wire()
    out = pipe.process([rec("a", tp("2", "a", "purchase", 3, order_id="o"))], states)
    # A batch that fails before write_states must leave the stored state as it was, so the
    # replayed events are applied again rather than dropped as duplicates.
    assert states["a"].to_wire() == stored
    assert out.writes["a"][1].stage == 3 and states["a"].stage == 0


def test_a_decoder_bug_costs_one_record_not_the_batch(monkeypatch):
    from journey.worker import pipeline as pipeline_module

    real = pipeline_module.decode

    def flaky(raw: bytes):
        if b'"boom"' in raw:
            raise TypeError("unhashable type: 'list'")
        return real(raw)

    monkeypatch.setattr(pipeline_module, "decode", flaky)
    out = Pipeline(DEFINITION, Limits()).process(
        [rec("a", tp("1", "a", "page_view")), rec("b", {**tp("2", "b", "page_view"), "campaign": "boom"}), rec("c", tp("3", "c", "ad_click"))],
        {},
    )
    assert set(out.writes) == {"a", "c"}
    assert out.reasons == ["processing_error"]
    assert b"TypeError" in out.dead_letters[0].value


def test_the_consumers_own_records_go_in_as_they_are() -> None:
    """The worker hands aiokafka's ConsumerRecords to the pipeline unchanged (no copy per record):
    their millisecond timestamps and their headers, journey's signed identity requests included."""
    from aiokafka.structs import ConsumerRecord
    from faust.types import TP

    from journey.worker.ingest import BatchIngest, _Chunk

    pipe = Pipeline(DEFINITION, Limits())
    event = orjson.dumps(dict(tp("e1", "cust", "add_to_cart"), anonymous_id="dev"))

    def consumed(key: bytes, value: bytes, offset: int, headers: tuple = ()) -> ConsumerRecord:
        return ConsumerRecord("touchpoints", 3, offset, 1_700_000_000_250, 0, key, value, None, len(key), len(value), headers)

    records, spans = BatchIngest._records([_Chunk(TP("touchpoints", 3), [consumed(b"cust", event, 7)], 1, 5)])
    assert spans == {TP("touchpoints", 3): (5, 7)}
    assert type(records[0]) is ConsumerRecord
    states: dict[str, CustomerState] = {}
    out = pipe.process(records, states)
    assert out.trigger_timestamps == [1_700_000_000.25]
    [link] = out.rekeyed  # a signed link request for the device, as the worker reads it back
    assert link.headers is not None
    out = pipe.process([consumed(link.key, link.value, 8, link.headers)], states)
    assert out.merges == 1 and out.reasons == []
    forged = consumed(link.key, link.value, 9, link.headers[:1])  # the control header without its signature
    assert pipe.process([forged], {}).reasons == ["bad_identity_request"]


def _bare_ingest(batches: Any = None, rebalance_timeout_s: float = 60.0) -> tuple[Any, Any]:
    """A BatchIngest over a stand-in app (no consumer, no store): for its revocation paths."""
    import asyncio
    from types import SimpleNamespace

    from journey.worker.ingest import BatchIngest

    japp = SimpleNamespace(settings=SimpleNamespace(topic_touchpoints="touchpoints", batch_target_ms=200, partitions=8),
                           state_lock=asyncio.Lock(), batches=batches,
                           app=SimpleNamespace(conf=SimpleNamespace(broker_rebalance_timeout=rebalance_timeout_s)))
    return BatchIngest(japp, max_records=10, buffer_records=20), japp  # type: ignore[arg-type]


async def _waits_for_the_tick(japp: Any, events: list[str], step: Any) -> None:
    """Hold the state lock as a churn tick mid-stage does: ``step`` must wait for it, then wait
    for the stages and empty the cache."""
    import asyncio

    await japp.state_lock.acquire()  # the tick, mid-stage
    task = asyncio.create_task(step)
    await asyncio.sleep(0.05)
    assert events == [] and not task.done()
    events.append("tick staged")
    japp.state_lock.release()
    await asyncio.wait_for(task, 1)
    assert events == ["tick staged", "idle", "forget"]


async def test_a_revocation_waits_for_a_churn_tick_that_is_still_staging() -> None:
    """A churn tick holds the state lock while it stages (its send may wait for metadata): a
    revocation must not empty the cache and let partitions go until that stage is registered, or
    the tick would stage and cache states of partitions this worker no longer owns."""
    from types import SimpleNamespace

    events: list[str] = []

    class Batches:
        store = SimpleNamespace(forget=lambda: events.append("forget"))

        async def idle(self) -> None:
            events.append("idle")

    ingest, japp = _bare_ingest(Batches())
    await _waits_for_the_tick(japp, events, ingest.before_revoke())


async def test_the_first_batch_after_a_rebalance_empties_the_cache_only_between_churn_ticks() -> None:
    """The ingest's own check for a new generation waits for every stage and empties the cache
    under the state lock, as a revocation does: a churn tick staging in between would have its
    pending states dropped before they were durable (the batch would then read older ones)."""
    from types import SimpleNamespace

    events: list[str] = []

    class Batches:
        async def idle(self) -> None:
            events.append("idle")

    ingest, japp = _bare_ingest()
    store = SimpleNamespace(forget=lambda: events.append("forget"))
    await _waits_for_the_tick(japp, events, ingest._new_generation(Batches(), store))


async def test_a_revocation_that_cannot_settle_within_half_the_rebalance_timeout_exits(monkeypatch) -> None:
    """A stage the broker never acknowledges must not outlive the rebalance: past its timeout the
    group gives the partitions to another member, and the stage would then write the changelog
    behind the new owner's back. The revocation waits half the rebalance timeout, then exits."""
    import asyncio
    from types import SimpleNamespace

    exits: list[str] = []
    monkeypatch.setattr("journey.worker.ingest.exit_replaying", exits.append)

    class Batches:
        store = SimpleNamespace(forget=lambda: None)

        async def idle(self) -> None:
            await asyncio.Event().wait()  # acknowledgements that never come

    ingest, _japp = _bare_ingest(Batches(), rebalance_timeout_s=0.2)
    assert ingest.revoke_wait_s() == 0.1
    await asyncio.wait_for(ingest.before_revoke(), 2)
    assert len(exits) == 1 and "waited 0.1 s" in exits[0] and "not acknowledging" in exits[0]
