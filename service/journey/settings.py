"""One typed settings object, read from ``JOURNEY_*`` environment variables.

Every default runs locally against the embedded broker on 127.0.0.1:9092.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from journey.errors import SettingsError

__all__ = ["Settings", "SettingsError"]


def _default_schemas_dir() -> Path:
    # Editable install / source checkout: <repo>/service/journey/settings.py -> <repo>/schemas.
    return Path(__file__).resolve().parents[2] / "schemas"


@dataclass(frozen=True)
class Settings:
    # --- Kafka
    bootstrap_servers: str = "127.0.0.1:9092"
    app_id: str = "journey"
    topic_touchpoints: str = "touchpoints"
    topic_transitions: str = "journey.stage-transitions"
    topic_dead_letter: str = "journey.dead-letter"
    topic_churn_risk: str = "journey.churn-risk"
    topic_pain_points: str = "journey.pain-points"
    topic_aggregates: str = "journey.aggregates"
    partitions: int = 8
    replication_factor: int = 1
    #: Security towards the brokers: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL. Credentials
    #: come from the environment only (JOURNEY_KAFKA_SASL_PASSWORD), never from a file in the repo.
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = None
    kafka_ssl_cafile: Path | None = None
    #: Retention of the input and output topics (7 days).
    retention_ms: int = 7 * 24 * 3600 * 1000
    # --- worker
    data_dir: Path = field(default_factory=lambda: Path.cwd())
    web_port: int = 6066
    #: The name other workers and the sidecar reach this worker's web port by.
    web_host: str = "127.0.0.1"
    #: The interface the worker's web server listens on (0.0.0.0 in a container).
    web_bind: str = "127.0.0.1"
    #: Most records per batch (the state is always RocksDB under <data_dir>/<app_id>-data: a
    #: restarted worker only reads its changelog's tail).
    batch_size: int = 1000
    #: The consumer's fetch wait: bounds the latency of a quiet stream on brokers that answer a
    #: waiting fetch only when the wait expires (Faust's own default is 1500 ms).
    fetch_max_wait_ms: int = 50
    #: Consumer-group session timeout: how long a dead worker's partitions wait before moving.
    session_timeout_s: float = 30.0
    commit_interval_s: float = 1.0
    #: Customer states kept decoded in memory (RocksDB store), least recently written out first;
    #: each costs ~2.5-3 KiB (100,000: ~300 MiB). Never fewer than 3 batches plus a churn tick
    #: (the states whose writes can be pending at once).
    state_cache: int = 100_000
    #: How many event ids (hashed) a customer's dedupe memory keeps.
    dedupe_window: int = 32
    #: How many order ids (hashed) a customer's purchase memory keeps.
    order_window: int = 16
    log_level: str = "info"
    # --- journey definition and schemas
    schemas_dir: Path = field(default_factory=_default_schemas_dir)
    journey_file: Path | None = None
    # --- churn risk and pain points
    #: Model parameters (`journey churn fit`); default: <schemas_dir>/churn-params.json.
    churn_params_file: Path | None = None
    #: The score is the probability of no purchase within this horizon.
    churn_horizon_days: float = 90.0
    churn_medium_threshold: float = 0.5
    churn_high_threshold: float = 0.8
    churn_abandonment_window_hours: float = 24.0
    #: A customer in consideration or decision longer than this has stalled.
    churn_stall_days: float = 14.0
    #: The event-time clock trails the highest event time seen by this much.
    churn_allowed_lateness_s: float = 60.0
    #: The stream counts as live (the clock then follows the wall clock) when its newest event
    #: time is within this of now.
    churn_live_window_s: float = 300.0
    churn_tick_s: float = 1.0
    #: Most customers the timer re-scores per tick (the rest wait for the next one).
    churn_max_per_tick: int = 5000
    # --- sidecar
    sidecar_host: str = "127.0.0.1"
    sidecar_port: int = 8000
    #: Workers' web addresses (comma separated); the sidecar forwards customer lookups to one of
    #: them and Faust routes each to the worker that owns the customer.
    worker_urls: str = "http://127.0.0.1:6066"
    api_token: str | None = None

    @property
    def journey_path(self) -> Path:
        return self.journey_file or (self.schemas_dir / "journey.yaml")

    @property
    def kafka_broker_url(self) -> str:
        return ",".join(f"kafka://{h.strip()}" for h in self.bootstrap_servers.split(",") if h.strip())

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``JOURNEY_<FIELD>`` variables, then apply explicit overrides."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f"JOURNEY_{f.name.upper()}"
            if name in env and env[name] != "":
                values[f.name] = _convert(name, env[name], f)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def to_env(self, names: Iterable[str]) -> dict[str, str]:
        """The ``JOURNEY_*`` variables that give another process (from_env) these settings'
        values of the fields ``names``; fields that are None are left out."""
        known = {f.name for f in fields(self)}
        env = {}
        for name in names:
            if name not in known:
                raise SettingsError(f"{name!r} is not a journey setting")
            value = getattr(self, name)
            if value is not None:
                env[f"JOURNEY_{name.upper()}"] = str(value)
        return env


def _convert(name: str, raw: str, f: dataclasses.Field[Any]) -> Any:
    kind = str(f.type)
    try:
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
        if "Path" in kind:
            return Path(raw)
        return raw
    except ValueError:
        raise SettingsError(
            f"{name}={raw!r} is not a valid {kind.split(' ')[0]}; "
            f"unset it to use the default or give a number"
        ) from None
