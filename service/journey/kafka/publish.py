"""Publishing a few records once (the privacy requests of `journey forget` and the sidecar's
DELETE /customers/{id}): a producer per call, acknowledged by every in-sync replica."""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from journey.errors import BrokerError
from journey.kafka.admin import unreachable
from journey.kafka.security import client_options
from journey.settings import Settings

#: (key, value, headers) of one record.
Record = tuple[bytes | None, bytes | None, tuple[tuple[str, bytes], ...]]


async def publish_once(settings: Settings, topic: str, records: Sequence[Record], *, timeout_ms: int = 15_000) -> None:
    """Send ``records`` to ``topic`` and wait for the acknowledgements; BrokerError (saying what to
    check) when the broker is not there, the topic does not exist or the write is refused."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers, acks="all", request_timeout_ms=timeout_ms,
        **client_options(settings),
    )
    try:
        await producer.start()
    except KafkaError as exc:
        await producer.stop()
        raise unreachable(settings.bootstrap_servers, exc) from None
    try:
        try:
            partitions = await producer.partitions_for(topic)
        except KafkaError:
            partitions = None
        if not partitions:
            raise BrokerError(
                f"topic {topic!r} does not exist at {settings.bootstrap_servers}; run `journey topics` (it creates "
                "every topic journey needs) with the same JOURNEY_* settings"
            )
        for key, value, headers in records:
            await producer.send_and_wait(topic, value, key=key, headers=list(headers))
    except KafkaError as exc:
        raise BrokerError(
            f"could not publish to {topic!r} at {settings.bootstrap_servers} ({type(exc).__name__}: {exc}); "
            "check the broker and this principal's write permission on the topic"
        ) from None
    finally:
        await producer.stop()
