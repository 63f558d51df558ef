"""StateWrites' stages, against a real RocksDB (rocksdict) and a fake producer: what makes the
batch ingest durable while it runs a batch ahead of its acknowledgements."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import rocksdict

from journey.core.state import CustomerState
from journey.worker.produce import BatchSender
from journey.worker.statewrites import StateWrites


class _Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.dbs: dict[int, rocksdict.Rdict] = {}
        self.persisted: dict[Any, int] = {}

    def _db_for_partition(self, partition: int) -> rocksdict.Rdict:
        if partition not in self.dbs:
            self.dbs[partition] = rocksdict.Rdict(str(self.root / str(partition)), options=rocksdict.Options(raw_mode=True))
        return self.dbs[partition]

    def set_persisted_offset(self, tp: Any, offset: int) -> None:
        self.persisted[tp] = offset


class _Producer:
    """Acknowledges a produce batch when the test says so."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, list]] = []
        self.buffer = SimpleNamespace(flush=self._flush)

    async def _flush(self) -> None:
        return None

    def _ensure_producer(self) -> "_Producer":
        return self

    def create_batch(self) -> Any:
        items: list = []
        return SimpleNamespace(append=lambda key, value, timestamp: items.append((key, value)) or True,
                               record_count=lambda: len(items), items=items)

    async def send_batch(self, batch: Any, topic: str, partition: int) -> asyncio.Future:
        self.sent.append((topic, partition, batch.items))
        ack = asyncio.get_running_loop().create_future()
        ack.set_result(SimpleNamespace(offset=len(self.sent) * 100))
        return ack


def _writes(tmp_path: Path) -> tuple[StateWrites, _Store, _Producer]:
    store, producer = _Store(tmp_path), _Producer()
    table = SimpleNamespace(data=store, changelog_topic=SimpleNamespace(get_topic_name=lambda: "changelog"))
    app = SimpleNamespace(producer=producer)
    return StateWrites(app, table, BatchSender(producer), cache_size=100), store, producer


def _state(events: int) -> CustomerState:
    st = CustomerState()
    st.events = events
    st.partition = 0
    return st


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_stages_write_in_order_after_their_outputs_with_the_state_as_staged(tmp_path):
    writes, store, producer = _writes(tmp_path)
    outputs_a = asyncio.get_running_loop().create_future()
    outputs_b = asyncio.get_running_loop().create_future()
    state = _state(1)
    a = writes.stage([("c1", 0, state)], after=[outputs_a])
    state.events = 2  # the next batch changes the same object in place
    b = writes.stage([("c1", 0, state)], after=[outputs_b])
    state.events = 3  # ... and the one after, not yet staged

    outputs_b.set_result(None)  # the later batch's outputs are acknowledged first
    await _settle()
    assert store._db_for_partition(0).get(b"c1") is None, "a stage was written before the one staged earlier"
    assert not producer.sent

    outputs_a.set_result(None)
    await asyncio.wait_for(asyncio.gather(a, b), timeout=2)
    assert CustomerState.from_wire(store._db_for_partition(0).get(b"c1")).events == 2
    assert [CustomerState.from_wire(items[0][1]).events for _, _, items in producer.sent] == [1, 2]
    assert writes.read("c1", 0) is state  # the cache hands out the live object


async def test_a_stage_whose_outputs_failed_writes_nothing_and_nor_do_later_ones(tmp_path):
    writes, store, producer = _writes(tmp_path)
    failed = asyncio.get_running_loop().create_future()
    a = writes.stage([("c1", 0, _state(1))], after=[failed])
    b = writes.stage([("c2", 0, _state(1))])
    failed.set_exception(RuntimeError("outputs not acknowledged"))
    for stage in (a, b):
        with pytest.raises(RuntimeError, match="not acknowledged"):
            await asyncio.wait_for(stage, timeout=2)
    assert store._db_for_partition(0).get(b"c1") is None and store._db_for_partition(0).get(b"c2") is None
    assert not producer.sent

