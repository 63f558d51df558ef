"""The batch protocol: the order in which a batch's outputs, states and input offsets become
durable, so that a crash at any point replays the batch instead of losing or inventing anything.

Every change of a customer's state goes through :meth:`BatchProtocol.stage`, the input batches'
and the churn timer's alike; :meth:`BatchProtocol.run_batch` is the input batch, read top to
bottom as numbered steps. docs/architecture.md has the same steps with a diagram.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Any

from faust.types import TP

from journey.core.state import CustomerState
from journey.worker.pipeline import BatchResult, InputRecord, transition_output
from journey.worker.produce import BatchSender, Sent
from journey.worker.store import StateStore

if TYPE_CHECKING:
    from journey.worker.app import JourneyApp

log = logging.getLogger(__name__)

#: An infrastructure failure in a batch exits the worker with this code (see exit_replaying).
EXIT_BATCH_FAILED = 70

#: (topic, key, value, headers) of an output record; its partition follows from the key.
Output = tuple[str, bytes | None, bytes, tuple[tuple[str, bytes], ...] | None]
#: Input offsets a batch completes: first..last (inclusive) per partition.
Spans = Mapping[TP, tuple[int, int]]


def spans_of(records: Iterable[InputRecord]) -> dict[TP, tuple[int, int]]:
    """Each partition's (first, last) offsets of records in offset order: the spans of records
    built by hand (tests, benchmarks); the ingest takes its own from its fetched chunks."""
    spans: dict[TP, tuple[int, int]] = {}
    for r in records:
        tp = TP(r.topic, r.partition)
        span = spans.get(tp)
        spans[tp] = (r.offset if span is None else span[0], r.offset)
    return spans


def exit_replaying(what: str) -> None:
    """Exit now, leaving the input offsets where they are: whoever owns the partition next
    (this worker, restarted) replays from the last commit. Acking instead would commit past
    records whose outputs or state were never written."""
    log.critical("%s; exiting so it is replayed", what, exc_info=True)
    logging.shutdown()
    os._exit(EXIT_BATCH_FAILED)


@dataclass(slots=True)
class Stage:
    """One staged set of state changes on its way to durable."""

    #: Set once the stage's changelog records are with the producer (the next stage's go after).
    handed_over: asyncio.Future[None]
    #: Done once the stage is durable: changelog acknowledged, store written, offsets marked.
    done: asyncio.Future[None]


class BatchProtocol:
    """Runs input batches and stages state changes, one stage after another."""

    def __init__(
        self,
        japp: JourneyApp,
        store: StateStore,
        sender: BatchSender,
        *,
        ack_offsets: Callable[[Spans], None],
        on_failure: Callable[[str], None] = exit_replaying,
    ) -> None:
        self.japp = japp
        self.store = store
        self.sender = sender
        self.ack_offsets = ack_offsets
        self.on_failure = on_failure
        self._last: Stage | None = None
        #: How long the last batch's steps 1-4 took, wall clock.
        self.last_busy_s = 0.0

    async def run_batch(self, records: Sequence[InputRecord], spans: Spans) -> Stage:
        """One batch of input records. Steps 1-4 run under the state lock and return; 5-9 run
        in the stage's own task while the next batch runs its steps 1-4 (at most one ahead).

        1. Process (pure): decode, validate, dedupe, apply; re-score churn for the customers
           the batch touched. States change in place (nothing is written yet).
           A crash: nothing left the process; the batch is replayed from the committed offsets.
        2. Hand the outputs to the producer: transitions, churn-risk and pain-point events,
           dead letters, re-keyed records.
           A crash: some may be in Kafka; the replay sends them again with the same ids.
        3. Stage the states: encode them now (the next batch may change the objects in place)
           and keep them in the cache, so reads see them before the store does.
        4. Fold the batch into the live aggregates (in the same stretch as the in-place
           changes, so the aggregates always equal the states).
        5. Wait for the outputs' acknowledgements. Not acknowledged: exit; replay (as 2).
        6. Hand the states to the changelog, after the previous stage's (per-customer order).
        7. Wait for the changelog's acknowledgements. A crash before: the changelog may miss
           the batch; the store does too (it is written after), and the input offsets are not
           marked: the replay applies the batch again and writes it.
        8. After the previous stage is done, write the states into RocksDB (one WriteBatch per
           partition) and record the changelog offset there. A crash before: the changelog is
           ahead of the store; recovery replays the changelog from the recorded offset, so the
           store catches up before the partition is consumed again.
        9. Mark the input offsets done. Faust commits them with its next commit (every
           ``commit_interval_s``, after flushing its producer). A crash before the commit: the
           batch is replayed; dedupe (event ids kept in the state) makes it change nothing, and
           its outputs go out again with the same ids.
        """
        japp = self.japp
        async with japp.state_lock:
            started = perf_counter()
            result, outputs = process(japp, records, self.store.read)  # 1
            stage = await self.stage(  # 2, 3 (and 5-9 in the stage's task)
                ((key, rec.partition, state) for key, (rec, state, _before) in result.writes.items()),
                outputs,
                spans=spans,
                on_durable=lambda: japp.metrics.observe_batch(result, len(records)),
            )
            if japp.aggregates is not None:
                japp.aggregates.observe(spans, result)  # 4
            # Steps 1-4 hold the event loop (nothing in them waits but a first metadata request):
            # what the next batch's size is sized by (worker/batchsize.py).
            self.last_busy_s = perf_counter() - started
        return stage

    async def stage(
        self,
        states: Iterable[tuple[str, int, CustomerState | None]],
        outputs: Sequence[Output],
        *,
        spans: Spans | None = None,
        on_durable: Callable[[], None] | None = None,
    ) -> Stage:
        """Steps 2 and 3 for (key, partition, state) and the outputs that record them; steps 5-9
        follow in a task of the stage's own. Call it under JourneyApp.state_lock.

        A state of None deletes the customer (a forget): a tombstone on the changelog (step 6) and
        a delete in RocksDB (step 8), in the same order as any write; reads see None from now on."""
        sent = await self.sender.send((topic, None, key, value, headers) for topic, key, value, headers in outputs) if outputs else []
        topic, keep = self.store.changelog_topic, self.store.keep
        changes: list[tuple[str, int, bytes, bytes | None]] = []
        for key, partition, state in states:
            changes.append((topic, partition, key.encode(), state.to_wire() if state is not None else None))
            keep(key, state)
        handed_over: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        durable = self._make_durable(self._last, handed_over, sent, changes, spans, on_durable)
        stage = self._last = Stage(handed_over, asyncio.ensure_future(durable))
        return stage

    async def _make_durable(
        self,
        previous: Stage | None,
        handed_over: asyncio.Future[None],
        sent: list[Sent],
        changes: list[tuple[str, int, bytes, bytes | None]],
        spans: Spans | None,
        on_durable: Callable[[], None] | None,
    ) -> None:
        step = "the outputs' acknowledgements"
        try:
            if sent:
                await asyncio.gather(*(s.future for s in sent))  # 5
            if previous is not None:
                step = "the stage before"
                await previous.handed_over
            step = "the changelog's acknowledgements"
            changelog = await self.sender.send((t, p, k, v, None) for t, p, k, v in changes) if changes else []  # 6
            handed_over.set_result(None)
            acks = await asyncio.gather(*(c.future for c in changelog))  # 7
            if previous is not None:
                step = "the stage before"
                await previous.done
            step = "the RocksDB write"
            self.store.write((partition, kb, vb) for _topic, partition, kb, vb in changes)  # 8
            self.store.written(kb.decode() for _topic, _partition, kb, _vb in changes)
            for c, meta in zip(changelog, acks, strict=True):
                self.store.record_changelog_offset(c.partition, meta.offset + c.count - 1)
            if on_durable is not None:
                on_durable()
            if spans:
                self.ack_offsets(spans)  # 9
        except BaseException as exc:
            if not handed_over.done():
                handed_over.set_exception(exc)  # later stages fail too: nothing is written out of order
            self.on_failure(failure_text(step, exc, sent, changes, spans))
            raise

    async def idle(self) -> None:
        """Wait until every stage so far is durable (or failed: its owner reports that)."""
        last = self._last
        if last is not None:
            await asyncio.wait([last.done])


def describe_spans(spans: Spans) -> str:
    """Input offsets for a log line: 'topic[partition] first-last, ...'."""
    return ", ".join(f"{tp.topic}[{tp.partition}] {first}-{last}" for tp, (first, last) in sorted(spans.items()))


def failure_text(step: str, exc: BaseException, sent: Sequence[Sent], changes: Sequence[tuple[str, int, bytes, bytes | None]],
                 spans: Spans | None) -> str:
    """What a failed stage says in the log: the step, the error, the topics and input offsets
    involved (no keys: they are customer ids), and what to check."""
    topics = sorted({s.topic for s in sent} | {topic for topic, _p, _k, _v in changes})
    offsets = describe_spans(spans) if spans else "none (a churn tick or a forget)"
    return (
        f"a batch's outputs or state writes could not be completed: {step} failed with {type(exc).__name__}: {exc}; "
        f"topics written {', '.join(topics) or 'none'}; input offsets {offsets}. Check that the brokers are reachable, "
        "that this worker may write to those topics and that they exist, that records fit max.message.bytes, and "
        "that acks=all can be met (min.insync.replicas against the replicas in sync)"
    )


def process(japp: JourneyApp, records: Sequence[InputRecord], read: Callable[[str, int], Any]) -> tuple[BatchResult, list[Output]]:
    """Step 1, the pure part: the pipeline, then the churn hook; the outputs to send."""
    result = japp.pipeline.process(records, read=read)
    settings = japp.settings
    outputs: list[Output] = [
        *((settings.topic_transitions, o.key, o.value, None) for o in map(transition_output, result.transitions)),
        *((settings.topic_dead_letter, o.key, o.value, None) for o in result.dead_letters),
        *((settings.topic_touchpoints, o.key, o.value, o.headers) for o in result.rekeyed),
        *((settings.topic_identities, o.key, o.value, None) for o in result.identities),
        *((settings.topic_privacy, o.key, o.value, None) for o in result.privacy),
    ]
    if japp.churn is not None:
        # Re-scores the batch's customers (their states change in place, for the writes).
        outputs.extend(japp.churn.score_batch(result) or ())
    return result, outputs
