"""The sidecar's HTTP surface over a hand-fed snapshot book (no Kafka)."""

from __future__ import annotations

import time
from collections import Counter

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from journey.core.aggregates import PartitionAggregate
from journey.core.snapshot import Snapshot
from journey.core.stages import STAGES
from journey.core.state import CustomerState
from journey.settings import Settings
from journey.sidecar.app import create_sidecar

PARTITIONS = 2


def _state(stage: int, first: str, channels: dict[str, int], attribution: list[str] | None = None) -> CustomerState:
    st = CustomerState()
    st.stage = stage
    st.first_channel = first
    st.channels = channels
    st.attribution = attribution
    return st


P0 = [_state(0, "email", {"email": 2}), _state(3, "ads", {"ads": 1, "email": 1}, ["ads", "email"])]
P1 = [_state(1, "email", {"email": 1, "search": 3}), _state(-1, "other", {"other": 1})]


@pytest.fixture()
def client() -> TestClient:
    app = create_sidecar(Settings(partitions=PARTITIONS), consume=False)
    with TestClient(app) as c:
        c.app.state.journey.consumer.caught_up = True  # as if it had read the aggregates topic to its end
        yield c


def _feed(client: TestClient, partition: int, states: list[CustomerState], offset: int, at: float | None = None) -> bool:
    book = client.app.state.journey.book
    return book.offer(Snapshot(partition, offset, "test", at or time.time(), PartitionAggregate.of(states)))


def test_numbers_wait_for_every_partition(client: TestClient) -> None:
    assert client.get("/stages").status_code == 503
    _feed(client, 0, P0, 10)
    r = client.get("/stages")
    assert r.status_code == 503 and "[1]" in r.json()["detail"]
    assert client.get("/readyz").status_code == 503


def test_numbers_wait_for_the_aggregates_topic_to_be_read_to_its_end(client: TestClient) -> None:
    """At start the first snapshots read may be an hour old (the topic keeps up to its retention):
    every partition has one long before the newest are read, and they must not be served."""
    _feed(client, 0, P0, 10)
    _feed(client, 1, P1, 7)
    assert client.get("/stages").status_code == 200
    client.app.state.journey.consumer.caught_up = False
    for path in ("/stages", "/funnel", "/channels"):
        r = client.get(path)
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        assert "reading the aggregates topic to its end" in r.json()["detail"]


def test_stages_funnel_channels_are_exact(client: TestClient) -> None:
    _feed(client, 0, P0, 10)
    _feed(client, 1, P1, 7)
    everyone = P0 + P1
    body = client.get("/stages").json()
    assert set(body) == {"stages", "total", "as_of"}
    expected = Counter(STAGES[s.stage] for s in everyone if s.stage >= 0)
    assert body["stages"] == {name: expected.get(name, 0) for name in STAGES}
    assert body["total"] == sum(1 for s in everyone if s.stage >= 0)

    rows = client.get("/funnel").json()["stages"]
    assert [r["reached"] for r in rows] == [sum(1 for s in everyone if s.stage >= i) for i in range(len(STAGES))]
    email = client.get("/funnel", params={"first_touch": "email"}).json()
    assert email["customers"] == sum(1 for s in everyone if s.first_channel == "email" and s.stage >= 0)
    assert client.get("/funnel", params={"first_touch": "carrier_pigeon"}).status_code == 422

    ch = client.get("/channels").json()
    assert ch["channels"]["email"]["touchpoints"] == sum(s.channels.get("email", 0) for s in everyone)
    assert ch["channels"]["email"]["customers"] == sum(1 for s in everyone if "email" in s.channels)
    assert ch["channels"]["email"]["reached"]["purchase"] == 1
    assert ch["attribution"] == {"first_touch": {"ads": 1}, "last_touch": {"email": 1}}


def test_an_older_snapshot_never_replaces_a_newer_one(client: TestClient) -> None:
    _feed(client, 1, P1, 7)
    _feed(client, 0, P0, 10)
    # a worker that just lost partition 0 publishes its last (older) view late
    assert not _feed(client, 0, P0[:1], 9, at=time.time() + 5)
    assert client.get("/stages").json()["total"] == 3
    assert _feed(client, 0, P0[:1], 11)
    assert client.get("/stages").json()["total"] == 2


def test_customer_endpoint_is_off_without_a_token(client: TestClient) -> None:
    r = client.get("/customers/c1")
    assert r.status_code == 404
    assert "JOURNEY_API_TOKEN" in r.json()["error"]


def test_customer_endpoint_checks_the_token() -> None:
    app = create_sidecar(Settings(partitions=PARTITIONS, api_token="s3cret"), consume=False)
    app.state.journey.worker_urls = ["http://127.0.0.1:1"]  # nothing listens there
    with TestClient(app) as c:
        assert c.get("/customers/c1").status_code == 401
        assert c.get("/customers/c1", headers={"Authorization": "Bearer nope"}).status_code == 401
        r = c.get("/customers/c1", headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 503 and "JOURNEY_WORKER_URLS" in r.json()["error"]


def test_customer_ids_with_a_slash_and_too_long_ones() -> None:
    app = create_sidecar(Settings(partitions=PARTITIONS, api_token="s3cret"), consume=False)
    asked: list[str] = []

    async def fetch(worker_urls: list[str], customer_id: str, authorization: str) -> tuple[int, dict[str, str]]:
        asked.append(customer_id)
        return 200, {"customer_id": customer_id}

    with TestClient(app) as c, pytest.MonkeyPatch.context() as mp:
        mp.setattr("journey.sidecar.routes.fetch_customer", fetch)
        auth = {"Authorization": "bearer s3cret"}  # the scheme is case-insensitive (RFC 7235)
        r = c.get("/customers/tenant%2F42", headers=auth)
        assert r.status_code == 200 and asked == ["tenant/42"], r.text
        r = c.get("/customers/" + "e" * 201, headers=auth)  # no touchpoint has such an id: the caller's mistake
        assert r.status_code == 422 and "1 to 200 characters" in r.json()["error"] and len(asked) == 1


def test_metrics_parse_and_hold_the_series(client: TestClient) -> None:
    a = _state(2, "email", {"email": 1})
    a.extra = {"churn": {"s": 0.9, "l": "high"}, "pain": {"a": [1, 1.7e9]}}  # as journey.churn.risk / core.painpoints keep them
    _feed(client, 0, P0 + [a], 10)
    _feed(client, 1, P1, 7)
    text = client.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    customers = {s.labels["stage"]: s.value for s in families["journey_sidecar_customers"].samples}
    assert customers["decision"] == 1 and customers["none"] == 1 and customers["purchase"] == 1
    assert {s.labels["level"]: s.value for s in families["journey_sidecar_churn_risk_customers"].samples} == {"high": 1}
    assert {s.labels["kind"]: s.value for s in families["journey_sidecar_pain_points"].samples} == {"cart_abandoned": 1}
    for name in ("journey_sidecar_staleness_seconds", "journey_sidecar_snapshot_age_seconds", "journey_sidecar_partitions_missing", "journey_sidecar_snapshots"):
        assert name in families, name


def test_live_page_is_self_contained(client: TestClient) -> None:
    html = client.get("/").text
    assert "<svg" in html and "fetch(" in html
    # nothing from the internet: the SVG namespace is an identifier, not a download
    assert "http" not in html.replace("http://www.w3.org/2000/svg", "")
    live = client.get("/live").json()
    assert live["ready"] is False and live["status"]["missing_partitions"] == [0, 1]
    assert "workers" not in live["status"] and "workers" in client.get("/readyz").json()  # hosts: for operators only
