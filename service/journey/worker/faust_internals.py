"""The one door to other packages' private names (faust, mode, aiokafka, rocksdict, prometheus_client).

journey needs a few things their public APIs do not offer: input records straight from the
consumer's fetches, changelog recovery to the true end of the log, the RocksDB database of a
partition, the aiokafka producer behind Faust's, a bulk histogram observe, the stop signals (for
the shutdown watchdog) and the fetcher's state (for readiness). Each contact is
here and nowhere else (ruff's SLF001 holds the rest of the code to it), listed in
:data:`CONTACTS`; tests/unit/test_faust_internals.py checks every one against the installed
packages, so an upgrade that moves one fails there, by name, not in production.
"""

from __future__ import annotations

import inspect
import logging
import time
from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import import_module
from typing import Any, Protocol, cast

import aiokafka
import faust
from faust.transport import drivers as faust_drivers
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import ack_lock
from mode.utils.futures import notify
from prometheus_client import Histogram

from journey.errors import WorkerError
from journey.kafka.offsets import true_highwaters

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Contact:
    """One private name journey relies on: where it lives, what it must look like, and why."""

    #: "module:Class" (or "module" for a module-level name).
    owner: str
    name: str
    #: The parameter names of a method, in order; None for a data attribute.
    params: tuple[str, ...] | None
    why: str


CONTACTS: tuple[Contact, ...] = (
    Contact("faust.app.base:App", "_transport", None, "install_transport: is a transport already chosen?"),
    Contact("faust.app.base:App", "_consumer", None, "install_transport: too late once the consumer exists"),
    Contact("faust.transport.drivers.aiokafka:Consumer", "_new_consumer_thread", ("self",),
            "our consumer thread (true highwaters, fetch wait)"),
    Contact("faust.transport.drivers.aiokafka:Consumer", "_getmany", ("self", "active_partitions", "timeout"),
            "the input topic's fetched records go to the batch ingest, not Faust's per-event stream"),
    Contact("faust.transport.consumer:Consumer", "_read_offset", None,
            "the last offset handed on per partition (Faust never goes back; after a seek it resets it)"),
    Contact("faust.transport.consumer:Consumer", "_committed_offset", None,
            "the group's committed offset per partition (acks below it are void; aggregate snapshots, lag)"),
    Contact("faust.transport.consumer:Consumer", "_acked", None, "the commit ledger: acked offsets per partition"),
    Contact("faust.transport.consumer:Consumer", "_acked_index", None, "the commit ledger: the same as a set"),
    Contact("faust.transport.consumer:Consumer", "_n_acked", None, "acks since the last commit (commit_every)"),
    Contact("faust.transport.consumer:Consumer", "_waiting_for_ack", None, "woken when offsets are acked"),
    Contact("faust.transport.consumer:Consumer", "_new_offset", ("self", "tp"),
            "what Faust commits from the ledger (the contract test checks ack_offsets against it)"),
    Contact("faust.transport.drivers.aiokafka:AIOKafkaConsumerThread", "_create_worker_consumer", ("self", "transport"),
            "set the fetch wait Faust hard-codes to 1500 ms"),
    Contact("faust.transport.drivers.aiokafka:AIOKafkaConsumerThread", "_highwaters", ("self", "partitions"),
            "recovery reads changelogs to the fetch highwater, not ListOffsets' answer"),
    Contact("faust.transport.drivers.aiokafka:AIOKafkaConsumerThread", "_ensure_consumer", ("self",),
            "the aiokafka consumer behind the thread"),
    Contact("aiokafka.consumer.consumer:AIOKafkaConsumer", "_fetch_max_wait_ms", None,
            "read by the fetcher when it starts; no public setter after construction"),
    Contact("aiokafka.consumer.consumer:AIOKafkaConsumer", "_client", None,
            "the consumer's own client (connections, TLS/SASL) for the highwater probe"),
    Contact("faust.transport.drivers.aiokafka:Producer", "_ensure_producer", ("self",),
            "the aiokafka producer behind Faust's, for produce batches (create_batch/send_batch)"),
    Contact("faust.stores.rocksdb:Store", "_db_for_partition", ("self", "partition"),
            "read and write a partition's RocksDB database directly, one WriteBatch per batch"),
    Contact("prometheus_client.metrics:Histogram", "_upper_bounds", None, "bulk observe: the bucket bounds"),
    Contact("prometheus_client.metrics:Histogram", "_buckets", None, "bulk observe: the bucket counters"),
    Contact("prometheus_client.metrics:Histogram", "_sum", None, "bulk observe: the sum"),
    Contact("faust.worker:Worker", "_on_sigterm", ("self",),
            "StopSignalWorker: arm the shutdown watchdog as SIGTERM arrives, before Faust's stop begins"),
    Contact("faust.worker:Worker", "_on_sigint", ("self",), "StopSignalWorker: the same for SIGINT"),
    Contact("faust.app.base:App", "_fetcher", None,
            "readiness: the fetcher (the consumer's fetch loop) runs; Faust stops it while it rebalances"),
)


def check_contacts(instances: Mapping[str, object]) -> list[str]:
    """What no longer holds, one line per contact (empty: all hold).

    Methods are checked on their class (parameter names in order); data attributes on an
    instance of their owner from ``instances`` (by owner), since most are set in ``__init__``."""
    problems = []
    for c in CONTACTS:
        module_name, _, qualname = c.owner.partition(":")
        try:
            owner: Any = import_module(module_name)
            for part in filter(None, qualname.split(".")):
                owner = getattr(owner, part)
        except (ImportError, AttributeError) as exc:
            problems.append(f"{c.owner}: gone ({exc}); journey needs its {c.name} to {c.why}")
            continue
        if c.params is not None:
            member = inspect.getattr_static(owner, c.name, None)
            if member is None:
                problems.append(f"{c.owner}.{c.name}: method gone; journey needs it to {c.why}")
                continue
            params = tuple(inspect.signature(getattr(owner, c.name)).parameters)
            if params != c.params:
                problems.append(f"{c.owner}.{c.name}: parameters are now {params}, journey expects {c.params} (to {c.why})")
            continue
        instance = instances.get(c.owner)
        if instance is None:
            problems.append(f"{c.owner}.{c.name}: no instance given to check this attribute on")
        elif not hasattr(instance, c.name):
            problems.append(f"{c.owner}.{c.name}: attribute gone; journey needs it to {c.why}")
    return problems


# --- the input: fetched records to the batch ingest -------------------------------------------
class RecordSink(Protocol):
    """Where the consumer hands the input topic's fetched records (worker/ingest.BatchIngest)."""

    topic: str

    def put(self, tp: TP, records: list[Any], generation: int, ack_from: int) -> None: ...

    async def wait_for_room(self, consumer: JourneyConsumer) -> None: ...

    async def before_revoke(self) -> None: ...


class JourneyConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Consumer thread whose ``highwaters()`` come from Fetch responses (tansu answers
    ListOffsets one batch short; on Apache Kafka both agree) and whose fetch wait is the
    transport's ``fetch_max_wait_ms``."""

    def _create_worker_consumer(self, transport: faust_aiokafka.Transport) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        wait_ms = getattr(transport, "fetch_max_wait_ms", None)
        if wait_ms is not None:
            # Faust hard-codes 1500 ms; a broker that answers a waiting fetch only when the
            # wait expires (tansu does) would delay every record by up to that much.
            consumer._fetch_max_wait_ms = int(wait_ms)
        return consumer

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        if self.consumer.in_transaction:
            return await super()._highwaters(partitions)  # exactly-once reads the LSO already
        consumer = self._ensure_consumer()
        hints = await consumer.end_offsets(partitions)  # a lower bound of the end on every broker
        started = time.monotonic()
        highwaters = await true_highwaters(consumer._client, hints, timeout_s=float(self.app.conf.broker_request_timeout))
        short = {tp: (hints[tp], hw) for tp, hw in highwaters.items() if hints.get(tp) != hw}
        if short:
            example = ", ".join(f"{tp.topic}[{tp.partition}] {a}->{b}" for tp, (a, b) in list(short.items())[:3])
            log.info(
                "ListOffsets under-reported the end of %d of %d partition(s) (%s); recovering to the fetch highwaters (%.0f ms)",
                len(short), len(highwaters), example, (time.monotonic() - started) * 1000,
            )
        return cast(Mapping[TP, int], highwaters)


class JourneyConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, handing the input topic's fetched records to the transport's sink."""

    def _new_consumer_thread(self) -> JourneyConsumerThread:
        return JourneyConsumerThread(self, loop=self.loop, beacon=self.beacon)

    @property
    def sink(self) -> RecordSink | None:
        return cast(RecordSink | None, getattr(self.transport, "sink", None))

    async def _getmany(self, active_partitions: set[TP] | None, timeout: float) -> Mapping[TP, list[Any]]:
        records = await super()._getmany(active_partitions, timeout)
        sink = self.sink
        if sink is None or not records:
            return records
        topic = sink.topic
        if not any(tp.topic == topic for tp in records):
            return records
        rest = {}
        # As Faust's getmany: drop what was fetched while the flow is stopped (a rebalance) and
        # records of inactive partitions (Faust seeks back to the committed offsets first).
        flowing = self.flow_active and not self.should_stop
        generation = self.app.consumer_generation_id
        read_offset = self._read_offset
        took = False
        for tp, recs in records.items():
            if tp.topic != topic:
                rest[tp] = recs  # the changelogs during a recovery: Faust's own path
                continue
            if not flowing or (active_partitions is not None and tp not in active_partitions):
                continue
            last_read = read_offset[tp]
            if last_read is not None and recs[0].offset < last_read:
                recs = [r for r in recs if r.offset >= last_read]  # as Faust: never go back
                if not recs:
                    continue
            first = recs[0].offset
            sink.put(tp, recs, generation, first if last_read is None else min(first, last_read + 1))
            read_offset[tp] = recs[-1].offset
            took = True
        if took:
            await sink.wait_for_room(self)
        return rest

    def ack_offsets(self, spans: Mapping[TP, tuple[int, int]]) -> int:
        """Mark offsets lo..hi (inclusive) of each partition done in Faust's commit ledger, as
        its ack() does per message (a Message per offset would cost ~2.4 us each); Faust's next
        commit covers them, after flushing its producer. Returns how many were new."""
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

    def committed_offset(self, tp: TP) -> int | None:
        """The group's committed offset of ``tp`` as this consumer last saw it (None: unknown)."""
        value = self._committed_offset.get(tp)
        return int(value) if value is not None else None

    async def wait_empty(self) -> None:
        # Faust calls this before it revokes partitions and when it stops.
        sink = self.sink
        if sink is not None:
            await sink.before_revoke()
        await super().wait_empty()
        # Faust's closing commit is skipped when a periodic commit is in flight (it waits for that
        # one, which may have gathered its offsets before the last batch was acked). Wait until no
        # commit is in flight, then commit: nothing runs between the last check and commit()'s own,
        # so this one cannot be skipped, and the new owner does not read a processed batch again.
        while await self.maybe_wait_for_commit_to_finish():
            pass
        await self.commit()


class JourneyTransport(faust_aiokafka.Transport):
    """The aiokafka transport with :class:`JourneyConsumer`."""

    Consumer = JourneyConsumer
    #: The consumer's fetch.max.wait.ms; None keeps Faust's 1500 ms.
    fetch_max_wait_ms: int | None = None
    sink: RecordSink | None = None


def install_transport(app: faust.App, *, fetch_max_wait_ms: int | None = None, sink: RecordSink | None = None) -> JourneyTransport:
    """Give ``app`` journey's transport: changelog recovery to the true end of the log, the
    fetch wait, and (with ``sink``) the input topic's records handed to the batch ingest.

    Call it in the app factory, before the worker starts. Calling it again updates the options."""
    current = app._transport
    if isinstance(current, JourneyTransport):
        if fetch_max_wait_ms is not None:
            current.fetch_max_wait_ms = fetch_max_wait_ms
        if sink is not None:
            current.sink = sink
        return current
    if app._consumer is not None:
        raise WorkerError(
            f"app {app.conf.id!r} already built its Kafka consumer, so its transport can no longer be "
            "swapped; install journey's transport in the app factory, before the worker starts"
        )
    url = app.conf.broker_consumer[0]
    try:
        chosen: object = faust_drivers.by_url(url)
    except ImportError as exc:  # unknown scheme, or a driver whose client is not installed
        chosen = exc
    if not (isinstance(chosen, type) and issubclass(chosen, faust_aiokafka.Transport)):
        raise WorkerError(
            f"broker URL {str(url)!r} selects transport {chosen!r}, but journey only runs on the "
            "aiokafka transport; use a kafka:// broker URL"
        )
    if current is not None and type(current) is not faust_aiokafka.Transport:
        raise WorkerError(
            f"app {app.conf.id!r} already uses a custom transport {type(current).__qualname__}; "
            "journey's transport cannot be combined with it"
        )
    transport = JourneyTransport(app.conf.broker_consumer, app)
    transport.fetch_max_wait_ms = fetch_max_wait_ms
    transport.sink = sink
    app.transport = transport
    return transport


# --- state and producer -----------------------------------------------------------------------
def uses_rocksdict(table: Any) -> bool:
    """Whether the table's store is Faust's RocksDB store on rocksdict."""
    from faust.stores.rocksdb import Store as RocksDBStore

    return isinstance(table.data, RocksDBStore) and bool(getattr(table.data, "use_rocksdict", False))


def partition_db(table: Any, partition: int) -> Any:
    """The rocksdict database of one partition of a RocksDB-backed table (raw bytes in and out)."""
    return table.data._db_for_partition(partition)


def aiokafka_producer(faust_producer: Any) -> aiokafka.AIOKafkaProducer:
    """The started aiokafka producer behind Faust's (the one Faust flushes before a commit)."""
    return faust_producer._ensure_producer()


# --- metrics ----------------------------------------------------------------------------------
def observe_all(histogram: Histogram, values: Sequence[float]) -> None:
    """``histogram.observe(max(0, v))`` for every value, one increment per bucket.

    prometheus_client has no bulk observe, and one observe per transition (a lock and a bucket
    scan each) showed in the worker's profile. Counts come out exactly as with observe."""
    bounds, buckets, total = histogram._upper_bounds, histogram._buckets, histogram._sum
    ordered = sorted(values)
    first = bisect_left(ordered, 0.0)  # values below 0 count as 0 (clock skew)
    done = 0
    for bound, bucket in zip(bounds, buckets, strict=False):
        upto = bisect_right(ordered, bound)
        if upto > done:
            bucket.inc(upto - done)
            done = upto
    total.inc(sum(ordered[first:]))


# --- the worker process: stop signals and readiness --------------------------------------------
class StopSignalWorker(faust.Worker):
    """faust.Worker that calls :meth:`on_stop_signal` as SIGTERM or SIGINT arrives, before Faust's
    own stop begins (which may never end: it flushes the producer and leaves the group)."""

    def on_stop_signal(self, name: str) -> None:
        """Called in the event loop with "SIGTERM" or "SIGINT", every time one arrives."""

    def _on_sigterm(self) -> None:
        self.on_stop_signal("SIGTERM")
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        self.on_stop_signal("SIGINT")
        super()._on_sigint()


def built_consumer(app: faust.App) -> Any | None:
    """The app's Kafka consumer if the worker has built it (``app.consumer`` would build one)."""
    return app._consumer


def fetcher_state(app: faust.App) -> str:
    """The state of the app's fetcher ("running" while records are fetched; "init" while a
    rebalance has it stopped, "stopping"/"shutdown" when the worker stops)."""
    return str(app._fetcher.state)
