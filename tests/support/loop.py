"""The input topic in memory for pipeline tests: partitions, the customers' states, and the
records the pipeline writes back to the input topic (re-keyed events, identity and forget
requests) delivered in order after what is queued, as Kafka does. No Kafka, no Faust."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from typing import Any

import orjson

from journey.core.aggregates import PartitionAggregate, summarize
from journey.core.state import CustomerState
from journey.worker.pipeline import Pipeline, Record, control_headers

PARTITIONS = 4
_ids = itertools.count()


def touchpoint(t0: datetime, etype: str, minutes: float, *, customer: str | None = None, anonymous: str | None = None,
               channel: str | None = None, **props: Any) -> dict[str, Any]:
    """A touchpoint ``minutes`` after ``t0`` with a fresh event id."""
    data: dict[str, Any] = {"event_id": f"e{next(_ids)}", "type": etype, "timestamp": (t0 + timedelta(minutes=minutes)).isoformat()}
    if customer is not None:
        data["customer_id"] = customer
    if anonymous is not None:
        data["anonymous_id"] = anonymous
    if channel is not None:
        data["channel"] = channel
    if props:
        data["properties"] = props
    return data


class InputLoop:
    """Partitions of the input topic with their states. A state of None in a batch's writes
    deletes it (a forget); the live aggregate follows every write, as the worker's does."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.states: dict[str, CustomerState] = {}
        self.queue: list[Record] = []
        self.transitions: list[dict[str, Any]] = []
        self.identities: list[dict[str, Any]] = []
        self.announced: list[dict[str, Any]] = []
        self.dead: list[str] = []
        self.offset = 0
        self.agg = PartitionAggregate()

    @staticmethod
    def partition(key: str) -> int:
        return sum(key.encode()) % PARTITIONS

    def send(self, value: dict[str, Any] | bytes, key: str | None = None, control: bytes | None = None,
             signature: bytes | None = None) -> None:
        raw = value if isinstance(value, bytes) else orjson.dumps(value)
        if key is None:
            assert isinstance(value, dict)
            key = value.get("customer_id") or value.get("anonymous_id")
        assert key is not None
        self.offset += 1
        self.queue.append(Record(key.encode(), raw, "tp", self.partition(key), self.offset, None, control, signature))

    def run(self, batch: int = 3, rounds: int | None = None) -> None:
        """Process everything queued (and what it produces), ``batch`` records at a time; with
        ``rounds``, that many batches at most (the rest stays queued, as if in flight)."""
        for _ in itertools.count() if rounds is None else range(rounds):
            if not self.queue:
                break
            records, self.queue = self.queue[:batch], self.queue[batch:]
            result = self.pipeline.process(records, self.states)
            for key, (_rec, state, before) in result.writes.items():
                if state is None:
                    self.states.pop(key, None)
                else:
                    self.states[key] = state
                self.agg.replace(before, summarize(state))
            self.transitions += [t.to_event() for t in result.transitions]
            self.identities += [orjson.loads(o.value) for o in result.identities]
            self.announced += [orjson.loads(o.value) for o in result.privacy]
            self.dead += result.reasons
            for o in result.rekeyed:
                assert o.key is not None
                self.send(o.value, o.key.decode(), *control_headers(o.headers or ()))

    def recount(self) -> PartitionAggregate:
        """The aggregate of the states as they are (the live one must equal it)."""
        agg = PartitionAggregate()
        for state in self.states.values():
            agg.add(summarize(state))
        return agg
