"""The sidecar's Prometheus metrics, computed from the merged snapshots at scrape time.

Named journey_sidecar_* so that summing the workers' own journey_customers{stage} and these
never double-counts.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from journey.core.funnel import reached_counts
from journey.core.stages import STAGES

if TYPE_CHECKING:
    from journey.sidecar.state import SidecarState


class SidecarCollector(Collector):
    def __init__(self, state: SidecarState) -> None:
        self.state = state

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        book, consumer = self.state.book, self.state.consumer
        agg = book.merged()
        slots = agg.slots()
        customers = GaugeMetricFamily(
            "journey_sidecar_customers", "Customers standing in each stage now, all partitions ('none': no stage yet)", labels=["stage"]
        )
        customers.add_metric(["none"], slots[0])
        for i, name in enumerate(STAGES):
            customers.add_metric([name], slots[i + 1])
        yield customers
        reached = GaugeMetricFamily("journey_sidecar_customers_reached", "Customers at or past each stage, all partitions", labels=["stage"])
        for name, n in zip(STAGES, reached_counts(slots), strict=True):
            reached.add_metric([name], n)
        yield reached
        churn = GaugeMetricFamily("journey_sidecar_churn_risk_customers", "Customers per current churn-risk level", labels=["level"])
        for level, n in sorted(agg.churn.items()):
            churn.add_metric([level], n)
        yield churn
        pain = GaugeMetricFamily("journey_sidecar_pain_points", "Pain points recorded in customer states, by kind", labels=["kind"])
        for kind, n in sorted(agg.pain.items()):
            pain.add_metric([kind], n)
        yield pain
        now = time.time()
        ages = book.ages(now)
        age = GaugeMetricFamily(
            "journey_sidecar_snapshot_age_seconds", "Seconds since the held snapshot of each input partition was taken", labels=["partition"]
        )
        for p, a in ages.items():
            age.add_metric([str(p)], a)
        yield age
        yield GaugeMetricFamily(
            "journey_sidecar_staleness_seconds", "Age of the oldest partition snapshot behind the numbers",
            value=max(ages.values(), default=0.0),
        )
        yield GaugeMetricFamily(
            "journey_sidecar_partitions_missing", "Input partitions with no snapshot yet",
            value=len(book.missing(consumer.input_partitions)),
        )
        yield GaugeMetricFamily("journey_sidecar_ready", "1 when /readyz answers ready", value=1.0 if self.state.ready()[0] else 0.0)
        snaps = CounterMetricFamily("journey_sidecar_snapshots", "Snapshots read from the aggregates topic, by outcome", labels=["outcome"])
        snaps.add_metric(["kept"], book.accepted)
        snaps.add_metric(["superseded"], book.superseded)
        snaps.add_metric(["invalid"], consumer.invalid)
        yield snaps


def sidecar_registry(state: SidecarState) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(SidecarCollector(state))
    return registry
