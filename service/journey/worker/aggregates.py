"""The worker's live aggregates: one PartitionAggregate per owned input partition, published
about every second to the aggregates topic for the sidecar, which merges them.

They equal the aggregate of the states as the worker last changed them because a batch's
``replace(before, after)`` runs in the same synchronous stretch as its in-place changes (under
JourneyApp.state_lock), a partition's aggregate is built from the table only once Faust has
recovered it, and partitions no longer owned are dropped at the next assignment.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from faust.types import TP

from journey.core.aggregates import PartitionAggregate, summarize
from journey.core.snapshot import Snapshot
from journey.core.stages import STAGES
from journey.worker.faust_internals import JourneyConsumer
from journey.worker.pipeline import BatchResult

if TYPE_CHECKING:
    from journey.worker.app import JourneyApp

log = logging.getLogger(__name__)

PUBLISH_INTERVAL_S = 1.0


class LiveAggregates:
    def __init__(self, japp: JourneyApp) -> None:
        self.japp = japp
        self.topic = japp.settings.topic_touchpoints
        self.parts: dict[int, PartitionAggregate] = {}
        #: Highest input offset processed per owned partition since its aggregate was built.
        self.offsets: dict[int, int] = {}
        #: Input partitions of the current assignment (some may still be recovering).
        self.assigned: set[int] = set()
        #: The group generation of the last assignment seen (None before the first).
        self.generation: int | None = None
        s = japp.settings
        self.identity = f"{s.app_id}@{socket.gethostname()}:{s.web_port}/pid{os.getpid()}"

    # --- the hot path ----------------------------------------------------------------------
    def observe(self, spans: Mapping[TP, tuple[int, int]], result: BatchResult) -> None:
        """Fold a batch's written states in; call it right after the states are written.
        ``spans``: the batch's input offsets (first, last) by topic-partition."""
        parts, offsets = self.parts, self.offsets
        for tp, (_first, offset) in spans.items():
            p = tp.partition
            if p in parts and offset > offsets.get(p, -1):
                offsets[p] = offset
        for rec, state, before in result.writes.values():
            agg = parts.get(rec.partition)
            if agg is not None:
                agg.replace(before, summarize(state))

    # --- ownership -------------------------------------------------------------------------
    def on_assigned(self, assigned: Iterable[TP]) -> None:
        """A new assignment (the full set): forget partitions we no longer own, and every one
        after a generation this worker missed."""
        generation = getattr(self.japp.app, "consumer_generation_id", None)
        if generation is not None and generation != self.generation:
            if self.generation is not None and generation > self.generation + 1:
                # Dropped from the group (a session timeout) and back: another member may have
                # processed partitions we are given again meanwhile, and the table recovered
                # their writes. Every aggregate is rebuilt from the table once it is recovered.
                log.info("group generation %d after %d: rebuilding every partition's aggregate", generation, self.generation)
                self.parts.clear()
                self.offsets.clear()
            self.generation = generation
        self.assigned = {tp.partition for tp in assigned if tp.topic == self.topic}
        for p in list(self.parts):
            if p not in self.assigned:
                del self.parts[p]
                self.offsets.pop(p, None)

    def on_recovered(self) -> None:
        """The table is complete for the assignment: build the aggregates of new partitions."""
        # Read the assignment again: do not depend on the order of Faust's signal and recovery.
        self.on_assigned(self.japp.app.consumer.assignment())
        missing = self.assigned - set(self.parts)
        if not missing:
            return
        started = time.monotonic()
        built = {p: PartitionAggregate() for p in missing}
        scanned = 0
        for state in self.japp.customers.values():
            scanned += 1
            agg = built.get(state.partition) if state is not None else None
            if agg is not None:
                agg.add(summarize(state))
        self.parts.update(built)
        log.info(
            "aggregates of partition(s) %s rebuilt from %d table entries in %.0f ms",
            sorted(missing), scanned, (time.monotonic() - started) * 1000,
        )

    # --- publishing ------------------------------------------------------------------------
    def reflected_offset(self, p: int) -> int:
        """The highest input offset a snapshot of p reflects (-1 when none is known)."""
        # Right after a rebuild nothing is processed yet; the table then holds at least what
        # the group committed for p (commits follow the state writes).
        committed = self._committed(p)
        return max(self.offsets.get(p, -1), (committed or 0) - 1)

    def snapshots(self, now: float) -> list[Snapshot]:
        return [
            Snapshot(p, self.reflected_offset(p), self.identity, now, agg)
            for p, agg in sorted(self.parts.items())
        ]

    async def publish(self) -> None:
        app, settings = self.japp.app, self.japp.settings
        snapshots = self.snapshots(time.time())
        self.update_metrics()
        if not snapshots:
            return
        producer = app.producer
        pending = [
            await producer.send(settings.topic_aggregates, str(s.partition).encode(), s.to_bytes(), None, None, None)
            for s in snapshots
        ]
        await asyncio.gather(*pending)

    def update_metrics(self) -> None:
        metrics = self.japp.metrics
        total = [0] * (len(STAGES) + 1)
        for agg in self.parts.values():
            for i, n in enumerate(agg.slots()):
                total[i] += n
        metrics.customers.labels(stage="none").set(total[0])
        for i, name in enumerate(STAGES):
            metrics.customers.labels(stage=name).set(total[i + 1])

    def partition_lag(self) -> dict[int, int | None]:
        """Records not yet processed per assigned input partition: the partition's end minus the
        next offset to process; None while its end is unknown (no fetch answered yet).

        The end is the high watermark of the partition's last fetch response (the true log end
        on every broker, tansu included; ListOffsets is not), refreshed with every fetch."""
        if not self.assigned:
            return {}  # also before the worker has started (a scrape then must not build its consumer)
        consumer = self.japp.app.consumer
        lags: dict[int, int | None] = {}
        for p in sorted(self.assigned):
            try:
                highwater = consumer.highwater(TP(self.topic, p))
            except Exception:  # noqa: BLE001 - consumer not started or partition not fetched yet
                highwater = None
            if highwater is None:
                lags[p] = None
                continue
            done = self.offsets.get(p)
            position = done + 1 if done is not None else (self._committed(p) or 0)
            lags[p] = max(0, highwater - position)
        return lags

    def _committed(self, p: int) -> int | None:
        consumer = self.japp.app.consumer
        if not isinstance(consumer, JourneyConsumer):
            return None
        return consumer.committed_offset(TP(self.topic, p))


def register(japp: JourneyApp) -> LiveAggregates:
    """Create the adapter, export its lag at scrape time, and hook it to the app's rebalance,
    recovery and a 1 s timer."""
    live = LiveAggregates(japp)
    japp.metrics.watch_lag(live.topic, live.partition_lag)
    app = japp.app

    async def on_partitions_assigned(sender: Any, assigned: set[TP], **kwargs: Any) -> None:
        live.on_assigned(assigned)

    async def on_recover() -> None:
        live.on_recovered()

    async def publish_aggregates() -> None:
        try:
            await live.publish()
        except Exception:  # a failed tick must not stop the timer; the next one resends everything
            log.exception("publishing the live aggregates failed; retrying in %.0f s", PUBLISH_INTERVAL_S)

    app.on_partitions_assigned.connect(on_partitions_assigned, weak=False)  # type: ignore[arg-type]  # as churn.register
    japp.customers.on_recover(on_recover)
    app.timer(PUBLISH_INTERVAL_S, name="journey.publish-aggregates")(publish_aggregates)
    return live
