"""`journey dev`'s guards, without a broker: one run per directory, its ports free, a child that
stops is reported instead of a feed that goes on unprocessed, and ``--rate 0`` runs no feed."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest

from journey import dev
from journey.errors import UsageError
from journey.settings import Settings


def _settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env({"JOURNEY_DEV_DIR": str(tmp_path / "dev"), **env})


def test_a_second_run_on_the_same_directory_is_refused_before_it_touches_anything(tmp_path: Path) -> None:
    var = tmp_path / "dev"
    var.mkdir()
    (var / "worker").mkdir()
    (var / "worker" / "state").write_text("the running worker's")
    held = dev._claim(var)  # the first run
    try:
        with pytest.raises(UsageError, match="another `journey dev` .* is running on .*JOURNEY_DEV_DIR"):
            dev.run_dev(_settings(tmp_path), rate=1.0, bad_every=0, seconds=0.1)
        assert (var / "worker" / "state").read_text() == "the running worker's"
    finally:
        held.close()
    dev._claim(var).close()  # free again once the first run ends


def test_a_taken_port_is_named_with_its_setting(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UsageError, match=f"port {port} on 127.0.0.1, the worker's \\(JOURNEY_WEB_PORT\\), is taken"):
            dev.run_dev(_settings(tmp_path, JOURNEY_WEB_PORT=str(port)), rate=1.0, bad_every=0, seconds=0.1)
    dev._claim(tmp_path / "dev").close()  # the refused run let go of the directory


def test_a_negative_rate_is_refused() -> None:
    with pytest.raises(UsageError, match="--rate -1: .* or 0 for no feed"):
        dev.run_dev(Settings.from_env({}), rate=-1.0, bad_every=0, seconds=None)


class _Client:
    """An aiokafka client that starts and stops, and whose consumer yields nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.sent = 0

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def send(self, *args: Any, **kwargs: Any) -> None:
        self.sent += 1

    def __aiter__(self) -> _Client:
        return self

    async def __anext__(self) -> Any:
        import asyncio

        await asyncio.sleep(3600)


class _Child:
    def __init__(self, code: int | None) -> None:
        self.code = code

    def poll(self) -> int | None:
        return self.code


async def test_a_child_that_stops_ends_the_run_with_its_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dev, "AIOKafkaProducer", _Client)
    monkeypatch.setattr(dev, "AIOKafkaConsumer", _Client)
    started = time.monotonic()
    with pytest.raises(dev.ChildDied, match="sidecar stopped \\(exit 3\\)"):
        await dev._feed_and_watch(_settings(tmp_path), rate=0.0, bad_every=0, seconds=None,
                                  children=[("worker", _Child(None)), ("sidecar", _Child(3))])  # type: ignore[list-item]
    assert time.monotonic() - started < 5


async def test_rate_zero_feeds_nothing_and_ends_when_its_time_is_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    producers: list[_Client] = []

    def producer(*args: Any, **kwargs: Any) -> _Client:
        producers.append(_Client())
        return producers[-1]

    monkeypatch.setattr(dev, "AIOKafkaProducer", producer)
    monkeypatch.setattr(dev, "AIOKafkaConsumer", _Client)
    await dev._feed_and_watch(_settings(tmp_path), rate=0.0, bad_every=0, seconds=0.3, children=[("worker", _Child(None))])  # type: ignore[list-item]
    assert producers[0].sent == 0


def test_the_demo_windows_are_valid_settings_and_shorter_than_the_defaults() -> None:
    demo = Settings.from_env(dev.DEMO_WINDOWS)
    default = Settings.from_env({})
    assert demo.churn_abandonment_window_hours * 3600 == pytest.approx(72)
    assert demo.churn_stall_days < default.churn_stall_days and demo.churn_stall_days * 86400 < 600


def test_a_child_s_exit_is_told_as_a_code_or_the_signal_that_ended_it() -> None:
    assert [dev._how(c) for c in (0, 70, -15, -9, -200)] == ["exit 0", "exit 70", "on SIGTERM", "on SIGKILL", "exit -200"]


def test_a_lock_the_file_system_cannot_take_does_not_stop_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Some mounts refuse flock altogether (ENOLCK): that is no other run, so no refusal."""
    import errno
    import fcntl

    def no_locks(*args: object) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    dev._claim(tmp_path).close()


def test_the_port_check_binds_like_a_server() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        taken.listen()
        assert dev._port_taken("127.0.0.1", port)
    assert not dev._port_taken("127.0.0.1", port)  # closed: free again
    assert not dev._port_taken("no-such-host.invalid", 1)  # left for the server to report
