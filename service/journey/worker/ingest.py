"""Batch ingest: the input topic's records go from the consumer's fetches to the pipeline a
batch at a time, without Faust's per-event stream path.

Faust's stream path costs about 70% of a worker's time on the input alone: for every record a
Message, an Event, a task (``wait_first``), a queue put, stream iteration and an ack. Here
Faust keeps what it is good at -- group membership and assignment, the customer table, its
changelog and recovery, commits, timers, the web views -- and the input skips the rest:

- :class:`BatchConsumer` takes the input topic's records out of each fetch (``_getmany``, one
  call per fetch) and hands them to :class:`BatchIngest`; other topics (the changelogs during a
  recovery) go on through Faust's own path.
- :meth:`BatchIngest.run` (an app task) takes what has been fetched -- up to ``batch_size``
  records: under load a batch is what arrived while the previous one ran, idle it is one fetch,
  so there is no window to wait out -- and runs ``agents.handle_records`` on it (pipeline,
  outputs acknowledged, churn, state writes, aggregates, metrics), exactly the agent's path.
  Then it marks the batch's offsets acknowledged in Faust's commit ledger, so Faust's commit
  (which flushes the producer -- the changelog writes -- first) only covers finished batches.
- Rebalance: Faust stops the flow and waits for the "streams" to be empty
  (``stream_wait_empty``, on by default) before it revokes partitions. :meth:`BatchConsumer.wait_empty`
  first drops what is buffered (Faust seeks back to the committed offsets before the flow
  resumes, so those records are fetched again by whoever owns them) and waits for the batch in
  flight, so no record is processed after its partition was revoked.
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from collections import deque
from dataclasses import dataclass
from time import monotonic
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Mapping, Optional, Set

from faust.streams import _current_event
from faust.types import TP
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

from journey.settings import Settings, SettingsError
from journey.worker.pipeline import Record
from journey.worker.produce import BatchSender, Sent
from journey.worker.statewrites import StateWrites, uses_rocksdb
from journey.worker.recovery import TrueHighwaterConsumer, TrueHighwaterTransport

if TYPE_CHECKING:
    from journey.worker.app import JourneyApp

log = logging.getLogger(__name__)

INGEST_MODES = ("stream", "batch")
#: Records buffered ahead of processing, in batches: more stops the fetcher (back-pressure).
BUFFER_BATCHES = 4
#: An infrastructure failure in a batch exits the worker with this code (see run()).
EXIT_BATCH_FAILED = 70


def ingest_mode(settings: Settings) -> str:
    """Settings.ingest (JOURNEY_INGEST): 'stream' (a Faust agent) or 'batch' (this module)."""
    if settings.ingest not in INGEST_MODES:
        raise SettingsError(f"JOURNEY_INGEST={settings.ingest!r} is not an ingest mode; use one of {', '.join(INGEST_MODES)}")
    return settings.ingest


def fetch_max_wait_ms(settings: Settings) -> int:
    """Settings.fetch_max_wait_ms (JOURNEY_FETCH_MAX_WAIT_MS): the consumer's fetch wait."""
    if settings.fetch_max_wait_ms < 0:
        raise SettingsError(f"JOURNEY_FETCH_MAX_WAIT_MS={settings.fetch_max_wait_ms} must be >= 0")
    return settings.fetch_max_wait_ms


class PartitionEvent:
    """Stands in for Faust's current event: the table takes the partition of a read or a write
    (its RocksDB database, its changelog partition) from it."""

    __slots__ = ("message", "ref", "__weakref__")

    def __init__(self, topic: str, partition: int) -> None:
        self.message = SimpleNamespace(topic=topic, partition=partition)
        self.ref = weakref.ref(self)


class PartitionReads:
    """How the pipeline reads the table: each customer from the partition of their records (as
    an agent does for its current event), so a RocksDB store looks in the right database; with
    ``direct``, straight from that database (and its cache)."""

    __slots__ = ("table", "events", "direct")

    def __init__(self, table: Any, events: Mapping[int, PartitionEvent], direct: StateWrites | None = None) -> None:
        self.table = table
        self.events = events
        self.direct = direct

    def read(self, key: str, partition: int) -> Any:
        if self.direct is not None:
            return self.direct.read(key, partition)
        token = _current_event.set(self.events[partition].ref)
        try:
            return self.table.get(key)
        finally:
            _current_event.reset(token)


@dataclass(slots=True)
class _Chunk:
    """Records of one partition from one fetch."""

    tp: TP
    records: list[Any]  # aiokafka ConsumerRecords, in offset order
    generation: int
    #: The first offset this chunk completes in the commit ledger (offsets missing before its
    #: first record -- compaction, transaction markers -- count as done, as Faust's gaps do).
    ack_from: int


class BatchIngest:
    """The input buffer (filled by the consumer's fetches) and the loop that processes it."""

    def __init__(self, japp: "JourneyApp", *, max_records: int, buffer_records: int) -> None:
        self.japp = japp
        self.topic = japp.settings.topic_touchpoints
        self.max_records = max_records
        self.buffer_records = buffer_records
        self._chunks: deque[_Chunk] = deque()
        self._buffered = 0
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        #: Clear while a batch is being processed (taken from the buffer, not yet acked).
        self._idle = asyncio.Event()
        self._idle.set()
        self._events: dict[int, PartitionEvent] = {}
        #: The ack of the last processed batch (done once its changelog writes are acknowledged).
        self._acking: asyncio.Future[None] | None = None

    # --- the fetcher's side ---------------------------------------------------------------
    def put(self, tp: TP, records: list[Any], generation: int, ack_from: int) -> None:
        self._chunks.append(_Chunk(tp, records, generation, ack_from))
        self._buffered += len(records)
        self._arrived.set()

    async def wait_for_room(self, consumer: "BatchConsumer") -> None:
        """Hold the fetcher while the buffer is full (it resumes when a batch is taken or the
        buffer is dropped)."""
        while self._buffered >= self.buffer_records and consumer.flow_active and not consumer.should_stop:
            self._room.clear()
            try:
                await asyncio.wait_for(self._room.wait(), timeout=1.0)
            except asyncio.TimeoutError:
                pass

    def drop(self) -> int:
        """Forget the buffered records (they are fetched again from the committed offsets)."""
        dropped = self._buffered
        self._chunks.clear()
        self._buffered = 0
        self._room.set()
        return dropped

    async def drain(self) -> None:
        """Drop the buffer and wait for the batch in flight (if any) to finish and be acked."""
        dropped = self.drop()
        if dropped:
            log.info("rebalance or stop: dropped %d buffered records; they are read again from the committed offsets", dropped)
        await self._idle.wait()
        if self._acking is not None:
            await asyncio.shield(self._acking)

    # --- the processing side --------------------------------------------------------------
    async def run(self) -> None:
        from journey.worker.agents import handle_records

        app = self.japp.app
        consumer: BatchConsumer = app.consumer  # type: ignore[assignment]
        table = self.japp.customers
        sender = BatchSender(app.producer)
        settings = self.japp.settings
        state_writes = None
        if uses_rocksdb(table):
            floor = StateWrites.min_cache_size(settings.batch_size, settings.churn_max_per_tick)
            state_writes = StateWrites(app, table, sender, cache_size=max(settings.state_cache, floor))
            self.japp.metrics.watch_state_cache(state_writes.cache)
        self.japp.state_writes = state_writes
        reads = PartitionReads(table, self._events, state_writes)
        generation = None
        #: Stages (state writes waiting for their outputs' acks) of the batches processed so far.
        stages: deque[asyncio.Future[Any]] = deque()
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            while self._chunks:
                # Back-pressure: a batch runs while the one before waits for its acks, no further
                # ahead (the state cache is sized for that).
                while stages and (stages[0].done() or len(stages) >= 2):
                    await asyncio.wait([stages.popleft()])
                chunks = self._take(consumer)
                if not chunks:
                    continue
                try:
                    if state_writes is not None and generation != app.consumer_generation_id:
                        # A rebalance happened since the last batch (wait_empty empties the
                        # cache too; this also covers a revocation Faust did not wait for).
                        await state_writes.idle()  # no staged state may be forgotten unwritten
                        state_writes.forget()
                        generation = app.consumer_generation_id
                    records, spans = self._records(chunks)
                    try:
                        _, stage = await handle_records(
                            self.japp, records, reads.read, sender=sender, state_writes=state_writes,
                        )
                    except Exception:  # bad records never get here: they are dead-lettered in the pipeline
                        exit_replaying("a batch could not be completed")
                    stages.append(stage)
                    # The offsets are done once the changelog has the batch's states; meanwhile
                    # the next batch runs (it reads the states from the cache, where they are).
                    self._acking = asyncio.ensure_future(self._ack_when_durable(consumer, self._acking, stage, spans))
                finally:
                    self._idle.set()

    async def _ack_when_durable(
        self,
        consumer: "BatchConsumer",
        previous: "asyncio.Future[None] | None",
        stage: "asyncio.Future[list[Sent]]",
        spans: dict[TP, tuple[int, int]],
    ) -> None:
        try:
            if previous is not None:
                await previous  # in batch order
            changelog = await stage  # outputs acknowledged, states in the store, changelog sent
            if changelog:
                await asyncio.gather(*(s.future for s in changelog))
        except Exception:
            exit_replaying("a batch's outputs or state writes were not acknowledged")
        consumer.ack_spans(spans)
        monitor = self.japp.app.monitor
        if monitor is not None:
            now = monotonic()
            for tp in spans:
                monitor.stream_inbound_time[tp] = now  # Faust's stalled-stream check reads it

    def _take(self, consumer: "BatchConsumer") -> list[_Chunk]:
        """Up to max_records buffered records of the current generation; marks the loop busy."""
        if not consumer.flow_active:
            self.drop()
            return []
        generation = self.japp.app.consumer_generation_id
        taken: list[_Chunk] = []
        n = 0
        chunks = self._chunks
        while chunks and n < self.max_records:
            chunk = chunks.popleft()
            self._buffered -= len(chunk.records)
            if chunk.generation != generation:
                continue  # fetched before a rebalance: read again from the committed offsets
            room = self.max_records - n
            if len(chunk.records) > room:
                rest = chunk.records[room:]
                chunks.appendleft(_Chunk(chunk.tp, rest, chunk.generation, rest[0].offset))
                self._buffered += len(rest)
                chunk = _Chunk(chunk.tp, chunk.records[:room], chunk.generation, chunk.ack_from)
            taken.append(chunk)
            n += len(chunk.records)
        if self._buffered < self.buffer_records:
            self._room.set()
        if taken:
            self._idle.clear()
        return taken

    def _records(self, chunks: list[_Chunk]) -> tuple[list[Record], dict[TP, tuple[int, int]]]:
        records: list[Record] = []
        append = records.append
        spans: dict[TP, tuple[int, int]] = {}
        for chunk in chunks:
            tp = chunk.tp
            event = self._event(tp)
            topic, partition = tp.topic, tp.partition
            for r in chunk.records:
                ts = r.timestamp
                append(Record(r.key, r.value, topic, partition, r.offset, event, ts / 1000.0 if ts is not None else None))
            span = spans.get(tp)
            spans[tp] = (chunk.ack_from if span is None else span[0], chunk.records[-1].offset)
        return records, spans

    def _event(self, tp: TP) -> PartitionEvent:
        event = self._events.get(tp.partition)
        if event is None:
            event = self._events[tp.partition] = PartitionEvent(tp.topic, tp.partition)
        return event


def exit_replaying(what: str) -> None:
    # An infrastructure failure (e.g. outputs not acknowledged after the producer's retries).
    # Acking would commit past records whose outputs or state were never written; exiting
    # leaves the offsets where they were, so the restarted worker (or the one taking over)
    # replays the batch.
    log.critical("%s; exiting so it is replayed", what, exc_info=True)
    logging.shutdown()
    os._exit(EXIT_BATCH_FAILED)


class BatchConsumer(TrueHighwaterConsumer):
    """Faust's aiokafka consumer, handing the input topic's fetched records to BatchIngest."""

    @property
    def ingest(self) -> BatchIngest | None:
        return getattr(self.transport, "ingest", None)

    async def _getmany(self, active_partitions: Optional[Set[TP]], timeout: float) -> Any:
        records = await super()._getmany(active_partitions, timeout)
        ingest = self.ingest
        if ingest is None or not records:
            return records
        topic = ingest.topic
        if not any(tp.topic == topic for tp in records):
            return records
        rest = {}
        # Faust's getmany drops records fetched while the flow is stopped (a rebalance) and
        # those of partitions not active; so do we. It seeks back to the committed offsets
        # before the flow resumes.
        flowing = self.flow_active and not self.should_stop
        generation = self.app.consumer_generation_id
        read_offset = self._read_offset
        took = False
        for tp, recs in records.items():
            if tp.topic != topic:
                rest[tp] = recs
                continue
            if not flowing or (active_partitions is not None and tp not in active_partitions):
                continue
            last_read = read_offset[tp]
            if last_read is not None and recs[0].offset < last_read:
                recs = [r for r in recs if r.offset >= last_read]  # as Faust: never go back
                if not recs:
                    continue
            first = recs[0].offset
            ingest.put(tp, recs, generation, first if last_read is None else min(first, last_read + 1))
            read_offset[tp] = recs[-1].offset
            took = True
        if took:
            await ingest.wait_for_room(self)
        return rest

    def ack_spans(self, spans: Mapping[TP, tuple[int, int]]) -> int:
        """Mark offsets lo..hi (inclusive) of each partition done, as Faust's ack() does per message."""
        n = 0
        with ack_lock:
            for tp, (lo, hi) in spans.items():
                committed = self._committed_offset[tp]
                if committed is not None and lo < committed:
                    lo = committed
                index = self._acked_index[tp]
                new = [o for o in range(lo, hi + 1) if o not in index]
                index.update(new)
                self._acked[tp].extend(new)
                n += len(new)
            self._n_acked += n
        notify(self._waiting_for_ack)
        return n

    async def wait_empty(self) -> None:
        # Faust calls this before it revokes partitions and when it stops: nothing buffered
        # may be processed after, and the batch in flight must finish (and be acked) first.
        ingest = self.ingest
        if ingest is not None:
            await ingest.drain()
            # Partitions are about to be revoked: every staged write (a churn tick's too) must
            # reach the store and the changelog first, and their states may change elsewhere.
            state_writes = ingest.japp.state_writes
            if state_writes is not None:
                await state_writes.idle()
                state_writes.forget()
        await super().wait_empty()


class BatchTransport(TrueHighwaterTransport):
    """The true-highwater transport with :class:`BatchConsumer`."""

    Consumer = BatchConsumer
    ingest: BatchIngest | None = None


def register(japp: "JourneyApp") -> BatchIngest:
    """Subscribe the input topic through BatchIngest (instead of an agent) and start its loop.

    Call it in the app factory after use_true_highwaters and before the worker starts.
    """
    app, settings = japp.app, japp.settings
    if app._consumer is not None:
        raise RuntimeError("the batch ingest must be registered before the app builds its consumer (in create_app)")
    current = app.transport
    transport = BatchTransport(app.conf.broker_consumer, app)
    transport.fetch_max_wait_ms = getattr(current, "fetch_max_wait_ms", None)
    ingest = BatchIngest(japp, max_records=settings.batch_size, buffer_records=settings.batch_size * BUFFER_BATCHES)
    transport.ingest = ingest
    app.transport = transport
    # The conductor subscribes the consumer to the topics it holds (an agent adds its own).
    app.topics.add(japp.touchpoints)

    @app.task
    async def journey_batch_ingest() -> None:
        await ingest.run()

    return ingest
