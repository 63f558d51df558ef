"""Replay a file of touchpoints into Kafka, optionally at a multiple of real time.

``records_for_format`` turns a file into ``(key, value, event_time)`` records;
``publish`` sends them. ``journey replay FILE --format ... --speed ...`` calls both.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from os import PathLike
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, TextIO

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError

from journey.sources.cdnow import read_cdnow
from journey.sources.completejourney import read_completejourney
from journey.sources.jsonl import key_and_event_time, read_jsonl_lines
from journey.sources.ordering import event_time, in_event_time_order

#: (Kafka key, Kafka value, event time in epoch seconds or None).
Record = tuple[bytes | None, bytes, float | None]

FORMATS = ("jsonl", "cdnow", "completejourney")

#: Sends not yet acknowledged before the loop waits for the oldest one; bounds memory on
#: large files (aiokafka also blocks when a partition's batch is full).
_MAX_IN_FLIGHT = 10_000
#: Longest single sleep while pacing, so the progress bar keeps moving during long gaps.
_PACING_SLICE_S = 0.1


class ReplayError(RuntimeError):
    """The records could not be delivered to Kafka."""


def records_for_format(path: str | PathLike[str], fmt: str) -> tuple[Iterator[Record], int | None]:
    """The records to send for ``path`` read as ``fmt``, and their count when known up front.

    - jsonl: every non-blank line byte for byte, in file order (streamed: count unknown);
    - cdnow, completejourney: the converted touchpoints in event-time order, serialized with
      orjson, keyed by customer_id. These are read and sorted now, so a bad file fails here,
      before anything is sent.
    """
    path = Path(path)
    if fmt == "jsonl":
        if not path.is_file():
            raise FileNotFoundError(f"{path} is not a file; give a .jsonl or .jsonl.gz file of touchpoints")
        return _jsonl_records(path), None
    if fmt == "cdnow":
        events = in_event_time_order(read_cdnow(path))
    elif fmt == "completejourney":
        if not path.is_dir():
            raise FileNotFoundError(
                f"{path} is not a directory; --format completejourney reads a directory of "
                f"Complete Journey CSV files, e.g. data/completejourney"
            )
        events = in_event_time_order(read_completejourney(path))
    else:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    return (_converted_record(event) for event in events), len(events)


def _jsonl_records(path: Path) -> Iterator[Record]:
    for raw in read_jsonl_lines(path):
        key, when = key_and_event_time(raw)
        yield key, raw, when


def _converted_record(event: dict[str, Any]) -> Record:
    return event["customer_id"].encode("utf-8"), orjson.dumps(event), event_time(event)


def pacing_delay(event_s: float, first_event_s: float, started_s: float, now_s: float, speed: float) -> float:
    """Seconds to wait so a record ``event_s - first_event_s`` after the first one goes out
    that gap divided by ``speed`` after the start (0 when it is already due)."""
    return max(0.0, started_s + (event_s - first_event_s) / speed - now_s)


async def publish(
    bootstrap_servers: str,
    topic: str,
    records: Iterable[Record],
    *,
    speed: float | None,
    progress: bool,
    total: int | None,
    client_options: Mapping[str, Any] | None = None,
) -> int:
    """Send ``records`` to ``topic`` in order; return how many the brokers acknowledged.

    With ``speed``, gaps between records' event times are replayed divided by ``speed``
    (86400 = one day per second); records without an event time, or earlier than one already
    sent, go out at once. Without it, records go out as fast as Kafka takes them. Every send
    is awaited (acks=all) before returning. ``progress`` draws a bar on stderr.
    """
    if speed is not None and not speed > 0:
        raise ValueError(f"speed must be a positive number (86400 = one day per second), not {speed!r}")
    producer = AIOKafkaProducer(
        **(client_options or {}),
        bootstrap_servers=bootstrap_servers,
        acks="all",
        linger_ms=10,
        max_batch_size=256 * 1024,
    )
    try:
        await producer.start()
    except KafkaConnectionError as exc:
        await producer.stop()
        raise ReplayError(
            f"cannot reach Kafka at {bootstrap_servers} ({exc}); start the broker or set "
            f"JOURNEY_BOOTSTRAP_SERVERS to where it runs"
        ) from exc

    bar = _ProgressBar(total) if progress else None
    pending: deque[asyncio.Future[Any]] = deque()
    acknowledged = 0

    def settle(future: asyncio.Future[Any]) -> None:
        nonlocal acknowledged
        try:
            future.result()
        except KafkaError as exc:
            raise ReplayError(
                f"Kafka did not accept a record for topic {topic!r} at {bootstrap_servers} "
                f"after {acknowledged} were acknowledged: {exc!r}. Check that the topic exists "
                f"and the broker is healthy, then replay again (event ids make a replay idempotent)"
            ) from exc
        acknowledged += 1

    def settle_done() -> None:
        while pending and pending[0].done():
            settle(pending.popleft())
        if bar is not None:
            bar.update(acknowledged)

    loop = asyncio.get_running_loop()
    first_event_s: float | None = None
    started_s = loop.time()
    try:
        for key, value, when in records:
            if speed is not None and when is not None:
                if first_event_s is None:
                    first_event_s, started_s = when, loop.time()
                while (delay := pacing_delay(when, first_event_s, started_s, loop.time(), speed)) > 0:
                    await asyncio.sleep(min(delay, _PACING_SLICE_S))
                    settle_done()
            # No timestamp_ms: the record time stays "now", so topic retention does not
            # delete records whose event time is years old.
            pending.append(await producer.send(topic, value=value, key=key))
            if len(pending) > _MAX_IN_FLIGHT:
                await asyncio.wait([pending[0]])
            settle_done()
        while pending:
            await asyncio.wait([pending[0]])
            settle_done()
    except KafkaError as exc:
        raise ReplayError(
            f"sending to topic {topic!r} at {bootstrap_servers} failed after {acknowledged} "
            f"records: {exc!r}"
        ) from exc
    finally:
        if bar is not None:
            bar.close(acknowledged)
        await producer.stop()
    return acknowledged


class _ProgressBar:
    """A one-line progress display on stderr, redrawn at most ~10 times a second."""

    _WIDTH = 30

    def __init__(self, total: int | None, stream: TextIO | None = None) -> None:
        self._total = total
        self._stream = stream if stream is not None else sys.stderr
        # On a terminal, redraw in place; in a log, a line every few seconds is enough.
        self._tty = self._stream.isatty()
        self._interval = 0.1 if self._tty else 5.0
        self._started = time.monotonic()
        self._drawn_at = 0.0

    def update(self, count: int) -> None:
        now = time.monotonic()
        if now - self._drawn_at >= self._interval:
            self._draw(count, now)

    def close(self, count: int) -> None:
        self._draw(count, time.monotonic())
        if self._tty:
            self._stream.write("\n")
        self._stream.flush()

    def _draw(self, count: int, now: float) -> None:
        self._drawn_at = now
        elapsed = now - self._started
        rate = count / elapsed if elapsed > 0 else 0.0
        if self._total:
            share = min(count / self._total, 1.0)
            filled = int(share * self._WIDTH)
            text = (
                f"[{'#' * filled}{'.' * (self._WIDTH - filled)}] {count:,}/{self._total:,} "
                f"{share:6.1%}  {rate:,.0f} rec/s"
            )
        else:
            text = f"{count:,} records  {rate:,.0f} rec/s"
        self._stream.write(f"\r{text}\x1b[K" if self._tty else f"{text}\n")
        self._stream.flush()
