"""Faust with a trivial agent: what the framework alone costs per event (run by bench/throughput.py).

Modes (FLOOR_MODE):
- event: ``async for value in stream`` plus orjson.loads -- Faust's idiomatic per-event path;
- batch: ``stream.take_events(1000, within=0.05)`` plus orjson.loads -- the journey worker's path;
- table: per event, orjson.loads and a table write of the raw value (RocksDB, changelog).

Same broker settings as the journey worker (journey/worker/app.py). When FLOOR_EVENTS records
have been seen, one line goes to stdout:
``FLOOR t0=<after the first event/batch> n0=<records by then> t1=<at FLOOR_EVENTS> n=<FLOOR_EVENTS>``.
"""

from __future__ import annotations

import os
import time

import faust
import orjson

MODE = os.environ["FLOOR_MODE"]
EVENTS = int(os.environ["FLOOR_EVENTS"])
PARTITIONS = int(os.environ["FLOOR_PARTITIONS"])

app = faust.App(
    os.environ["FLOOR_APP_ID"],
    broker=f"kafka://{os.environ['FLOOR_BOOTSTRAP']}",
    store="rocksdb://",
    datadir=os.path.join(os.getcwd(), "floor-data"),
    autodiscover=False,
    web_enabled=False,
    topic_partitions=PARTITIONS,
    topic_allow_declare=True,
    producer_acks=-1,
    consumer_auto_offset_reset="earliest",
    table_standby_replicas=0,
    broker_commit_every=4000,
    broker_commit_interval=1.0,
    stream_buffer_maxsize=4096,
    stream_wait_empty=False,
)
topic = app.topic(os.environ["FLOOR_TOPIC"], key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")


class RawTable(faust.Table):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.key_serializer = "raw"
        self.value_serializer = "raw"


table = app.tables.add(RawTable(app, name="floor", default=None, beacon=app.tables.beacon, partitions=PARTITIONS,
                                extra_topic_configs={"retention.ms": str(7 * 24 * 3600 * 1000)}))

_seen = 0
_t0 = 0.0
_n0 = 0


def _count(n: int) -> None:
    global _seen, _t0, _n0
    _seen += n
    if not _n0:
        _t0, _n0 = time.time(), _seen
    elif _seen >= EVENTS and _n0 < EVENTS:
        print(f"FLOOR t0={_t0} n0={_n0} t1={time.time()} n={_seen}", flush=True)
        _n0 = EVENTS  # report once


@app.agent(topic, name="floor")
async def floor(stream: faust.StreamT) -> None:
    if MODE == "batch":
        async for events in stream.take_events(1000, within=0.05):
            for e in events:
                orjson.loads(e.message.value)
            _count(len(events))
    elif MODE == "table":
        async for event in stream.events():
            orjson.loads(event.message.value)
            table[event.message.key] = event.message.value
            _count(1)
    else:
        async for value in stream:
            orjson.loads(value)
            _count(1)


class _Worker(faust.Worker):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.spinner = None  # see journey/worker/runner.py


if __name__ == "__main__":
    _Worker(app, loglevel="WARNING").execute_from_commandline()
