"""Replay a file of touchpoints into Kafka, optionally at a multiple of real time.

``records_for_format`` (journey.sources.records, re-exported here) turns a file into
``(key, value, event_time)`` records; ``publish`` sends them. ``journey replay FILE --format ... --speed ...`` calls both.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError

from journey.errors import BrokerError, UsageError
from journey.kafka.admin import unreachable
from journey.sources.records import FORMATS, Record, records_for_format

__all__ = ["FORMATS", "Record", "ReplayError", "pacing_delay", "publish", "records_for_format"]

#: Sends not yet acknowledged before the loop waits for the oldest one; bounds memory on
#: large files (aiokafka also blocks when a partition's batch is full).
_MAX_IN_FLIGHT = 10_000
#: Longest single sleep while pacing, so the progress bar keeps moving during long gaps.
_PACING_SLICE_S = 0.1


class ReplayError(BrokerError):
    """The records could not be delivered to Kafka."""


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
    skipped: int = 0,
) -> int:
    """Send ``records`` to ``topic`` in order; return how many the brokers acknowledged.

    With ``speed``, gaps between records' event times are replayed divided by ``speed``
    (86400 = one day per second); records without an event time, or earlier than one already
    sent, go out at once. Without it, records go out as fast as Kafka takes them. Every send
    is awaited (acks=all) before returning. ``progress`` draws a bar on stderr. ``skipped``:
    records of the file left out before these (a resumed run), for the error's --skip advice.
    """
    if speed is not None and not speed > 0:
        raise UsageError(f"speed must be a positive number (86400 = one day per second), not {speed!r}; fix --speed")
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
        raise ReplayError(str(unreachable(bootstrap_servers, exc))) from exc

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
                f"and the broker is healthy, then {_resume(skipped + acknowledged)}"
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
            f"records: {exc!r}; {_resume(skipped + acknowledged)}"
        ) from exc
    finally:
        if bar is not None:
            bar.close(acknowledged)
        await producer.stop()
    return acknowledged


def _resume(done: int) -> str:
    """How to go on after a failed run that got ``done`` records of the file acknowledged."""
    return (f"resume with --skip {done} (the records come in the same order every time; a worker drops a repeated "
            "event only while its customer still remembers it, so a whole second replay would count busy customers' "
            "events twice; the few records in flight at the failure are sent again and dropped as repeats)")


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
