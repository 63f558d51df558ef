"""What bounds a worker's resident memory, from its settings: the figure a container's memory
limit must leave room for (README, "Memory and backlogs"). bench/burst.py and tests/integration/test_load.py
check a worker's peak RSS against it.

Every part is bounded by a setting or a constant, except two that grow with the customers of the
worker's partitions (so the bound takes their number): the churn timer's due index, one small
entry per customer, and RocksDB's index and filter blocks, kept in memory for every file.
"""

from __future__ import annotations

from dataclasses import dataclass

from journey.settings import Settings
from journey.worker.app import FETCH_PARTITION_BYTES, ROCKSDB_WRITE_BUFFERS
from journey.worker.ingest import BUFFER_BATCHES, STAGES_IN_FLIGHT
from journey.worker.store import StateStore

MiB = 2**20

#: The interpreter with Faust, aiokafka, rocksdict, prometheus_client, the journey definition and
#: the churn model loaded: a started worker with nothing processed yet (measured: 84 MiB), with
#: half as much again for what processing adds (modules loaded lazily, allocator fragmentation).
RUNTIME_BYTES = 128 * MiB
#: One customer state kept decoded in the cache: 3.4 KiB on average measured (tracemalloc) for
#: the generator's mix at ~10 events per customer (its memories of event ids, orders, aliases and
#: transitions are bounded by their windows), rounded up.
STATE_BYTES = 4 * 1024
#: One input record in memory (aiokafka's ConsumerRecord, journey's Record, key and value bytes,
#: the decoded touchpoint and its outputs while its batch is in flight): an allowance, not measured
#: apart (the generated touchpoints' values are 162 bytes on average, 244 at most).
RECORD_BYTES = 4 * 1024
#: Per customer owned: an entry of the churn timer's due index (due time, partition, heap entry:
#: 164 bytes measured, plus its key when the index holds the only copy) and RocksDB's index and
#: filter blocks of the customer's state (about 1% of its ~0.7 KiB and 3 bits), rounded up.
CUSTOMER_BYTES = 512
#: A fetch answer in memory per byte fetched: the raw answer (1) and its records decoded into
#: aiokafka ConsumerRecords with their key and value bytes (2.4 per raw byte measured for the
#: generated touchpoints), rounded up. The batch ingest hands a whole fetch on before it applies
#: back-pressure, so that much may sit in its buffer besides the batches counted in ``records``.
FETCH_FACTOR = 4
#: A partition database's memory besides its memtables, block cache and the per-customer index
#: and filter blocks (table readers, arenas, its own structures).
ROCKSDB_OVERHEAD_BYTES = 8 * MiB


@dataclass(frozen=True)
class MemoryBound:
    runtime: int
    state_cache: int
    records: int
    fetch_buffers: int
    rocksdb: int
    per_customer: int

    @property
    def total(self) -> int:
        return self.runtime + self.state_cache + self.records + self.fetch_buffers + self.rocksdb + self.per_customer

    def describe(self) -> str:
        parts = [(k, getattr(self, k)) for k in ("runtime", "state_cache", "records", "fetch_buffers", "rocksdb", "per_customer")]
        return " + ".join(f"{name} {value / MiB:,.0f}" for name, value in parts) + " MiB"


def rocksdb_partition_bytes(settings: Settings) -> int:
    """The most one partition's RocksDB database holds in memory: its memtables and its block cache."""
    memtables = settings.rocksdb_write_buffer_mb * MiB * ROCKSDB_WRITE_BUFFERS
    return memtables + settings.rocksdb_block_cache_mb * MiB + ROCKSDB_OVERHEAD_BYTES


def memory_bound(settings: Settings, *, partitions: int, customers: int) -> MemoryBound:
    """The most resident memory a worker with ``settings`` owning ``partitions`` input partitions
    (of their ``customers``) should reach, by part."""
    cached = max(settings.state_cache, StateStore.min_cache_size(settings.batch_size, settings.churn_max_per_tick))
    # Buffered ahead, the batch being processed, the stages in flight (their states are pinned
    # besides the cache: at most the cache's floor again).
    in_flight = settings.batch_size * (BUFFER_BATCHES + 1 + STAGES_IN_FLIGHT)
    return MemoryBound(
        runtime=RUNTIME_BYTES,
        state_cache=(cached + StateStore.min_cache_size(settings.batch_size, settings.churn_max_per_tick)) * STATE_BYTES,
        records=in_flight * RECORD_BYTES,
        # one fetch answer per partition (max_partition_fetch_bytes), raw and decoded
        fetch_buffers=partitions * FETCH_PARTITION_BYTES * FETCH_FACTOR,
        rocksdb=partitions * rocksdb_partition_bytes(settings),
        per_customer=customers * CUSTOMER_BYTES,
    )
