"""Touchpoints already in wire form: one JSON object per line, plain or gzip-compressed.

Lines are passed through byte for byte: the worker, not the replay, decides whether a line
is a valid touchpoint (and dead-letters it otherwise).
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from os import PathLike
from typing import Any

import orjson

from journey.errors import InputError
from journey.sources.ordering import event_time

_GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"


class JsonlReadError(InputError):
    """A JSONL file that cannot be read to its end."""


def read_jsonl_lines(path: str | PathLike[str]) -> Iterator[bytes]:
    """Yield each non-blank line of ``path`` as it is in the file, without its line ending.

    A gzip file is recognised by its first two bytes, whatever its name. The line ending
    (``\\n`` or ``\\r\\n``, the last line's too) and a UTF-8 byte-order mark before the first line
    (which editors on Windows write; it is no part of the JSON) are dropped; nothing else is changed.
    """
    with open(path, "rb") as raw:
        compressed = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
        number = 0
        try:
            with stream:
                for line in stream:
                    number += 1
                    if number == 1 and line.startswith(_BOM):
                        line = line[len(_BOM):]
                    if line.endswith(b"\n"):
                        line = line[:-1]
                    if line.endswith(b"\r"):
                        line = line[:-1]
                    if line.strip():
                        yield line
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise JsonlReadError(
                f"{path}: the gzip data is damaged after line {number} ({exc}); "
                f"the lines before it were read. Recompress the file or replay it uncompressed"
            ) from exc


def key_for(raw: bytes) -> bytes | None:
    """The Kafka key of a wire-form touchpoint: customer_id, else anonymous_id, UTF-8.

    None when the line is not a JSON object or has neither id (the worker dead-letters it).
    """
    touchpoint = _parse(raw)
    return None if touchpoint is None else _key(touchpoint)


def key_and_event_time(raw: bytes) -> tuple[bytes | None, float | None]:
    """``key_for(raw)`` and the line's event time in epoch seconds (None if unreadable).

    One parse for both, for the replay of large files.
    """
    touchpoint = _parse(raw)
    if touchpoint is None:
        return None, None
    try:
        when: float | None = event_time(touchpoint)
    except ValueError:
        when = None  # still sent as is; the worker dead-letters a bad timestamp
    return _key(touchpoint), when


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _key(touchpoint: dict[str, Any]) -> bytes | None:
    for field in ("customer_id", "anonymous_id"):
        value = touchpoint.get(field)
        if isinstance(value, str) and value:
            return value.encode("utf-8")
    return None
