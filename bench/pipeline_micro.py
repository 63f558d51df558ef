"""The worker's pure hot path alone, on the generator's events: where a batch's time goes.

    PYTHONPATH=service python bench/pipeline_micro.py [--events 200000] [--customers 20000] [--batch 1000] [--identity [--unstitched]]

No Kafka, no Faust. The records are the benchmark's own input (bench/loadgen.py: the journey
mix of `journey dev`, keyed by customer, in partition order). Stages timed per event:

- decode: orjson.loads + validate (journey.core.events.decode);
- pipeline: Pipeline.process over batches, states in a dict (a memory store), changed in
  place as the worker does (no copy on read), with the worker's garbage-collector settings;
- pipeline + state codec: the same, with every state read decoded from and every write encoded
  to its wire form first, as a RocksDB store and the changelog do;
- churn hook + aggregates: what the worker runs on each batch's result besides (see
  worker/churn.py and worker/aggregates.py), for scale.

Prints microseconds per event for each and the state's wire size.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "service"))
sys.path.insert(0, str(REPO / "bench"))

import loadgen  # noqa: E402
from journey.core.aggregates import summarize  # noqa: E402
from journey.core.definition import load_definition  # noqa: E402
from journey.core.events import decode  # noqa: E402
from journey.core.identity import CONTROL_HEADER, SIGNATURE_HEADER  # noqa: E402
from journey.core.machine import Limits  # noqa: E402
from journey.core.state import CustomerState  # noqa: E402
from journey.settings import Settings  # noqa: E402
from journey.sources.generator import IDENTITY_MIX  # noqa: E402
from journey.worker import garbage  # noqa: E402
from journey.worker.pipeline import BatchResult, Pipeline, Record  # noqa: E402


def _timed(label: str, n: int, fn: Callable[[], object], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    us = best / n * 1e6
    print(f"  {label:<36} {us:6.2f} us/event  ({n / best:,.0f}/s)")
    return us


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--customers", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--identity", action="store_true",
                   help="anonymous-first traffic (IDENTITY_MIX); the pipeline's own records (links, merges, linked "
                        "anonymous events) are fed back as later records, as the input topic does")
    p.add_argument("--unstitched", action="store_true",
                   help="with --identity: the same input with the anonymous id taken off every touchpoint that carries a "
                        "customer id (nothing links): identity's own cost is the difference")
    args = p.parse_args(argv)
    if args.unstitched and not args.identity:
        p.error("--unstitched needs --identity")

    settings = Settings()
    definition = load_definition(settings.journey_path)
    limits = Limits(dedupe_window=settings.dedupe_window, order_window=settings.order_window)
    mix = IDENTITY_MIX if args.identity else None
    data = loadgen.build_input(args.events, args.customers, seed=7, partitions=args.partitions, definition=definition, limits=limits, mix=mix,
                              unstitched=args.unstitched)
    # Interleave the partitions the way a fetch does: a run of records from each in turn.
    now = int(time.time() * 1000)  # Kafka record timestamps: milliseconds
    records = [Record(k, v, "touchpoints", p, off, now) for p, off, k, v in loadgen.fetch_order(data)]
    garbage.tune()  # the worker's collector settings
    n = len(records)
    batches = [records[i:i + args.batch] for i in range(0, n, args.batch)]
    print(f"pipeline micro-benchmark: {n:,} events, {data.prediction.profiles:,} journeys, batches of {args.batch}")

    _timed("decode + validate", n, lambda: [decode(r.value) for r in records])  # type: ignore[arg-type]

    pipe = Pipeline(definition, limits, summarize=summarize, copy_reads=False)  # as the worker
    looped: list[Record] = []  # what the last batch sent to the input topic
    own = [0]

    def feed() -> Iterator[list[Record]]:
        """The batches, each with the records the batch before sent to the input topic."""
        own[0] = 0
        looped.clear()
        for b in batches:
            yield looped + b if looped else b
        while looped:
            yield list(looped)

    def loop_back(result: BatchResult) -> None:
        looped.clear()
        for o in result.rekeyed:
            headers = dict(o.headers or ())
            looped.append(Record(o.key, o.value, "touchpoints", 0, 0, now, headers.get(CONTROL_HEADER), headers.get(SIGNATURE_HEADER)))
        own[0] += len(looped)

    def run_dict() -> None:
        states: dict[str, CustomerState] = {}
        for b in feed():
            result = pipe.process(b, states)
            for key, (_rec, state, _before) in result.writes.items():
                states[key] = state
            loop_back(result)
            garbage.settle()  # as the worker after each batch

    _timed("pipeline (dict store)", n, run_dict)
    if own[0]:
        print(f"  ({own[0]:,} own records fed back: {own[0] / n:.1%} of the input; times are per input event)")

    wire: dict[str, bytes] = {}

    def run_codec() -> None:
        wire.clear()
        for b in feed():
            states = {}
            for r in b:
                key = r.key.decode()  # type: ignore[union-attr]
                raw = wire.get(key)
                if raw is not None and key not in states:
                    states[key] = CustomerState.from_wire(raw)
            result = pipe.process(b, states)
            for key, (_rec, state, _before) in result.writes.items():
                wire[key] = state.to_wire()
            loop_back(result)
            garbage.settle()

    _timed("pipeline + state decode/encode", n, run_codec)
    sizes = [len(v) for v in wire.values()]
    print(f"  state wire size: mean {sum(sizes) / len(sizes):,.0f} B, max {max(sizes):,} B over {len(sizes):,} customers")

    # Codec alone, on the final states.
    finals = [CustomerState.from_wire(v) for v in wire.values()]
    blobs = list(wire.values())
    _timed("state encode (to_wire)", len(finals), lambda: [s.to_wire() for s in finals])
    _timed("state decode (from_wire)", len(blobs), lambda: [CustomerState.from_wire(b) for b in blobs])
    _timed("state copy", len(finals), lambda: [s.copy() for s in finals])
    _timed("summarize", len(finals), lambda: [summarize(s) for s in finals])
    return 0


if __name__ == "__main__":
    sys.exit(main())
