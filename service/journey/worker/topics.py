"""Every topic a journey deployment needs, the worker's internal changelog included."""

from __future__ import annotations

from journey.kafka.admin import ERASURE_COMPACTION_LAG_MS, TopicSpec, journey_topic_specs
from journey.settings import Settings
from journey.worker.app import changelog_topic_name


def all_topic_specs(settings: Settings) -> list[TopicSpec]:
    """The journey topics plus the customer table's changelog (compacted: it is the state)."""
    return [
        *journey_topic_specs(settings),
        TopicSpec(
            changelog_topic_name(settings),
            settings.partitions,
            settings.replication_factor,
            settings.retention_ms,
            cleanup_policy="compact",
            # A forgotten customer's older states are compacted away within a day (docs/privacy.md).
            extra_configs={"max.compaction.lag.ms": str(ERASURE_COMPACTION_LAG_MS)},
        ),
    ]
