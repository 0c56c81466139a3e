"""What verify, replay and emit report: small frozen records.

They live apart from the modules of the append path, which a CLI append imports:
creating dataclasses costs start-up time that only these commands need.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .lines.event import Event

__all__ = ["EmitResult", "Problem", "ReplayReport", "VerifyReport"]


@dataclass(frozen=True)
class Problem:
    """Something ``verify`` found: an error (the log cannot be read) or a warning."""

    path: str
    line: int | None
    message: str
    level: str = "error"

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "line": self.line, "message": self.message, "level": self.level}


@dataclass(frozen=True)
class ReplayReport:
    """What one replay run did: counted in this run, and what is still pending after it."""

    accepted: int
    rejected: int
    pending: int
    batches: int
    attempts: int = 0

    def to_dict(self) -> dict[str, int]:
        return {
            "accepted": self.accepted,
            "rejected": self.rejected,
            "pending": self.pending,
            "batches": self.batches,
        }


@dataclass(frozen=True)
class VerifyReport:
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(p.level == "error" for p in self.problems)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": [p.to_dict() for p in self.problems]}


@dataclass(frozen=True)
class EmitResult:
    """An emitted event, whether it reached the server, and the warning if it did not."""

    event: Event
    delivered: bool
    warning: str | None = None
