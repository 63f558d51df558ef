"""Burst benchmark (issue 14, Load): a backlog first, then a worker; optionally a paused broker.

    python bench/burst.py [--events 1000000] [--customers 100000] [--partitions 8]
                          [--pause-broker SECONDS [--pause-at 0.3]] [--state-cache N]

Everything runs on an embedded broker (tansu) this script starts on a free port; it stops its
broker and worker by itself, also when the worker dies (its log tail is printed, exit code 1).

1. Input. N generated touchpoints (bench/loadgen.py: the journey mix of `journey dev`, duplicates
   and late events included) are produced into a fresh topic, and folded through the pure core
   to predict the transitions, all before the worker exists.
2. The burst. A fresh `journey worker` (bench/workerproc.py: a new consumer group, changelog and
   RocksDB store) starts on that backlog. Every --sample-s the bench reads the worker's resident
   memory (/proc/PID/status VmRSS), its /metrics (``journey_consumer_lag`` summed over the
   partitions, records processed) and its /readyz (``ready``, ``lag``, ``catching_up``), and the
   group's committed offsets.
3. With --pause-broker S: once the worker has processed --pause-at of the input, the broker
   process is stopped (SIGSTOP) for S seconds, then continued (SIGCONT): every fetch, produce,
   heartbeat and commit of the worker waits meanwhile (latency of seconds for S seconds).
4. Done when the group has committed the end of every input partition, /metrics shows no lag
   and /readyz says caught up. Then the checks, each of which fails the run (exit code 1):
   the transitions topic holds exactly the transitions the pure core predicts (distinct ids),
   the committed offsets equal the true log ends, the worker never exited and processed every
   record, /readyz said catching_up with a positive lag before it said caught up,
   ``journey_consumer_lag`` fell to 0 from a positive value, and the peak RSS (VmHWM) stayed
   under the bound journey.worker.memory derives from the worker's settings.

Figures: peak RSS and its bound, the lag curve (every --curve-s), time to the first batch and to
caught up (from the worker's start), events/s from the first batch to the end committed.
The last line is machine-readable.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "service"))

import loadgen  # noqa: E402
import topicread  # noqa: E402
from journey.core.definition import load_definition  # noqa: E402
from journey.core.machine import Limits  # noqa: E402
from journey.kafka.admin import ensure_topics  # noqa: E402
from journey.kafka.broker import EmbeddedBroker  # noqa: E402
from journey.settings import Settings  # noqa: E402
from journey.worker.memory import MemoryBound, memory_bound  # noqa: E402
from journey.worker.topics import all_topic_specs  # noqa: E402
from throughput import BenchError, distinct_transitions, run_in_workdir  # noqa: E402
from workerproc import Worker, bench_settings  # noqa: E402

LAG = "journey_consumer_lag{"
PROCESSED = "journey_batch_records_sum"


@dataclass
class Sample:
    t: float  # seconds since the worker was started
    rss: int | None
    processed: int
    lag_metric: int | None  # None: no journey_consumer_lag series yet
    ready: bool | None
    ready_lag: int | None
    catching_up: bool | None
    committed: int | None  # None: not asked (broker paused)
    paused: bool


@dataclass
class Pause:
    at_processed: int
    started: float  # seconds since the worker was started
    seconds: float = 0.0
    rebalances_before: int | None = None


@dataclass
class Burst:
    samples: list[Sample] = field(default_factory=list)
    pause: Pause | None = None
    first_batch_s: float | None = None
    caught_up_s: float | None = None  # /readyz: catching_up false after it was true (or at the end)
    committed_s: float | None = None  # the group committed every partition's end
    failures: list[str] = field(default_factory=list)


def _lag(metrics: dict[str, float]) -> int | None:
    values = [v for k, v in metrics.items() if k.startswith(LAG)]
    return int(sum(values)) if values else None


def _continue(pid: int | None) -> None:
    if pid is not None:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


async def run_burst(args: argparse.Namespace, worker: Worker, settings: Settings, n_events: int, broker: EmbeddedBroker) -> Burst:
    out = Burst()
    started = time.monotonic()
    deadline = started + args.timeout
    next_commit_check = 0.0
    committed_total: int | None = None
    saw_catching_up = False
    broker_pid = broker.pid
    try:
        while True:
            worker.check()
            now = time.monotonic()
            t = now - started
            if now > deadline:
                raise BenchError(f"not caught up {args.timeout:.0f}s after the worker started; log tail:\n{worker.log_tail()}")
            metrics, ready = await asyncio.gather(worker.metrics(), worker.readyz())
            processed = int(metrics.get(PROCESSED, 0))
            pause = out.pause
            paused = pause is not None and pause.seconds == 0.0
            if not paused and now >= next_commit_check:
                next_commit_check = now + 2.0
                try:
                    offsets = await asyncio.wait_for(
                        topicread.committed(settings.bootstrap_servers, settings.app_id, settings.topic_touchpoints, settings.partitions), 15)
                    committed_total = sum(max(o, 0) for o in offsets.values())
                    # The worker appends to its input too (identity link and merge records): the
                    # end is the log's end now, not when the backlog was produced.
                    ends = await asyncio.wait_for(_log_ends(settings), 15)
                    at_end = all(offsets.get(p, -1) >= end for p, end in ends.items())
                    if out.committed_s is None and at_end:
                        out.committed_s = t
                    elif not at_end:
                        out.committed_s = None
                except (TimeoutError, OSError) as exc:
                    print(f"    ({t:5.0f}s: committed offsets not readable: {exc!r})", flush=True)
            sample = Sample(t, worker.rss_bytes(), processed, _lag(metrics), ready.get("ready"), ready.get("lag"),
                            ready.get("catching_up"), None if paused else committed_total, paused)
            out.samples.append(sample)
            if out.first_batch_s is None and processed > 0:
                out.first_batch_s = t
            if sample.ready and sample.catching_up and (sample.ready_lag or 0) > 0:
                saw_catching_up = True
            if sample.ready and sample.catching_up is False and saw_catching_up and out.caught_up_s is None:
                out.caught_up_s = t
            # the slow broker: stopped once the worker is well into the backlog, for --pause-broker seconds
            if args.pause_broker and pause is None and processed >= args.pause_at * n_events:
                out.pause = Pause(processed, t, rebalances_before=ready.get("rebalances"))
                os.kill(broker_pid, signal.SIGSTOP)  # type: ignore[arg-type]
                print(f"    {t:5.0f}s: broker (pid {broker_pid}) stopped with {processed:,} records processed", flush=True)
            elif paused and t - pause.started >= args.pause_broker:  # type: ignore[union-attr]
                _continue(broker_pid)
                pause.seconds = t - pause.started  # type: ignore[union-attr]
                print(f"    {t:5.0f}s: broker continued after {pause.seconds:.1f}s", flush=True)  # type: ignore[union-attr]
            pause_done = not args.pause_broker or (out.pause is not None and out.pause.seconds > 0)
            if (pause_done and out.committed_s is not None and sample.lag_metric == 0 and sample.ready
                    and sample.catching_up is False and processed >= n_events):
                if out.caught_up_s is None:
                    out.caught_up_s = t
                return out
            if len(out.samples) % max(1, round(args.curve_s / args.sample_s)) == 0:
                print(f"    {t:5.0f}s  processed {processed:>9,}  lag {_fmt(sample.lag_metric)}  readyz lag {_fmt(sample.ready_lag)} "
                      f"catching_up {sample.catching_up}  RSS {_mib(sample.rss)}", flush=True)
            await asyncio.sleep(max(0.0, started + len(out.samples) * args.sample_s - time.monotonic()))
    finally:
        if out.pause is not None and out.pause.seconds == 0.0:
            _continue(broker_pid)


async def _log_ends(settings: Settings) -> dict[int, int]:
    found = await topicread.log_ends(settings.bootstrap_servers, settings.topic_touchpoints, settings.partitions)
    return {tp.partition: off for tp, off in found.items()}


def _fmt(n: int | None) -> str:
    return "-" if n is None else f"{n:>9,}"


def _mib(b: int | None) -> str:
    return "n/a" if b is None else f"{b / 2**20:,.0f} MiB"


def check(burst: Burst, *, n_events: int, log_end: int, peak: int | None, bound: MemoryBound) -> None:
    """The checks that need only the samples (the transitions and offsets are checked apart);
    ``log_end``: the input's records at the end (the backlog and the worker's identity records)."""
    fail = burst.failures.append
    lags = [s.lag_metric for s in burst.samples if s.lag_metric is not None]
    if not lags or max(lags) <= 0:
        fail("journey_consumer_lag never showed the backlog (no positive value)")
    elif lags[-1] != 0:
        fail(f"journey_consumer_lag ended at {lags[-1]:,}, not 0")
    elif max(lags) > log_end:
        fail(f"journey_consumer_lag showed {max(lags):,}, more than the input's {log_end:,} records")
    ready = [s for s in burst.samples if s.ready]
    first_catching = next((i for i, s in enumerate(ready) if s.catching_up and (s.ready_lag or 0) > 0), None)
    if first_catching is None:
        fail("/readyz never said catching_up with a positive lag")
    elif not any(s.catching_up is False for s in ready[first_catching:]):
        fail("/readyz never said caught up after catching up")
    if peak is None:
        fail("no peak RSS (VmHWM) read")
    elif peak > bound.total:
        fail(f"peak RSS {_mib(peak)} is above the bound {_mib(bound.total)} ({bound.describe()})")
    if burst.samples and burst.samples[-1].processed < n_events:
        fail(f"the worker processed {burst.samples[-1].processed:,} of {n_events:,} records")


async def bench(args: argparse.Namespace, workdir: Path) -> int:
    run = uuid.uuid4().hex[:6]
    bench_started = time.monotonic()
    broker = EmbeddedBroker(log_path=workdir / "broker.log")
    await broker.start_async()
    worker: Worker | None = None
    try:
        bootstrap = broker.bootstrap_servers
        settings = bench_settings(bootstrap, run, "burst", input_topic=f"bench-{run}.touchpoints", partitions=args.partitions)
        extra_env = {}
        if args.state_cache is not None:
            settings = settings.replace(state_cache=args.state_cache)
            extra_env["JOURNEY_STATE_CACHE"] = str(args.state_cache)
        definition = load_definition(settings.journey_path)
        limits = Limits(dedupe_window=settings.dedupe_window, order_window=settings.order_window)
        print(f"journey burst bench: {args.events:,} touchpoints already in the topic, then one worker; "
              f"{args.partitions} partitions, broker {bootstrap} (tansu), {os.cpu_count()} cores"
              + (f"; broker paused {args.pause_broker:g}s at {args.pause_at:.0%} processed" if args.pause_broker else ""), flush=True)

        # 1. the backlog
        t = time.perf_counter()
        data = loadgen.build_input(args.events, args.customers, seed=args.seed, partitions=args.partitions,
                                   definition=definition, limits=limits)
        pred = data.prediction
        print(f"  generated + predicted in {time.perf_counter() - t:.1f}s: {pred.profiles:,} journeys, "
              f"{pred.duplicates:,} duplicate deliveries, {pred.transitions:,} transitions predicted", flush=True)
        await ensure_topics(bootstrap, all_topic_specs(settings))
        produce_s = await loadgen.produce_all(bootstrap, settings.topic_touchpoints, data)
        del data
        gc.collect()
        ends = await _log_ends(settings)
        if sum(ends.values()) != args.events:
            raise BenchError(f"the input topic holds {sum(ends.values()):,} records, {args.events:,} were produced")
        print(f"  produced in {produce_s:.1f}s; the log ends at {sum(ends.values()):,}", flush=True)

        # 2.-4. the worker on the backlog
        worker = Worker("burst", settings, workdir / "burst", extra_env=extra_env)
        worker.start()
        print(f"  worker (pid {worker.pid}) started on the backlog; sampling every {args.sample_s:g}s", flush=True)
        burst = await run_burst(args, worker, settings, args.events, broker)
        peak = worker.peak_rss_bytes()
        metrics = await worker.metrics()
        ready = await worker.readyz()
        worker.check()
        ends = await _log_ends(settings)
        bound = memory_bound(settings, partitions=args.partitions, customers=pred.profiles)
        check(burst, n_events=args.events, log_end=sum(ends.values()), peak=peak, bound=bound)
        worker.stop()

        # what reached Kafka
        transitions, transition_records = await distinct_transitions(settings)
        if transitions != pred.transitions:
            burst.failures.append(f"LOST or INVENTED: {transitions:,} distinct transitions published, the pure core predicts {pred.transitions:,}")
        offsets = await topicread.committed(bootstrap, settings.app_id, settings.topic_touchpoints, args.partitions)
        behind = {p: end - offsets.get(p, -1) for p, end in ends.items() if offsets.get(p, -1) != end}
        if behind:
            burst.failures.append(f"committed offsets are not the log ends: {behind}")
        dead = int(sum(v for k, v in metrics.items() if k.startswith("journey_dead_letters_total")))
        if dead:
            burst.failures.append(f"{dead:,} records dead-lettered (the generated input has none)")

        # report
        s = burst.samples
        first = burst.first_batch_s or 0.0
        done_s = burst.committed_s if burst.committed_s is not None else s[-1].t
        rate = args.events / (done_s - first) if done_s > first else float("nan")
        print()
        print("  lag curve (from the worker's start):")
        print("       t  processed    journey_consumer_lag  /readyz lag  catching_up  committed       RSS")
        step = max(1, round(args.curve_s / args.sample_s))
        for row in [*s[::step], *([s[-1]] if (len(s) - 1) % step else [])]:
            print(f"    {row.t:4.0f}s  {row.processed:>9,}  {_fmt(row.lag_metric):>22}  {_fmt(row.ready_lag):>11}  "
                  f"{row.catching_up!s:>11}  {_fmt(row.committed):>9}  {_mib(row.rss):>8}" + ("  (broker paused)" if row.paused else ""))
        max_rss = max((x.rss for x in s if x.rss is not None), default=None)
        rows = [
            ("input", f"{args.events:,} touchpoints, {pred.profiles:,} journeys, {args.partitions} partitions; produced in {produce_s:.1f}s"),
            ("first batch", f"{first:.1f}s after the worker started (joining the group)"),
            ("caught up (/readyz)", f"{_sec(burst.caught_up_s)} after the start ({_sec(burst.caught_up_s, first)} after the first batch)"),
            ("end committed", f"{_sec(burst.committed_s)} after the start"),
            ("events/s", f"{rate:,.0f} (first batch to end committed)"),
            ("processed", f"{int(metrics.get(PROCESSED, 0)):,} records: the {args.events:,} produced and "
                          f"{sum(ends.values()) - args.events:,} identity records the worker added to its input; dead letters {dead}"),
            ("transitions", f"{transitions:,} distinct ({transition_records:,} records), predicted {pred.transitions:,}"),
            ("committed = log ends", "yes" if not behind else f"NO: {behind}"),
            ("peak RSS (VmHWM)", f"{_mib(peak)}; highest sample {_mib(max_rss)}"),
            ("bound", f"{_mib(bound.total)} = {bound.describe()}"),
            ("/readyz at the end", f"ready {ready.get('ready')}, lag {ready.get('lag')}, catching_up {ready.get('catching_up')}, "
                                   f"rebalances {ready.get('rebalances')}"),
        ]
        if burst.pause is not None:
            p = burst.pause
            rows.append(("broker paused", f"{p.seconds:.1f}s (SIGSTOP..SIGCONT), from {p.started:.0f}s at {p.at_processed:,} records "
                                          f"processed; rebalances {p.rebalances_before} -> {ready.get('rebalances')}; "
                                          f"worker pid {worker.pid} never exited"))
        rows.append(("bench run time", f"{time.monotonic() - bench_started:.0f}s"))
        width = max(len(k) for k, _ in rows)
        print()
        for k, v in rows:
            print(f"  {k:<{width}}  {v}")
        for f in burst.failures:
            print(f"  ! {f}")
        lost = abs(pred.transitions - transitions) + sum(max(0, b) for b in behind.values())
        print()
        print(f"events={args.events} peak_rss_mib={(peak or 0) / 2**20:.0f} bound_mib={bound.total / 2**20:.0f} "
              f"caught_up_s={_sec(burst.caught_up_s).rstrip('s')} events_per_s={rate:.0f} "
              f"pause_s={burst.pause.seconds if burst.pause else 0:.1f} lost={lost} failures={len(burst.failures)}")
        return 1 if burst.failures else 0
    finally:
        if worker is not None:
            worker.stop()
        await broker.stop_async()


def _sec(t: float | None, minus: float = 0.0) -> str:
    return "never" if t is None else f"{t - minus:.1f}s"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=1_000_000, help="touchpoints in the topic before the worker starts (default 1,000,000)")
    p.add_argument("--customers", type=int, default=100_000, help="customers per generated crowd, ~10 touchpoints each (default 100,000)")
    p.add_argument("--partitions", type=int, default=8, help="input partitions (default 8)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--state-cache", type=int, default=None, help="the worker's JOURNEY_STATE_CACHE (default: the setting's default)")
    p.add_argument("--pause-broker", type=float, default=0.0, metavar="SECONDS",
                   help="stop the broker process (SIGSTOP) for this long in the middle of the burst (default: no pause)")
    p.add_argument("--pause-at", type=float, default=0.3, help="share of the input processed when the broker is stopped (default 0.3)")
    p.add_argument("--sample-s", type=float, default=1.0, help="sampling interval (default 1 s)")
    p.add_argument("--curve-s", type=float, default=10.0, help="lag curve row interval (default 10 s)")
    p.add_argument("--timeout", type=float, default=1800.0, help="give up this long after the worker's start (default 1800 s)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, RocksDB data)")
    args = p.parse_args(argv)
    if args.events < 1 or args.customers < 1 or args.partitions < 1 or not 0 < args.pause_at < 1:
        p.error("--events, --customers and --partitions must be >= 1, --pause-at between 0 and 1")
    return run_in_workdir(bench, args, prefix="journey-burst-")

if __name__ == "__main__":
    sys.exit(main())
