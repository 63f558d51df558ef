"""The worker's churn hook alone (ChurnWorker.score_batch, the pure part of after_batch), per
touched customer.

    PYTHONPATH=service python bench/churn_hook_micro.py [--events 100000] [--customers 10000] [--batch 1000]

No Kafka, no Faust. The records are the benchmark's own input (bench/loadgen.py), run through
Pipeline.process in batches with the hook after each one, so every customer carries the churn
and pain-point state earlier batches left (as in the worker). Each batch's states are then
snapshotted before the hook (and after its cart notes), and the timed runs start from fresh
copies of them; the scoring's memo (journey.churn.risk) starts cold on every pass, so a pass
costs what one pass through this stream costs a new worker. Timed, in CPU microseconds per
customer the batches wrote:

- note: the cart / purchase notes of the applied touchpoints (ChurnWorker.note_carts);
- update: journey.churn.update.update per customer (pain points + risk + record);
- hook: the whole pure part (note, update, due index, outputs encoded, metrics).

The sending is not included (see ChurnWorker._send).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "service"))
sys.path.insert(0, str(REPO / "bench"))

import loadgen  # noqa: E402
from journey.churn.risk import clear_memo  # noqa: E402
from journey.churn.update import update  # noqa: E402
from journey.core.aggregates import summarize  # noqa: E402
from journey.core.definition import load_definition  # noqa: E402
from journey.core.machine import Limits  # noqa: E402
from journey.core.state import CustomerState  # noqa: E402
from journey.settings import Settings  # noqa: E402
from journey.worker.churn import ChurnWorker  # noqa: E402
from journey.worker.metrics import WorkerMetrics  # noqa: E402
from journey.worker.pipeline import BatchResult, Pipeline, Record  # noqa: E402

#: One batch as the hook sees it: its records, its result, and its states as wire bytes.
Snapshot = tuple[list[Record], BatchResult, dict[str, bytes]]


def make_worker(settings: Settings, definition) -> ChurnWorker:  # type: ignore[no-untyped-def]
    japp = SimpleNamespace(
        app=SimpleNamespace(producer=None, rebalancing=False), settings=settings, definition=definition,
        metrics=WorkerMetrics(definition), customers={},
    )
    return ChurnWorker(japp)  # type: ignore[arg-type]


def fresh(snap: Snapshot) -> BatchResult:
    """A copy of the batch's result whose states are new objects decoded from the snapshot."""
    _records, result, wire = snap
    writes = {k: (rec, CustomerState.from_wire(wire[k]), before) for k, (rec, _s, before) in result.writes.items()}
    return BatchResult(
        transitions=result.transitions, writes=writes, applied=result.applied, max_event_time=result.max_event_time
    )


def timed(
    label: str,
    n: int,
    snaps: list[Snapshot],
    fn: Callable[[int, list[Record], BatchResult], object],
    repeat: int,
    setup: Callable[[], object] | None = None,
) -> float:
    """Best of ``repeat`` passes over all batches; only ``fn`` is timed, not the copying. CPU time
    of this process, so that other work on the machine counts less."""
    best = float("inf")
    for _ in range(repeat):
        copies = [fresh(s) for s in snaps]
        clear_memo()  # each pass is one pass through the stream, not a replay of a warm one
        if setup is not None:
            setup()
        t = time.process_time()
        for i, (snap, result) in enumerate(zip(snaps, copies, strict=True)):
            fn(i, snap[0], result)
        best = min(best, time.process_time() - t)
    us = best / n * 1e6
    print(f"  {label:<28} {us:7.2f} us/customer  ({n / best:,.0f}/s)")
    return us


def main(argv: list[str] | None = None) -> int:
    args = loadgen.micro_args(__doc__.split("\n\n")[0]).parse_args(argv)

    settings = Settings()
    definition = load_definition(settings.journey_path)
    limits = Limits(dedupe_window=settings.dedupe_window, order_window=settings.order_window)
    data = loadgen.build_input(args.events, args.customers, seed=7, partitions=args.partitions, definition=definition, limits=limits)
    # Interleave the partitions the way a fetch does (as bench/pipeline_micro.py): a run of
    # records from each in turn, so the event-time clock moves as in the worker.
    records = [Record(k, v, "touchpoints", p, off) for p, off, k, v in loadgen.fetch_order(data)]
    batches = [records[i:i + args.batch] for i in range(0, len(records), args.batch)]

    # Prepare: the pipeline and the hook batch after batch, snapshotting each batch's states
    # before the hook, after its notes, and the clock the hook scored them at.
    pipe = Pipeline(definition, limits, summarize=summarize)
    worker = make_worker(settings, definition)
    states: dict[str, CustomerState] = {}
    before_hook: list[Snapshot] = []
    noted: list[Snapshot] = []
    clocks: list[float] = []
    outputs = 0
    for b in batches:
        result = pipe.process(b, states)
        before_hook.append((b, result, {k: s.to_wire() for k, (_r, s, _b) in result.writes.items()}))
        probe = fresh(before_hook[-1])
        worker.note_carts(probe.applied, probe.writes)
        noted.append((b, result, {k: s.to_wire() for k, (_r, s, _b) in probe.writes.items()}))
        outputs += len(worker.score_batch(result) or ())
        clocks.append(worker.clock.now(time.time()))  # type: ignore[arg-type]
        for key, (_rec, state, _before) in result.writes.items():
            states[key] = state
    n = sum(len(s[1].writes) for s in before_hook)
    print(
        f"churn hook micro-benchmark: {len(records):,} events, {len(batches)} batches of {args.batch}, "
        f"{n:,} customer writes ({n / len(batches):,.0f} per batch); {outputs / n:.2f} churn/pain outputs per "
        f"customer ({outputs / len(records):.2f} per event), each its own producer.send"
    )

    model, config, stage_times = worker.model, worker.config, worker.stage_times

    def note(_i: int, _recs: list[Record], result: BatchResult) -> None:
        worker.note_carts(result.applied, result.writes)

    def updates(i: int, _recs: list[Record], result: BatchResult) -> None:
        at = clocks[i]
        for _rec, state, _before in result.writes.values():
            update(state, at, model, config, stage_times)

    hooks: list[ChurnWorker] = []

    def new_hook() -> None:
        # A worker of its own per pass: its clock and stage times move through the stream.
        hooks.append(make_worker(settings, definition))

    def hook(_i: int, _recs: list[Record], result: BatchResult) -> None:
        hooks[-1].score_batch(result)

    t_note = timed("note (carts, purchases)", n, before_hook, note, args.repeat)
    t_update = timed("update", n, noted, updates, args.repeat)
    print(f"  {'note + update':<28} {t_note + t_update:7.2f} us/customer")
    timed("hook (score_batch)", n, before_hook, hook, args.repeat, new_hook)
    return 0


if __name__ == "__main__":
    sys.exit(main())
