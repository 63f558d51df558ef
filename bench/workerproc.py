"""Worker processes for the benchmark: `python -m journey.cli worker` with settings of its own.

Each run gets its own app id (a new consumer group, a new changelog) and output topics, passed
as JOURNEY_* variables, so runs sharing the broker never meet.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from journey.kafka.broker import free_port
from journey.settings import Settings

SERVICE = Path(__file__).resolve().parents[1] / "service"

#: The Settings fields a bench worker gets from the environment.
_ENV_FIELDS = (
    "bootstrap_servers", "app_id", "topic_touchpoints", "topic_transitions", "topic_dead_letter",
    "topic_churn_risk", "topic_pain_points", "topic_aggregates", "topic_identities", "partitions",
)
_METRIC = re.compile(rb"^(journey_[a-z_]+?)(\{[^}]*\})? ([0-9.eE+-]+|NaN)$", re.M)


def process_cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process so far (Linux /proc; 0.0 when it is gone)."""
    fields = _proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") if fields else 0.0


def process_minor_faults(pid: int | None) -> int:
    """Minor page faults of a process so far (Linux /proc; 0 when it is gone)."""
    fields = _proc_stat(pid)
    return int(fields[7]) if fields else 0


def _proc_stat(pid: int | None) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state first); [] when unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return fields if len(fields) > 12 else []
    except OSError:
        return []


def _status_kib(pid: int | None, field_name: str) -> int | None:
    """A "<field>: <n> kB" line of /proc/PID/status, in bytes (None when unreadable)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


class WorkerDied(RuntimeError):
    def __init__(self, worker: Worker) -> None:
        code = worker.process.returncode if worker.process else None
        super().__init__(
            f"worker {worker.name} (pid {worker.pid}) exited with code {code}; its log "
            f"({worker.log_path}) ends with:\n{worker.log_tail()}"
        )


def bench_settings(bootstrap: str, run: str, label: str, *, input_topic: str, partitions: int) -> Settings:
    """Settings with a consumer group and output topics of their own (the input may be shared)."""
    ns = f"bench-{run}.{label}"
    return Settings(
        bootstrap_servers=bootstrap,
        app_id=f"bench-{run}-{label}",
        topic_touchpoints=input_topic,
        topic_transitions=f"{ns}.stage-transitions",
        topic_dead_letter=f"{ns}.dead-letter",
        topic_churn_risk=f"{ns}.churn-risk",
        topic_pain_points=f"{ns}.pain-points",
        topic_aggregates=f"{ns}.aggregates",
        topic_identities=f"{ns}.identities",
        partitions=partitions,
    )


def _die_with_parent() -> None:
    # If the bench is SIGKILLed, its workers get SIGTERM instead of running on.
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort
        pass


@dataclass
class Worker:
    name: str
    settings: Settings
    data_dir: Path
    #: Command line after the interpreter; default: the journey worker.
    argv: list[str] = field(default_factory=lambda: ["-m", "journey.cli", "worker"])
    extra_env: dict[str, str] = field(default_factory=dict)
    web_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "worker.log"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> Worker:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            **self.settings.to_env(_ENV_FIELDS),
            "JOURNEY_DATA_DIR": str(self.data_dir),
            "JOURNEY_WEB_PORT": str(self.web_port),
            "PYTHONPATH": os.pathsep.join(p for p in (str(SERVICE), os.environ.get("PYTHONPATH", "")) if p),
            **self.extra_env,
        }
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, *self.argv], env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=self.data_dir, preexec_fn=_die_with_parent,
            )
        return self

    def check(self) -> None:
        """Raise WorkerDied when the process has exited."""
        if self.process is None or self.process.poll() is not None:
            raise WorkerDied(self)

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def peak_rss_bytes(self) -> int | None:
        """VmHWM: the most resident memory the process has had (Linux)."""
        return _status_kib(self.pid, "VmHWM:")

    def rss_bytes(self) -> int | None:
        """VmRSS: the resident memory now (Linux)."""
        return _status_kib(self.pid, "VmRSS:")

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)

    def minor_faults(self) -> int:
        return process_minor_faults(self.pid)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:]) or "(empty log)"
        except FileNotFoundError:
            return "(no log)"

    async def readyz(self) -> dict[str, Any]:
        """The worker's GET /readyz answer (200 or 503 alike); {} while it does not answer."""
        def get() -> dict[str, Any]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/readyz", timeout=5) as r:
                    return json.loads(r.read())  # type: ignore[no-any-return]
            except urllib.error.HTTPError as exc:
                return json.loads(exc.read())  # type: ignore[no-any-return]

        try:
            return await asyncio.to_thread(get)
        except (OSError, ValueError):
            return {}

    async def metrics(self) -> dict[str, float]:
        """The worker's journey_* series (GET /metrics) by name, labels included as exposed
        (``journey_x_bucket{le="0.1"}``); {} while it is not serving yet."""
        def get() -> bytes:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/metrics", timeout=5) as r:
                return r.read()

        try:
            body = await asyncio.to_thread(get)
        except OSError:
            return {}
        return {(m.group(1) + (m.group(2) or b"")).decode(): float(m.group(3)) for m in _METRIC.finditer(body)}
