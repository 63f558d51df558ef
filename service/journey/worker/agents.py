"""The Faust agent: a thin adapter that feeds batches of records to the pipeline and sends its output."""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from typing import TYPE_CHECKING, Any, Awaitable, Sequence

from faust.streams import _current_event

from journey.worker.pipeline import BatchResult, Output, Record, transition_output

if TYPE_CHECKING:
    from journey.worker.app import JourneyApp

log = logging.getLogger(__name__)


def register(japp: "JourneyApp") -> None:
    app, settings = japp.app, japp.settings

    @app.agent(japp.touchpoints, name="journey.apply-touchpoints")
    async def apply_touchpoints(stream: Any) -> None:
        async for events in stream.take_events(settings.batch_size, within=settings.batch_window_s):
            try:
                await handle_batch(japp, events)
            except Exception:  # bad records never get here: they are dead-lettered in the pipeline
                # An infrastructure failure (e.g. outputs not acknowledged after the producer's
                # retries). Continuing would ack the batch and commit past records whose outputs
                # or state were never written; exiting now leaves the offsets where they were, so
                # the restarted worker (or the one taking over) replays the batch.
                log.critical("a batch could not be completed; exiting so it is replayed", exc_info=True)
                logging.shutdown()
                os._exit(70)


async def handle_batch(japp: "JourneyApp", events: Sequence[Any]) -> BatchResult:
    """decode, validate, dedupe, apply (the pipeline), then emit: outputs first, state second."""
    records = [
        Record(e.message.key, e.message.value, e.message.topic, e.message.partition, e.message.offset, e, e.message.timestamp)
        for e in events
    ]
    result = japp.pipeline.process(records, japp.customers)
    settings = japp.settings
    producer = japp.app.producer
    pending: list[Awaitable[Any]] = []

    async def send(topic: str, out: Output) -> None:
        pending.append(await producer.send(topic, out.key, out.value, None, None, None))

    for t in result.transitions:
        await send(settings.topic_transitions, transition_output(t))
    for out in result.dead_letters:
        await send(settings.topic_dead_letter, out)
    for out in result.rekeyed:
        await send(settings.topic_touchpoints, out)
    # Outputs are acknowledged before the state that records them is written: after a crash the
    # batch is replayed and re-emits them (same transition ids) instead of losing them.
    if pending:
        await asyncio.gather(*pending)
    # Churn risk and pain points: re-scores the batch's customers, sends and
    # acknowledges its events, and updates their states in place for write_states below.
    if japp.churn is not None:
        await japp.churn.after_batch(records, result)
    write_states(japp, result)
    # Live aggregates: in the same synchronous stretch as the writes (see worker/aggregates.py).
    if japp.aggregates is not None:
        japp.aggregates.observe(records, result)
    japp.metrics.observe_batch(result, len(records))
    return result


def write_states(japp: "JourneyApp", result: BatchResult) -> None:
    table = japp.customers
    for key, (rec, state, _before) in result.writes.items():
        # Faust picks the changelog (and RocksDB) partition from the "current event"; in a batch
        # that spans partitions it must be an event of this customer's partition.
        token = _current_event.set(weakref.ref(rec.ref))
        try:
            table[key] = state
        finally:
            _current_event.reset(token)
