"""The worker's garbage-collector policy (worker/garbage.py), in a process of its own: freezing
the heap of the pytest process would keep every later test's cyclic garbage."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SERVICE = Path(__file__).resolve().parents[2] / "service"

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

# A cycle frozen by a batch is freed by the periodic full collection (which unfreezes first).
import asyncio, weakref
class Node: pass
a, b = Node(), Node()
a.other, b.other = b, a
freed = []
weakref.finalize(a, freed.append, True)
del a, b
garbage.settle()
gc.collect()
assert not freed, "a frozen cycle is not collected by an ordinary collection"
garbage.FULL_COLLECTION_INTERVAL_S = 0.0
async def once():
    task = asyncio.ensure_future(garbage.collect_now_and_then())
    await asyncio.sleep(0.05)
    task.cancel()
asyncio.run(once())
assert freed, "the periodic full collection freed the frozen cycle"
print("ok")
"""


def test_the_worker_freezes_what_each_batch_leaves_alive_and_only_once_tuned() -> None:
    env = {**os.environ, "PYTHONPATH": str(SERVICE)}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
