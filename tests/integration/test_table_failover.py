"""A Faust table survives losing a worker: the survivor recovers every update.

Two worker processes of a tiny app (tests/support/failover_app.py) share the
load; one is killed with SIGKILL; the survivor takes over its partitions and
rebuilds their table entries from the changelog. On the embedded broker,
stock Faust recovery stops one record batch short of each changelog's end
(ListOffsets is wrong there); journey.worker.faust_internals (install_transport) fixes that.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from journey.kafka.admin import TopicSpec, ensure_topics
from journey.kafka.broker import free_port
from journey.kafka.offsets import true_highwaters
from support.env import subprocess_env
from support.kafka import listoffsets_is_wrong

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
APP_SCRIPT = REPO / "tests" / "support" / "failover_app.py"
HOUR_MS = 3600 * 1000

PARTITIONS = 4
KEYS = 50
UPDATES_PER_KEY = 60  # 3,000 updates
ROUNDS = 6  # each round is flushed separately: several record batches per partition
MAX_EXTRA_ROUNDS = 10  # more rounds, until the run crosses the broker's ListOffsets bug


@dataclass
class Worker:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def state(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/state/", timeout=2) as r:
                return json.loads(r.read())
        except OSError:
            return None

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])
            raise AssertionError(f"worker {self.name} exited ({self.process.returncode}):\n{tail}")


@dataclass
class FailoverResult:
    updates: int
    survivor_sum: int
    #: How many changelog records of the victim's partitions lie past what ListOffsets reports
    #: (the broker bug), when the victim was killed.
    changelog_unreported: int
    #: Updates the survivor's agent took from the input before the kill and after the take-over:
    #: equal when it re-read nothing, so that all it holds of the victim's keys came from the changelog.
    survivor_processed_before: int
    survivor_processed_after: int
    timings_s: dict[str, float] = field(default_factory=dict)


def _start_worker(name: str, broker: str, app_id: str, topic: str, root: Path, fix: bool) -> Worker:
    data_dir = root / name
    data_dir.mkdir(parents=True)
    port = free_port()
    env = {
        **subprocess_env(),
        "FAILOVER_BROKER": broker,
        "FAILOVER_APP_ID": app_id,
        "FAILOVER_TOPIC": topic,
        "FAILOVER_PARTITIONS": str(PARTITIONS),
        "FAILOVER_WEB_PORT": str(port),
        "FAILOVER_DATA_DIR": str(data_dir),
        "FAILOVER_TRUE_HIGHWATERS": "1" if fix else "0",
    }
    log_path = root / f"{name}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(APP_SCRIPT)],
            env=env,
            cwd=data_dir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return Worker(name, port, process, log_path)


async def _wait_for(
    what: str, check: Callable[[], Any], workers: list[Worker], timeout_s: float
) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        for w in workers:
            w.check_alive()
        result = await asyncio.to_thread(check)
        if result:
            return result
        if time.monotonic() > deadline:
            logs = {w.name: w.log_path for w in workers}
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}; logs: {logs}")
        await asyncio.sleep(0.5)


def _settled(state: dict[str, Any] | None, partitions: list[int]) -> bool:
    return bool(
        state
        and state["settled"] == partitions
        and state["actives"] == partitions
        and not state["in_recovery"]
        and not state["rebalancing"]
    )


async def _produce_updates(broker: str, topic: str, rounds: range = range(ROUNDS)) -> int:
    """Each round: the next ``UPDATES_PER_KEY // ROUNDS`` seqs of every key, then a flush."""
    producer = AIOKafkaProducer(bootstrap_servers=broker, linger_ms=5)
    await producer.start()
    sent = 0
    try:
        per_round = UPDATES_PER_KEY // ROUNDS
        for r in rounds:
            for i in range(per_round):
                seq = r * per_round + i + 1
                for k in range(KEYS):
                    key = f"customer-{k:03d}".encode()
                    await producer.send(topic, json.dumps({"seq": seq}).encode(), key=key)
                    sent += 1
            await producer.flush()
    finally:
        await producer.stop()
    return sent


async def _wait_offsets_committed(broker: str, group: str, topic: str, timeout_s: float) -> None:
    # Once the workers have committed everything they processed, the survivor
    # will not re-run the victim's events: its table then only has what recovery gave it.
    consumer = AIOKafkaConsumer(bootstrap_servers=broker, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        ends = await true_highwaters(consumer._client, await consumer.end_offsets(tps))
        deadline = time.monotonic() + timeout_s
        while True:
            committed = {tp: await consumer.committed(tp) for tp in tps}
            if all(committed[tp] == ends[tp] for tp in tps):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"group {group} committed {committed}, log ends {ends}")
            await asyncio.sleep(0.5)
    finally:
        await consumer.stop()


async def _changelog_unreported(broker: str, changelog: str) -> dict[int, int]:
    """Per partition: how many changelog records lie past what ListOffsets reports."""
    consumer = AIOKafkaConsumer(bootstrap_servers=broker)
    await consumer.start()
    try:
        tps = [TopicPartition(changelog, p) for p in range(PARTITIONS)]
        hints = await consumer.end_offsets(tps)
        ends = await true_highwaters(consumer._client, hints)
        return {tp.partition: ends[tp] - hints[tp] for tp in tps}
    finally:
        await consumer.stop()


async def run_failover(broker: str, root: Path, *, fix: bool) -> FailoverResult:
    """Two workers, 3,000 keyed updates (and more rounds until the run crosses the broker's bug),
    SIGKILL one, read the survivor's table."""
    run_id = uuid.uuid4().hex[:8]
    app_id = f"failover-{run_id}"
    topic = f"failover-updates-{run_id}"
    changelog = f"{app_id}-latest-changelog"
    await ensure_topics(
        broker,
        [
            TopicSpec(topic, PARTITIONS, 1, HOUR_MS),
            TopicSpec(changelog, PARTITIONS, 1, HOUR_MS, cleanup_policy="compact"),
        ],
    )
    all_partitions = list(range(PARTITIONS))
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    survivor = _start_worker("survivor", broker, app_id, topic, root, fix)
    victim = _start_worker("victim", broker, app_id, topic, root, fix)
    workers = [survivor, victim]
    try:

        def both_working() -> bool:
            states = [w.state() for w in workers]
            if not all(states):
                return False
            held = sorted(p for s in states for p in s["settled"])
            return held == all_partitions and all(
                s["settled"] and s["settled"] == s["actives"] and not s["in_recovery"] for s in states
            )

        await _wait_for("both workers to share all partitions", both_working, workers, 180)
        timings["start_and_first_rebalance"] = time.monotonic() - t0

        t1 = time.monotonic()
        updates = await _produce_updates(broker, topic)

        def all_processed() -> bool:
            states = [w.state() for w in workers]
            return all(states) and sum(s["sum"] for s in states) == updates

        await _wait_for("the workers to apply every update", all_processed, workers, 60)
        await _wait_offsets_committed(broker, app_id, topic, 60)
        unreported = await _changelog_unreported(broker, changelog)
        # Whether the run crosses the broker's bug depends on how the workers' changelog writes
        # were batched (a last batch of one record is reported right). On a broker with the bug,
        # go on with more rounds until a changelog partition the survivor must recover has
        # records past the reported end; on a correct broker there is nothing to cross.
        victim_partitions = victim.state()["settled"]  # type: ignore[index]
        extra_rounds = 0
        if await listoffsets_is_wrong(broker):
            while not any(unreported[p] for p in victim_partitions) and extra_rounds < MAX_EXTRA_ROUNDS:
                updates += await _produce_updates(broker, topic, range(ROUNDS + extra_rounds, ROUNDS + extra_rounds + 1))
                extra_rounds += 1
                await _wait_for("the workers to apply every update", all_processed, workers, 60)
                await _wait_offsets_committed(broker, app_id, topic, 60)
                unreported = await _changelog_unreported(broker, changelog)
        timings["produce_and_process"] = time.monotonic() - t1
        processed_before = survivor.state()["processed"]  # type: ignore[index]

        t2 = time.monotonic()
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait()
        workers = [survivor]

        def survivor_settled() -> dict[str, Any] | None:
            state = survivor.state()
            return state if _settled(state, all_partitions) else None

        await _wait_for("the survivor to take over and recover", survivor_settled, workers, 180)
        timings["failover_and_recovery"] = time.monotonic() - t2
        # Recovery is done once the settled survivor holds every update; a short one never gets
        # there: give it a deadline, then report what it holds.
        last: list[dict[str, Any]] = []

        def survivor_complete() -> bool:
            state = survivor_settled()
            if state is not None:
                last[:] = [state]
            return state is not None and state["sum"] >= updates

        try:
            await _wait_for("the survivor's table to hold every update", survivor_complete, workers, 30)
        except AssertionError:
            if not last:
                raise
        final = last[0]
        unreported_victim = sum(unreported[p] for p in victim_partitions)
        return FailoverResult(updates, final["sum"], unreported_victim, processed_before, final["processed"], timings)
    finally:
        for w in (survivor, victim):
            if w.process.poll() is None:
                w.process.kill()
                w.process.wait()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def failover(broker: str, tmp_path_factory: pytest.TempPathFactory) -> FailoverResult:
    """One fail-over run for the module's tests (it takes a minute)."""
    result = await run_failover(broker, tmp_path_factory.mktemp("table-failover"), fix=True)
    print(f"\nfailover: {result}")
    return result


async def test_survivor_recovers_every_update(failover: FailoverResult) -> None:
    """On any broker: the survivor holds every update, and from the changelog (it re-read no input)."""
    assert failover.updates >= KEYS * UPDATES_PER_KEY and failover.updates % KEYS == 0
    assert failover.survivor_processed_after == failover.survivor_processed_before, (
        "the survivor re-read input after the take-over: its table does not show what recovery restored"
    )
    assert failover.survivor_sum == failover.updates


async def test_the_run_crossed_the_brokers_listoffsets_bug(broker: str, failover: FailoverResult) -> None:
    """On the embedded broker, ListOffsets reports less than the changelog holds, so stock Faust
    recovery would have stopped short and the test above shows the workaround works. A broker that
    answers correctly has nothing to work around: then there is nothing to show here."""
    if not await listoffsets_is_wrong(broker):
        pytest.skip("this broker answers ListOffsets correctly: there is no short changelog end to "
                    "work around (the fail-over above is still checked in full)")
    assert failover.changelog_unreported > 0, "the broker has the bug, but the run did not cross it: the scenario tests less than it says"
