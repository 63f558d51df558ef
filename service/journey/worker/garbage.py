"""The worker process's garbage-collector policy: what a batch leaves alive is frozen, never scanned.

Customer states live long and hold no reference cycles (reference counting frees them), yet a
young collection walks every container still alive since the last one, about 1 us each: the
batch's records and the states it decoded, again and again. That was 9-13% of a worker's time
(bench/throughput.py, with and without identity). So each batch ends by moving everything alive
into the permanent generation (``gc.freeze``, constant time); automatic collections fire only if
a million containers pile up between two freezes; and every FULL_COLLECTION_INTERVAL_S
everything is unfrozen and collected once, for the rare cycles (asyncio's, the Kafka client's).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger(__name__)

#: Net new containers that start a young collection (a batch's own rarely come near it).
YOUNG_THRESHOLD = 1_000_000
#: A third-generation threshold never reached: full collections are collect_now_and_then's.
FULL_COLLECTION_NEVER = 1_000_000_000
#: How often the worker unfreezes everything and runs a full collection.
FULL_COLLECTION_INTERVAL_S = 900.0

_tuned = False


def tune() -> None:
    """The worker process's settings; call once, after start-up's imports and building."""
    global _tuned
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, 10, FULL_COLLECTION_NEVER)
    _tuned = True


def settle() -> None:
    """After a batch: freeze what it left alive (its garbage is gone already, by reference
    counting). Nothing in a process that did not tune() (a test run's, say)."""
    if _tuned:
        gc.freeze()


async def collect_now_and_then() -> None:
    """Every FULL_COLLECTION_INTERVAL_S: unfreeze, collect everything, freeze again; logged with its pause."""
    while True:
        await asyncio.sleep(FULL_COLLECTION_INTERVAL_S)
        started = time.perf_counter()
        gc.unfreeze()
        found = gc.collect()
        if _tuned:
            gc.freeze()
        log.info("full garbage collection: %d objects freed in %.0f ms", found, (time.perf_counter() - started) * 1000)
