"""Churn risk and pain points in the worker: a thin Faust adapter around journey.churn.update.

- After each batch (agents.handle_batch), the customers the batch touched are re-scored as of
  the event-time clock; a ``journey.churn-risk`` event goes out only when a level changes, and
  due pain points go to ``journey.pain-points``. The outputs are acknowledged before the states
  that record them are written (handle_batch writes them right after this hook returns).
- A timer (every ``tick_s``) advances the clock and re-scores only the customers the due index
  says may have changed by now, then writes their states through the table (changelog).
- On a rebalance, the index is rebuilt from the table: every state carries its own due time.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
import weakref
from dataclasses import dataclass, fields
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import orjson
from faust.streams import _current_event

from journey.churn.risk import KEY as RISK_KEY
from journey.churn.risk import RiskConfig, StageTimes, load_model, stored_due
from journey.churn.timers import DueIndex
from journey.churn.update import ChurnConfig, Update, note_touchpoint, update
from journey.core.eventclock import EventClock
from journey.core import painpoints
from journey.core.painpoints import PainConfig
from journey.core.state import CustomerState
from journey.settings import Settings
from journey.worker.ingest import exit_replaying
from journey.worker.pipeline import BatchResult, Record
from journey.worker.produce import send_each

if TYPE_CHECKING:
    from journey.worker.app import JourneyApp

log = logging.getLogger(__name__)

#: Customers a tick re-scores per hold of the state lock.
TICK_CHUNK = 500

#: The keys of CustomerState.extra this adapter owns (churn risk, pain points).
_OWN_KEYS = (RISK_KEY, painpoints.KEY)


@dataclass(frozen=True)
class ChurnSettings:
    """The churn part of the settings: Settings.churn_* (env JOURNEY_CHURN_*), where the defaults live."""

    params_file: Path | None
    horizon_days: float
    medium_threshold: float
    high_threshold: float
    abandonment_window_hours: float
    stall_days: float
    allowed_lateness_s: float
    live_window_s: float
    tick_s: float
    max_per_tick: int

    @classmethod
    def from_settings(cls, settings: Settings) -> "ChurnSettings":
        return cls(**{f.name: getattr(settings, f"churn_{f.name}") for f in fields(cls)})

    def params_path(self, settings: Settings) -> Path:
        return self.params_file or settings.schemas_dir / "churn-params.json"

    def config(self, purchase_types: frozenset[str]) -> ChurnConfig:
        return ChurnConfig(
            risk=RiskConfig(horizon_days=self.horizon_days, medium=self.medium_threshold, high=self.high_threshold),
            pain=PainConfig(
                purchase_types=purchase_types,
                abandonment_window_s=self.abandonment_window_hours * 3600.0,
                stall_limit_s=self.stall_days * 86400.0,
            ),
        )


class _PartitionEvent:
    """Stands in for Faust's current event in the timer: the table takes the changelog (and
    store) partition from it, and outside an agent there is no real one."""

    __slots__ = ("message", "__weakref__")

    def __init__(self, topic: str, partition: int) -> None:
        self.message = SimpleNamespace(topic=topic, partition=partition)


class ChurnWorker:
    def __init__(self, japp: "JourneyApp", churn_settings: ChurnSettings | None = None) -> None:
        self.japp = japp
        settings = japp.settings
        self.settings = churn_settings or ChurnSettings.from_settings(settings)
        self.model = load_model(self.settings.params_path(settings))
        self.config = self.settings.config(japp.definition.purchase_types)
        cal = self.model.calibration
        if cal is not None and cal.horizon_days != self.config.risk.horizon_days:
            log.warning(
                "churn params %s were calibrated for a %g-day horizon, the worker scores %g days; "
                "re-run `journey churn fit --horizon-days %g` for calibrated scores",
                self.settings.params_path(settings), cal.horizon_days, self.config.risk.horizon_days,
                self.config.risk.horizon_days,
            )
        self.clock = EventClock(allowed_lateness_s=self.settings.allowed_lateness_s, live_window_s=self.settings.live_window_s)
        self.index = DueIndex()
        self.stage_times = StageTimes(self.config.risk)
        pain = self.config.pain
        self._note_types = pain.cart_types | pain.purchase_types
        self._counters: dict[tuple[str, ...], Any] = {}

    # --- after a batch --------------------------------------------------------------------
    async def after_batch(self, records: Sequence[Record], result: BatchResult) -> None:
        """Re-score the customers of a batch; send and acknowledge what changed. Their states
        (result.writes) are updated in place for handle_batch to write."""
        outputs = self.score_batch(result)
        if outputs is not None:
            await self._send(outputs)

    def score_batch(self, result: BatchResult) -> list[tuple[str, bytes, bytes]] | None:
        """The pure part of :meth:`after_batch`: note, re-score and collect the outputs to send
        (None: the batch wrote no customer)."""
        wall = time.time()
        self.clock.observe(result.max_event_time, wall)
        for t in result.transitions:
            self.stage_times.observe(t.from_stage, t.seconds_in_previous_stage)
        writes = result.writes
        if not writes:
            return None
        self._note_carts(result.applied, writes)
        now = self.clock.now(wall)
        outputs: list[tuple[str, bytes, bytes]] = []
        for key, (rec, state, _before) in writes.items():
            try:
                u = update(state, now if now is not None else state.last_seen or 0.0, self.model, self.config, self.stage_times)
            except Exception:  # one customer's odd history must not stop the stream (or crash-loop it)
                log.exception("churn risk of customer %r could not be updated; its journey state is still written", key)
                continue
            self.index.schedule(key, u.due, rec.partition)
            self._collect(key, u, outputs)
        self.japp.metrics.churn_timer_customers.set(len(self.index))
        return outputs

    def _note_carts(self, applied: Sequence[tuple[str, str, str, Any, float]], writes: Mapping[str, tuple[Record, CustomerState, Any]]) -> None:
        """Note the batch's applied carts and purchases (the pipeline's record of them: only
        correctly keyed, non-duplicate touchpoints; nothing decoded twice)."""
        types, config = self._note_types, self.config
        for applied_one in applied:
            if applied_one[1] in types:  # most touchpoints are neither: no unpacking for them
                key, event_type, channel, _kind, ts = applied_one
                entry = writes.get(key)
                if entry is not None:
                    note_touchpoint(entry[1], event_type, ts, channel, config)

    # --- the timer ------------------------------------------------------------------------
    async def tick(self) -> int:
        """Re-score the customers due by the event-time clock; return how many."""
        app = self.japp.app
        if app.rebalancing:
            return 0
        now = self.clock.now(time.time())
        if now is None:
            return 0
        # Batches change the states they read in place: no batch may run between our read of a
        # customer and our write (JourneyApp.state_lock), or one of the two would be lost. The
        # lock is taken per chunk of customers, so a tick with many due never stalls the stream.
        done, left = 0, self.settings.max_per_tick
        while left > 0:
            chunk = min(TICK_CHUNK, left)
            async with self.japp.state_lock:
                n, popped = await self._tick(now, chunk)
            done += n
            left -= chunk
            if popped < chunk:
                break
            await asyncio.sleep(0)  # a waiting batch goes first
        return done

    async def _tick(self, now: float, limit: int) -> tuple[int, int]:
        """Re-score up to ``limit`` due customers; returns (re-scored, taken from the index)."""
        due = self.index.pop_due_entries(now, limit)
        if not due:
            return 0, 0
        table = self.japp.customers
        state_writes = self.japp.state_writes
        outputs: list[tuple[str, bytes, bytes]] = []
        changed: list[tuple[str, CustomerState]] = []
        saved: list[dict[str, Any]] = []
        # The live aggregates count churn levels and pain points: they need each state before.
        summarize = self.japp.pipeline.summarize if getattr(self.japp, "pipeline", None) is not None else None
        befores: list[Any] = []
        for key, partition in due:
            if state_writes is not None and partition is not None:
                state = state_writes.read(key, partition)  # the batch path's own (cached) object
            else:
                state = table.get(key)
            if state is None or state.partition is None:
                continue  # moved away, or written before partitions were recorded
            if state_writes is None:  # to undo on a failed send (the staged path exits instead)
                saved.append({k: copy.deepcopy(state.extra[k]) for k in _OWN_KEYS if k in state.extra})
            befores.append(summarize(state) if summarize is not None else None)
            u = update(state, now, self.model, self.config, self.stage_times)
            self.index.schedule(key, u.due, state.partition)
            self._collect(key, u, outputs)
            changed.append((key, state))
        topic = self.japp.settings.topic_touchpoints
        written = BatchResult()
        for (key, state), before in zip(changed, befores):
            written.writes[key] = (Record(key.encode(), None, topic, state.partition, -1), state, before)  # type: ignore[arg-type]
        aggregates = getattr(self.japp, "aggregates", None)

        def observe() -> None:
            if aggregates is not None and summarize is not None:
                aggregates.observe([], written)  # same synchronous stretch as the states' staging

        if state_writes is not None:
            # As a batch does: outputs handed over, states staged to be written once they are
            # acknowledged (a failure there exits the worker, which replays from the changelog).
            self.japp.metrics.churn_timer_customers.set(len(self.index))
            sent = await state_writes.sender.send((t, None, k, v) for t, k, v in outputs) if outputs else []
            stage = state_writes.stage(((key, state.partition, state) for key, state in changed), after=[x.future for x in sent])
            stage.add_done_callback(_exit_if_failed)
            observe()
            return len(changed), len(due)
        # Same rule as a batch: outputs acknowledged first, then the states that record them.
        try:
            await self._send(outputs)
        except Exception:
            # Nothing was recorded: put the customers back as they were, due now, for the next tick.
            for (key, state), extra in zip(changed, saved):
                for k in _OWN_KEYS:
                    state.extra.pop(k, None)
                state.extra.update(extra)
                self.index.schedule(key, now, state.partition)
            raise
        for key, state in changed:
            event = _PartitionEvent(topic, state.partition)  # type: ignore[arg-type]
            token = _current_event.set(weakref.ref(event))
            try:
                table[key] = state
            finally:
                _current_event.reset(token)
        observe()
        return len(changed), len(due)

    # --- rebalance ------------------------------------------------------------------------
    def rebuild(self) -> int:
        """Re-index this worker's customers from the table (after a rebalance)."""
        app, settings = self.japp.app, self.japp.settings
        actives = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == settings.topic_touchpoints}
        self.index.clear()
        entries = []
        newest: float | None = None
        for key, state in self.japp.customers.items():
            if state is None or (state.partition is not None and state.partition not in actives):
                continue
            # A customer never assessed (state from before churn risk) is assessed on the next tick.
            due = stored_due(state) if RISK_KEY in state.extra else float("-inf")
            entries.append((key, due, state.partition))
            if state.last_seen is not None and (newest is None or state.last_seen > newest):
                newest = state.last_seen
        self.index.rebuild(entries)
        self.clock.observe(newest, time.time())
        self.japp.metrics.churn_timer_customers.set(len(self.index))
        return len(self.index)

    # --- output ---------------------------------------------------------------------------
    def _collect(self, key: str, u: Update, outputs: list[tuple[str, bytes, bytes]]) -> None:
        pains, changed = u.pains, u.level_changed
        if not pains and not changed:
            return  # most customers of a batch
        settings = self.japp.settings
        kb = key.encode()
        for p in pains:
            outputs.append((settings.topic_pain_points, kb, orjson.dumps(p.to_event(key))))
            self._counter(("pain", p.kind, p.stage or "none", p.channel or "other")).inc()
        if changed:
            outputs.append((settings.topic_churn_risk, kb, orjson.dumps(u.churn_event(key, self.model))))
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

    async def _send(self, outputs: list[tuple[str, bytes, bytes]]) -> None:
        self.japp.metrics.churn_timer_customers.set(len(self.index))
        await send_each(self.japp.app.producer, outputs)


def register(japp: "JourneyApp") -> ChurnWorker:
    """Create the churn adapter of an app: its timer and its rebalance hook."""
    worker = ChurnWorker(japp)
    app = japp.app

    @app.timer(interval=worker.settings.tick_s, name="journey.churn-timer")
    async def churn_timer() -> None:
        try:
            await worker.tick()
        except Exception:  # keep the timer alive: the customers are due again on the next tick
            log.exception("churn timer tick failed; retrying on the next tick")

    @app.on_rebalance_complete.connect
    async def churn_rebuild(sender: Any, **kwargs: Any) -> None:
        n = worker.rebuild()
        log.info("churn timer index rebuilt from the table: %d customers", n)

    return worker


def _exit_if_failed(stage: "asyncio.Future[Any]") -> None:
    if not stage.cancelled() and stage.exception() is not None:
        exit_replaying("the churn timer's outputs or state writes were not acknowledged")
