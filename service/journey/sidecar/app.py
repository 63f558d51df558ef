"""The sidecar: a FastAPI app serving the merged live aggregates, and the process that runs it.

It holds no customer state: only the newest aggregate snapshot of each input partition (a few
KB each), read from the aggregates topic the workers publish to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from journey.settings import Settings
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


def run_sidecar(settings: Settings) -> None:
    """Serve the sidecar on settings.sidecar_host:sidecar_port until stopped."""
    import uvicorn

    logging.basicConfig(level=settings.log_level.upper(), format="[%(asctime)s] [%(levelname)s] %(name)s: %(message)s")
    uvicorn.run(
        create_sidecar(settings), host=settings.sidecar_host, port=settings.sidecar_port,
        log_level=settings.log_level.lower(), access_log=False,
    )
