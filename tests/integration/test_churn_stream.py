"""Churn risk and pain points in a real `journey worker` on the test broker.

One worker subprocess for the module, with its own app id, topics, data dir and web port. Its
event-time clock only moves forward, so every test takes a time reference of its own, later than
every event sent before it (Stream.fresh_base), and the tests run in any order: the CDNOW replay
is shifted by whole days to start there (day differences, all the model counts, are kept).

Scores are checked two ways: against `journey churn score` over the same file (same code, so
this shows the worker and the CLI agree), and against the closed form written in
tests/support/churn_reference.py (independent of journey.churn).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import math
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import redirect_stdout
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

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
from support import churn_reference as ref
from support.kafka import produce, read_all, read_to_end, touchpoint_record
from support.workers import WorkerProcess, create_topics, namespaced_settings, probe_keys

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data/cdnow/CDNOW_sample.txt"
# The worker's model: a params file of the BG/NBD + backtest-calibration format, whose closed form
# tests/support/churn_reference.py writes out independently (the learned layer of the shipped
# default is held to its own reference in tests/unit/test_churn_cli.py).
PARAMS = REPO / "tests/unit/data/churn-params-v1.json"
TOKEN = "churn-test-token"
LATENESS_S = 60.0  # the worker's default allowed lateness
ABANDONMENT_S = 24 * 3600.0  # the worker's default cart abandonment window
HOUR = 3600.0
DAY = 86400.0
#: The first test's reference: long after the warm-up event, and every reference stays decades
#: before the wall clock (the worker's clock ignores event times in the future, and turns "live"
#: near the present).
FIRST_BASE = datetime(1995, 1, 1, tzinfo=UTC).timestamp()


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


class Stream:
    def __init__(self, worker: WorkerProcess) -> None:
        self.worker = worker
        self.settings = worker.settings
        self.n = 0
        #: The latest event time sent so far: the worker's clock is at most this.
        self.latest = 0.0

    def fresh_base(self) -> float:
        """A time reference of the calling test's own: a UTC midnight at least 30 days after every
        event sent so far, whatever ran before."""
        t = max(FIRST_BASE, self.latest + 30 * DAY)
        base = math.ceil(t / DAY) * DAY
        assert base < time.time() - 365 * DAY, "the module's tests have used up the past"
        return base

    def saw(self, at: float) -> None:
        self.latest = max(self.latest, at)

    async def send(self, customer: str, type_: str, at: float, **props: Any) -> None:
        self.n += 1
        event = {"event_id": f"ev-{self.n}-{uuid.uuid4().hex[:6]}", "customer_id": customer, "type": type_,
                 "timestamp": iso(at), "channel": "direct", "properties": props}
        self.saw(at)
        await produce(self.settings.bootstrap_servers, self.settings.topic_touchpoints, [touchpoint_record(event)])

    async def push_clock(self, to: float) -> None:
        """Move the event-time clock to ``to`` with other customers' events (one per partition)."""
        keys = probe_keys(self.settings.partitions)
        for key in keys:
            await self.send(key, "page_view", to + LATENESS_S)
        for key in keys:
            await self.wait_customer(key)

    async def sentinel(self, due: float) -> str:
        """A customer whose abandoned cart is due at ``due``: once its pain point is out
        (:meth:`timer_reached`), the churn timer has run with the clock at ``due`` or later. Send it
        while the clock is still before ``due - ABANDONMENT_S``."""
        customer = f"sentinel-{uuid.uuid4().hex[:6]}"
        await self.send(customer, "add_to_cart", due - ABANDONMENT_S, cart_id="s")
        await self.wait_customer(customer)
        return customer

    async def timer_reached(self, sentinel: str) -> None:
        await self.events(self.settings.topic_pain_points, until=lambda m: any(e["customer_id"] == sentinel for e in m), timeout_s=60)

    def view(self, customer: str) -> dict[str, Any] | None:
        request = urllib.request.Request(f"{self.worker.url}/customers/{customer}", headers={"Authorization": f"Bearer {TOKEN}"})
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                return json.loads(r.read())  # type: ignore[no-any-return]
        except urllib.error.HTTPError as exc:
            if exc.code in (404, 503):  # not seen yet, or the worker is still (re)balancing
                return None
            raise
        except OSError:
            return None

    async def wait_customer(self, customer: str, ok: Any = lambda view: True, timeout_s: float = 60) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        view = None
        while loop.time() < deadline:
            if not self.worker.alive():
                raise AssertionError(f"the worker died:\n{self.worker.log_tail()}")
            view = await asyncio.to_thread(self.view, customer)
            if view is not None and ok(view):
                return view
            await asyncio.sleep(0.3)
        raise AssertionError(f"customer {customer} not as expected within {timeout_s}s (last view {view}); log:\n{self.worker.log_tail()}")

    def _checked(self, topic: str, msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # Every event on the output topics honours its published contract.
        schema = OUTPUT_SCHEMAS[topic.rsplit(".", 1)[-1]]
        for m in msgs:
            errors = [e.message for e in schema.iter_errors({k: v for k, v in m.items() if not k.startswith("_")})]
            assert not errors, (m, errors)
            assert m["_key"] == m["customer_id"]
        return msgs

    async def events(self, topic: str, until: Callable[[list[Any]], bool], timeout_s: float) -> list[dict[str, Any]]:
        """The topic from its start until ``until`` holds (an AssertionError if it does not in time)."""
        msgs = await read_all(self.settings.bootstrap_servers, topic, until=until, timeout_s=timeout_s, timestamps=True)
        assert until(msgs), f"{topic}: not there within {timeout_s}s; log:\n{self.worker.log_tail()}"
        return self._checked(topic, msgs)

    async def all_events(self, topic: str) -> list[dict[str, Any]]:
        """Everything on the topic now."""
        return self._checked(topic, await read_to_end(self.settings.bootstrap_servers, topic, timestamps=True))


def _churn(view: dict[str, Any]) -> dict[str, Any]:
    """The customer view's churn_risk as the stored record's fields (s, l, at: epoch seconds)."""
    risk = view["churn_risk"]
    return {"s": risk["score"], "l": risk["level"], "at": ts(risk["as_of"])}


def _schema(name: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads((REPO / "schemas" / name).read_text()), format_checker=FormatChecker())


OUTPUT_SCHEMAS = {"churn-risk": _schema("churn-risk.schema.json"), "pain-points": _schema("pain-point.schema.json")}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stream(broker: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stream]:
    settings = namespaced_settings(broker, "churn", api_token=TOKEN).replace(partitions=2, churn_params_file=PARAMS)
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


def _shifted_cdnow_subset(path: Path, customers: int, first_day: date) -> tuple[Path, dict[str, ref.Customer]]:
    """The first ``customers`` customers of the CDNOW sample, every purchase of theirs, moved by a
    whole number of days to start on ``first_day``; and the reference customers of that file
    (purchases at 12:00 UTC, one order per line, as journey reads CDNOW)."""
    lines = [line.split() for line in SAMPLE.read_text().splitlines() if line.split()]
    keep = set(sorted({f[0] for f in lines})[:customers])
    rows = [f for f in lines if f[0] in keep]
    start = min(date(int(f[2][:4]), int(f[2][4:6]), int(f[2][6:])) for f in rows)
    shift = first_day - start
    out: list[str] = []
    refs: dict[str, ref.Customer] = {}
    for i, f in enumerate(rows):
        day = date(int(f[2][:4]), int(f[2][4:6]), int(f[2][6:])) + shift
        out.append(" ".join([f[0], f[1], day.strftime("%Y%m%d"), f[3], f[4]]))
        at = datetime(day.year, day.month, day.day, 12, tzinfo=UTC).timestamp()
        c = refs.setdefault(str(int(f[0])), ref.Customer())
        c.purchases.append((at, f"line-{i}", float(f[4])))
        c.saw(at)
    path.write_text("\n".join(out) + "\n")
    return path, refs


async def test_worker_scores_equal_journey_churn_score_after_a_cdnow_replay(stream: Stream, tmp_path: Path) -> None:
    # A subset of the CDNOW sample: its first 150 customers, every purchase of theirs, starting on this test's day.
    base = stream.fresh_base()
    subset, refs = _shifted_cdnow_subset(tmp_path / "cdnow_subset.txt", 150, datetime.fromtimestamp(base, UTC).date())
    records, total = records_for_format(subset, "cdnow")
    records = list(records)
    for _key, _value, when in records:
        if when is not None:
            stream.saw(when)
    await publish(stream.settings.bootstrap_servers, stream.settings.topic_touchpoints, records, speed=None, progress=False, total=total)
    counts: dict[str, int] = {}
    for key, _value, _when in records:
        counts[key.decode()] = counts.get(key.decode(), 0) + 1
    assert counts == {c: len(r.purchases) for c, r in refs.items()}
    last_key = records[-1][0].decode()
    await stream.wait_customer(last_key, lambda v: v["touchpoints"] == counts[last_key])

    params = ref.Params.from_file(PARAMS)
    checked = by_reference = 0
    for customer in sorted(counts)[::5]:  # every 5th customer: 30 of them
        view = await stream.wait_customer(customer, lambda v, c=customer: v["touchpoints"] == counts[c] and "churn_risk" in v)
        churn = _churn(view)
        out = io.StringIO()
        with redirect_stdout(out):
            assert journey_cli(["churn", "score", str(subset), "--format", "cdnow", "--as-of", iso(churn["at"]),
                                "--params", str(PARAMS)]) == 0
        rows = {r["customer_id"]: r for r in csv.DictReader(io.StringIO(out.getvalue()))}
        assert float(rows[customer]["score"]) == pytest.approx(churn["s"], abs=1e-9), customer
        assert rows[customer]["level"] == churn["l"], customer
        checked += 1
        # The closed form, where the state's bounded memory (16 purchase days) holds the whole history.
        if len({math.floor(t / DAY) for t, _o, _a in refs[customer].purchases}) <= 16:
            expected = ref.score(params, refs[customer], churn["at"])
            assert churn["s"] == pytest.approx(expected, abs=2e-6), customer
            assert churn["l"] == ref.level(expected), customer
            by_reference += 1
    assert checked == 30 and by_reference >= 25


async def test_scores_equal_the_closed_form_at_a_given_clock(stream: Stream) -> None:
    base = stream.fresh_base()
    run = uuid.uuid4().hex[:6]
    clock = base + 200 * DAY + 12 * HOUR  # the given clock: every customer's last event is then
    plan: dict[str, list[tuple[float, str, dict[str, Any]]]] = {
        f"once-{run}": [(150, "purchase", {"order_id": "o1", "amount": 20.0})],
        f"steady-{run}": [(d, "purchase", {"order_id": f"s{d}", "amount": 10.0 + d}) for d in (60, 74, 88, 102, 116, 130, 144)],
        f"recent-{run}": [(170, "purchase", {"order_id": "r1", "amount": 60.0}), (199.4, "purchase", {"order_id": "r2", "amount": 40.0})],
        f"unhappy-{run}": [(120, "purchase", {"order_id": "u1", "amount": 12.0}), (150, "purchase", {"order_id": "u2", "amount": 12.0}),
                           (185, "complaint", {}), (190, "complaint", {})],
        f"lapsed-{run}": [(d, "purchase", {"order_id": f"l{d}", "amount": 8.0}) for d in (1, 31, 61)],
    }
    events: list[dict[str, Any]] = []
    for customer, steps in plan.items():
        for day, type_, props in [*steps, (200.5, "page_view", {})]:  # the last: at the clock
            at = base + day * DAY + (0 if day % 1 else 12 * HOUR)
            events.append({"event_id": f"{customer}-{len(events)}", "customer_id": customer, "type": type_,
                           "timestamp": iso(at), "channel": "direct", "properties": props})
            stream.saw(at)
    await produce(stream.settings.bootstrap_servers, stream.settings.topic_touchpoints, [touchpoint_record(e) for e in events])
    assert {e["timestamp"] for e in events if e["type"] == "page_view"} == {iso(clock)}

    params = ref.Params.from_file(PARAMS)
    customers = ref.customers_of(events)
    levels = set()
    for customer, steps in plan.items():
        n = len(steps) + 1
        view = await stream.wait_customer(customer, lambda v, n=n: v["touchpoints"] == n and "churn_risk" in v)
        churn = _churn(view)
        assert abs(churn["at"] - clock) <= LATENESS_S, (customer, iso(churn["at"]))
        expected = ref.score(params, customers[customer], churn["at"])
        assert churn["s"] == pytest.approx(expected, abs=2e-6), customer
        assert churn["l"] == ref.level(expected), customer
        levels.add(churn["l"])
    assert len(levels) >= 2, levels  # the script is not all on one side of a threshold


async def test_silent_customer_gets_a_churn_risk_event_once_the_clock_passes_the_threshold(stream: Stream) -> None:
    customer = f"silent-{uuid.uuid4().hex[:6]}"
    start = stream.fresh_base() + 12 * HOUR
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
    model = load_model(PARAMS)
    now = assess(state, start + 28 * DAY, model, RiskConfig())
    assert now.level_name == "low" and now.next_change is not None
    threshold = now.next_change
    # The same moment from the closed form: the first UTC midnight the reference score reaches medium.
    params = ref.Params.from_file(PARAMS)
    silent = ref.Customer(purchases=[(start + d * DAY, f"o{d}", 30.0) for d in days], last_seen=start + 28 * DAY)
    midnight = math.ceil((start + 28 * DAY) / DAY) * DAY
    while ref.score(params, silent, midnight) < ref.MEDIUM:
        midnight += DAY
    assert threshold == midnight, (iso(threshold), iso(midnight))
    assert threshold - HOUR - ABANDONMENT_S > start + 28 * DAY  # room for the sentinel below

    view = await stream.wait_customer(customer, lambda v: v["purchase_days"] == len(days) and "churn_risk" in v)
    assert view["churn_risk"]["level"] == "low"

    def mine(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # Levels may move while the purchases come in; what counts is what silence does after them.
        return [m for m in msgs if m["customer_id"] == customer and ts(m["at"]) > start + 28 * DAY]

    # An hour before the threshold: the timer has run at that clock (the sentinel's cart, due
    # then, is out), and nothing for this customer.
    sentinel = await stream.sentinel(threshold - HOUR - 60)
    await stream.push_clock(threshold - HOUR)
    await stream.timer_reached(sentinel)
    assert mine(await stream.all_events(stream.settings.topic_churn_risk)) == [], "a churn-risk event before the clock reached the threshold"

    await stream.push_clock(threshold + 60)
    await stream.events(stream.settings.topic_churn_risk, until=lambda m: bool(mine(m)), timeout_s=30)
    await stream.wait_customer(customer, lambda v: v["churn_risk"]["level"] == "medium")  # the state after the event: nothing more to come
    events = mine(await stream.all_events(stream.settings.topic_churn_risk))
    assert len(events) == 1, events
    event = events[0]
    assert (event["level"], event["previous_level"]) == ("medium", "low")
    assert event["_key"] == customer and event["reasons"] and event["model"]["version"] == model.version
    assert threshold <= ts(event["at"]) <= threshold + 60
    assert event["score"] == pytest.approx(ref.score(params, silent, ts(event["at"])), abs=2e-6)
    assert event["score"] >= RiskConfig().medium


async def test_purchase_inside_the_abandonment_window_cancels_the_pain_point(stream: Stream) -> None:
    run = uuid.uuid4().hex[:6]
    bought, abandoned = f"cart-bought-{run}", f"cart-left-{run}"
    cart_at = stream.fresh_base() + 10 * HOUR
    sentinel = await stream.sentinel(cart_at + 23 * HOUR - 60)  # its cart is an hour before the others
    await stream.send(bought, "add_to_cart", cart_at, cart_id="k1")
    await stream.send(abandoned, "add_to_cart", cart_at, cart_id="k2")
    await stream.send(bought, "purchase", cart_at + 2 * HOUR, order_id="o1", amount=12.5)
    await stream.wait_customer(bought, lambda v: v["purchases"] == 1)
    await stream.wait_customer(abandoned)

    def kinds(msgs: list[dict[str, Any]], customer: str) -> list[str]:
        return [m["kind"] for m in msgs if m["customer_id"] == customer]

    # An hour before the carts are due: the timer has run at that clock, and neither is out.
    await stream.push_clock(cart_at + 23 * HOUR)
    await stream.timer_reached(sentinel)
    early = await stream.all_events(stream.settings.topic_pain_points)
    assert kinds(early, abandoned) == [] and kinds(early, bought) == []

    await stream.push_clock(cart_at + ABANDONMENT_S + 60)
    await stream.events(stream.settings.topic_pain_points, until=lambda m: bool(kinds(m, abandoned)), timeout_s=30)
    # Same deadline, same tick: had the purchase not cancelled it, it would be out by now too.
    msgs = await stream.all_events(stream.settings.topic_pain_points)
    assert kinds(msgs, abandoned) == ["cart_abandoned"]
    assert kinds(msgs, bought) == []
    event = next(m for m in msgs if m["customer_id"] == abandoned)
    assert (event["stage"], event["channel"], event["at"]) == ("decision", "direct", iso(cart_at + ABANDONMENT_S))
    view = await stream.wait_customer(abandoned, lambda v: "churn_risk" in v)
    assert view["pain_points"]["carts_abandoned"] == 1
    assert view["pain_points"]["last_cart_abandoned_at"] == iso(cart_at + ABANDONMENT_S)


def test_fresh_bases_are_days_apart_and_in_the_past() -> None:
    s = Stream.__new__(Stream)
    s.latest = 0.0
    first = s.fresh_base()
    assert first == FIRST_BASE
    s.saw(first + 400 * DAY + 5)
    second = s.fresh_base()
    assert second % DAY == 0 and second >= first + 430 * DAY
    assert datetime.fromtimestamp(second, UTC) < datetime.now(UTC) - timedelta(days=365)
