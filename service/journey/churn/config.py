"""The churn part of the settings: Settings.churn_* (env JOURNEY_CHURN_*), for the worker and
for `journey churn fit|score` alike."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from journey.churn.risk import RiskConfig
from journey.churn.update import ChurnConfig
from journey.core.painpoints import PainConfig
from journey.settings import Settings


@dataclass(frozen=True)
class ChurnSettings:
    """The churn part of the settings: Settings.churn_* (env JOURNEY_CHURN_*), where the defaults live."""

    params_file: Path | None
    horizon_days: float
    medium_threshold: float
    high_threshold: float
    abandonment_window_hours: float
    stall_days: float
    allowed_lateness_s: float
    live_window_s: float
    tick_s: float
    max_per_tick: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ChurnSettings:
        return cls(**{f.name: getattr(settings, f"churn_{f.name}") for f in fields(cls)})

    def params_path(self, settings: Settings) -> Path:
        return self.params_file or settings.schemas_dir / "churn-params.json"

    def config(self, purchase_types: frozenset[str]) -> ChurnConfig:
        return ChurnConfig(
            risk=RiskConfig(horizon_days=self.horizon_days, medium=self.medium_threshold, high=self.high_threshold),
            pain=PainConfig(
                purchase_types=purchase_types,
                abandonment_window_s=self.abandonment_window_hours * 3600.0,
                stall_limit_s=self.stall_days * 86400.0,
            ),
        )
