"""Settings are checked as they are loaded: every bad value is refused with the variable, the value
(never a secret's) and what to give instead; secrets never show; the API of the old dataclass
(kwargs, from_env with a mapping, replace, to_env, ==) still holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from journey.errors import JourneyError
from journey.settings import SECRET_FIELDS, Settings, SettingsError, describe, env_name, unknown_variables

SECRETS = {"JOURNEY_API_TOKEN": "tok-do-not-show", "JOURNEY_KAFKA_SASL_PASSWORD": "pw-do-not-show",
           "JOURNEY_CONTROL_SECRET": "ctl-do-not-show", "JOURNEY_PRIVACY_SALT": "salt-do-not-show"}


def refused(env: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    assert isinstance(info.value, JourneyError) and isinstance(info.value, ValueError)
    return str(info.value)


@pytest.mark.parametrize(
    ("variable", "value", "hint"),
    [
        ("JOURNEY_PARTITIONS", "0", "a whole number >= 1"),
        ("JOURNEY_PARTITIONS", "many", "a whole number >= 1"),
        ("JOURNEY_REPLICATION_FACTOR", "-1", ">= 1"),
        ("JOURNEY_BATCH_SIZE", "0", ">= 1"),
        ("JOURNEY_FETCH_MAX_WAIT_MS", "-5", ">= 0"),
        ("JOURNEY_WEB_PORT", "70000", "<= 65535"),
        ("JOURNEY_SIDECAR_PORT", "0", ">= 1"),
        ("JOURNEY_SESSION_TIMEOUT_S", "0", "seconds from 6"),
        ("JOURNEY_SESSION_TIMEOUT_S", "120", "to 90 (the consumer's request timeout)"),
        ("JOURNEY_SHUTDOWN_TIMEOUT_S", "inf", "> 0"),
        ("JOURNEY_COMMIT_INTERVAL_S", "1e400", "> 0"),
        ("JOURNEY_CHURN_MEDIUM_THRESHOLD", "nan", "< 1"),
        ("JOURNEY_RETENTION_MS", "100000000000000000000", "-1 (keep forever)"),
        ("JOURNEY_DEAD_LETTER_RETENTION_MS", "100000000000000000000", "from 1 to 86399999999999999"),
        ("JOURNEY_RETENTION_MS", "90000000000000000", "-1 (keep forever)"),
        ("JOURNEY_SHUTDOWN_TIMEOUT_S", "-3", "> 0"),
        ("JOURNEY_DEV_RATE", "0", "> 0"),
        ("JOURNEY_CHURN_MEDIUM_THRESHOLD", "1.5", "< 1"),
        ("JOURNEY_CHURN_HIGH_THRESHOLD", "0", "> 0"),
        ("JOURNEY_IDENTITY_ALIAS_WINDOW", "0", ">= 1"),
        ("JOURNEY_RETENTION_MS", "0", "-1 (keep forever)"),
        ("JOURNEY_KAFKA_SECURITY_PROTOCOL", "TLS", "one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
        ("JOURNEY_KAFKA_SASL_MECHANISM", "GSSAPI", "one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"),
        ("JOURNEY_LOG_LEVEL", "loud", "one of critical, error, warning, info, debug"),
        ("JOURNEY_LOG_FORMAT", "xml", "one of text, json"),
        ("JOURNEY_ACCESS_LOG", "maybe", "true or false"),
        ("JOURNEY_WORKER_URLS", "ftp://worker:6066", "http:// or https:// URLs"),
        ("JOURNEY_WORKER_URLS", "http://w:6066,http://", "http:// or https:// URLs"),
        ("JOURNEY_BOOTSTRAP_SERVERS", "kafka", "host:port pairs"),
        ("JOURNEY_BOOTSTRAP_SERVERS", "kafka:99999", "host:port pairs"),
        ("JOURNEY_TOPIC_TOUCHPOINTS", "touch points", "letters, digits"),
        ("JOURNEY_APP_ID", "a/b", "letters, digits"),
        ("JOURNEY_KAFKA_SSL_CAFILE", "/nonexistent/ca.pem", "an existing CA bundle"),
    ],
)
def test_a_bad_value_is_refused_with_its_variable_its_value_and_what_to_give(variable: str, value: str, hint: str) -> None:
    message = refused({variable: value})
    assert message.startswith(f"{variable}={value!r} is not valid"), message
    assert hint in message and "unset it for the default" in message


def test_an_api_token_no_http_client_can_send_is_refused_without_showing_it() -> None:
    for token in ("tökén-do-not-show", "two words-do-not-show"):
        message = refused({"JOURNEY_API_TOKEN": token})
        assert "JOURNEY_API_TOKEN" in message and "HTTP header" in message and "do-not-show" not in message
    assert Settings.from_env({"JOURNEY_API_TOKEN": "a1-B2_c3.~!"}).api_token is not None


def test_every_bad_value_is_reported_at_once() -> None:
    message = refused({"JOURNEY_PARTITIONS": "x", "JOURNEY_WEB_PORT": "0"})
    assert "JOURNEY_PARTITIONS='x'" in message and "JOURNEY_WEB_PORT='0'" in message


def test_checks_across_settings() -> None:
    assert "medium < high" in refused({"JOURNEY_CHURN_MEDIUM_THRESHOLD": "0.8", "JOURNEY_CHURN_HIGH_THRESHOLD": "0.7"})
    message = refused({"JOURNEY_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", **SECRETS})
    assert "JOURNEY_KAFKA_SASL_USERNAME" in message and "pw-do-not-show" not in message


def test_the_constructor_and_replace_check_too() -> None:
    with pytest.raises(SettingsError, match="JOURNEY_PARTITIONS=0"):
        Settings(partitions=0)
    with pytest.raises(SettingsError, match="JOURNEY_BATCH_SIZE"):
        Settings().replace(batch_size=-1)
    with pytest.raises(SettingsError, match="'partition_count' is not a journey setting"):
        Settings(partition_count=3)


def test_a_secret_never_shows_in_a_repr_an_error_or_the_config() -> None:
    s = Settings.from_env({**SECRETS, "JOURNEY_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "JOURNEY_KAFKA_SASL_USERNAME": "u"})
    assert s.api_token is not None and s.api_token.get_secret_value() == "tok-do-not-show"
    assert s.kafka_sasl_password is not None and s.kafka_sasl_password.get_secret_value() == "pw-do-not-show"
    shown = [repr(s), str(s), repr(s.api_token), str(s.model_dump()), *(repr(r) for r in describe(s, SECRETS))]
    for text in shown:
        assert "do-not-show" not in text
    assert {r.value for r in describe(s, SECRETS) if r.secret} == {"********"}
    assert SECRET_FIELDS == {"api_token", "kafka_sasl_password", "control_secret", "privacy_salt"}
    # A secret of the wrong kind is refused without its value.
    with pytest.raises(SettingsError) as info:
        Settings(api_token=12345678)
    assert "12345678" not in str(info.value) and "JOURNEY_API_TOKEN" in str(info.value)


def test_a_blank_secret_is_no_secret() -> None:
    assert Settings.from_env({"JOURNEY_API_TOKEN": "   "}).api_token is None
    assert Settings(api_token="").api_token is None


def test_values_are_read_as_people_write_them() -> None:
    s = Settings.from_env({
        "JOURNEY_KAFKA_SECURITY_PROTOCOL": "ssl", "JOURNEY_LOG_LEVEL": "WARN", "JOURNEY_LOG_FORMAT": "JSON",
        "JOURNEY_ACCESS_LOG": "yes", "JOURNEY_BOOTSTRAP_SERVERS": " k1:9092 , k2:9092 ", "JOURNEY_RETENTION_MS": "-1",
        "JOURNEY_PARTITIONS": "", "JOURNEY_WORKER_URLS": "http://w-0:6066, https://w-1.example.com",
    })
    assert s.kafka_security_protocol == "SSL" and s.log_level == "warning" and s.log_format == "json"
    assert s.access_log is True and s.retention_ms == -1
    assert s.bootstrap_servers == "k1:9092,k2:9092" and s.kafka_broker_url == "kafka://k1:9092,kafka://k2:9092"
    assert s.partitions == 8  # empty: unset
    assert s.worker_urls == "http://w-0:6066,https://w-1.example.com"
    for text, value in (("false", False), ("0", False), ("off", False), ("TRUE", True), ("1", True), ("on", True)):
        assert Settings.from_env({"JOURNEY_ACCESS_LOG": text}).access_log is value


def test_from_env_reads_only_the_mapping_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNEY_PARTITIONS", "5")
    assert Settings.from_env({}).partitions == 8
    assert Settings().partitions == 8  # the constructor never reads the environment
    assert Settings.from_env().partitions == 5  # no mapping: the process's environment
    assert Settings.from_env({"JOURNEY_PARTITIONS": "3"}, partitions=4).partitions == 4  # overrides win
    assert Settings.from_env({"JOURNEY_PARTITIONS": "3"}, partitions=None).partitions == 3  # None: no override


def test_the_new_settings_and_their_defaults() -> None:
    s = Settings()
    assert (s.shutdown_timeout_s, s.dev_rate, s.log_format, s.access_log) == (30.0, 40.0, "text", False)
    assert s.topic_identities == "journey.identities" and s.identity_alias_window == 16
    assert s.identity_junk_ids == "undefined,null,anonymous,0,-1,none,nil,unknown"
    env = Settings.from_env({"JOURNEY_DEV_RATE": "2.5", "JOURNEY_SHUTDOWN_TIMEOUT_S": "5", "JOURNEY_DEV_DIR": "/tmp/d"})
    assert (env.dev_rate, env.shutdown_timeout_s, env.dev_dir) == (2.5, 5.0, Path("/tmp/d"))


def test_frozen_comparable_hashable_and_handed_on_through_the_environment(tmp_path: Path) -> None:
    s = Settings(api_token="t0k", access_log=True, data_dir=tmp_path, kafka_security_protocol="SASL_SSL",
                 kafka_sasl_username="u", kafka_sasl_password="p")
    with pytest.raises(ValueError):
        s.partitions = 3  # type: ignore[misc]
    env = s.to_env(list(Settings.model_fields))
    assert env["JOURNEY_API_TOKEN"] == "t0k" and env["JOURNEY_ACCESS_LOG"] == "true"  # for a child's environment
    again = Settings.from_env(env)
    assert again == s and hash(again) == hash(s)
    assert s.replace(partitions=3) != s and s.replace(partitions=3).replace(partitions=8) == s


def test_variables_that_are_no_setting_are_found() -> None:
    env = {"JOURNEY_INGEST": "bogus", "JOURNEY_PARTITONS": "4", "JOURNEY_PARTITIONS": "4", "PATH": "/bin",
           "JOURNEY_SKIP_BROWSER_TEST": "1"}
    assert unknown_variables(env, ignore=["JOURNEY_SKIP_BROWSER_TEST"]) == ["JOURNEY_INGEST", "JOURNEY_PARTITONS"]


def test_describe_says_where_each_value_came_from() -> None:
    env = {"JOURNEY_PARTITIONS": "4", "JOURNEY_API_TOKEN": "x"}
    s = Settings.from_env(env, bootstrap_servers="k:1")
    rows = {r.name: r for r in describe(s, env, options=["bootstrap_servers"])}
    assert len(rows) == len(Settings.model_fields)
    assert (rows["partitions"].source, rows["partitions"].value, rows["partitions"].variable) == ("environment", "4", "JOURNEY_PARTITIONS")
    assert (rows["bootstrap_servers"].source, rows["bootstrap_servers"].value) == ("option", "k:1")
    assert (rows["batch_size"].source, rows["api_token"].value, rows["journey_file"].value) == ("default", "********", "(unset)")
    assert all(r.description for r in rows.values()), "every setting says what it does"
    assert env_name("dev_rate") == "JOURNEY_DEV_RATE"
