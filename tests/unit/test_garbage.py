"""The worker's garbage-collector policy (worker/garbage.py), in a process of its own: freezing
the heap of the pytest process would keep every later test's cyclic garbage."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import gc
from journey.worker import garbage
kept = [[i] for i in range(1000)]
garbage.settle()
assert gc.get_freeze_count() == 0, "settle() froze a process that did not tune()"
garbage.tune()
assert gc.get_threshold()[0] == garbage.YOUNG_THRESHOLD
frozen = gc.get_freeze_count()
more = [[i] for i in range(1000)]
garbage.settle()
assert gc.get_freeze_count() >= frozen + 1000, "what a batch left alive is frozen"
assert gc.get_count() == (0, 0, 0), "no collection is due right after a batch"
print("ok")
"""


def test_the_worker_freezes_what_each_batch_leaves_alive_and_only_once_tuned() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
