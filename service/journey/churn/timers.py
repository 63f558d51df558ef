"""An index of customers by when their churn level or pain-point state would next change.

A timer over millions of customers must not scan them all on every tick: this index hands it only
the customers that are due, and lets a rebalance drop or rebuild the partitions that changed owner.
Details: docs/churn-model.md.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterable


class DueIndex:
    def __init__(self) -> None:
        self._heap: list[tuple[float, str]] = []
        #: customer -> (due time, partition): the only entry of theirs that counts.
        self._due: dict[str, tuple[float, int | None]] = {}

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, key: object) -> bool:
        return key in self._due

    def due_time(self, key: str) -> float | None:
        entry = self._due.get(key)
        return entry[0] if entry is not None else None

    def schedule(self, key: str, due: float | None, partition: int | None = None) -> None:
        """Set (or, with ``due=None``, remove) when ``key`` must be looked at again."""
        if due is None:
            self._due.pop(key, None)
            return
        current = self._due.get(key)
        self._due[key] = (due, partition)
        if current is None or current[0] != due:
            heapq.heappush(self._heap, (due, key))
            self._maybe_compact()

    def pop_due(self, now: float, limit: int | None = None) -> list[str]:
        """Customers due at or before ``now`` (earliest first, at most ``limit``), removed from the index."""
        return [key for key, _ in self.pop_due_entries(now, limit)]

    def pop_due_entries(self, now: float, limit: int | None = None) -> list[tuple[str, int | None]]:
        """As pop_due, with each customer's partition (as scheduled)."""
        heap, due = self._heap, self._due
        out: list[tuple[str, int | None]] = []
        while heap and heap[0][0] <= now and (limit is None or len(out) < limit):
            when, key = heapq.heappop(heap)
            entry = due.get(key)
            if entry is not None and entry[0] == when:
                del due[key]
                out.append((key, entry[1]))
        return out

    def next_due(self) -> float | None:
        """The earliest live due time (drops stale entries it passes)."""
        heap, due = self._heap, self._due
        while heap:
            when, key = heap[0]
            entry = due.get(key)
            if entry is not None and entry[0] == when:
                return when
            heapq.heappop(heap)
        return None

    def drop_partitions(self, partitions: Collection[int]) -> int:
        """Forget the customers of ``partitions`` (revoked from this worker); return how many."""
        gone = [k for k, (_, p) in self._due.items() if p in partitions]
        for k in gone:
            del self._due[k]
        self._maybe_compact()
        return len(gone)

    def rebuild(self, entries: Iterable[tuple[str, float | None, int | None]]) -> None:
        """Add (customer, due, partition) entries, e.g. read back from the table; None = nothing due."""
        for key, due, partition in entries:
            if due is not None:
                self._due[key] = (due, partition)
        self._heap = [(due, key) for key, (due, _) in self._due.items()]
        heapq.heapify(self._heap)

    def purge(self, keys: Collection[str]) -> None:
        """Remove ``keys`` entirely, their stale heap entries too (one pass over the heap): for
        forgotten customers, whose ids must not stay in memory until their due time."""
        gone = set(keys)
        for key in gone:
            self._due.pop(key, None)
        self._heap = [entry for entry in self._heap if entry[1] not in gone]
        heapq.heapify(self._heap)

    def clear(self) -> None:
        self._heap.clear()
        self._due.clear()

    def _maybe_compact(self) -> None:
        if len(self._heap) > 2 * len(self._due) + 1024:
            self._heap = [(due, key) for key, (due, _) in self._due.items()]
            heapq.heapify(self._heap)
