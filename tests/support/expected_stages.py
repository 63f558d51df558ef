"""The stage each customer must end in after a replay under the default journey.

Counted straight from the raw data files, on purpose without importing any journey code, so
that a bug in the readers or the worker cannot hide itself by also being in the expectation.
The rules come from schemas/journey.yaml:

- ``purchase``: the first distinct order -> "purchase", a second distinct order -> "retention";
- ``campaign_received`` is an awareness type;
- ``coupon_redeemed`` is in no rule: it moves nobody (such a customer has no stage at all).

Customers with no stage are absent from the returned dicts.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

AWARENESS = "awareness"
PURCHASE = "purchase"
RETENTION = "retention"


def _by_order_count(orders: dict[str, int]) -> dict[str, str]:
    return {customer: RETENTION if n >= 2 else PURCHASE for customer, n in orders.items() if n >= 1}


def cdnow_expected_stages(path: str | Path) -> dict[str, str]:
    """customer_id -> final stage for a CDNOW master (4 columns) or sample (5 columns) file.

    Every line of a CDNOW file is one purchase (same-day lines included), so a customer's
    distinct orders are their lines. Ids lose their leading zeros, as in the replay.
    """
    orders: dict[str, int] = defaultdict(int)
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            fields = line.split()
            if not fields or not fields[0].isdigit():
                continue  # blank line or the master file's header
            orders[str(int(fields[0]))] += 1
    return _by_order_count(orders)


def completejourney_expected_stages(directory: str | Path) -> dict[str, str]:
    """household_id -> final stage for a Complete Journey directory.

    2+ distinct basket_ids in transactions_sample.csv -> retention, 1 -> purchase; otherwise
    a household in campaigns.csv -> awareness; coupon-only households are absent.
    """
    directory = Path(directory)
    baskets: dict[str, set[str]] = defaultdict(set)
    with open(directory / "transactions_sample.csv", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            baskets[row["household_id"]].add(row["basket_id"])
    stages = _by_order_count({household: len(ids) for household, ids in baskets.items()})
    with open(directory / "campaigns.csv", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            stages.setdefault(row["household_id"], AWARENESS)
    return stages


def expected_stages(path: str | Path, fmt: str) -> dict[str, str]:
    """The expectation for a file replayed with ``journey replay PATH --format FMT``."""
    if fmt == "cdnow":
        return cdnow_expected_stages(path)
    if fmt == "completejourney":
        return completejourney_expected_stages(path)
    raise ValueError(f"no independent expectation for format {fmt!r}; use cdnow or completejourney")
