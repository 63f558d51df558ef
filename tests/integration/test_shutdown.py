"""SIGTERM: a busy worker and the sidecar exit cleanly (exit code 0) and in time.

Every other integration test stops its processes the same way and fails if one does not
(support.workers.WorkerProcess.stop, support.sidecar_run.Deployment.stop); this test says it
on purpose, with a worker that has state, a consumer group and a sidecar following it.
"""

from __future__ import annotations

import signal
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from support.kafka import committed_and_ends
from support.sidecar_run import Deployment, get, produce, wait_for
from support.workers import STOP_TIMEOUT_S

pytestmark = pytest.mark.integration

PARTITIONS = 2
N = 20


async def test_a_worker_and_the_sidecar_exit_cleanly_and_in_time_on_sigterm(broker: str, tmp_path: Path) -> None:
    dep = await Deployment.create(broker, tmp_path, partitions=PARTITIONS)
    worker = dep.worker("worker")
    sidecar = dep.sidecar([worker.port])
    base = f"http://127.0.0.1:{sidecar.port}"
    run = uuid.uuid4().hex[:6]
    try:
        def ready() -> tuple[bool, Any]:
            status, body = get(f"{base}/readyz")
            return status == 200, body

        await wait_for("the sidecar to be ready", ready, dep.live(), 120)
        now = datetime.now(UTC).isoformat()
        events = [{"event_id": f"{run}-{i}", "customer_id": f"{run}-c{i}", "type": "product_view", "timestamp": now}
                  for i in range(N)]
        await produce(broker, dep.settings.topic_touchpoints, events)

        def counted() -> tuple[bool, Any]:
            status, body = get(f"{base}/stages")
            return status == 200 and body["total"] == N, body

        await wait_for(f"the sidecar to count {N} customers", counted, dep.live(), 60)

        # Both at once, as an orchestrator stopping the pod would.
        t0 = time.monotonic()
        for p in (worker, sidecar):
            p.process.send_signal(signal.SIGTERM)
        exited: dict[str, tuple[int | None, float]] = {}
        while len(exited) < 2 and time.monotonic() - t0 < STOP_TIMEOUT_S:
            for p in (worker, sidecar):
                if p.name not in exited and p.process.poll() is not None:
                    exited[p.name] = (p.process.returncode, time.monotonic() - t0)
            time.sleep(0.1)
        late = [p.name for p in (worker, sidecar) if p.name not in exited]
        assert not late, f"{late} still running {STOP_TIMEOUT_S:.0f}s after SIGTERM:\n" + "\n---\n".join(
            p.log_tail() for p in (worker, sidecar) if p.name in late)
        for p in (worker, sidecar):
            code, after = exited[p.name]
            problem = p.unclean_exit()
            assert problem is None, f"{problem} (after {after:.1f}s):\n{p.log_tail()}"
        print(f"\nexit after SIGTERM: {exited}")

        # A clean stop commits what it processed: a restart starts after the input.
        committed, ends = await committed_and_ends(broker, dep.settings.app_id, dep.settings.topic_touchpoints)
        assert committed == ends, (committed, ends)
    finally:
        dep.stop()
