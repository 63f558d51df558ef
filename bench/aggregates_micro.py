"""The live aggregates' share of a batch: summarize before, then LiveAggregates.observe.

    PYTHONPATH=service python bench/aggregates_micro.py [--events 100000] [--customers 10000] [--batch 1000]

No Kafka, no Faust. The states are realistic: the generator's events (bench/loadgen.py, the
journey mix of `journey dev`) go through Pipeline.process in batches, interleaved by partition
as a fetch delivers them, then through the churn hook's update (so ``state.extra`` holds churn
levels and pain points, as in the worker). For every batch the benchmark keeps, per changed
customer, the stored state before the batch and the state written after it.

Timed, per changed customer (a customer a batch wrote), the work the worker does for the live
aggregates: ``summarize(state before)`` (the pipeline's call) plus ``LiveAggregates.observe``
(which summarizes the state after and updates the partition's aggregate). The parts are timed
on their own too. At the end the aggregate is checked against a recount of the final states.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "service"))
sys.path.insert(0, str(REPO / "bench"))

import loadgen  # noqa: E402
from journey.churn.config import ChurnSettings  # noqa: E402
from journey.churn.risk import StageTimes, load_model  # noqa: E402
from journey.churn.update import note_touchpoint, update  # noqa: E402
from journey.core.aggregates import PartitionAggregate, summarize  # noqa: E402
from journey.core.definition import load_definition  # noqa: E402
from journey.core.events import decode  # noqa: E402
from journey.core.machine import Limits  # noqa: E402
from journey.core.state import CustomerState  # noqa: E402
from journey.settings import Settings  # noqa: E402
from journey.worker.aggregates import LiveAggregates  # noqa: E402
from journey.worker.batch import spans_of  # noqa: E402
from journey.worker.pipeline import BatchResult, Pipeline, Record  # noqa: E402

#: One batch as the aggregates see it: its records, and per changed customer (key, record,
#: stored state before the batch or None, state written).
Batch = tuple[list[Record], list[tuple[str, Record, CustomerState | None, CustomerState]]]


def build_batches(n_events: int, n_customers: int, batch: int, partitions: int) -> tuple[list[Batch], dict[str, CustomerState]]:
    settings = Settings()
    definition = load_definition(settings.journey_path)
    limits = Limits(dedupe_window=settings.dedupe_window, order_window=settings.order_window)
    churn = ChurnSettings.from_settings(settings)
    model = load_model(churn.params_path(settings))
    config = churn.config(definition.purchase_types)
    stage_times = StageTimes(config.risk)
    note_types = config.pain.cart_types | config.pain.purchase_types

    data = loadgen.build_input(n_events, n_customers, seed=7, partitions=partitions, definition=definition, limits=limits)
    # A fetch hands out a run of records from each partition in turn; Kafka timestamps are in ms.
    now = int(time.time() * 1000)
    records = [Record(k, v, "touchpoints", p, off, now) for p, off, k, v in loadgen.fetch_order(data)]

    pipe = Pipeline(definition, limits, summarize=None)
    states: dict[str, CustomerState] = {}
    batches: list[Batch] = []
    for start in range(0, len(records), batch):
        recs = records[start:start + batch]
        result = pipe.process(recs, states)
        # The churn hook's part (worker/churn.py after_batch), so extra holds what it keeps.
        for rec in recs:
            tp = decode(rec.value)  # type: ignore[arg-type]
            entry = result.writes.get(tp.profile_id)
            if entry is not None and tp.type in note_types:
                note_touchpoint(entry[1], tp.type, tp.ts, tp.channel, config)
        now = result.max_event_time
        for t in result.transitions:
            stage_times.observe(t.from_stage, t.seconds_in_previous_stage)
        changed = []
        for key, (rec, state, _before) in result.writes.items():
            update(state, now if now is not None else state.last_seen or 0.0, model, config, stage_times)
            # The pipeline never changes a stored state (it applies to a copy): the old object
            # stays as it was, the state before this batch.
            changed.append((key, rec, states.get(key), state))
            states[key] = state
        batches.append((recs, changed))
    return batches, states


def _timed(label: str, n: int, fn: Callable[[], float], repeat: int) -> float:
    """Best of ``repeat`` runs of ``fn`` (which returns the seconds it spent on the timed part)."""
    best = min(fn() for _ in range(repeat))
    us = best / n * 1e6
    print(f"  {label:<46} {us:6.2f} us/changed customer")
    return us


def _warm(changed: list[tuple[str, Record, CustomerState | None, CustomerState]]) -> None:
    # In the worker the batch's states were just copied and written (so they are in the CPU's
    # caches) when the aggregates look at them; here they were built long before.
    for _key, _rec, before, after in changed:
        if before is not None:
            before.copy()
        after.copy()


def _live(partitions: int) -> LiveAggregates:
    # The hot path only reads parts and offsets: no app needed.
    live = LiveAggregates.__new__(LiveAggregates)
    live.parts = {p: PartitionAggregate() for p in range(partitions)}
    live.offsets = {}
    return live


def main(argv: list[str] | None = None) -> int:
    args = loadgen.micro_args(__doc__.split("\n\n")[0]).parse_args(argv)

    batches, finals = build_batches(args.events, args.customers, args.batch, args.partitions)
    n = sum(len(changed) for _recs, changed in batches)
    events = sum(len(recs) for recs, _changed in batches)
    print(
        f"aggregates micro-benchmark: {events:,} events, {len(finals):,} customers, "
        f"{n:,} changed customers in {len(batches):,} batches of {args.batch}"
    )
    # What the cost per changed customer depends on: how many are new, how many change stage.
    pairs = [(before, after) for _recs, changed in batches for _k, _r, before, after in changed]
    new = sum(1 for before, _after in pairs if before is None)
    moved = sum(1 for before, after in pairs if before is not None and before.stage != after.stage)
    print(f"  changed customers: {new / n:.0%} new, {moved / n:.0%} changed stage, {(n - new - moved) / n:.0%} neither")

    # Summaries of the states before each batch, as the pipeline makes them (for the parts).
    befores = [[summarize(before) for _k, _r, before, _a in changed] for _recs, changed in batches]
    results = []
    for (recs, changed), sums in zip(batches, befores, strict=True):
        result = BatchResult()
        result.writes = {key: (rec, after, s) for (key, rec, _b, after), s in zip(changed, sums, strict=True)}
        results.append((spans_of(recs), result))
    batch_spans = [spans for spans, _result in results]
    live = _live(args.partitions)

    # CPU time of this process: the machine may be busy with other work, which must not count.
    clock = time.process_time

    def whole() -> float:
        nonlocal live
        live = _live(args.partitions)
        spent = 0.0
        for spans, (_recs, changed) in zip(batch_spans, batches, strict=True):
            _warm(changed)
            t = clock()
            befores = [summarize(before) for _key, _rec, before, _after in changed]
            spent += clock() - t
            result = BatchResult()  # the pipeline's part: not timed
            result.writes = {key: (rec, after, s) for (key, rec, _before, after), s in zip(changed, befores, strict=True)}
            t = clock()
            live.observe(spans, result)
            spent += clock() - t
        return spent

    def observe_only() -> float:
        fresh = _live(args.partitions)
        spent = 0.0
        for (spans, result), (_recs, changed) in zip(results, batches, strict=True):
            _warm(changed)
            t = clock()
            fresh.observe(spans, result)
            spent += clock() - t
        return spent

    def summarize_only() -> float:
        spent = 0.0
        for _recs, changed in batches:
            _warm(changed)
            t = clock()
            for _key, _rec, before, after in changed:
                summarize(before)
                summarize(after)
            spent += clock() - t
        return spent

    total = _timed("summarize(before) + observe (the worker's)", n, whole, args.repeat)
    _timed("observe alone (summarize(after) + update)", n, observe_only, args.repeat)
    _timed("summarize(before) + summarize(after) alone", n, summarize_only, args.repeat)
    print(f"  per event: {total * n / events:.2f} us")

    by_partition: dict[int, list[CustomerState]] = {}
    for st in finals.values():
        by_partition.setdefault(st.partition, []).append(st)  # type: ignore[arg-type]
    for part, agg in live.parts.items():
        if agg != PartitionAggregate.of(by_partition.get(part, [])):
            print(f"MISMATCH: partition {part}'s aggregate kept by difference is not a recount of its states")
            return 1
    print("  check: every partition's aggregate equals a recount of its final states")
    return 0


if __name__ == "__main__":
    sys.exit(main())
