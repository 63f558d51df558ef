"""Identity: the merge of an anonymous journey into a customer's equals the state of all their
events together (an independent reference), and the pipeline's link/merge protocol, run over an
in-memory loop of partitions, gives the same final states and counts in every arrival order
(docs/identity.md names the one exception: an id linked before it came as a customer_id),
merges nothing twice, keeps the first link of a shared device and never links junk ids."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from journey.core.aggregates import summarize
from journey.core.definition import load_definition
from journey.core.events import validate
from journey.core.identity import (
    ALIASED,
    LINK,
    MERGE,
    BadRequest,
    MergeRequest,
    alias_of,
    check_mergeable,
    control_key,
    decode_merge,
    junk_ids,
    merge,
    sign,
)
from journey.core.machine import Limits, apply
from journey.core.state import CustomerState, event_key, id_hash
from journey.worker.pipeline import IdentityRules, Pipeline, Record
from support.journey_reference import observable, reference
from support.loop import InputLoop, touchpoint

ROOT = Path(__file__).resolve().parents[2]
DEFINITION = load_definition(ROOT / "schemas" / "journey.yaml")
T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
LIMITS = Limits()

TYPES = ["ad_click", "page_view", "product_view", "add_to_cart", "purchase", "support_ticket", "review_submitted", "referral"]
CHANNELS = ["ads", "email", "search", "social", "direct", None]


def event(etype: str, minutes: float, **kwargs: Any) -> dict[str, Any]:
    return touchpoint(T0, etype, minutes, **kwargs)


def _merge(into: CustomerState, other: CustomerState, anonymous_id: str = "a1") -> tuple[int, int]:
    return merge(into, other, anonymous_id, order_window=LIMITS.order_window, day_window=LIMITS.day_window,
                 dedupe_window=LIMITS.dedupe_window, touch_window=LIMITS.touch_window, alias_window=16)


def _run(events: list[Any]) -> CustomerState:
    state = CustomerState()
    for e in events:
        state = apply(state, e, DEFINITION, LIMITS).state
    return state


def _random_events(rng: random.Random, n: int) -> list[dict[str, Any]]:
    out = []
    for _ in range(n):
        etype = rng.choice(TYPES)
        props: dict[str, Any] = {}
        if etype == "purchase":
            props = {"order_id": rng.choice(["o1", "o2", "o3"]), "amount": rng.choice([10.0, 2.5])}
        if etype == "review_submitted":
            props["rating"] = rng.randint(1, 5)
        out.append(event(etype, rng.randint(0, 12) * 100, customer="c1", channel=rng.choice(CHANNELS), **props))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_a_merged_state_is_the_state_of_both_ids_events_together(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(150):
        events = [validate(e) for e in _random_events(rng, rng.randint(2, 9))]
        anonymous = [e for e in events if rng.random() < 0.5]
        known = [e for e in events if e not in anonymous]
        customer = _run(known)
        _merge(customer, _run(anonymous))
        expected = reference(events)
        got = observable(customer)
        diff = {k: (got[k], expected[k]) for k in expected if got[k] != expected[k]}
        assert not diff, f"known {[(e.type, e.ts) for e in known]}, anonymous {[(e.type, e.ts) for e in anonymous]}: {diff}"


def test_a_merge_unites_both_dedupe_memories_within_the_window() -> None:
    anonymous_events = [validate(event("page_view", i, anonymous="a1", event_id=f"a{i}")) for i in range(3)]
    known_events = [validate(event("page_view", 10 + i, customer="c1", event_id=f"k{i}")) for i in range(3)]
    customer, anonymous = _run([*known_events, anonymous_events[1]]), _run(anonymous_events)  # "a1" reached both
    # Ids from before encoding 4 (id hashes) on both sides: united too, and older than every key.
    customer.seen_legacy, anonymous.seen_legacy = [id_hash("old-c"), id_hash("both")], [id_hash("old-a"), id_hash("both")]
    _merge(customer, anonymous)
    assert customer.seen == b"".join(event_key(e.event_id) for e in [anonymous_events[0], anonymous_events[2], *known_events,
                                                                    anonymous_events[1]])  # each id once
    assert customer.seen_legacy == [id_hash("old-a"), id_hash("old-c"), id_hash("both")]
    for e in [*anonymous_events, *known_events]:  # a late copy of either id's event changes nothing
        assert apply(customer, e, DEFINITION, LIMITS).duplicate
    small = _run(known_events)
    small.seen_legacy = [id_hash("old-c")]
    merge(small, _run(anonymous_events), "a1", order_window=16, day_window=16, dedupe_window=4, touch_window=8, alias_window=16)
    assert small.seen == b"".join(event_key(e.event_id) for e in anonymous_events[2:] + known_events)
    assert small.seen_legacy is None  # the latest four ids are all the anonymous and known keys


def test_a_guest_order_and_a_logged_in_order_make_retention() -> None:
    guest = _run([validate(event("purchase", 10, anonymous="a1", order_id="g1"))])
    customer = _run([validate(event("purchase", 50, customer="c1", order_id="c1"))])
    assert (guest.stage, customer.stage) == (3, 3)
    assert _merge(customer, guest) == (3, 4)
    assert customer.purchases == 2 and customer.reached[4] == (T0 + timedelta(minutes=50)).timestamp()


# --- the protocol: the pipeline over an in-memory loop of partitions ---------------------------


class Cluster(InputLoop):
    """The input topic in memory (support.loop) with the identity rules."""

    def __init__(self, junk: frozenset[str] | None = None) -> None:
        super().__init__(Pipeline(DEFINITION, LIMITS, summarize=summarize,
                                  identity=IdentityRules(junk=junk if junk is not None else junk_ids(None))))

    def counts(self) -> Counter[int]:
        slots = self.recount().slots()
        assert slots == self.agg.slots(), "the live aggregate is not the recount of the states"
        return Counter({stage: n for stage, n in enumerate(slots, start=-1) if n})

    def final(self) -> dict[str, Any]:
        return {k: observable(s) for k, s in self.states.items() if alias_of(s) is None}


def _shop(rng: random.Random) -> list[dict[str, Any]]:
    """Two people: one browses anonymously on two devices, buys as a guest, logs in, buys again,
    browses logged out; the other never logs in."""
    return [
        event("ad_click", 0, anonymous="dev-1", channel="ads"),
        event("product_view", 5, anonymous="dev-1", channel="direct"),
        event("add_to_cart", 6, anonymous="dev-1"),
        event("purchase", 8, anonymous="dev-1", order_id="guest-1", amount=20.0),
        event("page_view", 20, anonymous="dev-2", channel="social"),
        event("identify", 30, customer="cust-1", anonymous="dev-1", channel="direct"),
        event("identify", 31, customer="cust-1", anonymous="dev-2", channel="direct"),
        event("purchase", 40, customer="cust-1", anonymous="dev-2", order_id="o-2", amount=5.0),
        event("page_view", 60, anonymous="dev-1", channel="email"),
        event("page_view", 3, anonymous="other-1", channel="search"),
        event("product_view", 9, anonymous="other-1", channel="search"),
    ]


def _expected(events: list[dict[str, Any]]) -> dict[str, Any]:
    person = [validate(e) for e in events if e["type"] != "identify"
              and (e.get("anonymous_id") in ("dev-1", "dev-2") or e.get("customer_id") == "cust-1")]
    other = [validate(e) for e in events if e.get("anonymous_id") == "other-1"]
    return {"cust-1": reference(person), "other-1": reference(other)}


def test_every_arrival_order_gives_the_merged_journey_and_counts_a_person_once() -> None:
    rng = random.Random(3)
    events = _shop(rng)
    expected = _expected(events)
    delivered = [*events, events[1]]  # a late duplicate delivery of an anonymous event
    for attempt in range(60):
        order = delivered if attempt == 0 else rng.sample(delivered, len(delivered))
        cluster = Cluster()
        sent = 0
        while sent < len(order):  # a few at a time: later ones may find the link made, a merge in flight
            step = rng.randint(1, len(order))
            for e in order[sent:sent + step]:
                cluster.send(e)
            sent += step
            cluster.run(batch=rng.randint(1, 5), rounds=rng.randint(1, 4))
        cluster.run(batch=rng.randint(1, 5))
        got = cluster.final()
        assert set(got) == {"cust-1", "other-1"}, f"profiles left: {sorted(got)}"
        for person in expected:
            diff = {k: (got[person][k], expected[person][k]) for k in expected[person] if got[person][k] != expected[person][k]}
            assert not diff, f"{person} in arrival order {[e['event_id'] for e in order]}: {diff}"
        assert cluster.counts() == Counter({4: 1, 1: 1}), "each person counted once: cust-1 in retention, other-1 in consideration"
        merged = sorted(i["anonymous_id"] for i in cluster.identities if i["type"] == "identity_merged")
        assert merged == ["dev-1", "dev-2"]


def test_a_replayed_batch_merges_nothing_twice_and_emits_the_same_transition_ids() -> None:
    events = _shop(random.Random(1))
    cluster = Cluster()
    for e in events:
        cluster.send(e)
    cluster.run()
    first_states, first_ids = cluster.final(), {t["transition_id"] for t in cluster.transitions}
    for e in events:  # the whole input again, as after a crash before any commit
        cluster.send(e)
    cluster.run()
    assert cluster.final() == first_states
    assert {t["transition_id"] for t in cluster.transitions} == first_ids


def test_a_both_ids_copy_of_an_event_already_seen_still_links() -> None:
    # The same event first without, then with, the anonymous id (a producer adding the device id
    # on a retry): it counts once, and the device's journey still joins the customer's.
    cluster = Cluster()
    cluster.send(event("purchase", 0, anonymous="dev-5", order_id="g1", amount=10.0))
    cluster.run()
    view = event("page_view", 10, customer="c5")
    cluster.send(view)
    cluster.run()
    cluster.send({**view, "anonymous_id": "dev-5"})
    cluster.run()
    final = cluster.final()
    assert set(final) == {"c5"} and final["c5"]["purchases"] == 1 and final["c5"]["stage"] == 3
    assert [i["anonymous_id"] for i in cluster.identities if i["type"] == "identity_merged"] == ["dev-5"]
    assert cluster.counts() == Counter({3: 1})  # one person, in purchase


def test_anonymous_events_replayed_to_the_alias_they_were_shipped_by_count_once() -> None:
    """The anonymous partition's batch [its events..., the link] is replayed after the alias was
    written (a crash before the offset commit), or a producer retries one of those events: they
    now reach the alias. The customer, with a full dedupe memory of its own, no longer knows
    them; the alias remembers what it shipped and counts them as duplicates."""
    cluster = Cluster()
    own = [event("page_view", i, customer="c7") for i in range(40)]  # more than the dedupe window
    anonymous = [event("product_view", 100 + i, anonymous="dev-7", channel="social") for i in range(3)]
    anonymous.append(event("purchase", 104, anonymous="dev-7", order_id="g7", amount=20.0))
    login = event("add_to_cart", 110, customer="c7", anonymous="dev-7")
    for e in [*own, *anonymous, login]:
        cluster.send(e)
    cluster.run()
    once = cluster.final()["c7"]
    for e in anonymous:  # the replay (or the retries), after the alias is in the store
        cluster.send(e)
    cluster.run()
    assert cluster.final()["c7"] == once
    expected = reference([validate(e) for e in [*own, *anonymous, login]])
    assert {k: once[k] for k in expected} == expected


def test_a_replayed_merge_request_is_ignored() -> None:
    cluster = Cluster()
    cluster.send(event("purchase", 1, anonymous="dev-9", order_id="g"))
    cluster.send(event("identify", 2, customer="c9", anonymous="dev-9"))
    cluster.run(batch=1)
    before = cluster.final()["c9"]
    guest = _run([validate(event("purchase", 1, anonymous="dev-9", order_id="g"))])
    again = {"anonymous_id": "dev-9", "customer_id": "c9", "at": 2.0, "trigger_event_id": "x", "state": orjson.loads(guest.to_wire())}
    raw = orjson.dumps(again)
    cluster.send(raw, key="c9", control=MERGE, signature=sign(IdentityRules().key, MERGE, b"c9", raw))
    cluster.run()
    assert cluster.final()["c9"] == before


def test_a_shared_device_keeps_its_first_link_and_reports_the_conflict() -> None:
    cluster = Cluster()
    cluster.send(event("page_view", 1, anonymous="kiosk", channel="ads"))
    cluster.send(event("identify", 2, customer="alice", anonymous="kiosk"))
    cluster.run(batch=1)
    cluster.send(event("purchase", 3, customer="bob", anonymous="kiosk", order_id="b1"))
    cluster.run(batch=1)
    assert alias_of(cluster.states["kiosk"]) == "alice"
    assert cluster.states["bob"].purchases == 1  # the event still went to the customer it named
    conflicts = [i for i in cluster.identities if i["type"] == "identity_conflict"]
    assert [(c["anonymous_id"], c["customer_id"], c["linked_customer_id"]) for c in conflicts] == [("kiosk", "bob", "alice")]


def test_junk_anonymous_ids_never_link() -> None:
    cluster = Cluster()
    for i, junk in enumerate(["undefined", "NULL", " 0 ", "-1"]):
        cluster.send(event("page_view", i, anonymous=junk))
        cluster.send(event("identify", 10 + i, customer=f"c{i}", anonymous=junk))
    cluster.run()
    assert not cluster.identities
    assert all(alias_of(s) is None for s in cluster.states.values())
    assert junk_ids("a, B") == frozenset({"a", "b", ""})


def test_the_signing_key_is_not_in_the_rules_repr() -> None:
    # Whoever holds the key can forge link, merge and forget records: a logged repr must not carry it.
    key = control_key("a-secret-of-this-deployment", "journey")
    shown = repr(IdentityRules(key=key))
    assert "IdentityRules(" in shown and "alias_window=16" in shown
    assert repr(key) not in shown and key.hex() not in shown and "key=" not in shown


def test_bad_identity_requests_are_dead_lettered() -> None:
    pipeline = Pipeline(DEFINITION, LIMITS)
    key = pipeline.identity.key

    def signed_record(k: bytes, value: bytes, control: bytes, offset: int) -> Record:
        return Record(k, value, "tp", 0, offset, None, control, sign(key, control, k, value))

    good_link = orjson.dumps({"anonymous_id": "dev-1", "customer_id": "c", "at": 1.0, "trigger_event_id": "e"})
    records = [
        signed_record(b"dev-1", b"{not json", LINK, 1),
        signed_record(b"dev-1", good_link, MERGE, 2),  # a merge under the anonymous id's key
        signed_record(b"c", orjson.dumps({"anonymous_id": "dev-1"}), MERGE, 3),
        signed_record(b"\xff", orjson.dumps(event("page_view", 1, anonymous="a")), ALIASED, 4),
        signed_record(b"dev-1", orjson.dumps({**orjson.loads(good_link), "at": 1e300}), LINK, 5),
        Record(b"dev-1", good_link, "tp", 0, 6, None, LINK),  # forged: no signature
        Record(b"dev-1", good_link, "tp", 0, 7, None, LINK, sign(b"another key", LINK, b"dev-1", good_link)),
    ]
    result = pipeline.process(records, {})
    assert result.reasons == ["bad_identity_request"] * 7 and not result.writes and not result.rekeyed


def test_identity_events_match_their_schema() -> None:
    import json

    import jsonschema

    schema = json.loads((ROOT / "schemas" / "identity.schema.json").read_text())
    cluster = Cluster()
    cluster.send(event("page_view", 1, anonymous="kiosk"))
    cluster.send(event("identify", 2, customer="alice", anonymous="kiosk"))
    cluster.run(batch=1)
    cluster.send(event("purchase", 3, customer="bob", anonymous="kiosk", order_id="b1"))
    cluster.run(batch=1)
    assert [e["type"] for e in cluster.identities] == ["identity_merged", "identity_conflict"]
    for e in cluster.identities:
        jsonschema.validate(e, schema, format_checker=jsonschema.FormatChecker())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**cluster.identities[1], "linked_customer_id": None}, schema)


def test_an_identify_naming_one_id_twice_links_nothing() -> None:
    cluster = Cluster()
    cluster.send(event("page_view", 1, customer="same"))
    cluster.send(event("identify", 2, customer="same", anonymous="same"))
    cluster.send(event("page_view", 3, customer="same", anonymous="same"))
    cluster.run()
    assert alias_of(cluster.states["same"]) is None and not cluster.identities and not cluster.queue
    assert cluster.states["same"].events == 2


def test_a_known_customer_is_never_made_someones_alias_and_nothing_loops() -> None:
    cluster = Cluster()
    cluster.send(event("purchase", 1, customer="alice", order_id="a1"))
    cluster.run()
    cluster.send(event("page_view", 2, customer="bob", anonymous="alice"))  # bob's device sends alice's id
    cluster.send(event("page_view", 3, customer="alice", anonymous="bob"))  # and alice's bob's
    cluster.run()
    assert alias_of(cluster.states["alice"]) is None and alias_of(cluster.states["bob"]) is None
    assert cluster.states["alice"].purchases == 1 and cluster.counts() == Counter({3: 1, 0: 1})
    assert sorted(i["type"] for i in cluster.identities) == ["identity_conflict", "identity_conflict"]
    cluster.send(event("purchase", 4, customer="alice", order_id="a2"))
    cluster.run()
    assert cluster.states["alice"].purchases == 2 and not cluster.queue  # no record bounces between them


@pytest.mark.parametrize("together", [False, True], ids=["a batch each", "one batch"])
@pytest.mark.parametrize("first", ["anonymous", "customer", "identify", "server-side identify"])
def test_an_id_seen_as_a_customer_id_is_never_made_an_alias_whichever_came_first(first: str, together: bool) -> None:
    cluster = Cluster()
    anonymous = event("page_view", 1, anonymous="alice", channel="ads")
    known = event("purchase", 2, customer="alice", order_id="a1")
    shared = event("page_view", 3, customer="bob", anonymous="alice")  # bob's device sends alice's id
    if first == "identify":
        # Begun anonymous, then an identify under the id as a customer's: bob's link is decided
        # before the identify's own merge (which would also make alice a customer) lands.
        sequence = [[anonymous], [event("identify", 2, customer="alice", anonymous="alice-phone"), shared]]
    elif first == "server-side identify":  # an identify with no anonymous id: no link, no merge
        sequence = [[anonymous], [event("identify", 2, customer="alice")], [shared]]
    else:
        sequence = [[known], [anonymous], [shared]] if first == "customer" else [[anonymous], [known], [shared]]
    if together:  # every record of the sequence in one batch (the order kept)
        sequence = [[e for events in sequence for e in events]]
    for events in sequence:
        for e in events:
            cluster.send(e)
        cluster.run(batch=len(events) if together else 1)
    assert alias_of(cluster.states["alice"]) is None
    assert cluster.states["alice"].events == (1 if "identify" in first else 2)  # an identify is no touch
    conflicts = [i for i in cluster.identities if i["type"] == "identity_conflict"]
    assert [(c["anonymous_id"], c["customer_id"]) for c in conflicts] == [("alice", "bob")]


@pytest.mark.parametrize("seen_since", [None, "anonymous", "customer"])
def test_a_profile_written_before_anonymous_ids_links_unless_seen_as_a_customer_since(seen_since: str | None) -> None:
    # A version-2 state (journey before identity) keyed by what was a device id: whether the key
    # was a customer's is not known until it is seen again; a link names it as a device.
    fields = orjson.loads(_run([validate(event("page_view", 0, customer="dev-9"))]).to_wire())[1:25]
    fields[19] = []  # seen: version 2 held a list of id hashes
    legacy = CustomerState.from_wire(orjson.dumps([2, *fields]))
    cluster = Cluster()
    cluster.states["dev-9"] = legacy
    if seen_since is not None:
        cluster.send(event("product_view", 1, **{seen_since: "dev-9"}))  # type: ignore[arg-type]
        cluster.run()
    cluster.send(event("identify", 2, customer="carol", anonymous="dev-9"))
    cluster.run()
    if seen_since == "customer":
        assert alias_of(cluster.states["dev-9"]) is None and [i["type"] for i in cluster.identities] == ["identity_conflict"]
    else:
        assert alias_of(cluster.states["dev-9"]) == "carol"
        assert cluster.states["carol"].events == (2 if seen_since else 1)


def test_asking_a_link_does_not_change_the_state_that_was_read() -> None:
    stored = _run([validate(event("page_view", 0, customer="c1"))])
    stored.extra["id"] = {"l": ["old-device"]}
    states = {"c1": stored}
    Pipeline(DEFINITION, LIMITS).process([Record(b"c1", orjson.dumps(event("page_view", 1, customer="c1", anonymous="new-device")),
                                                 "touchpoints", 0, 0)], states)
    assert stored.extra["id"] == {"l": ["old-device"]}  # copy_reads: the batch changed its own copy only


def _mergeable() -> CustomerState:
    st = CustomerState()
    for i, (etype, props) in enumerate([("ad_click", {}), ("purchase", {"order_id": "o1", "amount": 5}), ("support_ticket", {})]):
        apply(st, validate(event(etype, 60 * i, anonymous="a1", channel="ads", **props)), DEFINITION, LIMITS)
    return st


@pytest.mark.parametrize("slot, value", [
    ("stage", 6), ("stage", "3"), ("reached", (None,) * 6), ("reached", [None, "x", None, None, None, None]),
    ("reached", [None, 1e300, None, None, None, None]), ("channels", {"ads": 1.5}), ("negatives", {"support_ticket": None}),
    ("revenue", "5"), ("first_seen", float("nan")), ("last_negative", "now"), ("order_times", []),
    ("order_times", ["x"]), ("days", None), ("seen", {}), ("pre_purchase", [[None, "ads", 0]]),
    ("pre_purchase", [[1.7e9, "ads"]]), ("pre_purchase", [(1.7e9, "ads", 0)]), ("extra", {"alias": ["c", 1.0, "e"]}),
    # What merge() would carry into the customer's state, to fail later (encoding, aggregates):
    ("first_channel", ["x"]), ("last_channel", 5), ("reached", [None] * 7), ("pre_purchase", [[1.7e9, ["x"], 0]]),
    ("pre_purchase", [[1.7e9, "ads", "0"]]), ("orders", ["o1"]), ("days", [1.5]), ("seen", [[1]]),
    ("seen", [1, 2]), ("seen", bytearray(b"1234567")), ("seen_legacy", [1.5]), ("seen_legacy", {}), ("seen_legacy", "x"),
    # Integers no state of journey's holds (id hashes are 63-bit):
    ("orders", [2**64]), ("seen_legacy", [2**70]), ("days", [2**70]), ("orders", [-1]),
    ("revenue", float("inf")), ("revenue", float("nan")), ("events", 2**64 - 1), ("purchases", -1), ("channels", {"ads": 2**63}), ("negatives", {"support_ticket": True}),
])
def test_a_merge_request_state_of_the_wrong_shape_is_refused(slot: str, value: Any) -> None:
    st = _mergeable()
    check_mergeable(st)  # the state as journey writes it passes
    setattr(st, slot, value)
    with pytest.raises(BadRequest):
        check_mergeable(st)


def test_a_decoded_merge_request_keeps_the_state_it_carries() -> None:
    """A decoded request holds the state as read (not encoded again) and gives the same state back."""
    st = _mergeable()
    built = MergeRequest("a1", "c1", 1.7e9, "e9", st.to_wire())
    decoded = decode_merge(built.to_bytes())
    assert decoded.to_bytes() == built.to_bytes()
    assert decoded.anonymous_state().to_wire() == built.anonymous_state().to_wire() == st.to_wire()
    assert MergeRequest("a1", "c1", 1.7e9, "e9", None).anonymous_state().to_wire() == CustomerState().to_wire()


def test_records_another_deployment_wrote_to_the_input_topic_are_dropped() -> None:
    """A rebuild under a new app id reads the input topic from its start, the old deployment's own
    records among them (re-keyed touchpoints, links, merges, aliased touchpoints, forgets). It
    makes its own from the originals, so it drops those: applying both counted events twice."""
    from journey.core.identity import ORIGIN_HEADER
    from journey.worker.pipeline import journey_headers

    old = Pipeline(DEFINITION, LIMITS, summarize=summarize, identity=IdentityRules(origin=b"journey-v1"))
    from journey.core.privacy import salt_key
    from journey.worker.privacy import Privacy

    new = Pipeline(DEFINITION, LIMITS, summarize=summarize, identity=IdentityRules(origin=b"journey-v2"),
                   privacy=Privacy(salt_key(None, "journey-v2"), clock=lambda: 2e9))
    view = event("page_view", 1, customer="c1")
    wrong_key = Record(b"someone-else", orjson.dumps(view), "tp", 0, 0)
    login = Record(b"c1", orjson.dumps(event("page_view", 2, customer="c1", anonymous="dev-1")), "tp", 0, 1)
    out = old.process([wrong_key, login], {})
    rekeyed, link = out.rekeyed  # the view under its customer's key, and the link to dev-1
    assert [journey_headers(o.headers or ())[2] for o in out.rekeyed] == [b"journey-v1", b"journey-v1"]
    assert rekeyed.headers == ((ORIGIN_HEADER, b"journey-v1"),)

    def record(o: Any, offset: int) -> Record:
        r = Record(o.key, o.value, "tp", 0, offset)
        r.headers = o.headers
        return r

    states: dict[str, CustomerState] = {}
    replayed = new.process([record(rekeyed, 2), record(link, 3)], states)  # the old deployment's records
    assert replayed.foreign == 2 and not replayed.writes and not replayed.rekeyed and not replayed.reasons
    from journey.core.privacy import FORGET, ForgetRequest

    forget = old.identity.control_output(FORGET, "c9", ForgetRequest("c9", "r1", 1.7e9).to_bytes())
    assert journey_headers(forget.headers or ())[2] == b"journey-v1"
    honoured = new.process([record(forget, 5)], {})  # a forget is the customer's request: applied whoever relayed it
    assert honoured.foreign == 0 and not honoured.reasons and honoured.privacy  # applied: customer_forgotten
    unsigned = IdentityRules(key=control_key("another secret", "x"), origin=b"journey-v1").control_output(
        FORGET, "c9", ForgetRequest("c9", "r2", 1.7e9).to_bytes())
    dropped = new.process([record(unsigned, 6)], {})  # no shared secret: dropped, not dead-lettered with the id
    assert dropped.foreign == 1 and not dropped.dead_letters
    again = new.process([wrong_key, login], states)  # the originals: this deployment's own copies
    states.update({k: s for k, (_r, s, _b) in again.writes.items() if s is not None})
    assert [journey_headers(o.headers or ())[2] for o in again.rekeyed] == [b"journey-v2", b"journey-v2"]
    mine = new.process([record(again.rekeyed[0], 4)], states)
    states.update({k: s for k, (_r, s, _b) in mine.writes.items() if s is not None})
    assert mine.foreign == 0 and states["c1"].events == 2  # the view once, the login once
