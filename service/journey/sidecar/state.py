"""What the sidecar holds: the snapshot book, its consumer and where the workers are.

Its own module so that the app (journey.sidecar.app), its routes and its metrics all depend on
it and not on each other.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from journey.forget import request_forget
from journey.settings import Settings
from journey.sidecar.book import SnapshotBook
from journey.sidecar.consumer import SnapshotConsumer

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
    #: Publishes a forget request (customer id, reason) and returns its request id; tests replace it.
    forget: Callable[[str, str | None], Awaitable[str]] = field(init=False)

    def __post_init__(self) -> None:
        self.forget = lambda customer_id, reason: request_forget(self.settings, customer_id, reason=reason, source="api")
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
