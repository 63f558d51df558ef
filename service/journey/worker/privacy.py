"""Forgetting customers in the worker: the relay from the privacy topic to the input topic, and
the pipeline's handling of forget records and suppressed ids.

- **Relay** (a Faust agent on ``JOURNEY_TOPIC_PRIVACY``): each signed ``forget_requested`` or
  ``forget_undo_requested`` becomes one of journey's signed control records on the input topic,
  keyed by the customer, so the worker that owns the customer applies it in order with the
  customer's events, under the batch protocol. ``customer_forgotten`` records (the workers' own)
  are skipped. A request relayed twice (a crash before the relay's offset commit) is applied
  twice, harmlessly: applying a forget is idempotent.
- **Apply** (:class:`Privacy`, called by the pipeline for FORGET/UNFORGET records): the rules
  are core.privacy's; this writes the deletion, the marker, the cascade and the announcement
  into the batch's result, where the batch protocol makes them durable in its usual order.
- **Suppress**: a record whose id has no state is checked against the id's marker (cache, then
  RocksDB); known customers never pay for it.

See docs/privacy.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client.core import CounterMetricFamily

from journey.core.clock import iso
from journey.core.identity import SIGNATURE_HEADER, BadRequest
from journey.core.ids import stable_id
from journey.core.privacy import (
    CUSTOMER_FORGOTTEN,
    FORGET,
    FORGET_REQUESTED,
    UNFORGET,
    ForgetRequest,
    decode_forget,
    forgotten_event,
    forgotten_since,
    lift,
    lifted_at,
    make_marker,
    marker_key,
    merged_ids,
    parse_privacy_record,
    plan_forget,
    request_signed,
    suppresses,
    undo_lifts,
)
from journey.core.state import CustomerState
from journey.errors import CorruptState
from journey.worker.batch import exit_replaying
from journey.worker.pipeline import BatchResult, InputRecord, Output, Pipeline

if TYPE_CHECKING:
    from journey.worker.app import JourneyApp

log = logging.getLogger(__name__)

Read = Callable[[str, int], CustomerState | None]


def _marker(out: BatchResult, mk: str, partition: int, read: Read) -> CustomerState | None:
    """The suppression marker under ``mk``: as this batch last wrote it, else as stored (raises
    CorruptState for a damaged one)."""
    pending = out.writes.get(mk)
    return pending[1] if pending is not None else read(mk, partition)


class Privacy:
    """The pipeline's privacy hook (Pipeline.privacy). Counts are plain ints, exported at scrape time."""

    def __init__(self, salt: bytes, clock: Callable[[], float] = time.time) -> None:
        self.salt = salt
        self.clock = clock
        #: Records dropped because their id is forgotten (touchpoints, aliased touchpoints, link
        #: and merge requests).
        self.suppressed = 0
        #: Ids whose state a forget removed; markers written; markers an undo removed.
        self.forgotten = 0
        self.marked = 0
        self.unmarked = 0
        #: Requests ignored as older (by their own clock) than the undo that lifted the id's
        #: suppression: a replay, or a requester whose clock is behind the undo's.
        self.stale = 0

    # --- suppression (the pipeline asks only for ids with no state) ------------------------
    def is_suppressed(self, out: BatchResult, key: str, partition: int, read: Read) -> bool:
        """Whether ``key`` (which has no state) is forgotten; counts the record dropped if so."""
        try:
            marker = _marker(out, marker_key(self.salt, key), partition, read)
        except CorruptState as exc:
            # Only a forget writes this key: a damaged marker still means "forgotten".
            log.error("a suppression marker of partition %d is damaged and still suppresses: %s", partition, exc)
        else:
            if not suppresses(marker):
                return False  # never forgotten, or the suppression was lifted
        self.suppressed += 1
        return True

    def forgotten_since(self, out: BatchResult, rec: InputRecord, key: str, origin: tuple[str, int, int], read: Read) -> bool:
        """Whether ``key`` was forgotten after ``origin`` (a merge whose link was asked before the
        forget, landing after an undo at ``rec``'s partition); counts it dropped if so."""
        try:
            marker = _marker(out, marker_key(self.salt, key), rec.partition, read)
        except CorruptState as exc:
            # A suppressing marker stopped the merge before this (is_suppressed): this one was
            # lifted, and its offset is unreadable. Merging loses nothing; refusing every later
            # device of a customer who came back would.
            log.error("a lifted suppression marker of partition %d is damaged; the merge is applied: %s", rec.partition, exc)
            return False
        if not forgotten_since(marker, origin, rec.partition):
            return False
        self.suppressed += 1
        return True

    # --- forget and undo records ----------------------------------------------------------
    def request(self, pipeline: Pipeline, out: BatchResult, rec: InputRecord, control: bytes, read: Read) -> str | None:
        """Apply a (signed) FORGET or UNFORGET record; returns why it cannot be applied, or None."""
        try:
            req = decode_forget(rec.value)
        except BadRequest as exc:
            return f"{exc}; forget requests are journey's own records (journey forget, DELETE /customers/{{id}})"
        key = req.profile_id
        if rec.key != key.encode():
            return "a forget request under another key than its id; journey writes these itself"
        writes = out.writes
        mk = marker_key(self.salt, key)
        damaged_marker = False
        try:
            marker = _marker(out, mk, rec.partition, read)
        except CorruptState as exc:  # written anew by a forget, lifted by an undo
            log.error("a suppression marker of partition %d is damaged; the %s request replaces it: %s",
                      rec.partition, "undo" if control == UNFORGET else "forget", exc)
            marker, damaged_marker = None, True
        if control == UNFORGET:
            if damaged_marker:
                writes[mk] = (rec, None, None)  # a tombstone: the damaged marker is gone, and so is its time
                self.unmarked += 1
            elif marker is not None and undo_lifts(marker, req):
                writes[mk] = (rec, lift(marker, req.at), None)  # suppression lifted; the undo's time kept
                self.unmarked += 1
            return None
        try:
            pending, state, before = pipeline.state_of(out, key, rec.partition, read)
        except CorruptState as exc:
            # A damaged state is deleted like any other (its linked ids cannot be read: no cascade).
            log.error("forgetting a customer of partition %d whose state is damaged: it is deleted, its linked "
                      "anonymous ids (unreadable) are not: %s", rec.partition, exc)
            pending, state, before = None, None, None
            writes[key] = (rec, None, None)
            self.forgotten += 1
        first = pending[0] if pending is not None else rec
        plan = plan_forget(state, req, marker)
        if plan.stale:  # no customer id in the log
            self.stale += 1
            log.warning("forget request %s ignored: it is dated %s, not after the undo (%s) that lifted the id's "
                        "suppression; if it is a new request, send it again from a host with a correct clock",
                        req.request_id, iso(req.at), iso(lifted_at(marker) or req.at))
        # Announced: the merged ids only. The cascade also reaches ids the customer asked to link;
        # their partition forgets them only if they are this customer's (a shared device is not).
        anonymous = [a for a in merged_ids(state, key) if a in plan.cascade]
        if plan.delete:
            writes[key] = (first, None, before)  # the batch protocol writes a tombstone and deletes it
            self.forgotten += 1
        if plan.mark:
            new_marker = make_marker(req.at, req.request_id, (rec.topic, rec.offset))
            new_marker.partition = rec.partition
            writes[mk] = (rec, new_marker, None)
            self.marked += 1
        for anonymous_id in plan.cascade:
            follow = ForgetRequest(anonymous_id, req.request_id, req.at, origin=key, listed=anonymous_id in anonymous)
            out.rekeyed.append(pipeline.identity.control_output(FORGET, anonymous_id, follow.to_bytes()))
        if plan.announce:
            if req.origin is None:
                event = forgotten_event(key, req.request_id, req.at, self.clock(), anonymous)
            else:  # a linked id the customer's notice could not name
                event = forgotten_event(key, stable_id(req.request_id, key), req.at, self.clock(), [], forgotten_with=req.origin)
            out.privacy.append(Output(key.encode(), orjson.dumps(event)))
        return None

    def collect(self) -> Any:
        """Prometheus collector: journey_suppressed_records_total, journey_forgotten_ids_total{action}."""
        suppressed = CounterMetricFamily(
            "journey_suppressed_records",
            "Records dropped because their customer or anonymous id was forgotten (not dead-lettered: they would keep the data)",
        )
        suppressed.add_metric([], self.suppressed)
        yield suppressed
        forgotten = CounterMetricFamily(
            "journey_forgotten_ids", "Forget requests applied: states deleted, suppression markers written and lifted",
            labels=["action"],
        )
        forgotten.add_metric(["state_deleted"], self.forgotten)
        forgotten.add_metric(["suppressed"], self.marked)
        forgotten.add_metric(["suppression_lifted"], self.unmarked)
        forgotten.add_metric(["ignored_older_than_undo"], self.stale)
        yield forgotten


# --- the relay ----------------------------------------------------------------------------------
class Relay:
    """Turns privacy-topic requests into signed control records on the input topic."""

    OUTCOMES = ("relayed", "ignored", "unsigned", "invalid")

    def __init__(self, japp: JourneyApp) -> None:
        self.japp = japp
        self.counts = dict.fromkeys(self.OUTCOMES, 0)

    def control_record(self, key: bytes | None, value: bytes | None, headers: Any) -> Output | None:
        """The control record for one privacy-topic record (None: nothing to relay)."""
        identity = self.japp.pipeline.identity
        signature = None
        for name, header in _header_items(headers):
            if name == SIGNATURE_HEADER:
                signature = bytes(header) if header is not None else None
        try:
            record = parse_privacy_record(value, key)
        except BadRequest as exc:
            self.counts["invalid"] += 1
            log.warning("a record on the privacy topic is not a journey privacy record (%s); it is skipped", exc)
            return None
        if record.type == CUSTOMER_FORGOTTEN:
            self.counts["ignored"] += 1  # the workers' own confirmations
            return None
        if not request_signed(identity.key, signature, key, value):
            self.counts["unsigned"] += 1
            log.warning("a %s on the privacy topic has no valid signature and is not applied: requests come from "
                        "`journey forget` or the sidecar's DELETE /customers/{id}, with this deployment's "
                        "JOURNEY_CONTROL_SECRET", record.type)
            return None
        control = FORGET if record.type == FORGET_REQUESTED else UNFORGET
        request = ForgetRequest(record.customer_id, record.request_id, record.at)
        return identity.control_output(control, record.customer_id, request.to_bytes())

    def collect(self) -> Any:
        family = CounterMetricFamily("journey_privacy_requests", "Records read from the privacy topic by the relay, by outcome",
                                     labels=["outcome"])
        for outcome, n in self.counts.items():
            family.add_metric([outcome], n)
        yield family


#: Tries of a relayed record's send before the worker exits to replay it (about a minute).
RELAY_TRIES = 8


async def relay_send(app: Any, topic: str, output: Output, *, tries: int = RELAY_TRIES, first_wait_s: float = 0.5,
                     on_failure: Callable[[str], None] = exit_replaying) -> None:
    """Send the control record and wait for its acknowledgement, with retries. If it cannot be
    sent, exit so the request is read again: an exception in the agent would end its stream, and
    Faust acks the record a stream ends on (the request would be lost)."""
    wait = first_wait_s
    for attempt in range(1, tries + 1):
        try:
            await app.producer.send_and_wait(topic, output.key, output.value, None, None, list(output.headers or ()))
            return
        except Exception as exc:  # noqa: BLE001 - any send failure: retried, then the worker exits
            if attempt == tries:
                on_failure(f"a privacy request could not be relayed to {topic} after {tries} tries ({exc!r})")
                return
            log.warning("relaying a privacy request to %s failed (%r); retrying in %.1f s", topic, exc, wait)
            await asyncio.sleep(wait)
            wait = min(wait * 2, 15.0)


def _header_items(headers: Any) -> list[tuple[str, Any]]:
    if not headers:
        return []
    if isinstance(headers, dict):
        return list(headers.items())
    return [(h[0], h[1]) for h in headers]


def register(japp: JourneyApp) -> Relay:
    """The relay agent on the privacy topic, and the privacy metrics (in the app factory)."""
    app, settings = japp.app, japp.settings
    relay = Relay(japp)
    japp.metrics.registry.register(relay)  # a collector by duck typing
    privacy = japp.pipeline.privacy
    if isinstance(privacy, Privacy):
        japp.metrics.registry.register(privacy)
    topic = app.topic(
        settings.topic_privacy, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
        partitions=settings.partitions, retention=timedelta(milliseconds=settings.retention_ms),
    )

    @app.agent(topic, name="journey.privacy-relay")
    async def privacy_relay(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            output = relay.control_record(message.key, message.value, message.headers)
            if output is not None:
                await relay_send(app, settings.topic_touchpoints, output)
                relay.counts["relayed"] += 1
                log.info("relayed a privacy request %s to the input topic", output.headers[0][1].decode() if output.headers else "")

    return relay

