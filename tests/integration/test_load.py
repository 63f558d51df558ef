"""Load (issue 14): a backlog already in the topic when a worker starts, and a paused broker.

The burst: BURST_CUSTOMERS customers' journeys (four stage-raising events each, a duplicate
delivery now and then) are produced before the worker exists, round by round, so each round
touches every customer and the small state cache (JOURNEY_STATE_CACHE at its floor) must evict
and read back from RocksDB. While the worker works through it, the test samples its /readyz, its
/metrics and its resident memory (/proc). The slow broker: a second worker, joined beside the
first, gets a paced stream during which the session's broker process is stopped (SIGSTOP) for
PAUSE_S seconds, then continued.

Both workers start together in one module fixture: joining a group takes ~20-30 s on the test
broker, so their joins overlap; the broker is paused only after the burst is over.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from journey.kafka.broker import EmbeddedBroker
from journey.settings import Settings
from journey.worker.ingest import STAGES_IN_FLIGHT
from journey.worker.memory import MemoryBound, memory_bound
from support.kafka import produce, read_to_end, touchpoint_record, wait_committed
from support.workers import WorkerProcess, create_topics, is_probe, namespaced_settings, stop_all, wait_until_processing

pytestmark = pytest.mark.integration

BURST_CUSTOMERS = 10_000
PAUSED_CUSTOMERS = 2_000
#: How long the broker is stopped (bench/burst.py --pause-broker 60 is the minute-long version).
PAUSE_S = 15.0
#: Every customer's journey: one event per stage, each a transition.
STEPS = (("page_view", "awareness"), ("product_view", "consideration"), ("add_to_cart", "decision"), ("purchase", "purchase"))
T0 = datetime(2024, 9, 1, tzinfo=UTC)
LAG = "journey_consumer_lag"
PROCESSED = "journey_batch_records_sum"


def journeys(prefix: str, n: int) -> tuple[list[tuple[bytes, bytes]], dict[str, list[tuple[str | None, str, str]]]]:
    """Records round by round (every customer's first step, then every second step, ...), every
    7th customer's second step delivered twice; and each customer's expected transitions."""
    records: list[tuple[bytes, bytes]] = []
    expected: dict[str, list[tuple[str | None, str, str]]] = defaultdict(list)
    for step, (etype, stage) in enumerate(STEPS):
        for i in range(n):
            customer = f"{prefix}-{i}"
            event: dict[str, Any] = {"event_id": f"{customer}-{step}", "customer_id": customer, "type": etype,
                                     "timestamp": (T0 + timedelta(minutes=step)).isoformat()}
            if etype == "purchase":
                event["properties"] = {"order_id": f"{customer}-o", "amount": 9.5, "currency": "EUR"}
            records.append(touchpoint_record(event))
            if step == 1 and i % 7 == 0:
                records.append(touchpoint_record(event))  # a duplicate delivery: no transition
            previous = STEPS[step - 1][1] if step else None
            expected[customer].append((previous, stage, event["event_id"]))
    return records, dict(expected)


def status_bytes(pid: int | None, name: str) -> int | None:
    """VmRSS or VmHWM of a process (/proc/PID/status), in bytes; None when it is gone."""
    try:
        found = re.search(rf"^{name}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    except OSError:
        return None
    return int(found.group(1)) * 1024 if found else None


def lag_by_partition(worker: WorkerProcess) -> tuple[dict[str, float], float]:
    """journey_consumer_lag per partition label, and the records processed, from one scrape."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    with urlopen(f"{worker.url}/metrics", timeout=5) as r:
        text = r.read().decode()
    lags: dict[str, float] = {}
    processed = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == LAG:
                lags[s.labels["partition"]] = s.value
            elif s.name == PROCESSED:
                processed = s.value
    return lags, processed


@dataclass
class Sample:
    t: float
    rss: int | None
    ready: dict[str, Any]
    lags: dict[str, float]
    processed: float


@dataclass
class Burst:
    settings: Settings
    worker: WorkerProcess
    records: int
    expected: dict[str, list[tuple[str | None, str, str]]]
    samples: list[Sample] = field(default_factory=list)
    peak_rss: int | None = None
    #: RSS of the last sample before the first record was processed (the worker's own baseline).
    baseline_rss: int | None = None


@dataclass
class Load:
    burst: Burst
    paused: tuple[Settings, WorkerProcess]
    broker: EmbeddedBroker


def burst_settings(broker: str) -> Settings:
    """A small state cache (at its floor: batch_size x 3 + churn_max_per_tick) and small RocksDB
    buffers, so the memory bound is tight enough to mean something at this scale."""
    return namespaced_settings(
        broker, "load-burst", batch_size=500, churn_max_per_tick=500, state_cache=2_000,
        rocksdb_write_buffer_mb=4, rocksdb_block_cache_mb=4, catching_up_lag=1_000,
    )


async def sample_until_caught_up(burst: Burst, timeout_s: float = 240.0) -> None:
    worker = burst.worker
    started = time.monotonic()
    while True:
        worker.check_alive()
        ready = await asyncio.to_thread(worker.readyz)
        try:
            lags, processed = await asyncio.to_thread(lag_by_partition, worker)
        except OSError:
            lags, processed = {}, 0.0
        sample = Sample(time.monotonic() - started, status_bytes(worker.process.pid, "VmRSS"), ready, lags, processed)  # type: ignore[union-attr]
        burst.samples.append(sample)
        if processed == 0:
            burst.baseline_rss = sample.rss
        full = len(lags) == burst.settings.partitions
        if processed >= burst.records and full and sum(lags.values()) == 0 and ready.get("catching_up") is False:
            burst.peak_rss = status_bytes(worker.process.pid, "VmHWM")  # type: ignore[union-attr]
            return
        if sample.t > timeout_s:
            raise AssertionError(f"not caught up after {timeout_s:.0f}s: {sample}\n{worker.log_tail()}")
        await asyncio.sleep(0.2)


@pytest.fixture(scope="module")
async def load(embedded_broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory):
    bootstrap = embedded_broker.bootstrap_servers
    settings = burst_settings(bootstrap)
    paused = namespaced_settings(bootstrap, "load-paused")
    await asyncio.gather(create_topics(settings), create_topics(paused))
    records, expected = journeys("ld", BURST_CUSTOMERS)
    await produce(bootstrap, settings.topic_touchpoints, records)  # all of it before the worker exists
    burst = Burst(settings, WorkerProcess(settings, tmp_path_factory.mktemp("load-burst")), len(records), expected)
    quiet = WorkerProcess(paused, tmp_path_factory.mktemp("load-paused"))
    try:
        burst.worker.start()
        quiet.start()
        await sample_until_caught_up(burst)
        await wait_committed(bootstrap, settings.app_id, settings.topic_touchpoints, timeout_s=60, check=burst.worker.check_alive)
        await wait_until_processing(paused, [quiet])
        yield Load(burst, (paused, quiet), embedded_broker)
    finally:
        stop_all([burst.worker, quiet])


async def transitions_by_customer(settings: Settings) -> dict[str, list[tuple[str | None, str, str]]]:
    got: dict[str, list[tuple[str | None, str, str]]] = defaultdict(list)
    for m in await read_to_end(settings.bootstrap_servers, settings.topic_transitions):
        if not is_probe(m["customer_id"]):
            got[m["customer_id"]].append((m["from_stage"], m["to_stage"], m["trigger_event_id"]))
    return dict(got)


# --- the burst ------------------------------------------------------------------------------------
async def test_readyz_says_catching_up_with_a_positive_lag_then_caught_up(load: Load):
    ready = [s.ready for s in load.burst.samples if s.ready.get("ready")]
    first = next((i for i, r in enumerate(ready) if r["catching_up"] and r["lag"] > 0), None)
    assert first is not None, f"/readyz never said catching_up with a lag: {ready[:5]}"
    assert ready[first]["lag"] > load.burst.settings.catching_up_lag  # catching up = above the threshold
    assert ready[first]["lag"] <= load.burst.records
    assert ready[-1]["catching_up"] is False and ready[-1]["lag"] == 0
    # While it was catching up the worker was ready all the same (Kubernetes keeps it in service):
    # every answer from the first catching-up one on (a sample it did not answer in time is {}).
    answered = [s.ready for s in load.burst.samples if s.ready]
    since = next(i for i, r in enumerate(answered) if r is ready[first])
    assert all(r.get("ready") for r in answered[since:]), [r for r in answered[since:] if not r.get("ready")][:3]


async def test_journey_consumer_lag_showed_the_backlog_per_partition_and_fell_to_zero(load: Load):
    burst = load.burst
    full = [s for s in burst.samples if len(s.lags) == burst.settings.partitions]
    assert full, "journey_consumer_lag never had a series for every partition"
    totals = [sum(s.lags.values()) for s in full]
    assert max(totals) > 0 and totals[-1] == 0
    assert max(totals) <= burst.records
    # Measured from the true end of each partition: what was still to do, plus what was already
    # done, is the whole backlog (less at most the stages in flight, counted done only once durable).
    first = full[0]
    assert totals[0] + first.processed >= burst.records - STAGES_IN_FLIGHT * burst.settings.batch_size, first
    # It fell: the backlog went down while the worker worked (not all at once at the end).
    assert any(0 < t < max(totals) for t in totals), totals


async def test_every_event_of_the_backlog_was_processed_exactly(load: Load):
    got = await transitions_by_customer(load.burst.settings)
    assert got == load.burst.expected


async def test_peak_rss_stayed_under_the_bound_the_settings_give(load: Load):
    burst = load.burst
    bound: MemoryBound = memory_bound(burst.settings, partitions=burst.settings.partitions, customers=BURST_CUSTOMERS)
    assert burst.peak_rss is not None and burst.baseline_rss is not None
    first = next(s.t for s in burst.samples if s.processed > 0)
    print(f"burst: {burst.records:,} records in {burst.samples[-1].t - first:.1f}s after the first batch; peak RSS "
          f"{burst.peak_rss / 2**20:.0f} MiB (baseline {burst.baseline_rss / 2**20:.0f} MiB); bound {bound.describe()}")
    assert burst.peak_rss <= bound.total, f"peak {burst.peak_rss / 2**20:.0f} MiB; bound {bound.describe()}"
    # What the burst added to the worker's own baseline is within the parts the settings bound.
    assert burst.peak_rss - burst.baseline_rss <= bound.total - bound.runtime, (
        f"peak {burst.peak_rss / 2**20:.0f} MiB, baseline {burst.baseline_rss / 2**20:.0f} MiB; bound {bound.describe()}")
    # The state cache held no more than its size (it is far smaller than the customers here).
    cached = burst.worker.metric("journey_state_cache_customers")
    assert 0 < cached <= burst.settings.state_cache < BURST_CUSTOMERS


async def test_every_partition_database_runs_with_the_memtables_the_bound_counts(load: Load):
    """The RocksDB part of the bound holds in the worker itself: each partition database's OPTIONS
    file (written by RocksDB when it opened it) has the settings' memtable size and number. (Its
    block cache capacity is not in that file; the bound counts JOURNEY_ROCKSDB_BLOCK_CACHE_MB.)"""
    from journey.worker.app import ROCKSDB_WRITE_BUFFERS

    settings = load.burst.settings
    databases = sorted(load.burst.worker.data_dir.glob(f"{settings.app_id}-data/**/customers-*.db"))
    assert len(databases) == settings.partitions, databases
    for db in databases:
        latest = max(db.glob("OPTIONS-*"), key=lambda f: int(f.name.split("-")[1]))
        options = dict(re.findall(r"^\s*(\w+)=(.*)$", latest.read_text(), re.M))
        assert int(options["write_buffer_size"]) == settings.rocksdb_write_buffer_mb * 2**20, latest
        assert int(options["max_write_buffer_number"]) == ROCKSDB_WRITE_BUFFERS, latest


# --- the slow broker ------------------------------------------------------------------------------
async def test_a_paused_broker_loses_nothing_and_the_worker_catches_up(load: Load):
    settings, worker = load.paused
    pid = worker.process.pid  # type: ignore[union-attr]
    rebalances = worker.readyz().get("rebalances")
    records, expected = journeys("sb", PAUSED_CUSTOMERS)
    broker_pid = load.broker.pid
    assert broker_pid is not None
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=5, request_timeout_ms=120_000)
    await producer.start()

    async def feed() -> None:  # ~10 s of events, a tenth every second
        step = len(records) // 10 + 1
        for i in range(0, len(records), step):
            futures = [await producer.send(settings.topic_touchpoints, v, key=k) for k, v in records[i:i + step]]
            await asyncio.gather(*futures)
            await asyncio.sleep(1.0)

    try:
        feeding = asyncio.create_task(feed())
        await asyncio.sleep(3.0)  # events flowing, the worker processing them
        os.kill(broker_pid, signal.SIGSTOP)
        try:
            stopped = time.monotonic()
            at_pause = worker.metric(PROCESSED)
            answers = []
            while time.monotonic() - stopped < PAUSE_S:
                worker.check_alive()
                answers.append(await asyncio.to_thread(worker.readyz))  # it answers while nothing answers it
                await asyncio.sleep(1.0)
        finally:
            os.kill(broker_pid, signal.SIGCONT)
        await asyncio.wait_for(feeding, 120)
    finally:
        await producer.stop()
    assert answers and all(answers), answers
    await wait_committed(settings.bootstrap_servers, settings.app_id, settings.topic_touchpoints, timeout_s=120, check=worker.check_alive)
    # Alive, the same process, never exited to replay.
    worker.check_alive()
    assert worker.process.pid == pid  # type: ignore[union-attr]
    assert "CRITICAL" not in worker.log_text(), worker.log_tail()
    # Every event processed exactly: every customer's transitions, each once, nothing else.
    assert await transitions_by_customer(settings) == expected
    # The pause fell in the middle of the stream: most of it was processed after the broker came back.
    assert worker.metric(PROCESSED) - at_pause > len(records) / 2, at_pause
    # Caught up: /readyz says so (a rejoin after the pause is allowed, not required).
    deadline = time.monotonic() + 15
    while (ready := worker.readyz()).get("catching_up") is not False and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    assert ready["ready"] and ready["catching_up"] is False and ready["lag"] == 0, ready
    assert ready["rebalances"] >= rebalances
