"""The worker's hot path over one batch of records: decode, validate, dedupe, apply, emit.

Plain Python over plain data: the batch protocol (worker/batch.py) feeds it records and a
mapping of customer states (the Faust table) and sends what it returns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import InitVar, dataclass, field
from typing import Any, Protocol

import orjson

from journey.core.clock import iso
from journey.core.definition import JourneyDefinition, Kind
from journey.core.events import InvalidTouchpoint, Touchpoint, decode
from journey.core.identity import (
    ALIAS_KEY,
    ALIASED,
    CONTROL_HEADER,
    DEFAULT_JUNK_IDS,
    IDENTIFY,
    LINK,
    MERGE,
    ORIGIN_HEADER,
    SIGNATURE_HEADER,
    BadRequest,
    LinkRequest,
    MergeRequest,
    alias_of,
    already_merged,
    check_mergeable,
    control_key,
    decode_link,
    decode_merge,
    identity_event,
    is_customer,
    linkable,
    make_alias,
    mark_anonymous,
    mark_customer,
    merge,
    needs_link,
    shipped_before,
    sign,
    signed,
)
from journey.core.machine import Limits, Transition, apply
from journey.core.privacy import PRIVACY_CONTROLS
from journey.core.stages import STAGES
from journey.core.state import RECENT_TRANSITIONS, CustomerState
from journey.errors import CorruptState, NewerEncoding
from journey.worker.deadletter import dead_letter

log = logging.getLogger(__name__)


#: Record headers as Kafka clients give them: (name, value) pairs.
Headers = Sequence[tuple[str, bytes | None]]


class InputRecord(Protocol):
    """What the pipeline reads of a consumed record: the fields of aiokafka's ConsumerRecord of
    the same names, so the worker hands the consumer's records over as they are."""

    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    #: When the record reached Kafka, milliseconds since the epoch (for latency).
    @property
    def timestamp(self) -> int | None: ...
    @property
    def headers(self) -> Headers: ...


@dataclass(slots=True)
class Record:
    """A consumed record built by hand (tests, benchmarks, tools): an InputRecord. ``control``
    and ``signature`` become the journey-control and journey-signature headers of journey's own
    records on the input topic (identity and privacy requests)."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    #: Milliseconds since the epoch, as Kafka's record timestamps.
    timestamp: int | None = None
    control: InitVar[bytes | None] = None
    signature: InitVar[bytes | None] = None
    headers: Headers = field(init=False, default=())

    def __post_init__(self, control: bytes | None, signature: bytes | None) -> None:
        if control is not None:
            self.headers = [(CONTROL_HEADER, control)] if signature is None else [(CONTROL_HEADER, control), (SIGNATURE_HEADER, signature)]


def control_headers(headers: Headers) -> tuple[bytes | None, bytes | None]:
    """The journey-control and journey-signature headers' values, where the record has them."""
    control, signature, _origin = journey_headers(headers)
    return control, signature


def journey_headers(headers: Headers) -> tuple[bytes | None, bytes | None, bytes | None]:
    """The journey-control, journey-signature and journey-origin headers' values, where the
    record has them."""
    control = signature = origin = None
    for name, value in headers:
        if name == CONTROL_HEADER:
            control = bytes(value) if value is not None else None
        elif name == SIGNATURE_HEADER:
            signature = bytes(value) if value is not None else None
        elif name == ORIGIN_HEADER:
            origin = bytes(value) if value is not None else None
    return control, signature, origin


@dataclass(slots=True)
class Output:
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] | None = None


@dataclass(frozen=True, slots=True)
class IdentityRules:
    """Settings.identity_*: which anonymous ids never link, and each customer's alias memory."""

    junk: frozenset[str] = DEFAULT_JUNK_IDS
    alias_window: int = 16
    #: Signs and checks the workers' own identity records (core.identity.control_key); kept out
    #: of the repr, since whoever holds it can forge link, merge and forget records.
    key: bytes = field(default=control_key(None, "journey"), repr=False)
    #: This deployment's app id: the journey-origin header of the records it writes to the
    #: input topic (those of another origin are dropped).
    origin: bytes = b"journey"

    def control_output(self, control: bytes, key: str, value: bytes) -> Output:
        """One of the workers' own identity records, signed."""
        kb = key.encode()
        return Output(kb, value, ((CONTROL_HEADER, control), (SIGNATURE_HEADER, sign(self.key, control, kb, value)),
                                  (ORIGIN_HEADER, self.origin)))

    def rekeyed_output(self, key: bytes, value: bytes) -> Output:
        """A touchpoint published again under its customer's key."""
        return Output(key, value, ((ORIGIN_HEADER, self.origin),))


@dataclass
class BatchResult:
    transitions: list[Transition] = field(default_factory=list)
    #: Kafka timestamps (seconds since the epoch) of the records that triggered each transition.
    trigger_timestamps: list[float] = field(default_factory=list)
    dead_letters: list[Output] = field(default_factory=list)
    #: Records for the input topic, in the order they were decided: touchpoints whose Kafka key
    #: is not their customer (re-published under the right key, so all of a customer's events
    #: meet in one partition and one state), a linked anonymous id's events (to the customer),
    #: and identity link and merge requests (to the partition that must act on them).
    rekeyed: list[Output] = field(default_factory=list)
    #: identity_merged and identity_conflict events (journey.identities).
    identities: list[Output] = field(default_factory=list)
    #: customer_forgotten events (the privacy topic; worker/privacy.py).
    privacy: list[Output] = field(default_factory=list)
    merges: int = 0
    conflicts: int = 0
    #: Final state of every customer the batch changed, with a record of theirs (its partition)
    #: and the summary of their state before the batch; None: the state is deleted (forgotten).
    writes: dict[str, tuple[InputRecord, CustomerState | None, Any]] = field(default_factory=dict)
    #: (customer key, type, channel, kind, event time) of every applied touchpoint, for metrics
    #: and the churn hook (which notes carts and purchases without decoding them again).
    applied: list[tuple[str, str, str, Kind, float]] = field(default_factory=list)
    #: Reasons of the dead letters, for metrics.
    reasons: list[str] = field(default_factory=list)
    duplicates: int = 0
    #: Records another deployment's workers wrote (their journey-origin header), dropped.
    foreign: int = 0
    #: The highest event time in the batch (epoch seconds): the stream's event-time clock.
    max_event_time: float | None = None
    #: The same per input partition (each partition's own position in event time).
    max_event_times: dict[int, float] = field(default_factory=dict)


class Pipeline:
    def __init__(
        self,
        definition: JourneyDefinition,
        limits: Limits,
        *,
        summarize: Callable[[CustomerState | None], Any] | None = None,
        copy_reads: bool = True,
        identity: IdentityRules = IdentityRules(),
        privacy: Any = None,
    ) -> None:
        self.definition = definition
        #: Forget requests and suppressed ids (worker/privacy.Privacy); None: neither.
        self.privacy = privacy
        self.limits = limits
        self.identity = identity
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
        records: Sequence[InputRecord],
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
        junk, alias_window = self.identity.junk, self.identity.alias_window
        max_event_times: dict[int, float] = out.max_event_times
        identity = self.identity
        for rec in records:
            control = None
            foreign = False
            headers = rec.headers
            if headers:  # journey's own records (re-keyed, identity, privacy) carry journey's headers
                control, signature, origin = journey_headers(headers)
                foreign = origin is not None and origin != identity.origin
                if foreign and control not in PRIVACY_CONTROLS:
                    # Another deployment's own record (this one writes its own from the originals);
                    # a forget is the customer's request, not derived: honoured whoever relayed it.
                    out.foreign += 1
                    continue
            if control is not None:
                if not signed(identity.key, signature, control, rec.key, rec.value):
                    if foreign:
                        out.foreign += 1  # another deployment's forget under another key (no shared secret): its data stays out of dead letters
                        continue
                    self._dead_letter(out, rec, "bad_identity_request",
                                      "a journey-control record without this deployment's signature; producers must not "
                                      "set journey's own headers (or the workers' JOURNEY_CONTROL_SECRET differs)")
                    continue
                if control != ALIASED:
                    try:
                        if control in PRIVACY_CONTROLS and self.privacy is not None:
                            error = self.privacy.request(self, out, rec, control, read)
                            if error is not None:
                                self._dead_letter(out, rec, "bad_identity_request", error)
                        else:
                            self._identity_request(out, rec, control, read)
                    except NewerEncoding:
                        raise  # a newer worker's state: exit and replay (a new worker reads it), never a dead letter
                    except CorruptState as exc:  # the state it needs is damaged (worker/store.py)
                        log.error("record %s[%d]@%d: %s", rec.topic, rec.partition, rec.offset, exc)
                        self._dead_letter(out, rec, "processing_error", str(exc))
                    except Exception as exc:  # a bug must cost one record, not the worker
                        log.exception("identity request %s[%d]@%d could not be applied", rec.topic, rec.partition, rec.offset)
                        self._dead_letter(out, rec, "processing_error", f"{type(exc).__name__}: {exc}; this is a journey bug, please report it with this record")
                    continue
            # decode + validate
            try:
                if rec.value is None:
                    raise InvalidTouchpoint("empty_value", "the record has no value (a tombstone?); publish a touchpoint JSON object")
                tp = decode(rec.value)
            except InvalidTouchpoint as exc:
                if not self._forgotten_key(out, rec, read):  # a forgotten id's record is dropped even so
                    self._dead_letter(out, rec, exc.reason, exc.error)
                continue
            except Exception as exc:  # a validator bug must cost one record, not the worker
                log.exception("record %s[%d]@%d could not be decoded", rec.topic, rec.partition, rec.offset)
                self._dead_letter(out, rec, "processing_error", f"{type(exc).__name__}: {exc}; this is a journey bug, please report it with this record")
                continue
            key = tp.profile_id
            if control is not None:
                # An anonymous id's event, re-keyed to the customer it was linked to (below).
                try:
                    key = rec.key.decode()  # type: ignore[union-attr]  # signed: a key is there
                except UnicodeDecodeError:
                    self._dead_letter(out, rec, "bad_identity_request", "an aliased touchpoint whose key is not UTF-8")
                    continue
                tp.customer_id = tp.profile_id = key  # tp is this loop's own, just decoded: no copy needed
            elif rec.key is None or rec.key != key.encode():
                out.rekeyed.append(identity.rekeyed_output(key.encode(), rec.value))
                continue
            # dedupe + apply
            try:
                pending, state, before = self.state_of(out, key, rec.partition, read)
            except CorruptState as exc:  # one customer's damaged state must not stop the partition
                log.error("record %s[%d]@%d: %s", rec.topic, rec.partition, rec.offset, exc)
                self._dead_letter(out, rec, "processing_error", str(exc))
                continue
            if state is None and self.privacy is not None and self.privacy.is_suppressed(out, key, rec.partition, read):
                continue  # a forgotten id: dropped, counted, never dead-lettered (that would keep its data)
            if state is not None and state.extra and ALIAS_KEY in state.extra:
                if control is not None:  # an aliased record reached an alias: never a second hop
                    self._dead_letter(out, rec, "bad_identity_request", "an aliased touchpoint reached another alias")
                    continue
                if shipped_before(state, tp.event_id):
                    out.duplicates += 1  # already in the journey the alias shipped to the customer
                    continue
                # A linked anonymous id: its journey is the customer's now, whenever its events arrive.
                out.rekeyed.append(identity.control_output(ALIASED, alias_of(state), rec.value))  # type: ignore[arg-type]
                continue
            if tp.type == IDENTIFY:
                # Link-only: no touch, no stage; the customer exists from now on.
                if state is not None and tp.customer_id is not None and mark_customer(state):
                    if pending is None or pending[1] is None:
                        writes[key] = (rec, state, before)  # an anonymous visitor's profile is a customer's now
                if tp.customer_id is None or tp.anonymous_id is None or tp.anonymous_id == key or not linkable(tp.anonymous_id, junk):
                    continue
                if state is None:
                    state = CustomerState()
                    state.partition = rec.partition
                if pending is None or pending[1] is None:
                    writes[key] = (rec, state, before)
                if needs_link(state, tp.anonymous_id, alias_window):
                    self._ask_link(out, rec, tp, tp.anonymous_id, key)
                continue
            try:
                outcome = apply(state, tp, definition, limits)
            except Exception as exc:  # a bug must cost one event, not the worker
                log.exception("touchpoint %s[%d]@%d could not be applied", rec.topic, rec.partition, rec.offset)  # no customer id in logs
                self._dead_letter(out, rec, "processing_error", f"{type(exc).__name__}: {exc}; this is a journey bug, please report it with this record")
                if pending is None and state is not None and not self.copy_reads:
                    # The state was changed in place up to the failure and the caller's cache
                    # holds that object: write it, so the store agrees with what later reads see.
                    writes[key] = (rec, state, before)
                continue
            # A touchpoint with both ids links them, a duplicate too: it may have come first
            # without the anonymous id (a customer-only copy), and counts once all the same.
            anonymous_id = tp.anonymous_id
            linked = (anonymous_id is not None and tp.customer_id is not None and anonymous_id != key
                      and linkable(anonymous_id, junk) and needs_link(outcome.state, anonymous_id, alias_window))
            if linked:
                self._ask_link(out, rec, tp, anonymous_id, key)  # type: ignore[arg-type]  # checked above
            if outcome.duplicate:
                out.duplicates += 1
                if not linked:
                    continue  # nothing changed
            if pending is None or pending[1] is None:  # later events of the batch change the same object
                outcome.state.partition = rec.partition
                writes[key] = (rec, outcome.state, before)
            if outcome.duplicate:
                continue  # only the links asked for changed
            if tp.customer_id is None:
                mark_anonymous(outcome.state, new=state is None)
            else:
                mark_customer(outcome.state)
            ts = tp.ts
            applied.append((key, tp.type, tp.channel, outcome.kind, ts))
            latest = max_event_times.get(rec.partition)
            if latest is None or ts > latest:
                max_event_times[rec.partition] = ts
            if outcome.transition is not None:
                out.transitions.append(outcome.transition)
                if rec.timestamp is not None:
                    out.trigger_timestamps.append(rec.timestamp / 1000)
        out.max_event_time = max(max_event_times.values()) if max_event_times else None
        return out

    def _ask_link(self, out: BatchResult, rec: InputRecord, tp: Touchpoint, anonymous_id: str, key: str) -> None:
        """A link request for ``anonymous_id`` to the customer ``key``, from the touchpoint ``tp`` at ``rec``."""
        link = LinkRequest(anonymous_id, key, tp.ts, tp.event_id, (rec.topic, rec.partition, rec.offset))
        out.rekeyed.append(self.identity.control_output(LINK, anonymous_id, link.to_bytes()))

    def _identity_request(
        self, out: BatchResult, rec: InputRecord, control: bytes, read: Callable[[str, int], CustomerState | None]
    ) -> None:
        """A link request (at the anonymous id's partition) or a merge request (at the customer's)."""
        try:
            req: LinkRequest | MergeRequest = decode_link(rec.value) if control == LINK else decode_merge(rec.value)
        except BadRequest as exc:
            self._dead_letter(out, rec, "bad_identity_request", f"{exc}; identity requests are journey's own records")
            return
        key = req.anonymous_id if isinstance(req, LinkRequest) else req.customer_id
        if control not in (LINK, MERGE) or rec.key != key.encode():
            self._dead_letter(out, rec, "bad_identity_request", "an identity request under the wrong key or header; journey writes these itself")
            return
        writes = out.writes
        _pending, state, before = self.state_of(out, key, rec.partition, read)
        if state is None and self.privacy is not None and self.privacy.is_suppressed(out, key, rec.partition, read):
            return  # a link to a forgotten anonymous id, or a merge into a forgotten customer
        anonymous_id, customer_id = req.anonymous_id, req.customer_id
        if isinstance(req, LinkRequest):
            linked = alias_of(state)
            if linked == customer_id:
                return  # a repeated or replayed link
            if linked is None and is_customer(state):
                linked = anonymous_id  # the "anonymous" id is a customer's own: it is never anyone's alias
            if linked is not None:
                # A shared device: the first link stands; the event already went to the customer it named.
                event = identity_event("identity_conflict", anonymous_id, customer_id, req.at, req.trigger_event_id, linked)
                out.identities.append(Output(customer_id.encode(), orjson.dumps(event)))
                out.conflicts += 1
                return
            alias = make_alias(customer_id, req.at, req.trigger_event_id, shipped=state)
            alias.partition = rec.partition
            writes[key] = (rec, alias, before)
            merge_request = MergeRequest(anonymous_id, customer_id, req.at, req.trigger_event_id,
                                         state.to_wire() if state is not None else None, req.origin)
            out.rekeyed.append(self.identity.control_output(MERGE, customer_id, merge_request.to_bytes()))
            event = identity_event("identity_merged", anonymous_id, customer_id, req.at, req.trigger_event_id)
            out.identities.append(Output(customer_id.encode(), orjson.dumps(event)))
            out.merges += 1
            return
        if already_merged(state, anonymous_id):
            return  # a replayed merge request
        if req.origin is not None and self.privacy is not None and self.privacy.forgotten_since(out, rec, customer_id, req.origin, read):
            return  # the link was asked before the customer was forgotten (an undo lifted it since): the device's journey stays forgotten
        if state is not None and state.extra and ALIAS_KEY in state.extra:
            self._dead_letter(out, rec, "bad_identity_request", "a merge request for an id that is itself an alias")
            return
        try:
            other = req.anonymous_state()
            check_mergeable(other)
        except NewerEncoding:
            raise  # sent by a newer worker: exit and replay, for a new worker to merge
        except Exception as exc:  # noqa: BLE001 - a state of the wrong shape
            self._dead_letter(out, rec, "bad_identity_request", f"the anonymous state cannot be read: {exc}")
            return
        # Merged into a copy: should the merge fail, the customer's state (cached) is untouched.
        state = state.copy() if state is not None else CustomerState()
        limits = self.limits
        from_stage, to_stage = merge(
            state, other, anonymous_id, order_window=limits.order_window, day_window=limits.day_window,
            dedupe_window=limits.dedupe_window, touch_window=limits.touch_window, alias_window=self.identity.alias_window,
        )
        state.partition = rec.partition
        writes[key] = (rec, state, before)
        if to_stage > from_stage:
            transition = merge_transition(state, customer_id, from_stage, to_stage, req, self.definition.version)
            out.transitions.append(transition)
            if rec.timestamp is not None:
                out.trigger_timestamps.append(rec.timestamp / 1000)

    def state_of(
        self, out: BatchResult, key: str, partition: int, read: Callable[[str, int], CustomerState | None]
    ) -> tuple[tuple[InputRecord, CustomerState | None, Any] | None, CustomerState | None, Any]:
        """(the batch's pending write of ``key`` or None, its state, its summary before the batch):
        what an earlier record of the batch left, else the store (read once per batch)."""
        pending = out.writes.get(key)
        if pending is not None:
            return pending, pending[1], pending[2]
        state, before = self._read(key, partition, read)
        return None, state, before

    def _read(self, key: str, partition: int, read: Callable[[str, int], CustomerState | None]) -> tuple[CustomerState | None, Any]:
        """A customer's state for this batch (a copy with copy_reads) and its summary before."""
        stored = read(key, partition)
        before = self.summarize(stored) if self.summarize is not None else None
        return (stored.copy() if stored is not None and self.copy_reads else stored), before

    def _forgotten_key(self, out: BatchResult, rec: InputRecord, read: Callable[[str, int], CustomerState | None]) -> bool:
        """Whether a record that is no valid touchpoint is keyed by a forgotten id (counted as
        dropped if so): a dead letter would keep the very data the forget removed. Its key is
        the one id there is to go by (the value may not even be JSON)."""
        if self.privacy is None or rec.key is None:
            return False
        try:
            key = rec.key.decode()
            _pending, state, _before = self.state_of(out, key, rec.partition, read)
        except (UnicodeDecodeError, CorruptState):
            return False
        return state is None and bool(self.privacy.is_suppressed(out, key, rec.partition, read))

    @staticmethod
    def _dead_letter(out: BatchResult, rec: InputRecord, reason: str, error: str) -> None:
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


def merge_transition(
    state: CustomerState, customer_id: str, from_stage: int, to_stage: int, req: MergeRequest, version: str
) -> Transition:
    """The customer's move when an anonymous journey joins theirs (trigger_type identity_merged;
    the id follows from the link's trigger event, so a replay gives the same one)."""
    reached = state.reached
    at = reached[to_stage] if reached[to_stage] is not None else req.at
    since = reached[from_stage] if from_stage >= 0 else None
    transition = Transition(
        customer_id=customer_id, from_stage=from_stage, to_stage=to_stage, at=at, at_text=iso(at),  # type: ignore[arg-type]
        trigger_event_id=req.trigger_event_id, trigger_type="identity_merged", channel=state.last_channel or "other",
        seconds_in_previous_stage=None if since is None else max(0.0, at - since),  # type: ignore[operator]
        journey_version=version,
        skipped=[STAGES[i] for i in range(from_stage + 1, to_stage) if reached[i] is None],
    )
    state.recent.append([from_stage, to_stage, at, "identity_merged", transition.channel])
    if len(state.recent) > RECENT_TRANSITIONS:
        del state.recent[0]
    return transition


def transition_output(t: Transition) -> Output:
    return Output(t.customer_id.encode(), orjson.dumps(t.to_event()))
