"""Where journey's CPU per event goes on the side-by-side harness's input (issue 16), no Kafka.

    PYTHONPATH=service python bench/peers_breakdown.py [--peers ../shared/bench/peers] [--events 1000000] [--batch 10000]

The input is the harness's own (its gen.py, same seed: 20,000 customers, their events
interleaved in time, keyed by customer), in batches of the worker's size. Each batch goes
through the worker's pure steps in turn, each timed in process CPU time: the pipeline
(decode, validate, dedupe, apply; the decode alone is timed too, on the same records), the
churn hook (ChurnWorker.score_batch: carts, re-scores, churn-risk and pain-point events
encoded), the state encoding of every customer the batch wrote, and the batch's metrics.
The Kafka client's fetching and parsing, the produce requests, the changelog and RocksDB
writes and the live aggregates are not here: the harness run's CPU per event less this
sum is about what they cost. Also prints how many churn-risk events the input makes.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "service"))

from journey.core.aggregates import summarize  # noqa: E402
from journey.core.definition import load_definition  # noqa: E402
from journey.core.events import decode  # noqa: E402
from journey.core.machine import Limits  # noqa: E402
from journey.core.state import CustomerState  # noqa: E402
from journey.settings import Settings  # noqa: E402
from journey.worker import garbage  # noqa: E402
from journey.worker.churn import ChurnWorker  # noqa: E402
from journey.worker.metrics import WorkerMetrics  # noqa: E402
from journey.worker.pipeline import Pipeline, Record  # noqa: E402

PARTITIONS = 8


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peers", type=Path, default=REPO.parent / "shared" / "bench" / "peers", help="the harness's folder (its gen.py)")
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=10_000)
    args = p.parse_args(argv)
    if not (args.peers / "gen.py").is_file():
        p.error(f"no gen.py in {args.peers}: give the side-by-side harness's folder with --peers")
    sys.path.insert(0, str(args.peers))
    import gen  # type: ignore[import-not-found]  # noqa: PLC0415 - the harness's generator, found at run time

    rows = gen.generate(args.events)
    # The partition only names the store a state belongs to here; any stable choice will do.
    records = [Record(k, v, "touchpoints", zlib.crc32(k) % PARTITIONS, i) for i, (k, v) in enumerate(rows)]
    settings = Settings()
    definition = load_definition(settings.journey_path)
    limits = Limits(dedupe_window=settings.dedupe_window, order_window=settings.order_window)
    metrics = WorkerMetrics(definition)
    japp = SimpleNamespace(app=SimpleNamespace(producer=None, rebalancing=False), settings=settings,
                           definition=definition, metrics=metrics, customers={})
    churn = ChurnWorker(japp)  # type: ignore[arg-type]
    pipe = Pipeline(definition, limits, summarize=summarize, copy_reads=False)  # as the worker
    states: dict[str, CustomerState] = {}

    def read(key: str, _partition: int) -> CustomerState | None:
        return states.get(key)

    garbage.tune()  # the worker's collector settings
    spent = dict.fromkeys(("decode alone", "pipeline", "churn hook", "state encode", "metrics"), 0.0)
    clock = time.process_time
    writes = churn_events = 0
    for i in range(0, len(records), args.batch):
        batch = records[i:i + args.batch]
        t0 = clock()
        for r in batch:
            decode(r.value)  # type: ignore[arg-type]
        t1 = clock()
        result = pipe.process(batch, read=read)
        t2 = clock()
        outputs = churn.score_batch(result) or []
        t3 = clock()
        for key, (_rec, state, _before) in result.writes.items():
            if state is not None:
                state.to_wire()
                states[key] = state
        t4 = clock()
        metrics.observe_batch(result, len(batch))
        t5 = clock()
        garbage.settle()
        for name, took in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            spent[name] += took
        writes += len(result.writes)
        churn_events += sum(1 for o in outputs if o[0] == settings.topic_churn_risk)
    n = len(records)
    print(f"peers breakdown: {n:,} events, batches of {args.batch:,}, {writes / n:.2f} customer writes per event, "
          f"{churn_events:,} churn-risk events ({churn_events / n:.3f} per event)")
    for name, took in spent.items():
        print(f"  {name:<14} {took / n * 1e6:6.2f} CPU-us/event")
    total = sum(took for name, took in spent.items() if name != "decode alone")
    print(f"  {'sum (pipeline on)':<14} {total / n * 1e6:6.2f} CPU-us/event")
    gc.collect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
