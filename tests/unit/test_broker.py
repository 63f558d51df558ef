"""EmbeddedBroker's process bookkeeping (no broker started: a stand-in process)."""

from __future__ import annotations

import subprocess
import sys

from journey.kafka.broker import EmbeddedBroker


def test_pid_is_the_running_process_and_none_otherwise() -> None:
    broker = EmbeddedBroker(port=1)
    assert broker.pid is None
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    broker._process = stand_in
    try:
        assert broker.running and broker.pid == stand_in.pid
    finally:
        stand_in.kill()
        stand_in.wait()
    assert not broker.running and broker.pid is None
