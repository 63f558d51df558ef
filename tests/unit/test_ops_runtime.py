"""The runtime's operations surface without a broker: JSON log lines, the access log's masked
customer ids, the worker's shutdown watchdog, and what the worker's /readyz answers in each state."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import threading
from pathlib import Path
from typing import Any

import pytest

from journey.logs import JsonFormatter, MaskCustomerIds, identity, logging_config, mask_path
from journey.settings import Settings


def _capture(config: dict[str, Any], stream: io.StringIO) -> None:
    config["handlers"]["journey"]["stream"] = stream
    logging.config.dictConfig(config)


@pytest.fixture
def restore_logging() -> Any:
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    loggers = {n: (lg.level, list(lg.handlers), lg.propagate, list(lg.filters))
               for n in ("uvicorn", "uvicorn.error", "uvicorn.access") for lg in [logging.getLogger(n)]}
    yield
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    for n, (level, handlers, propagate, filters) in loggers.items():
        lg = logging.getLogger(n)
        lg.setLevel(level)
        lg.handlers[:] = handlers
        lg.propagate = propagate
        lg.filters[:] = filters


def test_a_json_line_per_record_with_identity(restore_logging: None) -> None:
    out = io.StringIO()
    _capture(logging_config("json", "info", identity("worker", app_id="journey", port=6066)), out)
    log = logging.getLogger("journey.test")
    log.info("two\nlines %s", "and args")
    log.debug("not at info")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "two\nlines and args" and first["level"] == "info" and first["logger"] == "journey.test"
    assert (first["service"], first["app_id"], first["port"]) == ("worker", "journey", 6066)
    assert isinstance(first["pid"], int) and first["host"] and first["time"].endswith("Z")
    assert second["level"] == "error" and "RuntimeError: boom" in second["exception"]


def test_the_access_log_masks_customer_ids(restore_logging: None) -> None:
    assert mask_path("/customers/c-42?x=1") == "/customers/***?***"
    assert mask_path("DELETE /customers/c-42?reason=asked%20by%20jane%40example.com HTTP/1.1") == "DELETE /customers/***?*** HTTP/1.1"
    assert mask_path("/customers/c-42") == "/customers/***"
    assert mask_path("/stages") == "/stages"
    out = io.StringIO()
    _capture(logging_config("json", "info", identity("sidecar", port=8000), uvicorn=True), out)
    access = logging.getLogger("uvicorn.access")
    access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET", "/customers/alice@example.com", "1.1", 200)
    line = json.loads(out.getvalue())
    assert line["logger"] == "uvicorn.access" and "alice" not in line["message"]
    assert '"GET /customers/*** HTTP/1.1" 200' in line["message"] and line["service"] == "sidecar"


def test_text_format_and_the_filter_on_its_own() -> None:
    record = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s"', ("c", "GET", "/customers/bob/x"), None)
    # An id may hold a slash (uvicorn logs /customers/tenant%2F42 decoded): all of it is masked.
    assert MaskCustomerIds().filter(record) and record.getMessage() == 'c - "GET /customers/***"'
    for path in ("/customers//c-42", "/Customers/c-42", "/CUSTOMERS/tenant/42?reason=x"):
        masked = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s"', ("c", "GET", path), None)
        assert MaskCustomerIds().filter(masked) and "42" not in masked.getMessage() and "***" in masked.getMessage(), path
    assert "%(process)d" in logging_config("text", "info", {})["formatters"]["journey"]["format"]
    assert json.loads(JsonFormatter({"service": "x"}).format(record))["service"] == "x"


def test_worker_and_sidecar_logging_configs() -> None:
    from journey.sidecar.app import sidecar_logging
    from journey.worker.runner import worker_logging

    assert worker_logging(Settings()) is None  # text: Faust's own (colored on a terminal)
    config = worker_logging(Settings(log_format="json", log_level="debug", web_port=7000))
    assert config is not None and config["root"]["level"] == "DEBUG"
    assert config["formatters"]["journey"]["identity"]["port"] == 7000
    sidecar = sidecar_logging(Settings(log_format="json"))
    assert "uvicorn.access" in sidecar["loggers"] and sidecar["formatters"]["journey"]["identity"]["service"] == "sidecar"


class _Exited(Exception):
    pass


def test_the_watchdog_ends_a_stop_that_does_not_end(caplog: pytest.LogCaptureFixture) -> None:
    from journey.worker.runner import EXIT_STOP_TIMED_OUT, ShutdownWatchdog

    codes: list[int] = []
    done = threading.Event()

    def exit(code: int) -> None:
        codes.append(code)
        done.set()

    watchdog = ShutdownWatchdog(0.4, exit=exit)
    with caplog.at_level(logging.INFO):
        logging.getLogger("faust.app.base").info("[^-App]: Flush producer buffer...")
        watchdog.arm("SIGTERM")
        logging.getLogger("faust.app.base").info("[^-App]: Flush producer buffer...")
        logging.getLogger("aiokafka").error("Unable connect to node")  # not a step of the stop
        assert done.wait(5)
    assert codes == [EXIT_STOP_TIMED_OUT] == [70]
    assert "did not stop within" in caplog.text and "last step: [^-App]: Flush producer buffer..." in caplog.text


def test_the_same_signal_twice_ends_at_once_another_does_not() -> None:
    from journey.worker.runner import ShutdownWatchdog

    codes: list[int] = []
    watchdog = ShutdownWatchdog(60, exit=codes.append)
    watchdog.arm("SIGINT")
    watchdog.arm("SIGTERM")  # Ctrl-C reached it, then its parent's SIGTERM: still stopping
    assert codes == []
    watchdog.arm("SIGINT")
    assert codes == [70]


def test_after_a_clean_stop_the_watchdog_keeps_its_exit_code() -> None:
    from journey.worker.runner import ShutdownWatchdog

    codes: list[int] = []
    watchdog = ShutdownWatchdog(60, exit=codes.append)
    watchdog.arm("SIGTERM")
    watchdog.stopped(0)
    watchdog.fire()
    assert codes == [0]


class _Consumer:
    def __init__(self, state: str = "running", partitions: tuple[int, ...] = ()) -> None:
        self.state = state
        self.partitions = partitions

    def assignment(self) -> set[Any]:
        from faust.types import TP

        return {TP("touchpoints", p) for p in self.partitions} | {TP("journey-customers-changelog", 0)}


def test_readyz_says_why_a_worker_is_not_ready(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from journey.worker import views
    from journey.worker.app import create_app

    japp = create_app(Settings(data_dir=tmp_path, bootstrap_servers="127.0.0.1:1"))
    app = japp.app
    ready, detail = views.readiness(japp)
    assert not ready and detail["reason"].startswith("the Kafka consumer is not running")

    consumer = _Consumer(partitions=(2, 0))
    fetcher = {"state": "init"}
    monkeypatch.setattr(views, "built_consumer", lambda a: consumer)
    monkeypatch.setattr(views, "fetcher_state", lambda a: fetcher["state"])
    recovery = app.tables.recovery

    def reason() -> str | None:
        ok, detail = views.readiness(japp)
        assert ok == (detail["reason"] is None)
        assert ok or (detail["lag"], detail["catching_up"]) == (None, None)  # not processing: no lag to tell
        return detail["reason"]

    assert reason() == "joining the consumer group: no partitions assigned yet"
    app.rebalancing_count, app.rebalancing = 1, True
    assert reason() == "rebalancing: partitions are being reassigned"
    app.rebalancing = False
    recovery.in_recovery = True
    monkeypatch.setattr(recovery, "active_remaining_total", lambda: 1234)
    assert reason() == "recovering the customer table from its changelog (1234 records to go)"
    recovery.in_recovery = False
    assert reason() == "waiting for the customer table's first recovery"
    recovery.completed.set()
    assert reason() == "the fetcher is not running (init)"
    fetcher["state"] = "running"
    ready, detail = views.readiness(japp)
    assert ready and detail == {"reason": None, "partitions": [0, 2], "generation": app.consumer_generation_id, "rebalances": 1,
                                "lag": 0, "catching_up": False}
    consumer.state = "stopping"
    assert reason() == "the Kafka consumer is not running (stopping)"


def test_readyz_tells_catching_up_from_caught_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker behind by more than JOURNEY_CATCHING_UP_LAG, or with a partition whose end no
    fetch has told yet, is catching up, and still ready; the lag is the live per-partition lag."""
    from faust.types import TP

    from journey.worker import views
    from journey.worker.app import create_app

    japp = create_app(Settings(data_dir=tmp_path, bootstrap_servers="127.0.0.1:1", catching_up_lag=100))
    app, live = japp.app, japp.aggregates
    assert live is not None
    consumer = _Consumer(partitions=(0, 1))
    monkeypatch.setattr(views, "built_consumer", lambda a: consumer)
    monkeypatch.setattr(views, "fetcher_state", lambda a: "running")
    app.rebalancing_count = 1
    app.tables.recovery.completed.set()
    # The lag itself: the partition's fetch highwater minus the next offset to process.
    highwaters: dict[int, int | None] = {0: 150, 1: None}
    monkeypatch.setattr(app, "_consumer", type("C", (), {"highwater": lambda self, tp: highwaters[tp.partition]})())
    live.on_assigned({TP(live.topic, 0), TP(live.topic, 1)})
    live.offsets[0] = 49  # offsets 0..49 processed: 100 to go
    assert live.partition_lag() == {0: 100, 1: None}

    def answer() -> tuple[bool, int, bool]:
        ready, detail = views.readiness(japp)
        return ready, detail["lag"], detail["catching_up"]

    assert answer() == (True, 100, True)  # partition 1's end is not known yet
    highwaters[1] = 0
    assert answer() == (True, 100, False)  # at the threshold: caught up
    highwaters[1] = 1
    assert answer() == (True, 101, True)
    live.offsets[0] = 149
    assert answer() == (True, 1, False)


def test_consumer_lag_is_read_when_scraped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """journey_consumer_lag says what is left at the moment of the scrape (no timer between), one
    series per assigned partition whose end is known; a partition given away loses its series."""
    from faust.types import TP
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from journey.worker.app import create_app

    japp = create_app(Settings(data_dir=tmp_path, bootstrap_servers="127.0.0.1:1"))
    live = japp.aggregates
    assert live is not None

    def scrape() -> dict[str, float]:
        text = generate_latest(japp.metrics.registry).decode()
        return {s.labels["partition"]: s.value for f in text_string_to_metric_families(text)
                for s in f.samples if s.name == "journey_consumer_lag" and s.labels["topic"] == live.topic}

    assert scrape() == {}  # nothing assigned (and no consumer built for it)
    highwaters: dict[int, int | None] = {0: 150, 1: None, 2: 7}
    monkeypatch.setattr(japp.app, "_consumer", type("C", (), {"highwater": lambda self, tp: highwaters[tp.partition]})())
    live.on_assigned({TP(live.topic, 0), TP(live.topic, 1), TP(live.topic, 2)})
    live.offsets[0] = 49
    live.offsets[2] = 6
    assert scrape() == {"0": 100.0, "2": 0.0}  # partition 1's end is not known yet: no series
    live.offsets[0] = 99  # a batch done since: the next scrape sees it
    highwaters[1] = 10
    assert scrape() == {"0": 50.0, "1": 10.0, "2": 0.0}
    live.on_assigned({TP(live.topic, 1)})
    assert scrape() == {"1": 10.0}
