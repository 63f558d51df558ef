"""Small produce/consume helpers for integration tests (plain aiokafka against the test broker)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition


async def produce(bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes]]) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in records]
        await asyncio.gather(*futures)
        return len(futures)
    finally:
        await producer.stop()


def touchpoint_record(event: dict[str, Any]) -> tuple[bytes, bytes]:
    key = event.get("customer_id") or event.get("anonymous_id")
    return key.encode(), orjson.dumps(event)


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """The topic's partitions, once the consumer's metadata knows them (up to 10 s)."""
    partitions = consumer.partitions_for_topic(topic)
    deadline = time.monotonic() + 10
    while not partitions and time.monotonic() < deadline:
        await consumer.force_metadata_update()  # type: ignore[attr-defined]
        partitions = consumer.partitions_for_topic(topic)
        await asyncio.sleep(0.2)
    return [TopicPartition(topic, p) for p in sorted(partitions or [])]


async def read_all(
    bootstrap: str,
    topic: str,
    *,
    until: Callable[[list[Any]], bool],
    timeout_s: float = 60.0,
    decode: Callable[[bytes], Any] = orjson.loads,
    timestamps: bool = False,
) -> list[Any]:
    """Read ``topic`` from the beginning until ``until(messages)`` holds or the time runs out.

    Returns the decoded values (with ``_key`` added for dict values, and ``_ts_ms``, the record's
    Kafka timestamp, when ``timestamps``). Reads with fetches, whose highwater is right on every
    broker (the test broker's ListOffsets is not).
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = await _partitions(consumer, topic)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=300, max_records=5000)
            for msgs in batch.values():
                for m in msgs:
                    value = decode(m.value)
                    if isinstance(value, dict):
                        value["_key"] = m.key.decode() if m.key is not None else None
                        if timestamps:
                            value["_ts_ms"] = m.timestamp
                    out.append(value)
            if until(out):
                return out
        return out
    finally:
        await consumer.stop()


async def committed_and_ends(bootstrap: str, group: str, topic: str) -> tuple[dict[int, int | None], dict[int, int]]:
    """The consumer group's committed offset and the true log end of every partition of ``topic``.

    The commits are read first: a worker commits a batch only once what it appended (to this
    topic too: re-keyed records, link and merge requests) is acknowledged, so the ends read after
    them include all of that, and commits equal to the ends mean nothing is left to process.
    (Read the other way round, a batch committing in between could hide the record it appended
    to a partition whose end was already read.)"""
    from journey.kafka.offsets import true_highwaters

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = await _partitions(consumer, topic)
        committed = {tp.partition: await consumer.committed(tp) for tp in tps}
        # ListOffsets is wrong on the test broker: the highwater of a fetch is right on every broker.
        ends = await true_highwaters(consumer._client, await consumer.end_offsets(tps))
        return committed, {tp.partition: ends[tp] for tp in tps}
    finally:
        await consumer.stop()


async def wait_committed(
    bootstrap: str, group: str, topic: str, *, timeout_s: float = 90.0, check: Callable[[], None] = lambda: None
) -> dict[int, int]:
    """Wait until ``group`` has committed the end of every partition of ``topic``: everything
    produced so far has been processed, and a new owner of any partition starts after it.

    ``check`` runs on every round (e.g. to fail early when a worker died). Returns the ends.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        check()
        committed, ends = await committed_and_ends(bootstrap, group, topic)
        if ends and all(committed[p] == ends[p] for p in ends):
            return ends
        if time.monotonic() > deadline:
            raise AssertionError(f"group {group} has committed {committed} of {topic} after {timeout_s:.0f}s; the log ends at {ends}")
        await asyncio.sleep(0.5)


async def read_to_end(
    bootstrap: str, topic: str, *, timeout_s: float = 60.0, decode: Callable[[bytes], Any] = orjson.loads, timestamps: bool = False
) -> list[Any]:
    """Every record of ``topic`` up to its current (true) end: nothing left out, whatever its size.

    Call it once the producers are settled (e.g. after :func:`wait_committed` on the input of the
    worker that writes ``topic``) to see all there is -- and so that an extra would show.
    """
    from journey.kafka.offsets import true_highwaters

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = await _partitions(consumer, topic)
        ends = await true_highwaters(consumer._client, await consumer.end_offsets(tps))
    finally:
        await consumer.stop()
    total = sum(ends.values())
    out = await read_all(bootstrap, topic, until=lambda m: len(m) >= total, timeout_s=timeout_s, decode=decode, timestamps=timestamps)
    assert len(out) >= total, f"read {len(out)} of the {total} records of {topic} in {timeout_s:.0f}s"
    return out


async def listoffsets_is_wrong(bootstrap: str) -> bool:
    """Whether the broker answers ListOffsets(latest) with less than the log end, as tansu does
    (the base offset of the last record batch + 1). Probed on a fresh topic: two batches, 3 then 2
    records, compared with the highwater of a fetch."""
    import uuid

    from journey.kafka.admin import TopicSpec, ensure_topics
    from journey.kafka.offsets import true_highwaters

    topic = f"listoffsets-probe-{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, [TopicSpec(topic, 1, 1, 3600 * 1000)])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for n in (3, 2):
            batch = producer.create_batch()
            for i in range(n):
                assert batch.append(key=None, value=f"r{i}".encode(), timestamp=None) is not None
            await (await producer.send_batch(batch, topic, partition=0))
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        hints = await consumer.end_offsets([tp])
        ends = await true_highwaters(consumer._client, hints)
    finally:
        await consumer.stop()
    assert ends[tp] == 5, ends
    return bool(hints[tp] != ends[tp])


async def unreported_by_listoffsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Per partition of ``topic``: how many records lie past the end ListOffsets reports (0 on a
    correct broker; on the embedded one, the size of the last record batch less one)."""
    from journey.kafka.offsets import true_highwaters

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = await _partitions(consumer, topic)
        hints = await consumer.end_offsets(tps)
        ends = await true_highwaters(consumer._client, hints)
        return {tp.partition: ends[tp] - hints[tp] for tp in tps}
    finally:
        await consumer.stop()
