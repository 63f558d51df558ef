"""The sidecar's view of the world: the newest snapshot of every input partition, merged.

Pure bookkeeping (no Kafka, no HTTP), so the rules are testable on their own.
"""

from __future__ import annotations

from journey.core.aggregates import PartitionAggregate, merge
from journey.core.snapshot import Snapshot


class SnapshotBook:
    def __init__(self) -> None:
        self.latest: dict[int, Snapshot] = {}
        #: Snapshots accepted and ignored (older than the one held), for metrics.
        self.accepted = 0
        self.superseded = 0
        self._version = 0
        self._merged: tuple[int, PartitionAggregate] | None = None

    def offer(self, snapshot: Snapshot) -> bool:
        """Keep ``snapshot`` if it is the newest of its partition; True when it was kept."""
        if not snapshot.supersedes(self.latest.get(snapshot.partition)):
            self.superseded += 1
            return False
        self.latest[snapshot.partition] = snapshot
        self.accepted += 1
        self._version += 1
        return True

    def merged(self) -> PartitionAggregate:
        """The aggregate over every partition held (cached until a snapshot changes it)."""
        if self._merged is None or self._merged[0] != self._version:
            self._merged = (self._version, merge(s.aggregate for s in self.latest.values()))
        return self._merged[1]

    def missing(self, partitions: int) -> list[int]:
        """Input partitions (0 .. partitions-1) with no snapshot yet."""
        return [p for p in range(partitions) if p not in self.latest]

    def as_of(self) -> float | None:
        """The numbers are at least this recent (wall clock, epoch seconds): the oldest partition's snapshot."""
        return min((s.at for s in self.latest.values()), default=None)

    def ages(self, now: float) -> dict[int, float]:
        """Seconds since each partition's snapshot was taken."""
        return {p: max(0.0, now - s.at) for p, s in sorted(self.latest.items())}

    def owners(self) -> dict[str, list[int]]:
        """Which worker published the held snapshot of each partition (who owns it, as far as we know)."""
        out: dict[str, list[int]] = {}
        for p, s in sorted(self.latest.items()):
            out.setdefault(s.worker, []).append(p)
        return out
