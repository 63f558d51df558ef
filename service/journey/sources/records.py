"""A file of touchpoints as ``(key, value, event_time)`` records: what `journey replay` sends and
what `journey churn fit|score` reads. No Kafka here (journey.sources.replay sends them)."""

from __future__ import annotations

from collections.abc import Iterator
from os import PathLike
from pathlib import Path
from typing import Any

import orjson

from journey.errors import InputNotFound, UsageError
from journey.sources.cdnow import read_cdnow
from journey.sources.completejourney import read_completejourney
from journey.sources.jsonl import key_and_event_time, read_jsonl_lines
from journey.sources.ordering import event_time, in_event_time_order

#: (Kafka key, Kafka value, event time in epoch seconds or None).
Record = tuple[bytes | None, bytes, float | None]

FORMATS = ("jsonl", "cdnow", "completejourney")


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
            raise InputNotFound(f"{path} is not a file; give a .jsonl or .jsonl.gz file of touchpoints")
        _check_first_line(path)
        return _jsonl_records(path), None
    if fmt == "cdnow":
        if not path.is_file():
            raise InputNotFound(
                f"{path} is not a file; --format cdnow reads a CDNOW master or sample file, "
                f"e.g. data/cdnow/CDNOW_sample.txt"
            )
        events = in_event_time_order(read_cdnow(path))
    elif fmt == "completejourney":
        if not path.is_dir():
            raise InputNotFound(
                f"{path} is not a directory; --format completejourney reads a directory of "
                f"Complete Journey CSV files, e.g. data/completejourney"
            )
        events = in_event_time_order(read_completejourney(path))
    else:
        raise UsageError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    return (_converted_record(event) for event in events), len(events)


def _check_first_line(path: Path) -> None:
    """Refuse a file whose first line is no JSON object: the wrong --format, most likely (a file
    of touchpoints with some bad lines among them is sent as it is, for the workers to judge)."""
    first = next(iter(read_jsonl_lines(path)), None)
    if first is None:
        return
    try:
        ok = type(orjson.loads(first)) is dict
    except orjson.JSONDecodeError:
        ok = False
    if not ok:
        fields = first.split()
        hint = (" It looks like CDNOW's text: use --format cdnow." if len(fields) in (4, 5) and all(f.replace(b".", b"").isdigit() for f in fields)
                else " Give a file of touchpoint JSON objects, one per line (schemas/touchpoint.schema.json), or the --format of this data set.")
        raise UsageError(f"{path}: its first line is not a JSON object, and --format jsonl sends touchpoint JSON lines.{hint}")


def _jsonl_records(path: Path) -> Iterator[Record]:
    for raw in read_jsonl_lines(path):
        key, when = key_and_event_time(raw)
        yield key, raw, when


def _converted_record(event: dict[str, Any]) -> Record:
    return event["customer_id"].encode("utf-8"), orjson.dumps(event), event_time(event)
