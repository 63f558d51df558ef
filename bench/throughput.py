"""Throughput benchmark (issue 5): journey's worker next to the Kafka client's own ceiling, one run.

    python bench/throughput.py [--events 1000000] [--customers 100000] [--partitions 8]

Everything runs on an embedded broker this script starts on a free port; it stops its broker
and workers by itself, also when a worker dies (its log tail is printed, the exit code is 1).

Phases
------
1. Input. N touchpoints from the generator (the journey mix of `journey dev`: duplicates and
   late events included) are encoded with orjson, keyed by customer_id (anonymous_id when
   there is none) and produced into a fresh topic in large batches, all before any timing.
   Meanwhile they are folded through journey.core.machine.apply per customer in produce order
   (= the order the customer's partition delivers them) to predict the transitions.
2. Ceiling. A plain aiokafka consumer (no group, every partition assigned, from the
   beginning) reads and JSON-decodes every record with the standard library's json: the
   issue's ceiling (its 150,000-180,000/s on this kind of machine is what json.loads gives
   here; orjson.loads gives ~1.5x that). The same consumer with orjson.loads -- the decoder
   journey uses -- is reported beside it as a stricter ceiling. Each is the best of two runs.
3. journey, one worker. A fresh `python -m journey.cli worker` (new app id = new consumer
   group and changelog, own output topics, RocksDB store) reads the input
   from the beginning. The worker needs tens of seconds to join its group on this broker, so
   the clock cannot start at process start, and the input must not be fed while it runs.
   The window is taken from the worker's own metrics and the output topics:

   * start: the bench scrapes GET /metrics every 50 ms until the first batch is counted.
     ``journey_batch_records_sum`` (S0 records) and ``journey_last_batch_timestamp_seconds``
     (t0, set when that batch was finished) are updated together after each batch, so exactly
     S0 records were done at t0. Those S0 records are excluded from the count.
   * end: the later of (a) the last batch's finish time (the same gauge at the end: by then
     its transitions were published and acknowledged; handle_batch awaits the acks before it
     writes the states) and (b) the moment the changelog had received every state write: the
     bench polls the changelog's highwater every 50 ms, waits until the group's committed
     offsets reach the end of the input (Faust flushes its producer -- the changelog writes --
     before it commits), and takes the first poll at which the changelog already held as many
     records as at that point. Churn-timer writes after the last batch count too (conservative).
   * events_per_s = (N - S0) / (end - t0). The ceiling is timed the same way: from the end of
     its first fetch (those records not counted) to its last record.

   Then the transitions topic is read whole: its distinct transition_ids (at-least-once may
   repeat records) must equal the prediction; a mismatch fails the run.
4. Latency, peak RSS, state size. A second fresh worker on a fresh input topic; once a probe
   per partition has come back as a transition (joined, partitions owned), a paced producer (a process of its own)
   sends generated touchpoints at half the measured throughput for --latency-seconds. Latency
   = the transition's arrival at a watching consumer (5 ms fetch wait) minus the moment its
   triggering touchpoint was handed to the producer; p50 and p99 over all transitions. Peak
   RSS is the throughput worker's VmHWM. Bytes per customer = the value bytes of the latest
   changelog record per key (the state as stored), divided by the number of keys.
   Then the latency floor at the same rate: the same paced producer and watcher with no
   worker between them (the watcher reads the input topic itself), for what the broker and
   this machine cost alone.
5. Two workers in one group (new app id) on the same input, measured like 3; the speed-up is
   against one worker. The broker, both workers and this script share the machine's cores.

Optional: --faust-floor runs bench/faust_floor.py (Faust with a trivial agent) on the same
input, for Faust's own per-event cost; --profile FILE samples the throughput worker with py-spy.

The last line is machine-readable:
``events_per_s=<journey> ceiling_events_per_s=<ceiling> ratio=<journey/ceiling> p99_ms=<p99> bytes_per_customer=<bytes>``
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "service"))

import orjson  # noqa: E402
from aiokafka import AIOKafkaProducer  # noqa: E402
from aiokafka.partitioner import DefaultPartitioner  # noqa: E402

import loadgen  # noqa: E402
import pyspy  # noqa: E402
import topicread  # noqa: E402
from journey.core.definition import load_definition  # noqa: E402
from journey.core.machine import Limits  # noqa: E402
from journey.kafka.admin import TopicSpec, ensure_topics  # noqa: E402
from journey.kafka.broker import EmbeddedBroker  # noqa: E402
from journey.settings import Settings  # noqa: E402
from journey.sources.generator import IDENTITY_MIX  # noqa: E402
from journey.worker.app import changelog_topic_name  # noqa: E402
from journey.worker.topics import all_topic_specs  # noqa: E402
from workerproc import Worker, WorkerDied, bench_settings, process_cpu_seconds  # noqa: E402

POLL_S = 0.05
JOIN_TIMEOUT_S = 240.0


class BenchError(RuntimeError):
    """The run cannot give a valid figure."""


@dataclass
class Run:
    """One timed journey run (one or more workers in one group)."""

    label: str
    events: int
    events_per_s: float
    seconds: float
    #: Records done before the window opened (the first batches), not counted.
    excluded: int
    #: Seconds between the last batch's finish and the last changelog write acknowledged.
    changelog_tail_s: float
    processed_per_worker: list[int]
    peak_rss: list[int | None]
    #: CPU seconds per window second: the workers' (summed) and the broker's.
    worker_cpu: float = float("nan")
    broker_cpu: float = float("nan")
    #: Share of customer reads the workers' state caches answered (the rest: RocksDB + decode).
    cache_hit_ratio: float = float("nan")
    #: The workers' minor page faults in the window per event (fresh memory touched).
    faults_per_event: float = float("nan")
    transitions: int = 0
    transition_records: int = 0
    notes: list[str] = field(default_factory=list)


# --- timing a worker group ------------------------------------------------------------------

async def _scrape(workers: list[Worker]) -> list[dict[str, float]]:
    for w in workers:
        w.check()
    return list(await asyncio.gather(*(w.metrics() for w in workers)))


def _metric(m: dict[str, float], name: str) -> float:
    return m.get(name, 0.0)


async def measure(
    label: str, workers: list[Worker], settings: Settings, n_events: int, hw: topicread.Highwaters, broker_pid: int | None,
    *, identity: bool = False,
) -> Run:
    """Time ``workers`` (started, one group) over an input of ``n_events`` already produced.

    With ``identity`` the workers add their own records to the input (link and merge requests,
    a linked anonymous id's events): the window ends when those are committed too, and the
    rate counts the produced touchpoints only."""
    topic, parts = settings.topic_touchpoints, settings.partitions
    changelog = changelog_topic_name(settings)
    ends = {tp.partition: off for tp, off in (await hw.of(topic, parts)).items()}
    # -- start of the window: every worker has finished a batch (scraped every 50 ms)
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    served = False
    while True:
        ms = await _scrape(workers)
        served = served or all(ms)
        counts = [_metric(m, "journey_batch_records_count") for m in ms]
        done = sum(_metric(m, "journey_batch_records_sum") for m in ms)
        if all(counts) or (any(counts) and done >= n_events):
            break
        if time.monotonic() > deadline:
            if served and not any("journey_batch_records_count" in m for m in ms):
                raise BenchError(f"{label}: the workers' /metrics has no journey_batch_records histogram; the bench reads it")
            raise BenchError(
                f"{label}: {sum(1 for c in counts if c)} of {len(workers)} workers processed a batch within "
                f"{JOIN_TIMEOUT_S:.0f}s; log tail of {workers[0].name}:\n{workers[0].log_tail()}"
            )
        await asyncio.sleep(POLL_S)
    s0 = int(done)
    t0 = max(_metric(m, "journey_last_batch_timestamp_seconds") for m in ms)
    cpu0 = (time.time(), sum(w.cpu_seconds() for w in workers), process_cpu_seconds(broker_pid))
    faults0 = sum(w.minor_faults() for w in workers)
    notes = []
    if not all(counts):
        notes.append(f"only {sum(1 for c in counts if c)} of {len(workers)} workers got work before the input was drained")
    # -- end of the window: committed offsets at the input's end; changelog highwater history
    history: list[tuple[float, int]] = []
    next_check = 0.0
    last_progress = time.monotonic()
    input_done: float | None = None  # when the produced input was committed (the workers' own records may follow)
    run_deadline = time.monotonic() + max(600.0, n_events / 500)
    while True:
        history.append((time.time(), await hw.total(changelog, parts)))
        if time.monotonic() >= next_check:
            next_check = time.monotonic() + 0.5
            for w in workers:
                w.check()
            offsets = await topicread.committed(settings.bootstrap_servers, settings.app_id, topic, parts)
            if all(offsets.get(p, -1) >= end for p, end in ends.items()):
                if input_done is None:
                    input_done = time.time()
                if not identity:
                    break
                now_ends = {tp.partition: off for tp, off in (await hw.of(topic, parts)).items()}
                if now_ends == ends:
                    break
                ends = now_ends  # the workers' own records since: wait for those too
            if time.monotonic() - last_progress > 10:
                last_progress = time.monotonic()
                print(f"    ... {label}: committed {sum(max(o, 0) for o in offsets.values()):,} of {n_events:,}", flush=True)
        if time.monotonic() > run_deadline:
            raise BenchError(f"{label}: the input was not fully committed within {run_deadline:.0f}s")
        await asyncio.sleep(POLL_S)
    cpu1 = (time.time(), sum(w.cpu_seconds() for w in workers), process_cpu_seconds(broker_pid))
    faults1 = sum(w.minor_faults() for w in workers)
    final_changelog = history[-1][1]
    t_durable = next(t for t, n in history if n >= final_changelog)
    ms = await _scrape(workers)
    processed = [int(_metric(m, "journey_batch_records_sum")) for m in ms]
    if sum(processed) < n_events:
        raise BenchError(f"{label}: offsets committed but the workers report {sum(processed):,} of {n_events:,} records processed")
    if sum(processed) > n_events:
        # The default mix has customers whose events carry a device id too: links and merges
        # arise without --identity. Replays after a rebalance would add to the same count.
        notes.append(f"{sum(processed) - n_events:,} records processed besides the input: the workers' own (identity "
                     "links, merges, linked anonymous events, re-keyed touchpoints) and any batch a rebalance replayed")
    t_processed = max(_metric(m, "journey_last_batch_timestamp_seconds") for m in ms)
    hits = sum(_metric(m, 'journey_state_cache_reads_total{result="hit"}') for m in ms)
    misses = sum(_metric(m, 'journey_state_cache_reads_total{result="miss"}') for m in ms)
    t_end = max(t_processed, t_durable)
    seconds = t_end - t0
    if identity and input_done is not None:
        notes.append(f"the produced input was committed {input_done - t0:.1f}s into the window; the workers' own records "
                     f"appended behind it (links, merges) took {max(t_end - input_done, 0.0):.1f}s more")
    return Run(
        label=label, events=n_events, events_per_s=(n_events - s0) / seconds if seconds > 0 else float("nan"),
        seconds=seconds, excluded=s0, changelog_tail_s=max(0.0, t_durable - t_processed),
        processed_per_worker=processed, peak_rss=[w.peak_rss_bytes() for w in workers], notes=notes,
        worker_cpu=(cpu1[1] - cpu0[1]) / (cpu1[0] - cpu0[0]), broker_cpu=(cpu1[2] - cpu0[2]) / (cpu1[0] - cpu0[0]),
        cache_hit_ratio=hits / (hits + misses) if hits + misses else float("nan"),
        faults_per_event=(faults1 - faults0) / (n_events - s0) if n_events > s0 else float("nan"),
    )


async def distinct_transitions(settings: Settings, *, skip_probes: bool = False) -> tuple[int, int]:
    """(distinct transition ids, records) on the transitions topic as it is now (at-least-once
    delivery may repeat a record; its id says it is the same transition)."""
    ids: set[str] = set()
    records = 0

    def on_record(_key: bytes | None, value: bytes | None) -> None:
        nonlocal records
        t = orjson.loads(value)  # type: ignore[arg-type]
        if skip_probes and t["customer_id"].startswith("__probe__"):
            return
        records += 1
        ids.add(t["transition_id"])

    await topicread.read_topic(settings.bootstrap_servers, settings.topic_transitions, settings.partitions, on_record)
    return len(ids), records


async def count_transitions(settings: Settings, run: Run, expected: int, *, skip_probes: bool = False) -> None:
    run.transitions, run.transition_records = await distinct_transitions(settings, skip_probes=skip_probes)
    if expected >= 0 and run.transitions != expected:
        run.notes.append(f"MISMATCH: {run.transitions:,} distinct transitions published, the pure core predicts {expected:,}")


async def state_bytes(settings: Settings) -> tuple[float, int]:
    """Mean value bytes of the latest changelog record per key, and the number of keys."""
    latest: dict[bytes | None, int] = {}

    def on_record(key: bytes | None, value: bytes | None) -> None:
        if value is None:
            latest.pop(key, None)
        else:
            latest[key] = len(value)

    await topicread.read_topic(settings.bootstrap_servers, changelog_topic_name(settings), settings.partitions, on_record)
    return (sum(latest.values()) / len(latest) if latest else float("nan")), len(latest)


# --- latency ----------------------------------------------------------------------------------

@dataclass
class Latency:
    rate: float
    sent: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    transitions: int
    expected: int
    worker_mean_ms: float
    #: Share of transitions the worker had acknowledged within 100 ms of their event's record
    #: timestamp (its own histogram): p99 < 100 ms on the worker's side when >= 0.99.
    worker_within_100ms: float


def _probe_keys(partitions: int, run: str) -> list[tuple[int, str]]:
    """One probe customer per partition (Kafka's default murmur2 partitioner)."""
    partitioner, all_p = DefaultPartitioner(), list(range(partitions))
    keys: dict[int, str] = {}
    i = 0
    while len(keys) < partitions:
        key = f"__probe__{run}-{i}"
        keys.setdefault(partitioner(key.encode(), all_p, all_p), key)
        i += 1
    return sorted(keys.items())


def _settle_heap() -> None:
    """Move this process's objects (the generated input: millions of them) out of the garbage
    collector's sight before a latency run: a full collection over them can pause the watcher
    (which time-stamps arrivals) for hundreds of milliseconds, a cost of the bench, not of the
    path measured. The worker's own collections still count."""
    gc.collect()
    gc.freeze()


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


async def measure_latency(worker: Worker, settings: Settings, rate: float, seconds: float, args: argparse.Namespace, run: str) -> Latency:
    definition = load_definition(settings.journey_path)
    limits = Limits(dedupe_window=settings.dedupe_window, order_window=settings.order_window)
    n = max(1, int(rate * seconds))
    feed = loadgen.build_input(
        n, max(1, n // 10), seed=args.seed + 1000, partitions=settings.partitions,
        definition=definition, limits=limits, keep_order=True,
    )
    _settle_heap()
    arrivals: dict[str, tuple[float, str]] = {}  # transition_id -> (arrival, trigger)
    probes_seen: set[str] = set()

    def on_record(now: float, _key: bytes | None, value: bytes | None) -> None:
        t = orjson.loads(value)  # type: ignore[arg-type]
        if t["customer_id"].startswith("__probe__"):
            probes_seen.add(t["customer_id"])
        elif t["transition_id"] not in arrivals:
            arrivals[t["transition_id"]] = (now, t["trigger_event_id"])

    stop = asyncio.Event()
    watcher = asyncio.create_task(topicread.watch(settings.bootstrap_servers, settings.topic_transitions, settings.partitions, on_record, stop))
    try:
        worker.start()
        # Joined and owning every partition: a probe per partition has come back.
        probes = _probe_keys(settings.partitions, run)
        producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
        await producer.start()
        try:
            now = datetime.now(UTC).isoformat()
            for p, key in probes:
                event = {"event_id": key, "customer_id": key, "type": "page_view", "timestamp": now}
                await producer.send_and_wait(settings.topic_touchpoints, orjson.dumps(event), key=key.encode(), partition=p)
        finally:
            await producer.stop()
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        while len(probes_seen) < len(probes):
            worker.check()
            if time.monotonic() > deadline:
                raise BenchError(f"latency worker: {len(probes_seen)} of {len(probes)} probes came back within {JOIN_TIMEOUT_S:.0f}s")
            await asyncio.sleep(0.2)
        before = await worker.metrics()

        async def guard() -> None:
            while True:
                worker.check()
                await asyncio.sleep(0.5)

        guarding = asyncio.create_task(guard())
        try:
            sent = await loadgen.produce_paced_elsewhere(settings.bootstrap_servers, settings.topic_touchpoints, feed.ordered or [], rate)
            deadline = time.monotonic() + 60
            while len(arrivals) < feed.prediction.transitions and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)  # stragglers (duplicates would show here)
        finally:
            guarding.cancel()
        after = await worker.metrics()
    finally:
        stop.set()
        await watcher
    lat = sorted((arrival - sent[trigger]) * 1000 for arrival, trigger in arrivals.values() if trigger in sent)
    d_sum = _metric(after, "journey_event_to_transition_seconds_sum") - _metric(before, "journey_event_to_transition_seconds_sum")
    d_cnt = _metric(after, "journey_event_to_transition_seconds_count") - _metric(before, "journey_event_to_transition_seconds_count")
    le_100ms = 'journey_event_to_transition_seconds_bucket{le="0.1"}'
    d_fast = _metric(after, le_100ms) - _metric(before, le_100ms)
    return Latency(
        rate=rate, sent=len(feed.ordered or []), p50_ms=_percentile(lat, 0.5), p99_ms=_percentile(lat, 0.99),
        max_ms=lat[-1] if lat else float("nan"), transitions=len(arrivals), expected=feed.prediction.transitions,
        worker_mean_ms=(d_sum / d_cnt * 1000) if d_cnt else float("nan"),
        worker_within_100ms=(d_fast / d_cnt) if d_cnt else float("nan"),
    )


async def transport_latency(bootstrap: str, topic: str, partitions: int, rate: float, seconds: float, args: argparse.Namespace) -> tuple[float, float, float]:
    """The latency floor of this machine and broker: the same paced producer and the same
    watcher as measure_latency, with no worker in between (the watcher reads the input topic
    itself). Returns p50, p99, max in ms."""
    settings = Settings()
    definition = load_definition(settings.journey_path)
    n = max(1, int(rate * seconds))
    feed = loadgen.build_input(n, max(1, n // 10), seed=args.seed + 2000, partitions=partitions,
                               definition=definition, limits=Limits(), keep_order=True)
    _settle_heap()
    arrivals: dict[str, float] = {}

    def on_record(now: float, _key: bytes | None, value: bytes | None) -> None:
        arrivals.setdefault(orjson.loads(value)["event_id"], now)  # type: ignore[arg-type]

    stop = asyncio.Event()
    watcher = asyncio.create_task(topicread.watch(bootstrap, topic, partitions, on_record, stop))
    try:
        await asyncio.sleep(1.0)  # assigned and polling before the first record
        sent = await loadgen.produce_paced_elsewhere(bootstrap, topic, feed.ordered or [], rate)
        deadline = time.monotonic() + 30
        while len(arrivals) < len(sent) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await watcher
    lat = sorted((arrivals[e] - t) * 1000 for e, t in sent.items() if e in arrivals)
    return _percentile(lat, 0.5), _percentile(lat, 0.99), lat[-1] if lat else float("nan")


# --- Faust's floor ----------------------------------------------------------------------------

async def faust_floor(mode: str, bootstrap: str, topic: str, partitions: int, events: int, workdir: Path, run: str) -> float:
    """Events/s of Faust itself with a trivial agent (bench/faust_floor.py) on the input."""
    app_id = f"bench-{run}-floor-{mode}"
    await ensure_topics(bootstrap, [TopicSpec(f"{app_id}-floor-changelog", partitions, 1, 7 * 24 * 3600 * 1000, "compact")])
    settings = Settings(bootstrap_servers=bootstrap, app_id=app_id, topic_touchpoints=topic, partitions=partitions)
    w = Worker(
        f"faust-floor-{mode}", settings, workdir / f"floor-{mode}", argv=[str(REPO / "bench" / "faust_floor.py")],
        extra_env={"FLOOR_MODE": mode, "FLOOR_EVENTS": str(events), "FLOOR_APP_ID": app_id,
                   "FLOOR_TOPIC": topic, "FLOOR_BOOTSTRAP": bootstrap, "FLOOR_PARTITIONS": str(partitions)},
    )
    w.start()
    try:
        deadline = time.monotonic() + JOIN_TIMEOUT_S + max(120.0, events / 500)
        while time.monotonic() < deadline:
            w.check()
            for line in w.log_path.read_text(errors="replace").splitlines():
                # Faust logs what the app prints: "[time] [pid] [WARNING] FLOOR t0=... n=..."
                _, marker, report = line.partition("FLOOR t0=")
                if marker:
                    fields = dict(kv.split("=") for kv in f"t0={report}".split())
                    return (int(fields["n"]) - int(fields["n0"])) / (float(fields["t1"]) - float(fields["t0"]))
            await asyncio.sleep(0.2)
        raise BenchError(f"faust floor ({mode}) did not finish; log tail:\n{w.log_tail()}")
    finally:
        w.stop()


# --- the run ----------------------------------------------------------------------------------

def _fmt_rate(r: float) -> str:
    return f"{r:,.0f}/s"


def _fmt_mib(b: int | None) -> str:
    return "n/a" if b is None else f"{b / 2**20:,.0f} MiB"


async def bench(args: argparse.Namespace, workdir: Path) -> int:
    run = uuid.uuid4().hex[:6]
    started = time.monotonic()
    workers: list[Worker] = []
    broker = EmbeddedBroker(log_path=workdir / "broker.log")
    await broker.start_async()
    hw: topicread.Highwaters | None = None
    profiler: pyspy.Recording | None = None
    try:
        bootstrap = broker.bootstrap_servers
        hw = await topicread.Highwaters(bootstrap).start()
        input_topic = f"bench-{run}.touchpoints"
        base = bench_settings(bootstrap, run, "one", input_topic=input_topic, partitions=args.partitions)
        definition = load_definition(base.journey_path)
        limits = Limits(dedupe_window=base.dedupe_window, order_window=base.order_window)
        traffic = "anonymous-first, unstitched" if args.unstitched else "anonymous-first" if args.identity else "the default mix"
        print(f"journey throughput bench: {args.events:,} touchpoints ({traffic}), {args.customers:,} customers per crowd, "
              f"{args.partitions} partitions, store rocksdb, broker {bootstrap} (tansu), {os.cpu_count()} cores", flush=True)

        # 1. input
        stitched = args.identity and not args.unstitched  # links and merges: transitions not predicted
        t = time.perf_counter()
        data = loadgen.build_input(args.events, args.customers, seed=args.seed, partitions=args.partitions,
                                   definition=definition, limits=limits, mix=IDENTITY_MIX if args.identity else None,
                                   unstitched=args.unstitched)
        gen_s = time.perf_counter() - t
        pred = data.prediction
        print(f"  generated + predicted in {gen_s:.1f}s: {pred.profiles:,} journeys, {pred.duplicates:,} duplicate "
              f"deliveries, {pred.transitions:,} transitions predicted", flush=True)
        await ensure_topics(bootstrap, all_topic_specs(base))
        produce_s = await loadgen.produce_all(bootstrap, input_topic, data)
        del data
        print(f"  produced in {produce_s:.1f}s ({args.events / produce_s:,.0f}/s)", flush=True)

        # 2. ceilings: the (a plain consumer, the standard library's json) and a stricter
        # one with the decoder journey itself uses; the best of two runs of each (they vary).
        ceilings: dict[str, topicread.Ceiling] = {}
        for _ in range(2):
            for name, loads in (("json", json.loads), ("orjson", orjson.loads)):
                c = await topicread.ceiling(bootstrap, input_topic, args.partitions, args.events, loads)
                if name not in ceilings or c.events_per_s > ceilings[name].events_per_s:
                    ceilings[name] = c
        ceiling, strict = ceilings["json"], ceilings["orjson"]
        if not ceiling.seconds > 0:
            print("  ! the input came in a single fetch: too small to time the ceiling (use --events >= 100000)", flush=True)
        print(f"  ceiling: plain aiokafka + json.loads {_fmt_rate(ceiling.events_per_s)}; "
              f"with orjson.loads {_fmt_rate(strict.events_per_s)}", flush=True)

        # 3. one worker
        w1 = Worker("one", base, workdir / "one")
        workers.append(w1.start())
        print(f"  journey, one worker (pid {w1.pid}): waiting for it to join ...", flush=True)
        if args.profile:
            profiler = pyspy.Recording.start(w1.pid, Path(args.profile))  # type: ignore[arg-type]
        broker_pid = broker.pid  # to report its CPU share
        one = await measure("one worker", [w1], base, args.events, hw, broker_pid, identity=stitched)
        if profiler is not None:
            profiler.stop()
        print(f"  journey, one worker: {_fmt_rate(one.events_per_s)} over {one.seconds:.1f}s", flush=True)
        w1.stop()
        await count_transitions(base, one, -1 if stitched else pred.transitions)
        bytes_per_customer, keys = await state_bytes(base)

        # 5. two workers, one group
        two_settings = bench_settings(bootstrap, run, "two", input_topic=input_topic, partitions=args.partitions)
        await ensure_topics(bootstrap, all_topic_specs(two_settings))
        pair = [Worker(f"two-{i}", two_settings, workdir / f"two-{i}") for i in (1, 2)]
        two: Run | None = None
        if not args.skip_two:
            workers.extend(w.start() for w in pair)
            print(f"  journey, two workers (pids {pair[0].pid}, {pair[1].pid}): waiting for both to join ...", flush=True)
            two = await measure("two workers", pair, two_settings, args.events, hw, broker_pid, identity=stitched)
            for w in pair:
                w.stop()
            print(f"  journey, two workers: {_fmt_rate(two.events_per_s)} over {two.seconds:.1f}s", flush=True)
            await count_transitions(two_settings, two, -1 if stitched else pred.transitions)

        # 4. latency at half the measured throughput
        lat_settings = bench_settings(bootstrap, run, "latency", input_topic=f"bench-{run}.latency.touchpoints",
                                      partitions=args.partitions)
        await ensure_topics(bootstrap, all_topic_specs(lat_settings))
        wl = Worker("latency", lat_settings, workdir / "latency")
        workers.append(wl)
        rate = max(1.0, one.events_per_s / 2)
        print(f"  latency: paced {rate:,.0f}/s for {args.latency_seconds:g}s into a fresh worker ...", flush=True)
        latency = await measure_latency(wl, lat_settings, rate, args.latency_seconds, args, run)
        wl.stop()
        floor_topic = f"bench-{run}.latency-floor"
        await ensure_topics(bootstrap, [TopicSpec(floor_topic, args.partitions, 1, 24 * 3600 * 1000)])
        print(f"  latency floor: paced {rate:,.0f}/s through the broker alone ...", flush=True)
        floor_lat = await transport_latency(bootstrap, floor_topic, args.partitions, rate, min(args.latency_seconds, 10.0), args)

        floors: dict[str, float] = {}
        for mode in args.faust_floor:
            floors[mode] = await faust_floor(mode, bootstrap, input_topic, args.partitions, min(args.events, args.floor_events), workdir, run)
            print(f"  faust floor ({mode}): {_fmt_rate(floors[mode])}", flush=True)

        # 6. report
        ratio = one.events_per_s / ceiling.events_per_s
        rows = [
            ("input", f"{args.events:,} touchpoints, {pred.profiles:,} journeys, {args.partitions} partitions; produced in {produce_s:.1f}s"),
            ("ceiling (aiokafka + json.loads)", f"{_fmt_rate(ceiling.events_per_s)}  ({ceiling.seconds:.1f}s; best of 2)"),
            ("stricter ceiling (+ orjson.loads)", f"{_fmt_rate(strict.events_per_s)}  ({strict.seconds:.1f}s; best of 2)"),
            ("journey, 1 worker", f"{_fmt_rate(one.events_per_s)}  ({one.seconds:.1f}s; first {one.excluded:,} records "
             f"before the window; changelog done {one.changelog_tail_s * 1000:.0f} ms after the last batch)"),
            ("CPU in the window (1 worker)", f"worker {one.worker_cpu:.2f} cores ({one.worker_cpu / one.events_per_s * 1e6:.1f} "
             f"CPU-us per event, {one.faults_per_event:.2f} page faults per event), broker {one.broker_cpu:.2f} cores; "
             f"state cache hits {one.cache_hit_ratio:.1%}"),
            ("ratio journey / ceiling", f"{ratio:.3f}   (target >= 0.5); against the stricter ceiling "
             f"{one.events_per_s / strict.events_per_s:.3f}"),
            ("transitions", f"{one.transitions:,} distinct ({one.transition_records:,} records), predicted {pred.transitions:,}"),
        ]
        if two is not None:
            rows += [
                ("journey, 2 workers, 1 group", f"{_fmt_rate(two.events_per_s)}  speed-up x{two.events_per_s / one.events_per_s:.2f} "
                 f"(processed {' + '.join(f'{p:,}' for p in two.processed_per_worker)}; broker, both workers and the bench share "
                 f"{os.cpu_count()} cores)"),
                ("CPU in the window (2 workers)", f"workers {two.worker_cpu:.2f} cores, broker {two.broker_cpu:.2f} cores"),
                ("transitions (2 workers)", f"{two.transitions:,} distinct ({two.transition_records:,} records), predicted {pred.transitions:,}"),
            ]
        rows += [
            (f"latency at {_fmt_rate(latency.rate)}", f"p50 {latency.p50_ms:.1f} ms, p99 {latency.p99_ms:.1f} ms, max {latency.max_ms:.0f} ms "
             f"(target p99 < 100 ms); {latency.transitions:,}/{latency.expected:,} transitions; worker's own mean "
             f"(record timestamp -> acked) {latency.worker_mean_ms:.1f} ms, {latency.worker_within_100ms:.1%} within 100 ms"),
            ("latency floor, no worker", f"p50 {floor_lat[0]:.1f} ms, p99 {floor_lat[1]:.1f} ms, max {floor_lat[2]:.0f} ms "
             "(same producer and watcher, the broker alone, same rate)"),
            ("peak RSS, 1 worker", _fmt_mib(one.peak_rss[0])),
            ("state per customer", f"{bytes_per_customer:,.0f} bytes (latest changelog value per key, {keys:,} keys; target <= 1024)"),
        ]
        for mode, r in floors.items():
            rows.append((f"Faust floor, trivial agent ({mode})", f"{_fmt_rate(r)}  ({r / ceiling.events_per_s:.3f} of the ceiling)"))
        rows.append(("bench run time", f"{time.monotonic() - started:.0f}s"))
        notes = [*(f"one worker: {n}" for n in one.notes), *(f"two workers: {n}" for n in (two.notes if two else []))]
        if latency.transitions != latency.expected:
            notes.append(f"latency: MISMATCH: {latency.transitions:,} transitions arrived, {latency.expected:,} predicted")
        width = max(len(k) for k, _ in rows)
        print()
        for k, v in rows:
            print(f"  {k:<{width}}  {v}")
        for n in notes:
            print(f"  ! {n}")
        if profiler is not None:
            print()
            print(profiler.report())
        print()
        print(f"events_per_s={one.events_per_s:.0f} ceiling_events_per_s={ceiling.events_per_s:.0f} "
              f"ratio={ratio:.3f} p99_ms={latency.p99_ms:.1f} bytes_per_customer={bytes_per_customer:.0f}")
        return 1 if any("MISMATCH" in n for n in notes) else 0
    finally:
        if profiler is not None:
            profiler.stop()
        for w in workers:
            w.stop()
        if hw is not None:
            await hw.close()
        await broker.stop_async()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=1_000_000, help="touchpoints to produce (default 1,000,000)")
    p.add_argument("--customers", type=int, default=100_000, help="customers per generated crowd, ~10 touchpoints each (default 100,000)")
    p.add_argument("--partitions", type=int, default=8, help="input partitions (default 8)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--latency-seconds", type=float, default=25.0, help="length of the paced latency run (default 25)")
    p.add_argument("--skip-two", action="store_true", help="skip the two-worker run")
    p.add_argument("--identity", action="store_true",
                   help="anonymous-first traffic (IDENTITY_MIX: logins, two devices, guest checkouts); transitions are "
                        "not predicted then (a merge's moves depend on when it lands)")
    p.add_argument("--unstitched", action="store_true",
                   help="with --identity: the same traffic with the anonymous id taken off every touchpoint that carries a "
                        "customer id, so nothing links (each id its own profile): identity's own cost is the difference")
    p.add_argument("--faust-floor", nargs="*", default=[], choices=["event", "batch", "table"],
                   help="also time Faust with a trivial agent: event (async for per event), batch (take_events), table (a table write per event)")
    p.add_argument("--floor-events", type=int, default=300_000, help="records the Faust floor runs time (default 300,000)")
    p.add_argument("--profile", default=None, help="sample the one-worker run with py-spy into this file (collapsed stacks)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, RocksDB data)")
    args = p.parse_args(argv)
    if args.events < 1 or args.customers < 1 or args.partitions < 1:
        p.error("--events, --customers and --partitions must be >= 1")
    if args.unstitched and not args.identity:
        p.error("--unstitched is a variant of --identity's traffic: give both")
    return run_in_workdir(bench, args, prefix="journey-bench-")


def run_in_workdir(run: Callable[[argparse.Namespace, Path], Awaitable[int]], args: argparse.Namespace, *, prefix: str) -> int:
    """``await run(args, workdir)`` in a fresh work directory (kept with --keep or on a failure);
    SIGTERM and Ctrl-C stop it (its finally blocks stop workers and broker). Returns the exit code."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    failed = True

    async def guarded() -> int:
        task = asyncio.current_task()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)  # type: ignore[union-attr]
        return await run(args, workdir)

    try:
        code = asyncio.run(guarded())
        failed = code != 0
        return code
    except (WorkerDied, BenchError) as exc:
        print(f"\nbench failed: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\nbench interrupted; workers and broker stopped", file=sys.stderr)
        return 130
    finally:
        if args.keep or failed:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
