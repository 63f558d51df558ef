"""The journey's stages, in order. A customer only ever moves forward through them."""

from __future__ import annotations

from typing import Final

STAGES: Final[tuple[str, ...]] = (
    "awareness",
    "consideration",
    "decision",
    "purchase",
    "retention",
    "advocacy",
)
AWARENESS, CONSIDERATION, DECISION, PURCHASE, RETENTION, ADVOCACY = range(len(STAGES))
#: A customer whose events so far map to no stage.
NO_STAGE: Final[int] = -1

STAGE_INDEX: Final[dict[str, int]] = {name: i for i, name in enumerate(STAGES)}


def stage_name(index: int) -> str | None:
    """The stage's name, or None for a customer with no stage yet."""
    return STAGES[index] if index >= 0 else None


def skipped_between(from_stage: int, to_stage: int) -> list[str]:
    """Stages passed over by a move: strictly between the two (from the start when there was none)."""
    return list(STAGES[max(from_stage, NO_STAGE) + 1 : to_stage])
