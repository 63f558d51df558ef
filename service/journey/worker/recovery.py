"""Make Faust's table recovery read changelogs to their true end.

The problem: Faust decides how far to replay a table's changelog from
``consumer.highwaters()`` (faust/tables/recovery.py ``_build_highwaters``),
which ends in aiokafka ``end_offsets()`` -- a ListOffsets request. The
embedded tansu broker answers that with "last record batch's base offset + 1",
so a worker taking over partitions stopped replaying one batch early and its
table silently lost updates (2,990 of 3,000 in our failover test).

The fix: a Faust transport whose consumer thread answers ``highwaters()``
from Fetch responses (:func:`journey.kafka.offsets.true_highwaters`), which
are right on tansu and -- being the same number ListOffsets returns there --
on Apache Kafka. It reuses the consumer's own aiokafka client (connections,
SSL/SASL) and costs one extra Fetch per leader per recovery.

Faust has a hook for this: ``App._new_transport`` picks the transport class
from the broker URL scheme and the transport's ``Consumer`` builds the
consumer thread via ``_new_consumer_thread()``. So no monkeypatching: we
subclass the three classes and hand the app our transport.

Usage -- in the app factory, after the App (and its config) exists and
before the worker starts::

    app = faust.App("journey", broker=settings.kafka_broker_url, ...)
    use_true_highwaters(app)
"""

from __future__ import annotations

import logging
import time
from typing import List, Mapping, cast

import aiokafka
import faust
from faust.transport import drivers as faust_drivers
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from journey.kafka.offsets import true_highwaters

logger = logging.getLogger(__name__)


class TrueHighwaterConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Consumer thread whose ``highwaters()`` come from Fetch responses (and whose fetch wait
    is the transport's ``fetch_max_wait_ms``)."""

    def _create_worker_consumer(self, transport: faust_aiokafka.Transport) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        wait_ms = getattr(transport, "fetch_max_wait_ms", None)
        if wait_ms is not None:
            # Faust hard-codes 1500 ms. A broker that answers a waiting fetch only when the
            # wait expires (the embedded tansu does) then delays every record by up to that
            # much; aiokafka reads this when the consumer starts its fetcher.
            consumer._fetch_max_wait_ms = int(wait_ms)
        return consumer

    async def _highwaters(self, partitions: List[TP]) -> Mapping[TP, int]:
        if self.consumer.in_transaction:
            # Exactly-once mode reads the last stable offset from fetch state already.
            return await super()._highwaters(partitions)
        consumer = self._ensure_consumer()
        # ListOffsets is a lower bound of the end on every broker: a good place to probe from.
        hints = await consumer.end_offsets(partitions)
        started = time.monotonic()
        highwaters = await true_highwaters(
            consumer._client,
            hints,
            timeout_s=float(self.app.conf.broker_request_timeout),
        )
        short = {tp: (hints[tp], hw) for tp, hw in highwaters.items() if hints.get(tp) != hw}
        if short:
            # Expected on the embedded tansu broker; on Apache Kafka this means records
            # arrived between the two requests.
            example = ", ".join(f"{tp.topic}[{tp.partition}] {a}->{b}" for tp, (a, b) in list(short.items())[:3])
            logger.info(
                "ListOffsets under-reported the end of %d of %d partition(s) (%s); "
                "recovering to the fetch highwaters (%.0f ms)",
                len(short), len(highwaters), example, (time.monotonic() - started) * 1000,
            )
        return cast(Mapping[TP, int], highwaters)


class TrueHighwaterConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> TrueHighwaterConsumerThread:
        return TrueHighwaterConsumerThread(self, loop=self.loop, beacon=self.beacon)


class TrueHighwaterTransport(faust_aiokafka.Transport):
    """The aiokafka transport, with :class:`TrueHighwaterConsumer`."""

    Consumer = TrueHighwaterConsumer
    #: The consumer's fetch.max.wait.ms; None keeps Faust's 1500 ms.
    fetch_max_wait_ms: int | None = None


class RecoverySetupError(RuntimeError):
    """``use_true_highwaters`` was called on an app it cannot change."""


def use_true_highwaters(app: faust.App, *, fetch_max_wait_ms: int | None = None) -> None:
    """Give ``app`` a transport whose table recovery reads changelogs to their true end.

    Call it once the app and its configuration exist (after ``faust.App(...)``
    and any ``config_from_object``) and before the worker starts. Agents and
    tables may be declared before or after. Idempotent. ``fetch_max_wait_ms``
    replaces Faust's fixed 1500 ms fetch wait (None keeps it).
    """
    if isinstance(app._transport, TrueHighwaterTransport):
        if fetch_max_wait_ms is not None:
            app._transport.fetch_max_wait_ms = fetch_max_wait_ms
        return
    if app._consumer is not None:
        raise RecoverySetupError(
            f"app {app.conf.id!r} already built its Kafka consumer, so its transport can no "
            "longer be swapped; call use_true_highwaters(app) in the app factory, before the "
            "worker starts"
        )
    url = app.conf.broker_consumer[0]
    try:
        chosen: object = faust_drivers.by_url(url)
    except ImportError as exc:  # unknown scheme, or a driver whose client is not installed
        chosen = exc
    if not (isinstance(chosen, type) and issubclass(chosen, faust_aiokafka.Transport)):
        raise RecoverySetupError(
            f"broker URL {str(url)!r} selects transport {chosen!r}, but true-highwater "
            "recovery only supports the aiokafka transport; use a kafka:// broker URL"
        )
    if app._transport is not None and type(app._transport) is not faust_aiokafka.Transport:
        raise RecoverySetupError(
            f"app {app.conf.id!r} already uses a custom transport "
            f"{type(app._transport).__qualname__}; combine it with TrueHighwaterConsumer "
            "yourself instead of calling use_true_highwaters"
        )
    # Safe even if app.topics already built the conductor: the conductor only holds
    # the app, and the consumer and producer are created from app.transport later.
    transport = TrueHighwaterTransport(app.conf.broker_consumer, app)
    transport.fetch_max_wait_ms = fetch_max_wait_ms
    app.transport = transport
