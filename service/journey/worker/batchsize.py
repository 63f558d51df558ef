"""How many records the next batch takes: under a backlog, more each time while a batch holds the
event loop (which also answers /readyz, /metrics and lookups) for less than a time target, up to
JOURNEY_BATCH_SIZE, since a customer's several events in one batch are scored, encoded and
written once; a caught-up worker's batches are what arrived, so latency does not pay for it."""

from __future__ import annotations

#: The smallest limit the sizer goes down to, and where it starts (it grows from there).
LEAST_RECORDS = 500


class BatchSizer:
    """The records limit of the next batch, from the busy time of the last full ones."""

    __slots__ = ("least", "limit", "most", "target_s")

    def __init__(self, most: int, target_s: float) -> None:
        self.most = most
        self.least = min(LEAST_RECORDS, most)
        self.target_s = target_s
        self.limit = self.least

    def observe(self, records: int, busy_s: float) -> None:
        """A batch of ``records`` held the event loop for ``busy_s`` seconds (wall clock)."""
        if records <= 0 or busy_s <= 0:
            return
        if records < self.limit and busy_s <= self.target_s:
            # A short batch within the target says nothing either way: a bigger one may cost more
            # per record or less (a caught-up worker's few records carry the batch's fixed costs).
            return
        fit = int(records * self.target_s / busy_s)
        # Halfway toward the fit: one slow batch (a GC pause, a cold cache) does not halve the size.
        self.limit = max(self.least, min(self.most, (self.limit + fit) // 2))
