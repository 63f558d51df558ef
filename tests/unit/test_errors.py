"""One error root: every error journey defines is a JourneyError, and the CLI prints a
JourneyError's message (no traceback, exit 2) while anything else keeps its traceback."""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from journey import cli, errors
from journey.errors import JourneyError

REPO = Path(__file__).resolve().parents[2]
SERVICE = REPO / "service"
SAMPLE = REPO / "data/cdnow/CDNOW_sample.txt"


def _exception_classes() -> list[tuple[str, str]]:
    """(module, class) of every exception class in journey's source: named ...Error, or derived
    from an ...Error / ...Exception or from another one found (read from the AST, so listing
    them imports nothing)."""
    classes = []
    for path in sorted((SERVICE / "journey").rglob("*.py")):
        module = ".".join(path.relative_to(SERVICE).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = {ast.unparse(b).rpartition(".")[2] for b in node.bases}
                classes.append((module, node.name, bases))
    names = {name for _m, name, bases in classes if name.endswith("Error") or any(b.endswith(("Error", "Exception")) for b in bases)}
    while True:  # and whatever derives from those
        more = {name for _m, name, bases in classes if bases & names} - names
        if not more:
            break
        names |= more
    return [(module, name) for module, name, _bases in classes if name in names]


EXCEPTIONS = _exception_classes()


def test_the_scan_finds_journeys_errors() -> None:
    names = {name for _module, name in EXCEPTIONS}
    assert {"SettingsError", "ChurnParamsError", "CalibrationError", "HighwaterError", "TopicError", "ReplayError",
            "CdnowFormatError", "SnapshotError", "InvalidTouchpoint", "WorkersUnreachable"} <= names


@pytest.mark.parametrize(("module", "name"), EXCEPTIONS, ids=[f"{m}.{n}" for m, n in EXCEPTIONS])
def test_every_journey_error_is_a_journey_error(module: str, name: str) -> None:
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
        pytest.skip(f"{module}.{name} is not an exception")
    assert issubclass(cls, JourneyError), f"{module}.{name} must derive from journey.errors.JourneyError (or a subclass)"


def test_concerns_keep_their_builtin_bases_and_old_names() -> None:
    from journey.churn.bgnbd import ChurnParamsError
    from journey.churn.calibration import CalibrationError
    from journey.core.definition import DefinitionError
    from journey.core.snapshot import SnapshotError
    from journey.kafka.broker import BrokerError
    from journey.kafka.offsets import HighwaterError
    from journey.settings import SettingsError

    assert SettingsError is errors.SettingsError and issubclass(SettingsError, ValueError)
    assert DefinitionError is errors.DefinitionError and issubclass(DefinitionError, ValueError)
    assert BrokerError is errors.BrokerError and issubclass(HighwaterError, (BrokerError, RuntimeError))
    assert issubclass(ChurnParamsError, errors.ChurnError) and issubclass(CalibrationError, errors.ChurnError)
    assert issubclass(SnapshotError, errors.EncodingError)
    assert issubclass(errors.InputNotFound, FileNotFoundError) and issubclass(errors.InputNotFound, errors.InputError)
    for cls in vars(errors).values():
        if isinstance(cls, type) and issubclass(cls, Exception):
            assert issubclass(cls, JourneyError) and cls.__doc__


def _journey(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("JOURNEY_")}
    return subprocess.run(
        [sys.executable, "-m", "journey.cli", *argv],
        env={**clean, "PYTHONPATH": str(SERVICE), **(env or {})},
        capture_output=True, text=True, timeout=120,
    )


def test_cli_prints_a_bad_setting_without_a_traceback() -> None:
    done = _journey("churn", "score", str(SAMPLE), "--format", "cdnow", "--as-of", "1997-09-30",
                    env={"JOURNEY_CHURN_HORIZON_DAYS": "ninety"})
    assert done.returncode == 2
    assert done.stderr.startswith("journey: JOURNEY_CHURN_HORIZON_DAYS='ninety' is not valid")
    assert "give a number > 0" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_cli_prints_a_missing_params_file_without_a_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.json"
    done = _journey("churn", "score", str(SAMPLE), "--format", "cdnow", "--as-of", "1997-09-30", "--params", str(missing))
    assert done.returncode == 2
    assert done.stderr.startswith(f"journey: churn params file {missing} does not exist; run `journey churn fit`")
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["churn", "score", "{missing}", "--format", "cdnow", "--as-of", "1997-09-30"], "is not a file"),
        (["churn", "score", str(SAMPLE), "--format", "cdnow", "--as-of", "30/09/1997"], "neither YYYY-MM-DD"),
        (["churn", "fit", str(SAMPLE), "--format", "cdnow", "--until", "1990-01-01", "--out", "{out}"], "no purchases"),
        (["churn", "fit", str(SAMPLE), "--format", "cdnow", "--until", "1997-09-30", "--out", "{out}",
          "--time-unit-days", "0"], "--time-unit-days"),
    ],
)
def test_cli_user_errors_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    argv = [a.format(missing=tmp_path / "none.txt", out=tmp_path / "p.json") for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("journey: ") and message in err


def test_cli_lets_anything_else_through_with_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(args: object) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "cmd_churn", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["churn", "score", str(SAMPLE), "--format", "cdnow", "--as-of", "1997-09-30"])
