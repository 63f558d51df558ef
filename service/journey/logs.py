"""Log lines for people (text) or for a log shipper (JSON: one object per line), the same for the
worker (Faust's logging), the sidecar and uvicorn's access log (``JOURNEY_LOG_FORMAT``).

A JSON line has ``time`` (UTC, RFC 3339), ``level``, ``logger``, ``message``, the process's
identity (``service``, ``host``, ``pid`` and the service's own, e.g. ``app_id`` and ``port``), and
``exception`` when there is one. Customer ids never reach an INFO line from here: the access log
shows ``/customers/{id}`` paths with the id masked.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["JsonFormatter", "MaskCustomerIds", "TEXT_FORMAT", "identity", "logging_config"]

TEXT_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"
#: What the access log shows instead of a customer id.
MASK = "***"
#: The id in a customer path (slashes included: an id may hold one, and /customers//x routes
#: too), and its query (DELETE's ?reason= is free text about the person); any case of the path.
_CUSTOMER_PATH = re.compile(r"(/customers/)[^?#\s]+(\?[^#\s]*)?", re.IGNORECASE)
#: LogRecord attributes that are not "extra" fields (uvicorn adds a copy of its message with
#: terminal colors).
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName", "color_message"}


def identity(service: str, **fields: object) -> dict[str, object]:
    """Who writes the log: ``service`` ("worker", "sidecar", ...), the host name and ``fields``
    (the pid is added to every line when it is written, so a fork logs its own)."""
    return {"service": service, "host": socket.gethostname(), **fields}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def __init__(self, identity: Mapping[str, object] | None = None) -> None:
        super().__init__()
        self.identity = dict(identity or {})

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage().rstrip(),
            **self.identity,
            "pid": record.process,
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in entry and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def _rfc3339(created: float) -> str:
    seconds = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((created - seconds) * 1000):03d}Z"


class MaskCustomerIds(logging.Filter):
    """Masks the customer id in ``/customers/{id}`` paths of uvicorn's access log records
    (their args are client, method, path, HTTP version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], mask_path(args[2]), *args[3:])
        elif isinstance(record.msg, str) and "/customers/" in record.msg:
            record.msg = mask_path(record.msg)
        return True


def mask_path(path: str) -> str:
    """``/customers/c-42?reason=...`` -> ``/customers/***?***``."""
    return _CUSTOMER_PATH.sub(lambda m: m.group(1) + MASK + ("?" + MASK if m.group(2) else ""), path)


def logging_config(
    fmt: str, level: str, ident: Mapping[str, object], *, uvicorn: bool = False, stream: str = "ext://sys.stdout"
) -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` for ``fmt`` ("text" or "json"): the root logger (so
    Faust's, aiokafka's and journey's loggers) and, with ``uvicorn``, uvicorn's loggers, access
    log included, all to one handler."""
    formatter: dict[str, Any] = (
        {"()": JsonFormatter, "identity": dict(ident)} if fmt == "json" else {"format": TEXT_FORMAT}
    )
    config: dict[str, Any] = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"journey": formatter},
        "filters": {"mask_customer_ids": {"()": MaskCustomerIds}},
        "handlers": {"journey": {"class": "logging.StreamHandler", "formatter": "journey", "stream": stream}},
        "root": {"level": level.upper(), "handlers": ["journey"]},
        "loggers": {},
    }
    if uvicorn:
        for name in ("uvicorn", "uvicorn.error"):
            config["loggers"][name] = {"level": level.upper(), "handlers": [], "propagate": True}
        config["loggers"]["uvicorn.access"] = {
            "level": "INFO", "handlers": [], "propagate": True, "filters": ["mask_customer_ids"],
        }
    return config
