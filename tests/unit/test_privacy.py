"""Forgetting a customer: the pure rules (core/privacy.py) and the pipeline carrying them out over
an in-memory loop of partitions (worker/privacy.Privacy), no Kafka."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from journey.core.aggregates import summarize
from journey.core.definition import load_definition
from journey.core.identity import (
    MERGE,
    BadRequest,
    LinkRequest,
    MergeRequest,
    alias_of,
    control_key,
    decode_link,
    decode_merge,
    make_alias,
    sign,
)
from journey.core.ids import stable_id
from journey.core.machine import Limits
from journey.core.privacy import (
    CUSTOMER_FORGOTTEN,
    FORGET,
    FORGET_REQUESTED,
    UNDO_REQUESTED,
    UNFORGET,
    ForgetRequest,
    decode_forget,
    forgotten_since,
    is_marker,
    lift,
    lifted_at,
    linked_ids,
    make_marker,
    marker_key,
    merged_ids,
    parse_privacy_record,
    plan_forget,
    request_signed,
    salt_key,
    signed_request,
    undo_lifts,
)
from journey.core.state import CustomerState
from journey.worker.pipeline import IdentityRules, Pipeline, Record, control_headers
from journey.worker.privacy import Privacy
from support.loop import InputLoop, touchpoint

ROOT = Path(__file__).resolve().parents[2]
DEFINITION = load_definition(ROOT / "schemas" / "journey.yaml")
SCHEMA = json.loads((ROOT / "schemas" / "privacy.schema.json").read_text())
T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
SALT = salt_key(None, "journey")


def event(etype: str, minutes: float, **kwargs: Any) -> dict[str, Any]:
    return touchpoint(T0, etype, minutes, **kwargs)


# --- the pure rules ------------------------------------------------------------------------------
def _customer(links: list[str] = (), merged: list[str] = ()) -> CustomerState:  # type: ignore[assignment]
    st = CustomerState()
    st.stage = 2
    st.extra["id"] = {"l": list(links), "m": list(merged)}
    return st


def test_marker_keys_are_salted_hashes_that_name_nobody() -> None:
    key = marker_key(SALT, "c-42")
    assert key == marker_key(SALT, "c-42") and "c-42" not in key
    assert key != marker_key(salt_key("another secret", "journey"), "c-42")
    assert key != marker_key(SALT, "c-43")
    assert is_marker(make_marker(1.0, "r")) and not is_marker(CustomerState()) and not is_marker(None)
    assert summarize(make_marker(1.0, "r")) is None  # never counted in the live numbers


def test_only_merged_ids_are_named_as_forgotten_with_the_customer() -> None:
    # dev-2 was only asked to link: it may be another customer's device, which its partition keeps.
    assert merged_ids(_customer(links=["dev-1", "dev-2"], merged=["dev-1"]), "c") == ["dev-1"]
    assert merged_ids(None, "c") == [] and merged_ids(CustomerState(), "c") == []


def test_only_an_undo_asked_after_the_forget_lifts_its_marker() -> None:
    marker = make_marker(100.0, "r1")
    assert undo_lifts(marker, ForgetRequest("c", "u1", 101.0))
    assert not undo_lifts(marker, ForgetRequest("c", "u0", 99.0)), "a stale undo sent again must not lift a later forget"
    assert not undo_lifts(marker, ForgetRequest("c", "u1", 100.0))
    assert not undo_lifts(None, ForgetRequest("c", "u1", 101.0))


def test_a_customer_forget_deletes_marks_cascades_to_linked_ids_and_announces() -> None:
    st = _customer(links=["dev-1", "dev-2", "c"], merged=["dev-1"])
    assert linked_ids(st, "c") == ["dev-1", "dev-2"]
    plan = plan_forget(st, ForgetRequest("c", "r1", 1.0), None)
    assert (plan.delete, plan.mark, plan.cascade, plan.announce) == (True, True, ("dev-1", "dev-2"), True)


def test_a_replayed_forget_changes_nothing_and_a_new_request_is_confirmed() -> None:
    marker = make_marker(1.0, "r1")
    plan = plan_forget(None, ForgetRequest("c", "r1", 1.0), marker)
    assert (plan.delete, plan.mark, plan.cascade, plan.announce) == (False, False, (), False)
    again = plan_forget(None, ForgetRequest("c", "r2", 2.0), marker)  # asked again: confirmed again
    assert (again.delete, again.mark, again.announce) == (False, False, True)
    never_seen = plan_forget(None, ForgetRequest("x", "r3", 2.0), None)
    assert (never_seen.delete, never_seen.mark, never_seen.announce) == (False, True, True)


def test_a_linked_id_is_forgotten_only_while_it_is_the_customers() -> None:
    follow = ForgetRequest("dev-1", "r1", 1.0, origin="c")
    mine = plan_forget(make_alias("c", 1.0, "e"), follow, None)
    assert (mine.delete, mine.mark, mine.cascade, mine.announce) == (True, True, (), True)  # its own notice
    listed = plan_forget(make_alias("c", 1.0, "e"), ForgetRequest("dev-1", "r1", 1.0, origin="c", listed=True), None)
    assert (listed.delete, listed.mark, listed.announce) == (True, True, False)  # the customer's notice names it
    theirs = plan_forget(make_alias("someone-else", 1.0, "e"), follow, None)  # a shared device
    assert (theirs.delete, theirs.mark) == (False, False)
    a_customer = plan_forget(_customer(), follow, None)  # an id that came as a customer_id
    assert (a_customer.delete, a_customer.mark) == (False, False)
    gone = plan_forget(None, follow, make_marker(1.0, "r1"))
    assert (gone.delete, gone.mark) == (False, False)


def test_forgetting_an_alias_directly_does_not_reach_its_customer() -> None:
    plan = plan_forget(make_alias("c", 1.0, "e"), ForgetRequest("dev-1", "r1", 1.0), None)
    assert (plan.delete, plan.mark, plan.cascade) == (True, True, ())


@pytest.mark.parametrize("raw", [
    b"{", b"[]", b'{"id": "", "request_id": "r", "at": 1}', b'{"id": "c", "at": 1}',
    b'{"id": "c", "request_id": "r", "at": 1e300}', b'{"id": "c", "request_id": "r", "at": 1, "origin": 5}',
    b'{"id": "c", "request_id": "r", "at": 1, "origin": "x", "listed": 1}',
])
def test_bad_forget_records_are_refused(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        decode_forget(raw)


def test_requests_are_signed_and_match_the_schema() -> None:
    key = control_key(None, "journey")
    k, v, headers = signed_request(key, FORGET_REQUESTED, "c-1", "r1", 1.7e9, reason="art. 17", source="api")
    jsonschema.validate(orjson.loads(v), SCHEMA)
    assert request_signed(key, headers[0][1], k, v)
    assert not request_signed(key, headers[0][1], k, v.replace(b"c-1", b"c-2"))
    assert not request_signed(control_key("other", "journey"), headers[0][1], k, v)
    record = parse_privacy_record(v, k)
    assert (record.type, record.customer_id, record.request_id, record.at) == (FORGET_REQUESTED, "c-1", "r1", 1.7e9)
    with pytest.raises(BadRequest, match="key"):
        parse_privacy_record(v, b"c-2")
    with pytest.raises(ValueError):
        signed_request(key, FORGET_REQUESTED, "x" * 201, "r", 1.0)
    _, undo, _ = signed_request(key, UNDO_REQUESTED, "c-1", "r2", 1.7e9)
    jsonschema.validate(orjson.loads(undo), SCHEMA)


# --- the pipeline: a loop of partitions ---------------------------------------------------------------


class Cluster(InputLoop):
    """The input topic in memory (support.loop) with the privacy hook."""

    def __init__(self) -> None:
        self.privacy = Privacy(SALT, clock=lambda: 2e9)
        super().__init__(Pipeline(DEFINITION, Limits(), summarize=summarize, identity=IdentityRules(), privacy=self.privacy))

    def forget(self, profile_id: str, request_id: str = "r1", *, undo: bool = False, at: float | None = None) -> None:
        """What the relay puts on the input topic for a signed request."""
        control = UNFORGET if undo else FORGET
        output = self.pipeline.identity.control_output(control, profile_id, ForgetRequest(profile_id, request_id, 1.7e9 + self.offset if at is None else at).to_bytes())
        self.send(output.value, profile_id, *control_headers(output.headers or ()))

    def counted(self) -> int:
        assert self.recount().slots() == self.agg.slots(), "the live aggregate is not the recount of the states"
        return sum(self.agg.slots())

    def customers(self) -> set[str]:
        return {k for k, s in self.states.items() if not is_marker(s)}


def _linked_customer(cluster: Cluster) -> None:
    cluster.send(event("product_view", 1, anonymous="dev-1"))
    cluster.send(event("add_to_cart", 2, customer="c", anonymous="dev-1"))  # links dev-1 to c
    cluster.send(event("page_view", 3, customer="bob"))
    cluster.run()
    assert alias_of(cluster.states["dev-1"]) == "c" and cluster.counted() == 2


def test_forget_removes_the_customer_and_their_anonymous_id_and_suppresses_both() -> None:
    cluster = Cluster()
    _linked_customer(cluster)
    cluster.forget("c")
    cluster.run()
    assert cluster.customers() == {"bob"} and cluster.counted() == 1
    assert [(a["type"], a["customer_id"], a["request_id"], a["anonymous_ids"]) for a in cluster.announced] == [
        (CUSTOMER_FORGOTTEN, "c", "r1", ["dev-1"])]
    jsonschema.validate(cluster.announced[0], SCHEMA)
    markers = {marker_key(SALT, "c"), marker_key(SALT, "dev-1")}
    assert {k for k, s in cluster.states.items() if is_marker(s)} == markers
    moved = len(cluster.transitions)
    # Later: the customer, the anonymous id alone, and both together: all dropped and counted.
    cluster.send(event("purchase", 10, customer="c", order_id="o1"))
    cluster.send(event("purchase", 11, anonymous="dev-1", order_id="o2"))
    cluster.send(event("page_view", 12, customer="c", anonymous="dev-1"))
    cluster.run()
    assert cluster.customers() == {"bob"} and len(cluster.transitions) == moved and not cluster.dead
    assert cluster.privacy.suppressed == 3 and cluster.privacy.forgotten == 2


def test_a_replayed_forget_is_harmless() -> None:
    cluster = Cluster()
    _linked_customer(cluster)
    cluster.forget("c")
    cluster.run()
    states = {k: s.to_wire() for k, s in cluster.states.items()}
    cluster.forget("c")  # the relay replayed the request after a crash
    cluster.run()
    assert {k: s.to_wire() for k, s in cluster.states.items()} == states
    assert [a["request_id"] for a in cluster.announced] == ["r1"]  # the replay is silent
    assert cluster.privacy.forgotten == 2 and cluster.privacy.marked == 2
    cluster.forget("c", "r9")  # asked again by someone else: confirmed, nothing else
    cluster.run()
    assert [(a["request_id"], a["anonymous_ids"]) for a in cluster.announced] == [("r1", ["dev-1"]), ("r9", [])]
    assert {k: s.to_wire() for k, s in cluster.states.items()} == states


def test_a_merge_or_a_link_for_a_forgotten_id_is_dropped() -> None:
    cluster = Cluster()
    _linked_customer(cluster)
    cluster.forget("c")
    cluster.run()
    # A merge request in flight when the customer was forgotten, and a new customer claiming the
    # forgotten anonymous id: neither brings anything back.
    raw = orjson.dumps({"anonymous_id": "dev-7", "customer_id": "c", "at": 1.0, "trigger_event_id": "x", "state": None})
    cluster.send(raw, "c", MERGE, sign(cluster.pipeline.identity.key, MERGE, b"c", raw))
    cluster.send(event("page_view", 20, customer="dora", anonymous="dev-1"))
    cluster.run()
    assert cluster.customers() == {"bob", "dora"} and "dev-1" not in cluster.states


def test_a_forgotten_ids_record_that_is_no_valid_touchpoint_is_dropped_not_dead_lettered() -> None:
    """A dead letter keeps the record's raw value: for a forgotten id that would keep the data the
    forget removed. A record keyed by it is dropped and counted whatever its shape (a bad
    timestamp, no JSON, no value); another customer's bad record is still dead-lettered."""
    from journey.worker.pipeline import Record

    c = Cluster()
    c.send(event("page_view", 1, customer="c-42"))
    c.forget("c-42")
    c.run()
    bad = event("purchase", 2, customer="c-42", order_id="o1", email="jane@example.com")
    bad["timestamp"] = "2024-03-01 09:00"  # a producer bug
    p = c.partition("c-42")
    records = [Record(b"c-42", orjson.dumps(bad), "tp", p, 100), Record(b"c-42", b"{not json jane@example.com", "tp", p, 101),
               Record(b"c-42", None, "tp", p, 102), Record(b"c-43", orjson.dumps({**bad, "customer_id": "c-43"}), "tp", c.partition("c-43"), 103)]
    before = c.privacy.suppressed
    out = c.pipeline.process(records, c.states)
    assert c.privacy.suppressed - before == 3
    assert [d.key for d in out.dead_letters] == [b"c-43"] and out.reasons == ["schema_violation"]


def test_a_device_linked_but_not_yet_merged_when_its_customer_is_forgotten_gets_a_notice_of_its_own() -> None:
    """The customer's notice names the merged ids only (certainly theirs). A device whose link was
    still on its way (or whose merge was) is forgotten by its own partition once it is found to
    be the customer's: that partition publishes its notice, with forgotten_with and a request id
    of its own, once; a merged device is not announced twice."""
    c = Cluster()
    c.send(event("product_view", 1, anonymous="dev-1"))
    c.send(event("product_view", 1, anonymous="dev-2"))
    c.send(event("page_view", 2, customer="c", anonymous="dev-2"))
    c.run()  # dev-2 merged into c
    c.send(event("page_view", 3, customer="c", anonymous="dev-1"))
    c.run(batch=1, rounds=1)
    link = [r for r in c.queue if r.key == b"dev-1"]
    assert len(link) == 1  # the link to dev-1 is on its way
    c.queue = [r for r in c.queue if r.key != b"dev-1"]
    c.forget("c", "r1", at=1000.0)
    c.run(batch=1, rounds=1)
    c.queue[:0] = link  # the link reaches dev-1 before the cascade (it was produced first)
    c.run()
    notices = [(a["customer_id"], a["request_id"], a["anonymous_ids"], a.get("forgotten_with")) for a in c.announced]
    derived = stable_id("r1", "dev-1")
    assert notices == [("c", "r1", ["dev-2"], None), ("dev-1", derived, [], "c")]
    for a in c.announced:
        jsonschema.validate(a, SCHEMA)
    assert c.customers() == set()
    c.forget("c", "r1", at=1000.0)  # the same request again (a replay): nothing new is announced
    c.run()
    assert len(c.announced) == 2


def test_undo_lifts_the_suppression() -> None:
    cluster = Cluster()
    _linked_customer(cluster)
    cluster.forget("c")
    cluster.run()
    cluster.forget("c", "r2", undo=True)
    cluster.run()
    # Lifted, the marker stays with the undo's time; the anonymous id's still suppresses.
    assert lifted_at(cluster.states[marker_key(SALT, "c")]) is not None
    assert lifted_at(cluster.states[marker_key(SALT, "dev-1")]) is None
    cluster.send(event("page_view", 30, customer="c"))
    cluster.run()
    assert cluster.customers() == {"bob", "c"} and cluster.states["c"].events == 1  # a fresh start
    assert cluster.transitions[-1]["customer_id"] == "c" and cluster.transitions[-1]["from_stage"] is None


def test_a_forget_replayed_after_its_undo_changes_nothing_and_a_new_one_forgets_again() -> None:
    """The relay commits its offsets every second: killed after relaying a forget and its undo, it
    relays both again. The replayed forget, asked before the undo, must not delete what the
    customer sent after the undo (before: it did, and said so again with the old request id)."""
    cluster = Cluster()
    cluster.send(event("page_view", 1, customer="c"))
    cluster.forget("c", "r1", at=1000.0)
    cluster.forget("c", "r2", undo=True, at=1001.0)
    cluster.run()
    cluster.send(event("product_view", 2, customer="c"))  # after the undo: a new journey
    cluster.run()
    assert cluster.customers() == {"c"} and cluster.states["c"].events == 1
    cluster.forget("c", "r1", at=1000.0)  # the relay's replay
    cluster.forget("c", "r2", undo=True, at=1001.0)
    cluster.run()
    assert cluster.customers() == {"c"} and cluster.states["c"].events == 1 and cluster.counted() == 1
    assert [a["request_id"] for a in cluster.announced] == ["r1"]  # announced once, when it was applied
    assert cluster.privacy.stale == 1  # ignored, counted and logged (a new request from a slow clock looks the same)
    assert ("ignored_older_than_undo", 1.0) in [(s.labels["action"], s.value) for m in cluster.privacy.collect()
                                                  for s in m.samples if "action" in s.labels]
    cluster.forget("c", "r3", at=1002.0)  # a new forget after the undo
    cluster.run()
    assert cluster.customers() == set() and cluster.counted() == 0
    assert [a["request_id"] for a in cluster.announced] == ["r1", "r3"]
    cluster.send(event("page_view", 3, customer="c"))
    cluster.run()
    assert cluster.customers() == set() and cluster.privacy.suppressed == 1


def test_a_merge_asked_before_the_forget_stays_out_after_a_quick_undo() -> None:
    """A device's link still queued at its lagging partition when its customer is forgotten and
    then undone: the merge it sends lands after the undo. Before, it was applied and the device's
    journey from before the forget came back under the customer."""
    cluster = Cluster()
    cluster.send(event("product_view", 1, anonymous="dev-1"))
    cluster.send(event("add_to_cart", 2, anonymous="dev-1"))
    cluster.run()
    cluster.send(event("page_view", 3, customer="c", anonymous="dev-1"))  # asks dev-1's partition to link
    cluster.run(batch=1, rounds=1)
    [link] = cluster.queue
    cluster.forget("c", "r1", at=1000.0)
    cluster.forget("c", "r2", undo=True, at=1001.0)
    cluster.queue = [*cluster.queue[1:], link]  # dev-1's partition lags: the link comes after both
    cluster.run(batch=1)
    assert "c" not in cluster.states and "dev-1" not in cluster.states  # the cascade forgot the device
    assert cluster.privacy.suppressed == 1 and cluster.counted() == 0
    cluster.send(event("page_view", 10, customer="c"))  # after the undo: a new journey, nothing older
    cluster.run()
    assert cluster.states["c"].events == 1 and cluster.states["c"].stage == 0
    # A device linked after the undo merges as any other.
    cluster.send(event("product_view", 11, anonymous="dev-2"))
    cluster.send(event("add_to_cart", 12, customer="c", anonymous="dev-2"))
    cluster.run()
    assert alias_of(cluster.states["dev-2"]) == "c" and cluster.states["c"].events == 3 and cluster.counted() == 1


def test_links_and_merges_carry_their_origin_and_older_ones_still_merge() -> None:
    link = LinkRequest("dev-1", "c", 1.7e9, "e1", ("tp", 3, 42))
    assert decode_link(link.to_bytes()) == link
    merge_request = MergeRequest("dev-1", "c", 1.7e9, "e1", None, ("tp", 3, 42))
    assert decode_merge(merge_request.to_bytes()).origin == ("tp", 3, 42)
    older = MergeRequest("dev-1", "c", 1.7e9, "e1", None)  # from a worker before origins
    assert b"origin" not in older.to_bytes() and decode_merge(older.to_bytes()).origin is None
    for bad in (-1, 42, ["tp", 3], ["tp", -1, 4], [1, 2, 3], ["tp", 3, 4.5]):
        with pytest.raises(BadRequest, match="origin"):
            decode_link(orjson.dumps({"anonymous_id": "a", "customer_id": "c", "at": 1.0, "trigger_event_id": "e", "origin": bad}))
    marker = make_marker(1.0, "r1", ("tp", 50))  # written at partition 3
    assert forgotten_since(marker, ("tp", 3, 49), 3)
    assert not forgotten_since(marker, ("tp", 3, 50), 3) and not forgotten_since(marker, ("tp", 3, 51), 3)
    assert forgotten_since(lift(marker, 2.0), ("tp", 3, 49), 3), "an undo keeps the forget's offset"
    assert not forgotten_since(marker, ("another-input", 3, 49), 3), "offsets of another topic say nothing"
    assert not forgotten_since(marker, ("tp", 5, 49), 3), "nor offsets of another partition"
    assert not forgotten_since(make_marker(1.0, "r1"), ("tp", 3, 0), 3) and not forgotten_since(None, ("tp", 3, 0), 3)


def test_a_damaged_lifted_marker_lets_merges_in() -> None:
    """Reached only for a customer with a state (a suppressing marker stops the merge before):
    the marker was lifted, so refusing would drop every later device of a customer who came back."""
    from journey.errors import CorruptState
    from journey.worker.pipeline import BatchResult

    def damaged(key: str, partition: int) -> CustomerState | None:
        raise CorruptState("not a state this journey writes")

    privacy = Privacy(SALT, clock=lambda: 2e9)
    rec = Record(b"c", b"{}", "tp", 0, 99)
    assert not privacy.forgotten_since(BatchResult(), rec, "c", ("tp", 0, 1), damaged) and privacy.suppressed == 0


def test_forget_undo_and_events_in_one_batch() -> None:
    cluster = Cluster()
    cluster.send(event("page_view", 1, customer="c"))
    cluster.forget("c")
    cluster.send(event("product_view", 2, customer="c"))  # suppressed
    cluster.forget("c", "r2", undo=True)
    cluster.send(event("add_to_cart", 3, customer="c"))  # applied to a fresh state
    cluster.run(batch=10)
    assert cluster.customers() == {"c"} and cluster.states["c"].events == 1 and cluster.states["c"].stage == 2
    assert cluster.privacy.suppressed == 1 and cluster.counted() == 1


def test_forged_and_malformed_forget_records_are_dead_lettered() -> None:
    cluster = Cluster()
    cluster.send(event("page_view", 1, customer="c"))
    raw = ForgetRequest("c", "r", 1.0).to_bytes()
    cluster.send(raw, "c", FORGET, None)  # no signature: a producer cannot forget anyone
    key = cluster.pipeline.identity.key
    cluster.send(raw, "bob", FORGET, sign(key, FORGET, b"bob", raw))  # under another key
    cluster.send(b"{}", "c", FORGET, sign(key, FORGET, b"c", b"{}"))
    cluster.run()
    assert cluster.dead == ["bad_identity_request"] * 3 and cluster.customers() == {"c"}


def test_a_pipeline_without_privacy_keeps_its_behaviour() -> None:
    pipeline = Pipeline(DEFINITION, Limits())
    rec = Record(b"c", orjson.dumps(event("page_view", 1, customer="c")), "tp", 0, 1)
    result = pipeline.process([rec], {})
    assert list(result.writes) == ["c"] and not result.privacy
    assert Counter(result.reasons) == Counter()
