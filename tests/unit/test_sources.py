"""The data-set readers, the event-time ordering, the JSONL reader and the replay's pure parts."""

from __future__ import annotations

import csv
import functools
import gzip
import io
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from journey.errors import UsageError
from journey.sources.cdnow import CdnowFormatError, read_cdnow
from journey.sources.completejourney import CompleteJourneyFormatError, read_completejourney
from journey.sources.jsonl import JsonlReadError, key_and_event_time, key_for, read_jsonl_lines
from journey.sources.ordering import event_time, in_event_time_order
from journey.sources.replay import _ProgressBar, pacing_delay, records_for_format
from support.expected_stages import (
    cdnow_expected_stages,
    completejourney_expected_stages,
    expected_stages,
)

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "data"
MASTER = DATA / "cdnow" / "CDNOW_master.txt"
SAMPLE = DATA / "cdnow" / "CDNOW_sample.txt"
CJ = DATA / "completejourney"

# Documented in data/README.md (and the Fader-Hardie-Lee paper for the sample).
MASTER_PURCHASES = 69_659
MASTER_CUSTOMERS = 23_570
SAMPLE_CUSTOMERS = 2_357

# Validating all ~150k events with jsonschema takes ~10 s: the big files are validated at a
# stride (plus the first and last event of each type), the CDNOW sample in full.
VALIDATION_STRIDE = 10


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    schema = json.loads((REPO / "schemas" / "touchpoint.schema.json").read_text())
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


@pytest.fixture(scope="module")
def master() -> list[dict[str, Any]]:
    return list(read_cdnow(MASTER))


@pytest.fixture(scope="module")
def sample() -> list[dict[str, Any]]:
    return list(read_cdnow(SAMPLE))


@pytest.fixture(scope="module")
def complete_journey() -> list[dict[str, Any]]:
    return list(read_completejourney(CJ))


@functools.cache
def _records(path: Path, fmt: str) -> tuple[list[tuple[bytes | None, bytes, float | None]], int | None]:
    """records_for_format, materialized once per module: two tests read the same records."""
    records, total = records_for_format(path, fmt)
    return list(records), total


def _raw_cdnow_rows(path: Path) -> list[list[str]]:
    """Data lines split on whitespace, header and blank lines dropped."""
    rows = [line.split() for line in path.read_text().splitlines()]
    return [r for r in rows if r and r[0].isdigit()]


def _csv_rows(name: str) -> list[dict[str, str]]:
    with open(CJ / name, newline="") as f:
        return list(csv.DictReader(f))


# --- CDNOW ---------------------------------------------------------------------------------


def test_cdnow_master_counts(master: list[dict[str, Any]]) -> None:
    rows = _raw_cdnow_rows(MASTER)
    assert len(master) == len(rows) == MASTER_PURCHASES
    assert {e["type"] for e in master} == {"purchase"}
    customers = {e["customer_id"] for e in master}
    assert len(customers) == len({r[0] for r in rows}) == MASTER_CUSTOMERS
    # One order per line: same-day purchases stay distinct.
    assert len({(e["customer_id"], e["properties"]["order_id"]) for e in master}) == len(master)


def test_cdnow_sample_counts_and_layout(sample: list[dict[str, Any]]) -> None:
    rows = _raw_cdnow_rows(SAMPLE)
    assert all(len(r) == 5 for r in rows)
    assert len(sample) == len(rows)
    assert len({e["customer_id"] for e in sample}) == SAMPLE_CUSTOMERS


def test_cdnow_fields_follow_the_line(master: list[dict[str, Any]]) -> None:
    first = _raw_cdnow_rows(MASTER)[0]  # e.g. 00001 19970101 1 11.77
    event = master[0]
    assert event["customer_id"] == first[0].lstrip("0")
    assert event["timestamp"] == f"{first[1][:4]}-{first[1][4:6]}-{first[1][6:]}T12:00:00+00:00"
    assert event["channel"] == "other"
    assert event["properties"]["amount"] == float(first[3])
    assert event["properties"]["quantity"] == int(first[2])
    assert event["properties"]["currency"] == "USD"


def test_cdnow_same_day_lines_get_distinct_orders(tmp_path: Path) -> None:
    path = tmp_path / "cdnow.txt"
    path.write_text("00007 19970105 1 10.00\n00007 19970105 2 20.00\n00007 19970106 1 5.00\n")
    orders = [e["properties"]["order_id"] for e in read_cdnow(path)]
    assert orders == ["7-19970105-0", "7-19970105-1", "7-19970106-0"]


def test_cdnow_ids_are_deterministic_and_shared_by_sample_and_master(
    master: list[dict[str, Any]], sample: list[dict[str, Any]]
) -> None:
    second_read, _ = _records(MASTER, "cdnow")
    assert sorted(orjson.loads(v)["event_id"] for _, v, _ in second_read) == sorted(e["event_id"] for e in master)
    assert len({e["event_id"] for e in master}) == len(master)
    # The sample is a subset of the master: its purchases must carry the master's ids, so a
    # replay of both files counts each purchase once.
    by_id = {e["event_id"]: e for e in master}
    assert all(by_id[e["event_id"]] == e for e in sample)


@pytest.mark.parametrize(
    ("content", "bad_line", "hint"),
    [
        (" customer_id date number_of_cds dollar_value\n00001 19970101 1 11.77\n00002 1997013 1 2.0\n", 3, "YYYYMMDD"),
        ("00001 19970101 1 11.77\n00002 0002 19970101 1 2.0\n", 2, "5 columns"),
        ("00001 19970101 1 11.77\n\n00002 19970101 one 2.0\n", 3, "number_of_cds"),
        ("00001 19970101 1 11.77\nabc 19970101 1 2.0\n", 2, "customer id"),
        ("00001 19970101 1 nan\n", 1, "not finite"),
        ("00001 19970101\n", 1, "2 columns"),
    ],
)
def test_cdnow_bad_line_names_file_and_line(tmp_path: Path, content: str, bad_line: int, hint: str) -> None:
    path = tmp_path / "broken.txt"
    path.write_text(content)
    with pytest.raises(CdnowFormatError) as caught:
        list(read_cdnow(path))
    assert f"{path}:{bad_line}:" in str(caught.value)
    assert hint in str(caught.value)


# --- Complete Journey ----------------------------------------------------------------------


def test_completejourney_counts(complete_journey: list[dict[str, Any]]) -> None:
    counts = Counter(e["type"] for e in complete_journey)
    assert counts == {
        "campaign_received": len(_csv_rows("campaigns.csv")),
        "coupon_redeemed": len(_csv_rows("coupon_redemptions.csv")),
        "purchase": len(_csv_rows("transactions_sample.csv")),
    }
    channels = {(e["type"], e["channel"]) for e in complete_journey}
    assert channels == {("campaign_received", "ads"), ("coupon_redeemed", "store"), ("purchase", "store")}


def test_completejourney_fields_follow_the_rows(complete_journey: list[dict[str, Any]]) -> None:
    descriptions = {r["campaign_id"]: r for r in _csv_rows("campaign_descriptions.csv")}
    campaign_row = _csv_rows("campaigns.csv")[0]
    campaign = next(e for e in complete_journey if e["type"] == "campaign_received")
    described = descriptions[campaign_row["campaign_id"]]
    assert campaign["customer_id"] == campaign_row["household_id"]
    assert campaign["timestamp"] == f"{described['start_date']}T00:00:00+00:00"
    assert campaign["properties"] == {
        "campaign_id": campaign_row["campaign_id"],
        "campaign_type": described["campaign_type"],
    }

    coupon_row = _csv_rows("coupon_redemptions.csv")[0]
    coupon = next(e for e in complete_journey if e["type"] == "coupon_redeemed")
    assert coupon["timestamp"] == f"{coupon_row['redemption_date']}T00:00:00+00:00"
    assert coupon["customer_id"] == coupon_row["household_id"]

    txn_row = _csv_rows("transactions_sample.csv")[0]
    purchase = next(e for e in complete_journey if e["type"] == "purchase")
    assert purchase["customer_id"] == txn_row["household_id"]
    assert purchase["timestamp"] == txn_row["transaction_timestamp"].replace(" ", "T") + "+00:00"
    assert purchase["properties"] == {
        "order_id": txn_row["basket_id"],
        "amount": float(txn_row["sales_value"]),
        "currency": "USD",
        "product_id": txn_row["product_id"],
        "store_id": txn_row["store_id"],
    }


def test_completejourney_ids_are_deterministic(complete_journey: list[dict[str, Any]]) -> None:
    ids = [e["event_id"] for e in complete_journey]
    assert len(set(ids)) == len(ids)
    second_read, _ = _records(CJ, "completejourney")
    assert sorted(orjson.loads(v)["event_id"] for _, v, _ in second_read) == sorted(ids)
    first = _csv_rows("campaigns.csv")[0]  # from the row's content, not its line
    assert ids[0] == f"cj-campaign-{first['campaign_id']}-{first['household_id']}-1"


def _write_cj(directory: Path, **overrides: str) -> None:
    files = {
        "campaign_descriptions.csv": "campaign_id,campaign_type,start_date,end_date\n1,Type A,2017-03-03,2017-04-09\n",
        "campaigns.csv": "campaign_id,household_id\n1,10\n",
        "coupon_redemptions.csv": "household_id,coupon_upc,campaign_id,redemption_date\n10,123,1,2017-03-01\n",
        "transactions_sample.csv": (
            "household_id,store_id,basket_id,product_id,quantity,sales_value,retail_disc,"
            "coupon_disc,coupon_match_disc,week,transaction_timestamp\n"
            "10,1,900,5,1.0,2.50,0,0,0,1,2017-03-05 10:00:00\n"
        ),
    }
    files.update({name.replace("__", "."): text for name, text in overrides.items()})
    for name, text in files.items():
        (directory / name).write_text(text)


def test_completejourney_keeps_a_coupon_redeemed_before_its_campaign(tmp_path: Path) -> None:
    _write_cj(tmp_path)  # the coupon (03-01) precedes its campaign's start (03-03)
    coupon = next(e for e in read_completejourney(tmp_path) if e["type"] == "coupon_redeemed")
    assert coupon["timestamp"] == "2017-03-01T00:00:00+00:00"


@pytest.mark.parametrize(
    ("override", "text", "where"),
    [
        ("campaigns__csv", "campaign_id,household_id\n1,10\n7,11\n", "campaigns.csv:3:"),
        ("campaigns__csv", "campaign,household_id\n1,10\n", "campaigns.csv:1:"),
        ("coupon_redemptions__csv", "household_id,coupon_upc,campaign_id,redemption_date\n10,1,1,03/01/2017\n", "coupon_redemptions.csv:2:"),
        ("campaign_descriptions__csv", "campaign_id,campaign_type,start_date\n1,Type A\n", "campaign_descriptions.csv:2:"),
    ],
)
def test_completejourney_bad_row_names_file_and_line(tmp_path: Path, override: str, text: str, where: str) -> None:
    _write_cj(tmp_path, **{override: text})
    with pytest.raises(CompleteJourneyFormatError, match=where):
        list(read_completejourney(tmp_path))


def test_completejourney_missing_file_is_named(tmp_path: Path) -> None:
    _write_cj(tmp_path)
    (tmp_path / "transactions_sample.csv").unlink()
    with pytest.raises(CompleteJourneyFormatError, match="has no transactions.csv or transactions_sample.csv"):
        list(read_completejourney(tmp_path))


def test_completejourney_reads_the_full_table_gzipped_files_and_a_byte_order_mark(tmp_path: Path) -> None:
    _write_cj(tmp_path)
    expected = list(read_completejourney(tmp_path))
    # The full table's name, gzipped; the descriptions saved with a BOM (as spreadsheets do).
    sample = tmp_path / "transactions_sample.csv"
    (tmp_path / "transactions.csv.gz").write_bytes(gzip.compress(sample.read_bytes()))
    sample.unlink()
    descriptions = tmp_path / "campaign_descriptions.csv"
    descriptions.write_bytes(b"\xef\xbb\xbf" + descriptions.read_bytes())
    assert list(read_completejourney(tmp_path)) == expected


def test_completejourney_ids_follow_the_rows_not_their_order(tmp_path: Path) -> None:
    header = ("household_id,store_id,basket_id,product_id,quantity,sales_value,retail_disc,"
              "coupon_disc,coupon_match_disc,week,transaction_timestamp\n")
    rows = ["10,1,900,5,1.0,2.50,0,0,0,1,2017-03-05 10:00:00\n", "10,1,900,6,1.0,1.00,0,0,0,1,2017-03-05 10:00:00\n",
            "10,1,900,5,1.0,2.50,0,0,0,1,2017-03-05 10:00:00\n", "11,1,901,5,1.0,3.00,0,0,0,1,2017-03-04 09:00:00\n"]

    def ids(lines: list[str]) -> Counter[tuple[str, str]]:
        _write_cj(tmp_path, transactions_sample__csv=header + "".join(lines))
        return Counter((e["event_id"], orjson.dumps(e["properties"]).decode()) for e in read_completejourney(tmp_path)
                       if e["type"] == "purchase")

    # Sorted by time, as the full table is: every row keeps its id (identical rows share theirs in turn).
    assert ids(rows) == ids(sorted(rows, key=lambda r: r.rsplit(",", 1)[1]))
    assert len(ids(rows)) == 4


def test_completejourney_text_that_is_not_utf8_names_the_file_and_line(tmp_path: Path) -> None:
    _write_cj(tmp_path, campaigns__csv="campaign_id,household_id\n1,10\n")
    (tmp_path / "campaigns.csv").write_bytes(b"campaign_id,household_id\n1,10\n1,\xff\xfe\n")
    with pytest.raises(CompleteJourneyFormatError, match="campaigns.csv:3: not UTF-8"):
        list(read_completejourney(tmp_path))


# --- the wire contract -----------------------------------------------------------------------


def test_the_validator_is_not_vacuous(validator: Draft202012Validator, master: list[dict[str, Any]]) -> None:
    naive = dict(master[0], timestamp="1997-01-01T12:00:00")
    bad_channel = dict(master[0], channel="fax")
    assert not validator.is_valid(naive)
    assert not validator.is_valid(bad_channel)


@pytest.mark.parametrize("data_set", ["master", "sample", "complete_journey"])
def test_produced_events_validate(
    validator: Draft202012Validator, data_set: str, request: pytest.FixtureRequest
) -> None:
    events: list[dict[str, Any]] = request.getfixturevalue(data_set)
    stride = 1 if data_set == "sample" else VALIDATION_STRIDE
    checked = {id(e): e for e in events[::stride]}
    for kind in {e["type"] for e in events}:  # first and last of every type, whatever the stride
        of_kind = [e for e in events if e["type"] == kind]
        checked.update({id(e): e for e in (of_kind[0], of_kind[-1])})
    for event in checked.values():
        errors = [error.message for error in validator.iter_errors(event)]
        assert not errors, (event, errors)
        # What goes on the wire is what was validated.
        assert orjson.loads(orjson.dumps(event)) == event


# --- event-time order --------------------------------------------------------------------------


def test_in_event_time_order_sorts_by_instant_and_is_stable() -> None:
    events = [
        {"event_id": "late", "timestamp": "2020-01-01T12:00:00+00:00"},
        {"event_id": "tie-a", "timestamp": "2020-01-01T10:00:00+00:00"},
        {"event_id": "early-in-paris", "timestamp": "2020-01-01T10:30:00+02:00"},  # 08:30 UTC
        {"event_id": "tie-b", "timestamp": "2020-01-01T10:00:00Z"},
    ]
    assert [e["event_id"] for e in in_event_time_order(events)] == ["early-in-paris", "tie-a", "tie-b", "late"]


def test_event_time_refuses_a_naive_timestamp() -> None:
    with pytest.raises(ValueError, match="without an offset"):
        event_time({"event_id": "x", "timestamp": "2020-01-01T10:00:00"})


@pytest.mark.parametrize(("path", "fmt"), [(MASTER, "cdnow"), (CJ, "completejourney")])
def test_converted_records_are_in_event_time_order(path: Path, fmt: str) -> None:
    records, total = _records(path, fmt)
    assert total == len(records)
    times = [when for _, _, when in records]
    assert times == sorted(times)
    for key, value, when in records[::100]:  # a spread of records across the file
        event = orjson.loads(value)
        assert key == event["customer_id"].encode()
        assert when == event_time(event)
    # Stable: a customer's same-day CDNOW lines stay in file order.
    if fmt == "cdnow":
        orders = [orjson.loads(v)["properties"]["order_id"] for k, v, _ in records if k == b"7"]
        assert orders == sorted(orders)


def test_converted_files_are_merged_in_event_time_order(tmp_path: Path) -> None:
    _write_cj(tmp_path)
    records, _ = records_for_format(tmp_path, "completejourney")
    types = [orjson.loads(v)["type"] for _, v, _ in records]
    assert types == ["coupon_redeemed", "campaign_received", "purchase"]


# --- JSONL -------------------------------------------------------------------------------------

LINES = [
    b'{"event_id":"e1","customer_id":"c\xc3\xa9","type":"page_view","timestamp":"2024-01-01T00:00:00+00:00"}',
    b'{ "event_id" : "e2", "anonymous_id": "a1", "type": "ad_click", "timestamp": "2024-01-01T00:00:01Z" }',
    b"not json at all",
]


@pytest.mark.parametrize("compress", [True, False])
def test_jsonl_round_trip_is_byte_exact(tmp_path: Path, compress: bool) -> None:
    text = LINES[0] + b"\r\n\n   \n" + LINES[1] + b"\n" + LINES[2]  # CRLF, blank lines, no final newline
    # The suffix lies on purpose: detection is by content.
    path = tmp_path / ("events.jsonl" if compress else "events.jsonl.gz")
    path.write_bytes(gzip.compress(text) if compress else text)
    assert list(read_jsonl_lines(path)) == LINES


def test_jsonl_drops_a_byte_order_mark_and_a_last_carriage_return(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + LINES[0] + b"\r\n" + LINES[1] + b"\r")  # a Windows editor's file, cut short
    assert list(read_jsonl_lines(path)) == LINES[:2]


def test_jsonl_truncated_gzip_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(gzip.compress(b"\n".join(LINES * 50))[:-30])  # the end of the stream is missing
    with pytest.raises(JsonlReadError, match=f"{path}: the gzip data is damaged"):
        list(read_jsonl_lines(path))


def test_jsonl_records_keep_file_order_and_bytes(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl.gz"
    path.write_bytes(gzip.compress(b"\n".join(LINES) + b"\n"))
    records, total = records_for_format(path, "jsonl")
    assert total is None
    assert list(records) == [
        ("cé".encode(), LINES[0], 1704067200.0),
        (b"a1", LINES[1], 1704067201.0),
        (None, LINES[2], None),
    ]


def test_jsonl_whose_first_line_is_no_json_object_is_the_wrong_format(tmp_path: Path) -> None:
    """A CDNOW text file replayed as jsonl was sent line by line, exit 0, every record a dead
    letter; now it is refused before anything is sent, with the format to use."""
    with pytest.raises(UsageError, match="CDNOW_sample.txt: its first line is not a JSON object.*use --format cdnow"):
        records_for_format(SAMPLE, "jsonl")
    other = tmp_path / "events.csv"
    other.write_text("customer_id,type\nc1,page_view\n")
    with pytest.raises(UsageError, match="first line is not a JSON object.*one per line"):
        records_for_format(other, "jsonl")
    mixed = tmp_path / "mixed.jsonl"  # bad lines after a good first one: sent as given, for the workers to judge
    mixed.write_bytes(LINES[0] + b"\nnot json\n")
    assert [raw for _key, raw, _when in records_for_format(mixed, "jsonl")[0]] == [LINES[0], b"not json"]


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (LINES[0], "cé".encode()),
        (LINES[1], b"a1"),
        (b'{"customer_id": null, "anonymous_id": "anon"}', b"anon"),
        (b'{"customer_id": "", "anonymous_id": "anon"}', b"anon"),
        (b'{"customer_id": "c1", "anonymous_id": "anon"}', b"c1"),
        (b'{"event_id": "no ids"}', None),
        (b'{"customer_id": 42}', None),
        (b'["customer_id", "c1"]', None),
        (b'{"customer_id": "c1"', None),
        (b"\xff\xfe", None),
    ],
)
def test_key_for(raw: bytes, key: bytes | None) -> None:
    assert key_for(raw) == key
    assert key_and_event_time(raw)[0] == key


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="use one of jsonl, cdnow, completejourney"):
        records_for_format(MASTER, "csv")


# --- replay's pure parts -----------------------------------------------------------------------


def test_pacing_divides_event_time_gaps_by_speed() -> None:
    day = 86_400.0
    # A day after the first event, at a day per second: due one second after the start.
    assert pacing_delay(day, 0.0, started_s=100.0, now_s=100.25, speed=day) == pytest.approx(0.75)
    assert pacing_delay(day, 0.0, started_s=100.0, now_s=102.0, speed=day) == 0.0  # overdue
    assert pacing_delay(-day, 0.0, started_s=100.0, now_s=100.0, speed=day) == 0.0  # out of order


def test_progress_bar_shows_count_total_and_rate_and_is_throttled() -> None:
    stream = io.StringIO()  # not a tty: one line per redraw
    bar = _ProgressBar(total=200, stream=stream)
    for count in range(1, 101):
        bar.update(count)
    bar.close(200)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2  # the first update, then the final state: no line per record
    assert "1/200" in lines[0]
    assert "200/200" in lines[-1] and "100.0%" in lines[-1] and "rec/s" in lines[-1]


# --- the independent expectation ---------------------------------------------------------------


def test_cdnow_expectation_matches_a_count_of_raw_ids() -> None:
    raw_ids = Counter(line.split()[0] for line in MASTER.read_text().splitlines()[1:] if line.strip())
    stages = cdnow_expected_stages(MASTER)
    per_stage = Counter(stages.values())
    assert per_stage["retention"] == sum(1 for n in raw_ids.values() if n > 1)
    assert per_stage["purchase"] == sum(1 for n in raw_ids.values() if n == 1)
    assert set(per_stage) == {"retention", "purchase"}
    assert len(stages) == MASTER_CUSTOMERS
    assert len(expected_stages(SAMPLE, "cdnow")) == SAMPLE_CUSTOMERS


def test_completejourney_expectation_matches_set_arithmetic_on_the_rows() -> None:
    baskets: dict[str, set[str]] = defaultdict(set)
    for row in _csv_rows("transactions_sample.csv"):
        baskets[row["household_id"]].add(row["basket_id"])
    buyers = set(baskets)
    reached = {row["household_id"] for row in _csv_rows("campaigns.csv")}
    couponers = {row["household_id"] for row in _csv_rows("coupon_redemptions.csv")}

    stages = completejourney_expected_stages(CJ)
    per_stage = Counter(stages.values())
    assert per_stage["retention"] + per_stage["purchase"] == len(buyers)
    assert per_stage["purchase"] == sum(1 for ids in baskets.values() if len(ids) == 1)
    assert per_stage["awareness"] == len(reached - buyers)
    assert set(stages) == buyers | reached
    assert not (couponers - buyers - reached) & set(stages)  # none in this data set: see below


def test_completejourney_expectation_leaves_coupon_only_households_out(tmp_path: Path) -> None:
    _write_cj(tmp_path, coupon_redemptions__csv=(
        "household_id,coupon_upc,campaign_id,redemption_date\n10,1,1,2017-03-01\n99,1,1,2017-03-01\n"
    ))
    assert completejourney_expected_stages(tmp_path) == {"10": "purchase"}


@pytest.mark.parametrize(("path", "fmt"), [(MASTER, "cdnow"), (SAMPLE, "cdnow"), (CJ, "completejourney")])
def test_readers_agree_with_the_expectation(path: Path, fmt: str) -> None:
    """The replayed events, run through the default journey's rules by hand, give the
    independently counted stages: the readers lose no order, customer or campaign."""
    records, _ = _records(path, fmt)
    orders: dict[str, set[str]] = defaultdict(set)
    aware: set[str] = set()
    for _, value, _ in records:
        event = orjson.loads(value)
        if event["type"] == "purchase":
            orders[event["customer_id"]].add(event["properties"]["order_id"])
        elif event["type"] == "campaign_received":
            aware.add(event["customer_id"])
    derived = {c: "retention" if len(ids) > 1 else "purchase" for c, ids in orders.items()}
    derived.update({c: "awareness" for c in aware - set(orders)})
    assert derived == expected_stages(path, fmt)


def test_replay_skip_resumes_where_a_failed_run_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from journey.cli import main
    from journey.sources import replay

    data = tmp_path / "t.jsonl"
    data.write_text("".join(
        f'{{"event_id": "{i}", "customer_id": "c", "type": "page_view", "timestamp": "2024-01-01T00:00:0{i}+00:00"}}\n'
        for i in range(5)))
    sent: list[tuple[list[bytes], int | None, int]] = []

    async def publish(servers: str, topic: str, records: Any, *, total: int | None, skipped: int = 0, **_: Any) -> int:
        values = [value for _key, value, _when in records]
        sent.append((values, total, skipped))
        return len(values)

    monkeypatch.setattr(replay, "publish", publish)
    assert main(["replay", str(data), "--format", "jsonl", "--quiet", "--skip", "3"]) == 0
    values, total, skipped = sent[0]
    assert [orjson.loads(v)["event_id"] for v in values] == ["3", "4"] and total is None and skipped == 3  # jsonl: not counted ahead
    assert "after skipping the first 3" in capsys.readouterr().out
    # A failed run says where to resume, counting what an earlier --skip left out.
    assert "resume with --skip 10 " in replay._resume(10)
    assert main(["replay", str(data), "--format", "jsonl", "--quiet", "--skip", "-1"]) == 2
