"""Settings: read from JOURNEY_* variables, and handed to another process the same way."""

from __future__ import annotations

from pathlib import Path

import pytest

from journey.settings import Settings, SettingsError


def test_to_env_round_trips_through_from_env() -> None:
    s = Settings(
        bootstrap_servers="k1:9092,k2:9092", app_id="x", partitions=12, batch_size=500,
        api_token="t0k", data_dir=Path("/tmp/journey-x"),
    )
    names = list(Settings.model_fields)
    again = Settings.from_env(s.to_env(names))
    assert again == s


def test_to_env_leaves_out_what_is_none() -> None:
    env = Settings(api_token=None, partitions=3).to_env(["api_token", "partitions"])
    assert env == {"JOURNEY_PARTITIONS": "3"}


def test_to_env_refuses_a_name_that_is_no_setting() -> None:
    with pytest.raises(SettingsError, match="partition_count"):
        Settings().to_env(["partition_count"])


def test_settings_read_from_the_environment_with_actionable_errors():
    s = Settings.from_env({"JOURNEY_PARTITIONS": "12", "JOURNEY_BATCH_SIZE": "500", "JOURNEY_API_TOKEN": "t"})
    assert s.partitions == 12 and s.batch_size == 500 and s.api_token is not None and s.api_token.get_secret_value() == "t"
    assert Settings.from_env({}, bootstrap_servers="k:9092").bootstrap_servers == "k:9092"
    try:
        Settings.from_env({"JOURNEY_PARTITIONS": "many"})
    except ValueError as exc:
        assert "JOURNEY_PARTITIONS" in str(exc) and "'many'" in str(exc)
    else:
        raise AssertionError("a bad number must be refused")
