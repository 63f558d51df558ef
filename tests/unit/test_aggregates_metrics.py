"""The worker's per-batch Prometheus updates (worker/metrics.py observe_batch), folded per batch
for speed: the exported series must read as if every event had been observed one by one."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, Histogram

from journey.core.definition import Kind, load_definition
from journey.core.stages import STAGES
from journey.worker.faust_internals import observe_all
from journey.worker.metrics import OTHER_TYPE, WorkerMetrics
from journey.worker.pipeline import BatchResult

DEFINITION = load_definition(Path(__file__).resolve().parents[2] / "schemas" / "journey.yaml")
BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def _samples(registry: CollectorRegistry, name: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect() if family.name == name for s in family.samples
        if not s.name.endswith("_created")
    }


@pytest.mark.parametrize("seed", range(3))
def test_folded_observations_export_what_one_by_one_observations_do(seed: int) -> None:
    rng = random.Random(seed)
    # Bounds exactly, just around them, negatives (clock skew), beyond the last bound.
    values = [rng.choice([*BOUNDS, rng.uniform(-1, 0), rng.uniform(0, 40), rng.choice(BOUNDS) * (1 + 1e-12)]) for _ in range(500)]
    one, folded = CollectorRegistry(), CollectorRegistry()
    h_one = Histogram("lat", "x", buckets=BOUNDS, registry=one)
    h_folded = Histogram("lat", "x", buckets=BOUNDS, registry=folded)
    for v in values:
        h_one.observe(max(0.0, v))
    for chunk in (values[:1], values[1:200], [], values[200:]):
        observe_all(h_folded, chunk)
    want, got = _samples(one, "lat"), _samples(folded, "lat")
    assert want.keys() == got.keys()
    total = ("lat_sum", ())
    assert got.pop(total) == pytest.approx(want.pop(total), rel=1e-12)
    assert got == want
    assert want[("lat_count", ())] == len(values)


def test_observe_batch_counts_every_touchpoint_transition_and_latency() -> None:
    rng = random.Random(4)
    metrics = WorkerMetrics(DEFINITION)
    types = ["page_view", "purchase", "made_up_type", "add_to_cart"]
    channels = ["email", "ads", "store"]
    result = BatchResult()
    result.applied = [(f"c{i}", rng.choice(types), rng.choice(channels), Kind.OTHER, 0.0) for i in range(300)]
    result.transitions = [
        SimpleNamespace(from_stage=rng.randint(-1, 3), to_stage=rng.randint(4, 5)) for _ in range(80)  # type: ignore[misc]
    ]
    result.trigger_timestamps = [1.0] * 80
    metrics.observe_batch(result, 300)
    metrics.observe_batch(result, 300)  # counters add up across batches
    touch = _samples(metrics.registry, "journey_touchpoints_consumed")
    expected = Counter((t if t in metrics.known_types else OTHER_TYPE, ch) for _k, t, ch, _kind, _ts in result.applied)
    assert "made_up_type" not in metrics.known_types and "page_view" in metrics.known_types
    for (etype, ch), n in expected.items():
        assert touch[("journey_touchpoints_consumed_total", (("channel", ch), ("type", etype)))] == 2 * n
    moves = _samples(metrics.registry, "journey_stage_transitions")
    for (f, t), n in Counter((x.from_stage, x.to_stage) for x in result.transitions).items():
        labels = (("from_stage", STAGES[f] if f >= 0 else "none"), ("to_stage", STAGES[t]))
        assert moves[("journey_stage_transitions_total", labels)] == 2 * n
    latency = _samples(metrics.registry, "journey_event_to_transition_seconds")
    assert latency[("journey_event_to_transition_seconds_count", ())] == 160
    # Record timestamps from 1970: every latency is past the last bound.
    assert latency[("journey_event_to_transition_seconds_bucket", (("le", "30.0"),))] == 0


def test_the_state_cache_is_exported_at_scrape_time():
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from journey.worker.store import StateCache

    metrics = WorkerMetrics(DEFINITION)
    cache = StateCache(10)
    metrics.watch_state_cache(cache)
    cache.hits, cache.misses = 7, 3
    cache.put("a", object())  # type: ignore[arg-type]

    def scrape() -> dict[tuple[str, tuple], float]:
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(generate_latest(metrics.registry).decode()) for s in f.samples}

    got = scrape()
    assert got[("journey_state_cache_reads_total", (("result", "hit"),))] == 7
    assert got[("journey_state_cache_reads_total", (("result", "miss"),))] == 3
    assert got[("journey_state_cache_customers", ())] == 1
    cache.hits += 1
    assert scrape()[("journey_state_cache_reads_total", (("result", "hit"),))] == 8
