"""Journey worker processes for integration tests: real `journey worker` subprocesses."""

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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from journey.kafka.admin import ensure_topics
from journey.kafka.broker import free_port
from journey.settings import Settings
from journey.worker.topics import all_topic_specs
from support.env import subprocess_env
from support.kafka import produce, read_all, touchpoint_record

ROOT = Path(__file__).resolve().parents[2]


def namespaced_settings(bootstrap: str, name: str, **overrides: object) -> Settings:
    """Settings with an app id and topics of their own, so tests sharing the broker never meet.

    ``name`` gets a random suffix: every call (every test run, every rerun on a session broker)
    has its own consumer group and topics.
    """
    name = f"{name}-{uuid.uuid4().hex[:8]}"
    return Settings(
        bootstrap_servers=bootstrap,
        app_id=f"jt-{name}",
        topic_touchpoints=f"{name}.touchpoints",
        topic_transitions=f"{name}.stage-transitions",
        topic_dead_letter=f"{name}.dead-letter",
        topic_churn_risk=f"{name}.churn-risk",
        topic_pain_points=f"{name}.pain-points",
        topic_aggregates=f"{name}.aggregates",
        topic_identities=f"{name}.identities",
        topic_privacy=f"{name}.privacy",
        partitions=4,
        **overrides,  # type: ignore[arg-type]
    )


#: The Settings fields a test worker gets from the environment.
ENV_FIELDS = (
    "bootstrap_servers", "app_id", "topic_touchpoints", "topic_transitions", "topic_dead_letter",
    "topic_churn_risk", "topic_pain_points", "topic_aggregates", "topic_identities", "topic_privacy", "partitions", "session_timeout_s",
    "api_token", "batch_size", "churn_params_file", "state_cache", "churn_max_per_tick", "catching_up_lag",
    "rocksdb_write_buffer_mb", "rocksdb_block_cache_mb",
)


def settings_env(settings: Settings) -> dict[str, str]:
    return settings.to_env(ENV_FIELDS)


#: How long a worker may take to exit after SIGTERM (it leaves its group and flushes first).
STOP_TIMEOUT_S = 30.0


class StopFailed(AssertionError):
    """A process did not exit cleanly and in time on SIGTERM."""


#: The sidecar serves with uvicorn, which shuts down gracefully on SIGTERM and then re-raises the
#: signal (so its exit status is the conventional "terminated by SIGTERM"): that is clean only if
#: the shutdown ran to its end, which uvicorn logs.
SIDECAR_SHUTDOWN_DONE = "Application shutdown complete"


def unclean_exit(kind: str, code: int, log_text: str) -> str | None:
    """Why exit ``code`` after SIGTERM is not a clean stop for a ``kind`` ("worker" or "sidecar"); None if it is."""
    if code == 0:
        return None
    if kind == "sidecar" and code == -signal.SIGTERM and SIDECAR_SHUTDOWN_DONE in log_text:
        return None
    return f"{kind} exited with {code} on SIGTERM"


@dataclass
class WorkerProcess:
    settings: Settings
    data_dir: Path
    web_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "worker.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start(self) -> WorkerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Nothing from the caller's JOURNEY_* environment: only this test's settings.
        env = subprocess_env(settings_env(self.settings), {
            "JOURNEY_DATA_DIR": str(self.data_dir),
            "JOURNEY_WEB_PORT": str(self.web_port),
        })
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "journey.cli", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT,
            cwd=self.data_dir,
        )
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to flush or commit."""
        if self.alive():
            self.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
            self.process.wait(10)  # type: ignore[union-attr]

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, and wait for a clean exit.

        A worker that is still running ``timeout_s`` after SIGTERM, or that exits with an error, is
        a failure (StopFailed, with the log tail); one that does not exit is SIGKILLed first, so
        nothing outlives the test. A worker that had already exited (killed by the test) is left
        as it is. Returns the exit code.
        """
        if self.process is None:
            return None
        if self.process.poll() is not None:
            return self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise StopFailed(f"worker {self.data_dir.name} still running {timeout_s:.0f}s after SIGTERM (SIGKILLed); log:\n{self.log_tail()}") from None
        problem = unclean_exit("worker", code, self.log_text())
        if problem:
            raise StopFailed(f"{problem} ({self.data_dir.name}); log:\n{self.log_tail()}")
        return code

    def check_alive(self) -> None:
        if not self.alive():
            code = self.process.returncode if self.process is not None else None
            raise AssertionError(f"worker {self.data_dir.name} is not running (exit {code}):\n{self.log_tail()}")

    def metric(self, sample: str, **labels: str) -> float:
        """The sum of the /metrics samples named ``sample`` whose labels include ``labels``
        (e.g. ``metric("journey_touchpoints_consumed_total", type="purchase")``)."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as r:
            text = r.read().decode()
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def readyz(self) -> dict[str, Any]:
        """The worker's /readyz answer (ready or not), or {} while it does not answer."""
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=5) as r:
                return json.loads(r.read())  # type: ignore[no-any-return]
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read())  # type: ignore[no-any-return]
        except OSError:
            return {}

    def view(self, customer: str, token: str) -> dict[str, Any] | None:
        """The worker's /customers/{id} answer, or None (unknown customer, or the worker is rebalancing)."""
        request = urllib.request.Request(f"{self.url}/customers/{customer}", headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                return json.loads(r.read())  # type: ignore[no-any-return]
        except urllib.error.HTTPError as exc:
            if exc.code in (404, 503):
                return None
            raise
        except OSError:
            return None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def stop_all(workers: list[WorkerProcess]) -> None:
    """Stop every worker (each gets its SIGTERM and deadline), then report every one that failed to."""
    failures: list[str] = []
    for w in workers:
        try:
            w.stop()
        except StopFailed as exc:
            failures.append(str(exc))
    if failures:
        raise StopFailed("\n---\n".join(failures))


async def create_topics(settings: Settings) -> None:
    await ensure_topics(settings.bootstrap_servers, all_topic_specs(settings))


def probe_keys(partitions: int) -> list[str]:
    """One probe customer per partition (the producer's default murmur2 partitioner)."""
    from aiokafka.partitioner import DefaultPartitioner

    partitioner = DefaultPartitioner()
    run = uuid.uuid4().hex[:8]
    keys: dict[int, str] = {}
    i = 0
    while len(keys) < partitions:
        key = f"__probe__{run}-{i}"
        keys.setdefault(partitioner(key.encode(), list(range(partitions)), list(range(partitions))), key)
        i += 1
    return list(keys.values())


async def wait_until_processing(settings: Settings, workers: list[WorkerProcess], timeout_s: float = 120) -> None:
    """Send a probe touchpoint to every partition and wait for all their transitions: the group
    has joined, every partition is owned and its state recovered."""
    probes = set(probe_keys(settings.partitions))
    now = datetime.now(UTC).isoformat()
    await produce(settings.bootstrap_servers, settings.topic_touchpoints, [
        touchpoint_record({"event_id": p, "customer_id": p, "type": "page_view", "timestamp": now}) for p in probes
    ])

    def seen(msgs: list) -> bool:
        for w in workers:
            if not w.alive():
                raise AssertionError(f"worker died while starting:\n{w.log_tail()}")
        return probes <= {m.get("customer_id") for m in msgs}

    msgs = await read_all(settings.bootstrap_servers, settings.topic_transitions, until=seen, timeout_s=timeout_s)
    missing = probes - {m.get("customer_id") for m in msgs}
    if missing:
        tails = "\n---\n".join(w.log_tail() for w in workers)
        raise AssertionError(f"no transition for {len(missing)} probes within {timeout_s}s; worker logs:\n{tails}")


async def wait_owns_all(worker: WorkerProcess, partitions: int, timeout_s: float = 120) -> None:
    """Wait until ``worker`` is ready (joined, recovered, fetching) with every input partition
    assigned, without producing anything."""
    deadline = time.monotonic() + timeout_s
    ready: dict[str, Any] = {}
    while time.monotonic() < deadline:
        worker.check_alive()
        ready = await asyncio.to_thread(worker.readyz)
        if ready.get("ready") and ready.get("partitions") == list(range(partitions)):
            return
        await asyncio.sleep(0.3)
    raise AssertionError(f"the worker does not own all {partitions} partitions after {timeout_s:.0f}s: {ready}\n{worker.log_tail()}")


async def wait_shared(workers: list[WorkerProcess], partitions: int, timeout_s: float = 180) -> None:
    """Wait until every worker is ready and owns some input partition, and together they own each
    once: the probes of :func:`wait_until_processing` can all be answered by the first worker to
    join, before the second has a share."""
    deadline = time.monotonic() + timeout_s
    owned: list[list[int]] = []
    while time.monotonic() < deadline:
        for w in workers:
            w.check_alive()
        answers = [await asyncio.to_thread(w.readyz) for w in workers]
        owned = [list(a.get("partitions") or []) if a.get("ready") else [] for a in answers]
        if all(owned) and sorted(p for ps in owned for p in ps) == list(range(partitions)):
            return
        await asyncio.sleep(0.3)
    raise AssertionError(f"the workers do not share the {partitions} partitions after {timeout_s:.0f}s: {owned}")


def is_probe(customer_id: str | None) -> bool:
    return bool(customer_id) and customer_id.startswith("__probe__")  # type: ignore[union-attr]

