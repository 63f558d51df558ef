"""`journey dev`: the embedded default, so a newcomer sees journey move with one command.

Starts the bundled Kafka-protocol broker (a development dependency; production runs on Apache
Kafka), creates the topics, runs a worker and the sidecar as child processes, feeds generated
journeys, and prints what flows.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from journey.errors import UsageError, WorkerError
from journey.kafka.broker import die_with_parent
from journey.settings import Settings

#: The generated feed's pain-point windows, unless set: a cart counts as abandoned after 72 s and a
#: customer as stalled after about 6 minutes instead of 24 hours and 14 days, so that a demo of a
#: few minutes shows them (the feed's events carry the time they are sent).
DEMO_WINDOWS = {"JOURNEY_CHURN_ABANDONMENT_WINDOW_HOURS": "0.02", "JOURNEY_CHURN_STALL_DAYS": "0.004"}

#: The signals that stop `journey dev` as Ctrl-C does: a closed terminal (SIGHUP), a kill (SIGTERM).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class _Stop(KeyboardInterrupt):
    """A stop signal arrived (raised in the main thread, where the children are stopped)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop(signum)


class ChildDied(WorkerError):
    """The worker or the sidecar stopped while `journey dev` ran."""

    def __init__(self, name: str, code: int) -> None:
        super().__init__(f"{name} stopped ({_how(code)})")
        self.name, self.code = name, code


def run_dev(settings: Settings, *, rate: float, bad_every: int, seconds: float | None, identity: bool = False) -> int:
    """Run the embedded default until stopped; 0 when stopped (or done), 1 when a child died."""
    from journey.kafka.broker import EmbeddedBroker, free_port

    if rate < 0:
        raise UsageError(f"--rate {rate:g}: give the feed's touchpoints per second, or 0 for no feed")
    var = settings.dev_dir.resolve()
    var.mkdir(parents=True, exist_ok=True)
    lock = _claim(var)
    for what, variable, where, port in (("worker", "JOURNEY_WEB_PORT", settings.web_bind, settings.web_port),
                                        ("sidecar", "JOURNEY_SIDECAR_PORT", settings.sidecar_host, settings.sidecar_port)):
        if (what == "worker" or _has_sidecar()) and _port_taken(where, port):
            lock.close()
            raise UsageError(f"port {port} on {where}, the {what}'s ({variable}), is taken: stop what uses it, or set "
                             f"{variable} to a free port")
    host, _, port_text = settings.bootstrap_servers.split(",")[0].rpartition(":")
    port = int(port_text)
    if _port_taken(host or "127.0.0.1", port):
        port = free_port()
        print(f"port {port_text} is taken; the embedded broker uses {port} instead")
    broker = EmbeddedBroker(port, host=host or "127.0.0.1", log_path=var / "broker.log")
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    code = 0
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
        demo = {k: v for k, v in DEMO_WINDOWS.items() if k not in os.environ} if rate > 0 else {}
        children.append(("worker", _spawn([sys.executable, "-m", "journey.cli", "worker"],
                                          {**env, **demo, "JOURNEY_DATA_DIR": str(worker_dir)}, var / "worker.log")))
        if _has_sidecar():
            children.append(("sidecar", _spawn([sys.executable, "-m", "journey.cli", "sidecar"], env, var / "sidecar.log")))
        print()
        print(f"  broker   {settings.bootstrap_servers}  (tansu, in memory; log {var / 'broker.log'})")
        print(f"  worker   http://{settings.web_host}:{settings.web_port}/metrics  (log {var / 'worker.log'})")
        if _has_sidecar():
            print(f"  sidecar  http://{settings.sidecar_host}:{settings.sidecar_port}/  (live page; API docs at /docs)")
        if rate > 0:
            print(f"  feed     ~{rate:g} touchpoints/s into '{settings.topic_touchpoints}'"
                  + (f", one malformed every {bad_every}" if bad_every else ""))
            if demo:
                print("  demo     pain points come quickly: carts count as abandoned after 72 s, customers as stalled after "
                      "~6 min (defaults 24 h and 14 days: JOURNEY_CHURN_ABANDONMENT_WINDOW_HOURS, JOURNEY_CHURN_STALL_DAYS)")
        else:
            print(f"  feed     none (--rate 0): publish your own into '{settings.topic_touchpoints}', e.g. "
                  f"journey replay data/cdnow/CDNOW_sample.txt --format cdnow --bootstrap-servers {settings.bootstrap_servers}")
        print("  the worker needs ~30 s to join its consumer group; then transitions flow. Ctrl-C stops everything.\n",
              flush=True)
        asyncio.run(_feed_and_watch(settings, rate=rate, bad_every=bad_every, seconds=seconds, identity=identity,
                                    children=children))
    except ChildDied as died:
        log = var / f"{died.name}.log"
        _say(f"\n{died}, unexpectedly; the end of {log}:\n{_tail(log)}\nstopping the rest")
        code = 1
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
            lock.close()
    return code


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
        _say(f"  {name} stopped ({_how(code)})")


async def _feed_and_watch(settings: Settings, *, rate: float, bad_every: int, seconds: float | None, identity: bool = False,
                          children: list[tuple[str, subprocess.Popen[bytes]]] | None = None) -> None:
    """Feed generated journeys (none at rate 0) and print what flows, until ``seconds`` have passed
    or a child stops (ChildDied)."""
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

    async def guard() -> None:
        """Say so when the worker or the sidecar stops (a port taken, a crash), instead of a feed
        that goes on with nobody processing it."""
        while True:
            await asyncio.sleep(1.0)
            for name, child in children or ():
                code = child.poll()
                if code is not None:
                    raise ChildDied(name, code)

    async def idle() -> None:
        await asyncio.sleep(max(0.0, stop_at - time.time()) if stop_at else float("inf"))

    watcher = asyncio.create_task(watch())
    guarding = asyncio.create_task(guard())
    feeding = asyncio.create_task(feed() if rate > 0 else idle())
    try:
        done, _pending = await asyncio.wait([feeding, guarding], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # ChildDied, or what the feed raised
    finally:
        for task in (watcher, guarding, feeding):
            task.cancel()
        await producer.stop()
        await consumer.stop()


def _has_sidecar() -> bool:
    try:
        import journey.sidecar.app  # noqa: F401
    except ImportError:
        return False
    return True


def _how(code: int) -> str:
    """A child's exit: 'exit N', or 'on SIGTERM' for one a signal ended (a negative code)."""
    if code < 0:
        try:
            return f"on {signal.Signals(-code).name}"
        except ValueError:
            pass
    return f"exit {code}"


def _claim(var: Path) -> Any:
    """Hold ``var``/dev.lock while this `journey dev` runs: a second one on the same directory
    would delete the running worker's state (it starts empty) and fight over its ports."""
    handle = open(var / "dev.lock", "a")  # noqa: SIM115 - held until the run ends
    try:
        import fcntl

        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:
        pass  # no flock (Windows): no guard
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return handle  # a file system without locks (some mounts): run without the guard
        handle.close()
        raise UsageError(
            f"another `journey dev` (or `make run`) is running on {var}: stop it first (Ctrl-C in its terminal), or give "
            "this one its own JOURNEY_DEV_DIR, JOURNEY_WEB_PORT and JOURNEY_SIDECAR_PORT"
        ) from None
    return handle


def _port_taken(host: str, port: int) -> bool:
    """Whether a server could not listen on ``host``:``port`` because something already does
    (tried by binding, as the server will; any other failure is left for the server to report)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return False
    family, kind, proto, _name, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: a TIME_WAIT is no conflict
        try:
            probe.bind(address)
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def _tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join("    " + line for line in log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "    (no log)"


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
