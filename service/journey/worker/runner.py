"""Running the worker process."""

from __future__ import annotations

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
    worker = JourneyWorker(japp.app, loglevel=settings.log_level.upper(), workdir=str(settings.data_dir))
    logging.getLogger("journey").setLevel(settings.log_level.upper())
    worker.execute_from_commandline()
