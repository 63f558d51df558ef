"""One typed settings object, read from ``JOURNEY_*`` environment variables and validated as it is
loaded (pydantic-settings).

``Settings(**values)`` takes values as they are given (defaults for the rest) and never reads the
environment; ``Settings.from_env()`` reads ``JOURNEY_<FIELD>`` from the environment (or from a
mapping given to it). Either way every value is checked: a bad one raises
:class:`~journey.errors.SettingsError` naming the variable, the value (never a secret's) and what
to give instead. Secrets are :class:`pydantic.SecretStr`: no repr, log line or error shows them;
``get_secret_value()`` where the raw value is needed. Every default runs locally against the
embedded broker on 127.0.0.1:9092.
"""

from __future__ import annotations

import contextvars
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from journey.errors import SettingsError

__all__ = [
    "ENV_PREFIX", "LOG_FORMATS", "LOG_LEVELS", "MECHANISMS", "PROTOCOLS", "SECRET_FIELDS",
    "Setting", "Settings", "SettingsError", "describe", "env_name", "unknown_variables",
]

ENV_PREFIX = "JOURNEY_"

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
LogLevel = Literal["critical", "error", "warning", "info", "debug"]
LogFormat = Literal["text", "json"]

PROTOCOLS: tuple[str, ...] = get_args(SecurityProtocol)
MECHANISMS: tuple[str, ...] = get_args(SaslMechanism)
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)
LOG_FORMATS: tuple[str, ...] = get_args(LogFormat)
_LEVEL_ALIASES = {"warn": "warning", "fatal": "critical"}

#: Kafka's rule for topic names (and so for the app id, the prefix of Faust's internal topics).
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")

Port = Annotated[int, Field(ge=1, le=65535)]
TopicName = Annotated[str, Field(pattern=_TOPIC_NAME.pattern)]
NonEmpty = Annotated[str, Field(min_length=1)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Share = Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=1)]

#: The longest finite retention: what a timedelta (Faust builds one from it) holds, ~2.7 million years.
MAX_RETENTION_MS = timedelta.max // timedelta(milliseconds=1)

#: What to give instead, for the settings whose checks say more than their type does.
_EXPECT = {
    "bootstrap_servers": "host:port pairs, comma separated (e.g. kafka-0:9092,kafka-1:9092)",
    "worker_urls": "http:// or https:// URLs with a host, comma separated (e.g. http://worker-0:6066)",
    "retention_ms": f"a whole number of milliseconds from 1 to {MAX_RETENTION_MS} (about 2.7 million years), or -1 (keep forever)",
    "session_timeout_s": "seconds from 6 (Kafka's group.min.session.timeout.ms) to 90 (the consumer's request timeout)",
    "dead_letter_retention_ms": f"a whole number of milliseconds from 1 to {MAX_RETENTION_MS} (e.g. 604800000 for 7 days)",
    "kafka_ssl_cafile": "the path of an existing CA bundle file (PEM)",
    "identity_junk_ids": "ids separated by commas (e.g. undefined,null,anonymous)",
    "api_token": "a token of letters, digits and ASCII punctuation, e.g. from `openssl rand -hex 32`",
}


def _default_schemas_dir() -> Path:
    # Editable install / source checkout: <repo>/service/journey/settings.py -> <repo>/schemas.
    return Path(__file__).resolve().parents[2] / "schemas"


def env_name(field: str) -> str:
    """The environment variable of a setting: ``partitions`` -> ``JOURNEY_PARTITIONS``."""
    return f"{ENV_PREFIX}{field.upper()}"


#: The mapping Settings.from_env reads (set only while it builds a Settings).
_READING: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("journey_settings_env", default=None)


class _Environment(PydanticBaseSettingsSource):
    """``JOURNEY_<FIELD>`` variables of one mapping (``os.environ`` or a caller's); empty ones are unset."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.env = env

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raw = self.env.get(env_name(field_name))
        return (raw if raw else None), field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, info in self.settings_cls.model_fields.items():
            raw, key, _ = self.get_field_value(info, name)
            if raw is not None:
                values[key] = raw
        return values


class Settings(BaseSettings):
    """journey's settings: one field per ``JOURNEY_<FIELD>`` variable (frozen; compare with ==)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        frozen=True,
        extra="forbid",
        validate_default=True,
        # pydantic's own messages never carry the input: ours (below) add it for non-secrets only.
        hide_input_in_errors=True,
        str_strip_whitespace=True,
    )

    # --- Kafka
    bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers (host:port, comma separated)")
    app_id: TopicName = Field("journey", description="consumer group and Faust app id (prefix of the internal topics)")
    topic_touchpoints: TopicName = Field("touchpoints", description="input topic")
    topic_transitions: TopicName = Field("journey.stage-transitions", description="output topic: stage transitions")
    topic_dead_letter: TopicName = Field("journey.dead-letter", description="output topic: rejected records and why")
    topic_churn_risk: TopicName = Field("journey.churn-risk", description="output topic: churn risk changes")
    topic_pain_points: TopicName = Field("journey.pain-points", description="output topic: pain points")
    topic_aggregates: TopicName = Field("journey.aggregates", description="per-partition live aggregates for the sidecar")
    topic_identities: TopicName = Field("journey.identities", description="output topic: identity merges and conflicts")
    topic_privacy: TopicName = Field(
        "journey.privacy", description="compacted topic: forget requests (journey forget, DELETE /customers/{id}) and "
        "customer_forgotten confirmations, key = the customer id")
    partitions: Count = Field(8, description="partitions of the topics `journey topics` creates (the most useful workers)")
    replication_factor: Count = Field(1, description="replication factor of the topics `journey topics` creates (3 on a real cluster)")
    kafka_security_protocol: SecurityProtocol = Field(
        "PLAINTEXT", description="security towards the brokers: " + ", ".join(PROTOCOLS))
    kafka_sasl_mechanism: SaslMechanism = Field("PLAIN", description="SASL mechanism: " + ", ".join(MECHANISMS))
    kafka_sasl_username: str | None = Field(None, description="SASL user (SASL_* protocols)")
    kafka_sasl_password: SecretStr | None = Field(
        None, description="SASL password (secret: from the environment or a secret store, never a file in the repo)")
    kafka_ssl_cafile: Path | None = Field(None, description="CA bundle for TLS (default: the system's CAs)")
    retention_ms: int = Field(7 * 24 * 3600 * 1000, description="retention of the input and output topics (-1: forever)")
    dead_letter_retention_ms: int = Field(
        7 * 24 * 3600 * 1000, ge=1, le=MAX_RETENTION_MS, description="retention of the dead-letter topic, which holds rejected records' raw "
        "values (personal data among them): always bounded")
    # --- worker
    data_dir: Path = Field(default_factory=Path.cwd, description="where a worker keeps its RocksDB state")
    web_port: Port = Field(6066, description="the worker's web port (/metrics, /healthz, /readyz, customer lookups)")
    web_host: NonEmpty = Field("127.0.0.1", description="the name other workers and the sidecar reach this worker's web port by")
    web_bind: NonEmpty = Field("127.0.0.1", description="the interface the worker's web server listens on (0.0.0.0 in a container)")
    batch_size: Count = Field(10_000, description="most records per batch (a backlog's batches grow toward it)")
    batch_target_ms: Positive = Field(
        500.0, description="the event-loop time one batch's processing aims at: batches grow under a backlog while "
        "they take less (bigger batches cost less per record), shrink when they take more")
    fetch_max_wait_ms: int = Field(50, ge=0, description="the consumer's fetch wait: bounds the latency of a quiet stream")
    session_timeout_s: float = Field(
        30.0, ge=6, le=90, allow_inf_nan=False,
        description="how long a dead worker's partitions wait before they move (6-90 s: the broker's minimum, the consumer's request timeout)")
    commit_interval_s: Positive = Field(1.0, description="offset commit interval")
    state_cache: Count = Field(100_000, description="customer states kept decoded in memory (~3 KiB each)")
    rocksdb_write_buffer_mb: Count = Field(
        32, description="RocksDB memtable size per partition database, MiB (at most two held: the one written, one being flushed)")
    rocksdb_block_cache_mb: Count = Field(32, description="RocksDB block cache per partition database, MiB")
    catching_up_lag: int = Field(
        10_000, ge=0, description="/readyz says catching_up while the worker is more records than this behind "
        "(summed over its input partitions); a catching-up worker is still ready")
    dedupe_window: Count = Field(32, description="event ids (hashed) each customer's dedupe memory keeps")
    order_window: Count = Field(16, description="order ids (hashed) each customer's purchase memory keeps")
    shutdown_timeout_s: Positive = Field(
        30.0, description="after SIGTERM a worker exits within this, finished or not (exit code 70: replayed)")
    identity_junk_ids: str = Field(
        "undefined,null,anonymous,0,-1,none,nil,unknown",
        description="anonymous ids that never link to a customer (comma separated, case-insensitive)")
    identity_alias_window: Count = Field(16, description="anonymous ids each customer remembers having linked")
    control_secret: SecretStr | None = Field(
        None, description="signs the workers' own identity records on the input topic and the forget requests of the "
        "sidecar and `journey forget`, so no producer can write one (secret; the same on every worker, the sidecar and "
        "wherever `journey forget` runs; set it in production; unset: derived from the app id, which any producer can know)")
    privacy_salt: SecretStr | None = Field(
        None, description="salts the hashes under which forgotten ids are suppressed (secret; the same on every worker; "
        "set it in production; unset: derived from the app id)")
    # --- logs
    log_level: LogLevel = Field("info", description="log level: " + ", ".join(LOG_LEVELS))
    log_format: LogFormat = Field("text", description="text, or json: one JSON object per line (worker, sidecar, access log)")
    access_log: bool = Field(False, description="the sidecar logs every HTTP request (customer ids masked)")
    # --- journey definition and schemas
    schemas_dir: Path = Field(default_factory=_default_schemas_dir, description="where the definition and default parameter files are")
    journey_file: Path | None = Field(None, description="the journey definition (default: <schemas_dir>/journey.yaml)")
    # --- churn risk and pain points
    churn_params_file: Path | None = Field(
        None, description="churn model parameters from `journey churn fit` (default: <schemas_dir>/churn-params.json)")
    churn_horizon_days: Positive = Field(
        90.0, description="the score is the probability of no purchase within this horizon (a learned params file "
        "scores the horizon it was fitted for: the worker warns when this differs)")
    churn_medium_threshold: Share = Field(0.5, description="lowest score of the medium level (below the high threshold)")
    churn_high_threshold: Share = Field(0.8, description="lowest score of the high level")
    churn_abandonment_window_hours: Positive = Field(24.0, description="cart abandonment window (event time)")
    churn_stall_days: Positive = Field(14.0, description="a customer in consideration or decision longer than this has stalled")
    churn_allowed_lateness_s: float = Field(60.0, ge=0, description="the event-time clock trails the newest event time by this")
    churn_live_window_s: Positive = Field(
        300.0, description="the stream is live (the clock follows the wall clock) when its newest event is this recent")
    churn_tick_s: Positive = Field(1.0, description="how often the churn timer re-scores the customers due")
    churn_max_per_tick: Count = Field(5000, description="most customers the churn timer re-scores per tick")
    # --- sidecar
    sidecar_host: NonEmpty = Field("127.0.0.1", description="the sidecar's interface")
    sidecar_port: Port = Field(8000, description="the sidecar's port")
    worker_urls: str = Field(
        "http://127.0.0.1:6066", description="workers' web addresses (comma separated), for the sidecar's customer lookups")
    api_token: SecretStr | None = Field(
        None, description="bearer token for GET and DELETE /customers/{id} (secret; the same on workers and sidecar; "
        "unset: the endpoints are off)")
    # --- journey dev
    dev_rate: Positive = Field(40.0, description="`journey dev`: touchpoints per second of the generated feed")
    dev_dir: Path = Field(Path("var/dev"), description="`journey dev`: logs and the worker's state")

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _settings_error(exc) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Values given to the constructor win; the environment counts only inside from_env (so
        # Settings(...) in code and tests means exactly what it says).
        env = _READING.get()
        return (init_settings,) if env is None else (init_settings, _Environment(settings_cls, env))

    # --- checks beyond a field's type
    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        # Case does not matter; a value that is none of the choices is reported as it was given.
        if isinstance(value, str) and value.strip().upper() in (*PROTOCOLS, *MECHANISMS):
            return value.strip().upper()
        return value

    @field_validator("kafka_sasl_password", "api_token", "control_secret", "privacy_salt", mode="before")
    @classmethod
    def _blank_secret_is_unset(cls, value: Any) -> Any:
        # A blank token would otherwise turn the customer endpoint on with an empty password.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("api_token")
    @classmethod
    def _sendable_token(cls, value: SecretStr | None) -> SecretStr | None:
        # It travels in an HTTP header: printable ASCII without spaces (RFC 6750), or no client can send it.
        if value is not None and not all("!" <= c <= "~" for c in value.get_secret_value()):
            raise ValueError("must be printable ASCII without spaces (it is sent in an HTTP header)")
        return value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        lowered = _LEVEL_ALIASES.get(value.strip().lower(), value.strip().lower())
        return lowered if lowered in (*LOG_LEVELS, *LOG_FORMATS) else value

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers(cls, value: str) -> str:
        servers = [s.strip() for s in value.split(",") if s.strip()]
        if not servers:
            raise ValueError("no server given")
        for server in servers:
            host, sep, port = server.rpartition(":")
            if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"{server!r} is not host:port with a port from 1 to 65535")
        return ",".join(servers)

    @field_validator("worker_urls")
    @classmethod
    def _urls(cls, value: str) -> str:
        urls = [u.strip() for u in value.split(",") if u.strip()]
        if not urls:
            raise ValueError("no URL given")
        for url in urls:
            try:
                parts = urlsplit(url)
                parts.port  # noqa: B018 - raises ValueError for a port out of range
            except ValueError as exc:
                raise ValueError(f"{url!r} is not a URL ({exc})") from None
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{url!r} is not an http:// or https:// URL with a host")
        return ",".join(urls)

    @field_validator("retention_ms")
    @classmethod
    def _retention(cls, value: int) -> int:
        if value != -1 and not 1 <= value <= MAX_RETENTION_MS:
            raise ValueError(f"must be 1 to {MAX_RETENTION_MS} ms, or -1 to keep records forever")
        return value

    @field_validator("kafka_ssl_cafile")
    @classmethod
    def _cafile(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError("no such file")
        return value

    @model_validator(mode="after")
    def _together(self) -> Settings:
        if self.churn_medium_threshold >= self.churn_high_threshold:
            raise ValueError(
                f"JOURNEY_CHURN_MEDIUM_THRESHOLD={self.churn_medium_threshold} must be below "
                f"JOURNEY_CHURN_HIGH_THRESHOLD={self.churn_high_threshold}; give thresholds with medium < high "
                "(defaults 0.5 and 0.8)"
            )
        if self.kafka_security_protocol.startswith("SASL") and not (self.kafka_sasl_username and self.kafka_sasl_password):
            raise ValueError(
                f"JOURNEY_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs JOURNEY_KAFKA_SASL_USERNAME "
                "and JOURNEY_KAFKA_SASL_PASSWORD; set both (the password from your secret store)"
            )
        return self

    # --- derived values
    @property
    def journey_path(self) -> Path:
        return self.journey_file or (self.schemas_dir / "journey.yaml")

    @property
    def kafka_broker_url(self) -> str:
        return ",".join(f"kafka://{h.strip()}" for h in self.bootstrap_servers.split(",") if h.strip())

    # --- building and handing on
    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``JOURNEY_<FIELD>`` variables of ``env`` (default: the process's
        environment; empty ones count as unset), then apply the overrides that are not None."""
        token = _READING.set(os.environ if env is None else env)
        try:
            return cls(**{k: v for k, v in overrides.items() if v is not None})
        finally:
            _READING.reset(token)

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` (validated like any other value)."""
        return type(self)(**{**self._values(), **changes})

    def to_env(self, names: Iterable[str]) -> dict[str, str]:
        """The ``JOURNEY_*`` variables that give another process (from_env) these settings'
        values of the fields ``names`` (secrets in clear: for a child's environment only); fields
        that are None are left out."""
        env = {}
        for name in names:
            if name not in type(self).model_fields:
                raise SettingsError(f"{name!r} is not a journey setting")
            value = getattr(self, name)
            if value is not None:
                env[env_name(name)] = _env_text(value)
        return env

    def _values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in type(self).model_fields}


SECRET_FIELDS = frozenset(
    name for name, info in Settings.model_fields.items() if info.annotation is SecretStr or SecretStr in get_args(info.annotation)
)


def _env_text(value: Any) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --- errors --------------------------------------------------------------------------------------
def _settings_error(exc: ValidationError) -> SettingsError:
    lines = []
    for error in exc.errors(include_url=False):
        loc = error.get("loc") or ()
        if not loc:  # a check across fields: its message names the variables itself
            lines.append(str(error.get("msg", "")).removeprefix("Value error, "))
            continue
        name = str(loc[0])
        info = Settings.model_fields.get(name)
        if info is None or error.get("type") == "extra_forbidden":
            lines.append(f"{name!r} is not a journey setting")
            continue
        reason = str(error.get("msg", "")).removeprefix("Value error, ")
        shown = "" if name in SECRET_FIELDS else f"={error.get('input')!r}"
        lines.append(f"{env_name(name)}{shown} is not valid: {reason}; give {expected(name)}, or unset it for the default{_default_note(name, info)}")
    return SettingsError("\n".join(lines))


def _default_note(name: str, info: FieldInfo) -> str:
    if name in SECRET_FIELDS or info.default_factory is not None or info.default is None:
        return ""
    return f" ({_env_text(info.default)})"


def expected(name: str) -> str:
    """What a setting takes, in words (for errors and help)."""
    if name in _EXPECT:
        return _EXPECT[name]
    info = Settings.model_fields[name]
    annotation = info.annotation
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is not Literal and len(args) == 1:
        annotation = args[0]
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(str(a) for a in get_args(annotation))
    if annotation is bool:
        return "true or false"
    if annotation is SecretStr:
        return "a secret (from your secret store)"
    if annotation is Path:
        return "a path"
    bounds = _bounds(info)
    if annotation is int:
        return "a whole number" + bounds
    if annotation is float:
        return "a number" + bounds
    if name.startswith("topic_") or name == "app_id":
        return "a name of letters, digits, '.', '_' and '-' (at most 249)"
    return "a value" + (" (not empty)" if bounds else "")


def _bounds(info: FieldInfo) -> str:
    parts = []
    for item in info.metadata:
        for attr, word in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("min_length", "min length")):
            bound = getattr(item, attr, None)
            if bound is not None:
                parts.append(f"{word} {bound}")
    return f" {' and '.join(parts)}" if parts else ""


# --- what `journey config` shows ----------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    """One setting as `journey config` shows it: its variable, its value (secrets masked) and where it came from."""

    name: str
    variable: str
    value: str
    #: "default", "environment" or "option" (a command-line option standing in for the variable).
    source: str
    secret: bool
    description: str


def describe(settings: Settings, env: Mapping[str, str] | None = None, options: Iterable[str] = ()) -> Iterator[Setting]:
    """Every setting of ``settings`` with where its value came from: ``options`` are the fields a
    command-line option gave, ``env`` the environment it was read from."""
    env = os.environ if env is None else env
    given = set(options)
    for name, info in Settings.model_fields.items():
        value = getattr(settings, name)
        secret = name in SECRET_FIELDS
        if value is None:
            text = "(unset)"
        elif secret:
            text = "********"
        else:
            text = _env_text(value)
        source = "option" if name in given else "environment" if env.get(env_name(name)) else "default"
        yield Setting(name, env_name(name), text, source, secret, info.description or "")


def unknown_variables(env: Mapping[str, str] | None = None, *, ignore: Iterable[str] = ()) -> list[str]:
    """``JOURNEY_*`` variables of ``env`` that are no setting (a typo, or one a newer or older journey had)."""
    env = os.environ if env is None else env
    known = {env_name(name) for name in Settings.model_fields} | set(ignore)
    return sorted(k for k in env if k.startswith(ENV_PREFIX) and k not in known)
