"""Journey worker processes for integration tests: real `journey worker` subprocesses."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from journey.kafka.admin import ensure_topics
from journey.kafka.broker import free_port
from journey.settings import Settings
from journey.worker.topics import all_topic_specs

from support.kafka import produce, read_all, touchpoint_record

ROOT = Path(__file__).resolve().parents[2]


def namespaced_settings(bootstrap: str, name: str, **overrides: object) -> Settings:
    """Settings with an app id and topics of their own, so tests sharing the broker never meet."""
    return Settings(
        bootstrap_servers=bootstrap,
        app_id=f"jt-{name}",
        topic_touchpoints=f"{name}.touchpoints",
        topic_transitions=f"{name}.stage-transitions",
        topic_dead_letter=f"{name}.dead-letter",
        topic_churn_risk=f"{name}.churn-risk",
        topic_pain_points=f"{name}.pain-points",
        topic_aggregates=f"{name}.aggregates",
        partitions=4,
        **overrides,  # type: ignore[arg-type]
    )


#: The Settings fields a test worker gets from the environment.
ENV_FIELDS = (
    "bootstrap_servers", "app_id", "topic_touchpoints", "topic_transitions", "topic_dead_letter",
    "topic_churn_risk", "topic_pain_points", "topic_aggregates", "partitions", "session_timeout_s",
    "api_token", "batch_size",
)


def settings_env(settings: Settings) -> dict[str, str]:
    return settings.to_env(ENV_FIELDS)


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

    def start(self) -> "WorkerProcess":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            **settings_env(self.settings),
            "JOURNEY_DATA_DIR": str(self.data_dir),
            "JOURNEY_WEB_PORT": str(self.web_port),
            "PYTHONPATH": os.pathsep.join([str(ROOT / "service"), os.environ.get("PYTHONPATH", "")]),
        }
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

    def stop(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            try:
                self.process.wait(20)  # type: ignore[union-attr]
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


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
    now = datetime.now(timezone.utc).isoformat()
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


def is_probe(customer_id: str | None) -> bool:
    return bool(customer_id) and customer_id.startswith("__probe__")  # type: ignore[union-attr]

