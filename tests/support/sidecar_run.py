"""Running journey workers and the sidecar as processes for the sidecar and page tests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import orjson
from aiokafka import AIOKafkaProducer

from journey.kafka.admin import ensure_topics
from journey.kafka.broker import free_port
from journey.settings import Settings
from journey.worker.topics import all_topic_specs

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Proc:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def alive_or_fail(self) -> None:
        if self.process.poll() is not None:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])
            raise AssertionError(f"{self.name} exited ({self.process.returncode}):\n{tail}")


@dataclass
class Deployment:
    """Unique topics and app id on the shared broker, and the processes started on them."""

    broker: str
    root: Path
    env: dict[str, str]
    settings: Settings
    procs: list[Proc]

    @classmethod
    async def create(cls, broker: str, root: Path, *, partitions: int, token: str | None = None) -> "Deployment":
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
            "JOURNEY_PARTITIONS": str(partitions),
            # A killed worker's partitions move after this long.
            "JOURNEY_SESSION_TIMEOUT_S": "10",
            "JOURNEY_LOG_LEVEL": "info",
        }
        if token:
            env["JOURNEY_API_TOKEN"] = token
        settings = Settings.from_env(env)
        await ensure_topics(broker, all_topic_specs(settings))
        env = {
            **os.environ, **env,
            "PYTHONPATH": os.pathsep.join([str(REPO / "service"), os.environ.get("PYTHONPATH", "")]),
        }
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
        proc = Proc(name, port, process, log)
        self.procs.append(proc)
        return proc

    def live(self) -> list[Proc]:
        return [p for p in self.procs if p.process.poll() is None]

    def stop(self) -> None:
        for p in self.procs:
            if p.process.poll() is None:
                p.process.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.process.wait(10)
            except subprocess.TimeoutExpired:
                p.process.kill()
                p.process.wait()


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
            await producer.send(topic, orjson.dumps(e), key=e["customer_id"].encode())
        for key, value in extra:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()
