"""Identity on the real broker: anonymous-first traffic (browsing before a login, two devices,
guest and logged-out checkouts, duplicates, late events) through two workers and the sidecar.

The expected numbers come from the script alone: each person's events (their customer id's, and
their devices' anonymous ones) folded by tests/support/journey_reference.py, not by journey's
merge. One worker is killed with SIGKILL while merges are in flight and restarted; the whole
input is then replayed: the numbers stay exact and no anonymous id is merged twice.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from journey.core.clock import parse_iso
from journey.core.events import validate
from journey.sources.generator import IDENTITY_MIX, generate
from support.journey_reference import reference
from support.kafka import read_to_end, wait_committed
from support.sidecar_run import Deployment, get, produce, wait_for

pytestmark = pytest.mark.integration

STAGES = ["awareness", "consideration", "decision", "purchase", "retention", "advocacy"]
TOKEN = "identity-token"
PARTITIONS = 4
N_PEOPLE = 120


def people(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Each person's touchpoints: a customer's own and those of the devices they logged in on;
    a visitor who never logs in is a person of their own."""
    owner: dict[str, str] = {}
    for e in events:
        if e.get("customer_id") and e.get("anonymous_id"):
            owner.setdefault(e["anonymous_id"], e["customer_id"])
    out: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        if e["type"] == "identify":
            continue  # link-only: not a touchpoint of the journey
        person = e.get("customer_id") or owner.get(e["anonymous_id"], e["anonymous_id"])
        out.setdefault(person, []).append(e)
    return out


def expected(events: list[dict[str, Any]]) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    refs = {p: reference([validate(e) for e in evs]) for p, evs in people(events).items()}
    stages = Counter(STAGES[r["stage"]] for r in refs.values() if r["stage"] >= 0)
    first_touch = Counter(r["attribution"][0] for r in refs.values() if r["attribution"] is not None)
    final = {p: r["stage"] for p, r in refs.items() if "-c" in p}  # known customers (generator ids s<seed>-c<n>)
    return {s: stages.get(s, 0) for s in STAGES}, dict(first_touch), final


def _numbers(base: str) -> tuple[bool, Any]:
    s1, stages = get(f"{base}/stages")
    s2, channels = get(f"{base}/channels")
    if (s1, s2) != (200, 200):
        return False, "sidecar not answering 200 yet"
    return True, (stages["stages"], channels["attribution"]["first_touch"])


async def test_anonymous_journeys_merge_exactly_across_workers_a_kill_and_a_replay(broker: str, tmp_path: Path) -> None:
    events = list(generate(N_PEOPLE, seed=5, start=datetime(2024, 5, 1, tzinfo=UTC), mix=IDENTITY_MIX))
    devices = {e["anonymous_id"] for e in events if e["type"] == "identify"}
    assert len(devices) > N_PEOPLE // 2, "the script must link many devices"
    want_stages, want_first, want_final = expected(events)

    dep = await Deployment.create(broker, tmp_path, partitions=PARTITIONS, token=TOKEN)
    topic = dep.settings.topic_touchpoints
    workers = [dep.worker("worker0"), dep.worker("worker1")]
    sidecar = dep.sidecar([w.port for w in workers])
    base = f"http://127.0.0.1:{sidecar.port}"

    def exact() -> tuple[bool, Any]:
        ok, got = _numbers(base)
        if not ok:
            return False, got
        stages, first = got
        return (stages == want_stages and first == want_first), {"stages": (stages, want_stages), "first_touch": (first, want_first)}

    def all_alive() -> None:
        for proc in (*workers, sidecar):
            proc.alive_or_fail()

    def both_publish() -> tuple[bool, Any]:
        """The two running workers (a restarted one included) publish every partition between them."""
        status, body = get(f"{base}/readyz")
        if status != 200:
            return False, body
        owners = body["workers"]
        running = all(any(f":{w.port}/" in url for url in owners) for w in workers)
        return running and len(owners) == 2 and not body["stale_partitions"], body

    async def settled(what: str) -> None:
        """Both workers in the group and publishing, every input record (the workers' own link and
        merge requests included) processed, and the sidecar's numbers taken after that, exact."""
        await wait_for(f"both workers to own partitions and publish them {what}", both_publish, dep.live(), 240)
        await wait_committed(broker, dep.settings.app_id, topic, timeout_s=240, check=all_alive)
        after = time.time()
        await wait_for(f"both workers still publishing {what}", both_publish, dep.live(), 60)

        def exact_since() -> tuple[bool, Any]:
            status, body = get(f"{base}/stages")
            if status != 200 or body.get("as_of") is None or parse_iso(body["as_of"]) <= after:
                return False, ("the sidecar's numbers are older than the commit", status, body)
            return exact()

        await wait_for(f"exact numbers {what}", exact_since, dep.live(), 120)

    def final_stages() -> None:
        """Every known customer's final stage, through the sidecar (anonymous ids answer for their
        customer); a lookup that meets a rebalance (503) or no answer is tried again."""
        wrong = {}
        deadline = time.monotonic() + 120
        for person, stage in want_final.items():
            while True:
                status, body = get(f"{base}/customers/{person}", TOKEN)
                if status in (200, 404) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            got = body.get("stage") if status == 200 else status
            if got != (STAGES[stage] if stage >= 0 else None):
                wrong[person] = (got, stage)
        assert not wrong, f"{len(wrong)} customers in the wrong stage: {list(wrong.items())[:5]}"

    try:
        await wait_for("both workers to own partitions and publish them", both_publish, dep.live(), 240)

        half = len(events) // 2
        await produce(broker, topic, events[:half])
        # Kill one worker while the first half's links and merges are on their way.
        victim = workers[0]
        victim.process.kill()
        victim.process.wait()
        await produce(broker, topic, events[half:])
        workers[0] = dep.worker("worker0")  # restarted on its own RocksDB
        await settled("after the kill and restart")
        await asyncio.to_thread(final_stages)
        some_device = sorted(devices)[0]
        status, body = get(f"{base}/customers/{some_device}", TOKEN)
        assert status == 200 and body["requested_id"] == some_device and body["customer_id"] != some_device

        # The same input again: nothing changes, nothing is merged a second time. Every identity
        # event published is on the topic once the input is settled; all of them are read.
        await produce(broker, topic, events)
        await settled("after a replay")
        await asyncio.to_thread(final_stages)
        msgs = await read_to_end(broker, dep.settings.topic_identities)
        merged: dict[str, set[str]] = {}
        for m in msgs:
            if m["type"] == "identity_merged":
                merged.setdefault(m["anonymous_id"], set()).add(orjson.dumps([m["customer_id"], m["trigger_event_id"]]).decode())
        assert set(merged) == devices, f"devices never merged: {sorted(devices - set(merged))}; merged, not linked: {sorted(set(merged) - devices)}"
        twice = {a: v for a, v in merged.items() if len(v) > 1}
        assert not twice, f"anonymous ids merged twice: {list(twice.items())[:3]}"
        assert not [m for m in msgs if m["type"] == "identity_conflict"]
    finally:
        dep.stop()
