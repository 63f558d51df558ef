"""Shared fixtures: one embedded Kafka-protocol broker for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from journey.kafka.broker import EmbeddedBroker
from support.env import strip_journey_from_this_process

#: JOURNEY_* variables of the calling shell, removed before any test runs (see support/env.py).
_DROPPED: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    _DROPPED.extend(strip_journey_from_this_process())


def pytest_report_header(config: pytest.Config) -> str | None:
    return f"journey: ignoring {', '.join(sorted(_DROPPED))} from the environment" if _DROPPED else None


@pytest.fixture(scope="session")
def embedded_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """The session's tansu broker process (its ``pid``: a test may pause it, and must resume it)."""
    log_path = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log_path) as embedded:
        yield embedded


@pytest.fixture(scope="session")
def broker(embedded_broker: EmbeddedBroker) -> str:
    """Bootstrap servers ("host:port") of a tansu broker on a free port.

    In memory and shared by every test: give each test its own topic names.
    """
    return embedded_broker.bootstrap_servers
