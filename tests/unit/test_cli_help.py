"""The command line explains itself: every command and option has a description, `--version`
answers, `journey config --help` lists every JOURNEY_* setting, and `journey config` shows the
settings in force with where they came from, secrets masked."""

from __future__ import annotations

import argparse
import json

import pytest

from journey import __version__
from journey.cli import build_parser, main
from journey.settings import Settings, env_name


def _parsers(parser: argparse.ArgumentParser, path: str = "journey") -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _parsers(sub, f"{path} {name}")
    return found


def test_every_command_and_option_has_a_description() -> None:
    missing = []
    for path, parser in _parsers(build_parser()):
        if path != "journey" and not parser.description:
            missing.append(f"{path}: no description")
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    if not choice.help:
                        missing.append(f"{path} {choice.dest}: no summary")
            elif not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}: no help")
    assert not missing, "\n".join(missing)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"journey {__version__}"


def test_config_help_lists_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["config", "--help"])
    text = capsys.readouterr().out
    for name in Settings.model_fields:
        assert env_name(name) in text, name
    assert "JOURNEY_LOG_FORMAT (default: text)" in text and "JOURNEY_API_TOKEN (default: unset)" in text
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "journey config --help" in capsys.readouterr().out


def test_config_shows_values_sources_and_masks_secrets(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("JOURNEY_PARTITIONS", "4")
    monkeypatch.setenv("JOURNEY_API_TOKEN", "tok-do-not-show")
    monkeypatch.setenv("JOURNEY_INGEST", "bogus")
    assert main(["config", "--bootstrap-servers", "k:9092"]) == 0
    out, err = capsys.readouterr()
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("JOURNEY_")}
    assert lines["JOURNEY_PARTITIONS"].endswith("4  (environment)")
    assert lines["JOURNEY_BOOTSTRAP_SERVERS"].endswith("k:9092  (option)")
    assert lines["JOURNEY_API_TOKEN"].endswith("********  (environment)")
    assert "JOURNEY_BATCH_SIZE" not in lines  # defaults only with --all
    assert "JOURNEY_INGEST is set but is no journey setting" in err
    assert main(["config", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["settings"]["JOURNEY_BATCH_SIZE"] == {"value": "10000", "source": "default"}
    assert data["settings"]["JOURNEY_API_TOKEN"] == {"value": "********", "source": "environment", "secret": True}
    assert data["unknown_variables"] == ["JOURNEY_INGEST"]
    assert main(["config", "--format", "env", "--all"]) == 0
    out = capsys.readouterr().out
    assert "JOURNEY_BATCH_SIZE=10000" in out and "tok-do-not-show" not in out


def test_config_refuses_a_bad_setting_without_showing_a_secret(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("JOURNEY_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("JOURNEY_KAFKA_SASL_PASSWORD", "pw-do-not-show")
    assert main(["config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("journey: JOURNEY_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs JOURNEY_KAFKA_SASL_USERNAME")
    assert "pw-do-not-show" not in err
