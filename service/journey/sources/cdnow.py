"""CDNOW purchase files as ``purchase`` touchpoints.

Reads both layouts of the CDNOW files (master and sample, see data/README.md), telling them apart
by the first data line; every line is one purchase. Details: docs/data-sources.md.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from datetime import date, datetime
from os import PathLike
from pathlib import Path
from typing import Any

from journey.errors import InputError

#: Column count -> (name, index of date, index of number_of_cds, index of dollar_value).
_LAYOUTS = {
    4: ("master", 1, 2, 3),
    5: ("sample", 2, 3, 4),
}


class CdnowFormatError(InputError):
    """A CDNOW file line that cannot be read as a purchase."""


def read_cdnow(path: str | PathLike[str]) -> Iterator[dict[str, Any]]:
    """Yield one ``purchase`` touchpoint per purchase line of a CDNOW master or sample file.

    - customer_id: the id without leading zeros (``str(int(id))``, as lifetimes does);
    - timestamp: the purchase date at 12:00:00 UTC (the file has dates only);
    - order_id: ``<customer_id>-<yyyymmdd>-<n>``, n = 0, 1, ... among that customer's lines of
      that day, in file order, so same-day purchases stay distinct orders;
    - event_id: ``cdnow-<order_id>``. It depends on the purchase, not on the line number, so
      the sample file (a subset of the master, same lines in the same order) gives the same
      ids as the master: replaying both cannot count a purchase twice.

    Raises CdnowFormatError naming the file and line for any line that is not a purchase.
    """
    path = Path(path)
    layout: tuple[str, int, int, int] | None = None
    columns = 0
    same_day: Counter[tuple[str, str]] = Counter()
    with path.open("r", encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            fields = line.split()
            if not fields:
                continue
            if layout is None:
                if not fields[0].isdigit():
                    if "customer_id" in fields:
                        continue  # the master file's header
                    raise _error(path, number, line, "expected a header or a purchase line")
                columns = len(fields)
                if columns not in _LAYOUTS:
                    raise _error(
                        path, number, line,
                        f"{columns} columns; expected 4 (master layout) or 5 (sample layout)",
                    )
                layout = _LAYOUTS[columns]
            elif len(fields) != columns:
                raise _error(
                    path, number, line,
                    f"{len(fields)} columns, but the file's first line has {columns} "
                    f"({layout[0]} layout)",
                )
            yield _purchase(path, number, line, fields, layout, same_day)


def _purchase(
    path: Path,
    number: int,
    line: str,
    fields: list[str],
    layout: tuple[str, int, int, int],
    same_day: Counter[tuple[str, str]],
) -> dict[str, Any]:
    _, date_at, cds_at, dollars_at = layout
    raw_id, raw_date = fields[0], fields[date_at]
    if not (raw_id.isascii() and raw_id.isdigit()):
        raise _error(path, number, line, f"customer id {raw_id!r} is not a number")
    day = _parse_date(path, number, line, raw_date)
    try:
        cds = int(fields[cds_at])
        dollars = float(fields[dollars_at])
    except ValueError:
        raise _error(
            path, number, line,
            f"number_of_cds {fields[cds_at]!r} must be an integer and "
            f"dollar_value {fields[dollars_at]!r} a number",
        ) from None
    if not math.isfinite(dollars):
        raise _error(path, number, line, f"dollar_value {fields[dollars_at]!r} is not finite")

    customer_id = str(int(raw_id))
    n = same_day[(customer_id, raw_date)]
    same_day[(customer_id, raw_date)] = n + 1
    order_id = f"{customer_id}-{raw_date}-{n}"
    return {
        "event_id": f"cdnow-{order_id}",
        "customer_id": customer_id,
        "type": "purchase",
        "timestamp": f"{day.isoformat()}T12:00:00+00:00",
        "channel": "other",
        "properties": {
            "order_id": order_id,
            "amount": dollars,
            "currency": "USD",
            "quantity": cds,
        },
    }


def _parse_date(path: Path, number: int, line: str, raw: str) -> date:
    # strptime alone would take 7-digit dates such as 1997011; insist on YYYYMMDD.
    try:
        if len(raw) != 8 or not raw.isdigit():
            raise ValueError
        return datetime.strptime(raw, "%Y%m%d").date()
    except ValueError:
        raise _error(path, number, line, f"date {raw!r} is not a YYYYMMDD date") from None


def _error(path: Path, number: int, line: str, why: str) -> CdnowFormatError:
    return CdnowFormatError(
        f"{path}:{number}: {why}: {line.strip()!r}. A CDNOW line is "
        f"'customer_id date number_of_cds dollar_value' (master) or "
        f"'customer_id customer_index date number_of_cds dollar_value' (sample); "
        f"fix or remove that line"
    )
