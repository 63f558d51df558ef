"""The contract of worker/faust_internals.py: every private name of faust, mode, aiokafka,
rocksdict or prometheus_client that journey relies on still exists, with the parameters it
expects; the module uses no private name it does not declare; and the transport it installs
is the one the worker runs on."""

from __future__ import annotations

import ast
from pathlib import Path

import aiokafka
import faust
import pytest
from faust.stores.rocksdb import Store as RocksDBStore
from faust.transport.drivers import aiokafka as faust_aiokafka
from prometheus_client import CollectorRegistry, Histogram

from journey.errors import JourneyError
from journey.worker import faust_internals
from journey.worker.faust_internals import (
    CONTACTS,
    JourneyConsumer,
    JourneyConsumerThread,
    JourneyTransport,
    check_contacts,
    install_transport,
)

MODULE = Path(faust_internals.__file__)


def _app(name: str = "contract", **kwargs: object) -> faust.App:
    return faust.App(name, broker="kafka://127.0.0.1:1", autodiscover=False, **kwargs)


async def _instances() -> dict[str, object]:
    """Real objects of every owner whose data attributes the contract names (none connects)."""
    app = _app()
    consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
    histogram = Histogram("h", "h", registry=CollectorRegistry())
    return {
        "faust.app.base:App": app,
        "faust.transport.consumer:Consumer": app.consumer,
        "aiokafka.consumer.consumer:AIOKafkaConsumer": consumer,
        "prometheus_client.metrics:Histogram": histogram,
    }


async def test_every_private_name_journey_relies_on_is_still_there() -> None:
    problems = check_contacts(await _instances())
    assert not problems, "faust_internals' contract broke (an upgrade moved these):\n" + "\n".join(problems)


def test_a_moved_name_is_reported_with_what_journey_needs_it_for(monkeypatch: pytest.MonkeyPatch) -> None:
    moved = faust_internals.Contact("faust.stores.rocksdb:Store", "_db_for_partition", ("self", "partition", "extra"), "test")
    monkeypatch.setattr(faust_internals, "CONTACTS", (moved,))
    assert check_contacts({}) == [
        "faust.stores.rocksdb:Store._db_for_partition: parameters are now ('self', 'partition'), "
        "journey expects ('self', 'partition', 'extra') (to test)"
    ]


def _private_names_used(tree: ast.AST) -> set[str]:
    """Private names the module reads from other objects or overrides from its base classes."""
    own_defs = {n.name for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name.startswith("_")}
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            used.add(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("_") and not node.name.startswith("__"):
            used.add(node.name)
    return used - own_defs


def test_the_module_declares_every_private_name_it_uses() -> None:
    tree = ast.parse(MODULE.read_text())
    # Its own private helpers (defined here) are not contacts.
    own = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
    declared = {c.name for c in CONTACTS}
    undeclared = _private_names_used(tree) - declared - own - {"_Ack"}
    assert not undeclared, f"faust_internals uses private names missing from CONTACTS: {sorted(undeclared)}"


def test_the_worker_app_runs_on_journeys_transport_and_consumer(tmp_path: Path) -> None:
    from journey.settings import Settings
    from journey.worker.app import create_app

    japp = create_app(Settings(data_dir=tmp_path, bootstrap_servers="127.0.0.1:1"))
    assert isinstance(japp.app.transport, JourneyTransport)
    assert isinstance(japp.app.consumer, JourneyConsumer)
    assert isinstance(japp.app.consumer._thread, JourneyConsumerThread)
    assert japp.app.transport.sink is not None and japp.app.transport.fetch_max_wait_ms == 50
    assert isinstance(japp.customers.data, RocksDBStore)


def test_install_transport_is_idempotent_and_works_after_agents_are_declared() -> None:
    app = _app()

    @app.agent(app.topic("t"))
    async def agent(stream: faust.StreamT) -> None:
        async for _ in stream:
            pass

    transport = install_transport(app)
    assert install_transport(app, fetch_max_wait_ms=10) is transport and transport.fetch_max_wait_ms == 10
    assert type(_app().consumer._thread) is faust_aiokafka.AIOKafkaConsumerThread  # stock, for contrast


def test_install_transport_refuses_once_the_consumer_exists() -> None:
    app = _app()
    _ = app.consumer  # the worker builds it on start
    with pytest.raises(JourneyError, match="before the worker starts"):
        install_transport(app)


def test_install_transport_refuses_a_non_aiokafka_broker_url() -> None:
    app = faust.App("contract", broker="confluent://127.0.0.1:1", autodiscover=False)
    with pytest.raises(JourneyError, match="kafka://"):
        install_transport(app)


def _ledger_app() -> tuple[faust.App, faust.TopicT]:
    app = _app("ledger")
    install_transport(app)
    topic = app.topic("in")
    app.topics.add(topic)
    app.topics._acking_topics.add("in")  # what the conductor does when it subscribes
    return app, topic


def test_ack_offsets_leaves_the_ledger_as_fausts_own_ack_does() -> None:
    from faust.types import TP
    from faust.types.tuples import Message

    tp = TP("in", 0)
    ours, _ = _ledger_app()
    theirs, _ = _ledger_app()
    for consumer in (ours.consumer, theirs.consumer):
        consumer._committed_offset[tp] = 3  # acks below the committed offset are void
    assert ours.consumer.ack_offsets({tp: (0, 9)}) == 7
    for offset in range(10):
        theirs.consumer.ack(Message("in", 0, offset, 0.0, 0, None, None, b"", b"", 0, 0, tp=tp))
    for consumer in (ours.consumer, theirs.consumer):
        assert sorted(consumer._acked[tp]) == list(range(3, 10))
        assert consumer._acked_index[tp] == set(range(3, 10))
        assert consumer._n_acked == 7
        assert consumer._new_offset(tp) == 10  # what Faust commits next
