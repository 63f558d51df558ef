"""The sidecar: a FastAPI app serving the merged live aggregates, and the process that runs it.

It holds no customer state: only the newest aggregate snapshot of each input partition (a few
KB each), read from the aggregates topic the workers publish to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

from fastapi import FastAPI

from journey.settings import Settings
from journey.sidecar.book import SnapshotBook
from journey.sidecar.consumer import SnapshotConsumer

log = logging.getLogger(__name__)

#: A snapshot older than this means its worker is gone (or stuck) and nobody has taken over yet.
STALE_AFTER_S = 10.0


def worker_urls(settings: Settings) -> list[str]:
    """Web addresses of the workers, for the customer lookup (any one will do; Faust routes)."""
    raw = settings.worker_urls
    urls = [u.strip() for u in raw.split(",") if u.strip()]
    return urls or [f"http://{settings.web_host}:{settings.web_port}"]


@dataclass
class SidecarState:
    settings: Settings
    book: SnapshotBook = field(default_factory=SnapshotBook)
    consumer: SnapshotConsumer = field(init=False)
    worker_urls: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.consumer = SnapshotConsumer(self.settings, self.book)
        if not self.worker_urls:
            self.worker_urls = worker_urls(self.settings)

    def ready(self) -> tuple[bool, dict[str, object]]:
        """Ready = Kafka reachable, the aggregates topic read to its end, a snapshot for every partition."""
        c = self.consumer
        missing = self.book.missing(c.input_partitions)
        ages = self.book.ages(time.time())
        detail: dict[str, object] = {
            "kafka": c.kafka_ok,
            "caught_up": c.caught_up,
            "partitions": c.input_partitions,
            "missing_partitions": missing,
            "stale_partitions": [p for p, a in ages.items() if a > STALE_AFTER_S],
            "workers": self.book.owners(),
        }
        return (c.kafka_ok and c.caught_up and not missing), detail


def create_sidecar(settings: Settings, *, consume: bool = True) -> FastAPI:
    """The sidecar's ASGI app. ``consume=False`` leaves the Kafka consumer off (tests feed the book)."""
    from journey.sidecar import routes
    from journey.sidecar.metrics import sidecar_registry

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
