"""The ways to ask for a forget (the sidecar's DELETE, `journey forget`) and the topics behind them."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from journey.cli import build_parser
from journey.errors import BrokerError, SettingsError
from journey.kafka.admin import journey_topic_specs
from journey.settings import Settings
from journey.sidecar.app import create_sidecar

TOKEN = "s3cret-token"


@pytest.fixture()
def client() -> TestClient:
    app = create_sidecar(Settings(partitions=2, api_token=TOKEN), consume=False)
    with TestClient(app) as c:
        yield c


def test_delete_needs_the_token_and_answers_202_with_a_request_id(client: TestClient) -> None:
    asked: list[tuple[str, str | None]] = []

    async def forget(customer_id: str, reason: str | None) -> str:
        asked.append((customer_id, reason))
        return "f" * 32

    client.app.state.journey.forget = forget
    assert client.delete("/customers/c-1").status_code == 401
    assert client.delete("/customers/c-1", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert not asked
    r = client.delete("/customers/c-1?reason=art.%2017", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 202 and r.json()["request_id"] == "f" * 32
    assert asked == [("c-1", "art. 17")]


def test_delete_takes_an_id_with_a_slash(client: TestClient) -> None:
    asked: list[str] = []

    async def forget(customer_id: str, reason: str | None) -> str:
        asked.append(customer_id)
        return "f" * 32

    client.app.state.journey.forget = forget
    r = client.delete("/customers/tenant%2F42", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 202 and asked == ["tenant/42"]
    # A literal slash is a mistyped path, never an id: nobody else is forgotten.
    for path in ("/customers/c-42/", "/customers//c-42", "/customers/tenant/42"):
        r = client.delete(path, headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 404 and "%2F" in r.json()["error"], path
    assert asked == ["tenant/42"]


def test_delete_says_when_the_request_cannot_be_published(client: TestClient) -> None:
    async def forget(customer_id: str, reason: str | None) -> str:
        raise BrokerError("topic 'journey.privacy' does not exist; run `journey topics`")

    client.app.state.journey.forget = forget
    r = client.delete("/customers/c-1", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 503 and "journey topics" in r.json()["error"]


def test_delete_is_off_without_a_token() -> None:
    with TestClient(create_sidecar(Settings(partitions=2), consume=False)) as c:
        assert c.delete("/customers/c-1", headers={"Authorization": "Bearer x"}).status_code == 404


def test_the_forget_command_parses() -> None:
    args = build_parser().parse_args(["forget", "c-1", "--reason", "asked by mail", "--undo"])
    assert (args.customer_id, args.reason, args.undo) == ("c-1", "asked by mail", True)


def test_the_privacy_topic_is_compacted_and_dead_letters_are_never_kept_forever() -> None:
    settings = Settings(retention_ms=-1, dead_letter_retention_ms=86_400_000)
    specs = {s.name: s for s in journey_topic_specs(settings)}
    assert specs[settings.topic_privacy].configs()["cleanup.policy"] == "compact"
    assert specs[settings.topic_dead_letter].configs() == {"retention.ms": "86400000"}
    assert specs[settings.topic_transitions].configs() == {"retention.ms": "-1"}
    with pytest.raises(SettingsError, match="JOURNEY_DEAD_LETTER_RETENTION_MS"):
        Settings(dead_letter_retention_ms=-1)


def test_the_changelog_has_the_erasure_compaction_lag_whoever_creates_it(tmp_path: Path) -> None:
    # `journey topics` creates it so; a worker that starts first creates it itself (Faust), the same.
    from journey.kafka.admin import ERASURE_COMPACTION_LAG_MS
    from journey.worker.app import create_app
    from journey.worker.topics import all_topic_specs

    settings = Settings(data_dir=tmp_path)
    expected = str(ERASURE_COMPACTION_LAG_MS)
    by_topics = {s.name: s for s in all_topic_specs(settings)}
    changelog = create_app(settings).customers.changelog_topic
    assert by_topics[changelog.get_topic_name()].configs()["max.compaction.lag.ms"] == expected
    assert changelog.config["max.compaction.lag.ms"] == expected


# --- the relay's send: never lose a request ------------------------------------------------------
class _FlakyProducer:
    def __init__(self, failures: int) -> None:
        self.failures, self.sent = failures, 0

    async def send_and_wait(self, *args: object) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("broker away")
        self.sent += 1


async def test_the_relay_retries_a_failed_send_until_it_is_acknowledged() -> None:
    from types import SimpleNamespace

    from journey.worker.pipeline import Output
    from journey.worker.privacy import relay_send

    app = SimpleNamespace(producer=_FlakyProducer(failures=2))
    exits: list[str] = []
    await relay_send(app, "tp", Output(b"c1", b"{}", None), tries=4, first_wait_s=0.0, on_failure=exits.append)
    assert app.producer.sent == 1 and not exits


async def test_a_relay_send_that_keeps_failing_exits_so_the_request_is_read_again() -> None:
    from types import SimpleNamespace

    from journey.worker.pipeline import Output
    from journey.worker.privacy import relay_send

    app = SimpleNamespace(producer=_FlakyProducer(failures=10))
    exits: list[str] = []
    await relay_send(app, "tp", Output(b"c1", b"{}", None), tries=3, first_wait_s=0.0, on_failure=exits.append)
    assert app.producer.sent == 0
    assert len(exits) == 1 and "could not be relayed" in exits[0] and "c1" not in exits[0]
