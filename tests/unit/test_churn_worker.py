"""The worker's churn adapter on a real RocksDB store and the batch protocol, without Kafka: the
timer's changes go through the protocol like a batch's, never overwrite a newer state, reach the
live aggregates, and the index is rebuilt from the table."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from faust.types import TP

from journey.churn.config import ChurnSettings
from journey.core.clock import DAY_S, iso
from journey.core.definition import load_definition
from journey.core.events import validate
from journey.core.machine import Limits, apply
from journey.core.state import CustomerState
from journey.settings import Settings
from journey.worker.batch import BatchProtocol
from journey.worker.churn import ChurnWorker
from journey.worker.pipeline import BatchResult, Pipeline, Record
from support.protocol import Producer, attach_protocol, worker_app

REPO = Path(__file__).resolve().parents[2]
DEFINITION = load_definition(REPO / "schemas/journey.yaml")
T0 = 978_350_400.0  # 2001-01-01T12:00Z


RISK, PAIN = "risk", "pain"


def make_worker(tmp_path: Path) -> tuple[ChurnWorker, Producer, BatchProtocol]:
    """A worker app on a real RocksDB store; its churn adapter with the default settings; a
    producer that acknowledges every produce batch as soon as it has it."""
    japp = worker_app(tmp_path, topic_touchpoints="tp", topic_churn_risk=RISK, topic_pain_points=PAIN)
    producer = Producer(auto_ack=True)
    protocol, _acked, failures = attach_protocol(japp, producer)
    japp.aggregates = None
    japp.app.assignor.assigned_actives = lambda: {TP("tp", 0)}  # type: ignore[method-assign]
    worker = ChurnWorker(japp, ChurnSettings.from_settings(Settings()))
    japp.churn = worker
    return worker, producer, protocol


def sent(producer: Producer, topic: str) -> list[tuple[bytes | None, dict[str, Any]]]:
    return [(k, orjson.loads(v)) for k, v in producer.records(topic) if v is not None]


def stored(protocol: BatchProtocol, key: str, partition: int = 0) -> CustomerState:
    raw = protocol.store.store._db_for_partition(partition).get(key.encode())
    assert raw is not None, f"{key} is not in the store"
    return CustomerState.from_wire(raw)


def buyer(customer: str, days: list[int], partition: int = 0) -> CustomerState:
    state = None
    for d in days:
        tp = validate({"event_id": f"{customer}-{d}", "customer_id": customer, "type": "purchase",
                       "timestamp": iso(T0 + d * DAY_S), "properties": {"order_id": f"o{d}", "amount": 30}})
        state = apply(state, tp, DEFINITION).state
    assert state is not None
    state.partition = partition
    return state


async def score_batch(worker: ChurnWorker, protocol: BatchProtocol, customer: str, state: CustomerState) -> None:
    """What a batch does for this customer: the churn hook (step 1), then the stage."""
    record = Record(customer.encode(), b"{}", "tp", state.partition or 0, 0)
    result = BatchResult(writes={customer: (record, state, None)}, max_event_time=state.last_seen)
    async with worker.japp.state_lock:
        outputs = worker.score_batch(result) or []
        stage = await protocol.stage([(customer, state.partition or 0, state)], outputs)
    await asyncio.wait_for(stage.done, timeout=5)


async def tick(worker: ChurnWorker) -> int:
    n = await worker.tick()
    await worker.japp.batches.idle()  # type: ignore[union-attr]
    return n


async def test_timer_raises_the_level_through_the_protocol_outputs_first(tmp_path: Path) -> None:
    worker, producer, protocol = make_worker(tmp_path)
    state = buyer("c1", [0, 7, 14, 21, 28])
    await score_batch(worker, protocol, "c1", state)
    assert stored(protocol, "c1").extra["churn"]["l"] == "low"
    due = worker.index.due_time("c1")
    assert due is not None
    worker.clock.observe(due + 3600, time.time())  # another customer's later event (a replay)
    before = len(producer.sent)
    assert await tick(worker) == 1
    assert producer.topics()[before:] == [RISK, protocol.store.changelog_topic]  # outputs, then the changelog
    (key, event), = sent(producer, RISK)
    assert (key, event["level"], event["previous_level"]) == (b"c1", "medium", "low")
    codes = {c["code"]: c for c in event["reason_codes"]}  # machine-readable reasons beside the text
    assert codes["no_purchase_days"]["effect"] > 0 and codes["repeat_purchase_days"]["value"] == 4
    assert event["reasons"] and all(set(c) == {"code", "value", "effect"} for c in event["reason_codes"])
    churn = stored(protocol, "c1").extra["churn"]
    assert churn["l"] == "medium" and churn["due"] == worker.index.due_time("c1") > due


async def test_timer_changes_reach_the_live_aggregates_with_the_state_before(tmp_path: Path) -> None:
    worker, _producer, protocol = make_worker(tmp_path)
    seen: list[tuple[str | None, str | None]] = []
    worker.japp.pipeline.summarize = lambda st: st.extra["churn"]["l"] if st and "churn" in st.extra else None
    worker.japp.aggregates = SimpleNamespace(  # type: ignore[assignment]
        observe=lambda records, result: seen.extend((before, st.extra["churn"]["l"]) for _r, st, before in result.writes.values())
    )
    await score_batch(worker, protocol, "c1", buyer("c1", [0, 7, 14, 21, 28]))
    worker.clock.observe(worker.index.due_time("c1") + 3600, time.time())  # type: ignore[operator]
    await tick(worker)
    assert seen == [("low", "medium")]


async def test_timer_never_overwrites_a_state_a_batch_changed_meanwhile(tmp_path: Path) -> None:
    worker, _producer, protocol = make_worker(tmp_path)
    await score_batch(worker, protocol, "c1", buyer("c1", [0, 7, 14, 21, 28]))
    worker.clock.observe(worker.index.due_time("c1") + 3600, time.time())  # type: ignore[operator]
    newer = buyer("c1", [0, 7, 14, 21, 28, 29])  # a batch applies a new purchase

    entered, holds_lock = asyncio.Event(), asyncio.Event()

    async def a_batch_lands() -> None:
        entered.set()
        async with worker.japp.state_lock:  # as BatchProtocol.run_batch does
            holds_lock.set()
            cached = protocol.store.read("c1", 0)
            assert cached is not None
            # A state of its own, as a batch gets when the customer is not in the decoded-state
            # cache (read from RocksDB): a timer writing without the lock would now lose this.
            state = CustomerState.from_wire(cached.to_wire())
            state.purchase_days = newer.purchase_days
            await protocol.stage([("c1", 0, state)], [])

    original = protocol.sender.send
    batches: list[asyncio.Future[None]] = []

    async def send_while_a_batch_arrives(records: Any) -> Any:
        if not batches:
            batch = asyncio.ensure_future(a_batch_lands())
            batches.append(batch)

            async def ran_as_far_as_it_can() -> None:
                # The batch gets every chance to run now: it is done, or it waits for the state
                # lock, which the timer holds.
                lock = worker.japp.state_lock
                while not (batch.done() or (entered.is_set() and lock.locked() and not holds_lock.is_set())):
                    await asyncio.sleep(0)

            await asyncio.wait_for(ran_as_far_as_it_can(), timeout=10)
        return await original(records)

    protocol.sender.send = send_while_a_batch_arrives  # type: ignore[method-assign]
    await tick(worker)
    await batches[0]
    await protocol.idle()
    assert stored(protocol, "c1").purchase_days == 6, "the timer wrote its older copy over the batch's state"
    assert stored(protocol, "c1").extra["churn"]["l"] == "medium"  # and the batch kept the timer's change


async def test_rebuild_indexes_this_workers_partitions_from_the_table(tmp_path: Path) -> None:
    worker, _producer, protocol = make_worker(tmp_path)
    states = {}
    for customer, partition in (("a", 0), ("b", 1)):
        states[customer] = buyer(customer, [0, 3], partition)
        await score_batch(worker, protocol, customer, states[customer])
    states["old"] = buyer("old", [0], partition=0)  # written before churn risk existed
    worker.japp.customers = SimpleNamespace(items=lambda: list(states.items()))  # type: ignore[assignment]
    expected_a = worker.index.due_time("a")
    worker.index.clear()
    assert worker.rebuild() == 2  # "b" lives in a partition this worker no longer owns
    assert worker.index.due_time("a") == expected_a
    assert "b" not in worker.index
    assert worker.index.due_time("old") == float("-inf")  # assessed on the next tick


async def test_a_batch_notes_carts_and_the_timer_emits_the_pain_point_when_due(tmp_path: Path) -> None:
    worker, producer, protocol = make_worker(tmp_path)
    tp = {"event_id": "e1", "customer_id": "k", "type": "add_to_cart", "timestamp": iso(T0), "channel": "ads"}
    record = Record(b"k", orjson.dumps(tp), "tp", 0, 0)
    result = Pipeline(DEFINITION, Limits()).process([record], {})
    async with worker.japp.state_lock:
        outputs = worker.score_batch(result) or []
        await protocol.stage([("k", 0, result.writes["k"][1])], outputs)
    await protocol.idle()
    assert worker.index.due_time("k") == pytest.approx(T0 + 86400)
    worker.clock.observe(T0 + 86400 + 120, time.time())
    await tick(worker)
    pains = [e for _k, e in sent(producer, PAIN)]
    assert [(p["kind"], p["channel"], p["at"]) for p in pains] == [("cart_abandoned", "ads", iso(T0 + 86400))]


async def test_score_batch_notes_only_the_applied_touchpoints_of_each_customer(tmp_path: Path) -> None:
    worker, _producer, _protocol = make_worker(tmp_path)
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
    worker.score_batch(result)
    pain = {key: state.extra.get("pain") for key, (_r, state, _b) in result.writes.items()}
    assert pain["a"] == {"c": [[T0, "ads"]]}
    assert pain["b"] is None
    assert pain["c"] == {"d": [[T0, T0 + 3600]]}  # the cart at T0, bought an hour later
    assert worker.index.due_time("a") == pytest.approx(T0 + DAY_S)


# --- the worker and `journey churn score` agree (learned layer, signals and all) ----------------


def _history(n: int, seed: int) -> list[dict[str, Any]]:
    """Buyers, browsers, carts and every negative signal, over a year, in event-time order."""
    import random

    rng = random.Random(seed)
    types = ["purchase"] * 6 + ["page_view", "product_view", "add_to_cart", "complaint", "return", "refund",
                                "support_ticket", "unsubscribe", "review_submitted"]
    events = []
    for c in range(n):
        t = T0 + rng.uniform(0, 200) * DAY_S
        for i in range(rng.randint(1, 12)):
            t += rng.choice([3600.0, DAY_S, 7 * DAY_S, 30 * DAY_S]) * rng.random()
            type_ = rng.choice(types)
            props: dict[str, Any] = {}
            if type_ == "purchase":
                props = {"order_id": f"o{i}", "amount": round(rng.uniform(1, 300), 2)}
            elif type_ == "review_submitted":
                props = {"rating": rng.randint(1, 5)}
            events.append({"event_id": f"c{c}-{i}", "customer_id": f"c{c}", "type": type_, "timestamp": iso(t),
                           "channel": rng.choice(["ads", "email", "store"]), "properties": props})
    return sorted(events, key=lambda e: e["timestamp"])


def _learned_params(path: Path) -> Path:
    import random

    from journey.churn import bgnbd, learned
    from journey.churn.risk import ChurnModel, save_model

    rng = random.Random(1)
    spec = learned.Spec((0.0, 0.5, 1.4, 2.6), stages=("decision", "purchase", "retention"), channels=("ads", "email"),
                        signals=("cart_abandoned", "complaint", "refund", "return", "review_submitted", "support_ticket",
                                 "unsubscribe"))
    weights = tuple(rng.uniform(0, 1) if learned.non_negative(n) else rng.uniform(-1, 1) for n in spec.names)
    layer = learned.Layer(spec, -0.5, weights, tuple(0.0 for _ in spec.names))
    save_model(path, ChurnModel(bgnbd.ChurnParams(bgnbd.BGNBDParams(0.5, 6.0, 0.8, 2.4), 7.0), None, layer))
    return path


@pytest.mark.parametrize("params", ["shipped", "learned with signals"])
async def test_worker_and_churn_score_agree(tmp_path: Path, params: str) -> None:
    import csv
    import dataclasses
    import io
    import json
    from contextlib import redirect_stdout

    from journey.cli import main as journey_cli

    churn_settings = ChurnSettings.from_settings(Settings())
    if params != "shipped":
        churn_settings = dataclasses.replace(churn_settings, params_file=_learned_params(tmp_path / "params.json"))
    japp = worker_app(tmp_path / "worker", topic_touchpoints="tp", topic_churn_risk=RISK, topic_pain_points=PAIN)
    worker = ChurnWorker(japp, churn_settings)
    events = _history(120, 7)
    history = tmp_path / "history.jsonl"
    history.write_text("\n".join(json.dumps(e) for e in events) + "\n")
    pipeline = Pipeline(DEFINITION, Limits())
    states: dict[str, CustomerState] = {}
    for start in range(0, len(events), 40):  # batches of 40 touchpoints, in event-time order
        records = [Record(e["customer_id"].encode(), json.dumps(e).encode(), "tp", 0, start + i)
                   for i, e in enumerate(events[start:start + 40])]
        result = pipeline.process(records, states)
        worker.score_batch(result)
        for key, (_rec, state, _before) in result.writes.items():
            states[key] = state
    by_time: dict[float, list[str]] = {}
    for key, state in states.items():
        by_time.setdefault(state.extra["churn"]["at"], []).append(key)
    checked = 0
    for at, keys in sorted(by_time.items())[-12:]:
        out = io.StringIO()
        args = ["churn", "score", str(history), "--format", "jsonl", "--as-of", iso(at)]
        if params != "shipped":
            args += ["--params", str(churn_settings.params_file)]
        with redirect_stdout(out):
            assert journey_cli(args) == 0
        rows = {r["customer_id"]: r for r in csv.DictReader(io.StringIO(out.getvalue()))}
        for key in keys:
            churn = states[key].extra["churn"]
            assert float(rows[key]["score"]) == pytest.approx(churn["s"], abs=1e-9), key
            assert rows[key]["level"] == churn["l"], key
            checked += 1
    assert checked >= 30


async def test_a_timer_failure_skips_one_unchanged_customer_and_exits_once_a_state_changed(tmp_path: Path, monkeypatch: Any) -> None:
    """Before a customer's state changes, a failure costs that customer alone (the others of the
    chunk are re-scored and staged); after it changed in place, a failure to make its events
    exits the worker (writing it would drop the events, skipping it would leave the cache ahead)."""
    worker, producer, protocol = make_worker(tmp_path)
    for c in ("c0", "c1", "c2"):
        await score_batch(worker, protocol, c, buyer(c, [0, 7, 14, 21, 28]))
    due = max(worker.index.due_time(c) or 0.0 for c in ("c0", "c1", "c2"))
    worker.clock.observe(due + 3600, time.time())
    calls = [0]

    def summarize(state: CustomerState | None) -> None:
        calls[0] += 1
        if calls[0] == 2:
            raise ValueError("an odd state")

    worker.japp.pipeline.summarize = summarize
    assert await tick(worker) == 2  # the other two of the chunk
    assert len(sent(producer, RISK)) == 2  # their level changes; the skipped one's state is as it was

    exits: list[str] = []
    monkeypatch.setattr("journey.worker.churn.exit_replaying", exits.append)
    monkeypatch.setattr(worker, "_collect", lambda *a: (_ for _ in ()).throw(RuntimeError("cannot encode")))
    worker.japp.pipeline.summarize = None
    worker.clock.observe(due + 400 * DAY_S, time.time())
    with pytest.raises(RuntimeError, match="cannot encode"):
        await worker.tick()
    assert exits == ["the churn timer could not make a customer's churn-risk or pain-point events"]


async def test_rebuild_learns_the_typical_stage_times_from_the_states_as_the_stream_taught_them(tmp_path: Path) -> None:
    """After a restart the stream's lessons are gone: the rebuild recounts each owned customer's
    moves out of awareness, consideration and decision from the reached times in its state, and
    for events in order that is exactly what the transitions taught (a web funnel's minutes,
    not the configured days, so its silent visitors keep their levels)."""
    import random

    rng = random.Random(5)
    worker, _producer, protocol = make_worker(tmp_path)
    records = []
    steps = ["page_view", "product_view", "add_to_cart", "purchase"]
    for c in range(400):
        at = T0 + rng.uniform(0, 3600)
        for i, etype in enumerate(steps[: rng.randint(1, 4)]):
            if i and rng.random() < 0.3:
                continue  # a skipped stage
            at += rng.uniform(30, 900)  # minutes apart
            tp = {"event_id": f"c{c}-{i}", "customer_id": f"c{c}", "type": etype, "timestamp": iso(at),
                  "properties": {"order_id": f"o{c}", "amount": 5} if etype == "purchase" else {}}
            records.append(Record(f"c{c}".encode(), orjson.dumps(tp), "tp", 0, len(records)))
    result = Pipeline(DEFINITION, Limits()).process(records, {})
    async with worker.japp.state_lock:
        worker.score_batch(result)  # learns from the batch's transitions, as in the stream
        await protocol.stage([(k, 0, s) for k, (_r, s, _b) in result.writes.items()], [])
    await protocol.idle()
    taught = [worker.stage_times.typical_s(s) for s in range(3)]
    counts = worker.stage_times.learned()
    assert min(counts.values()) >= worker.config.risk.min_learn_samples and all(t < 3600 for t in taught)  # minutes, learned

    finals = [(k, s) for k, (_r, s, _b) in result.writes.items()]
    worker.japp.customers = SimpleNamespace(items=lambda: finals)  # type: ignore[assignment]  # the table
    worker.stage_times = type(worker.stage_times)(worker.config.risk)  # a restarted process knows nothing
    assert worker.stage_times.typical_s(0) > 86400
    worker.rebuild()
    assert worker.stage_times.learned() == counts
    assert [worker.stage_times.typical_s(s) for s in range(3)] == pytest.approx(taught, rel=1e-12)


def test_a_partition_behind_the_others_holds_the_clock_so_its_carts_are_not_called_abandoned_early(tmp_path: Path) -> None:
    """One fetch brings partition 0 to T+23h and partition 1 to T+26h. A clock run to partition 1's
    time would report partition 0's customer's cart (window 24 h) abandoned, though their
    purchase at T+23.5h is still among partition 0's records to process."""
    worker, producer, _protocol = make_worker(tmp_path)
    pipe = Pipeline(DEFINITION, Limits())
    states: dict[str, CustomerState] = {}
    offsets = [0]

    def rec(customer: str, etype: str, at: float, partition: int) -> Record:
        offsets[0] += 1
        tp = {"event_id": f"e{offsets[0]}", "customer_id": customer, "type": etype, "timestamp": iso(at),
              "properties": {"order_id": "o1", "amount": 10} if etype == "purchase" else {}}
        return Record(customer.encode(), orjson.dumps(tp), "tp", partition, offsets[0])

    def batch(*records: Record) -> list[tuple[str, dict[str, Any]]]:
        result = pipe.process(list(records), states)
        states.update({k: s for k, (_r, s, _b) in result.writes.items() if s is not None})
        return [(t, orjson.loads(v)) for t, _k, v, _h in worker.score_batch(result) or []]

    hour = 3600.0
    worker.lagging = lambda: [0]  # partition 0 has records left to process
    assert batch(rec("a", "add_to_cart", T0, 0), rec("b", "page_view", T0, 1)) == []
    out = batch(rec("a", "page_view", T0 + 23 * hour, 0), rec("b", "page_view", T0 + 26 * hour, 1))
    assert not [e for t, e in out if t == PAIN]
    assert worker.now(time.time()) == T0 + 23 * hour - worker.settings.allowed_lateness_s
    worker.lagging = lambda: []  # caught up: its purchase inside the window decides the cart
    out = batch(rec("a", "purchase", T0 + 23.5 * hour, 0))
    assert not [e for t, e in out if t == PAIN]
    assert worker.now(time.time()) == T0 + 26 * hour - worker.settings.allowed_lateness_s


def test_a_customer_is_never_assessed_before_their_last_assessment() -> None:
    """The clock steps back when a partition falls behind; a customer already assessed later
    keeps that time (a re-score at an earlier one could lower a level, then raise it again)."""
    from journey.worker.churn import assess_at

    state = CustomerState()
    state.last_seen = 100.0
    assert assess_at(state, None) == 100.0
    assert assess_at(state, 500.0) == 500.0
    state.extra["churn"] = {"s": 0.1, "l": "low", "at": 800.0, "due": 900.0}
    assert assess_at(state, 500.0) == 800.0
    assert assess_at(state, 850.0) == 850.0


async def test_a_forgotten_customer_leaves_the_due_index_at_once(tmp_path: Path) -> None:
    """The index holds customer ids in clear: a forget (the batch writes no state) takes the id
    out in the same batch, not when its due time comes."""
    worker, _producer, protocol = make_worker(tmp_path)
    await score_batch(worker, protocol, "c1", buyer("c1", [0, 7]))
    assert "c1" in worker.index
    record = Record(b"c1", b"{}", "tp", 0, 1)
    worker.score_batch(BatchResult(writes={"c1": (record, None, None)}, max_event_time=None))
    assert "c1" not in worker.index
    assert all(key != "c1" for _due, key in worker.index._heap)  # not even a stale entry in the heap


def test_a_partition_counts_as_behind_past_a_slack_or_while_its_end_is_unknown() -> None:
    """A topic written by transactional producers ends on control markers no record is read
    from: a lag of one or a few is caught up, or a replay's clock would wait for it for good.
    An end not known yet (no fetch answered since the start) may hide a backlog."""
    from journey.worker.churn import LAG_SLACK, behind

    assert behind({0: 0, 1: 1, 2: LAG_SLACK, 3: LAG_SLACK + 1, 4: None, 5: 50_000}) == [3, 4, 5]
