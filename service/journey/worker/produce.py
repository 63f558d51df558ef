"""Sending records as produce batches, one per topic-partition, never waiting a round trip.

aiokafka's ``send()`` costs a coroutine, a future and an accumulator lookup per record, and its
batch API (``create_batch``/``send_batch``) waits until the partition's previous batch is sent.
:class:`BatchSender` appends records to a builder (C code), hands each batch over in a task of
its own, chained per partition (the order per partition is the order of the calls), and
partitions by murmur2 of the key as every Kafka client does.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka.partitioner import murmur2

from journey.worker.faust_internals import aiokafka_producer


@dataclass(slots=True)
class Sent:
    """One produce batch handed to the producer: ``future`` resolves to the RecordMetadata of
    its first record (``offset`` + ``count`` - 1 is its last) once the broker has it."""

    topic: str
    partition: int
    count: int
    future: asyncio.Future


#: Record headers: (name, value) pairs.
Headers = tuple[tuple[str, bytes], ...]
#: (topic, partition or None for by-key, key, value, headers or None).
SendRecord = tuple[str, int | None, bytes | None, bytes | None, Headers | None]

#: aiokafka's record builder takes headers as a list (a tuple is refused); never changed.
NO_HEADERS: list[tuple[str, bytes]] = []

#: Keys whose murmur2 hash is remembered (aiokafka's murmur2 is pure Python, ~3 us a key; the
#: same customers come back again and again).
HASH_CACHE_SIZE = 100_000


class BatchSender:
    """Sends records through the app's aiokafka producer (the one Faust flushes before a commit)."""

    def __init__(self, faust_producer: Any) -> None:
        self._faust_producer = faust_producer
        self._partitions: dict[str, list[int]] = {}
        self._hashes: dict[bytes, int] = {}
        #: The last hand-over task per topic-partition (the next one waits for it).
        self._handovers: dict[tuple[str, int], asyncio.Future[None]] = {}

    def partition_of(self, key: bytes | None, partitions: list[int]) -> int:
        """Kafka's default partitioner (murmur2 of the key, as aiokafka's DefaultPartitioner and
        the Java client do), so a record lands where any other producer would put it."""
        if key is None:  # e.g. the dead letter of an unkeyed record: anywhere, as send() would
            return random.choice(partitions)
        h = self._hashes.get(key)
        if h is None:
            if len(self._hashes) >= HASH_CACHE_SIZE:
                self._hashes.clear()
            h = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return partitions[h % len(partitions)]

    async def send(self, records: Iterable[SendRecord]) -> list[Sent]:
        """Send (topic, partition or None for by-key, key, value, headers or None) records; per
        topic-partition in the order given. Returns the produce batches (await their futures for
        the acks)."""
        producer = aiokafka_producer(self._faust_producer)
        groups: dict[tuple[str, int], list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]] = {}
        partition_of = self.partition_of
        for topic, partition, key, value, headers in records:
            if partition is None:
                parts = self._partitions.get(topic)
                if parts is None:
                    parts = self._partitions[topic] = sorted(await producer.partitions_for(topic))
                partition = partition_of(key, parts)
            group = groups.get((topic, partition))
            if group is None:
                group = groups[(topic, partition)] = []
            group.append((key, value, list(headers) if headers else NO_HEADERS))
        sent: list[Sent] = []
        for (topic, partition), items in groups.items():
            batch = producer.create_batch()
            for key, value, header_list in items:
                if batch.append(key=key, value=value, timestamp=None, headers=header_list) is None:  # full
                    sent.append(self._hand_over(producer, batch, topic, partition))
                    batch = producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=None, headers=header_list) is None:
                        raise ValueError(
                            f"a record for {topic}[{partition}] ({len(value or b'')} bytes) does not fit in a produce "
                            "batch; raise the producer's max batch size"
                        )
            sent.append(self._hand_over(producer, batch, topic, partition))
        return sent

    def _hand_over(self, producer: Any, batch: Any, topic: str, partition: int) -> Sent:
        acked: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        tp = (topic, partition)
        previous = self._handovers.get(tp)
        self._handovers[tp] = asyncio.ensure_future(_hand_over(previous, producer, batch, topic, partition, acked))
        return Sent(topic, partition, batch.record_count(), acked)


async def _hand_over(
    previous: asyncio.Future[None] | None, producer: Any, batch: Any, topic: str, partition: int, acked: asyncio.Future[Any]
) -> None:
    """Give ``batch`` to the producer after ``previous`` (never raises: errors go to ``acked``)."""
    try:
        if previous is not None:
            await previous
        delivery = await producer.send_batch(batch, topic, partition=partition)
    except BaseException as exc:  # e.g. the producer closed, or cancelled at shutdown: the owner must see it
        if not acked.done():
            acked.set_exception(exc if isinstance(exc, Exception) else RuntimeError(f"produce hand-over {exc!r}"))
        if not isinstance(exc, Exception):
            raise
        return

    def settle(fut: asyncio.Future[Any]) -> None:
        if acked.done():
            return
        if fut.cancelled():
            acked.cancel()
        elif fut.exception() is not None:
            acked.set_exception(fut.exception())  # type: ignore[arg-type]
        else:
            acked.set_result(fut.result())

    delivery.add_done_callback(settle)
