"""Idempotent topic creation and the journey service's standard topics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from journey.errors import BrokerError

if TYPE_CHECKING:
    from journey.settings import Settings

#: The aggregates topic only carries the latest snapshot per key; an hour is plenty.
AGGREGATES_RETENTION_MS = 3600 * 1000
#: Its segments roll this often: Kafka compacts and deletes closed segments only, and the
#: default (a week, or 1 GiB) would leave a starting sidecar hours of snapshots to read.
AGGREGATES_SEGMENT_MS = 600 * 1000
#: Compacted topics that hold personal data (the customer table's changelog, the privacy topic)
#: compact a record away at most this long after a newer one (a tombstone) replaced it.
ERASURE_COMPACTION_LAG_MS = 24 * 3600 * 1000


class TopicError(BrokerError):
    """The broker refused to create a topic."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    #: Always set: some brokers (tansu) misbehave without an explicit retention.
    retention_ms: int
    #: "delete", "compact" or "compact,delete"; None leaves the broker default.
    cleanup_policy: str | None = None
    #: Any further topic configs (string values, Kafka names).
    extra_configs: Mapping[str, str] = field(default_factory=dict)

    def configs(self) -> dict[str, str]:
        configs = {"retention.ms": str(self.retention_ms)}
        if self.cleanup_policy is not None:
            configs["cleanup.policy"] = self.cleanup_policy
        configs.update(self.extra_configs)
        return configs


def journey_topic_specs(settings: Settings) -> list[TopicSpec]:
    """The topics the journey service reads and writes (not Faust's internal ones)."""
    data_topics = [
        settings.topic_touchpoints,
        settings.topic_transitions,
        settings.topic_churn_risk,
        settings.topic_pain_points,
        settings.topic_identities,
    ]
    specs = [
        TopicSpec(name, settings.partitions, settings.replication_factor, settings.retention_ms)
        for name in data_topics
    ]
    # Dead letters hold rejected records' raw values (personal data among them): never kept forever.
    specs.insert(2, TopicSpec(settings.topic_dead_letter, settings.partitions, settings.replication_factor,
                              settings.dead_letter_retention_ms))
    # Forget requests and confirmations, the latest per customer kept (compacted): what was asked
    # and done must outlive the input topic's retention. Partitioned like the input topic, so a
    # customer's request is relayed by the worker that owns the customer.
    specs.append(TopicSpec(settings.topic_privacy, settings.partitions, settings.replication_factor,
                           settings.retention_ms, cleanup_policy="compact",
                           extra_configs={"max.compaction.lag.ms": str(ERASURE_COMPACTION_LAG_MS)}))
    specs.append(
        TopicSpec(
            settings.topic_aggregates,
            settings.partitions,
            settings.replication_factor,
            AGGREGATES_RETENTION_MS,
            cleanup_policy="compact,delete",
            extra_configs={"segment.ms": str(AGGREGATES_SEGMENT_MS)},
        )
    )
    return specs


def unreachable(bootstrap_servers: str, exc: BaseException) -> BrokerError:
    """The error every command gives when no broker answers at ``bootstrap_servers``."""
    return BrokerError(
        f"cannot reach Kafka at {bootstrap_servers} ({exc!r}); start the broker, or point --bootstrap-servers "
        "(JOURNEY_BOOTSTRAP_SERVERS) at where it runs (a secured cluster: check the JOURNEY_KAFKA_* settings too)"
    )


async def check_reachable(bootstrap_servers: str, *, client_options: Mapping[str, Any] | None = None,
                          within_s: float = 30.0, waiting: Callable[[str], None] | None = None) -> None:
    """Raise BrokerError unless a broker answers within ``within_s`` (a broker still starting, as
    beside a worker started at the same time, gets tries every 2 s; ``waiting`` hears of the first
    miss): what `journey worker` checks before it starts, so an unreachable broker is one line that
    says what to do, not a traceback from deep in the consumer."""
    deadline = asyncio.get_running_loop().time() + within_s
    chatty = logging.getLogger("aiokafka")
    level = chatty.level
    chatty.setLevel(logging.CRITICAL)  # its "Unable connect" per try would come before the one line that matters
    try:
        await _probe(bootstrap_servers, client_options, within_s, deadline, waiting)
    finally:
        chatty.setLevel(level)


async def _probe(bootstrap_servers: str, client_options: Mapping[str, Any] | None, within_s: float, deadline: float,
                 waiting: Callable[[str], None] | None) -> None:
    told = False
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=int(within_s * 1000),
                                    **(client_options or {}))
        try:
            await admin.start()
            return
        except KafkaError as exc:
            if asyncio.get_running_loop().time() + 2.0 > deadline:
                raise unreachable(bootstrap_servers, exc) from exc
            if waiting is not None and not told:
                told = True
                waiting(f"Kafka at {bootstrap_servers} does not answer yet ({type(exc).__name__}); trying for up to {within_s:.0f} s")
        finally:
            await admin.close()
        await asyncio.sleep(2.0)


async def ensure_topics(
    bootstrap_servers: str,
    specs: list[TopicSpec],
    *,
    timeout_ms: int = 30_000,
    client_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Create the topics in ``specs`` that do not exist yet; return the names created.

    Existing topics are left as they are (partitions and configs are not altered).
    """
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers, request_timeout_ms=timeout_ms, **(client_options or {})
    )
    try:
        await admin.start()
    except KafkaError as exc:
        await admin.close()
        raise unreachable(bootstrap_servers, exc) from exc
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if not missing:
            return []
        response = await admin.create_topics(
            [
                NewTopic(
                    name=s.name,
                    num_partitions=s.partitions,
                    replication_factor=s.replication_factor,
                    topic_configs=s.configs(),
                )
                for s in missing
            ],
            timeout_ms=timeout_ms,
        )
    finally:
        await admin.close()

    created: list[str] = []
    failures: list[str] = []
    for name, code, *rest in response.topic_errors:
        error = for_code(code)
        if code == 0:
            created.append(name)
        elif error is TopicAlreadyExistsError:
            continue  # someone else created it between our list and create: fine
        else:
            message = rest[0] if rest and isinstance(rest[0], str) else ""
            failures.append(f"{name}: {error.__name__} {message}".strip())
    if failures:
        raise TopicError(
            f"broker {bootstrap_servers} refused to create topics: {'; '.join(failures)}. "
            "Check partitions/replication factor against the cluster size and the configs "
            "(JOURNEY_PARTITIONS, JOURNEY_REPLICATION_FACTOR, JOURNEY_RETENTION_MS)"
        )
    return created
