"""The aggregates topic's record: one partition's aggregate as of an input offset.

Workers publish one snapshot per owned partition about every second; the sidecar keeps the
newest per partition. "Newest" is by the input offset the snapshot reflects, not by arrival:
after a rebalance, a worker that just lost a partition may still publish (or have published)
an older view of it, and that must not overwrite the new owner's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from journey.core.aggregates import PartitionAggregate
from journey.errors import EncodingError

SNAPSHOT_VERSION = 1


class SnapshotError(EncodingError):
    """A record on the aggregates topic cannot be read."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    #: The input (touchpoints) partition it covers.
    partition: int
    #: The highest input offset whose effects it holds (-1: none known, e.g. a new partition).
    offset: int
    #: Who published it (app id, host, web port, pid) and when (wall clock, epoch seconds).
    worker: str
    at: float
    aggregate: PartitionAggregate

    def supersedes(self, other: Snapshot | None) -> bool:
        """True when this snapshot should replace ``other`` as its partition's current view."""
        if other is None:
            return True
        # Equal offsets hold the same input, so either is right; prefer the later one (the new
        # owner after a hand-over), which also keeps the staleness reading honest.
        return (self.offset, self.at) >= (other.offset, other.at)

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "v": SNAPSHOT_VERSION,
                "partition": self.partition,
                "offset": self.offset,
                "worker": self.worker,
                "at": self.at,
                "aggregate": self.aggregate.to_wire(),
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> Snapshot:
        try:
            d: Any = orjson.loads(raw)
            if d.get("v") != SNAPSHOT_VERSION:
                raise SnapshotError(
                    f"snapshot version {d.get('v')!r} is not {SNAPSHOT_VERSION}; run the same journey version in workers and sidecar"
                )
            return cls(
                partition=int(d["partition"]),
                offset=int(d["offset"]),
                worker=str(d["worker"]),
                at=float(d["at"]),
                aggregate=PartitionAggregate.from_wire(d["aggregate"]),
            )
        except SnapshotError:
            raise
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SnapshotError(f"not a journey aggregate snapshot ({type(exc).__name__}: {exc})") from None
