"""Dead-letter records: what could not be processed, where it came from, and why."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import orjson


def dead_letter(
    *,
    value: bytes | None,
    key: bytes | None,
    topic: str,
    partition: int,
    offset: int,
    reason: str,
    error: str,
) -> bytes:
    """The dead-letter topic's JSON value for one record (schemas/dead-letter.schema.json)."""
    record: dict[str, Any] = {
        "reason": reason,
        "error": error,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "key": _text(key)[0] if key is not None else None,
        "at": datetime.now(UTC).isoformat(),
    }
    if value is None:
        record["value"] = None
        record["value_encoding"] = "null"
    else:
        text, encoding = _text(value)
        record["value"] = text
        record["value_encoding"] = encoding
    return orjson.dumps(record)


def _text(raw: bytes) -> tuple[str, str]:
    """UTF-8 text as is; anything else base64, so the original bytes can be recovered exactly."""
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), "base64"
