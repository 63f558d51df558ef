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

from journey.kafka.broker import die_with_parent
from journey.settings import Settings

#: The signals that stop `journey dev` as Ctrl-C does: a closed terminal (SIGHUP), a kill (SIGTERM).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class _Stop(KeyboardInterrupt):
    """A stop signal arrived (raised in the main thread, where the children are stopped)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop(signum)


def run_dev(settings: Settings, *, rate: float, bad_every: int, seconds: float | None, identity: bool = False) -> int:
    from journey.kafka.broker import EmbeddedBroker, free_port

    var = settings.dev_dir.resolve()
    var.mkdir(parents=True, exist_ok=True)
    host, _, port_text = settings.bootstrap_servers.split(",")[0].rpartition(":")
    port = int(port_text)
    if not _port_free(host or "127.0.0.1", port):
        port = free_port()
        print(f"port {port_text} is taken; the embedded broker uses {port} instead")
    broker = EmbeddedBroker(port, host=host or "127.0.0.1", log_path=var / "broker.log")
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    previous = {sig: signal.signal(sig, _raise_stop) for sig in STOP_SIGNALS}
    try:
        broker.start()
        # The embedded broker speaks plain Kafka: this feed and the children connect without TLS/SASL.
        settings = settings.replace(bootstrap_servers=broker.bootstrap_servers, kafka_security_protocol="PLAINTEXT")
        env = {**os.environ, **settings.to_env(["bootstrap_servers", "kafka_security_protocol"])}
        _run([sys.executable, "-m", "journey.cli", "topics"], env)
        # The broker keeps everything in memory: the worker's RocksDB state starts empty too
        # (state on disk would outlive the topics it came from).
        worker_dir = var / "worker"
        shutil.rmtree(worker_dir, ignore_errors=True)
        worker_dir.mkdir()
        children.append(("worker", _spawn([sys.executable, "-m", "journey.cli", "worker"],
                                          {**env, "JOURNEY_DATA_DIR": str(worker_dir)}, var / "worker.log")))
        if _has_sidecar():
            children.append(("sidecar", _spawn([sys.executable, "-m", "journey.cli", "sidecar"], env, var / "sidecar.log")))
        print()
        print(f"  broker   {settings.bootstrap_servers}  (tansu, in memory; log {var / 'broker.log'})")
        print(f"  worker   http://{settings.web_host}:{settings.web_port}/metrics  (log {var / 'worker.log'})")
        if _has_sidecar():
            print(f"  sidecar  http://{settings.sidecar_host}:{settings.sidecar_port}/  (live page; API docs at /docs)")
        print(f"  feed     ~{rate:g} touchpoints/s into '{settings.topic_touchpoints}'"
              + (f", one malformed every {bad_every}" if bad_every else ""))
        print("  the worker needs ~30 s to join its consumer group; then transitions flow. Ctrl-C stops everything.\n",
              flush=True)
        asyncio.run(_feed_and_watch(settings, rate=rate, bad_every=bad_every, seconds=seconds, identity=identity))
    except _Stop as stop:
        _say(f"\n{stop}: stopping the worker and the sidecar, then the broker")
    except KeyboardInterrupt:
        _say("\nstopping the worker and the sidecar, then the broker")
    finally:
        # Nothing interrupts the clean-up: a second signal would leave the children behind.
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        try:
            _stop_children(children, timeout_s=settings.shutdown_timeout_s + 5.0)
            broker.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return 0


def _say(text: str) -> None:
    """Print, unless the terminal is gone (SIGHUP): the clean-up goes on regardless."""
    try:
        print(text, flush=True)
    except OSError:
        pass


def _stop_children(children: list[tuple[str, subprocess.Popen[bytes]]], *, timeout_s: float) -> None:
    """SIGTERM to every child, then wait for each (SIGKILL after ``timeout_s``: the worker's own
    shutdown watchdog fires before that)."""
    for _name, child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for name, child in children:
        try:
            code = child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _say(f"  {name} did not stop within {timeout_s:.0f} s: killing it")
            child.kill()
            code = child.wait()
        _say(f"  {name} stopped (exit {code})")


async def _feed_and_watch(settings: Settings, *, rate: float, bad_every: int, seconds: float | None, identity: bool = False) -> None:
    from journey.kafka.security import client_options
    from journey.sources.generator import IDENTITY_MIX, bad_events, live_feed

    security = client_options(settings)
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
        for due, event in live_feed(rate, seed=int(time.time()), mix=IDENTITY_MIX if identity else None):
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


def _spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            # Not in the terminal's process group: Ctrl-C reaches `journey dev` only, which stops
            # the children in order (worker and sidecar, then the broker).
            start_new_session=True,
            # Linux: a child gets SIGTERM if `journey dev` itself is killed (SIGKILL, OOM)
            # instead of living on as an orphan that holds its port.
            preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
        )
