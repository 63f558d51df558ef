"""The Faust agent: a thin adapter that feeds batches of records to the pipeline and sends its output."""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from typing import TYPE_CHECKING, Any, Callable, Sequence

from faust.streams import _current_event

from journey.worker.pipeline import BatchResult, Record, transition_output
from journey.worker.produce import send_each

if TYPE_CHECKING:
    from journey.worker.app import JourneyApp
    from journey.worker.produce import BatchSender, Sent
    from journey.worker.statewrites import StateWrites

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
    """A batch of Faust events through handle_records."""
    records = [
        Record(e.message.key, e.message.value, e.message.topic, e.message.partition, e.message.offset, e, e.message.timestamp)
        for e in events
    ]
    result, _ = await handle_records(japp, records)
    return result


async def handle_records(
    japp: "JourneyApp",
    records: Sequence[Record],
    read: Callable[[str, int], Any] | None = None,
    *,
    sender: "BatchSender | None" = None,
    state_writes: "StateWrites | None" = None,
) -> tuple[BatchResult, "asyncio.Future[list[Sent]]"]:
    """decode, validate, dedupe, apply (the pipeline), then emit: outputs first, state second.

    ``rec.ref`` of every record must be an event of its partition (write_states needs it);
    ``read(key, partition)`` is how the pipeline reads customers (default: from the table). With
    ``sender`` the outputs go out as produce batches.

    Returns the batch's result and a future of its changelog batches. With ``state_writes`` the
    call returns as soon as the outputs are handed to the producer and the states are staged:
    the states are written (store, then changelog) once the outputs are acknowledged, in a
    stage the future stands for, while the caller may already run the next batch. Without, it
    returns when everything is written (the table's own path).
    """
    async with japp.state_lock:
        result, outputs = _process(japp, records, read)
        if state_writes is not None and sender is not None:
            sent = await sender.send((topic, None, key, value) for topic, key, value in outputs) if outputs else []
            observe = _observer(japp, records, result)
            # Outputs are acknowledged before the states that record them are written: after a
            # crash the batch is replayed and re-emits them (same ids) instead of losing them.
            # Live aggregates are updated with the staging: in the same synchronous stretch as
            # the states' in-place changes (see worker/aggregates.py).
            stage = state_writes.stage(
                ((key, rec.partition, state) for key, (rec, state, _before) in result.writes.items()),
                after=[s.future for s in sent],
                on_written=lambda: japp.metrics.observe_batch(result, len(records)),
            )
            observe()
            return result, stage
        await _send_and_wait(japp, outputs, sender)
        write_states(japp, result)
        _observer(japp, records, result)()
        japp.metrics.observe_batch(result, len(records))
        done: asyncio.Future[list[Sent]] = asyncio.get_running_loop().create_future()
        done.set_result([])
        return result, done


def _process(
    japp: "JourneyApp", records: Sequence[Record], read: Callable[[str, int], Any] | None
) -> tuple[BatchResult, list[tuple[str, bytes | None, bytes]]]:
    """The pure part: the pipeline, then the churn hook; the outputs to send."""
    result = japp.pipeline.process(records, japp.customers, read=read)
    settings = japp.settings
    outputs: list[tuple[str, bytes | None, bytes]] = [
        *((settings.topic_transitions, o.key, o.value) for o in map(transition_output, result.transitions)),
        *((settings.topic_dead_letter, o.key, o.value) for o in result.dead_letters),
        *((settings.topic_touchpoints, o.key, o.value) for o in result.rekeyed),
    ]
    # Churn risk and pain points: re-scores the batch's customers (their states are updated in
    # place for the writes); its events go out with the batch's other outputs.
    if japp.churn is not None:
        outputs.extend(japp.churn.score_batch(result) or ())
    return result, outputs


def _observer(japp: "JourneyApp", records: Sequence[Record], result: BatchResult) -> Callable[[], None]:
    def observe() -> None:
        if japp.aggregates is not None:
            japp.aggregates.observe(records, result)

    return observe


async def _send_and_wait(japp: "JourneyApp", outputs: list[tuple[str, bytes | None, bytes]], sender: "BatchSender | None") -> None:
    if not outputs:
        return
    if sender is not None:
        sent = await sender.send((topic, None, key, value) for topic, key, value in outputs)
        await asyncio.gather(*(s.future for s in sent))
        return
    await send_each(japp.app.producer, outputs)


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
