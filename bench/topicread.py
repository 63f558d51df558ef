"""Reading topics with a plain aiokafka consumer: true highwaters, whole topics, and the ceiling.

Every "to the end" here means the fetch highwater (journey.kafka.offsets.true_highwaters): the
embedded broker's ListOffsets (``end_offsets()``) stops one record batch short.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.client import AIOKafkaClient

from journey.kafka.offsets import true_highwaters


class Highwaters:
    """Polls the log-end offsets of some topics through one client."""

    def __init__(self, bootstrap: str) -> None:
        self.client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
        self._hints: dict[TopicPartition, int] = {}

    async def start(self) -> Highwaters:
        await self.client.bootstrap()
        return self

    async def close(self) -> None:
        await self.client.close()

    async def of(self, topic: str, partitions: int) -> dict[TopicPartition, int]:
        hints = {tp: self._hints.get(tp, 0) for tp in (TopicPartition(topic, p) for p in range(partitions))}
        found = await true_highwaters(self.client, hints)
        self._hints.update(found)
        return found

    async def total(self, topic: str, partitions: int) -> int:
        return sum((await self.of(topic, partitions)).values())


async def _assigned_consumer(bootstrap: str, topic: str, partitions: int, **config: object) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **config)  # type: ignore[arg-type]
    await consumer.start()
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    return consumer, tps


async def log_ends(bootstrap: str, topic: str, partitions: int) -> dict:
    """Each partition's true end offset (by fetch highwater; the test broker's ListOffsets is off)."""
    hw = Highwaters(bootstrap)
    await hw.start()
    try:
        return await hw.of(topic, partitions)
    finally:
        await hw.close()


async def read_topic(
    bootstrap: str, topic: str, partitions: int, on_record: Callable[[bytes | None, bytes | None], None],
    *, timeout_s: float = 600.0,
) -> int:
    """Hand every record of ``topic`` (as it is now) to ``on_record(key, value)``; return the count."""
    ends = await log_ends(bootstrap, topic, partitions)
    consumer, tps = await _assigned_consumer(bootstrap, topic, partitions, fetch_max_wait_ms=50)
    n = 0
    deadline = time.monotonic() + timeout_s
    try:
        todo = {tp for tp in tps if ends[tp] > 0}
        while todo:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}: {len(todo)} partitions not read to their end within {timeout_s:.0f}s")
            batch = await consumer.getmany(*todo, timeout_ms=500)
            for msgs in batch.values():
                for m in msgs:
                    on_record(m.key, m.value)
                n += len(msgs)
            for tp in list(todo):
                if await consumer.position(tp) >= ends[tp]:
                    todo.discard(tp)
        return n
    finally:
        await consumer.stop()


@dataclass
class Ceiling:
    events: int
    #: Records after the first fetch, over the time from the first fetch to the last record.
    events_per_s: float
    seconds: float


async def ceiling(
    bootstrap: str, topic: str, partitions: int, expected: int, loads: Callable[[bytes], object] = orjson.loads,
) -> Ceiling:
    """A plain consumer (no group, all partitions assigned, from the beginning) reading and
    decoding every record with ``loads``. Timed like the worker: from the end of the first fetch
    that returned records (those records not counted) to the last record decoded."""
    ends = await log_ends(bootstrap, topic, partitions)
    if sum(ends.values()) != expected:
        raise RuntimeError(f"{topic} holds {sum(ends.values())} records, expected {expected}: the input was not fully produced")
    consumer, tps = await _assigned_consumer(bootstrap, topic, partitions)
    try:
        n = 0
        first_n = 0
        t_first = t_last = 0.0
        todo = {tp for tp in tps if ends[tp] > 0}
        while todo:
            batch = await consumer.getmany(timeout_ms=1000)
            got = 0
            for msgs in batch.values():
                for m in msgs:
                    loads(m.value)
                got += len(msgs)
            if got:
                n += got
                t_last = time.perf_counter()
                if not first_n:
                    first_n, t_first = got, t_last
            for tp in list(todo):
                if consumer.highwater(tp) is not None and await consumer.position(tp) >= ends[tp]:
                    todo.discard(tp)
        seconds = t_last - t_first
        rate = (n - first_n) / seconds if seconds > 0 else float("nan")
        return Ceiling(n, rate, seconds)
    finally:
        await consumer.stop()


async def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets for ``topic`` (partitions without a commit: -1)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        offsets = await admin.list_consumer_group_offsets(group, partitions=tps)
        return {tp.partition: (meta.offset if meta is not None else -1) for tp, meta in offsets.items()}
    finally:
        await admin.close()


async def watch(
    bootstrap: str, topic: str, partitions: int, on_record: Callable[[float, bytes | None, bytes | None], None],
    stop: asyncio.Event, *, fetch_wait_ms: int = 5,
) -> None:
    """Follow ``topic`` from the beginning, calling ``on_record(arrival_time, key, value)``, until ``stop``.

    A short fetch wait: the embedded broker does not answer a waiting fetch when data arrives,
    only when the wait ends, so the wait bounds how late this watcher sees a record.
    """
    consumer, _ = await _assigned_consumer(bootstrap, topic, partitions, fetch_max_wait_ms=fetch_wait_ms)
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100)
            now = time.time()
            for msgs in batch.values():
                for m in msgs:
                    on_record(now, m.key, m.value)
    finally:
        await consumer.stop()
