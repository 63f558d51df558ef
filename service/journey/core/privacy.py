"""Forgetting a customer (GDPR art. 17, CCPA): the rules, as plain functions over plain data.

A forget request travels as journey's own signed control record on the input topic, keyed by the
id to forget, so the worker that owns the id applies it in order with the id's events (the
identity protocol's way: docs/identity.md). Applying it (worker/privacy.py carries this out):

- the id's state is deleted (a tombstone on the changelog, a delete in RocksDB) and with it the
  id's share of the live aggregates;
- a *suppression marker* is written under a key derived from a salted hash of the id, on the
  id's own partition (so it survives crashes and rebalances through the changelog); later
  records for the id find no state, then the marker, and are dropped;
- the anonymous ids the customer linked or merged (the identity memory) are forgotten in turn:
  one forget record keyed by each, with the customer as its ``origin``;
- ``customer_forgotten`` goes to the privacy topic for downstream services.

An undo lifts the marker. See docs/privacy.md for the protocol and its crash cases.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

import orjson

from journey.core.clock import iso, parse_iso
from journey.core.identity import EARLIEST, IDS_KEY, LATEST, SIGNATURE_HEADER, BadRequest, alias_of, json_object
from journey.core.state import CustomerState

#: journey-control header values of the forget and undo records on the input topic.
FORGET, UNFORGET = b"forget", b"unforget"
PRIVACY_CONTROLS = frozenset({FORGET, UNFORGET})
#: The signature domain of requests on the privacy topic (see sign_request).
REQUEST_CONTROL = b"privacy"
#: The privacy topic's record types.
FORGET_REQUESTED = "forget_requested"
UNDO_REQUESTED = "forget_undo_requested"
CUSTOMER_FORGOTTEN = "customer_forgotten"
REQUEST_TYPES = frozenset({FORGET_REQUESTED, UNDO_REQUESTED})
#: CustomerState.extra key of a suppression marker: [requested at, request id], and once lifted
#: [requested at, request id, undo asked at].
FORGOTTEN_KEY = "forgotten"
#: ... and of where the forget that wrote the marker was: [input topic, offset at the id's partition].
OFFSET_KEY = "offset"
#: Marker keys: this prefix (with NUL bytes no real producer uses) and a salted hash's hex digest.
MARKER_PREFIX = "\x00forgotten\x00"
#: The longest reason kept in a request (free text, for the audit trail).
MAX_REASON = 500
MAX_ID = 200


def salt_key(secret: str | None, app_id: str) -> bytes:
    """The suppression salt: the configured secret, else one derived from the app id."""
    return hashlib.sha256((secret if secret is not None else f"journey-privacy:{app_id}").encode()).digest()


def marker_key(salt: bytes, profile_id: str) -> str:
    """The key of ``profile_id``'s suppression marker in the customer table (no id in it)."""
    return MARKER_PREFIX + hmac.new(salt, profile_id.encode(), hashlib.sha256).hexdigest()


def make_marker(at: float, request_id: str, where: tuple[str, int] | None = None) -> CustomerState:
    """A suppression marker: a state with no journey (the live aggregates and the churn timer skip
    it). ``where``: the forget record's input topic and offset, which outlive an undo (forgotten_since)."""
    st = CustomerState()
    st.extra[FORGOTTEN_KEY] = [at, request_id]
    if where is not None:
        st.extra[OFFSET_KEY] = list(where)
    return st


def is_marker(state: CustomerState | None) -> bool:
    """A suppression marker, lifted or not (either way no customer: views, aggregates and the
    churn timer pass over it)."""
    return state is not None and bool(state.extra) and FORGOTTEN_KEY in state.extra


def lift(marker: CustomerState, undo_at: float) -> CustomerState:
    """The marker an undo leaves: no longer suppressing, it keeps when the undo was asked, so
    that a forget asked before it (the relay replaying both after a crash, an old signed request
    sent again) changes nothing, while a later forget forgets again."""
    value = marker.extra.get(FORGOTTEN_KEY)
    lifted = CustomerState()
    lifted.extra[FORGOTTEN_KEY] = [*(value[:2] if isinstance(value, list) and len(value) >= 2 else (None, None)), undo_at]
    if OFFSET_KEY in marker.extra:
        lifted.extra[OFFSET_KEY] = marker.extra[OFFSET_KEY]
    lifted.partition = marker.partition
    return lifted


def forgotten_since(marker: CustomerState | None, origin: tuple[str, int, int], partition: int) -> bool:
    """Whether the id, whose marker is ``marker`` at ``partition``, was forgotten after the record
    at ``origin`` (input topic, partition, offset: a link's origin): a merge that link asked for
    carries a journey from before the forget and stays out, lifted suppression or not. False for
    a marker written before offsets were kept, and for an origin of another topic or partition
    (offsets of two logs say nothing of their order)."""
    if marker is None:
        return False
    where = marker.extra.get(OFFSET_KEY)
    topic, origin_partition, offset = origin
    return (type(where) is list and len(where) == 2 and where[0] == topic and origin_partition == partition
            and type(where[1]) is int and offset < where[1])


def lifted_at(marker: CustomerState | None) -> float | None:
    """When the undo that lifted ``marker`` was asked (None: a marker that suppresses, or none)."""
    if marker is None:
        return None
    value = marker.extra.get(FORGOTTEN_KEY)
    return value[2] if isinstance(value, list) and len(value) == 3 and isinstance(value[2], (int, float)) else None


def suppresses(marker: CustomerState | None) -> bool:
    """Whether a marker read for an id with no state still suppresses it (not lifted)."""
    return marker is not None and lifted_at(marker) is None


def linked_ids(state: CustomerState | None, own_id: str, names: tuple[str, ...] = ("m", "l")) -> list[str]:
    """The anonymous ids a customer's identity memory names: merged ("m") and asked to link
    ("l"), in that order, once each, the customer's own id left out."""
    if state is None or not state.extra:
        return []
    ids = state.extra.get(IDS_KEY)
    if not isinstance(ids, dict):
        return []
    out: list[str] = []
    for name in names:
        for value in ids.get(name) or ():
            if isinstance(value, str) and value != own_id and value not in out:
                out.append(value)
    return out


def merged_ids(state: CustomerState | None, own_id: str) -> list[str]:
    """The anonymous ids whose journeys were merged into the customer's: certainly theirs (an id
    only asked to link may be another customer's device, which its partition keeps)."""
    return linked_ids(state, own_id, ("m",))


# --- the control record on the input topic ----------------------------------------------------
@dataclass(frozen=True, slots=True)
class ForgetRequest:
    """Forget (or, as an UNFORGET record, stop suppressing) ``profile_id``. ``origin``: the
    customer whose forget this follows from (a linked anonymous id), None for a direct request."""

    profile_id: str
    request_id: str
    at: float
    origin: str | None = None
    #: A linked id the origin's customer_forgotten names already (merged into the customer).
    listed: bool = False

    def to_bytes(self) -> bytes:
        data: dict[str, Any] = {"id": self.profile_id, "request_id": self.request_id, "at": self.at, "origin": self.origin}
        if self.listed:
            data["listed"] = True
        return orjson.dumps(data)


def decode_forget(raw: bytes | None) -> ForgetRequest:
    data = json_object(raw, "a forget request that is ")
    for name in ("id", "request_id"):
        if type(data.get(name)) is not str or not 0 < len(data[name]) <= MAX_ID:
            raise BadRequest(f"a forget request whose {name} is not a string of 1 to {MAX_ID} characters")
    origin = data.get("origin")
    if origin is not None and (type(origin) is not str or not origin):
        raise BadRequest("a forget request whose origin is neither null nor an id")
    at: Any = data.get("at")
    if type(at) not in (int, float) or not EARLIEST <= at <= LATEST:
        raise BadRequest("a forget request whose at is not epoch seconds between 1900 and 2199")
    listed = data.get("listed", False)
    if type(listed) is not bool:
        raise BadRequest("a forget request whose listed is not true or false")
    return ForgetRequest(data["id"], data["request_id"], float(at), origin, listed)


@dataclass(frozen=True, slots=True)
class ForgetPlan:
    """What applying a forget request does at the id's partition."""

    #: Delete the id's state (it has one).
    delete: bool
    #: Write the suppression marker (there is none yet).
    mark: bool
    #: Anonymous ids to forget next (one forget record keyed by each, this id as their origin).
    cascade: tuple[str, ...]
    #: Publish customer_forgotten (a direct request that changed something or is new; a linked
    #: id its customer's notice does not name, once it is found to be theirs).
    announce: bool
    #: Ignored as dated at or before the undo that lifted the id's suppression (a replay, or a
    #: new request from a clock behind the undo's: the two look the same).
    stale: bool = False


def plan_forget(state: CustomerState | None, request: ForgetRequest, marker: CustomerState | None) -> ForgetPlan:
    """The effect of ``request`` on an id whose state is ``state`` and whose suppression marker is
    ``marker`` (None: none). Idempotent: applied again to its own result it does nothing at all.

    customer_forgotten is announced when the forget changes something, or when the id was
    forgotten by another request (that request id gets its confirmation too). A replay of the
    same request stays silent: its marker is durable only after the stage that wrote it had its
    outputs, the announcement among them, acknowledged (the batch protocol's order)."""
    undone = lifted_at(marker)
    if undone is not None:
        if request.at <= undone:
            # Asked before the undo that lifted this id's suppression: a replay, or an old request
            # sent again. Applying it would delete what came after the undo.
            return ForgetPlan(delete=False, mark=False, cascade=(), announce=False, stale=True)
        marker = None  # a new forget after the undo: as for an id never forgotten
    own = request.profile_id
    if request.origin is not None:
        # A linked anonymous id of a forgotten customer: forget it only while it is that
        # customer's (a shared device linked to someone else first stays theirs).
        if state is not None and alias_of(state) != request.origin:
            return ForgetPlan(delete=False, mark=False, cascade=(), announce=False)
        # Its own notice when the customer's could not name it: linked, not merged, when the
        # customer was forgotten (the link landed since, or its merge was still in flight).
        return ForgetPlan(delete=state is not None, mark=marker is None, cascade=(),
                          announce=state is not None and not request.listed)
    cascade = tuple(linked_ids(state, own)) if alias_of(state) is None else ()
    announce = state is not None or marker is None or marked_by(marker) != request.request_id
    return ForgetPlan(delete=state is not None, mark=marker is None, cascade=cascade, announce=announce)


def undo_lifts(marker: CustomerState | None, request: ForgetRequest) -> bool:
    """Whether an undo lifts ``marker``: only one asked after the forget that wrote it, so a
    stale undo (an old signed record sent again) cannot lift a later forget's suppression."""
    if marker is None or lifted_at(marker) is not None:
        return False  # nothing to lift, or lifted already
    value = marker.extra.get(FORGOTTEN_KEY)
    marked_at = value[0] if isinstance(value, list) and value and isinstance(value[0], (int, float)) else None
    return marked_at is None or request.at > marked_at


def marked_by(marker: CustomerState) -> str | None:
    """The request id that wrote a suppression marker."""
    value = marker.extra.get(FORGOTTEN_KEY)
    return value[1] if isinstance(value, list) and len(value) == 2 and isinstance(value[1], str) else None


# --- the privacy topic ------------------------------------------------------------------------
def sign_request(key: bytes, record_key: bytes, value: bytes) -> bytes:
    """The journey-signature of a request on the privacy topic (JOURNEY_CONTROL_SECRET's key)."""
    return hmac.new(key, b"\x1f".join((REQUEST_CONTROL, record_key, value)), hashlib.sha256).digest()[:16]


def request_signed(key: bytes, signature: bytes | None, record_key: bytes | None, value: bytes | None) -> bool:
    if signature is None or record_key is None or value is None:
        return False
    return hmac.compare_digest(signature, sign_request(key, record_key, value))


def request_event(kind: str, customer_id: str, request_id: str, at: float, *, reason: str | None = None,
                  source: str = "cli") -> dict[str, Any]:
    """A request on the privacy topic (schemas/privacy.schema.json)."""
    if kind not in REQUEST_TYPES:
        raise ValueError(f"unknown privacy request type {kind!r}")
    event: dict[str, Any] = {"type": kind, "customer_id": customer_id, "request_id": request_id, "at": iso(at), "source": source}
    if reason:
        event["reason"] = reason[:MAX_REASON]
    return event


@dataclass(frozen=True, slots=True)
class PrivacyRecord:
    """A record of the privacy topic as the relay reads it."""

    type: str
    customer_id: str
    request_id: str
    at: float


def parse_privacy_record(raw: bytes | None, record_key: bytes | None) -> PrivacyRecord:
    """Decode a record of the privacy topic; BadRequest when it is not one of journey's."""
    try:
        data = orjson.loads(raw or b"")
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"not JSON: {exc}") from None
    if type(data) is not dict or data.get("type") not in (*REQUEST_TYPES, CUSTOMER_FORGOTTEN):
        raise BadRequest("not a privacy record (type must be forget_requested, forget_undo_requested or customer_forgotten)")
    for name in ("customer_id", "request_id"):
        if type(data.get(name)) is not str or not 0 < len(data[name]) <= MAX_ID:
            raise BadRequest(f"{name} must be a string of 1 to {MAX_ID} characters")
    if record_key is None or record_key != data["customer_id"].encode():
        raise BadRequest("the record's key is not its customer_id")
    try:
        at = parse_iso(data["at"]) if isinstance(data.get("at"), str) else None
    except ValueError:
        at = None
    if at is None or not EARLIEST <= at <= LATEST:
        raise BadRequest("at must be an RFC 3339 time in the years 1900-2199")
    return PrivacyRecord(data["type"], data["customer_id"], data["request_id"], at)


def forgotten_event(customer_id: str, request_id: str, requested_at: float, at: float, anonymous_ids: list[str],
                    forgotten_with: str | None = None) -> dict[str, Any]:
    """customer_forgotten (the downstream contract: delete everything held under these ids).
    ``forgotten_with``: for an anonymous id forgotten as its customer's, that customer (its
    request id is then derived from the customer's request, so each notice has its own)."""
    event = {"type": CUSTOMER_FORGOTTEN, "customer_id": customer_id, "request_id": request_id,
             "at": iso(at), "requested_at": iso(requested_at), "anonymous_ids": anonymous_ids}
    if forgotten_with is not None:
        event["forgotten_with"] = forgotten_with
    return event


def id_length_error(customer_id: str) -> str | None:
    """Why ``customer_id`` cannot be an id journey keeps (None: it can)."""
    if 0 < len(customer_id) <= MAX_ID:
        return None
    return f"a customer id is 1 to {MAX_ID} characters; got {len(customer_id)}"


def signed_request(signing_key: bytes, kind: str, customer_id: str, request_id: str, at: float, *,
                   reason: str | None = None, source: str = "cli") -> tuple[bytes, bytes, tuple[tuple[str, bytes], ...]]:
    """(key, value, headers) of a request for the privacy topic, signed so the relay applies it."""
    wrong = id_length_error(customer_id)
    if wrong is not None:
        raise ValueError(wrong)
    key = customer_id.encode()
    value = orjson.dumps(request_event(kind, customer_id, request_id, at, reason=reason, source=source))
    return key, value, ((SIGNATURE_HEADER, sign_request(signing_key, key, value)),)
