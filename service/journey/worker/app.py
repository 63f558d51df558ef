"""The worker's Faust app factory: Faust owns group membership, the customer table's changelog
and recovery, commits, timers and the web views; everything journey decides is the pure core's.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import faust
from faust.serializers import codecs

from journey.core.aggregates import summarize
from journey.core.definition import JourneyDefinition, load_definition
from journey.core.identity import control_key, junk_ids
from journey.core.machine import Limits
from journey.core.privacy import salt_key
from journey.core.state import CustomerState
from journey.errors import CorruptState
from journey.kafka.admin import ERASURE_COMPACTION_LAG_MS
from journey.kafka.security import faust_credentials
from journey.settings import Settings
from journey.worker import aggregates as live_aggregates
from journey.worker import churn as churn_risk
from journey.worker import ingest, privacy, views
from journey.worker.faust_internals import install_transport
from journey.worker.metrics import WorkerMetrics
from journey.worker.pipeline import IdentityRules, Pipeline
from journey.worker.privacy import Privacy
from journey.worker.store import decode_stored

if TYPE_CHECKING:
    from journey.worker.aggregates import LiveAggregates
    from journey.worker.batch import BatchProtocol
    from journey.worker.churn import ChurnWorker

log = logging.getLogger(__name__)

TABLE_NAME = "customers"
#: Memtables a partition database may hold: the one being written and one being flushed.
ROCKSDB_WRITE_BUFFERS = 2
#: Most bytes one fetch answer brings per partition (Faust's default, stated: journey.worker.memory counts it).
FETCH_PARTITION_BYTES = 1024**2
#: Largest produce batch (below the brokers' default 1 MiB message.max.bytes).
PRODUCE_BATCH_BYTES = 512 * 1024


class StateCodec(codecs.Codec):
    """CustomerState <-> its compact changelog encoding."""

    def _dumps(self, obj: CustomerState) -> bytes:
        return obj.to_wire()

    def _loads(self, s: bytes) -> CustomerState | None:
        """None for a stored state no journey wrote: the rebuilds after a rebalance (live
        aggregates, churn timers) and lookups pass over it as over a missing one, as the batches
        do (worker/store.py's CorruptState), instead of the worker failing at every rebalance."""
        try:
            return decode_stored(s)
        except CorruptState as exc:
            log.error("passed over: %s", exc)
            return None


class TextCodec(codecs.Codec):
    """str <-> UTF-8 bytes (faust's 'raw' would hand back bytes after a recovery)."""

    def _dumps(self, obj: str) -> bytes:
        return obj.encode() if isinstance(obj, str) else obj

    def _loads(self, s: bytes) -> str:
        return s.decode()


codecs.register("journey_state", StateCodec())
codecs.register("journey_text", TextCodec())


class CustomerTable(faust.Table):
    """The customer table, with journey's own key and state codecs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # faust derives table serializers from model classes only. Set ours here, before the app
        # registers the table and builds its changelog topic (and the topic's deserializers).
        self.key_serializer = "journey_text"
        self.value_serializer = "journey_state"


def rocksdb_options(settings: Settings) -> dict[str, int]:
    """The customer table's RocksDB options (Faust's RocksDBOptions), per partition database:
    memtables and block cache bounded by settings (Faust's defaults, 3 x 64 MiB and 2 GiB each,
    would let 8 partitions take over 17 GiB). journey.worker.memory counts them."""
    mib = 2**20
    return {
        "write_buffer_size": settings.rocksdb_write_buffer_mb * mib,
        "max_write_buffer_number": ROCKSDB_WRITE_BUFFERS,
        "block_cache_size": settings.rocksdb_block_cache_mb * mib,
    }


def changelog_topic_name(settings: Settings) -> str:
    return f"{settings.app_id}-{TABLE_NAME}-changelog"


@dataclass
class JourneyApp:
    """The Faust app and the parts its adapters share."""

    app: faust.App
    settings: Settings
    definition: JourneyDefinition
    touchpoints: faust.TopicT
    customers: faust.Table
    pipeline: Pipeline
    metrics: WorkerMetrics
    #: Live per-partition aggregates for the sidecar (set by worker/aggregates.register).
    aggregates: LiveAggregates | None = None
    #: Churn risk and pain points (set by worker/churn.register).
    churn: ChurnWorker | None = None
    #: The batch protocol: every state change goes through it (set when the batch ingest starts).
    batches: BatchProtocol | None = None
    #: Held by a batch from its first read of a state to its writes, and by the churn timer's
    #: tick: the pipeline changes the states it reads in place (no copies), so nothing else may
    #: read or write a customer in between.
    state_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def create_app(settings: Settings, definition: JourneyDefinition | None = None) -> JourneyApp:
    """Build the worker's Faust app from settings (the CLI, `journey dev` and the tests all use this)."""
    definition = definition or load_definition(settings.journey_path)
    data_dir = settings.data_dir / f"{settings.app_id}-data"
    app = faust.App(
        settings.app_id,
        broker=settings.kafka_broker_url,
        broker_credentials=faust_credentials(settings),
        store="rocksdb://",  # the only store: worker/batch.py writes the states into it
        datadir=str(data_dir),
        autodiscover=False,
        web_enabled=True,
        web_host=settings.web_host,
        web_bind=settings.web_bind,
        web_port=settings.web_port,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=True,
        producer_acks=-1,
        # The batch ingest sends a batch's records for a partition as one produce batch.
        producer_max_batch_size=PRODUCE_BATCH_BYTES,
        consumer_auto_offset_reset="earliest",
        consumer_max_fetch_size=FETCH_PARTITION_BYTES,
        table_standby_replicas=0,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(1.0, settings.session_timeout_s / 10),
        broker_commit_every=settings.batch_size * 4,
        broker_commit_interval=settings.commit_interval_s,
        stream_buffer_maxsize=max(4096, settings.batch_size * 4),
        canonical_url=f"http://{settings.web_host}:{settings.web_port}",
    )
    install_transport(app, fetch_max_wait_ms=settings.fetch_max_wait_ms)
    touchpoints = app.topic(
        settings.topic_touchpoints,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
        retention=timedelta(milliseconds=settings.retention_ms),
    )
    customers: faust.Table = app.tables.add(  # type: ignore[assignment]  # add() returns the table it is given
        CustomerTable(
            app,
            name=TABLE_NAME,
            default=None,
            beacon=app.tables.beacon,
            partitions=settings.partitions,
            # As `journey topics` creates it (worker/topics.py), should this worker create it first.
            extra_topic_configs={"retention.ms": str(settings.retention_ms),
                                 "max.compaction.lag.ms": str(ERASURE_COMPACTION_LAG_MS)},
            options=rocksdb_options(settings),
        )
    )
    metrics = WorkerMetrics(definition)
    limits = Limits(dedupe_window=settings.dedupe_window, order_window=settings.order_window)
    # The pipeline hands the live aggregates each customer's summary from before the batch.
    secret = settings.control_secret.get_secret_value() if settings.control_secret is not None else None
    if secret is None:
        log.warning("JOURNEY_CONTROL_SECRET is not set: identity records and forget requests are signed with a key "
                    "derived from the app id, which any producer that knows it can forge; set a secret in production")
    identity = IdentityRules(junk=junk_ids(settings.identity_junk_ids), alias_window=settings.identity_alias_window,
                             key=control_key(secret, settings.app_id), origin=settings.app_id.encode())
    salt = settings.privacy_salt.get_secret_value() if settings.privacy_salt is not None else None
    if salt is None:
        log.warning("JOURNEY_PRIVACY_SALT is not set: forgotten ids are suppressed under hashes salted with the app id; "
                    "set a secret salt in production (and never change it: that lifts every suppression)")
    pipeline = Pipeline(definition, limits, summarize=summarize, copy_reads=False, identity=identity,
                        privacy=Privacy(salt_key(salt, settings.app_id)))
    japp = JourneyApp(app, settings, definition, touchpoints, customers, pipeline, metrics)
    japp.aggregates = live_aggregates.register(japp)
    japp.churn = churn_risk.register(japp)
    ingest.register(japp)
    privacy.register(japp)
    views.register(japp)
    return japp

