"""Whether the input's producers place records where journey's own records go: Kafka's default
partitioner (murmur2 of the key, the Java client's and aiokafka's). A producer on librdkafka's
default (crc32) puts a customer's events on another partition than the records journey writes for
that customer (re-keyed touchpoints, identity requests), which splits its state. One record per
fetched chunk is checked: the cost is one cached hash per chunk, not per record."""

from __future__ import annotations

import logging
import time

from aiokafka.partitioner import murmur2

log = logging.getLogger(__name__)

#: Seconds between two warnings (the metric counts every miss).
WARN_EVERY_S = 600.0


class RoutingCheck:
    def __init__(self, partitions: int, topic: str) -> None:
        self.partitions = partitions
        self.topic = topic
        #: Chunks whose sampled record sits on another partition than murmur2 puts its key.
        self.misplaced = 0
        self._last_warning: float | None = None

    def expected(self, key: bytes) -> int:
        return (murmur2(key) & 0x7FFFFFFF) % self.partitions

    def sample(self, partition: int, key: bytes | None) -> bool:
        """Check one record's place; False (counted, warned about now and then) when misplaced."""
        if key is None:
            return True
        expected = self.expected(key)
        if expected == partition:
            return True
        self.misplaced += 1
        now = time.monotonic()
        if self._last_warning is None or now - self._last_warning >= WARN_EVERY_S:
            self._last_warning = now
            log.warning(
                "%s[%d] holds records whose key Kafka's default partitioner (murmur2) puts on partition %d of %d: "
                "their producer partitions another way (librdkafka's default is crc32: set partitioner=murmur2_random), "
                "or the topic does not have JOURNEY_PARTITIONS=%d partitions. journey writes its own records for a "
                "customer with murmur2, so such a customer's journey is split over two partitions and identity links "
                "miss their anonymous ids. Fix the producers' partitioner (journey_misplaced_input_chunks_total counts "
                "these)", self.topic, partition, expected, self.partitions, self.partitions,
            )
        return False
