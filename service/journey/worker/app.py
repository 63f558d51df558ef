"""The Faust app factory: topics, the customer table, the agent and the worker's web views.

Everything journey-specific is decided by the pure core; this module only wires it to Faust.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

import faust
from faust.serializers import codecs

from journey.core.definition import JourneyDefinition, load_definition
from journey.core.machine import Limits
from journey.core.state import CustomerState
from journey.settings import Settings
from journey.worker.metrics import WorkerMetrics
from journey.worker.pipeline import Pipeline

log = logging.getLogger(__name__)

TABLE_NAME = "customers"


class StateCodec(codecs.Codec):
    """CustomerState <-> its compact changelog encoding."""

    def _dumps(self, obj: CustomerState) -> bytes:
        return obj.to_wire()

    def _loads(self, s: bytes) -> CustomerState:
        return CustomerState.from_wire(s)


class TextCodec(codecs.Codec):
    """str <-> UTF-8 bytes (faust's 'raw' would hand back bytes after a recovery)."""

    def _dumps(self, obj: str) -> bytes:
        return obj.encode() if isinstance(obj, str) else obj

    def _loads(self, s: bytes) -> str:
        return s.decode()


codecs.register("journey_state", StateCodec())
codecs.register("journey_text", TextCodec())


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


def create_app(settings: Settings, definition: JourneyDefinition | None = None) -> JourneyApp:
    """Build the worker's Faust app from settings (the CLI, `journey dev` and the tests all use this)."""
    from journey.worker import agents, recovery, views

    definition = definition or load_definition(settings.journey_path)
    data_dir = settings.data_dir / f"{settings.app_id}-data"
    app = faust.App(
        settings.app_id,
        broker=settings.kafka_broker_url,
        store=settings.store,
        datadir=str(data_dir),
        autodiscover=False,
        web_enabled=True,
        web_host=settings.web_host,
        web_port=settings.web_port,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=True,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        table_standby_replicas=0,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(1.0, settings.session_timeout_s / 10),
        broker_commit_every=settings.batch_size * 4,
        broker_commit_interval=settings.commit_interval_s,
        stream_buffer_maxsize=max(4096, settings.batch_size * 4),
        stream_wait_empty=False,
        canonical_url=f"http://{settings.web_host}:{settings.web_port}",
    )
    recovery.use_true_highwaters(app)
    touchpoints = app.topic(
        settings.topic_touchpoints,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
        retention=timedelta(milliseconds=settings.retention_ms),
    )
    customers = app.Table(
        TABLE_NAME,
        default=None,
        partitions=settings.partitions,
        extra_topic_configs={"retention.ms": str(settings.retention_ms)},
    )
    # faust derives table serializers from model types only; set ours before the store and the
    # changelog topic (both built lazily) are created.
    customers.key_serializer = "journey_text"
    customers.value_serializer = "journey_state"
    metrics = WorkerMetrics(definition)
    limits = Limits(dedupe_window=settings.dedupe_window, order_window=settings.order_window)
    pipeline = Pipeline(definition, limits)
    japp = JourneyApp(app, settings, definition, touchpoints, customers, pipeline, metrics)
    agents.register(japp)
    views.register(japp)
    return japp

