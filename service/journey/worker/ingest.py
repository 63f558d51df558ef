"""Batch ingest: the input topic's records go from the consumer's fetches to the batch protocol a
batch at a time, without Faust's per-event stream path (a Message, an Event, a task and an ack
per record cost ~70% of a worker's time). Faust keeps group membership, assignment, the table's
changelog and recovery, commits, timers and the web views.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from time import monotonic
from typing import TYPE_CHECKING, Any

from faust.types import TP

from journey.worker import garbage
from journey.worker.batch import BatchProtocol, Spans, Stage, describe_spans, exit_replaying
from journey.worker.batchsize import BatchSizer
from journey.worker.faust_internals import JourneyConsumer, install_transport
from journey.worker.pipeline import InputRecord
from journey.worker.produce import BatchSender
from journey.worker.routing import RoutingCheck
from journey.worker.store import StateStore

if TYPE_CHECKING:
    from journey.worker.app import JourneyApp

log = logging.getLogger(__name__)


#: Records buffered ahead of processing, in batches: more stops the fetcher (back-pressure).
BUFFER_BATCHES = 2
#: Batches whose steps 5-9 (worker/batch.py) may be pending at once: the one written, the next.
STAGES_IN_FLIGHT = 2


@dataclass(slots=True)
class _Chunk:
    """Records of one partition from one fetch."""

    tp: TP
    records: list[Any]  # aiokafka ConsumerRecords, in offset order
    generation: int
    #: The first offset this chunk completes (offsets missing before its first record --
    #: compaction, transaction markers -- count as done, as Faust's gaps do).
    ack_from: int


class BatchIngest:
    """The input buffer (filled by the consumer's fetches) and the loop that processes it.

    Rebalance: Faust stops the flow and waits for the consumer to be empty before it revokes
    partitions; :meth:`before_revoke` drops what is buffered (fetched again from the committed
    offsets by whoever owns it next), waits for the batch in flight and every stage to be
    durable, and empties the state cache."""

    def __init__(self, japp: JourneyApp, *, max_records: int, buffer_records: int) -> None:
        self.japp = japp
        self.topic = japp.settings.topic_touchpoints
        self.routing = RoutingCheck(japp.settings.partitions, self.topic)
        self.sizer = BatchSizer(max_records, japp.settings.batch_target_ms / 1000)
        self.buffer_records = buffer_records
        self._chunks: deque[_Chunk] = deque()
        self._buffered = 0
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        #: Clear while a batch is between being taken from the buffer and being staged.
        self._idle = asyncio.Event()
        self._idle.set()

    # --- the fetcher's side (JourneyConsumer calls these) ---------------------------------
    def put(self, tp: TP, records: list[Any], generation: int, ack_from: int) -> None:
        if records:
            self.routing.sample(tp.partition, records[0].key)
        self._chunks.append(_Chunk(tp, records, generation, ack_from))
        self._buffered += len(records)
        self._arrived.set()

    async def wait_for_room(self, consumer: JourneyConsumer) -> None:
        """Hold the fetcher while the buffer is full."""
        while self._buffered >= self.buffer_records and consumer.flow_active and not consumer.should_stop:
            self._room.clear()
            try:
                await asyncio.wait_for(self._room.wait(), timeout=1.0)
            except TimeoutError:
                pass

    async def before_revoke(self) -> None:
        dropped = self.drop()
        if dropped:
            log.info("rebalance or stop: dropped %d buffered records; they are read again from the committed offsets", dropped)
        bound = self.revoke_wait_s()
        try:
            await asyncio.wait_for(self._settle(), timeout=bound)
        except TimeoutError:
            # The group completes the rebalance without a member that does not answer within its
            # rebalance timeout: our stages, still waiting on the broker, would then write the
            # changelog after the partitions' new owner has begun. Exiting ends them (nothing
            # of theirs was committed); the new owner replays from the committed offsets.
            exit_replaying(f"a rebalance or stop waited {bound:g} s for this worker's batches in flight to become durable "
                           "(the broker is not acknowledging their writes)")

    def revoke_wait_s(self) -> float:
        """How long a revocation may wait for the batches in flight: half the group's rebalance timeout."""
        return float(self.japp.app.conf.broker_rebalance_timeout) / 2

    async def _settle(self) -> None:
        await self._idle.wait()
        batches = self.japp.batches
        if batches is not None:
            # Under the state lock: a churn tick still staging (its send may wait for metadata)
            # finishes first, so nothing is staged or cached for partitions that may be gone.
            async with self.japp.state_lock:
                await batches.idle()  # every stage (a churn tick's too) durable before partitions move
                batches.store.forget()

    def drop(self) -> int:
        """Forget the buffered records (they are fetched again from the committed offsets)."""
        dropped = self._buffered
        self._chunks.clear()
        self._buffered = 0
        self._room.set()
        return dropped

    # --- the processing side --------------------------------------------------------------
    async def run(self) -> None:
        japp, settings, app = self.japp, self.japp.settings, self.japp.app
        consumer: JourneyConsumer = app.consumer  # type: ignore[assignment]
        floor = StateStore.min_cache_size(settings.batch_size, settings.churn_max_per_tick)
        store = StateStore(japp.customers, cache_size=max(settings.state_cache, floor))
        japp.metrics.watch_state_cache(store.cache)
        japp.metrics.watch_routing(lambda: self.routing.misplaced)
        batches = japp.batches = BatchProtocol(japp, store, BatchSender(app.producer), ack_offsets=self._acker(consumer))
        generation = None
        stages: deque[Stage] = deque()
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            while self._chunks:
                # Back-pressure: a batch runs while the one before waits for its acks, no further ahead.
                while stages and (stages[0].done.done() or len(stages) >= STAGES_IN_FLIGHT):
                    await asyncio.wait([stages.popleft().done])
                chunks = self._take(consumer)
                if not chunks:
                    continue
                try:
                    if generation != app.consumer_generation_id:
                        await self._new_generation(batches, store)
                        generation = app.consumer_generation_id
                    records, spans = self._records(chunks)
                    try:
                        stages.append(await batches.run_batch(records, spans))
                    except Exception:  # bad records never get here: the pipeline dead-letters them
                        exit_replaying(f"a batch of {len(records)} records ({describe_spans(spans)}) could not be processed "
                                       "or handed to the producer (the error follows)")
                    self.sizer.observe(len(records), batches.last_busy_s)
                    garbage.settle()
                finally:
                    self._idle.set()

    async def _new_generation(self, batches: BatchProtocol, store: StateStore) -> None:
        """A rebalance since the last batch: every stage durable, then the cache emptied (as
        before_revoke does; this also covers a revocation Faust did not wait for). Under the
        state lock: a churn tick staging between the wait and the forget would have its pending
        states dropped before they are durable, and the batch would read older ones."""
        async with self.japp.state_lock:
            await batches.idle()
            store.forget()

    def _acker(self, consumer: JourneyConsumer) -> Any:
        monitor = self.japp.app.monitor

        def ack(spans: Spans) -> None:
            consumer.ack_offsets(spans)
            if monitor is not None:
                now = monotonic()
                for tp in spans:
                    monitor.stream_inbound_time[tp] = now  # Faust's stalled-stream check reads it

        return ack

    def _take(self, consumer: JourneyConsumer) -> list[_Chunk]:
        """Up to the sizer's limit of buffered records of the current generation; marks the loop busy."""
        if not consumer.flow_active:
            self.drop()
            return []
        generation = self.japp.app.consumer_generation_id
        taken: list[_Chunk] = []
        n = 0
        chunks = self._chunks
        limit = self.sizer.limit
        while chunks and n < limit:
            chunk = chunks.popleft()
            self._buffered -= len(chunk.records)
            if chunk.generation != generation:
                continue  # fetched before a rebalance: read again from the committed offsets
            room = limit - n
            if len(chunk.records) > room:
                rest = chunk.records[room:]
                # The rest completes from right after the last record taken (gaps in between included).
                chunks.appendleft(_Chunk(chunk.tp, rest, chunk.generation, chunk.records[room - 1].offset + 1))
                self._buffered += len(rest)
                chunk = _Chunk(chunk.tp, chunk.records[:room], chunk.generation, chunk.ack_from)
            taken.append(chunk)
            n += len(chunk.records)
        if self._buffered < self.buffer_records:
            self._room.set()
        if taken:
            self._idle.clear()
        return taken

    @staticmethod
    def _records(chunks: list[_Chunk]) -> tuple[list[InputRecord], dict[TP, tuple[int, int]]]:
        """The chunks' records as the consumer gave them (aiokafka's ConsumerRecords are the
        pipeline's InputRecords), and each partition's span of offsets."""
        records: list[InputRecord] = []
        spans: dict[TP, tuple[int, int]] = {}
        for chunk in chunks:
            records += chunk.records
            tp = chunk.tp
            span = spans.get(tp)
            spans[tp] = (chunk.ack_from if span is None else span[0], chunk.records[-1].offset)
        return records, spans


def register(japp: JourneyApp) -> BatchIngest:
    """Take the input topic through BatchIngest and start its loop (in the app factory)."""
    app, settings = japp.app, japp.settings
    ingest = BatchIngest(japp, max_records=settings.batch_size, buffer_records=settings.batch_size * BUFFER_BATCHES)
    install_transport(app, sink=ingest)  # the consumer hands the input topic's records to it
    # The conductor subscribes the consumer to the topics it holds (an agent would add its own).
    app.topics.add(japp.touchpoints)

    @app.task
    async def journey_batch_ingest() -> None:
        await ingest.run()

    return ingest
