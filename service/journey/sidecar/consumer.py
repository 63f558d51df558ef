"""Reads the aggregates topic into the sidecar's SnapshotBook.

A plain consumer with no group: every sidecar reads every partition from the beginning (the
topic keeps an hour), then follows. Nothing is committed, so any number of sidecars can run.
Where "the end" is at start-up is read with a client of its own (journey.kafka.offsets), so
nothing here touches aiokafka's private names.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.client import AIOKafkaClient

from journey.core.snapshot import Snapshot, SnapshotError
from journey.kafka.broker import probe
from journey.kafka.offsets import true_highwaters
from journey.kafka.security import client_options
from journey.settings import Settings
from journey.sidecar.book import SnapshotBook

log = logging.getLogger(__name__)

PROBE_EVERY_S = 5.0


class SnapshotConsumer:
    def __init__(self, settings: Settings, book: SnapshotBook) -> None:
        self.settings = settings
        self.book = book
        #: Partitions of the touchpoints topic (from the broker; settings until known).
        self.input_partitions: int = settings.partitions
        #: True once everything on the aggregates topic at start-up has been read.
        self.caught_up = False
        self.kafka_ok = False
        self.last_fetch: float | None = None
        self.invalid = 0
        self._start_ends: dict[TopicPartition, int] = {}
        #: TLS/SASL options for the consumer, the highwater client and the probe.
        self._security: dict[str, Any] = client_options(settings)

    async def run(self) -> None:
        """Consume until cancelled; reconnects (with a log line) when Kafka goes away."""
        while True:
            try:
                await self._consume()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep serving the last numbers, retry
                self.kafka_ok = False
                log.warning(
                    "reading %s from %s failed (%s: %s); retrying in 2 s",
                    self.settings.topic_aggregates, self.settings.bootstrap_servers, type(exc).__name__, exc,
                )
                await asyncio.sleep(2.0)

    async def _consume(self) -> None:
        s = self.settings
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap_servers, enable_auto_commit=False, group_id=None,
            auto_offset_reset="earliest", fetch_max_wait_ms=200, **self._security,
        )
        try:
            await consumer.start()  # a failed start still leaves connections to close (stop, below)
            tps = await self._assign(consumer)
            await consumer.seek_to_beginning(*tps)
            hints = await consumer.end_offsets(tps)
            self._start_ends = await self._true_ends(hints)
            self.kafka_ok = True
            await self._check_caught_up(consumer, tps)
            next_probe = time.monotonic() + PROBE_EVERY_S
            while True:
                batches = await consumer.getmany(timeout_ms=500, max_records=2000)
                self.last_fetch = time.time()
                for messages in batches.values():
                    for msg in messages:
                        self._offer(msg.value)
                if not self.caught_up:
                    await self._check_caught_up(consumer, tps)
                if time.monotonic() >= next_probe:
                    next_probe = time.monotonic() + PROBE_EVERY_S
                    await self._probe(consumer)
        finally:
            await consumer.stop()

    async def _true_ends(self, hints: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
        """The partitions' true log-end offsets (end_offsets() is only a lower bound on tansu),
        read through a short-lived client of our own."""
        client = AIOKafkaClient(bootstrap_servers=self.settings.bootstrap_servers, **self._security)
        try:
            await client.bootstrap()
            return await true_highwaters(client, hints)
        finally:
            await client.close()

    async def _assign(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        topic = self.settings.topic_aggregates
        warned = False
        while True:
            await consumer.topics()  # refresh metadata
            parts = consumer.partitions_for_topic(topic)
            if parts:
                self._read_input_partitions(consumer)
                tps = [TopicPartition(topic, p) for p in sorted(parts)]
                consumer.assign(tps)
                return tps
            if not warned:
                log.warning("topic %s does not exist yet; run `journey topics` (waiting for it)", topic)
                warned = True
            await asyncio.sleep(1.0)

    def _read_input_partitions(self, consumer: AIOKafkaConsumer) -> None:
        parts = consumer.partitions_for_topic(self.settings.topic_touchpoints)
        if parts:
            self.input_partitions = len(parts)

    async def _check_caught_up(self, consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> None:
        for tp in tps:
            end = self._start_ends.get(tp, 0)
            if end and await consumer.position(tp) < end:
                return
        self.caught_up = True
        log.info("read the aggregates topic to its end: %d partition snapshot(s) held", len(self.book.latest))

    async def _probe(self, consumer: AIOKafkaConsumer) -> None:
        self.kafka_ok = await probe(self.settings.bootstrap_servers, timeout_s=2.0, client_options=self._security)
        if self.kafka_ok:
            try:
                await consumer.topics()
                self._read_input_partitions(consumer)
            except Exception:  # noqa: BLE001 - metadata refresh is best effort
                pass

    def _offer(self, raw: bytes | None) -> None:
        if raw is None:
            return
        try:
            snapshot = Snapshot.from_bytes(raw)
        except SnapshotError as exc:
            self.invalid += 1
            log.warning("skipping a record on %s: %s", self.settings.topic_aggregates, exc)
            return
        self.book.offer(snapshot)
