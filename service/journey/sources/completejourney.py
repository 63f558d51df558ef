"""The 84.51° "Complete Journey" CSV files as touchpoints.

The campaigns, coupon redemptions and transactions of the grocery study (see data/README.md)
become ``campaign_received``, ``coupon_redeemed`` and ``purchase`` touchpoints per household, with
timestamps (read as UTC) and event ids fixed so that replays are reproducible. Details: docs/data-sources.md.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from os import PathLike
from pathlib import Path
from typing import Any

from journey.errors import InputError

DESCRIPTIONS = "campaign_descriptions.csv"
CAMPAIGNS = "campaigns.csv"
COUPONS = "coupon_redemptions.csv"
TRANSACTIONS = "transactions_sample.csv"


class CompleteJourneyFormatError(InputError):
    """A Complete Journey file or row that cannot be read."""


def read_completejourney(directory: str | PathLike[str]) -> Iterator[dict[str, Any]]:
    """Yield the directory's touchpoints, file by file (campaigns, coupons, purchases).

    The output is in file order, not event-time order: sort it (ordering.in_event_time_order)
    before sending. A coupon redeemed before its campaign's start date is kept as it is: that
    is what the data say.

    Several transaction lines share one basket (one line per product): each line is a
    ``purchase`` touchpoint with ``order_id`` = basket_id, and the journey counts one purchase
    per distinct order_id.

    Raises CompleteJourneyFormatError naming the file and line for a missing file or column,
    or a value that cannot be read.
    """
    directory = Path(directory)
    campaigns = _campaign_descriptions(directory / DESCRIPTIONS)
    yield from _campaigns_received(directory / CAMPAIGNS, campaigns)
    yield from _coupons_redeemed(directory / COUPONS)
    yield from _purchases(directory / TRANSACTIONS)


def _campaign_descriptions(path: Path) -> dict[str, tuple[str, str]]:
    """campaign_id -> (campaign_type, start timestamp)."""
    found: dict[str, tuple[str, str]] = {}
    for line, row in _rows(path, ("campaign_id", "campaign_type", "start_date")):
        found[row["campaign_id"]] = (row["campaign_type"], _midnight_utc(path, line, row["start_date"]))
    return found


def _campaigns_received(path: Path, campaigns: dict[str, tuple[str, str]]) -> Iterator[dict[str, Any]]:
    for line, row in _rows(path, ("campaign_id", "household_id")):
        campaign_id = row["campaign_id"]
        if campaign_id not in campaigns:
            raise _error(
                path, line,
                f"campaign_id {campaign_id!r} is not in {DESCRIPTIONS}, so it has no start date; "
                f"add the campaign there or remove the row",
            )
        campaign_type, start = campaigns[campaign_id]
        yield {
            "event_id": f"cj-campaign-{line}",
            "customer_id": _household(path, line, row),
            "type": "campaign_received",
            "timestamp": start,
            "channel": "ads",
            "properties": {"campaign_id": campaign_id, "campaign_type": campaign_type},
        }


def _coupons_redeemed(path: Path) -> Iterator[dict[str, Any]]:
    columns = ("household_id", "coupon_upc", "campaign_id", "redemption_date")
    for line, row in _rows(path, columns):
        yield {
            "event_id": f"cj-coupon-{line}",
            "customer_id": _household(path, line, row),
            "type": "coupon_redeemed",
            "timestamp": _midnight_utc(path, line, row["redemption_date"]),
            "channel": "store",
            "properties": {"campaign_id": row["campaign_id"], "coupon_upc": row["coupon_upc"]},
        }


def _purchases(path: Path) -> Iterator[dict[str, Any]]:
    columns = ("household_id", "store_id", "basket_id", "product_id", "sales_value", "transaction_timestamp")
    for line, row in _rows(path, columns):
        try:
            amount = float(row["sales_value"])
        except ValueError:
            amount = math.nan
        if not math.isfinite(amount):
            raise _error(path, line, f"sales_value {row['sales_value']!r} is not a number")
        if not row["basket_id"]:
            raise _error(path, line, "basket_id is empty; every purchase line needs its basket")
        yield {
            "event_id": f"cj-txn-{line}",
            "customer_id": _household(path, line, row),
            "type": "purchase",
            "timestamp": _utc_timestamp(path, line, row["transaction_timestamp"]),
            "channel": "store",
            "properties": {
                "order_id": row["basket_id"],
                "amount": amount,
                "currency": "USD",
                "product_id": row["product_id"],
                "store_id": row["store_id"],
            },
        }


def _rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) for each data row; the header must name every ``required`` column."""
    try:
        handle = path.open("r", encoding="utf-8", newline="")
    except FileNotFoundError:
        raise CompleteJourneyFormatError(
            f"{path} does not exist; a Complete Journey directory needs "
            f"{DESCRIPTIONS}, {CAMPAIGNS}, {COUPONS} and {TRANSACTIONS}"
        ) from None
    with handle:
        reader = csv.DictReader(handle)
        missing = [c for c in required if c not in (reader.fieldnames or ())]
        if missing:
            raise _error(
                path, 1,
                f"the header lacks column(s) {', '.join(missing)} "
                f"(found: {', '.join(reader.fieldnames or ()) or 'nothing'})",
            )
        for row in reader:
            if None in row or any(row[c] is None for c in required):
                raise _error(path, reader.line_num, "wrong number of fields for the header")
            yield reader.line_num, row


def _household(path: Path, line: int, row: dict[str, str]) -> str:
    household = row["household_id"].strip()
    if not household:
        raise _error(path, line, "household_id is empty")
    return household


def _midnight_utc(path: Path, line: int, raw: str) -> str:
    try:
        day = datetime.strptime(raw, "%Y-%m-%d").date()
    except ValueError:
        raise _error(path, line, f"date {raw!r} is not YYYY-MM-DD") from None
    return f"{day.isoformat()}T00:00:00+00:00"


def _utc_timestamp(path: Path, line: int, raw: str) -> str:
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise _error(path, line, f"transaction_timestamp {raw!r} is not 'YYYY-MM-DD HH:MM:SS'") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # the files carry no zone: UTC by convention
    return moment.isoformat()


def _error(path: Path, line: int, why: str) -> CompleteJourneyFormatError:
    return CompleteJourneyFormatError(f"{path}:{line}: {why}")
