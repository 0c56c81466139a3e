"""Record lines (SPEC section 10): anything else spec-kitty logs, told by its ``type``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ._base import LineRecord, check_str

__all__ = ["Record", "check_record"]


def check_record(obj: Mapping[str, Any]) -> None:
    """A record needs a non-empty ``type`` and a time, ``at``; anything else goes."""
    check_str(obj, "type", empty=False)
    check_str(obj, "at")


@dataclass(frozen=True, eq=True)
class Record(LineRecord):
    """One record line: its type and time; every other key is in ``extra``."""

    KIND: ClassVar[str] = "record"
    REQUIRED: ClassVar[tuple[str, ...]] = ("event_id", "type", "at")
    _KNOWN: ClassVar[frozenset[str]] = frozenset(REQUIRED)

    event_id: str
    type: str
    at: str
    extra: dict[str, Any] = field(default_factory=dict)
    absent: frozenset[str] = field(default_factory=frozenset)

    check = staticmethod(check_record)

    def __hash__(self) -> int:
        return hash(self.event_id)
