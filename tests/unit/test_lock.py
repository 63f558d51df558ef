"""requirements/*.lock: every package pinned with its hashes, and the pins satisfy pyproject.toml
(a dependency added or tightened without `make lock` fails here before an install does)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
_ENTRY = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)==(?P<version>[^\s;\\]+)(?:\s*;\s*(?P<marker>[^\\]+?))?\s*\\?$")


def _lock(name: str) -> dict[str, str]:
    """{package: version} of the entries of requirements/<name>.lock that apply to this Python."""
    text = (ROOT / "requirements" / f"{name}.lock").read_text()
    pins: dict[str, str] = {}
    entries = re.split(r"\n(?=\S)", text)
    for entry in entries:
        first, *rest = entry.splitlines()
        if first.startswith("#") or not first.strip():
            continue
        match = _ENTRY.match(first)
        assert match, f"{name}.lock: not a pinned requirement: {first!r}"
        hashes = [line for line in rest if line.strip().startswith("--hash=sha256:")]
        assert hashes, f"{name}.lock: {first.strip()} has no hash"
        if match["marker"] and not Marker(match["marker"]).evaluate():
            continue
        package = canonicalize_name(match["name"])
        assert package not in pins, f"{name}.lock: {package} pinned twice for this Python"
        pins[package] = match["version"]
    return pins


def _unsatisfied(requirements: list[str], pins: dict[str, str]) -> list[str]:
    missing = []
    for text in requirements:
        req = Requirement(text)
        if req.marker and not req.marker.evaluate({"extra": ""}):
            continue
        version = pins.get(canonicalize_name(req.name))
        if version is None or not req.specifier.contains(version, prereleases=True):
            missing.append(f"{text} (locked: {version})")
    return missing


def test_runtime_lock_satisfies_the_dependencies():
    assert not _unsatisfied(PYPROJECT["project"]["dependencies"], _lock("runtime")), "run make lock"


def test_dev_lock_satisfies_the_dependencies_and_the_dev_extra_with_the_runtime_pins():
    dev = _lock("dev")
    wanted = PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["dev"]
    assert not _unsatisfied(wanted, dev), "run make lock"
    runtime = _lock("runtime")
    assert {name: dev.get(name) for name in runtime} == runtime, "the tests run what the image runs"


def test_build_lock_pins_the_build_system_and_pip():
    build = _lock("build")
    assert not _unsatisfied(PYPROJECT["build-system"]["requires"] + ["pip"], build), "run make lock"
    listed = [line.strip() for line in (ROOT / "requirements" / "build.in").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert sorted(listed) == sorted(PYPROJECT["build-system"]["requires"] + ["pip"])


def test_make_install_and_the_image_install_from_the_locks_frozen():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^\$\(STAMP\): pyproject\.toml \$\(LOCKS\)$", makefile, flags=re.M), "reinstall when a lock changes"
    assert re.search(r"^LOCKS\s*:=.*requirements/dev\.lock", makefile, flags=re.M)
    assert "--require-hashes -r requirements/dev.lock" in makefile
    assert "--no-deps --no-build-isolation -e ." in makefile
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--require-hashes -r requirements/build.lock" in dockerfile
    assert re.search(r"--require-hashes .*-r requirements/runtime\.lock", dockerfile)
