"""Where the embedded broker's latency goes: produce -> ack, and ack -> a following consumer.

    python bench/broker_latency.py [--rate 5000] [--seconds 10] [--partitions 8] [--fetch-wait-ms 5]

No journey code in the path: a fresh embedded broker (tansu), the throughput bench's paced
producer (loadgen.produce_paced: aiokafka, acks=all, no linger) and, in another process, a consumer following the topic with every
partition assigned, as the throughput bench's watcher does. Prints p50/p99/max of send -> ack
(the broker took the record) and ack -> arrival (a following consumer saw it), and the broker's
CPU every 2 s. On this machine the second dominates and grows with the data stored while a
consumer follows closely (the broker's CPU climbs toward a full core); that is the floor under
bench/throughput.py's latency figures, whoever consumes.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "service"))
sys.path.insert(0, str(REPO / "bench"))

import loadgen  # noqa: E402
import topicread  # noqa: E402
from journey.kafka.admin import TopicSpec, ensure_topics  # noqa: E402
from journey.kafka.broker import EmbeddedBroker  # noqa: E402
from workerproc import process_cpu_seconds  # noqa: E402


def _follow(bootstrap: str, topic: str, partitions: int, n: int, wait_ms: int, seconds: float, out: multiprocessing.Queue[dict[str, float]]) -> None:
    arrivals: dict[str, float] = {}

    async def run() -> None:
        stop = asyncio.Event()

        def on_record(now: float, _key: bytes | None, value: bytes | None) -> None:
            arrivals.setdefault((value or b"").decode(), now)
            if len(arrivals) >= n:
                stop.set()

        async def deadline() -> None:
            await asyncio.sleep(seconds)
            stop.set()

        timer = asyncio.create_task(deadline())
        await topicread.watch(bootstrap, topic, partitions, on_record, stop, fetch_wait_ms=wait_ms)
        timer.cancel()

    asyncio.run(run())
    out.put(arrivals)


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * (len(values) - 1)))] if values else float("nan")


async def main(args: argparse.Namespace) -> None:
    async with EmbeddedBroker() as broker:
        bootstrap, topic = broker.bootstrap_servers, "latency"
        await ensure_topics(bootstrap, [TopicSpec(topic, args.partitions, 1, 24 * 3600 * 1000)])
        n = int(args.rate * args.seconds)
        ctx = multiprocessing.get_context("spawn")
        out: multiprocessing.Queue[dict[str, float]] = ctx.Queue()
        follower = ctx.Process(target=_follow, args=(bootstrap, topic, args.partitions, n, args.fetch_wait_ms, args.seconds + 30, out))
        follower.start()
        await asyncio.sleep(3.0)  # the follower is assigned and polling
        pid = broker.pid
        cpu: list[str] = []

        async def sample() -> None:
            last = process_cpu_seconds(pid)
            while True:
                await asyncio.sleep(2.0)
                now = process_cpu_seconds(pid)
                cpu.append(f"{(now - last) / 2:.0%}")
                last = now

        sampler = asyncio.create_task(sample())
        records = [(i % args.partitions, str(i).encode(), str(i).encode(), str(i)) for i in range(n)]
        acked: dict[str, float] = {}
        sent = await loadgen.produce_paced(bootstrap, topic, records, args.rate, acked=acked)
        sampler.cancel()
        arrivals = await asyncio.get_running_loop().run_in_executor(None, out.get)
        follower.join()
    for name, values in (
        ("send -> ack", [(acked[i] - sent[i]) * 1000 for i in sent]),
        ("ack -> arrival", [(arrivals[i] - acked[i]) * 1000 for i in sent if i in arrivals]),
        ("send -> arrival", [(arrivals[i] - sent[i]) * 1000 for i in sent if i in arrivals]),
    ):
        print(f"  {name:<16} p50 {_pct(values, .5):7.1f} ms  p99 {_pct(values, .99):7.1f} ms  max {max(values, default=float('nan')):6.0f} ms")
    print(f"  arrived {len(arrivals):,}/{n:,}; broker CPU per 2 s while producing: {' '.join(cpu)}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=5000.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--fetch-wait-ms", type=int, default=5)
    args = p.parse_args()
    print(f"broker latency: {args.rate:,.0f} records/s for {args.seconds:g}s, {args.partitions} partitions, follower fetch wait {args.fetch_wait_ms} ms")
    asyncio.run(main(args))
