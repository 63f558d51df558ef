"""Hostile input through a real worker on the broker: the corpus of tests/support/hostile.py amid
the good events of scripted customers.

One worker for the module. Every hostile record lands on the dead-letter topic with its reason
or is applied as the corpus documents; the scripted customers get exactly their transitions; the
worker never stops, restarts or rejoins its group. The same run shows that no customer id or
personal property reaches the worker's INFO log or its /metrics.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import urllib.error
import urllib.request
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from itertools import zip_longest
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from jsonschema import Draft202012Validator, FormatChecker

from journey.worker.deadletter import MAX_VALUE_BYTES
from support.hostile import BIG, Sent, corpus
from support.kafka import read_all, read_to_end, wait_committed
from support.workers import ROOT, WorkerProcess, create_topics, is_probe, namespaced_settings, wait_until_processing

pytestmark = pytest.mark.integration

DEAD_LETTER_SCHEMA = Draft202012Validator(
    json.loads((ROOT / "schemas" / "dead-letter.schema.json").read_text()), format_checker=FormatChecker()
)
TOKEN = f"tok-{uuid.uuid4().hex}"
#: Distinctive strings in every id and personal property of the run, for the privacy grep.
SCRIPTED = f"zqs{uuid.uuid4().hex[:10]}"
HOSTILE = f"zqh{uuid.uuid4().hex[:10]}"
#: The producer must be allowed the corpus's 5 MB records (aiokafka's default is 1 MB).
MAX_REQUEST = 8 * 1024 * 1024
T = "2024-06-01T10:{:02d}:00+00:00".format


def _person(name: str) -> dict[str, str]:
    """Personal properties a product backend might send along (they must never be logged)."""
    return {"email": f"{name}.{SCRIPTED}@example.invalid", "name": f"{name.title()} {SCRIPTED}", "phone": f"+44{SCRIPTED[-6:]}"}


def _ev(event_id: str, customer: str | None, etype: str, ts: str, **extra: Any) -> dict[str, Any]:
    e: dict[str, Any] = {"event_id": f"{SCRIPTED}-{event_id}", "type": etype, "timestamp": ts}
    if customer is not None:
        e["customer_id"] = f"{SCRIPTED}-{customer}"
    if "anonymous_id" in extra:
        extra["anonymous_id"] = f"{SCRIPTED}-{extra['anonymous_id']}"
    e.update(extra)
    return e


def scripted() -> tuple[list[Sent], dict[str, list[tuple[str | None, str, str]]]]:
    """Good events (and their expected transitions): the journeys of tests/integration/test_pipeline.py."""
    alice = {"properties": _person("alice")}
    events = [
        _ev("a1", "alice", "ad_click", T(0), channel="ads", **alice),
        _ev("a2", "alice", "product_view", T(1), channel="search"),
        _ev("a2", "alice", "product_view", T(1), channel="search"),  # a duplicate delivery
        _ev("a3", "alice", "add_to_cart", T(2), properties={"cart_id": "k1", **_person("alice")}),
        _ev("a4", "alice", "purchase", T(3), properties={"order_id": "o1", "amount": 10.0, "currency": "EUR"}),
        _ev("a5", "alice", "purchase", T(4), properties={"order_id": "o1", "amount": 5.0, "currency": "EUR"}),
        _ev("a6", "alice", "purchase", T(20), properties={"order_id": "o2", "amount": 7.0, "currency": "EUR"}),
        _ev("a7", "alice", "review_submitted", T(30), properties={"rating": 5, "text": f"great, {SCRIPTED}"}),
        _ev("b1", "bob", "purchase", T(10), properties={"order_id": "b-o1", **_person("bob")}),
        _ev("b2", "bob", "page_view", T(0)),  # late
        _ev("c1", "carol", "review_submitted", T(0), properties={"rating": 5}),
        _ev("c2", "carol", "wishlist_add", T(1)),
        _ev("c3", "carol", "complaint", T(2), channel="support", properties=_person("carol")),
        _ev("c4", "carol", "pricing_view", T(3)),
        _ev("v1", None, "page_view", T(0), anonymous_id="anon-9"),
        _ev("e1", "erin", "checkout_started", T(50), properties=_person("erin")),
    ]
    sent = [Sent((e.get("customer_id") or e["anonymous_id"]).encode(), orjson.dumps(e)) for e in events]
    sent.append(Sent(None, orjson.dumps(_ev("d1", "dan", "add_to_cart", T(5)))))  # no key: re-keyed
    s = SCRIPTED
    expected = {
        f"{s}-alice": [(None, "awareness", f"{s}-a1"), ("awareness", "consideration", f"{s}-a2"),
                       ("consideration", "decision", f"{s}-a3"), ("decision", "purchase", f"{s}-a4"),
                       ("purchase", "retention", f"{s}-a6"), ("retention", "advocacy", f"{s}-a7")],
        f"{s}-bob": [(None, "purchase", f"{s}-b1")],
        f"{s}-carol": [(None, "consideration", f"{s}-c4")],
        f"{s}-anon-9": [(None, "awareness", f"{s}-v1")],
        f"{s}-dan": [(None, "decision", f"{s}-d1")],
        f"{s}-erin": [(None, "decision", f"{s}-e1")],
    }
    return sent, expected


@dataclass
class Run:
    worker: WorkerProcess
    pid: int
    rebalances: int
    #: (partition, offset) of each hostile record -> the dead-letter reason it must get (None: none).
    placed: dict[tuple[int, int], Sent]
    expected: dict[str, list[tuple[str | None, str, str]]]
    transitions: list[dict[str, Any]]
    dead: list[dict[str, Any]]
    cases: list[Any]


async def _produce(bootstrap: str, topic: str, records: list[Sent]) -> list[tuple[int, int]]:
    """Send in order; the (partition, offset) of each."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=MAX_REQUEST)
    await producer.start()
    try:
        futures = [await producer.send(topic, s.value, key=s.key, headers=s.headers) for s in records]
        return [(m.partition, m.offset) for m in await asyncio.gather(*futures)]
    finally:
        await producer.stop()


@pytest.fixture(scope="module")
async def run(broker: str, tmp_path_factory: pytest.TempPathFactory):
    settings = namespaced_settings(broker, "hostile", api_token=TOKEN)
    await create_topics(settings)
    worker = WorkerProcess(settings, tmp_path_factory.mktemp("worker-hostile")).start()
    try:
        await wait_until_processing(settings, [worker])
        for _ in range(60):  # settled in its group: what "never rejoined" is measured from
            ready = await asyncio.to_thread(worker.readyz)
            if ready["ready"]:
                break
            await asyncio.sleep(0.5)
        assert ready["ready"], ready
        pid, rebalances = worker.process.pid, ready["rebalances"]  # type: ignore[union-attr]
        good, expected = scripted()
        cases = corpus(f"{HOSTILE}-")
        bad = [s for c in cases for s in c.records]
        for c in cases:
            expected.update(c.transitions)
        # Interleaved: a good event, then up to three hostile records, and so on.
        chunks = [bad[i:i + 3] for i in range(0, len(bad), 3)]
        order: list[tuple[bool, Sent]] = []
        for g, chunk in zip_longest(good, chunks):
            if g is not None:
                order.append((False, g))
            order.extend((True, s) for s in chunk or ())
        placed_at = await _produce(settings.bootstrap_servers, settings.topic_touchpoints, [s for _, s in order])
        placed = {at: s for at, (hostile, s) in zip(placed_at, order, strict=True) if hostile}

        n_expected = sum(len(v) for v in expected.values())
        await read_all(settings.bootstrap_servers, settings.topic_transitions, timeout_s=90,
                       until=lambda m: len([x for x in m if not is_probe(x["customer_id"])]) >= n_expected)
        # Settled: all the input (the re-keyed copies too) processed and committed, so all the
        # worker will ever write for it is on the output topics.
        await wait_committed(settings.bootstrap_servers, settings.app_id, settings.topic_touchpoints, timeout_s=120,
                             check=worker.check_alive)
        transitions = [m for m in await read_to_end(settings.bootstrap_servers, settings.topic_transitions)
                       if not is_probe(m["customer_id"])]
        dead = await read_to_end(settings.bootstrap_servers, settings.topic_dead_letter, timeout_s=120)
        yield Run(worker, pid, rebalances, placed, expected, transitions, dead, cases)
    finally:
        worker.stop()


async def test_every_hostile_record_is_dead_lettered_or_applied_as_documented(run: Run):
    by_place = {(d["partition"], d["offset"]): d for d in run.dead}
    assert len(by_place) == len(run.dead), "a record dead-lettered twice"
    expected_dead = {at: s for at, s in run.placed.items() if s.dead_letter is not None}
    assert set(by_place) == set(expected_dead), (
        f"dead-lettered but should not be: {sorted(set(by_place) - set(expected_dead))}; "
        f"not dead-lettered: {sorted(set(expected_dead) - set(by_place))}"
    )
    for at, s in expected_dead.items():
        d = by_place[at]
        assert d["reason"] == s.dead_letter, (at, d["reason"], d["error"][:200])
        assert DEAD_LETTER_SCHEMA.is_valid({k: v for k, v in d.items() if k != "_key"}), d["error"][:200]
        assert d["key"] == (s.key.decode() if s.key is not None else None)
        if s.value is None:
            assert d["value"] is None and d["value_encoding"] == "null"
        else:
            original = base64.b64decode(d["value"]) if d["value_encoding"] == "base64" else d["value"].encode()
            if len(s.value) > MAX_VALUE_BYTES:  # capped below the brokers' message size: start, size, digest
                assert original == s.value[:MAX_VALUE_BYTES] and d["value_bytes"] == len(s.value), at
                assert d["value_sha256"] == hashlib.sha256(s.value).hexdigest(), at
            else:
                assert original == s.value, f"the dead letter at {at} does not hold the record's value"
    assert max(len(s.value or b"") for s in expected_dead.values()) >= BIG  # the 5 MB one went through

    # Applied as documented: the customer views the corpus names (e.g. revenue after a correction).
    for case in run.cases:
        for customer, fields in case.views.items():
            view = run.worker.view(customer, TOKEN)
            assert view is not None, customer
            assert {k: view[k] for k in fields} == fields, (case.kind, customer)

    # The counts the metrics keep agree.
    reasons = Counter(s.dead_letter for s in expected_dead.values())
    for reason, n in reasons.items():
        assert run.worker.metric("journey_dead_letters_total", reason=reason) == n, reason
    assert run.worker.metric("journey_dead_letters_total") == len(expected_dead)
    assert run.worker.metric("journey_duplicate_touchpoints_total") == 1 + sum(c.duplicates for c in run.cases)
    assert run.worker.metric("journey_rekeyed_touchpoints_total") == 1 + sum(c.rekeyed for c in run.cases)


async def test_good_events_around_them_are_processed_exactly(run: Run):
    got: dict[str, list] = defaultdict(list)
    for m in run.transitions:
        assert m["_key"] == m["customer_id"]
        got[m["customer_id"]].append((m["from_stage"], m["to_stage"], m["trigger_event_id"]))
    assert dict(got) == run.expected, run.worker.log_tail()  # the complete set, each once, nothing else
    assert len({m["transition_id"] for m in run.transitions}) == len(run.transitions)


async def test_the_worker_never_stopped_or_restarted(run: Run):
    run.worker.check_alive()
    assert run.worker.process.pid == run.pid  # type: ignore[union-attr]
    ready = run.worker.readyz()
    assert ready["ready"] and ready["rebalances"] == run.rebalances, ready  # never left and rejoined its group
    log = run.worker.log_text()
    assert "CRITICAL" not in log, run.worker.log_tail()
    assert "could not be decoded" not in log and "could not be applied" not in log  # no processing_error


async def test_no_customer_id_or_personal_property_in_the_info_log_or_the_metrics(run: Run):
    """Every id and personal property of the run carries SCRIPTED or HOSTILE: neither may show."""
    # A customer lookup too: the worker's web server must not log the path.
    assert run.worker.view(f"{SCRIPTED}-alice", TOKEN) is not None
    with urllib.request.urlopen(f"{run.worker.url}/metrics", timeout=5) as r:
        metrics = r.read().decode()
    log = run.worker.log_text()
    assert "[INFO]" in log  # the worker logs at INFO: the grep below sees that level
    for marker in (SCRIPTED, HOSTILE):
        leaks = [line for line in log.splitlines() if marker in line]
        assert not leaks, "the worker log names a customer or a personal property:\n" + "\n".join(leaks[:5])
        assert marker not in metrics, [line for line in metrics.splitlines() if marker in line][:5]
    for value in _person("alice").values():
        assert value not in log and value not in metrics


async def test_input_on_another_partition_than_its_keys_is_reported(run: Run):
    """A record keyed by its customer but placed on another partition than Kafka's default
    partitioner gives that key (a librdkafka producer's crc32 default): counted and explained in
    the worker's log, without the key."""
    from aiokafka.partitioner import murmur2

    settings = run.worker.settings
    key = f"misplaced-{uuid.uuid4().hex[:8]}"
    wrong = ((murmur2(key.encode()) & 0x7FFFFFFF) + 1) % settings.partitions
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(settings.topic_touchpoints, orjson.dumps(_ev("misplaced", None, "page_view", T(59)) | {"customer_id": key}),
                                     key=key.encode(), partition=wrong)
    finally:
        await producer.stop()
    for _ in range(120):  # alone in its fetch, so it is the record the worker checks
        if run.worker.metric("journey_misplaced_input_chunks_total") >= 1:
            break
        await asyncio.sleep(0.5)
    assert run.worker.metric("journey_misplaced_input_chunks_total") >= 1
    warning = [line for line in run.worker.log_text().splitlines() if "partitioner=murmur2_random" in line]
    assert warning and f"[{wrong}]" in warning[0] and key not in warning[0], warning
