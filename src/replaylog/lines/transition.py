"""Transition lines (SPEC section 10): a work package moved from one lane to another.

spec-kitty writes them as its ``StatusEvent``: no ``event_type``, ``kind`` or ``type``,
and a ``to_lane``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import EventValidationError
from ._base import LineRecord, check_actor, check_str
from .canonical import show_value

__all__ = ["ISO_8601", "LANES", "LANE_SET", "StatusEvent", "check_transition"]

LANES = (
    "genesis",
    "planned",
    "claimed",
    "in_progress",
    "for_review",
    "in_review",
    "approved",
    "done",
    "blocked",
    "canceled",
)
LANE_SET = frozenset(LANES)

#: ISO-8601 date and time, with an optional fraction and an optional offset.
ISO_8601 = re.compile(
    r"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
    r"[T ](?:[01][0-9]|2[0-3]):[0-5][0-9](?::(?:[0-5][0-9]|60)(?:[.,][0-9]{1,9})?)?"
    r"(?:Z|[+-](?:[01][0-9]|2[0-3]):?[0-5][0-9])?"
)


def check_transition(obj: Mapping[str, Any]) -> None:
    """The fields a transition must hold, with their types (SPEC section 10)."""
    check_str(obj, "wp_id", empty=False)
    for name in ("from_lane", "to_lane"):
        if name not in obj:
            raise EventValidationError(f"missing field '{name}'")
        lane = obj[name]
        if type(lane) is not str or lane not in LANE_SET:
            raise EventValidationError(
                f"field '{name}' must be a lane ({', '.join(LANES)}), got {show_value(lane)}"
            )
    check_str(obj, "at")
    if ISO_8601.fullmatch(obj["at"]) is None:
        raise EventValidationError(
            f"field 'at' must be an ISO-8601 date and time, got {show_value(obj['at'])}"
        )
    check_actor(obj)
    if "force" not in obj:
        raise EventValidationError("missing field 'force'")
    if type(obj["force"]) is not bool:
        raise EventValidationError(
            f"field 'force' must be true or false, got {show_value(obj['force'])}"
        )
    check_str(obj, "execution_mode")


@dataclass(frozen=True, eq=True)
class StatusEvent(LineRecord):
    """One transition line. Optional fields the line did not hold are None and named in
    ``absent``; keys this record does not know are in ``extra``."""

    KIND: ClassVar[str] = "transition"
    REQUIRED: ClassVar[tuple[str, ...]] = (
        "event_id",
        "wp_id",
        "from_lane",
        "to_lane",
        "at",
        "actor",
        "force",
        "execution_mode",
    )
    OPTIONAL: ClassVar[tuple[str, ...]] = (
        "mission_slug",
        "feature_slug",
        "mission_id",
        "reason",
        "review_ref",
        "evidence",
        "review_result",
        "policy_metadata",
    )
    _KNOWN: ClassVar[frozenset[str]] = frozenset(REQUIRED + OPTIONAL)

    event_id: str
    wp_id: str
    from_lane: str
    to_lane: str
    at: str
    actor: str | dict[str, str | None]
    force: bool
    execution_mode: str
    mission_slug: str | None = None
    feature_slug: str | None = None
    mission_id: str | None = None
    reason: str | None = None
    review_ref: str | None = None
    evidence: Any = None
    review_result: Any = None
    policy_metadata: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
    absent: frozenset[str] = field(default_factory=frozenset)

    check = staticmethod(check_transition)

    def __hash__(self) -> int:
        return hash(self.event_id)
