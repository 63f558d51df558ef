"""The sidecar's numbers on the real broker, with two worker processes sharing the partitions.

Scripted customers walk to known stages through known channels; the expected /stages, /funnel
and /channels are computed here from the script alone (not by the stage machine). One worker is
then killed with SIGKILL; once the other owns every partition the numbers must still be exact,
and stay exact as more events arrive.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from journey.kafka.admin import ensure_topics
from journey.kafka.broker import free_port
from journey.settings import Settings
from journey.worker.topics import all_topic_specs

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
STAGES = ["awareness", "consideration", "decision", "purchase", "retention", "advocacy"]
CHANNELS = ["ads", "direct", "email", "other", "referral", "search", "social", "store", "support"]
TOKEN = "test-token"
PARTITIONS = 4
T0 = datetime(2024, 3, 1, tzinfo=timezone.utc).timestamp()


# --- the script: each customer walks to a target stage; expectations come from the plan ----------
@dataclass
class Customer:
    cid: str
    target: int
    channels: list[str]
    #: Seconds from awareness to consideration (known, to check the median).
    gap: float
    start: float
    events: list[dict[str, Any]] = field(default_factory=list)

    def plan(self) -> None:
        """Events that take the customer exactly to ``target``, one channel per event in turn."""
        types = ["page_view", "product_view", "add_to_cart", "purchase", "purchase", "referral_sent"][: self.target + 1]
        t = self.start
        for i, etype in enumerate(types):
            if i == 1:
                t += self.gap
            else:
                t += 60.0
            props: dict[str, Any] = {}
            if etype == "purchase":
                props = {"order_id": f"{self.cid}-o{i}", "amount": 20.0, "currency": "EUR"}
            self.events.append(
                {
                    "event_id": f"{self.cid}-e{len(self.events)}",
                    "customer_id": self.cid,
                    "type": etype,
                    "timestamp": datetime.fromtimestamp(t, tz=timezone.utc).isoformat(),
                    "channel": self.channels[i % len(self.channels)],
                    "properties": props,
                }
            )

    def advance(self, to: int) -> list[dict[str, Any]]:
        """More events taking an existing customer further (returns only the new ones)."""
        before = len(self.events)
        self.target = to
        old = self.events
        self.events = []
        self.plan()
        # Keep the old events (same ids: replays would dedupe) and add the new steps.
        new = self.events[before:]
        for j, e in enumerate(new):
            e["event_id"] = f"{self.cid}-late{j}"
        self.events = old + new
        return new


def expected(customers: list[Customer]) -> dict[str, Any]:
    stages = Counter(STAGES[c.target] for c in customers)
    reached = [sum(1 for c in customers if c.target >= s) for s in range(len(STAGES))]
    first = {c.cid: c.events[0]["channel"] for c in customers}
    by_first = {
        ch: [sum(1 for c in customers if first[c.cid] == ch and c.target >= s) for s in range(len(STAGES))]
        for ch in CHANNELS
    }
    touchpoints = Counter(e["channel"] for c in customers for e in c.events)
    channels = {}
    for ch in CHANNELS:
        touched = [c for c in customers if any(e["channel"] == ch for e in c.events)]
        channels[ch] = {
            "touchpoints": touchpoints.get(ch, 0),
            "customers": len(touched),
            "reached": {name: sum(1 for c in touched if c.target >= s) for s, name in enumerate(STAGES)},
        }
    first_touch, last_touch = Counter(), Counter()
    for c in customers:
        types = [e["type"] for e in c.events]
        if "purchase" in types:
            k = types.index("purchase")
            first_touch[c.events[0]["channel"]] += 1
            last_touch[c.events[k - 1]["channel"] if k > 0 else c.events[k]["channel"]] += 1
    gaps = sorted(c.gap for c in customers if c.target >= 1)
    return {
        "stages": {name: stages.get(name, 0) for name in STAGES},
        "total": len(customers),
        "reached": reached,
        "by_first": by_first,
        "channels": channels,
        "first_touch": dict(first_touch),
        "last_touch": dict(last_touch),
        "median_gap": gaps[(len(gaps) + 1) // 2 - 1],
    }


def script(prefix: str, n: int, seed: int) -> list[Customer]:
    out = []
    for i in range(n):
        k = i + seed
        chans = [CHANNELS[(k * 7 + j * 3) % len(CHANNELS)] for j in range(1 + k % 3)]
        c = Customer(f"{prefix}-c{i}", target=k % len(STAGES), channels=chans, gap=30.0 * (1 + (k * 13) % 50), start=T0 + i * 10)
        c.plan()
        out.append(c)
    return out


# --- processes ----------------------------------------------------------------------------------
@dataclass
class Proc:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def alive_or_fail(self) -> None:
        if self.process.poll() is not None:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])
            raise AssertionError(f"{self.name} exited ({self.process.returncode}):\n{tail}")


def _spawn(name: str, args: list[str], env: dict[str, str], root: Path) -> Proc:
    cwd = root / name
    cwd.mkdir(parents=True, exist_ok=True)
    log = root / f"{name}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "journey.cli", *args], env=env, cwd=cwd,
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )
    port = int(env.get("JOURNEY_WEB_PORT") if args[0] == "worker" else env["JOURNEY_SIDECAR_PORT"])
    return Proc(name, port, process, log)


def _get(url: str, token: str | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=3) as r:
            body = r.read()
            return r.status, json.loads(body) if r.headers.get_content_type() == "application/json" else body.decode()
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")
    except OSError:
        return 0, None


async def _wait_for(what: str, check: Callable[[], Any], procs: list[Proc], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        for p in procs:
            p.alive_or_fail()
        ok, last = await asyncio.to_thread(check)
        if ok:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}; last seen: {last!r}")
        await asyncio.sleep(0.5)


def _numbers(base: str) -> dict[str, Any] | None:
    s1, stages = _get(f"{base}/stages")
    s2, funnel = _get(f"{base}/funnel")
    s3, channels = _get(f"{base}/channels")
    if (s1, s2, s3) != (200, 200, 200):
        return None
    by_first = {}
    for ch in CHANNELS:
        _, f = _get(f"{base}/funnel?first_touch={ch}")
        by_first[ch] = [row["reached"] for row in f["stages"]]
    return {"stages": stages, "funnel": funnel, "channels": channels, "by_first": by_first}


def _matches(got: dict[str, Any] | None, exp: dict[str, Any]) -> tuple[bool, Any]:
    if got is None:
        return False, "sidecar not answering 200 yet"
    actual = {
        "stages": got["stages"]["stages"],
        "total": got["stages"]["total"],
        "reached": [r["reached"] for r in got["funnel"]["stages"]],
        "by_first": got["by_first"],
        "channels": {
            ch: {k: v[k] for k in ("touchpoints", "customers", "reached")} for ch, v in got["channels"]["channels"].items()
        },
        "first_touch": got["channels"]["attribution"]["first_touch"],
        "last_touch": got["channels"]["attribution"]["last_touch"],
    }
    want = {k: v for k, v in exp.items() if k != "median_gap"}
    return actual == want, {k: (actual[k], want[k]) for k in want if actual[k] != want[k]}


async def _produce(broker: str, topic: str, events: list[dict[str, Any]], extra: list[tuple[bytes, bytes]] = ()) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=broker, acks="all", linger_ms=5)
    await producer.start()
    try:
        for e in events:
            await producer.send(topic, orjson.dumps(e), key=e["customer_id"].encode())
        for key, value in extra:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


def _metric_families(url: str) -> dict[str, Any]:
    status, text = _get(url)
    assert status == 200, (url, status)
    return {f.name: f for f in text_string_to_metric_families(text)}


async def test_numbers_are_exact_with_two_workers_and_after_one_is_killed(broker: str, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    env_settings = {
        "JOURNEY_BOOTSTRAP_SERVERS": broker,
        "JOURNEY_APP_ID": f"sc-{run}",
        "JOURNEY_TOPIC_TOUCHPOINTS": f"sc-{run}-touchpoints",
        "JOURNEY_TOPIC_TRANSITIONS": f"sc-{run}-transitions",
        "JOURNEY_TOPIC_DEAD_LETTER": f"sc-{run}-dead-letter",
        "JOURNEY_TOPIC_CHURN_RISK": f"sc-{run}-churn-risk",
        "JOURNEY_TOPIC_PAIN_POINTS": f"sc-{run}-pain-points",
        "JOURNEY_TOPIC_AGGREGATES": f"sc-{run}-aggregates",
        "JOURNEY_PARTITIONS": str(PARTITIONS),
        "JOURNEY_SESSION_TIMEOUT_S": "10",
        "JOURNEY_API_TOKEN": TOKEN,
        "JOURNEY_LOG_LEVEL": "info",
    }
    settings = Settings.from_env(env_settings)
    await ensure_topics(broker, all_topic_specs(settings))
    base_env = {
        **os.environ, **env_settings,
        "PYTHONPATH": os.pathsep.join([str(REPO / "service"), os.environ.get("PYTHONPATH", "")]),
    }
    ports = [free_port(), free_port()]
    workers = [
        _spawn(f"worker{i}", ["worker"], {**base_env, "JOURNEY_WEB_PORT": str(port), "JOURNEY_DATA_DIR": str(tmp_path / f"worker{i}")}, tmp_path)
        for i, port in enumerate(ports)
    ]
    sidecar_port = free_port()
    sidecar = _spawn(
        "sidecar", ["sidecar"],
        {**base_env, "JOURNEY_SIDECAR_PORT": str(sidecar_port), "JOURNEY_WORKER_URLS": ",".join(f"http://127.0.0.1:{p}" for p in ports)},
        tmp_path,
    )
    base = f"http://127.0.0.1:{sidecar_port}"
    procs = [*workers, sidecar]
    try:
        def both_publish() -> tuple[bool, Any]:
            status, body = _get(f"{base}/readyz")
            if status != 200:
                return False, body
            owners = body["workers"]
            fresh = not body["stale_partitions"]
            return fresh and len(owners) == 2 and all(any(f":{p}/" in w for w in owners) for p in ports), owners

        await _wait_for("both workers to own partitions and publish them", both_publish, procs, 120)

        # --- phase 1: scripted customers, exact numbers
        customers = script(f"p1{run}", 36, seed=0)
        bad = [(b"bad-key", b"{not json")]
        await _produce(broker, settings.topic_touchpoints, [e for c in customers for e in c.events], bad)
        exp = expected(customers)
        await _wait_for("exact numbers from two workers", lambda: _matches(_numbers(base), exp), procs, 30)
        funnel = _numbers(base)["funnel"]
        median = funnel["stages"][1]["median_seconds_from_previous"]
        assert abs(median - exp["median_gap"]) <= 0.05 * exp["median_gap"], (median, exp["median_gap"])

        # the customer view goes through a worker (Faust routes to the owner)
        some = customers[4]
        status, body = _get(f"{base}/customers/{some.cid}", TOKEN)
        direct = {p: _get(f"http://127.0.0.1:{p}/customers/{some.cid}", TOKEN)[0] for p in ports}
        assert status == 200, (body, "straight to the workers:", direct)
        assert body["stage"] == STAGES[some.target] and body["touchpoints"] == len(some.events)
        assert _get(f"{base}/customers/{some.cid}")[0] == 401

        # /metrics of a worker and of the sidecar parse and hold the series
        fams = _metric_families(f"http://127.0.0.1:{ports[0]}/metrics")
        for name in (
            "journey_touchpoints_consumed", "journey_dead_letters", "journey_stage_transitions",
            "journey_customers", "journey_event_to_transition_seconds", "journey_consumer_lag",
        ):
            assert name in fams, (name, sorted(fams))
        lag = [s for s in fams["journey_consumer_lag"].samples]
        assert lag and all("partition" in s.labels and s.value >= 0 for s in lag)
        dead = sum(s.value for w in ports for s in _metric_families(f"http://127.0.0.1:{w}/metrics")["journey_dead_letters"].samples if s.name.endswith("_total"))
        assert dead == len(bad)
        sfams = _metric_families(f"{base}/metrics")
        by_stage = {s.labels["stage"]: s.value for s in sfams["journey_sidecar_customers"].samples}
        assert {k: by_stage[k] for k in STAGES} == exp["stages"]
        assert sfams["journey_sidecar_staleness_seconds"].samples[0].value < 5

        # --- kill -9 one worker; the survivor takes over; the numbers stay exact
        victim, survivor = workers
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait()
        procs = [survivor, sidecar]
        t_kill = time.monotonic()

        def survivor_owns_all() -> tuple[bool, Any]:
            status, body = _get(f"{base}/readyz")
            if status != 200:
                return False, body
            owners = body["workers"]
            return len(owners) == 1 and f":{survivor.port}/" in next(iter(owners)) and not body["stale_partitions"], owners

        await _wait_for("the survivor to publish every partition", survivor_owns_all, procs, 90)
        takeover_s = time.monotonic() - t_kill
        ok, diff = _matches(_numbers(base), exp)
        assert ok, f"numbers changed across the take-over: {diff}"

        # --- phase 2: new customers and old ones moving on; still exact
        more = script(f"p2{run}", 12, seed=3)
        movers = [c for c in customers if c.target < 3][:6]
        assert movers
        moved = [e for c in movers for e in c.advance(min(c.target + 2, 5))]
        await _produce(broker, settings.topic_touchpoints, [e for c in more for e in c.events] + moved)
        exp2 = expected(customers + more)
        await _wait_for("exact numbers after the take-over and new events", lambda: _matches(_numbers(base), exp2), procs, 30)
        print(f"\ntake-over seen by the sidecar after {takeover_s:.1f} s")
    finally:
        for p in (*workers, sidecar):
            if p.process.poll() is None:
                p.process.send_signal(signal.SIGTERM)
        for p in (*workers, sidecar):
            try:
                p.process.wait(10)
            except subprocess.TimeoutExpired:
                p.process.kill()
                p.process.wait()
