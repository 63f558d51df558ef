"""The hostile-input corpus (tests/support/hostile.py) through the pipeline in-process: every
record gets the outcome the corpus documents. tests/integration/test_hostile_input.py sends the
same corpus through a real worker."""

from __future__ import annotations

import base64
import hashlib
from collections import Counter, defaultdict
from pathlib import Path

import orjson
import pytest

from journey.core.definition import load_definition
from journey.core.identity import CONTROL_HEADER
from journey.core.machine import Limits
from journey.core.stages import STAGES
from journey.core.state import CustomerState
from journey.worker.deadletter import MAX_VALUE_BYTES
from journey.worker.pipeline import Pipeline, Record
from support.hostile import Case, corpus

ROOT = Path(__file__).resolve().parents[2]
DEFINITION = load_definition(ROOT / "schemas" / "journey.yaml")
CASES = corpus("h-")


def _run(cases: list[Case]) -> tuple[list[Record], dict, dict[str, CustomerState], Counter[str]]:
    """The cases' records through one pipeline, with what it re-publishes fed back (as the topic would)."""
    pipeline = Pipeline(DEFINITION, Limits())
    states: dict[str, CustomerState] = {}
    sent = [Record(s.key, s.value, "tp", 0, offset, None, s.control) for offset, s in enumerate(s for c in cases for s in c.records)]
    dead: dict[int, dict] = {}
    transitions: dict[str, list] = defaultdict(list)
    counts: Counter[str] = Counter()
    pending, offset = sent, len(sent)
    while pending:
        result = pipeline.process(pending, states)
        for o in result.dead_letters:
            letter = orjson.loads(o.value)
            assert letter["offset"] not in dead
            dead[letter["offset"]] = letter
        for t in result.transitions:
            transitions[t.customer_id].append(
                (STAGES[t.from_stage] if t.from_stage >= 0 else None, STAGES[t.to_stage], t.trigger_event_id))
        for key, (_rec, state, _before) in result.writes.items():
            states[key] = CustomerState.from_wire(state.to_wire())
        counts["duplicates"] += result.duplicates
        counts["rekeyed"] += len(result.rekeyed)
        pending = []
        for o in result.rekeyed:
            assert not o.headers or CONTROL_HEADER not in dict(o.headers)
            pending.append(Record(o.key, o.value, "tp", 0, offset))
            offset += 1
    return sent, {"dead": dead, "transitions": dict(transitions)}, states, counts


@pytest.mark.parametrize("case", CASES, ids=[c.kind for c in CASES])
def test_each_hostile_kind_gets_its_documented_outcome(case: Case) -> None:
    sent, out, states, counts = _run([case])
    for offset, s in enumerate(case.records):
        letter = out["dead"].get(offset)
        if s.dead_letter is None:
            assert letter is None, (case.kind, offset, letter)
            continue
        assert letter is not None and letter["reason"] == s.dead_letter, (case.kind, offset, letter)
        if s.value is None:
            assert letter["value"] is None and letter["value_encoding"] == "null"
        else:
            held = base64.b64decode(letter["value"]) if letter["value_encoding"] == "base64" else letter["value"].encode()
            if len(s.value) > MAX_VALUE_BYTES:  # capped: the start, the size and a digest of the whole
                assert held == s.value[:MAX_VALUE_BYTES] and letter["value_bytes"] == len(s.value)
                assert letter["value_sha256"] == hashlib.sha256(s.value).hexdigest()
            else:
                assert held == s.value and "value_bytes" not in letter
    assert set(out["dead"]) == {i for i, s in enumerate(case.records) if s.dead_letter}
    assert out["transitions"] == case.transitions
    assert counts["duplicates"] == case.duplicates and counts["rekeyed"] == case.rekeyed
    for customer, fields in case.views.items():
        view = states[customer].to_public()
        assert {k: view[k] for k in fields} == fields


def test_the_whole_corpus_at_once_gives_the_union_of_the_outcomes() -> None:
    sent, out, _states, counts = _run(CASES)
    expected_dead = Counter(s.dead_letter for c in CASES for s in c.records if s.dead_letter)
    assert Counter(d["reason"] for d in out["dead"].values()) == expected_dead
    assert out["transitions"] == {k: v for c in CASES for k, v in c.transitions.items()}
    assert counts["duplicates"] == sum(c.duplicates for c in CASES)
    # every kind the issue lists is there
    kinds = {c.kind for c in CASES}
    assert len(kinds) == len(CASES) >= 17


def test_a_record_that_hits_a_bug_logs_no_customer_id(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A journey bug costs one record (a processing_error dead letter); its log line must not name the customer."""
    import journey.worker.pipeline as pipeline_module

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(pipeline_module, "apply", broken)
    customer = "canary-customer-3b9f"
    event = {"event_id": "canary-event-3b9f", "customer_id": customer, "type": "page_view", "timestamp": "2024-01-01T00:00:00Z"}
    with caplog.at_level("INFO"):
        result = Pipeline(DEFINITION, Limits()).process([Record(customer.encode(), orjson.dumps(event), "tp", 0, 0)], {})
    assert result.reasons == ["processing_error"]
    assert caplog.records, "the bug is logged"
    assert customer not in caplog.text
