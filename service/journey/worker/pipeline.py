"""The worker's hot path over one batch of records: decode, validate, dedupe, apply, emit.

Plain Python over plain data: the batch protocol (worker/batch.py) feeds it records and a
mapping of customer states (the Faust table) and sends what it returns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from journey.core.definition import JourneyDefinition, Kind
from journey.core.events import InvalidTouchpoint, decode
from journey.core.machine import Limits, Transition, apply
from journey.core.state import CustomerState
from journey.worker.deadletter import dead_letter

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Record:
    """One consumed Kafka record."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    #: When the record reached Kafka (epoch seconds), for latency.
    timestamp: float | None = None


@dataclass(slots=True)
class Output:
    key: bytes | None
    value: bytes


@dataclass
class BatchResult:
    transitions: list[Transition] = field(default_factory=list)
    #: Kafka timestamps of the records that triggered each transition.
    trigger_timestamps: list[float] = field(default_factory=list)
    dead_letters: list[Output] = field(default_factory=list)
    #: Records whose Kafka key is not their customer: re-published under the right key, so all
    #: of a customer's events meet in one partition (and one state).
    rekeyed: list[Output] = field(default_factory=list)
    #: Final state of every customer the batch changed, with a record of theirs (its partition)
    #: and the summary of their state before the batch.
    writes: dict[str, tuple[Record, CustomerState, Any]] = field(default_factory=dict)
    #: (customer key, type, channel, kind, event time) of every applied touchpoint, for metrics
    #: and the churn hook (which notes carts and purchases without decoding them again).
    applied: list[tuple[str, str, str, Kind, float]] = field(default_factory=list)
    #: Reasons of the dead letters, for metrics.
    reasons: list[str] = field(default_factory=list)
    duplicates: int = 0
    #: The highest event time in the batch (epoch seconds): the stream's event-time clock.
    max_event_time: float | None = None


class Pipeline:
    def __init__(
        self,
        definition: JourneyDefinition,
        limits: Limits,
        *,
        summarize: Callable[[CustomerState | None], Any] | None = None,
        copy_reads: bool = True,
    ) -> None:
        self.definition = definition
        self.limits = limits
        # With copy_reads, a state read from ``states`` is copied before the batch changes it, so
        # the mapping holds what it held until the caller writes the batch's states. The worker
        # turns it off: a copy costs more than applying the event, and it never needs the old
        # object (a batch that fails exits the process; the batch and the churn timer never
        # interleave, see JourneyApp.state_lock).
        self.copy_reads = copy_reads
        # Takes what the live aggregates need of a customer's state before the batch touches it
        # (once per customer per batch, since apply() changes the state in place).
        self.summarize = summarize

    def process(
        self,
        records: Sequence[Record],
        states: Mapping[str, CustomerState] | None = None,
        *,
        read: Callable[[str, int], CustomerState | None] | None = None,
    ) -> BatchResult:
        """Run a batch. Customers are read from ``states`` or, with ``read``, as
        ``read(key, partition of their record)`` (a store per partition), once per batch each."""
        out = BatchResult()
        definition, limits = self.definition, self.limits
        if read is None:
            if states is None:
                raise TypeError("Pipeline.process needs the states or a read function")
            get = states.get
            read = lambda key, _partition: get(key)  # noqa: E731
        writes, applied = out.writes, out.applied
        max_event_time: float | None = None
        for rec in records:
            # decode + validate
            try:
                if rec.value is None:
                    raise InvalidTouchpoint("empty_value", "the record has no value (a tombstone?); publish a touchpoint JSON object")
                tp = decode(rec.value)
            except InvalidTouchpoint as exc:
                self._dead_letter(out, rec, exc.reason, exc.error)
                continue
            except Exception as exc:  # a validator bug must cost one record, not the worker
                log.exception("record %s[%d]@%d could not be decoded", rec.topic, rec.partition, rec.offset)
                self._dead_letter(out, rec, "processing_error", f"{type(exc).__name__}: {exc}; this is a journey bug, please report it with this record")
                continue
            key = tp.profile_id
            if rec.key is None or rec.key != key.encode():
                out.rekeyed.append(Output(key.encode(), rec.value))
                continue
            # dedupe + apply
            pending = writes.get(key)
            if pending is not None:
                state: CustomerState | None = pending[1]
                before = pending[2]
            else:
                stored = read(key, rec.partition)
                before = self.summarize(stored) if self.summarize is not None else None
                state = stored.copy() if stored is not None and self.copy_reads else stored
            try:
                outcome = apply(state, tp, definition, limits)
            except Exception as exc:  # a bug must cost one event, not the worker
                log.exception("touchpoint %s of %s could not be applied", tp.event_id, key)
                self._dead_letter(out, rec, "processing_error", f"{type(exc).__name__}: {exc}; this is a journey bug, please report it with this record")
                if pending is None and state is not None and not self.copy_reads:
                    # The state was changed in place up to the failure and the caller's cache
                    # holds that object: write it, so the store agrees with what later reads see.
                    writes[key] = (rec, state, before)
                continue
            if outcome.duplicate:
                out.duplicates += 1
                continue
            if pending is None:  # later events of the batch change the same object
                outcome.state.partition = rec.partition
                writes[key] = (rec, outcome.state, before)
            ts = tp.ts
            applied.append((key, tp.type, tp.channel, outcome.kind, ts))
            if max_event_time is None or ts > max_event_time:
                max_event_time = ts
            if outcome.transition is not None:
                out.transitions.append(outcome.transition)
                if rec.timestamp is not None:
                    out.trigger_timestamps.append(rec.timestamp)
        out.max_event_time = max_event_time
        return out

    @staticmethod
    def _dead_letter(out: BatchResult, rec: Record, reason: str, error: str) -> None:
        out.reasons.append(reason)
        out.dead_letters.append(
            Output(
                rec.key,
                dead_letter(
                    value=rec.value, key=rec.key, topic=rec.topic, partition=rec.partition,
                    offset=rec.offset, reason=reason, error=error,
                ),
            )
        )


def transition_output(t: Transition) -> Output:
    return Output(t.customer_id.encode(), orjson.dumps(t.to_event()))
