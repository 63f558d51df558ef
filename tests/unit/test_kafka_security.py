"""Every Kafka client journey creates gets the JOURNEY_KAFKA_* settings, through one function
(journey.kafka.security.client_options): each is built here from SASL_SSL settings, with the
client class replaced by a recorder, and what it was given is checked. Nothing connects."""

from __future__ import annotations

import ast
import asyncio
import ssl
from pathlib import Path
from typing import Any

import aiokafka
import pytest
from aiokafka.errors import KafkaConnectionError

from journey.kafka.security import client_options, faust_credentials
from journey.settings import Settings

SERVICE = Path(__file__).resolve().parents[2] / "service" / "journey"

SASL_SSL = {
    "JOURNEY_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "JOURNEY_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "JOURNEY_KAFKA_SASL_USERNAME": "journey-svc",
    "JOURNEY_KAFKA_SASL_PASSWORD": "pw-not-for-logs",
    "JOURNEY_BOOTSTRAP_SERVERS": "127.0.0.1:1",
}


def _settings(tmp_path: Path) -> Settings:
    return Settings.from_env({**SASL_SSL, "JOURNEY_DATA_DIR": str(tmp_path)})


class Refused(KafkaConnectionError):
    """What a recorded client's start() raises: the test never connects."""


class Recorder:
    """Stands in for an aiokafka client class: records every construction's keyword arguments."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        recorder = self

        class Client:
            async def start(self) -> None:
                raise Refused(f"recorded ({len(recorder.calls)})")

            bootstrap = start

            async def stop(self) -> None:
                pass

            close = stop

        return Client()


def assert_sasl_ssl(kwargs: dict[str, Any]) -> None:
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kwargs["sasl_plain_username"] == "journey-svc"
    assert kwargs["sasl_plain_password"] == "pw-not-for-logs"
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)


def test_client_options_per_protocol(tmp_path: Path) -> None:
    assert client_options(Settings()) == {"security_protocol": "PLAINTEXT"}
    tls = client_options(Settings(kafka_security_protocol="SSL"))
    assert tls["security_protocol"] == "SSL" and isinstance(tls["ssl_context"], ssl.SSLContext) and len(tls) == 2
    plain_sasl = client_options(Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="u", kafka_sasl_password="p"))
    assert plain_sasl == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_plain_username": "u",
                          "sasl_plain_password": "p", "ssl_context": None}
    assert_sasl_ssl(client_options(_settings(tmp_path)))


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"])
def test_faust_hands_its_clients_exactly_the_client_options(protocol: str) -> None:
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    settings = Settings(kafka_security_protocol=protocol, kafka_sasl_username="u", kafka_sasl_password="p")
    credentials = faust_credentials(settings)
    got = dict(credentials_to_aiokafka_auth(credentials))
    want = client_options(settings)
    # Each call makes its own SSL context: compare everything else, and that both have one or neither.
    assert {k: v for k, v in got.items() if k != "ssl_context"} == {k: v for k, v in want.items() if k != "ssl_context"}
    assert (got.get("ssl_context") is None) == (want.get("ssl_context") is None)
    assert "p" not in repr(credentials)


async def test_the_worker_s_faust_clients(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from journey.worker.app import create_app

    japp = create_app(_settings(tmp_path))
    app = japp.app
    assert_sasl_ssl(dict(app.producer._settings_auth()))
    consumers = Recorder()
    monkeypatch.setattr(aiokafka, "AIOKafkaConsumer", consumers)
    app.consumer._thread._create_worker_consumer(app.transport)
    assert len(consumers.calls) == 1
    assert_sasl_ssl(consumers.calls[0])
    assert consumers.calls[0]["group_id"] == "journey"


async def test_the_sidecar_s_consumer_highwater_client_and_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from journey.kafka import broker
    from journey.sidecar import consumer as sidecar_consumer
    from journey.sidecar.book import SnapshotBook

    consumers, clients, probes = Recorder(), Recorder(), Recorder()
    monkeypatch.setattr(sidecar_consumer, "AIOKafkaConsumer", consumers)
    monkeypatch.setattr(sidecar_consumer, "AIOKafkaClient", clients)
    monkeypatch.setattr(broker, "AIOKafkaClient", probes)
    snapshots = sidecar_consumer.SnapshotConsumer(_settings(tmp_path), SnapshotBook())
    with pytest.raises(Refused):
        await snapshots._consume()
    with pytest.raises(Refused):
        await snapshots._true_ends({})
    # The probe first checks that something listens: give it a socket that is no broker.
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        snapshots.settings = snapshots.settings.replace(bootstrap_servers=f"127.0.0.1:{port}")
        await snapshots._probe(consumer=None)  # type: ignore[arg-type]
    finally:
        server.close()
    assert snapshots.kafka_ok is False
    for recorded in (consumers, clients, probes):
        assert len(recorded.calls) == 1
        assert_sasl_ssl(recorded.calls[0])


def test_journey_topics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from journey.cli import main
    from journey.kafka import admin

    admins = Recorder()
    monkeypatch.setattr(admin, "AIOKafkaAdminClient", admins)
    for name, value in SASL_SSL.items():
        monkeypatch.setenv(name, value)
    assert main(["topics"]) == 2  # "cannot reach Kafka": the recorder refuses
    assert len(admins.calls) == 1
    assert_sasl_ssl(admins.calls[0])
    assert "pw-not-for-logs" not in capsys.readouterr().err


def test_journey_replay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from journey.cli import main
    from journey.sources import replay

    producers = Recorder()
    monkeypatch.setattr(replay, "AIOKafkaProducer", producers)
    for name, value in SASL_SSL.items():
        monkeypatch.setenv(name, value)
    data = tmp_path / "t.jsonl"
    data.write_text('{"event_id": "1", "customer_id": "c", "type": "page_view", "timestamp": "2024-01-01T00:00:00+00:00"}\n')
    assert main(["replay", str(data), "--format", "jsonl", "--quiet"]) == 2
    assert len(producers.calls) == 1
    assert_sasl_ssl(producers.calls[0])
    assert "pw-not-for-logs" not in capsys.readouterr().err


async def test_journey_dev_s_feed_and_watch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from journey import dev

    producers, consumers = Recorder(), Recorder()
    monkeypatch.setattr(dev, "AIOKafkaProducer", producers)
    monkeypatch.setattr(dev, "AIOKafkaConsumer", consumers)
    with pytest.raises(Refused):
        await dev._feed_and_watch(_settings(tmp_path), rate=1.0, bad_every=0, seconds=0.1)
    for recorded in (producers, consumers):
        assert len(recorded.calls) == 1
        assert_sasl_ssl(recorded.calls[0])


#: aiokafka's client classes: each construction in journey must spread security options (``**...``).
CLIENTS = {"AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient", "AIOKafkaClient"}


def test_every_aiokafka_client_journey_builds_is_given_options() -> None:
    """A new client that forgets the security options would fail on a SASL_SSL cluster only."""
    bare = []
    for path in sorted(SERVICE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if name in CLIENTS and not any(k.arg is None for k in node.keywords):
                bare.append(f"{path.relative_to(SERVICE)}:{node.lineno} {name}(...) without **options")
    assert not bare, "\n".join(bare)
