"""The worker's hot path over one batch of records: decode, validate, dedupe, apply, emit.

Plain Python over plain data: the Faust agent (worker/agents.py) feeds it records and a
mapping of customer states (the Faust table) and sends what it returns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, MutableMapping, Sequence

import orjson

from journey.core.definition import JourneyDefinition, Kind
from journey.core.events import InvalidTouchpoint, decode
from journey.core.machine import Limits, Transition, apply
from journey.core.state import CustomerState
from journey.worker.deadletter import dead_letter

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Record:
    """One consumed Kafka record; ``ref`` is the transport's own handle (a Faust event)."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    ref: Any = None
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
    #: (type, channel, kind) of every applied touchpoint, for metrics.
    applied: list[tuple[str, str, Kind]] = field(default_factory=list)
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
    ) -> None:
        self.definition = definition
        self.limits = limits
        # Takes what the live aggregates need of a customer's state before the batch touches it
        # (once per customer per batch, since apply() changes the state in place).
        self.summarize = summarize

    def process(self, records: Sequence[Record], states: MutableMapping[str, CustomerState]) -> BatchResult:
        out = BatchResult()
        definition, limits = self.definition, self.limits
        writes = out.writes
        for rec in records:
            # decode + validate
            try:
                if rec.value is None:
                    raise InvalidTouchpoint("empty_value", "the record has no value (a tombstone?); publish a touchpoint JSON object")
                tp = decode(rec.value)
            except InvalidTouchpoint as exc:
                self._dead_letter(out, rec, exc.reason, exc.error)
                continue
            key = tp.profile_id
            if rec.key is None or rec.key != key.encode():
                out.rekeyed.append(Output(key.encode(), rec.value))  # type: ignore[arg-type]
                continue
            # dedupe + apply
            pending = writes.get(key)
            if pending is not None:
                state: CustomerState | None = pending[1]
                before = pending[2]
            else:
                stored = states.get(key)
                before = self.summarize(stored) if self.summarize is not None else None
                # Never change what the table holds (a memory store hands out its own object):
                # if the batch fails before its writes, the table must still be as it was.
                state = stored.copy() if stored is not None else None
            try:
                outcome = apply(state, tp, definition, limits)
            except Exception as exc:  # a bug must cost one event, not the worker
                log.exception("touchpoint %s of %s could not be applied", tp.event_id, key)
                self._dead_letter(out, rec, "processing_error", f"{type(exc).__name__}: {exc}; this is a journey bug, please report it with this record")
                continue
            if outcome.duplicate:
                out.duplicates += 1
                continue
            outcome.state.partition = rec.partition
            writes[key] = (rec, outcome.state, before)
            out.applied.append((tp.type, tp.channel, outcome.kind))
            if out.max_event_time is None or tp.ts > out.max_event_time:
                out.max_event_time = tp.ts
            if outcome.transition is not None:
                out.transitions.append(outcome.transition)
                if rec.timestamp is not None:
                    out.trigger_timestamps.append(rec.timestamp)
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
