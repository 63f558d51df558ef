"""Dead-letter records: what could not be processed, where it came from, and why."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from typing import Any

import orjson

#: The most of a bad record's value a dead letter carries (base64 can make it a third larger).
MAX_VALUE_BYTES = 256 * 1024


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
        if len(value) > MAX_VALUE_BYTES:
            # Brokers refuse records over message.max.bytes (1 MB by default): keep the start,
            # the size and a digest to find the original by (it stays in the input topic).
            record["value_bytes"] = len(value)
            record["value_sha256"] = hashlib.sha256(value).hexdigest()
            value = value[:MAX_VALUE_BYTES]
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
