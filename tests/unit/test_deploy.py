"""deploy/ and the image: the dashboard and the alert rules only query series journey exports (a
renamed metric would silently empty a panel or disarm an alert), and the deploy files keep what
an operator relies on (restarts, stop grace, non-root users, probes, versioned images). The
tools themselves (promtool, kubernetes-validate, check-jsonschema, hadolint) run in
`make lint-deploy`."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

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
    metrics.watch_lag("touchpoints", dict)  # as worker/aggregates.register (a family even with no series)
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


# --- the deploy files' fixes

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
USER_ID = 10001


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())


def _kubernetes() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((ROOT / "deploy" / "kubernetes.yaml").read_text()) if doc]


def _seconds(duration: str) -> float:
    """A compose duration (``1m30s``, ``45s``) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def _journey_env(env: dict[str, str]) -> dict[str, str]:
    return {k: str(v) for k, v in env.items() if k.startswith("JOURNEY_")}


def _check_settings(env: dict[str, str], where: str) -> None:
    known = {"JOURNEY_" + name.upper() for name in Settings.model_fields}
    unknown = set(_journey_env(env)) - known
    assert not unknown, f"{where} sets variables journey does not read: {sorted(unknown)}"
    Settings.from_env(_journey_env(env))  # raises on a value journey would refuse


def test_grafana_dashboard_uses_the_provisioned_data_source():
    provisioned = yaml.safe_load((ROOT / "deploy" / "grafana-provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = provisioned["datasources"]
    assert source["type"] == "prometheus" and source["uid"]
    text = (ROOT / "deploy" / "grafana-dashboard.json").read_text()
    assert "${" not in text, "an import-time placeholder: provisioning does not resolve it"
    dashboard = json.loads(text)
    refs = [panel["datasource"] for panel in dashboard["panels"]]
    refs += [target["datasource"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert refs and all(ref == {"type": "prometheus", "uid": source["uid"]} for ref in refs)


def test_compose_restarts_journey_and_gives_a_worker_time_to_stop():
    services = _compose()["services"]
    grace_needed = Settings().shutdown_timeout_s
    journey = {name: svc for name, svc in services.items() if str(svc.get("image", "")).startswith("journey:")}
    workers = [name for name, svc in journey.items() if svc.get("command") == ["worker"]]
    assert workers and "sidecar" in journey and "topics" in journey
    for name, svc in journey.items():
        assert svc["image"] == f"journey:{VERSION}", name
        if name != "topics":  # a one-shot job the others wait for
            assert svc.get("restart") in ("always", "unless-stopped", "on-failure"), f"{name}: no restart policy"
        if name in workers:
            assert _seconds(svc["stop_grace_period"]) > grace_needed, name
        _check_settings(svc.get("environment", {}), f"compose service {name}")


def test_kubernetes_pods_run_as_the_image_user_with_requests_and_versioned_images():
    shutdown = Settings().shutdown_timeout_s
    for doc in _kubernetes():
        if doc["kind"] not in ("StatefulSet", "Deployment"):
            continue
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        pod = doc["spec"]["template"]["spec"]
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] == USER_ID, name
        if any(c["args"] == ["worker"] for c in pod["containers"]):
            assert pod.get("terminationGracePeriodSeconds", 30) > shutdown, f"{name}: killed before it can stop"
        # journey's topics exist, with their configs, before a worker or a sidecar starts.
        assert [c["args"] for c in pod.get("initContainers", [])] == [["topics"]], f"{name}: no topics first"
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            assert container["image"] == f"journey:{VERSION}", name
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), f"{name}: no resource requests"
            assert "memory" in container["resources"]["limits"], name


def test_kubernetes_workers_have_volumes_they_can_write_probes_and_a_disruption_budget():
    docs = {(doc["kind"], doc["metadata"]["name"]): doc for doc in _kubernetes()}
    workers = docs[("StatefulSet", "journey-worker")]
    pod = workers["spec"]["template"]["spec"]
    assert pod["securityContext"]["fsGroup"] == USER_ID
    (worker,) = pod["containers"]
    assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "web"}
    assert worker["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "web"}
    assert {"name": "web", "containerPort": Settings().web_port} in worker["ports"]
    budget = docs[("PodDisruptionBudget", "journey-worker")]
    assert budget["spec"]["selector"] == workers["spec"]["selector"]
    assert docs[("Service", "journey-worker")]["spec"]["publishNotReadyAddresses"] is True
    env = dict(docs[("ConfigMap", "journey")]["data"])
    env |= {"JOURNEY_KAFKA_SASL_PASSWORD": "from-the-secret", "JOURNEY_API_TOKEN": "from-the-secret"}
    env |= {e["name"]: e["value"].replace("$(POD_NAME)", "journey-worker-0") for e in worker["env"] if "value" in e}
    _check_settings(env, "the kubernetes ConfigMap and worker")


def test_image_is_multi_stage_and_runs_as_a_numeric_user():
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", dockerfile, flags=re.M)[1:]
    assert len(stages) >= 2, "one stage builds the wheels, the last one only installs them"
    final = stages[-1]
    assert not re.search(r"apt-get|build-essential|gcc", final), "build tools in the final image"
    assert re.search(r"--require-hashes .*-r requirements/runtime\.lock", dockerfile), "the image installs the lock"
    users = re.findall(r"^USER (\S+)", final, flags=re.M)
    assert users and users[-1] in (str(USER_ID), f"{USER_ID}:{USER_ID}")
    env = dict(re.findall(r"(JOURNEY_[A-Z_]+)=(\S+)", final))
    _check_settings(env | {"JOURNEY_SCHEMAS_DIR": str(ROOT / "schemas")}, "the Dockerfile")
    for path in re.findall(r"^COPY (\S+) ", final, flags=re.M):
        assert (ROOT / path).exists(), path


def test_dockerignore_lets_in_only_what_the_build_copies():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", "exclude everything, then let in what the Dockerfile copies"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = set()
    for sources in re.findall(r"^COPY (?!--from)(.+) \S+$", (ROOT / "Dockerfile").read_text(), flags=re.M):
        copied.update(s.rstrip("/") for s in sources.split())
    assert copied == allowed, f"let in but not copied, or copied but left out: {sorted(copied ^ allowed)}"
    assert not {".venv", ".git", "var", "data", "test-output", "tests"} & allowed


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    alerts = yaml.safe_load((ROOT / "deploy" / "prometheus-alerts.yml").read_text())
    names = {rule["alert"] for group in alerts["groups"] for rule in group["rules"] if "alert" in rule}
    tests = yaml.safe_load((ROOT / "deploy" / "prometheus-alerts.test.yml").read_text())
    cases = [case for test in tests["tests"] for case in test.get("alert_rule_test", [])]
    fires = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert names - fires == set(), f"never seen firing: {sorted(names - fires)}"
    assert names - quiet == set(), f"never seen quiet: {sorted(names - quiet)}"
    assert (fires | quiet) <= names, f"tests for alerts that do not exist: {sorted((fires | quiet) - names)}"
