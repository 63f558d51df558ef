"""Running the worker process."""

from __future__ import annotations

import gc
import logging
from typing import Any

import faust

from journey.settings import Settings
from journey.worker.app import create_app


class JourneyWorker(faust.Worker):
    """faust.Worker without the terminal spinner.

    The spinner makes Faust raise the root log level to DEBUG to animate it, and formatting
    every debug record alone costs about a fifth of the throughput.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spinner = None


def run_worker(settings: Settings) -> None:
    """Start a worker in this process and block until it is stopped (SIGINT/SIGTERM)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    japp = create_app(settings)
    japp.app.task(collect_now_and_then)
    tune_gc()
    worker = JourneyWorker(japp.app, loglevel=settings.log_level.upper(), workdir=str(settings.data_dir))
    logging.getLogger("journey").setLevel(settings.log_level.upper())
    worker.execute_from_commandline()


def tune_gc() -> None:
    """Collect cycles less often than Python's default, and never scan the long-lived heap.

    A batch allocates tens of thousands of short-lived objects (decoded events, outputs) while
    the state cache holds millions of long-lived ones. With the default thresholds the young
    collections run hundreds of times per second, and every full collection walks the whole
    cache: a pause of hundreds of milliseconds, every few seconds while the cache grows. The
    states hold no reference cycles (reference counting frees them), so full collections are
    left to :func:`collect_now_and_then`; young collections still free short-lived cycles.
    """
    gc.collect()
    gc.freeze()  # what was imported and built at start-up is never collected: stop scanning it
    gc.set_threshold(10_000, 50, FULL_COLLECTION_NEVER)


#: A third-generation threshold the worker never reaches (gen 1 collections between two full ones).
FULL_COLLECTION_NEVER = 1_000_000_000
#: How often the worker runs a full collection itself (long-lived cyclic garbage, if any).
FULL_COLLECTION_INTERVAL_S = 900.0


async def collect_now_and_then() -> None:
    """A full collection every FULL_COLLECTION_INTERVAL_S, logged with its pause."""
    import asyncio
    import time

    log = logging.getLogger("journey.worker")
    while True:
        await asyncio.sleep(FULL_COLLECTION_INTERVAL_S)
        t0 = time.perf_counter()
        found = gc.collect()
        log.info("full garbage collection: %d objects freed in %.0f ms", found, (time.perf_counter() - t0) * 1000)
