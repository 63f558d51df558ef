"""ensure_topics against the embedded broker."""

from __future__ import annotations

import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from journey.kafka.admin import TopicSpec, ensure_topics, journey_topic_specs
from journey.settings import Settings

pytestmark = pytest.mark.integration


async def _describe(broker: str, topic: str) -> tuple[int, dict[str, str]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=broker)
    await admin.start()
    try:
        [meta] = await admin.describe_topics([topic])
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    [resource] = response.resources
    configs = {entry[0]: entry[1] for entry in resource[4]}
    return len(meta["partitions"]), configs


async def test_ensure_topics_creates_once_with_configs(broker: str) -> None:
    suffix = uuid.uuid4().hex[:8]
    specs = [
        TopicSpec(f"plain-{suffix}", 3, 1, 60_000),
        TopicSpec(f"compacted-{suffix}", 2, 1, 120_000, cleanup_policy="compact,delete", extra_configs={"segment.ms": "600000"}),
    ]
    assert await ensure_topics(broker, specs) == [s.name for s in specs]
    assert await ensure_topics(broker, specs) == []

    partitions, configs = await _describe(broker, specs[1].name)
    assert partitions == specs[1].partitions
    assert configs["retention.ms"] == str(specs[1].retention_ms)
    assert configs["cleanup.policy"] == "compact,delete"
    assert configs["segment.ms"] == "600000"


async def test_only_missing_topics_are_created(broker: str) -> None:
    suffix = uuid.uuid4().hex[:8]
    first = TopicSpec(f"first-{suffix}", 1, 1, 60_000)
    second = TopicSpec(f"second-{suffix}", 1, 1, 60_000)
    await ensure_topics(broker, [first])
    assert await ensure_topics(broker, [first, second]) == [second.name]


def test_journey_topic_specs_follow_settings() -> None:
    settings = Settings(partitions=5, replication_factor=1, retention_ms=1234, topic_touchpoints="tp-x")
    specs = {s.name: s for s in journey_topic_specs(settings)}
    assert set(specs) == {
        "tp-x",
        settings.topic_transitions,
        settings.topic_dead_letter,
        settings.topic_churn_risk,
        settings.topic_pain_points,
        settings.topic_aggregates,
        settings.topic_identities,
        settings.topic_privacy,
    }
    for name in ("tp-x", settings.topic_transitions, settings.topic_pain_points):
        assert specs[name].partitions == 5
        assert specs[name].configs() == {"retention.ms": "1234"}
    aggregates = specs[settings.topic_aggregates].configs()
    assert aggregates == {"retention.ms": str(3600 * 1000), "cleanup.policy": "compact,delete", "segment.ms": str(600 * 1000)}
