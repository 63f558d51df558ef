"""BatchSender's partitioning must agree with Kafka's default partitioner, cache or no cache."""

import asyncio
import random

import pytest
from aiokafka.partitioner import DefaultPartitioner

from journey.worker import produce
from journey.worker.produce import BatchSender


def test_partition_by_key_matches_the_default_partitioner(monkeypatch):
    monkeypatch.setattr(produce, "HASH_CACHE_SIZE", 50)  # exercise the cache's reset too
    sender = BatchSender(faust_producer=None)
    reference = DefaultPartitioner()
    rng = random.Random(3)
    for n_parts in (1, 3, 8, 12):
        parts = list(range(n_parts))
        keys = [f"customer-{rng.randrange(200)}".encode() for _ in range(600)]
        keys += [rng.randbytes(rng.randrange(0, 40)) for _ in range(100)]
        for key in keys:
            assert sender.partition_of(key, parts) == reference(key, parts, parts), key
    assert len(sender._hashes) <= 50


def test_a_record_without_a_key_goes_to_some_partition():
    sender = BatchSender(faust_producer=None)
    assert {sender.partition_of(None, [0, 1, 2]) for _ in range(200)} == {0, 1, 2}


class _Builder:
    def __init__(self) -> None:
        self.items: list[tuple[bytes | None, bytes | None]] = []

    def append(self, key, value, timestamp, headers):  # noqa: ANN001
        assert isinstance(headers, list), "aiokafka takes headers as a list"
        self.items.append((key, value))
        return object()

    def record_count(self) -> int:
        return len(self.items)


class _SlowProducer:
    """Takes a partition's next batch only once the previous one is acknowledged (as aiokafka's
    accumulator does while a request is in flight)."""

    def __init__(self) -> None:
        self.handed: list[tuple[str, int, list]] = []
        self.acks: dict[tuple[str, int], asyncio.Future] = {}
        self.fail_next = False

    def _ensure_producer(self):
        return self

    async def partitions_for(self, topic):
        return {0, 1}

    def create_batch(self):
        return _Builder()

    async def send_batch(self, batch, topic, partition):
        previous = self.acks.get((topic, partition))
        if previous is not None:
            await asyncio.shield(previous)
        if self.fail_next:
            raise RuntimeError("producer closed")
        self.handed.append((topic, partition, batch.items))
        ack = self.acks[(topic, partition)] = asyncio.get_running_loop().create_future()
        return ack


async def test_send_returns_before_the_previous_batch_is_acknowledged_and_keeps_the_order():
    producer = _SlowProducer()
    sender = BatchSender(producer)
    first = await sender.send([("t", 0, b"a", b"1", None), ("t", 0, b"b", b"2", None)])
    second = await asyncio.wait_for(sender.send([("t", 0, b"c", b"3", None)]), timeout=1)  # does not wait for first's ack
    await asyncio.sleep(0)
    assert [items for _, _, items in producer.handed] == [[(b"a", b"1"), (b"b", b"2")]]
    producer.acks[("t", 0)].set_result("meta-1")
    assert await first[0].future == "meta-1"
    for _ in range(5):
        await asyncio.sleep(0)
    assert [items for _, _, items in producer.handed][1] == [(b"c", b"3")]
    producer.acks[("t", 0)].set_exception(RuntimeError("not acknowledged"))
    with pytest.raises(RuntimeError, match="not acknowledged"):
        await second[0].future


async def test_a_batch_the_producer_refuses_fails_its_future():
    producer = _SlowProducer()
    producer.fail_next = True
    sent = await BatchSender(producer).send([("t", 1, b"k", b"v", None)])
    with pytest.raises(RuntimeError, match="producer closed"):
        await asyncio.wait_for(sent[0].future, timeout=1)
