"""The worker's pure hot path at two revisions, in one process, batch by batch in turn.

    PYTHONPATH=service python bench/pipeline_ab.py --base REV [--events 400000] [--customers 20000] [--identity]

This machine's speed drifts by up to 2x within minutes, so two runs one after the other compare
the machine more than the code. Here the base revision's ``service/journey`` (from ``git
archive``) is imported as ``journey_base`` beside this tree's ``journey``, and each batch of
the same input (bench/loadgen.py, as bench/pipeline_micro.py) goes through one, then the other
(the order alternates), each with its own states, as the worker does (no copy on read, its
collector settings). Prints the process time per input event of each and their ratio.
"""

from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "service"))
sys.path.insert(0, str(REPO / "bench"))

import loadgen  # noqa: E402
from journey.core.definition import load_definition  # noqa: E402
from journey.core.machine import Limits  # noqa: E402
from journey.settings import Settings  # noqa: E402
from journey.sources.generator import IDENTITY_MIX  # noqa: E402
from journey.worker import garbage  # noqa: E402


def base_package(rev: str, into: Path) -> str:
    """The revision's journey package under ``into`` as ``journey_base`` (its imports renamed)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "service/journey"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        if hasattr(tarfile, "data_filter"):  # Python 3.11.4 and later
            tar.extractall(into, filter="data")
        else:
            tar.extractall(into)  # noqa: S202 - our own repository's archive
    package = into / "journey_base"
    (into / "service" / "journey").rename(package)
    for path in package.rglob("*.py"):
        text = path.read_text()
        path.write_text(re.sub(r"^(\s*(?:from|import)\s+)journey\b", r"\1journey_base", text, flags=re.MULTILINE))
    sys.path.insert(0, str(into))
    return "journey_base"


class Side:
    """One revision's pipeline over the shared input, with its own states and loop-back."""

    def __init__(self, package: str, limits: Any) -> None:
        pipeline = importlib.import_module(f"{package}.worker.pipeline")
        definition = importlib.import_module(f"{package}.core.definition").load_definition(Settings().journey_path)
        machine = importlib.import_module(f"{package}.core.machine")
        summarize = importlib.import_module(f"{package}.core.aggregates").summarize
        self.identity = importlib.import_module(f"{package}.core.identity")
        self.Record = pipeline.Record
        self.pipe = pipeline.Pipeline(definition, machine.Limits(dedupe_window=limits.dedupe_window, order_window=limits.order_window),
                                      summarize=summarize, copy_reads=False)
        self.states: dict[str, Any] = {}
        self.looped: list[Any] = []
        self.own = 0
        self.seconds = 0.0

    def run(self, batch: list[tuple[int, int, bytes, bytes]], now: int) -> None:
        records = [*self.looped, *(self.Record(k, v, "touchpoints", p, off, now) for p, off, k, v in batch)]
        started = time.process_time()
        result = self.pipe.process(records, self.states)
        for key, (_rec, state, _before) in result.writes.items():
            self.states[key] = state
        garbage.settle()
        self.seconds += time.process_time() - started
        self.looped = []
        for o in result.rekeyed:
            headers = dict(o.headers or ())
            self.looped.append(self.Record(o.key, o.value, "touchpoints", 0, 0, now, headers.get(self.identity.CONTROL_HEADER),
                                           headers.get(self.identity.SIGNATURE_HEADER)))
        self.own += len(self.looped)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="the git revision to compare this tree with (e.g. HEAD~1, a commit)")
    p.add_argument("--events", type=int, default=400_000)
    p.add_argument("--customers", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=10_000, help="records per batch (the worker's default most)")
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--identity", action="store_true", help="anonymous-first traffic (IDENTITY_MIX), own records fed back")
    args = p.parse_args(argv)

    settings = Settings()
    limits = Limits(dedupe_window=settings.dedupe_window, order_window=settings.order_window)
    mix = IDENTITY_MIX if args.identity else None
    data = loadgen.build_input(args.events, args.customers, seed=7, partitions=args.partitions,
                               definition=load_definition(settings.journey_path), limits=limits, mix=mix)
    records = list(loadgen.fetch_order(data))
    now = int(time.time() * 1000)
    with tempfile.TemporaryDirectory(prefix="journey-ab-") as tmp:
        sides = {"base": Side(base_package(args.base, Path(tmp)), limits), "this tree": Side("journey", limits)}
        garbage.tune()
        order = list(sides.values())
        for i, start in enumerate(range(0, len(records), args.batch)):
            batch = records[start:start + args.batch]
            for side in order if i % 2 == 0 else order[::-1]:
                side.run(batch, now)
        while any(s.looped for s in order):  # the last batches' own records
            for side in order:
                if side.looped:
                    side.run([], now)
    n = len(records)
    print(f"pipeline A/B: {n:,} events, {data.prediction.profiles:,} journeys, batches of {args.batch}, base {args.base}")
    for name, side in sides.items():
        own = f", {side.own:,} own records fed back" if side.own else ""
        print(f"  {name:<10} {side.seconds / n * 1e6:6.2f} us/event (process time){own}")
    print(f"ratio this/base {sides['this tree'].seconds / sides['base'].seconds:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
