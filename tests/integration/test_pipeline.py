"""The journey pipeline end to end on the real broker: scripted customers, bad input, real data sets.

One worker per concern (scripted, CDNOW, Complete Journey), all started once for the module and
in parallel: a Faust worker takes ~15-30 s to join its group on the test broker.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator, FormatChecker

from support.env import subprocess_env
from support.expected_stages import expected_stages
from support.kafka import produce, read_all, read_to_end, touchpoint_record, wait_committed
from support.workers import (
    ROOT,
    WorkerProcess,
    create_topics,
    is_probe,
    namespaced_settings,
    settings_env,
    stop_all,
    wait_until_processing,
)

pytestmark = pytest.mark.integration

STAGE_ORDER = ["awareness", "consideration", "decision", "purchase", "retention", "advocacy"]
TRANSITION_SCHEMA = Draft202012Validator(
    json.loads((ROOT / "schemas" / "stage-transition.schema.json").read_text()), format_checker=FormatChecker()
)
DEAD_LETTER_SCHEMA = Draft202012Validator(
    json.loads((ROOT / "schemas" / "dead-letter.schema.json").read_text()), format_checker=FormatChecker()
)


@pytest.fixture(scope="module")
async def workers(broker: str, tmp_path_factory: pytest.TempPathFactory):
    names = ["scripted", "cdnow", "cj"]
    settings = {n: namespaced_settings(broker, f"pipe-{n}") for n in names}  # unique per run
    await asyncio.gather(*(create_topics(s) for s in settings.values()))
    procs = {n: WorkerProcess(settings[n], tmp_path_factory.mktemp(f"worker-{n}")).start() for n in names}
    try:
        await asyncio.gather(*(wait_until_processing(settings[n], [procs[n]]) for n in names))
        yield {n: (settings[n], procs[n]) for n in names}
    finally:
        stop_all(list(procs.values()))


def ev(event_id: str, customer: str | None, etype: str, ts: str, **extra: Any) -> dict[str, Any]:
    e: dict[str, Any] = {"event_id": event_id, "type": etype, "timestamp": ts}
    if customer is not None:
        e["customer_id"] = customer
    e.update(extra)
    return e


async def test_scripted_customers_get_exactly_their_transitions(workers):
    settings, worker = workers["scripted"]
    T = "2024-06-01T10:{:02d}:00+00:00".format
    good: list[dict[str, Any]] = [
        # alice walks the whole journey; a duplicate delivery and a second line of one order in between
        ev("a1", "alice", "ad_click", T(0), channel="ads"),
        ev("a2", "alice", "product_view", T(1), channel="search"),
        ev("a2", "alice", "product_view", T(1), channel="search"),
        ev("a3", "alice", "add_to_cart", T(2), properties={"cart_id": "k1"}),
        ev("a4", "alice", "purchase", T(3), properties={"order_id": "o1", "amount": 10.0, "currency": "EUR"}),
        ev("a5", "alice", "purchase", T(4), properties={"order_id": "o1", "amount": 5.0, "currency": "EUR"}),
        ev("a6", "alice", "purchase", T(20), properties={"order_id": "o2", "amount": 7.0, "currency": "EUR"}),
        ev("a7", "alice", "review_submitted", T(30), properties={"rating": 5}),
        # bob: the purchase arrives before his earlier page view (late event)
        ev("b1", "bob", "purchase", T(10), properties={"order_id": "b-o1"}),
        ev("b2", "bob", "page_view", T(0)),
        # carol: a review before any purchase moves nothing; an unknown type; a complaint
        ev("c1", "carol", "review_submitted", T(0), properties={"rating": 5}),
        ev("c2", "carol", "wishlist_add", T(1)),
        ev("c3", "carol", "complaint", T(2), channel="support"),
        ev("c4", "carol", "pricing_view", T(3)),
        # an anonymous visitor is kept under their anonymous id
        ev("v1", None, "page_view", T(0), anonymous_id="anon-9"),
    ]
    records = [touchpoint_record(e) for e in good]
    # dan's event arrives without a key: the worker re-keys it and still applies it
    records.append((None, orjson.dumps(ev("d1", "dan", "add_to_cart", T(5)))))
    bad = [
        (b"alice", b"{this is not json"),
        (b"alice", b"\xff\xfe\x00 not utf-8"),
        (b"alice", orjson.dumps({"customer_id": "alice", "type": "page_view", "timestamp": T(40)})),
    ]
    records[5:5] = bad  # bad input in the middle of alice's journey: she must still finish it
    # erin comes after the bad records: the worker kept going
    records.append(touchpoint_record(ev("e1", "erin", "checkout_started", T(50))))
    await produce(settings.bootstrap_servers, settings.topic_touchpoints, records)

    expected = {
        "alice": [(None, "awareness", "a1"), ("awareness", "consideration", "a2"), ("consideration", "decision", "a3"),
                  ("decision", "purchase", "a4"), ("purchase", "retention", "a6"), ("retention", "advocacy", "a7")],
        "bob": [(None, "purchase", "b1")],
        "carol": [(None, "consideration", "c4")],
        "anon-9": [(None, "awareness", "v1")],
        "dan": [(None, "decision", "d1")],
        "erin": [(None, "decision", "e1")],
    }
    n_expected = sum(len(v) for v in expected.values())
    await read_all(
        settings.bootstrap_servers, settings.topic_transitions,
        until=lambda m: len([x for x in m if not is_probe(x["customer_id"])]) >= n_expected, timeout_s=60,
    )
    # Settled: the worker has committed all of the input (the re-keyed copy of dan's event
    # included), so all it will ever write for it is on the output topics; read them to the end.
    await wait_committed(settings.bootstrap_servers, settings.app_id, settings.topic_touchpoints, timeout_s=90,
                         check=worker.check_alive)
    msgs = await read_to_end(settings.bootstrap_servers, settings.topic_transitions)
    got: dict[str, list] = defaultdict(list)
    for m in msgs:
        if is_probe(m["customer_id"]):
            continue
        assert TRANSITION_SCHEMA.is_valid({k: v for k, v in m.items() if k != "_key"}), m
        assert m["_key"] == m["customer_id"]
        got[m["customer_id"]].append((m["from_stage"], m["to_stage"], m["trigger_event_id"]))
    # The complete set, each once, and nothing else.
    assert dict(got) == expected, worker.log_tail()
    assert len({m["transition_id"] for m in msgs if not is_probe(m["customer_id"])}) == n_expected

    alice = {m["trigger_event_id"]: m for m in msgs if m["customer_id"] == "alice"}
    assert alice["a3"]["seconds_in_previous_stage"] == 60
    assert alice["a7"]["skipped_stages"] == []
    assert alice["a1"]["channel"] == "ads"

    dead = await read_to_end(settings.bootstrap_servers, settings.topic_dead_letter)
    assert sorted(d["reason"] for d in dead) == ["not_json", "not_utf8", "schema_violation"]  # these, and only these
    for d in dead:
        assert DEAD_LETTER_SCHEMA.is_valid({k: v for k, v in d.items() if k != "_key"}), d
        assert d["topic"] == settings.topic_touchpoints and d["offset"] >= 0
    by_reason = {d["reason"]: d for d in dead}
    assert base64.b64decode(by_reason["not_utf8"]["value"]) == b"\xff\xfe\x00 not utf-8"
    assert by_reason["not_json"]["value"] == "{this is not json"
    assert "event_id" in by_reason["schema_violation"]["error"]
    assert worker.alive()


def _final_stages(msgs: list[dict[str, Any]]) -> dict[str, str]:
    final: dict[str, str] = {}
    seen: dict[str, set[str]] = defaultdict(set)
    for m in msgs:
        cid = m["customer_id"]
        if is_probe(cid):
            continue
        assert m["to_stage"] not in seen[cid], f"{cid} entered {m['to_stage']} twice"
        seen[cid].add(m["to_stage"])
        if cid not in final or STAGE_ORDER.index(m["to_stage"]) > STAGE_ORDER.index(final[cid]):
            final[cid] = m["to_stage"]
    return final


async def _replay_and_compare(workers, name: str, path: Path, fmt: str) -> None:
    settings, worker = workers[name]
    env = subprocess_env(settings_env(settings))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "journey.cli", "replay", str(path), "--format", fmt, "--quiet", env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    expected = expected_stages(path, fmt)
    n_transitions_min = len(expected)

    def complete(msgs: list) -> bool:
        return len(msgs) >= n_transitions_min and _final_stages(msgs) == expected

    await read_all(settings.bootstrap_servers, settings.topic_transitions, until=complete, timeout_s=240)
    # Settled: every record replayed has been processed and committed; read every transition
    # there is, so a wrong extra one (or a stage entered twice) would show.
    await wait_committed(settings.bootstrap_servers, settings.app_id, settings.topic_touchpoints, timeout_s=120,
                         check=worker.check_alive)
    msgs = await read_to_end(settings.bootstrap_servers, settings.topic_transitions, timeout_s=120)
    final = _final_stages(msgs)
    missing = {c: s for c, s in expected.items() if final.get(c) != s}
    extra = set(final) - set(expected)
    assert not missing and not extra, (
        f"{len(missing)} customers in the wrong stage (e.g. {list(missing.items())[:5]} vs "
        f"{[(c, final.get(c)) for c in list(missing)[:5]]}), {len(extra)} unexpected; log:\n{worker.log_tail()}"
    )


async def test_cdnow_replay_puts_every_customer_in_the_right_stage(workers):
    await _replay_and_compare(workers, "cdnow", ROOT / "data" / "cdnow" / "CDNOW_master.txt", "cdnow")


async def test_complete_journey_replay_puts_every_household_in_the_right_stage(workers):
    await _replay_and_compare(workers, "cj", ROOT / "data" / "completejourney", "completejourney")
