"""The worker's Prometheus metrics. Labels are bounded: never a customer id, never a free-form type."""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable, Mapping
from operator import attrgetter, itemgetter
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from journey.core.definition import JourneyDefinition
from journey.core.events import CHANNELS
from journey.core.stages import STAGES
from journey.worker.faust_internals import observe_all
from journey.worker.pipeline import BatchResult, control_headers

#: Types outside the journey definition share one label value, so a producer sending random
#: types cannot blow up the number of series.
OTHER_TYPE = "other"
#: (type, channel) of a BatchResult.applied entry.
_type_channel = itemgetter(1, 2)
_move = attrgetter("from_stage", "to_stage")


class WorkerMetrics:
    def __init__(self, definition: JourneyDefinition, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.known_types = (
            set(definition.type_stage) | definition.purchase_types | definition.renewal_types
            | definition.advocacy_types | definition.negative_types | {definition.review_type}
        )
        self.touchpoints = Counter(
            "journey_touchpoints_consumed_total", "Touchpoints applied, by type and channel "
            "(types outside the journey definition are labelled 'other')", ["type", "channel"], registry=r,
        )
        self.dead_letters = Counter("journey_dead_letters_total", "Records sent to the dead-letter topic, by reason", ["reason"], registry=r)
        self.duplicates = Counter("journey_duplicate_touchpoints_total", "Touchpoints dropped as duplicate deliveries", registry=r)
        self.rekeyed = Counter("journey_rekeyed_touchpoints_total", "Touchpoints re-published under their customer's key", registry=r)
        self.foreign = Counter(
            "journey_foreign_records_total",
            "Records another deployment's workers (another app id) wrote to the input topic, dropped: this one writes its own",
            registry=r,
        )
        self.transitions = Counter("journey_stage_transitions_total", "Stage transitions published", ["from_stage", "to_stage"], registry=r)
        self.latency = Histogram(
            "journey_event_to_transition_seconds",
            "From a touchpoint's arrival in Kafka (record timestamp) to its transition being acknowledged",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.batch_size = Histogram(
            "journey_batch_records", "Records per processed batch",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000), registry=r,
        )
        self.event_time = Gauge("journey_event_time_seconds", "Highest touchpoint event time seen (the event-time clock), epoch seconds", registry=r)
        self.last_batch = Gauge("journey_last_batch_timestamp_seconds", "Wall-clock time of the last processed batch", registry=r)
        self.customers = Gauge("journey_customers", "Customers standing in each stage (this worker's partitions)", ["stage"], registry=r)
        # Churn risk and pain points; labels bounded: levels, kinds, stages, channels
        self.churn_risk = Counter("journey_churn_risk_events_total", "Churn-risk events published (level changes), by new level", ["level"], registry=r)
        self.pain_points = Counter("journey_pain_points_total", "Pain points published, by kind, stage and channel", ["kind", "stage", "channel"], registry=r)
        self.identity_merges = Counter(
            "journey_identity_merges_total", "Anonymous ids linked to a customer (their journeys merged)", registry=r,
        )
        self.identity_conflicts = Counter(
            "journey_identity_conflicts_total",
            "Link requests refused because the anonymous id is already linked to another customer (shared devices)",
            registry=r,
        )
        self.churn_timer_customers = Gauge("journey_churn_timer_customers", "Customers in the churn timer index (this worker)", registry=r)

        for name in (*STAGES, "none"):
            self.customers.labels(stage=name)
        for ch in CHANNELS:
            self.touchpoints.labels(type=OTHER_TYPE, channel=ch)
        self._event_time = float("-inf")
        self._touchpoint_children: dict[tuple[str, str], Any] = {}
        self._transition_children: dict[tuple[str, str], Any] = {}

    def watch_state_cache(self, cache: Any) -> None:
        """Export a StateCache's counts at scrape time: its hit ratio says whether
        JOURNEY_STATE_CACHE is large enough for this worker's active customers."""
        self.registry.register(_StateCacheCollector(cache))

    def watch_routing(self, misplaced: Callable[[], int]) -> None:
        """Export journey_misplaced_input_chunks_total (worker/routing.py) at scrape time."""
        self.registry.register(_RoutingCollector(misplaced))

    def watch_lag(self, topic: str, lags: Callable[[], Mapping[int, int | None]]) -> None:
        """Export journey_consumer_lag{topic, partition} as ``lags()`` says at scrape time (None:
        the partition's end is not known yet, no series): a gauge set by a timer would lag
        behind a worker that works through a backlog within a second or two."""
        self.registry.register(_LagCollector(topic, lags))

    @staticmethod
    def _child(cache: dict[tuple[str, str], Any], metric: Any, labels: tuple[str, str]) -> Any:
        # labels() costs a lock and a few lookups: once per label pair, not per event.
        child = cache.get(labels)
        if child is None:
            child = cache[labels] = metric.labels(*labels)
        return child

    def observe_batch(self, result: BatchResult, n_records: int) -> None:
        self.batch_size.observe(n_records)
        known = self.known_types
        counts: dict[tuple[str, str], int] = {}
        # Tallied in C per (type, channel) first: a batch holds few distinct pairs.
        for (etype, channel), n in Tally(map(_type_channel, result.applied)).items():
            labels = (etype if etype in known else OTHER_TYPE, channel)
            counts[labels] = counts.get(labels, 0) + n
        for labels, n in counts.items():
            self._child(self._touchpoint_children, self.touchpoints, labels).inc(n)
        for reason in result.reasons:
            self.dead_letters.labels(reason=reason).inc()
        if result.duplicates:
            self.duplicates.inc(result.duplicates)
        if result.rekeyed:
            self.rekeyed.inc(sum(1 for o in result.rekeyed if not control_headers(o.headers or ())[0]))  # not identity requests
        if result.foreign:
            self.foreign.inc(result.foreign)
        if result.merges:
            self.identity_merges.inc(result.merges)
        if result.conflicts:
            self.identity_conflicts.inc(result.conflicts)
        for (from_stage, to_stage), n in Tally(map(_move, result.transitions)).items():
            move = (STAGES[from_stage] if from_stage >= 0 else "none", STAGES[to_stage])
            self._child(self._transition_children, self.transitions, move).inc(n)
        now = time.time()
        if result.trigger_timestamps:
            observe_all(self.latency, [now - ts for ts in result.trigger_timestamps])
        if result.max_event_time is not None:
            if result.max_event_time > self._event_time:
                self._event_time = result.max_event_time
                self.event_time.set(result.max_event_time)
        self.last_batch.set(now)


class _LagCollector:
    """journey_consumer_lag per assigned input partition, read when scraped."""

    def __init__(self, topic: str, lags: Callable[[], Mapping[int, int | None]]) -> None:
        self.topic = topic
        self.lags = lags

    def collect(self) -> Any:
        family = GaugeMetricFamily("journey_consumer_lag", "Records not yet processed, per input partition", labels=["topic", "partition"])
        for partition, lag in self.lags().items():
            if lag is not None:
                family.add_metric([self.topic, str(partition)], lag)
        yield family


class _RoutingCollector:
    def __init__(self, misplaced: Callable[[], int]) -> None:
        self.misplaced = misplaced

    def collect(self) -> Any:
        family = CounterMetricFamily(
            "journey_misplaced_input_chunks",
            "Fetched chunks of input whose checked record is not on the partition Kafka's default partitioner "
            "(murmur2) gives its key: a producer partitioning another way splits customers (see the worker's warning)",
        )
        family.add_metric([], self.misplaced())
        yield family


class _StateCacheCollector:
    """journey_state_cache_reads_total{result=hit|miss} and journey_state_cache_customers."""

    def __init__(self, cache: Any) -> None:
        self.cache = cache

    def collect(self) -> Any:
        reads = CounterMetricFamily(
            "journey_state_cache_reads",
            "Customer state reads by the batch path, by result (hit: decoded in memory; miss: read from the store)",
            labels=["result"],
        )
        reads.add_metric(["hit"], self.cache.hits)
        reads.add_metric(["miss"], self.cache.misses)
        yield reads
        yield GaugeMetricFamily("journey_state_cache_customers", "Customers whose state is kept decoded in memory", value=len(self.cache))
