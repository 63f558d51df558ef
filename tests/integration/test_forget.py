"""Forgetting a customer end to end, on the real broker with two worker processes, one killed
with SIGKILL while the forget is on its way.

A stream of customers flows; one of them (with a linked anonymous id) is forgotten with
`journey forget` in the middle of it; the worker that owns that customer is killed right after
the request is acknowledged, and the survivor takes its partitions over (the relay's request and
the batch protocol's steps replayed from the last commit). Then: the customer and the anonymous
id answer 404 (worker and sidecar), their changelog keys end with a tombstone (read to the true
end), every other customer's state and the live counts (worker and sidecar /stages) are exact, later touchpoints of both ids are dropped and
counted, customer_forgotten is on the privacy topic, and the same request replayed changes
nothing.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import murmur2

from journey.core.privacy import marker_key, salt_key
from journey.kafka.broker import free_port
from journey.kafka.offsets import true_highwaters
from journey.worker.app import changelog_topic_name
from support.env import subprocess_env
from support.kafka import produce, read_all, read_to_end, touchpoint_record, wait_committed
from support.workers import (
    WorkerProcess,
    create_topics,
    namespaced_settings,
    settings_env,
    stop_all,
    wait_owns_all,
    wait_shared,
    wait_until_processing,
)

pytestmark = pytest.mark.integration

TOKEN = "forget-token"
TARGET, DEVICE = "fg-target", "fg-device"
OTHERS = [f"fg-{i}" for i in range(16)]
T0 = datetime(2024, 9, 1, tzinfo=UTC)
SUPPRESSED = "journey_suppressed_records_total"
RELAYED = "journey_privacy_requests_total"


def at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat()


def tp(event_id: str, etype: str, minutes: float, *, customer: str | None = None, anonymous: str | None = None,
       **props: Any) -> tuple[bytes, bytes]:
    event: dict[str, Any] = {"event_id": event_id, "type": etype, "timestamp": at(minutes)}
    if customer is not None:
        event["customer_id"] = customer
    if anonymous is not None:
        event["anonymous_id"] = anonymous
    if props:
        event["properties"] = props
    return touchpoint_record(event)


def status(worker: WorkerProcess, customer: str) -> int:
    return status_at(f"{worker.url}/customers/{customer}")


def status_at(url: str) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def get_json(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return orjson.loads(r.read())  # type: ignore[no-any-return]
    except (urllib.error.URLError, OSError):
        return {}


async def read_raw(bootstrap: str, topic: str) -> list[Any]:
    """Every record of ``topic`` (key, value, headers) up to its true end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or await _partitions(consumer, topic))]
        ends = await true_highwaters(consumer._client, await consumer.end_offsets(tps))
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[Any] = []
        deadline = time.monotonic() + 30

        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in tps])

        while await behind() and time.monotonic() < deadline:
            for msgs in (await consumer.getmany(timeout_ms=300, max_records=5000)).values():
                out.extend(msgs)
        assert not await behind(), f"{topic} not read to its end {ends}"
        return out
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    for _ in range(50):
        await consumer.force_metadata_update()  # type: ignore[attr-defined]
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return parts
        await asyncio.sleep(0.2)
    raise AssertionError(f"no metadata for {topic}")


async def test_forget_mid_stream_with_a_worker_killed_during_it(broker: str, tmp_path) -> None:
    settings = namespaced_settings(broker, "forget", session_timeout_s=10.0, api_token=TOKEN)
    await create_topics(settings)
    workers = {"a": WorkerProcess(settings, tmp_path / "a"), "b": WorkerProcess(settings, tmp_path / "b")}
    sidecar_port = free_port()
    sidecar_log = open(tmp_path / "sidecar.log", "wb")  # noqa: SIM115 - closed with the process
    sidecar = None
    try:
        for w in workers.values():
            w.start()
        sidecar = subprocess.Popen(
            [sys.executable, "-m", "journey.cli", "sidecar"], stdout=sidecar_log, stderr=subprocess.STDOUT, cwd=tmp_path,
            env=subprocess_env(settings_env(settings), {
                "JOURNEY_SIDECAR_PORT": str(sidecar_port),
                "JOURNEY_WORKER_URLS": ",".join(w.url for w in workers.values()),
            }),
        )
        await wait_until_processing(settings, list(workers.values()))
        await wait_shared(list(workers.values()), settings.partitions)  # the target's owner is one of the two
        any_worker = workers["a"]

        # Phase 1: everyone views a product; the target browses anonymously, then adds to cart
        # logged in (which links the device to them: link, then merge).
        await produce(broker, settings.topic_touchpoints, [
            tp(f"{c}-v", "product_view", 0, customer=c) for c in OTHERS
        ] + [tp("t-anon", "page_view", 0, anonymous=DEVICE), tp("t-cart", "add_to_cart", 5, customer=TARGET, anonymous=DEVICE)])
        deadline = time.monotonic() + 60
        view: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            view = any_worker.view(TARGET, TOKEN)
            if view is not None and view.get("touchpoints") == 2:  # merged: its own touch and the device's
                break
            await asyncio.sleep(0.3)
        assert view is not None and view["touchpoints"] == 2, f"the device was not merged into the target: {view}"
        assert (any_worker.view(DEVICE, TOKEN) or {}).get("linked_to") == TARGET

        # Phase 2: the stream goes on while the forget is asked for; the target's owner dies
        # right after the request is acknowledged.
        owner_partition = (murmur2(TARGET.encode()) & 0x7FFFFFFF) % settings.partitions
        owner = next(n for n, w in workers.items() if owner_partition in w.readyz().get("partitions", []))
        survivor = workers["b" if owner == "a" else "a"]

        async def trickle() -> None:
            for i, c in enumerate(OTHERS):
                await produce(broker, settings.topic_touchpoints, [tp(f"{c}-c", "add_to_cart", 10 + i, customer=c)])
                await asyncio.sleep(0.05)

        stream = asyncio.create_task(trickle())
        await asyncio.sleep(0.3)
        env = subprocess_env(settings_env(settings))
        cli = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "journey.cli", "forget", TARGET, "--reason", "test: art. 17"],
            env=env, capture_output=True, text=True, timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        request_id = cli.stdout.split("request_id=")[1].split()[0]
        await asyncio.sleep(0.2)  # the relay and the owner's batch are on their way
        workers[owner].kill()
        await stream
        await wait_owns_all(survivor, settings.partitions, timeout_s=180)

        # Phase 3: later touchpoints of the forgotten ids, and more for everyone else.
        later = [
            tp("t-late-1", "purchase", 30, customer=TARGET, order_id="o-t", amount=10.0, currency="EUR"),
            tp("t-late-2", "product_view", 31, anonymous=DEVICE),
            tp("t-late-3", "page_view", 32, customer=TARGET, anonymous=DEVICE),
        ]
        buyers = OTHERS[::2]
        await produce(broker, settings.topic_touchpoints, later + [
            tp(f"{c}-p", "purchase", 40, customer=c, order_id=f"{c}-o", amount=5.0, currency="EUR") for c in buyers
        ])
        await wait_committed(broker, settings.app_id, settings.topic_touchpoints, timeout_s=90, check=survivor.check_alive)

        def notices(msgs: list[Any]) -> list[dict[str, Any]]:
            return [m for m in msgs if m.get("type") == "customer_forgotten"]

        # The owner may have died before it relayed the request: the survivor relays it once it
        # reads the privacy topic, maybe only after the input above was committed. Once it is
        # applied, the input is settled again (a replayed batch of the owner's included).
        first = notices(await read_all(broker, settings.topic_privacy, until=lambda m: bool(notices(m)), timeout_s=60))
        assert first, "no customer_forgotten was published"
        await wait_committed(broker, settings.app_id, settings.topic_touchpoints, timeout_s=90, check=survivor.check_alive)
        first = notices(await read_to_end(broker, settings.topic_privacy))
        # The same request again, exactly as it was published (a replay by the relay or a retry).
        requests = [r for r in await read_raw(broker, settings.topic_privacy)
                    if orjson.loads(r.value).get("type") == "forget_requested"]
        assert [orjson.loads(r.value)["request_id"] for r in requests] == [request_id]
        relayed = survivor.metric(RELAYED, outcome="relayed")
        producer = AIOKafkaProducer(bootstrap_servers=broker, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(settings.topic_privacy, requests[0].value, key=requests[0].key,
                                         headers=list(requests[0].headers))
        finally:
            await producer.stop()
        deadline = time.monotonic() + 30
        while survivor.metric(RELAYED, outcome="relayed") <= relayed and time.monotonic() < deadline:
            await asyncio.sleep(0.3)
        assert survivor.metric(RELAYED, outcome="relayed") > relayed, "the replayed request was not relayed"
        await produce(broker, settings.topic_touchpoints, [tp("t-late-4", "purchase", 50, customer=TARGET, order_id="o-t2")])
        await wait_committed(broker, settings.app_id, settings.topic_touchpoints, timeout_s=90, check=survivor.check_alive)

        # The state is gone: both ids answer 404, as an id never seen does.
        assert status(survivor, TARGET) == 404 and status(survivor, DEVICE) == 404
        assert status(survivor, "fg-never-seen") == 404
        # ... from the changelog too, read to its true end: the last record of each key is a tombstone,
        # and each id's suppression marker (a salted hash, no id) is there.
        last: dict[bytes, bytes | None] = {}
        for r in await read_raw(broker, changelog_topic_name(settings)):
            last[r.key] = r.value
        assert TARGET.encode() in last and last[TARGET.encode()] is None, "no tombstone for the forgotten customer"
        assert DEVICE.encode() in last and last[DEVICE.encode()] is None, "no tombstone for the forgotten device"
        salt = salt_key(None, settings.app_id)
        for profile in (TARGET, DEVICE):
            assert last.get(marker_key(salt, profile).encode()) is not None, f"no suppression marker for {profile}"
        assert not any(TARGET.encode() in (v or b"") or DEVICE.encode() in (v or b"") for v in last.values()), \
            "a surviving changelog record names a forgotten id"

        # Everyone else is exact: their state, and the live counts per stage.
        for c in OTHERS:
            v = survivor.view(c, TOKEN)
            expected = ("purchase", 3, 1) if c in buyers else ("decision", 2, 0)
            assert v is not None and (v["stage"], v["touchpoints"], v["purchases"]) == expected, (c, v)
        expected_counts = Counter({"purchase": len(buyers), "decision": len(OTHERS) - len(buyers),
                                   "awareness": settings.partitions})  # the probes
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            counts = Counter({s: int(survivor.metric("journey_customers", stage=s))
                              for s in ("awareness", "consideration", "decision", "purchase", "retention", "advocacy", "none")})
            if +counts == expected_counts:
                break
            await asyncio.sleep(0.5)
        assert +counts == expected_counts, f"live counts {dict(+counts)} != {dict(expected_counts)}"
        # ... and so are the sidecar's, which answers 404 for both forgotten ids too.
        sidecar_url = f"http://127.0.0.1:{sidecar_port}"
        deadline = time.monotonic() + 15
        stages: dict[str, int] = {}
        while time.monotonic() < deadline:
            stages = await asyncio.to_thread(get_json, f"{sidecar_url}/stages")
            if +Counter(stages.get("stages", {})) == expected_counts:
                break
            await asyncio.sleep(0.5)
        assert +Counter(stages.get("stages", {})) == expected_counts, f"the sidecar's /stages: {stages}"
        for profile in (TARGET, DEVICE):
            assert await asyncio.to_thread(status_at, f"{sidecar_url}/customers/{profile}") == 404
        assert await asyncio.to_thread(status_at, f"{sidecar_url}/customers/{OTHERS[0]}") == 200

        # Later touchpoints were dropped (counted, not dead-lettered), and moved nobody.
        assert survivor.metric(SUPPRESSED) >= 4
        transitions = await read_to_end(broker, settings.topic_transitions)
        late = {m["trigger_event_id"] for m in transitions if m["customer_id"] == TARGET}
        assert late <= {"t-cart", "t-anon"}, f"a forgotten customer moved: {late}"
        dead = await read_to_end(broker, settings.topic_dead_letter)
        assert not any(TARGET in (d.get("value") or "") for d in dead), "a forgotten id's touchpoint was dead-lettered"

        # customer_forgotten: published with the request id, naming the device (more than once only
        # if the kill made the owner's batch replay); the replayed request published nothing more.
        after = notices(await read_to_end(broker, settings.topic_privacy))
        assert {m["request_id"] for m in after} == {request_id} and {m["customer_id"] for m in after} == {TARGET}
        assert any(m["anonymous_ids"] == [DEVICE] for m in after), after
        assert len(after) == len(first), f"the replayed request published customer_forgotten again: {after}"
        relayed_before_kill = "relayed a privacy request" in workers[owner].log_text()
        print(f"owner {owner} killed {'after' if relayed_before_kill else 'before'} it relayed the request; "
              f"customer_forgotten published {len(after)} times; suppressed {survivor.metric(SUPPRESSED):.0f}")
    finally:
        if sidecar is not None:
            sidecar.terminate()
            sidecar.wait(30)
        sidecar_log.close()
        stop_all(list(workers.values()))
