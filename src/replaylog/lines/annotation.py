"""Annotation lines (SPEC section 10): runtime facts about a work package (``delta``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import EventValidationError
from ._base import LineRecord, check_actor, check_str
from .canonical import show_value

__all__ = ["Annotation", "check_annotation"]


def check_annotation(obj: Mapping[str, Any]) -> None:
    """The fields an annotation must hold, with their types (SPEC section 10)."""
    check_str(obj, "wp_id", empty=False)
    check_str(obj, "at")
    check_actor(obj)
    if "delta" not in obj:
        raise EventValidationError("missing field 'delta'")
    if type(obj["delta"]) is not dict:
        raise EventValidationError(
            f"field 'delta' must be a JSON object, got {show_value(obj['delta'])}"
        )


@dataclass(frozen=True, eq=True)
class Annotation(LineRecord):
    """One annotation line; keys this record does not know are in ``extra``."""

    KIND: ClassVar[str] = "annotation"
    REQUIRED: ClassVar[tuple[str, ...]] = ("event_id", "kind", "wp_id", "at", "actor", "delta")
    _KNOWN: ClassVar[frozenset[str]] = frozenset(REQUIRED)

    event_id: str
    kind: str
    wp_id: str
    at: str
    actor: str | dict[str, str | None]
    delta: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    absent: frozenset[str] = field(default_factory=frozenset)

    check = staticmethod(check_annotation)

    def __hash__(self) -> int:
        return hash(self.event_id)
