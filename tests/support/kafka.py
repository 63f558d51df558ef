"""Small produce/consume helpers for integration tests (plain aiokafka against the test broker)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Iterable

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


async def read_all(
    bootstrap: str,
    topic: str,
    *,
    until: Callable[[list[Any]], bool],
    timeout_s: float = 60.0,
    decode: Callable[[bytes], Any] = orjson.loads,
) -> list[Any]:
    """Read ``topic`` from the beginning until ``until(messages)`` holds or the time runs out.

    Returns the decoded values (with ``_key`` added for dict values). Reads with fetches, whose
    highwater is right on every broker (the test broker's ListOffsets is not).
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        deadline = time.monotonic() + 10
        while not partitions and time.monotonic() < deadline:
            await consumer.force_metadata_update()  # type: ignore[attr-defined]
            partitions = consumer.partitions_for_topic(topic)
            await asyncio.sleep(0.2)
        tps = [TopicPartition(topic, p) for p in sorted(partitions or [])]
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
                    out.append(value)
            if until(out):
                return out
        return out
    finally:
        await consumer.stop()
