"""A worker app on a real RocksDB store whose batch protocol sends to a producer the test
controls: what the unit tests of worker/batch.py and worker/churn.py run on."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from journey.settings import Settings
from journey.worker.app import JourneyApp, create_app
from journey.worker.batch import BatchProtocol
from journey.worker.produce import BatchSender
from journey.worker.store import StateStore


def _append(items: list[Any], key: bytes | None, value: bytes | None, headers: Any) -> bool:
    assert isinstance(headers, list), "aiokafka's record builder takes headers as a list"
    items.append((key, value))
    return True


class Producer:
    """aiokafka's batch API; each produce batch is acknowledged (or failed) when the test says,
    or at once with ``auto_ack``."""

    def __init__(self, auto_ack: bool = False) -> None:
        self.auto_ack = auto_ack
        self.sent: list[tuple[str, int, list[tuple[bytes | None, bytes | None]], asyncio.Future[Any]]] = []
        self.offsets: dict[tuple[str, int], int] = {}

    def _ensure_producer(self) -> Producer:
        return self

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1}

    def create_batch(self) -> Any:
        items: list[tuple[bytes | None, bytes | None]] = []
        return SimpleNamespace(append=lambda key, value, timestamp, headers: _append(items, key, value, headers),
                               record_count=lambda: len(items), items=items)

    async def send_batch(self, batch: Any, topic: str, partition: int) -> asyncio.Future[Any]:
        ack: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.sent.append((topic, partition, batch.items, ack))
        if self.auto_ack:
            self.ack(topic)
        return ack

    def topics(self) -> list[str]:
        return [topic for topic, *_ in self.sent]

    def records(self, topic: str) -> list[tuple[bytes | None, bytes | None]]:
        return [item for t, _p, items, _a in self.sent if t == topic for item in items]

    def ack(self, topic: str, error: Exception | None = None) -> None:
        for t, partition, items, ack in self.sent:
            if t == topic and not ack.done():
                if error is not None:
                    ack.set_exception(error)
                    continue
                base = self.offsets.get((t, partition), 0)
                self.offsets[(t, partition)] = base + len(items)
                ack.set_result(SimpleNamespace(offset=base))


def worker_app(tmp_path: Path, **settings: Any) -> JourneyApp:
    defaults: dict[str, Any] = {"data_dir": tmp_path, "bootstrap_servers": "127.0.0.1:1", "partitions": 2}
    return create_app(Settings(**{**defaults, **settings}))


def attach_protocol(japp: JourneyApp, producer: Producer) -> tuple[BatchProtocol, list[Any], list[str]]:
    """Give ``japp`` a batch protocol on its RocksDB store and ``producer``; returns it with the
    list of input spans it acknowledged and the list of failures it reported."""
    acked: list[Any] = []
    failures: list[str] = []
    store = StateStore(japp.customers, cache_size=100)
    protocol = BatchProtocol(japp, store, BatchSender(producer), ack_offsets=acked.append, on_failure=failures.append)
    japp.batches = protocol
    return protocol, acked, failures


async def settle() -> None:
    for _ in range(30):
        await asyncio.sleep(0)
