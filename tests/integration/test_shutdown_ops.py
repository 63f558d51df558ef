"""Bounded, clean shutdowns with real processes:

- a worker whose broker is gone stops within JOURNEY_SHUTDOWN_TIMEOUT_S of SIGTERM and exits
  non-zero (70: what it had not committed is replayed by whoever owns its partitions next),
  logging one JSON object per line (JOURNEY_LOG_FORMAT=json) the whole time;
- `journey dev` stopped by SIGTERM or SIGHUP (a kill, a closed terminal) stops its worker and
  sidecar while the broker still runs (so they stop cleanly), then the broker, and leaves no
  process behind.

Each test runs its own broker (the first kills it), not the session's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from journey.kafka.broker import EmbeddedBroker, free_port
from support.env import subprocess_env
from support.workers import create_topics, namespaced_settings

pytestmark = pytest.mark.integration

SHUTDOWN_TIMEOUT_S = 8.0
DEV_SHUTDOWN_TIMEOUT_S = 30.0


def _get(url: str) -> tuple[int | None, Any]:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
    except (OSError, ValueError):
        return None, None


def _wait_for(what: str, check: Any, timeout_s: float, alive: Any, log: Path) -> Any:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        ok, last = check()
        if ok:
            return last
        if not alive():
            break
        time.sleep(0.3)
    raise AssertionError(f"{what}: not within {timeout_s:.0f}s (last: {last}); log tail:\n{_tail(log)}")


def _tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


async def test_a_worker_whose_broker_is_gone_stops_in_time_and_exits_non_zero(tmp_path: Path) -> None:
    broker = EmbeddedBroker(log_path=tmp_path / "broker.log")
    await broker.start_async()
    process: subprocess.Popen[bytes] | None = None
    log = tmp_path / "worker.log"
    try:
        settings = namespaced_settings(broker.bootstrap_servers, "stop-ops", session_timeout_s=10.0)
        await create_topics(settings)
        port = free_port()
        env = subprocess_env(
            settings.to_env(["bootstrap_servers", "app_id", "topic_touchpoints", "topic_transitions", "topic_dead_letter",
                             "topic_churn_risk", "topic_pain_points", "topic_aggregates", "partitions", "session_timeout_s"]),
            {"JOURNEY_DATA_DIR": str(tmp_path / "data"), "JOURNEY_WEB_PORT": str(port), "JOURNEY_LOG_FORMAT": "json",
             "JOURNEY_SHUTDOWN_TIMEOUT_S": str(SHUTDOWN_TIMEOUT_S)},
        )
        with open(log, "ab") as out:
            process = subprocess.Popen([sys.executable, "-m", "journey.cli", "worker"], env=env, stdout=out,
                                       stderr=subprocess.STDOUT, cwd=tmp_path)

        def ready() -> tuple[bool, Any]:
            status, body = _get(f"http://127.0.0.1:{port}/readyz")
            return status == 200, (status, body)

        body = _wait_for("the worker's /readyz to answer 200", ready, 120, lambda: process.poll() is None, log)
        assert body[1]["ready"] is True and body[1]["partitions"] == [0, 1, 2, 3]

        await broker.stop_async()
        time.sleep(1.0)  # the worker notices: its fetches and heartbeats fail
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(SHUTDOWN_TIMEOUT_S + 10)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the worker still runs {SHUTDOWN_TIMEOUT_S + 10:.0f}s after SIGTERM:\n{_tail(log)}") from None
        took = time.monotonic() - started
        assert code == 70, f"exit {code}:\n{_tail(log)}"
        assert took <= SHUTDOWN_TIMEOUT_S + 0.5, f"took {took:.1f}s, JOURNEY_SHUTDOWN_TIMEOUT_S={SHUTDOWN_TIMEOUT_S}"

        records = []
        for line in log.read_text().splitlines():
            records.append(json.loads(line))  # every line is one JSON object
        assert all({"time", "level", "logger", "message", "service", "app_id", "pid", "port"} <= r.keys() for r in records)
        assert {r["app_id"] for r in records} == {settings.app_id} and {r["port"] for r in records} == {port}
        gave_up = [r for r in records if r["level"] == "critical" and r["logger"] == "journey.worker"]
        assert len(gave_up) == 1 and "did not stop within" in gave_up[0]["message"]
        assert "replayed by whoever owns its partitions next" in gave_up[0]["message"]
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(10)
        await broker.stop_async()


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _descendants(pid: int) -> set[int]:
    tree = _children()
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_journey_dev_stops_its_children_then_the_broker_and_leaves_nothing(tmp_path: Path, signum: signal.Signals) -> None:
    web, sidecar = free_port(), free_port()
    env = subprocess_env({
        "JOURNEY_DEV_DIR": str(tmp_path / "dev"),
        "JOURNEY_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "JOURNEY_WEB_PORT": str(web),
        "JOURNEY_SIDECAR_PORT": str(sidecar),
        "JOURNEY_WORKER_URLS": f"http://127.0.0.1:{web}",
        # Not the bound under test here (the test above is): room for a clean stop on a slow machine.
        "JOURNEY_SHUTDOWN_TIMEOUT_S": str(DEV_SHUTDOWN_TIMEOUT_S),
        "JOURNEY_DEV_RATE": "5",
        "JOURNEY_SESSION_TIMEOUT_S": "10",
    })
    out = tmp_path / "dev.out"
    with open(out, "ab") as sink:
        dev = subprocess.Popen([sys.executable, "-m", "journey.cli", "dev", "--seconds", "600", "--bad-every", "0"],
                               env=env, stdout=sink, stderr=subprocess.STDOUT, cwd=tmp_path)
    family: set[int] = set()
    try:
        def worker_ready() -> tuple[bool, Any]:
            status, body = _get(f"http://127.0.0.1:{web}/readyz")
            return status == 200 and _get(f"http://127.0.0.1:{sidecar}/healthz")[0] == 200, (status, body)

        _wait_for("journey dev's worker to be ready and its sidecar to answer", worker_ready, 120,
                  lambda: dev.poll() is None, out)
        family = _descendants(dev.pid)
        commands = [_cmdline(p) for p in family]
        assert any("journey.cli worker" in c for c in commands) and any("journey.cli sidecar" in c for c in commands), commands
        assert any("tansu" in c or "broker" in c for c in commands), commands

        dev.send_signal(signum)
        try:
            code = dev.wait(DEV_SHUTDOWN_TIMEOUT_S + 20)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"journey dev still runs after {signum.name}:\n{_tail(out)}") from None
        text = out.read_text(errors="replace")
        assert code == 0, text
        assert f"{signum.name}: stopping the worker and the sidecar, then the broker" in text
        # The worker stopped cleanly (exit 0): its broker was still there while it did.
        assert "worker stopped (exit 0)" in text, text
        assert "sidecar stopped" in text
        left = {p: _cmdline(p) for p in family if _alive(p)}
        assert not left, f"left behind after {signum.name}: {left}"
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait(10)
        for pid in family:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
