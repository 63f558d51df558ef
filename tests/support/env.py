"""The environment of the processes the tests start: the caller's shell minus journey's own settings.

Every ``JOURNEY_*`` variable of the shell running pytest (``JOURNEY_INGEST``, ``JOURNEY_APP_ID``,
...) would otherwise reach every worker, sidecar and CLI subprocess and change what the suite
tests. A test passes the settings it means explicitly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PREFIX = "JOURNEY_"
#: The suite's own switches: read by the tests, never by journey.
SUITE_SWITCHES = frozenset({"JOURNEY_SKIP_BROWSER_TEST"})


def without_journey(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if not k.startswith(PREFIX)}


def subprocess_env(*overrides: Mapping[str, str]) -> dict[str, str]:
    """``os.environ`` without any ``JOURNEY_*``, journey's sources on PYTHONPATH, then ``overrides``."""
    env = without_journey(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "service"), os.environ.get("PYTHONPATH", "")) if p)
    for extra in overrides:
        env.update(extra)
    return env


def strip_journey_from_this_process() -> list[str]:
    """Remove journey's settings from the test process itself (in-process CLI calls read them)."""
    dropped = [k for k in os.environ if k.startswith(PREFIX) and k not in SUITE_SWITCHES]
    for k in dropped:
        del os.environ[k]
    return dropped
