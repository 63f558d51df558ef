"""worker/routing.py: input on another partition than Kafka's default partitioner gives its key is
counted and explained (a librdkafka producer's crc32 default splits customers), once in a while."""

from __future__ import annotations

import logging
import zlib

import pytest
from aiokafka.partitioner import DefaultPartitioner

from journey.worker.routing import RoutingCheck

PARTITIONS = 8


def test_records_where_murmur2_puts_them_pass_and_others_are_counted_and_explained(caplog: pytest.LogCaptureFixture) -> None:
    check = RoutingCheck(PARTITIONS, "touchpoints")
    default = DefaultPartitioner()
    every = list(range(PARTITIONS))
    keys = [f"c-{i}".encode() for i in range(200)]
    assert all(check.sample(default(k, every, every), k) for k in keys)  # aiokafka's (and Java's) default
    assert check.sample(3, None) and check.misplaced == 0  # an unkeyed record goes anywhere
    # librdkafka's default partitioner hashes with crc32: most keys land elsewhere.
    crc = [k for k in keys if zlib.crc32(k) % PARTITIONS != default(k, every, every)]
    assert len(crc) > 100
    with caplog.at_level(logging.WARNING, logger="journey.worker.routing"):
        assert not any([check.sample(zlib.crc32(k) % PARTITIONS, k) for k in crc])
    assert check.misplaced == len(crc)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, "one warning per period, however many chunks"
    text = warnings[0].getMessage()
    assert "partitioner=murmur2_random" in text and "JOURNEY_PARTITIONS" in text and "c-" not in text  # no key in logs
