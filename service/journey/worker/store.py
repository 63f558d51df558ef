"""The customer states in the table's RocksDB databases, read through a cache of decoded states.

Decoding a state costs more than applying an event to it, so the states this worker last read
or staged stay decoded in memory (bounded, least recently staged out first). The cache holds
what the store holds for the partitions we own, or will hold once the pending stages are
written (worker/batch.py); it is emptied whenever partitions may change hands, so a recovery
that rewrites the store from the changelog is never hidden by an old entry.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import rocksdict
from faust.types import TP

from journey.core.state import DECODE_ERRORS, CustomerState
from journey.errors import CorruptState, NewerEncoding, WorkerError
from journey.worker.faust_internals import partition_db, uses_rocksdict


def decode_stored(raw: bytes, partition: int | None = None) -> CustomerState:
    """A stored state, decoded; CorruptState for one no journey wrote (a newer journey's raises
    NewerEncoding: the worker exits and leaves it to a newer one, see worker/pipeline.py)."""
    try:
        return CustomerState.from_wire(raw)
    except NewerEncoding:
        raise
    except DECODE_ERRORS as exc:  # what a damaged record makes the decoder raise (not MemoryError and the like)
        # No key in the text: it is a customer id, and this ends up in logs and dead letters.
        where = f" of partition {partition}" if partition is not None else ""
        raise CorruptState(
            f"a stored customer state{where} cannot be read ({type(exc).__name__}: {exc}); "
            "journey did not write it so. The record that needed it is dead-lettered and the state left as it "
            "is: restore the changelog, or forget the customer (`journey forget`) to start their journey anew"
        ) from exc


class StateCache:
    """Decoded states by customer key, at most ``size`` of them (0: no cache)."""

    __slots__ = ("_states", "hits", "misses", "size")

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

    def discard(self, key: str) -> None:
        self._states.pop(key, None)

    def clear(self) -> None:
        self._states.clear()

    def __len__(self) -> int:
        return len(self._states)


class StateStore:
    """Reads and writes of one worker's customer states (Faust's RocksDB store on rocksdict)."""

    def __init__(self, table: object, cache_size: int) -> None:
        if not uses_rocksdict(table):
            raise WorkerError(
                "the customer table must use Faust's RocksDB store on rocksdict (store='rocksdb://', "
                "rocksdict installed); journey writes the states of a batch directly into it"
            )
        self.table = table
        self.store = table.data  # type: ignore[attr-defined]
        self.changelog_topic: str = table.changelog_topic.get_topic_name()  # type: ignore[attr-defined]
        self.cache = StateCache(cache_size)
        #: States staged and not yet in the store, by key: [state, stages pending]. Never
        #: evicted (the cache may be, under a slow broker): a read must not see the store behind.
        self.pending: dict[str, list[Any]] = {}

    @staticmethod
    def min_cache_size(batch_size: int, timer_batch: int) -> int:
        """The smallest cache that holds every state of the stages that can be pending at once:
        the batch being written, the next one (staged, waiting for its outputs) and a churn tick."""
        return 3 * batch_size + timer_batch

    def read(self, key: str, partition: int) -> CustomerState | None:
        """A customer's state: the cached object, or decoded from their partition's database.

        The caller may change it in place only while it holds JourneyApp.state_lock and must
        then stage it (or exit): the cache hands the same object to the next reader."""
        cache = self.cache
        state = cache.get(key)
        if state is not None:
            cache.hits += 1
            return state
        staged = self.pending.get(key)
        if staged is not None:
            cache.hits += 1
            return staged[0]
        cache.misses += 1
        raw = partition_db(self.table, partition).get(key.encode())
        if raw is None:
            return None
        state = decode_stored(raw, partition)
        if cache.size:
            cache.put(key, state)
        return state

    def peek(self, key: str, partition: int) -> CustomerState | None:
        """What read() would return, for a look from outside the batches (the customer lookup):
        the cache and the staged states first (a staged forget reads as no state), then the
        store; nothing is cached or counted."""
        state = self.cache.get(key)
        if state is not None:
            return state
        staged = self.pending.get(key)
        if staged is not None:
            return staged[0]
        raw = partition_db(self.table, partition).get(key.encode())
        return decode_stored(raw, partition) if raw is not None else None

    def keep(self, key: str, state: CustomerState | None) -> None:
        """A staged state: reads see it from now on, until its stage has written the store.
        None: a staged deletion (reads see no state; the pending entry answers them)."""
        if state is None:
            self.cache.discard(key)
        else:
            self.cache.put(key, state)
        staged = self.pending.get(key)
        if staged is None:
            self.pending[key] = [state, 1]
        else:
            staged[0] = state
            staged[1] += 1

    def written(self, keys: Iterable[str]) -> None:
        """A stage's states are in the store: they need not be held for reads any longer."""
        pending = self.pending
        for key in keys:
            staged = pending.get(key)
            if staged is not None:
                staged[1] -= 1
                if staged[1] <= 0:
                    del pending[key]

    def write(self, items: Iterable[tuple[int, bytes, bytes | None]]) -> None:
        """(partition, key, encoded state) into each partition's database, one WriteBatch each;
        a state of None deletes the key."""
        batches: dict[int, rocksdict.WriteBatch] = {}
        for partition, kb, vb in items:
            wb = batches.get(partition)
            if wb is None:
                wb = batches[partition] = rocksdict.WriteBatch(raw_mode=True)
            if vb is None:
                wb.delete(kb)
            else:
                wb.put(kb, vb)
        for partition, wb in batches.items():
            partition_db(self.table, partition).write(wb)

    def record_changelog_offset(self, partition: int, offset: int) -> None:
        """The store holds the changelog up to ``offset``: a restart replays only what follows."""
        self.store.set_persisted_offset(TP(self.changelog_topic, partition), offset)

    def forget(self) -> None:
        """Empty the cache (partitions may be about to change hands; every stage is written by
        then, so nothing is pending)."""
        self.cache.clear()
        self.pending.clear()
