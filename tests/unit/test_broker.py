"""EmbeddedBroker's process bookkeeping (no broker started: a stand-in process)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from journey.kafka.broker import EmbeddedBroker


def test_pid_is_the_running_process_and_none_otherwise() -> None:
    broker = EmbeddedBroker(port=1)
    assert broker.pid is None
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    broker._process = stand_in
    try:
        assert broker.running and broker.pid == stand_in.pid
    finally:
        stand_in.kill()
        stand_in.wait()
    assert not broker.running and broker.pid is None


async def test_an_unreachable_broker_is_one_line_that_says_what_to_do() -> None:
    from journey.errors import BrokerError
    from journey.kafka.admin import check_reachable
    from journey.kafka.broker import free_port

    where = f"127.0.0.1:{free_port()}"  # nobody listens there
    with pytest.raises(BrokerError, match=f"cannot reach Kafka at {where} .*start the broker, or point --bootstrap-servers"):
        await check_reachable(where, within_s=0.5)


def test_journey_worker_checks_the_broker_before_it_builds_the_app(monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Before: an unreachable broker was a Faust/aiokafka traceback and exit 1; the other commands
    say `journey: cannot reach Kafka ...` and exit 2."""
    from journey import cli
    from journey.errors import BrokerError
    from journey.worker import runner

    async def unreachable(bootstrap_servers: str, **kwargs: object) -> None:
        raise BrokerError(f"cannot reach Kafka at {bootstrap_servers} (refused); start the broker")

    def no_app(settings: object) -> None:
        raise AssertionError("the app was built before the broker was checked")

    monkeypatch.setattr(runner, "check_reachable", unreachable)
    monkeypatch.setattr(runner, "create_app", no_app)
    assert cli.main(["worker", "--bootstrap-servers", "127.0.0.1:1"]) == 2
    assert capsys.readouterr().err.startswith("journey: cannot reach Kafka at 127.0.0.1:1")


async def test_a_broker_still_starting_gets_tries_and_the_wait_is_told_once() -> None:
    from journey.errors import BrokerError
    from journey.kafka.admin import check_reachable
    from journey.kafka.broker import free_port

    where = f"127.0.0.1:{free_port()}"
    told: list[str] = []
    with pytest.raises(BrokerError, match="cannot reach Kafka"):
        await check_reachable(where, within_s=2.5, waiting=told.append)
    assert told == [f"Kafka at {where} does not answer yet (KafkaConnectionError); trying for up to 2 s"]



@pytest.mark.parametrize("command", [["topics"], ["forget", "c1"]])
def test_one_shot_commands_say_an_unreachable_broker_in_one_line(command: list[str]) -> None:
    """Before: aiokafka's own `Unable connect to ...` line came first, and `journey forget` gave a
    shorter message than the other commands. A process of its own: logging as a user sees it."""
    from journey.kafka.broker import free_port

    where = f"127.0.0.1:{free_port()}"
    done = subprocess.run([sys.executable, "-m", "journey.cli", *command, "--bootstrap-servers", where],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    err = [line for line in done.stderr.splitlines() if not line.startswith("journey: note:")]
    assert len(err) == 1 and err[0].startswith(f"journey: cannot reach Kafka at {where}"), err
    assert "JOURNEY_KAFKA_*" in err[0]
