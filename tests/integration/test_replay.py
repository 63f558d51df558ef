"""journey replay's publisher against the embedded broker: everything arrives, in order, paced."""

from __future__ import annotations

import asyncio
import gzip
import time
import uuid
from collections import defaultdict
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from journey.kafka.admin import TopicSpec, ensure_topics
from journey.sources.jsonl import key_for
from journey.sources.replay import ReplayError, publish, records_for_format

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "cdnow" / "CDNOW_sample.txt"
HOUR_MS = 3600 * 1000
PARTITIONS = 3


async def _new_topic(broker: str) -> str:
    topic = f"replay-{uuid.uuid4().hex[:8]}"
    await ensure_topics(broker, [TopicSpec(topic, PARTITIONS, 1, HOUR_MS)])
    return topic


async def _consume(broker: str, topic: str, expected: int, timeout_s: float = 30.0) -> list[tuple[bytes | None, bytes]]:
    """(key, value) of the first ``expected`` records, partition by partition in offset order."""
    consumer = AIOKafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False)
    await consumer.start()
    got: dict[int, list[tuple[bytes | None, bytes]]] = defaultdict(list)
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout_s
        while sum(map(len, got.values())) < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for tp, messages in batches.items():
                got[tp.partition].extend((m.key, m.value) for m in messages)
    finally:
        await consumer.stop()
    return [kv for p in sorted(got) for kv in got[p]]


async def test_replay_delivers_every_converted_record_in_per_customer_order(broker: str) -> None:
    topic = await _new_topic(broker)
    records, total = records_for_format(SAMPLE, "cdnow")
    records = list(records)

    sent = await publish(broker, topic, records, speed=None, progress=False, total=total)

    assert sent == total == len(records)
    received = await _consume(broker, topic, sent)
    assert len(received) == sent
    # Kafka keeps order per partition, and a customer's records share one partition.
    def per_key(pairs: list[tuple[bytes | None, bytes]]) -> dict[bytes | None, list[bytes]]:
        grouped: dict[bytes | None, list[bytes]] = defaultdict(list)
        for key, value in pairs:
            grouped[key].append(value)
        return dict(grouped)

    assert per_key(received) == per_key([(k, v) for k, v, _ in records])


async def test_replay_sends_jsonl_lines_byte_for_byte(broker: str, tmp_path: Path) -> None:
    topic = await _new_topic(broker)
    lines = [
        b'{"event_id":"j1","customer_id":"c1","type":"page_view","timestamp":"2024-01-01T00:00:00+00:00"}',
        b'{"event_id": "j2", "anonymous_id": "a1", "type": "ad_click", "timestamp": "2024-01-01T00:00:01Z"}',
        b"{broken",
    ]
    path = tmp_path / "touchpoints.jsonl.gz"
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    records, total = records_for_format(path, "jsonl")

    sent = await publish(broker, topic, records, speed=None, progress=False, total=total)

    assert sent == len(lines)
    received = await _consume(broker, topic, sent)
    assert sorted(received, key=lambda kv: kv[1]) == sorted(((key_for(line), line) for line in lines), key=lambda kv: kv[1])


async def test_replay_paces_event_time_by_speed(broker: str) -> None:
    topic = await _new_topic(broker)
    day = 86_400.0
    # Three records a day apart at 5 days per second: the last is due 0.4 s after the first.
    records = [(b"c", f"r{i}".encode(), i * day) for i in range(3)]
    started = time.monotonic()
    sent = await publish(broker, topic, records, speed=5 * day, progress=False, total=3)
    assert sent == 3
    assert time.monotonic() - started >= 0.4 * 0.95


async def test_replay_reports_an_unreachable_broker() -> None:
    with pytest.raises(ReplayError, match="cannot reach Kafka at 127.0.0.1:1"):
        await asyncio.wait_for(
            publish("127.0.0.1:1", "touchpoints", [], speed=None, progress=False, total=0), timeout=30
        )
