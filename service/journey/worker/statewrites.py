"""A batch's customer states into a RocksDB-backed table: each changed customer once, encoded
once, into its partition's database (one WriteBatch) and its changelog (one produce batch per
partition).

``table[key] = state`` costs two encodings, a RocksDB put, a changelog send through Faust's
producer buffer (a coroutine per record) and a RocksDB put of the changelog offset per record.
This writes the same bytes to the same places, and records the changelog offset once per
produce batch when the broker has acknowledged it (what Faust's ``_on_changelog_sent`` does,
so a restarted worker replays only the changelog's tail). The in-memory store keeps the table's
own path (agents.write_states).

Reads: decoding a state costs more than applying an event to it, so the states this worker
last read or wrote stay decoded in memory (:class:`StateCache`, bounded, least recently written
first out). The cache holds what the store holds for partitions we own, or will hold once the
pending stages are written: every write goes through it, and it is emptied whenever partitions may change hands (before a
rebalance revokes them, see ingest.BatchConsumer.wait_empty), so a recovery that rewrites the
store from the changelog is never hidden by an old entry.

Ordering: a customer's changelog records must reach the broker in the order of the store writes
(recovery keeps the last one). Every write of the table while the batch ingest runs -- its own
batches and the churn timer -- is a :meth:`StateWrites.stage`; stages are written one after
another in the order they were staged, under one lock, after Faust's producer buffer (earlier
``table[key] = ...`` writes) has been flushed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any, Callable, Iterable, Sequence

import rocksdict
from faust.types import TP

from journey.core.state import CustomerState
from journey.worker.produce import BatchSender, Sent

log = logging.getLogger(__name__)


def uses_rocksdb(table: Any) -> bool:
    """Whether the table's store is Faust's RocksDB store on rocksdict (the only one written directly)."""
    from faust.stores.rocksdb import Store as RocksDBStore

    return isinstance(table.data, RocksDBStore) and bool(getattr(table.data, "use_rocksdict", False))


class StateCache:
    """Decoded states by customer key, at most ``size`` of them (0: no cache)."""

    __slots__ = ("size", "_states", "hits", "misses")

    def __init__(self, size: int) -> None:
        self.size = size
        self._states: OrderedDict[str, CustomerState] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> CustomerState | None:
        return self._states.get(key)

    def put(self, key: str, state: CustomerState) -> None:
        states = self._states
        if key in states:
            states.move_to_end(key)
        states[key] = state
        if len(states) > self.size:
            states.popitem(last=False)

    def clear(self) -> None:
        self._states.clear()

    def __len__(self) -> int:
        return len(self._states)


class StateWrites:
    def __init__(self, app: Any, table: Any, sender: BatchSender, cache_size: int = 0) -> None:
        self.app = app
        self.table = table
        self.sender = sender
        self.topic = table.changelog_topic.get_topic_name()
        self.cache = StateCache(cache_size)
        self._lock = asyncio.Lock()
        #: The last stage staged (each stage waits for the one before).
        self._tail: "asyncio.Future[list[Sent]] | None" = None

    def read(self, key: str, partition: int) -> CustomerState | None:
        """A customer's state: the cached object, or decoded from their partition's database.

        The caller may change it in place only while it holds JourneyApp.state_lock and must
        then write it (or exit): the cache hands the same object to the next reader."""
        cache = self.cache
        state = cache.get(key)
        if state is not None:
            cache.hits += 1
            return state
        cache.misses += 1
        raw = self.table.data._db_for_partition(partition).get(key.encode())
        if raw is None:
            return None
        state = CustomerState.from_wire(raw)
        if cache.size:
            cache.put(key, state)
        return state

    @staticmethod
    def min_cache_size(batch_size: int, timer_batch: int) -> int:
        """The smallest cache that holds every state of the stages that can be pending at once:
        the batch being written, the next one (staged, waiting for its outputs) and a churn tick."""
        return 3 * batch_size + timer_batch

    def forget(self) -> None:
        """Empty the cache (partitions may be about to change hands)."""
        self.cache.clear()

    def stage(
        self,
        states: Iterable[tuple[str, int, CustomerState]],
        *,
        after: "Sequence[asyncio.Future[Any]]" = (),
        on_written: Callable[[], None] | None = None,
    ) -> "asyncio.Future[list[Sent]]":
        """Encode (key, partition, state) now and write the bytes once ``after`` (the outputs
        that record these states) are acknowledged: to the store and the changelog, after every
        earlier stage. Returns a future of the changelog batches (their futures resolve when the
        broker has them; the offsets are then recorded). ``on_written`` runs right after the
        store writes.

        Encoding now is what lets the caller go on (a next batch may change the same objects in
        place): the write carries the state exactly as this stage saw it. Every state staged
        stays in the cache until written, so reads never see the store behind (the cache's
        floor, see StateWrites.min_cache_size, is sized for the stages that can be pending).
        An exception (outputs or changelog not acknowledged) surfaces from the future."""
        topic = self.topic
        cache = self.cache
        items: list[tuple[str, int, bytes, bytes]] = []
        for key, partition, state in states:
            items.append((topic, partition, key.encode(), state.to_wire()))
            cache.put(key, state)
        previous = self._tail
        future = asyncio.ensure_future(self._write_after(previous, after, items, on_written))
        self._tail = future
        return future

    async def _write_after(
        self,
        previous: "asyncio.Future[list[Sent]] | None",
        after: "Sequence[asyncio.Future[Any]]",
        items: list[tuple[str, int, bytes, bytes]],
        on_written: Callable[[], None] | None,
    ) -> list[Sent]:
        if previous is not None:
            await previous  # stages write in the order they were staged
        if after:
            await asyncio.gather(*after)
        async with self._lock:
            # Faust's buffer may hold earlier changelog records of the same keys: they go first.
            await self.app.producer.buffer.flush()
            store = self.table.data
            batches: dict[int, Any] = {}
            for _topic, partition, kb, vb in items:
                wb = batches.get(partition)
                if wb is None:
                    wb = batches[partition] = rocksdict.WriteBatch(raw_mode=True)
                wb.put(kb, vb)
            for partition, wb in batches.items():
                store._db_for_partition(partition).write(wb)
            if on_written is not None:
                on_written()
            sent = await self.sender.send(items)
        for s in sent:
            s.future.add_done_callback(self._persisted(s))
        return sent

    async def idle(self) -> None:
        """Wait until every stage so far is written (errors are the stages' owners' to report)."""
        tail = self._tail
        if tail is not None:
            await asyncio.wait([tail])

    def _persisted(self, s: Sent) -> Any:
        store, tp, count = self.table.data, TP(s.topic, s.partition), s.count

        def done(fut: asyncio.Future) -> None:
            if fut.cancelled() or fut.exception() is not None:
                return  # the batch's own await reports it
            store.set_persisted_offset(tp, fut.result().offset + count - 1)

        return done
