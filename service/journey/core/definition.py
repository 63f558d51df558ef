"""The journey definition: which touchpoint type moves a customer to which stage.

Loaded from a YAML (or JSON) file a user can edit without touching code (schemas/journey.yaml).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

import yaml

from journey.core.stages import STAGE_INDEX, STAGES
from journey.errors import DefinitionError

__all__ = ["DefinitionError", "JourneyDefinition", "Kind", "load_definition", "parse_definition"]


class Kind(IntEnum):
    """What an event means to the journey, before the customer's history is taken into account."""

    OTHER = 0  # accepted, counted, changes nothing
    STAGED = 1  # moves to a fixed stage (awareness .. decision)
    PURCHASE = 2
    RENEWAL = 3  # a repeat purchase when it comes after a purchase
    ADVOCACY = 4  # counts once the customer has purchased
    NEGATIVE = 5  # no stage change; kept for the churn model


@dataclass(frozen=True, slots=True)
class JourneyDefinition:
    version: str
    type_stage: Mapping[str, int]
    purchase_types: frozenset[str]
    renewal_types: frozenset[str]
    advocacy_types: frozenset[str]
    negative_types: frozenset[str]
    review_type: str
    min_good_rating: int
    max_bad_rating: int

    def classify(self, event_type: str, properties: Mapping[str, Any] | None) -> Kind:
        stage = self.type_stage.get(event_type)
        if stage is not None:
            return Kind.STAGED
        if event_type in self.purchase_types:
            return Kind.PURCHASE
        if event_type == self.review_type:
            rating = properties.get("rating") if properties else None
            if isinstance(rating, (int, float)) and not isinstance(rating, bool):
                if rating >= self.min_good_rating:
                    return Kind.ADVOCACY
                if rating <= self.max_bad_rating:
                    return Kind.NEGATIVE
            return Kind.OTHER
        if event_type in self.advocacy_types:
            return Kind.ADVOCACY
        if event_type in self.negative_types:
            return Kind.NEGATIVE
        if event_type in self.renewal_types:
            return Kind.RENEWAL
        return Kind.OTHER


def load_definition(path: Path | str) -> JourneyDefinition:
    """Read and check a journey definition file; errors name the file and the field to fix."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DefinitionError(
            f"journey definition {path} does not exist; set JOURNEY_JOURNEY_FILE to a file "
            f"like schemas/journey.yaml"
        ) from None
    except yaml.YAMLError as exc:
        raise DefinitionError(f"journey definition {path} is not valid YAML: {exc}") from None
    return parse_definition(raw, source=str(path))


def parse_definition(raw: Any, *, source: str = "<definition>") -> JourneyDefinition:
    def fail(msg: str) -> DefinitionError:
        return DefinitionError(f"journey definition {source}: {msg}")

    if not isinstance(raw, dict):
        raise fail("the top level must be a mapping with version, stages, rules, ...")
    version = raw.get("version")
    if not isinstance(version, str) or not version:
        raise fail("'version' must be a non-empty string (it is written into every transition)")
    stages = raw.get("stages", list(STAGES))
    if list(stages) != list(STAGES):
        raise fail(f"'stages' must be exactly {list(STAGES)} (the journey's stages are fixed; map your types to them)")

    type_stage: dict[str, int] = {}
    rules = raw.get("rules") or {}
    if not isinstance(rules, dict):
        raise fail("'rules' must map a stage name to a list of event types")
    for stage, types in rules.items():
        if stage not in STAGE_INDEX or STAGE_INDEX[stage] > STAGE_INDEX["decision"]:
            raise fail(
                f"'rules' may map types to awareness, consideration or decision, not {stage!r}; "
                f"purchase, retention and advocacy follow from the purchase and advocacy sections"
            )
        for t in _type_list(types, f"rules.{stage}", fail):
            if t in type_stage:
                raise fail(f"event type {t!r} is mapped to two stages")
            type_stage[t] = STAGE_INDEX[stage]

    purchase = raw.get("purchase") or {}
    advocacy = raw.get("advocacy") or {}
    negative = raw.get("negative") or {}
    purchase_types = frozenset(_type_list(purchase.get("types", ["purchase"]), "purchase.types", fail))
    renewal_types = frozenset(_type_list(purchase.get("renewal_types", []), "purchase.renewal_types", fail))
    advocacy_types = frozenset(_type_list(advocacy.get("types", []), "advocacy.types", fail))
    negative_types = frozenset(_type_list(negative.get("types", []), "negative.types", fail))
    review_type = str(advocacy.get("review_type") or negative.get("review_type") or "review_submitted")
    min_good = advocacy.get("min_rating", 4)
    max_bad = negative.get("max_bad_rating", 2)
    if not (isinstance(min_good, int) and isinstance(max_bad, int) and 1 <= max_bad < min_good <= 5):
        raise fail("ratings must satisfy 1 <= negative.max_bad_rating < advocacy.min_rating <= 5")

    groups = {
        "rules": set(type_stage),
        "purchase.types": purchase_types,
        "purchase.renewal_types": renewal_types,
        "advocacy.types": advocacy_types,
        "negative.types": negative_types,
    }
    seen: dict[str, str] = {}
    for group, types in groups.items():
        for t in types:
            if t in seen:
                raise fail(f"event type {t!r} appears in both {seen[t]} and {group}")
            seen[t] = group
    return JourneyDefinition(
        version=version,
        type_stage=type_stage,
        purchase_types=purchase_types,
        renewal_types=renewal_types,
        advocacy_types=advocacy_types,
        negative_types=negative_types,
        review_type=review_type,
        min_good_rating=min_good,
        max_bad_rating=max_bad,
    )


def _type_list(value: Any, where: str, fail: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(t, str) and t for t in value):
        raise fail(f"'{where}' must be a list of event type names")
    return value
