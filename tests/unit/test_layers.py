"""journey's layers, checked on the source (AST), lazy imports included:

- journey.core and journey.churn are pure: neither they nor anything of journey's they import
  (directly or further down) imports Faust, mode, aiokafka, FastAPI, uvicorn, Starlette or
  rocksdict;
- journey.core, journey.churn and journey.sidecar never import journey.worker (nor anything
  that does);
- no import cycles among journey's modules.

An import counts wherever it is (module level or inside a function); one under
``if TYPE_CHECKING:`` does not (it never runs). Failures name the module, the import and its line.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVICE = REPO / "service"

#: Third-party packages the pure layers must not import (Kafka, Faust, HTTP, the state store).
HEAVY = frozenset({"faust", "mode", "aiokafka", "fastapi", "uvicorn", "starlette", "rocksdict"})
PURE = ("journey.core", "journey.churn")
NOT_WORKER = ("journey.core", "journey.churn", "journey.sidecar")
WORKER = "journey.worker"


@dataclass(frozen=True)
class Import:
    #: The importing module.
    module: str
    #: What the statement names: "aiokafka.client", "journey.core.state", ...
    target: str
    line: int

    def __str__(self) -> str:
        return f"{self.module} imports {self.target} (line {self.line})"


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` (or ``if typing.TYPE_CHECKING:``)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else None
            if name == "TYPE_CHECKING":
                for sub in node.body:
                    skip.update(id(n) for n in ast.walk(sub))
    return skip


def imports_of(module: str, source: str, *, is_package: bool = False) -> list[Import]:
    """Every import statement of ``source`` that can run (module level or lazy), as targets: for
    ``from a.b import c`` both ``a.b`` and ``a.b.c`` (c may be a submodule)."""
    tree = ast.parse(source)
    skip = _type_checking_only(tree)
    package = module if is_package else module.rpartition(".")[0]
    found: list[Import] = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [Import(module, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.append(Import(module, base, node.lineno))
            found += [Import(module, f"{base}.{alias.name}", node.lineno) for alias in node.names if alias.name != "*"]
    return found


def journey_modules(root: Path = SERVICE) -> dict[str, Path]:
    modules = {}
    for path in sorted((root / "journey").rglob("*.py")):
        name = ".".join(path.relative_to(root).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    return modules


MODULES = journey_modules()
IMPORTS = {
    m: imports_of(m, p.read_text(encoding="utf-8"), is_package=p.name == "__init__.py") for m, p in MODULES.items()
}


def _resolve(target: str) -> str | None:
    """The journey module a target names (its longest known prefix), or None if not journey's."""
    while target:
        if target in MODULES:
            return target
        target, _, _ = target.rpartition(".")
    return None


def _edges(module: str) -> dict[str, Import]:
    """journey modules ``module`` imports -> one of the imports that does it."""
    out: dict[str, Import] = {}
    for imp in IMPORTS[module]:
        dep = _resolve(imp.target)
        # A module's own packages are imported anyway (and journey/__init__ holds no imports).
        if dep is not None and dep != module and not module.startswith(dep + ".") and dep != "journey":
            out.setdefault(dep, imp)
    return out


GRAPH = {m: _edges(m) for m in MODULES}


def _in_layer(module: str, layers: Iterable[str]) -> bool:
    return any(module == layer or module.startswith(layer + ".") for layer in layers)


def _reachable(start: str) -> dict[str, list[Import]]:
    """journey modules ``start`` imports, directly or further down, each with the chain that does."""
    chains: dict[str, list[Import]] = {start: []}
    todo = [start]
    while todo:
        module = todo.pop()
        for dep, imp in GRAPH[module].items():
            if dep not in chains:
                chains[dep] = [*chains[module], imp]
                todo.append(dep)
    return chains


def _chain(imports: list[Import]) -> str:
    return " -> ".join(str(i) for i in imports)


def test_the_analysis_sees_lazy_imports_and_skips_type_checking_ones() -> None:
    source = textwrap.dedent(
        """
        from typing import TYPE_CHECKING
        import os
        from . import sibling
        from ..core import state
        if TYPE_CHECKING:
            import faust
        def later():
            from aiokafka.client import AIOKafkaClient
        """
    )
    targets = {i.target for i in imports_of("journey.churn.x", source)}
    assert {"os", "journey.churn.sibling", "journey.core.state", "aiokafka.client"} <= targets
    assert "faust" not in targets
    assert "journey.core.state" in MODULES and _resolve("journey.core.state.CustomerState") == "journey.core.state"
    assert len(MODULES) > 40 and GRAPH["journey.cli"], "the scan found journey's modules and their imports"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _in_layer(m, PURE)))
def test_pure_layers_use_no_kafka_faust_http_or_store(module: str) -> None:
    bad = []
    for dep, chain in sorted(_reachable(module).items()):
        seen_lines = set()
        for imp in IMPORTS[dep]:
            if imp.target.split(".")[0] in HEAVY and imp.line not in seen_lines:
                seen_lines.add(imp.line)  # one entry per import statement
                bad.append(_chain([*chain, imp]))
    assert not bad, f"{module} (a pure layer) must not import {', '.join(sorted(HEAVY))}:\n  " + "\n  ".join(bad)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _in_layer(m, NOT_WORKER)))
def test_core_churn_and_sidecar_never_import_the_worker(module: str) -> None:
    bad = [_chain(chain) for dep, chain in sorted(_reachable(module).items()) if _in_layer(dep, [WORKER])]
    assert not bad, f"{module} must not import {WORKER}:\n  " + "\n  ".join(bad)


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(GRAPH):
        if root in index:
            continue
        work = [(root, iter(sorted(GRAPH[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, deps = work[-1]
            for dep in deps:
                if dep not in index:
                    index[dep] = low[dep] = counter
                    counter += 1
                    stack.append(dep)
                    on_stack.add(dep)
                    work.append((dep, iter(sorted(GRAPH[dep]))))
                    break
                if dep in on_stack:
                    low[node] = min(low[node], index[dep])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_no_import_cycles() -> None:
    report = []
    for component in _cycles():
        members = set(component)
        edges = [str(GRAPH[m][d]) for m in component for d in sorted(GRAPH[m]) if d in members]
        report.append(" <-> ".join(component) + ":\n    " + "\n    ".join(edges))
    assert not report, "import cycles among journey's modules (lazy imports count):\n  " + "\n  ".join(report)


def test_churn_score_loads_no_kafka_faust_or_http(tmp_path: Path) -> None:
    """`journey churn score` runs without Faust, aiokafka or the web stack (and without scipy:
    only `churn fit` needs it)."""
    script = textwrap.dedent(
        f"""
        import sys
        import journey.cli
        rc = journey.cli.main([
            "churn", "score", {str(REPO / "data/cdnow/CDNOW_sample.txt")!r}, "--format", "cdnow",
            "--as-of", "1997-09-30", "--params", {str(REPO / "schemas/churn-params.json")!r},
        ])
        assert rc == 0, rc
        loaded = sorted(m for m in {sorted(HEAVY | {"scipy"})!r} if m in sys.modules)
        print("LOADED", loaded, file=sys.stderr)
        assert not loaded, loaded
        """
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(SERVICE), "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("customer_id,score,level,reasons,reason_codes\n") and done.stdout.count("\n") > 2000
