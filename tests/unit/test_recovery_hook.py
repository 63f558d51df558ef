"""use_true_highwaters wires the fetch-highwater consumer thread into a Faust app."""

from __future__ import annotations

import faust
import pytest
from faust.transport.drivers import aiokafka as faust_aiokafka

from journey.worker.recovery import (
    RecoverySetupError,
    TrueHighwaterConsumerThread,
    TrueHighwaterTransport,
    use_true_highwaters,
)


def _app(**kwargs: object) -> faust.App:
    return faust.App("hook-test", broker="kafka://127.0.0.1:1", autodiscover=False, **kwargs)


def test_app_gets_true_highwater_consumer_thread() -> None:
    app = _app()
    assert type(app.consumer._thread) is faust_aiokafka.AIOKafkaConsumerThread  # stock

    fixed = _app()
    use_true_highwaters(fixed)
    assert isinstance(fixed.transport, TrueHighwaterTransport)
    assert isinstance(fixed.consumer._thread, TrueHighwaterConsumerThread)


def test_works_after_agents_are_declared_and_is_idempotent() -> None:
    app = _app()
    topic = app.topic("t")

    @app.agent(topic)
    async def agent(stream: faust.StreamT) -> None:
        async for _ in stream:
            pass

    use_true_highwaters(app)
    transport = app.transport
    use_true_highwaters(app)
    assert app.transport is transport
    assert isinstance(app.consumer._thread, TrueHighwaterConsumerThread)


def test_refuses_once_the_consumer_exists() -> None:
    app = _app()
    app.consumer  # the worker builds it on start
    with pytest.raises(RecoverySetupError, match="before the worker starts"):
        use_true_highwaters(app)


def test_refuses_a_non_aiokafka_broker_url() -> None:
    app = faust.App("hook-test", broker="confluent://127.0.0.1:1", autodiscover=False)
    with pytest.raises(RecoverySetupError, match="kafka://"):
        use_true_highwaters(app)
