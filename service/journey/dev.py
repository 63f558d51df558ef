"""`journey dev`: the embedded default, so a newcomer sees journey move with one command.

Starts the bundled Kafka-protocol broker (a development dependency; production runs on Apache
Kafka), creates the topics, runs a worker and the sidecar as child processes, feeds generated
journeys, and prints what flows.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from journey.settings import Settings


def run_dev(settings: Settings, *, rate: float, bad_every: int, seconds: float | None) -> int:
    from journey.kafka.broker import EmbeddedBroker, free_port

    var = Path(os.environ.get("JOURNEY_DEV_DIR", "var/dev")).resolve()
    var.mkdir(parents=True, exist_ok=True)
    host, _, port_text = settings.bootstrap_servers.split(",")[0].rpartition(":")
    port = int(port_text)
    if not _port_free(host or "127.0.0.1", port):
        port = free_port()
        print(f"port {port_text} is taken; the embedded broker uses {port} instead")
    broker = EmbeddedBroker(port, host=host or "127.0.0.1", log_path=var / "broker.log")
    broker.start()
    settings = settings.replace(bootstrap_servers=broker.bootstrap_servers)
    env = {**os.environ, "JOURNEY_BOOTSTRAP_SERVERS": settings.bootstrap_servers}
    children: list[subprocess.Popen[bytes]] = []
    try:
        _run([sys.executable, "-m", "journey.cli", "topics"], env)
        # The broker keeps everything in memory: the worker's RocksDB state starts empty too
        # (state on disk would outlive the topics it came from).
        worker_dir = var / "worker"
        shutil.rmtree(worker_dir, ignore_errors=True)
        worker_dir.mkdir()
        children.append(_spawn("worker", [sys.executable, "-m", "journey.cli", "worker"],
                               {**env, "JOURNEY_DATA_DIR": str(worker_dir)}, var / "worker.log"))
        if _has_sidecar():
            children.append(_spawn("sidecar", [sys.executable, "-m", "journey.cli", "sidecar"], env, var / "sidecar.log"))
        print()
        print(f"  broker   {settings.bootstrap_servers}  (tansu, in memory; log {var / 'broker.log'})")
        print(f"  worker   http://{settings.web_host}:{settings.web_port}/metrics  (log {var / 'worker.log'})")
        if _has_sidecar():
            print(f"  sidecar  http://{settings.sidecar_host}:{settings.sidecar_port}/  (live page; API docs at /docs)")
        print(f"  feed     ~{rate:g} touchpoints/s into '{settings.topic_touchpoints}'"
              + (f", one malformed every {bad_every}" if bad_every else ""))
        print("  the worker needs ~30 s to join its consumer group; then transitions flow. Ctrl-C stops everything.\n")
        asyncio.run(_feed_and_watch(settings, rate=rate, bad_every=bad_every, seconds=seconds))
    except KeyboardInterrupt:
        pass
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
        broker.stop()
    return 0


async def _feed_and_watch(settings: Settings, *, rate: float, bad_every: int, seconds: float | None) -> None:
    from journey.kafka.security import client_kwargs
    from journey.sources.generator import bad_events, live_feed

    security = client_kwargs(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=5, **security)
    consumer = AIOKafkaConsumer(
        settings.topic_transitions, settings.topic_dead_letter,
        bootstrap_servers=settings.bootstrap_servers, auto_offset_reset="latest", enable_auto_commit=False, **security,
    )
    await producer.start()
    await consumer.start()
    sent = 0
    seen: Counter[str] = Counter()
    stop_at = time.time() + seconds if seconds else None

    async def feed() -> None:
        nonlocal sent
        bad = bad_events(seed=11)
        for due, event in live_feed(rate, seed=int(time.time())):
            if stop_at and time.time() > stop_at:
                return
            await asyncio.sleep(max(0.0, due - time.time()))
            profile = event.get("customer_id") or event.get("anonymous_id")
            await producer.send(settings.topic_touchpoints, orjson.dumps(event), key=profile.encode() if profile else None)
            sent += 1
            if bad_every and sent % bad_every == 0:
                await producer.send(settings.topic_touchpoints, next(bad), key=b"dev-bad")

    async def watch() -> None:
        last_print = time.time()
        async for msg in consumer:
            if msg.topic == settings.topic_dead_letter:
                seen["dead letters"] += 1
                reason = orjson.loads(msg.value).get("reason")
                print(f"  dead letter: {reason}")
            else:
                t = orjson.loads(msg.value)
                seen[f"-> {t['to_stage']}"] += 1
                if seen.total() <= 12:
                    print(f"  {t['customer_id']}: {t['from_stage'] or '(new)'} -> {t['to_stage']}  via {t['trigger_type']} ({t['channel']})")
            if time.time() - last_print > 5:
                last_print = time.time()
                summary = ", ".join(f"{k} {v}" for k, v in sorted(seen.items()))
                print(f"[{time.strftime('%H:%M:%S')}] sent {sent} touchpoints; transitions so far: {summary}")

    watcher = asyncio.create_task(watch())
    try:
        await feed()
    finally:
        watcher.cancel()
        await producer.stop()
        await consumer.stop()


def _has_sidecar() -> bool:
    try:
        import journey.sidecar.app  # noqa: F401
    except ImportError:
        return False
    return True


def _port_free(host: str, port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex((host, port)) != 0


def _run(cmd: list[str], env: dict[str, str]) -> None:
    subprocess.run(cmd, env=env, check=True)


def _spawn(name: str, cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "ab")
    return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
