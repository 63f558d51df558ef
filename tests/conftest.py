"""Shared fixtures: one embedded Kafka-protocol broker for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from journey.kafka.broker import EmbeddedBroker


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers ("host:port") of a tansu broker on a free port.

    In memory and shared by every test: give each test its own topic names.
    """
    log_path = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log_path) as embedded:
        yield embedded.bootstrap_servers
