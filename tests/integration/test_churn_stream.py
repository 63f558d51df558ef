"""Churn risk and pain points in a real `journey worker` on the test broker.

One worker subprocess for the module, with its own app id, topics, data dir and web port. The
tests run in file order on purpose: the worker's event-time clock only moves forward, so the
CDNOW replay (1997-98) comes first and the scripted customers (2001) after it.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import urllib.request
import uuid
from contextlib import redirect_stdout
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import pytest_asyncio
from jsonschema import Draft202012Validator, FormatChecker

from journey.churn.risk import RiskConfig, assess, load_model
from journey.cli import main as journey_cli
from journey.core.clock import iso
from journey.core.definition import load_definition
from journey.core.events import validate
from journey.core.machine import apply
from journey.sources.replay import publish, records_for_format

from support.kafka import produce, read_all, touchpoint_record
from support.workers import WorkerProcess, create_topics, namespaced_settings, probe_keys

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data/cdnow/CDNOW_sample.txt"
TOKEN = "churn-test-token"
LATENESS_S = 60.0  # the worker's default allowed lateness
HOUR = 3600.0
DAY = 86400.0


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


class Stream:
    def __init__(self, worker: WorkerProcess) -> None:
        self.worker = worker
        self.settings = worker.settings
        self.n = 0

    async def send(self, customer: str, type_: str, at: float, **props: Any) -> None:
        self.n += 1
        event = {"event_id": f"ev-{self.n}-{uuid.uuid4().hex[:6]}", "customer_id": customer, "type": type_,
                 "timestamp": iso(at), "channel": "direct", "properties": props}
        await produce(self.settings.bootstrap_servers, self.settings.topic_touchpoints, [touchpoint_record(event)])

    async def push_clock(self, to: float) -> None:
        """Move the event-time clock to ``to`` with other customers' events (one per partition)."""
        keys = probe_keys(self.settings.partitions)
        for key in keys:
            await self.send(key, "page_view", to + LATENESS_S)
        for key in keys:
            await self.wait_customer(key)

    def view(self, customer: str) -> dict[str, Any] | None:
        request = urllib.request.Request(f"{self.worker.url}/customers/{customer}", headers={"Authorization": f"Bearer {TOKEN}"})
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:
            if exc.code in (404, 503):  # not seen yet, or the worker is still (re)balancing
                return None
            raise
        except OSError:
            return None

    async def wait_customer(self, customer: str, ok: Any = lambda view: True, timeout_s: float = 60) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            if not self.worker.alive():
                raise AssertionError(f"the worker died:\n{self.worker.log_tail()}")
            view = await asyncio.to_thread(self.view, customer)
            if view is not None and ok(view):
                return view
            await asyncio.sleep(0.3)
        raise AssertionError(f"customer {customer} not as expected within {timeout_s}s (last view {view}); log:\n{self.worker.log_tail()}")

    async def events(self, topic: str, until: Any, timeout_s: float) -> list[dict[str, Any]]:
        msgs = await read_all(self.settings.bootstrap_servers, topic, until=until, timeout_s=timeout_s)
        # Every event on the output topics honours its published contract.
        schema = OUTPUT_SCHEMAS[topic.rsplit(".", 1)[-1]]
        for m in msgs:
            errors = [e.message for e in schema.iter_errors({k: v for k, v in m.items() if k != "_key"})]
            assert not errors, (m, errors)
            assert m["_key"] == m["customer_id"]
        return msgs


def _schema(name: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads((REPO / "schemas" / name).read_text()), format_checker=FormatChecker())


OUTPUT_SCHEMAS = {"churn-risk": _schema("churn-risk.schema.json"), "pain-points": _schema("pain-point.schema.json")}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stream(broker: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stream]:
    run = uuid.uuid4().hex[:8]
    settings = namespaced_settings(broker, f"churn-{run}", api_token=TOKEN).replace(partitions=2)
    await create_topics(settings)
    worker = WorkerProcess(settings, tmp_path_factory.mktemp("churn-worker")).start()
    s = Stream(worker)
    try:
        # Ready once a first event (long before any data below) has been applied.
        await s.send("warm-up", "page_view", ts("1990-01-01T00:00:00+00:00"))
        await s.wait_customer("warm-up", timeout_s=120)
        yield s
    finally:
        worker.stop()


async def test_worker_scores_equal_journey_churn_score_after_a_cdnow_replay(stream: Stream, tmp_path: Path) -> None:
    # A subset of the CDNOW sample: its first 150 customers, every purchase of theirs.
    lines = [line for line in SAMPLE.read_text().splitlines() if line.split()]
    keep = sorted({line.split()[0] for line in lines})[:150]
    subset = tmp_path / "cdnow_subset.txt"
    subset.write_text("\n".join(line for line in lines if line.split()[0] in set(keep)) + "\n")
    records, total = records_for_format(subset, "cdnow")
    records = list(records)
    await publish(stream.settings.bootstrap_servers, stream.settings.topic_touchpoints, records, speed=None, progress=False, total=total)
    counts: dict[str, int] = {}
    for key, _value, _when in records:
        counts[key.decode()] = counts.get(key.decode(), 0) + 1
    last_key = records[-1][0].decode()
    await stream.wait_customer(last_key, lambda v: v["touchpoints"] == counts[last_key])

    checked = 0
    for customer in sorted(counts)[::5]:  # every 5th customer: 30 of them
        view = await stream.wait_customer(customer, lambda v, c=customer: v["touchpoints"] == counts[c] and "churn" in v)
        churn = view["churn"]
        out = io.StringIO()
        with redirect_stdout(out):
            assert journey_cli(["churn", "score", str(subset), "--format", "cdnow", "--as-of", iso(churn["at"])]) == 0
        rows = {r["customer_id"]: r for r in csv.DictReader(io.StringIO(out.getvalue()))}
        assert float(rows[customer]["score"]) == pytest.approx(churn["s"], abs=1e-9), customer
        assert rows[customer]["level"] == churn["l"], customer
        checked += 1
    assert checked == 30


async def test_silent_customer_gets_a_churn_risk_event_once_the_clock_passes_the_threshold(stream: Stream) -> None:
    customer = f"silent-{uuid.uuid4().hex[:6]}"
    start = ts("2001-01-01T12:00:00+00:00")
    days = (0, 7, 14, 21, 28)
    for d in days:
        await stream.send(customer, "purchase", start + d * DAY, order_id=f"o{d}", amount=30.0)
    # When the worker's own model says this customer turns medium if silent (same code, same params).
    definition = load_definition(REPO / "schemas/journey.yaml")
    state = None
    for d in days:
        tp = validate({"event_id": f"x{d}", "customer_id": customer, "type": "purchase", "timestamp": iso(start + d * DAY),
                       "properties": {"order_id": f"o{d}", "amount": 30.0}})
        state = apply(state, tp, definition).state
    model = load_model(REPO / "schemas/churn-params.json")
    now = assess(state, start + 28 * DAY, model, RiskConfig())
    assert now.level_name == "low" and now.next_change is not None
    threshold = now.next_change

    view = await stream.wait_customer(customer, lambda v: v["purchase_days"] == len(days) and "churn" in v)
    assert view["churn"]["l"] == "low"

    def mine(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # Levels may move while the purchases come in; what counts is what silence does after them.
        return [m for m in msgs if m["customer_id"] == customer and ts(m["at"]) > start + 28 * DAY]

    await stream.push_clock(threshold - HOUR)
    early = await stream.events(stream.settings.topic_churn_risk, until=lambda m: False, timeout_s=3)
    assert mine(early) == [], "a churn-risk event before the clock reached the threshold"

    await stream.push_clock(threshold + 60)
    msgs = await stream.events(stream.settings.topic_churn_risk, until=lambda m: bool(mine(m)), timeout_s=30)
    events = mine(msgs)
    assert len(events) == 1, events
    event = events[0]
    assert (event["level"], event["previous_level"]) == ("medium", "low")
    assert event["_key"] == customer and event["reasons"] and event["model"]["version"] == model.version
    assert threshold <= ts(event["at"]) <= threshold + 60
    assert event["score"] >= RiskConfig().medium


async def test_purchase_inside_the_abandonment_window_cancels_the_pain_point(stream: Stream) -> None:
    run = uuid.uuid4().hex[:6]
    bought, abandoned = f"cart-bought-{run}", f"cart-left-{run}"
    cart_at = ts("2001-09-01T10:00:00+00:00")
    await stream.send(bought, "add_to_cart", cart_at, cart_id="k1")
    await stream.send(abandoned, "add_to_cart", cart_at, cart_id="k2")
    await stream.send(bought, "purchase", cart_at + 2 * HOUR, order_id="o1", amount=12.5)
    await stream.wait_customer(bought, lambda v: v["purchases"] == 1)
    await stream.wait_customer(abandoned)

    def kinds(msgs: list[dict[str, Any]], customer: str) -> list[str]:
        return [m["kind"] for m in msgs if m["customer_id"] == customer]

    await stream.push_clock(cart_at + 23 * HOUR)
    early = await stream.events(stream.settings.topic_pain_points, until=lambda m: False, timeout_s=3)
    assert kinds(early, abandoned) == [] and kinds(early, bought) == []

    await stream.push_clock(cart_at + 24 * HOUR + 60)
    msgs = await stream.events(stream.settings.topic_pain_points, until=lambda m: bool(kinds(m, abandoned)), timeout_s=30)
    assert kinds(msgs, abandoned) == ["cart_abandoned"]
    event = next(m for m in msgs if m["customer_id"] == abandoned)
    assert (event["stage"], event["channel"], event["at"]) == ("decision", "direct", iso(cart_at + 24 * HOUR))
    # Same deadline, same tick: had the purchase not cancelled it, it would be here too.
    assert kinds(msgs, bought) == []
    view = await stream.wait_customer(abandoned, lambda v: "churn" in v)
    assert view["pain"]["a"][0] == 1
