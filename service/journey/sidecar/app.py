"""The sidecar: a FastAPI app serving the merged live aggregates, and the process that runs it.

It holds no customer state: only the newest aggregate snapshot of each input partition (a few
KB each), read from the aggregates topic the workers publish to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import logging.config
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from journey.logs import identity, logging_config
from journey.settings import Settings, unknown_variables
from journey.sidecar import routes
from journey.sidecar.metrics import sidecar_registry
from journey.sidecar.state import SidecarState

log = logging.getLogger(__name__)


def create_sidecar(settings: Settings, *, consume: bool = True) -> FastAPI:
    """The sidecar's ASGI app. ``consume=False`` leaves the Kafka consumer off (tests feed the book)."""
    state = SidecarState(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(state.consumer.run()) if consume else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app = FastAPI(
        title="journey sidecar",
        description="Live journey numbers merged from the workers' per-partition aggregates.",
        lifespan=lifespan,
    )
    app.state.journey = state
    app.state.registry = sidecar_registry(state)
    app.include_router(routes.router)
    return app


def sidecar_logging(settings: Settings) -> dict[str, Any]:
    """The logging config of the sidecar's process: its own, uvicorn's and the access log, in
    JOURNEY_LOG_FORMAT (customer ids masked in the access log)."""
    ident = identity("sidecar", app_id=settings.app_id, port=settings.sidecar_port)
    return logging_config(settings.log_format, settings.log_level, ident, uvicorn=True)


def run_sidecar(settings: Settings) -> None:
    """Serve the sidecar on settings.sidecar_host:sidecar_port until stopped."""
    import uvicorn

    config = sidecar_logging(settings)
    logging.config.dictConfig(config)  # before the app is built: its start-up logs too
    for name in unknown_variables():
        log.warning("%s is set but is no journey setting (a typo? see `journey config --help`); it is ignored", name)
    if settings.api_token is not None and settings.control_secret is None:
        # DELETE /customers/{id} would answer 202 for a request that workers with a secret ignore.
        log.warning("JOURNEY_CONTROL_SECRET is not set on the sidecar: DELETE /customers/{id} signs forget requests with "
                    "a key derived from the app id, and workers that run with a secret ignore them "
                    "(journey_privacy_requests_total{outcome=\"unsigned\"}); set the workers' secret here too")
    uvicorn.run(
        create_sidecar(settings), host=settings.sidecar_host, port=settings.sidecar_port,
        log_level=settings.log_level, log_config=config, access_log=settings.access_log,
    )
