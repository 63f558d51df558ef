"""BatchSender's partitioning must agree with Kafka's default partitioner, cache or no cache."""

import random

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
