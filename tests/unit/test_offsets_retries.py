"""true_highwaters' retry paths, against a scripted stand-in for AIOKafkaClient."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import NotLeaderForPartitionError, OffsetOutOfRangeError

from journey.kafka.offsets import HighwaterError, true_highwaters

TP0 = TopicPartition("t", 0)


@dataclass
class ScriptedClient:
    """Answers each Fetch with the next scripted (error_code, highwater); records fetch offsets."""

    leader: int | None
    answers: list[tuple[int, int]] = field(default_factory=list)
    fetched_at: list[int] = field(default_factory=list)
    metadata_refreshes: int = 0

    @property
    def cluster(self) -> Any:
        return SimpleNamespace(leader_for_partition=lambda tp: self.leader)

    async def add_topic(self, topic: str) -> bool:
        return True

    async def force_metadata_update(self) -> bool:
        self.metadata_refreshes += 1
        return True

    async def send(self, node_id: int, request: Any) -> Any:
        [(topic, [(partition, offset, _max_bytes)])] = request.topics
        self.fetched_at.append(offset)
        error_code, highwater = self.answers.pop(0)
        return SimpleNamespace(topics=[(topic, [(partition, error_code, highwater, 0, [], b"")])])


async def test_probes_one_below_the_hint() -> None:
    client = ScriptedClient(leader=1, answers=[(0, 17)])
    assert await true_highwaters(client, {TP0: 11}) == {TP0: 17}  # type: ignore[arg-type]
    assert client.fetched_at == [10]


async def test_offset_out_of_range_retries_at_the_hint() -> None:
    client = ScriptedClient(leader=1, answers=[(OffsetOutOfRangeError.errno, -1), (0, 5)])
    result = await true_highwaters(client, {TP0: 5}, retry_backoff_s=0)  # type: ignore[arg-type]
    assert result == {TP0: 5}
    assert client.fetched_at == [4, 5]


async def test_not_leader_refreshes_metadata_and_retries() -> None:
    client = ScriptedClient(leader=1, answers=[(NotLeaderForPartitionError.errno, -1), (0, 3)])
    result = await true_highwaters(client, {TP0: 3}, retry_backoff_s=0)  # type: ignore[arg-type]
    assert result == {TP0: 3}
    assert client.metadata_refreshes >= 1


async def test_gives_up_with_an_actionable_error_when_no_leader_is_known() -> None:
    client = ScriptedClient(leader=None)
    with pytest.raises(HighwaterError, match=r"t', partition=0.*no known leader"):
        await asyncio.wait_for(
            true_highwaters(client, {TP0: 0}, timeout_s=0.3, retry_backoff_s=0.05),  # type: ignore[arg-type]
            timeout=5,
        )
