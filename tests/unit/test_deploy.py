"""deploy/: the dashboard and the alert rules only query series journey exports (a renamed
metric would silently empty a panel or disarm an alert)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from journey.core.definition import load_definition
from journey.settings import Settings
from journey.sidecar.metrics import sidecar_registry
from journey.sidecar.state import SidecarState
from journey.worker.metrics import WorkerMetrics
from journey.worker.store import StateCache

ROOT = Path(__file__).resolve().parents[2]
_SERIES = re.compile(r"\bjourney_[a-z0-9_]+")
_SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")


def _exported() -> set[str]:
    metrics = WorkerMetrics(load_definition(ROOT / "schemas" / "journey.yaml"))
    metrics.watch_state_cache(StateCache(1))
    names: set[str] = set()
    for registry in (metrics.registry, sidecar_registry(SidecarState(Settings()))):
        for family in registry.collect():
            names.update(sample.name for sample in family.samples)
            names.add(family.name)
    return names


def _queried(exprs: list[str]) -> set[str]:
    return {name for expr in exprs for name in _SERIES.findall(expr)}


def test_every_series_the_dashboard_and_alerts_query_is_exported():
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    alerts = yaml.safe_load((ROOT / "deploy" / "prometheus-alerts.yml").read_text())
    exprs += [rule["expr"] for group in alerts["groups"] for rule in group["rules"]]
    exported = _exported()
    missing = {
        name for name in _queried(exprs)
        if name not in exported and not any(name.endswith(s) and name[: -len(s)] in exported for s in _SUFFIXES)
    }
    assert not missing, f"queried but not exported: {sorted(missing)}"
    assert "journey_state_cache_reads_total" in _queried(exprs)
