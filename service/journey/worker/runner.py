"""Running the worker process: Faust's worker, journey's logging, and a bounded shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from typing import Any

from journey.kafka.admin import check_reachable
from journey.kafka.security import client_options
from journey.logs import identity, logging_config
from journey.settings import Settings, unknown_variables
from journey.worker import garbage
from journey.worker.app import create_app
from journey.worker.batch import EXIT_BATCH_FAILED
from journey.worker.faust_internals import StopSignalWorker

log = logging.getLogger("journey.worker")

#: The exit code of a worker whose stop did not finish in time: what it had not committed is
#: replayed by whoever owns its partitions next (the same as a failed batch).
EXIT_STOP_TIMED_OUT = EXIT_BATCH_FAILED


class _LastRecord(logging.Handler):
    """Remembers the last step Faust or journey logged (what a stuck shutdown was doing; the
    Kafka client's connection errors say nothing about that)."""

    SOURCES = ("faust", "mode", "journey")

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith(self.SOURCES) or record.name == log.name:
            return
        try:
            self.last = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad log call must not break the watchdog
            pass


class ShutdownWatchdog:
    """Ends the process ``timeout_s`` after a stop was asked for, if Faust's own stop has not.

    Faust's stop waits without limit for things that need the brokers (the producer's flush,
    leaving the group, the last commit); with the brokers gone it never ends. The watchdog is a
    thread, so it fires even when the event loop is stuck. It exits with EXIT_STOP_TIMED_OUT:
    nothing uncommitted is lost, whoever owns the partitions next replays it."""

    def __init__(self, timeout_s: float, *, exit: Any = os._exit) -> None:
        self.timeout_s = timeout_s
        self._exit = exit
        self._timer: threading.Timer | None = None
        self._reason = ""
        self._started = 0.0
        self._last = _LastRecord()
        self._stopped_code: int | None = None

    @property
    def armed(self) -> bool:
        return self._timer is not None

    def arm(self, reason: str) -> None:
        """Start counting (once). The same signal a second time ends the process at once (an
        impatient Ctrl-C); another one does not (SIGINT from the terminal, then SIGTERM)."""
        if self._timer is not None:
            if reason == self._reason:
                self.fire(f"{reason} again")
            return
        self._reason, self._started = reason, time.monotonic()
        logging.getLogger().addHandler(self._last)
        # Fire a little early, so the process is gone within timeout_s of the signal.
        delay = max(self.timeout_s - 1.0, self.timeout_s / 2)
        self._timer = threading.Timer(delay, self.fire)
        self._timer.daemon = True
        self._timer.start()
        log.info("%s: stopping; the worker exits within %.0f s, finished or not", reason, self.timeout_s)

    def stopped(self, code: object) -> None:
        """Faust's stop has finished (exit ``code``): should the process still not end in time
        (finalizing), the watchdog ends it with that code, not EXIT_STOP_TIMED_OUT."""
        self._stopped_code = code if isinstance(code, int) else 0 if code is None else 1

    def fire(self, why: str | None = None) -> None:
        waited = time.monotonic() - self._started if self._started else 0.0
        code = EXIT_STOP_TIMED_OUT if self._stopped_code is None else self._stopped_code
        if self._stopped_code is not None:
            log.warning("the worker stopped, but its process did not end within %.1f s; ending it (exit code %d)", waited, code)
        else:
            log.critical(
                "%s: the worker did not stop within %.1f s (%s; last step: %s); exiting with code %d: what it had "
                "not committed is replayed by whoever owns its partitions next",
                self._reason or "stop", waited, why or f"JOURNEY_SHUTDOWN_TIMEOUT_S={self.timeout_s:g}",
                self._last.last or "none logged", code,
            )
        for stream in (*logging.getLogger().handlers, sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - exiting anyway
                pass
        self._exit(code)


class JourneyWorker(StopSignalWorker):
    """faust.Worker without the terminal spinner, with a bounded stop.

    The spinner makes Faust raise the root log level to DEBUG to animate it, and formatting
    every debug record alone costs about a fifth of the throughput. SIGTERM and SIGINT arm a
    :class:`ShutdownWatchdog` before Faust's own stop begins.
    """

    def __init__(self, *args: Any, shutdown_timeout_s: float = 30.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spinner = None
        self.watchdog = ShutdownWatchdog(shutdown_timeout_s)

    def on_stop_signal(self, name: str) -> None:
        self.watchdog.arm(name)

    def on_worker_shutdown(self) -> None:
        # Also a stop nobody signalled (a crash): its shutdown is bounded the same way.
        if not self.watchdog.armed:
            self.watchdog.arm("worker stopping")
        super().on_worker_shutdown()


def worker_logging(settings: Settings) -> dict[str, Any] | None:
    """The worker's logging config for Faust's worker (None: Faust's own, colored when on a terminal)."""
    if settings.log_format == "text":
        return None
    ident = identity("worker", app_id=settings.app_id, web_host=settings.web_host, port=settings.web_port)
    return logging_config(settings.log_format, settings.log_level, ident)


def run_worker(settings: Settings) -> None:
    """Start a worker in this process and block until it is stopped (SIGINT/SIGTERM); exits the
    process (0: stopped cleanly; 70: the stop timed out, see ShutdownWatchdog)."""
    asyncio.run(check_reachable(settings.bootstrap_servers, client_options=client_options(settings),
                                waiting=lambda text: print(f"journey: {text}", file=sys.stderr, flush=True)))
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    japp = create_app(settings)
    japp.app.task(garbage.collect_now_and_then)
    garbage.tune()
    worker = JourneyWorker(
        japp.app,
        loglevel=settings.log_level.upper(),
        workdir=str(settings.data_dir),
        logging_config=worker_logging(settings),
        # JSON: nothing but log records on stdout (Faust's worker prints a few words otherwise).
        quiet=settings.log_format == "json",
        shutdown_timeout_s=settings.shutdown_timeout_s,
    )
    logging.getLogger("journey").setLevel(settings.log_level.upper())
    japp.app.task(_warn_unknown_variables)
    try:
        worker.execute_from_commandline()
    except SystemExit as done:
        worker.watchdog.stopped(done.code)
        raise


async def _warn_unknown_variables() -> None:
    for name in unknown_variables():
        log.warning("%s is set but is no journey setting (a typo? see `journey config --help`); it is ignored", name)


__all__ = ["EXIT_STOP_TIMED_OUT", "JourneyWorker", "ShutdownWatchdog", "run_worker"]
