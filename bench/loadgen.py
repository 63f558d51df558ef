"""The benchmark's input: generated touchpoints, what the pure core predicts for them, and producers.

The touchpoints come from journey.sources.generator (the journey mix of `journey dev`). While
they are generated, they are folded through journey.core.machine.apply per customer in
generation order -- the order their partition delivers them, since a customer's events all go
to one partition in produce order -- so the bench knows how many transitions the worker must
publish for exactly this input.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from journey.core.definition import JourneyDefinition
from journey.core.events import validate
from journey.core.machine import Limits, apply
from journey.core.state import CustomerState
from journey.sources.generator import GeneratorMix, generate

#: Event times start here: fixed, so a seed gives the same input on every run.
START = datetime(2024, 1, 1, tzinfo=UTC)
#: Largest produce batch (bytes). Large batches keep producing well ahead of the consumers.
BATCH_BYTES = 512 * 1024

Key = bytes
Value = bytes


@dataclass
class Prediction:
    """What the pure core says the worker must produce for an input."""

    transitions: int = 0
    duplicates: int = 0
    #: Distinct journeys (customers and anonymous visitors): the table's keys.
    profiles: int = 0


@dataclass
class Input:
    """Encoded touchpoints, already split by partition (each list in produce order)."""

    partitions: list[list[tuple[Key, Value]]]
    prediction: Prediction
    #: All records in produce order (partition, key, value): the paced feed needs one order.
    ordered: list[tuple[int, Key, Value, str]] | None = None

    @property
    def count(self) -> int:
        return sum(len(p) for p in self.partitions)


def touchpoints(n_events: int, n_customers: int, seed: int, mix: GeneratorMix | None = None) -> Iterator[dict]:
    """The first ``n_events`` of the generator's feed for ``n_customers`` (about ten events each).

    When that crowd runs out of events before ``n_events``, a new crowd (next seed: other ids)
    follows, so the count is always exact.
    """
    def crowds() -> Iterator[dict]:
        for s in itertools.count(seed):
            yield from generate(n_customers, seed=s, start=START, mix=mix)

    return itertools.islice(crowds(), n_events)


def build_input(
    n_events: int,
    n_customers: int,
    *,
    seed: int,
    partitions: int,
    definition: JourneyDefinition,
    limits: Limits,
    keep_order: bool = False,
    mix: GeneratorMix | None = None,
    unstitched: bool = False,
) -> Input:
    """Generate, encode, partition (Kafka's default murmur2 on the key) and predict. With
    ``unstitched``, a touchpoint that carries a customer id loses its anonymous id: nothing links,
    every id is a profile of its own (the traffic as journey saw it before identity)."""
    partitioner = DefaultPartitioner()
    all_partitions = list(range(partitions))
    partition_of: dict[Key, int] = {}
    out: list[list[tuple[Key, Value]]] = [[] for _ in all_partitions]
    ordered: list[tuple[int, Key, Value, str]] | None = [] if keep_order else None
    states: dict[str, CustomerState] = {}
    pred = Prediction()
    for event in touchpoints(n_events, n_customers, seed, mix):
        if unstitched and event.get("customer_id") is not None:
            event.pop("anonymous_id", None)
        value = orjson.dumps(event)
        tp = validate(event)
        profile = tp.profile_id
        key = profile.encode()
        p = partition_of.get(key)
        if p is None:
            p = partition_of[key] = partitioner(key, all_partitions, all_partitions)
        out[p].append((key, value))
        if ordered is not None:
            ordered.append((p, key, value, tp.event_id))
        outcome = apply(states.get(profile), tp, definition, limits)
        states[profile] = outcome.state
        if outcome.duplicate:
            pred.duplicates += 1
        elif outcome.transition is not None:
            pred.transitions += 1
    pred.profiles = len(states)
    return Input(out, pred, ordered)


async def produce_all(bootstrap: str, topic: str, data: Input) -> float:
    """Produce every record (acks=all) in large per-partition batches; return the seconds it took."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", max_batch_size=BATCH_BYTES, request_timeout_ms=120_000,
    )
    await producer.start()
    started = time.perf_counter()
    try:
        pending: list[asyncio.Future] = []
        # Round-robin over partitions, a batch at a time, so all partitions fill together.
        cursors = [iter(p) for p in data.partitions]
        live = list(range(len(cursors)))
        carry: dict[int, tuple[Key, Value]] = {}
        while live:
            for p in list(live):
                batch = producer.create_batch()
                if p in carry:
                    k, v = carry.pop(p)
                    batch.append(key=k, value=v, timestamp=None)
                for k, v in cursors[p]:
                    if batch.append(key=k, value=v, timestamp=None) is None:
                        carry[p] = (k, v)
                        break
                else:
                    live.remove(p)
                if batch.record_count():
                    pending.append(await producer.send_batch(batch, topic, partition=p))
            if len(pending) >= 64:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        return time.perf_counter() - started
    finally:
        await producer.stop()


async def produce_paced(
    bootstrap: str,
    topic: str,
    records: list[tuple[int, Key, Value, str]],
    rate: float,
    *,
    acked: dict[str, float] | None = None,
) -> dict[str, float]:
    """Send ``records`` at ``rate`` per second (one produce call each, no linger, acks=all).

    Returns event_id -> wall-clock time (time.time()) when it was handed to the producer
    (a redelivered duplicate keeps its first time). With ``acked``, also fills it with
    event_id -> the time the broker acknowledged it.
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    sent: dict[str, float] = {}
    pending: list[asyncio.Future] = []
    try:
        t0 = time.time()
        i, n = 0, len(records)
        while i < n:
            now = time.time()
            due = min(n, int((now - t0) * rate) + 1)
            while i < due:
                p, key, value, event_id = records[i]
                sent.setdefault(event_id, time.time())
                fut = await producer.send(topic, value, key=key, partition=p)
                if acked is not None:
                    fut.add_done_callback(lambda _f, e=event_id: acked.setdefault(e, time.time()))
                pending.append(fut)
                i += 1
            if len(pending) > 5000:
                await asyncio.gather(*pending)
                pending.clear()
            # Sleep until the next record is due (at least a loop turn, so replies get read).
            await asyncio.sleep(max(0.0, t0 + i / rate - time.time()))
        await asyncio.gather(*pending)
        return sent
    finally:
        await producer.stop()


def _produce_paced_sync(bootstrap: str, topic: str, records: list[tuple[int, Key, Value, str]], rate: float) -> dict[str, float]:
    return asyncio.run(produce_paced(bootstrap, topic, records, rate))


async def produce_paced_elsewhere(
    bootstrap: str,
    topic: str,
    records: list[tuple[int, Key, Value, str]],
    rate: float,
) -> dict[str, float]:
    """produce_paced in a process of its own, so the producer's CPU does not delay the
    caller's consumer (and vice versa) inside one interpreter: on a small machine that alone
    adds hundreds of milliseconds to the measured latency. Same result (wall-clock times)."""
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return await asyncio.get_running_loop().run_in_executor(pool, _produce_paced_sync, bootstrap, topic, records, rate)


def fetch_order(data: Input, run: int = 250) -> Iterator[tuple[int, int, Key, Value]]:
    """(partition, offset, key, value) of every record, interleaved as a consumer's fetches hand
    them out: a run of records from each partition in turn (the micro-benchmarks' order)."""
    cursors = [0] * len(data.partitions)
    while any(c < len(part) for c, part in zip(cursors, data.partitions, strict=True)):
        for i, part in enumerate(data.partitions):
            end = min(cursors[i] + run, len(part))
            for off in range(cursors[i], end):
                k, v = part[off]
                yield i, off, k, v
            cursors[i] = end


def micro_args(description: str) -> argparse.ArgumentParser:
    """The options the micro-benchmarks share (input size, batch size, repetitions)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--customers", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--repeat", type=int, default=5)
    return p
