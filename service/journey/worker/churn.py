"""Churn risk and pain points in the worker: a thin adapter around journey.churn.update.

After each batch the customers it touched are re-scored as of the event-time clock (outputs only
when a level changes or a pain point is due); a timer re-scores the customers the due index says
may have changed by now, through the batch protocol like a batch; a rebalance rebuilds the index
from the table, since every state carries its own due time.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from journey.churn.config import ChurnSettings
from journey.churn.risk import KEY as RISK_KEY
from journey.churn.risk import StageTimes, load_model, stored_due
from journey.churn.timers import DueIndex
from journey.churn.update import Update, note_touchpoint, update
from journey.core.eventclock import EventClock
from journey.core.identity import ALIAS_KEY
from journey.core.privacy import FORGOTTEN_KEY
from journey.core.state import CustomerState
from journey.errors import CorruptState
from journey.worker.batch import Output, exit_replaying
from journey.worker.pipeline import BatchResult, InputRecord, Record

if TYPE_CHECKING:
    from journey.worker.app import JourneyApp

log = logging.getLogger(__name__)

#: Customers a tick re-scores per hold of the state lock.
TICK_CHUNK = 500



class ChurnWorker:
    def __init__(self, japp: JourneyApp, churn_settings: ChurnSettings | None = None) -> None:
        self.japp = japp
        settings = japp.settings
        self.settings = churn_settings or ChurnSettings.from_settings(settings)
        self.model = load_model(self.settings.params_path(settings))
        self.config = self.settings.config(japp.definition.purchase_types)
        mismatch = self.model.horizon_mismatch(self.config.risk.horizon_days)
        if mismatch is not None:
            log.warning("%s (%s)", mismatch, self.settings.params_path(settings))
        #: The stream's clock: every partition's events (what "now" is while all are caught up).
        self.clock = self._new_clock()
        #: Each input partition's own clock: a partition with records still to process holds
        #: "now" back to its own position (see now()).
        self.clocks: dict[int, EventClock] = {}
        #: The input partitions with records not yet processed (set by register: the live
        #: aggregates' lag; none by default).
        self.lagging: Callable[[], Iterable[int]] = tuple
        self.index = DueIndex()
        self.stage_times = StageTimes(self.config.risk)
        pain = self.config.pain
        self._note_types = pain.cart_types | pain.purchase_types
        self._counters: dict[tuple[str, ...], Any] = {}

    def _new_clock(self) -> EventClock:
        return EventClock(allowed_lateness_s=self.settings.allowed_lateness_s, live_window_s=self.settings.live_window_s)

    def observe(self, partition: int, event_time: float | None, wall: float) -> None:
        """A batch's (or the table's) newest event time on one input partition."""
        clock = self.clocks.get(partition)
        if clock is None:
            clock = self.clocks[partition] = self._new_clock()
        clock.observe(event_time, wall)
        self.clock.observe(event_time, wall)

    def now(self, wall: float) -> float | None:
        """What "now" is for silence and due times: the stream's clock, held back to the position
        of any partition with records still to process. Its customers' purchases may be among
        those records: a clock run ahead by the other partitions (a backlog, a replay whose
        partitions move at different paces) would report their carts abandoned and their risk
        raised before it (the others' timers wait for it meanwhile: late, never wrong)."""
        now = self.clock.now(wall)
        if now is None:
            return None
        clocks = self.clocks
        for partition in self.lagging():
            clock = clocks.get(partition)
            behind = clock.now(wall) if clock is not None else None
            if behind is not None and behind < now:
                now = behind
        return now

    # --- after a batch --------------------------------------------------------------------
    def score_batch(self, result: BatchResult) -> list[Output] | None:
        """Step 1 of a batch (worker/batch.py), after the pipeline: note, re-score and collect the outputs to send
        (None: the batch wrote no customer)."""
        wall = time.time()
        if result.max_event_times:
            for partition, latest in result.max_event_times.items():
                self.observe(partition, latest, wall)
        else:
            self.clock.observe(result.max_event_time, wall)
        for t in result.transitions:
            self.stage_times.observe(t.from_stage, t.seconds_in_previous_stage)
        writes = result.writes
        if not writes:
            return None
        self.note_carts(result.applied, writes)
        now = self.now(wall)
        outputs: list[Output] = []
        forgotten: list[str] = []
        for key, (rec, state, _before) in writes.items():
            if state is None or (state.extra and (ALIAS_KEY in state.extra or FORGOTTEN_KEY in state.extra)):
                # Forgotten, a linked anonymous id, or a suppression marker: nothing to score, and
                # nothing to look at again.
                if state is None:
                    forgotten.append(key)
                else:
                    self.index.schedule(key, None)
                continue
            try:
                u = update(state, assess_at(state, now), self.model, self.config, self.stage_times)
            except Exception:  # one customer's odd history must not stop the stream (or crash-loop it)
                # No customer id in logs: the record's place says where to look.
                log.exception("churn risk of a customer of %s[%d]@%d could not be updated; its journey state is still written",
                              rec.topic, rec.partition, rec.offset)
                continue
            self.index.schedule(key, u.due, rec.partition)
            self._collect(key, u, outputs)
        if forgotten:
            self.index.purge(forgotten)  # a forgotten id must not linger in the heap in clear either
        self.japp.metrics.churn_timer_customers.set(len(self.index))
        return outputs

    def note_carts(self, applied: Sequence[tuple[str, str, str, Any, float]], writes: Mapping[str, tuple[InputRecord, CustomerState | None, Any]]) -> None:
        """Note the batch's applied carts and purchases (the pipeline's record of them: only
        correctly keyed, non-duplicate touchpoints; nothing decoded twice)."""
        types, config = self._note_types, self.config
        for applied_one in applied:
            if applied_one[1] in types:  # most touchpoints are neither: no unpacking for them
                key, event_type, channel, _kind, ts = applied_one
                entry = writes.get(key)
                if entry is not None and entry[1] is not None:  # None: forgotten later in the batch
                    note_touchpoint(entry[1], event_type, ts, channel, config)

    # --- the timer ------------------------------------------------------------------------
    async def tick(self) -> int:
        """Re-score the customers due by the event-time clock; return how many."""
        app = self.japp.app
        if app.rebalancing:
            return 0
        now = self.now(time.time())
        if now is None:
            return 0
        # Batches change the states they read in place: no batch may run between our read of a
        # customer and our write (JourneyApp.state_lock), or one of the two would be lost. The
        # lock is taken per chunk of customers, so a tick with many due never stalls the stream.
        done, left = 0, self.settings.max_per_tick
        generation = app.consumer_generation_id
        while left > 0:
            chunk = min(TICK_CHUNK, left)
            async with self.japp.state_lock:
                if app.rebalancing or app.consumer_generation_id != generation:
                    break  # partitions may be changing hands: the states may no longer be ours to write
                n, popped = await self._tick(now, chunk)
            done += n
            left -= chunk
            if popped < chunk:
                break
            await asyncio.sleep(0)  # a waiting batch goes first
        return done

    async def _tick(self, now: float, limit: int) -> tuple[int, int]:
        """Re-score up to ``limit`` due customers; returns (re-scored, taken from the index).
        Their states and outputs go through the batch protocol's stage, as a batch's do."""
        batches = self.japp.batches
        if batches is None:
            return 0, 0  # the batch ingest has not started yet
        due = self.index.pop_due_entries(now, limit)
        if not due:
            return 0, 0
        outputs: list[Output] = []
        changed: list[tuple[str, CustomerState]] = []
        # The live aggregates count churn levels and pain points: they need each state before.
        summarize = self.japp.pipeline.summarize
        written = BatchResult()
        topic = self.japp.settings.topic_touchpoints
        for key, partition in due:
            try:
                state = batches.store.read(key, partition) if partition is not None else None
            except CorruptState as exc:
                log.error("churn timer: %s", exc)  # the next record of this customer is dead-lettered with it
                continue
            if state is None or state.partition is None or ALIAS_KEY in state.extra:
                continue  # moved away, written before partitions were recorded, or a linked anonymous id
            try:
                before = summarize(state) if summarize is not None else None
            except Exception:  # unchanged: left as it is (a batch reading it would fail the same way)
                log.exception("churn timer: a customer's state of partition %d could not be summarized; skipped", state.partition)
                continue
            try:
                u = update(state, assess_at(state, now), self.model, self.config, self.stage_times)
            except Exception:  # one customer's odd history must not stop the timer (as in score_batch)
                log.exception("churn risk of a customer of partition %d could not be updated by the timer", state.partition)
                changed.append((key, state))  # changed in place up to the failure: written as it is
                written.writes[key] = (Record(key.encode(), None, topic, state.partition, -1), state, before)
                continue
            try:
                self.index.schedule(key, u.due, state.partition)
                self._collect(key, u, outputs)
            except Exception:
                # The state changed in place (the cache holds it) but its outputs cannot be made:
                # writing it would drop them for good, skipping it would leave the cache ahead of
                # the store. A restart reads the store and the changelog again (as a batch's failure).
                exit_replaying("the churn timer could not make a customer's churn-risk or pain-point events")
                raise
            changed.append((key, state))
            written.writes[key] = (Record(key.encode(), None, topic, state.partition, -1), state, before)
        self.japp.metrics.churn_timer_customers.set(len(self.index))
        try:
            await batches.stage(((key, state.partition, state) for key, state in changed), outputs)  # type: ignore[misc]
        except Exception:
            # The states changed in place and the cache holds them: they must be written or the
            # worker must go (a restart reads the store and the changelog again).
            exit_replaying("the churn timer could not stage its writes")
        aggregates = self.japp.aggregates
        if aggregates is not None and summarize is not None:
            aggregates.observe({}, written)  # same synchronous stretch as the states' staging
        return len(changed), len(due)

    # --- rebalance ------------------------------------------------------------------------
    def rebuild(self) -> int:
        """Re-index this worker's customers from the table (after a rebalance)."""
        app, settings = self.japp.app, self.japp.settings
        actives = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == settings.topic_touchpoints}
        self.index.clear()
        entries = []
        newest: dict[int, float] = {}
        # The typical time in each stage is learned anew from the states this worker owns: what
        # a process learned from the stream is gone after a restart (the defaults, days, would
        # put a web funnel's silent visitors back to low and out of sight), and every worker
        # owning the same customers learns the same.
        stage_times = StageTimes(self.config.risk)
        for key, state in self.japp.customers.items():
            if (state is None or (state.partition is not None and state.partition not in actives) or ALIAS_KEY in state.extra
                    or FORGOTTEN_KEY in state.extra):
                continue
            stage_times.observe_reached(state.reached)
            # A customer never assessed (state from before churn risk) is assessed on the next tick.
            due = stored_due(state) if RISK_KEY in state.extra else float("-inf")
            entries.append((key, due, state.partition))
            p, seen = state.partition, state.last_seen
            if p is not None and seen is not None and seen > newest.get(p, -math.inf):
                newest[p] = seen
        self.index.rebuild(entries)
        self.stage_times = stage_times
        wall = time.time()
        for p, seen in newest.items():
            self.observe(p, seen, wall)
        self.japp.metrics.churn_timer_customers.set(len(self.index))
        return len(self.index)

    # --- output ---------------------------------------------------------------------------
    def _collect(self, key: str, u: Update, outputs: list[Output]) -> None:
        pains, changed = u.pains, u.level_changed
        if not pains and not changed:
            return  # most customers of a batch
        settings = self.japp.settings
        kb = key.encode()
        for p in pains:
            outputs.append((settings.topic_pain_points, kb, orjson.dumps(p.to_event(key)), None))
            self._counter(("pain", p.kind, p.stage or "none", p.channel or "other")).inc()
        if changed:
            outputs.append((settings.topic_churn_risk, kb, orjson.dumps(u.churn_event(key, self.model)), None))
            self._counter(("risk", u.risk.level_name)).inc()

    def _counter(self, labels: tuple[str, ...]) -> Any:
        """The metric child of these labels (prometheus' labels() costs a lock and a lookup per call)."""
        child = self._counters.get(labels)
        if child is None:
            metrics = self.japp.metrics
            if labels[0] == "pain":
                child = metrics.pain_points.labels(kind=labels[1], stage=labels[2], channel=labels[3])
            else:
                child = metrics.churn_risk.labels(level=labels[1])
            self._counters[labels] = child
        return child


#: Records a partition may trail its end by and still count as caught up: the end of a topic
#: that transactional producers write holds control markers no record is ever read from.
LAG_SLACK = 100


def behind(lags: Mapping[int, int | None]) -> list[int]:
    """The partitions with records still to process: more than LAG_SLACK behind their end, or
    with an end no fetch has told yet (right after a start: its backlog is not known)."""
    return [p for p, lag in lags.items() if lag is None or lag > LAG_SLACK]


def assess_at(state: CustomerState, now: float | None) -> float:
    """The time to assess a customer at: now, never before the assessment they already have
    (now may step back when a partition falls behind; see ChurnWorker.now), and their last
    event time before any event-time clock exists."""
    if now is None:
        return state.last_seen or 0.0
    previous = state.extra.get(RISK_KEY) if state.extra else None
    if previous is not None:
        at = previous.get("at")
        if at is not None and at > now:
            return float(at)
    return now


def register(japp: JourneyApp) -> ChurnWorker:
    """Create the churn adapter of an app: its timer and its rebalance hook."""
    worker = ChurnWorker(japp)
    app = japp.app
    live = japp.aggregates
    if live is not None:
        worker.lagging = lambda: behind(live.partition_lag())

    @app.timer(interval=worker.settings.tick_s, name="journey.churn-timer")
    async def churn_timer() -> None:
        try:
            await worker.tick()
        except Exception:  # keep the timer alive: the customers are due again on the next tick
            log.exception("churn timer tick failed; retrying on the next tick")

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]  # mode types the sender positional-only
    async def churn_rebuild(sender: Any, **kwargs: Any) -> None:
        n = worker.rebuild()
        log.info("churn timer index rebuilt from the table: %d customers", n)

    return worker

