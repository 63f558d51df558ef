"""Running journey workers and the sidecar as processes for the sidecar and page tests."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from journey.kafka.admin import ensure_topics
from journey.kafka.broker import free_port
from journey.settings import Settings
from journey.worker.topics import all_topic_specs
from support.env import subprocess_env
from support.workers import STOP_TIMEOUT_S, StopFailed, unclean_exit

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Proc:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    #: "worker" or "sidecar"
    kind: str = "worker"

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def unclean_exit(self) -> str | None:
        """None if the process exited cleanly after a SIGTERM (see support.workers.unclean_exit)."""
        assert self.process.returncode is not None, f"{self.name} is still running"
        return unclean_exit(self.kind, self.process.returncode, self.log_text())

    def alive_or_fail(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited ({self.process.returncode}):\n{self.log_tail()}")


@dataclass
class Deployment:
    """Unique topics and app id on the shared broker, and the processes started on them."""

    broker: str
    root: Path
    env: dict[str, str]
    settings: Settings
    procs: list[Proc]

    @classmethod
    async def create(cls, broker: str, root: Path, *, partitions: int, token: str | None = None) -> Deployment:
        run = uuid.uuid4().hex[:8]
        env = {
            "JOURNEY_BOOTSTRAP_SERVERS": broker,
            "JOURNEY_APP_ID": f"sc-{run}",
            "JOURNEY_TOPIC_TOUCHPOINTS": f"sc-{run}-touchpoints",
            "JOURNEY_TOPIC_TRANSITIONS": f"sc-{run}-transitions",
            "JOURNEY_TOPIC_DEAD_LETTER": f"sc-{run}-dead-letter",
            "JOURNEY_TOPIC_CHURN_RISK": f"sc-{run}-churn-risk",
            "JOURNEY_TOPIC_PAIN_POINTS": f"sc-{run}-pain-points",
            "JOURNEY_TOPIC_AGGREGATES": f"sc-{run}-aggregates",
            "JOURNEY_TOPIC_IDENTITIES": f"sc-{run}-identities",
            "JOURNEY_TOPIC_PRIVACY": f"sc-{run}-privacy",
            "JOURNEY_PARTITIONS": str(partitions),
            # A killed worker's partitions move after this long.
            "JOURNEY_SESSION_TIMEOUT_S": "10",
            "JOURNEY_LOG_LEVEL": "info",
        }
        if token:
            env["JOURNEY_API_TOKEN"] = token
        settings = Settings.from_env(env)
        await ensure_topics(broker, all_topic_specs(settings))
        env = subprocess_env(env)  # nothing from the caller's JOURNEY_* environment
        return cls(broker, root, env, settings, [])

    def worker(self, name: str) -> Proc:
        port = free_port()
        return self._spawn(name, ["worker"], {"JOURNEY_WEB_PORT": str(port), "JOURNEY_DATA_DIR": str(self.root / name)}, port)

    def sidecar(self, worker_ports: Iterable[int]) -> Proc:
        port = free_port()
        urls = ",".join(f"http://127.0.0.1:{p}" for p in worker_ports)
        return self._spawn("sidecar", ["sidecar"], {"JOURNEY_SIDECAR_PORT": str(port), "JOURNEY_WORKER_URLS": urls}, port)

    def _spawn(self, name: str, args: list[str], extra: dict[str, str], port: int) -> Proc:
        cwd = self.root / name
        cwd.mkdir(parents=True, exist_ok=True)
        log = self.root / f"{name}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "journey.cli", *args], env={**self.env, **extra}, cwd=cwd,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )
        proc = Proc(name, port, process, log, kind=args[0])
        self.procs.append(proc)
        return proc

    def live(self) -> list[Proc]:
        return [p for p in self.procs if p.process.poll() is None]

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> dict[str, int]:
        """SIGTERM every process still running, and wait for each to exit cleanly.

        Any that is still running ``timeout_s`` later (it is SIGKILLed then, so nothing outlives
        the test) or that exits with an error is reported: StopFailed, with its log tail.
        Processes that had already exited (killed by the test) are left as they are. Returns the
        exit codes of the processes stopped here.
        """
        running = [p for p in self.procs if p.process.poll() is None]
        for p in running:
            p.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        codes: dict[str, int] = {}
        failures: list[str] = []
        for p in running:
            try:
                codes[p.name] = p.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.process.kill()
                p.process.wait()
                failures.append(f"{p.name} still running {timeout_s:.0f}s after SIGTERM (SIGKILLed):\n{p.log_tail()}")
                continue
            problem = p.unclean_exit()
            if problem:
                failures.append(f"{p.name}: {problem}:\n{p.log_tail()}")
        if failures:
            raise StopFailed("\n---\n".join(failures))
        return codes


def get(url: str, token: str | None = None) -> tuple[int, Any]:
    """(status, JSON or text body); status 0 when nothing answers."""
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=3) as r:
            body = r.read()
            return r.status, json.loads(body) if r.headers.get_content_type() == "application/json" else body.decode()
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")
    except OSError:
        return 0, None


async def wait_for(what: str, check: Callable[[], tuple[bool, Any]], procs: list[Proc], timeout_s: float) -> Any:
    """Poll ``check`` (run in a thread) until it says ok; fail early if a process died."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        for p in procs:
            p.alive_or_fail()
        ok, last = await asyncio.to_thread(check)
        if ok:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}; last seen: {last!r}")
        await asyncio.sleep(0.5)


async def produce(broker: str, topic: str, events: list[dict[str, Any]], extra: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """Touchpoints keyed by customer id, then any raw (key, value) records."""
    producer = AIOKafkaProducer(bootstrap_servers=broker, acks="all", linger_ms=5)
    await producer.start()
    try:
        for e in events:
            await producer.send(topic, orjson.dumps(e), key=(e.get("customer_id") or e["anonymous_id"]).encode())
        for key, value in extra:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()
