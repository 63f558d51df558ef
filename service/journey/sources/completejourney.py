"""The 84.51° "Complete Journey" CSV files as touchpoints.

The campaigns, coupon redemptions and transactions of the grocery study (see data/README.md)
become ``campaign_received``, ``coupon_redeemed`` and ``purchase`` touchpoints per household, with
timestamps (read as UTC) and event ids fixed so that replays are reproducible. Details: docs/data-sources.md.
"""

from __future__ import annotations

import csv
import gzip
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from os import PathLike
from pathlib import Path
from typing import Any

from journey.errors import InputError

DESCRIPTIONS = "campaign_descriptions.csv"
CAMPAIGNS = "campaigns.csv"
COUPONS = "coupon_redemptions.csv"
#: The full transactions table, or the sample of it that data/ holds (each plain or gzipped).
TRANSACTIONS = ("transactions.csv", "transactions_sample.csv")


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
    campaigns = _campaign_descriptions(_find(directory, DESCRIPTIONS))
    yield from _campaigns_received(_find(directory, CAMPAIGNS), campaigns)
    yield from _coupons_redeemed(_find(directory, COUPONS))
    yield from _purchases(_find(directory, *TRANSACTIONS))


def _find(directory: Path, *names: str) -> Path:
    """The first of ``names`` (or of them gzipped, ``.gz``) in ``directory``."""
    for name in names:
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    wanted = " or ".join(names)
    raise CompleteJourneyFormatError(
        f"{directory} has no {wanted} (plain or .gz); a Complete Journey directory needs "
        f"{DESCRIPTIONS}, {CAMPAIGNS}, {COUPONS} and {' or '.join(TRANSACTIONS)}"
    )


def _campaign_descriptions(path: Path) -> dict[str, tuple[str, str]]:
    """campaign_id -> (campaign_type, start timestamp)."""
    found: dict[str, tuple[str, str]] = {}
    for line, row in _rows(path, ("campaign_id", "campaign_type", "start_date")):
        found[row["campaign_id"]] = (row["campaign_type"], _midnight_utc(path, line, row["start_date"]))
    return found


def _campaigns_received(path: Path, campaigns: dict[str, tuple[str, str]]) -> Iterator[dict[str, Any]]:
    seen: Counter[str] = Counter()
    for line, row in _rows(path, ("campaign_id", "household_id")):
        campaign_id = row["campaign_id"]
        if campaign_id not in campaigns:
            raise _error(
                path, line,
                f"campaign_id {campaign_id!r} is not in {DESCRIPTIONS}, so it has no start date; "
                f"add the campaign there or remove the row",
            )
        campaign_type, start = campaigns[campaign_id]
        household = _household(path, line, row)
        yield {
            # From the row's content (and how many such rows came before), not its line: a file
            # sorted or filtered otherwise still gives every row the id a replay deduplicates on.
            "event_id": _nth(seen, f"cj-campaign-{campaign_id}-{household}"),
            "customer_id": household,
            "type": "campaign_received",
            "timestamp": start,
            "channel": "ads",
            "properties": {"campaign_id": campaign_id, "campaign_type": campaign_type},
        }


def _coupons_redeemed(path: Path) -> Iterator[dict[str, Any]]:
    columns = ("household_id", "coupon_upc", "campaign_id", "redemption_date")
    seen: Counter[str] = Counter()
    for line, row in _rows(path, columns):
        household = _household(path, line, row)
        key = f"cj-coupon-{household}-{row['campaign_id']}-{row['coupon_upc']}-{row['redemption_date']}"
        yield {
            "event_id": _nth(seen, key),
            "customer_id": household,
            "type": "coupon_redeemed",
            "timestamp": _midnight_utc(path, line, row["redemption_date"]),
            "channel": "store",
            "properties": {"campaign_id": row["campaign_id"], "coupon_upc": row["coupon_upc"]},
        }


def _purchases(path: Path) -> Iterator[dict[str, Any]]:
    columns = ("household_id", "store_id", "basket_id", "product_id", "sales_value", "transaction_timestamp")
    seen: Counter[str] = Counter()
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
            "event_id": _nth(seen, f"cj-txn-{row['basket_id']}-{row['product_id']}"),
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


def _nth(seen: Counter[str], key: str) -> str:
    """``key`` and how many times it came so far (identical rows: the same ids in any order)."""
    seen[key] += 1
    return f"{key}-{seen[key]}"


def _rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) for each data row; the header must name every ``required`` column.
    Plain or gzipped (by its first bytes), UTF-8 with or without a byte-order mark."""
    with path.open("rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    with gzip.open(path, "rb") if gzipped else path.open("rb") as raw:
        reader = csv.DictReader(_text_lines(path, raw))
        fields = reader.fieldnames or ()
        missing = [c for c in required if c not in fields]
        if missing:
            raise _error(path, 1, f"the header lacks column(s) {', '.join(missing)} (found: {', '.join(fields) or 'nothing'})")
        for row in reader:
            if None in row or any(row[c] is None for c in required):
                raise _error(path, reader.line_num, "wrong number of fields for the header")
            yield reader.line_num, row


def _text_lines(path: Path, raw: Iterable[bytes]) -> Iterator[str]:
    """The file's lines as text, each decoded on its own so that an error can name its line."""
    number = 0
    try:
        for number, line in enumerate(raw, 1):  # noqa: B007 - read after the loop, in the error
            try:
                text = line.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise _error(path, number, f"not UTF-8 text ({exc.reason} at byte {exc.start}); save the file as UTF-8") from None
            yield text
    except (OSError, EOFError) as exc:  # a damaged gzip stream
        raise _error(path, number + 1, f"cannot be read ({exc}); is the file complete?") from None


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
