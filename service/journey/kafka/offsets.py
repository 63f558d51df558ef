"""True log-end offsets (highwaters), read from fetch responses.

The embedded tansu broker answers ListOffsets(latest) -- what ``AIOKafkaConsumer.end_offsets()``
asks -- with "base offset of the last record batch + 1" rather than the log end offset. A Fetch
response's ``high_watermark`` is right on tansu and on Apache Kafka alike. Details: docs/kafka.md.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Mapping

from aiokafka import TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError, OffsetOutOfRangeError, for_code
from aiokafka.protocol.fetch import FetchRequest

from journey.errors import BrokerError

#: Per-partition byte limit of the probe fetch: we need the highwater, not the data.
#: (Brokers still return at least one whole batch when the first one is bigger.)
_PROBE_PARTITION_BYTES = 1
_READ_UNCOMMITTED = 0
_PROBE_MAX_WAIT_MS = 10


class HighwaterError(BrokerError):
    """The highwater of some partitions could not be read in time."""


async def true_highwaters(
    client: AIOKafkaClient,
    hints: Mapping[TopicPartition, int],
    *,
    timeout_s: float = 30.0,
    retry_backoff_s: float = 0.1,
) -> dict[TopicPartition, int]:
    """The log-end offset of each partition in ``hints``, read from Fetch responses.

    ``hints`` maps each partition to a lower bound of its end offset -- what
    ``consumer.end_offsets()`` returned. ``client`` must be started
    (``await client.bootstrap()``).
    """
    # Keys go back out as the caller gave them (Faust passes its own TP tuples).
    keys = {TopicPartition(tp.topic, tp.partition): tp for tp in hints}
    pending = {TopicPartition(tp.topic, tp.partition): max(int(off) - 1, 0) for tp, off in hints.items()}
    result: dict[TopicPartition, int] = {}
    deadline = time.monotonic() + timeout_s
    last_error: str = ""
    while pending:
        by_node, unknown_leader = _group_by_leader(client, pending)
        if unknown_leader:
            last_error = f"no known leader for {sorted(map(str, unknown_leader))}"
            for topic in {tp.topic for tp in unknown_leader}:
                await client.add_topic(topic)
            await client.force_metadata_update()
        outcomes = await asyncio.gather(
            *(_fetch_highwaters(client, node, offsets) for node, offsets in by_node.items()),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, (KafkaError, OSError, asyncio.TimeoutError)):
                    raise outcome
                last_error = repr(outcome)
                continue
            found, retry = outcome
            for tp, highwater in found.items():
                result[tp] = highwater
                pending.pop(tp, None)
            for tp, (offset, error) in retry.items():
                pending[tp] = offset
                last_error = f"{tp}: {error}"
            if retry:
                # Leadership may have moved (NotLeaderForPartition & co.): refresh before retrying.
                await client.force_metadata_update()
        if not pending:
            break
        if time.monotonic() > deadline:
            raise HighwaterError(
                f"could not read the highwater of {len(pending)} partition(s) "
                f"({', '.join(sorted(map(str, pending))[:5])}) within {timeout_s:.0f}s; "
                f"last error: {last_error or 'none'}. Is the broker reachable and are "
                "the topics' leaders available?"
            )
        await asyncio.sleep(retry_backoff_s)
    return {keys[tp]: highwater for tp, highwater in result.items()}


def _group_by_leader(
    client: AIOKafkaClient, offsets: Mapping[TopicPartition, int]
) -> tuple[dict[int, dict[TopicPartition, int]], list[TopicPartition]]:
    by_node: dict[int, dict[TopicPartition, int]] = defaultdict(dict)
    unknown: list[TopicPartition] = []
    for tp, offset in offsets.items():
        leader = client.cluster.leader_for_partition(tp)
        if leader is None or leader == -1:
            unknown.append(tp)
        else:
            by_node[leader][tp] = offset
    return dict(by_node), unknown


async def _fetch_highwaters(
    client: AIOKafkaClient, node_id: int, offsets: Mapping[TopicPartition, int]
) -> tuple[dict[TopicPartition, int], dict[TopicPartition, tuple[int, str]]]:
    """One Fetch to ``node_id``: highwaters found, and partitions to retry (at which offset, why)."""
    by_topic: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for tp, offset in offsets.items():
        by_topic[tp.topic].append((tp.partition, offset, _PROBE_PARTITION_BYTES))
    request = FetchRequest(
        # min_bytes=0: answer without waiting for new data. max_wait must still be
        # > 0: tansu answers a max_wait=0 fetch with no partitions at all.
        _PROBE_MAX_WAIT_MS,
        0,  # min_bytes
        _PROBE_PARTITION_BYTES * max(len(offsets), 1),
        _READ_UNCOMMITTED,
        list(by_topic.items()),
    )
    response = await client.send(node_id, request)
    found: dict[TopicPartition, int] = {}
    retry: dict[TopicPartition, tuple[int, str]] = {}
    for topic, partitions in response.topics:
        for partition, error_code, highwater, *_ in partitions:
            tp = TopicPartition(topic, partition)
            if tp not in offsets:
                continue
            error = for_code(error_code)
            if error_code == 0 and highwater >= 0:
                found[tp] = highwater
            elif error is OffsetOutOfRangeError:
                # hint - 1 fell below the log start (retention): any in-range
                # position answers just as well; the hint itself is the safest.
                retry[tp] = (offsets[tp] + 1, error.__name__)
            else:
                retry[tp] = (offsets[tp], error.__name__)
    for tp, offset in offsets.items():
        if tp not in found and tp not in retry:
            retry[tp] = (offset, "partition missing from fetch response")
    return found, retry
