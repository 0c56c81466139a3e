"""The :class:`Event` record of an envelope line (SPEC sections 2 and 10).

Its checks and the reader's quick ways from a parsed line to an Event are in
:mod:`~replaylog.lines.envelope`, which loads this module on first use: a dataclass
needs the ``dataclasses`` module, which alone costs more to import than a tenth of a
``replaylog append`` command, and that command never builds an Event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import EventValidationError
from .canonical import EVENT_FIELDS, canonical_line, is_plain, normalize_payload
from .envelope import (
    _OPTIONAL_SET,
    FIELD_SET,
    OPTIONAL_FIELDS,
    _check_fields,
    build_event,
    check_envelope,
)
from .ids import generate_event_id, local_node_id, utc_now

__all__ = ["Event"]


@dataclass(frozen=True, eq=True)
class Event:
    """One event (an envelope line). ``extra`` holds any other keys of the line, unchanged.

    ``absent`` names the fields of section 2 that the line does not hold (an envelope
    written by another tool, SPEC section 10); they are None here and stay absent in
    :meth:`to_dict`. Events the store writes hold every field.
    """

    event_id: str
    event_type: str
    aggregate_id: str | None
    payload: dict[str, Any]
    timestamp: str | None
    node_id: str | None
    lamport_clock: int | None
    causation_id: str | None = None
    correlation_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    absent: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.absent:
            object.__setattr__(self, "absent", frozenset(self.absent))
            unknown = self.absent - _OPTIONAL_SET
            if unknown:
                raise EventValidationError(
                    f"field(s) {', '.join(sorted(unknown))} cannot be absent from an event"
                )
            check_envelope(self.to_dict())
        else:
            _check_fields(self.__dict__)
        object.__setattr__(self, "payload", normalize_payload(self.payload))
        object.__setattr__(self, "extra", normalize_payload(self.extra, "extra"))
        for key in self.extra:
            if key in FIELD_SET:
                raise EventValidationError(f"extra key '{key}' collides with an event field")

    def __hash__(self) -> int:
        return hash((self.event_id, self.lamport_clock))

    KIND = "envelope"

    @classmethod
    def new(
        cls,
        event_type: str,
        aggregate_id: str,
        payload: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> Event:
        """A new event with a fresh id, the current time and this node's id.

        ``lamport_clock`` is 0 until a store assigns one on append.
        """
        unknown = set(fields) - FIELD_SET - {"extra"}
        if unknown:
            raise EventValidationError(f"unknown event field(s): {', '.join(sorted(unknown))}")
        fields.setdefault("event_id", generate_event_id())
        fields.setdefault("timestamp", utc_now())
        fields.setdefault("node_id", local_node_id())
        fields.setdefault("lamport_clock", 0)
        return cls(
            event_type=event_type,
            aggregate_id=aggregate_id,
            payload=payload,  # type: ignore[arg-type]
            **fields,
        )

    def with_clock(self, lamport_clock: int) -> Event:
        """A copy of this event with another Lamport value."""
        return replace(self, lamport_clock=lamport_clock)

    def to_dict(self) -> dict[str, Any]:
        """The line object: every field, ``None`` ids included, plus the extra keys.

        Fields named in ``absent`` are left out, so a line read is given back exactly."""
        if self.absent:
            d = {k: getattr(self, k) for k in EVENT_FIELDS if k not in self.absent}
            d.update(self.extra)
            return d
        d = {
            "event_id": self.event_id,
            "event_type": self.event_type,
            "aggregate_id": self.aggregate_id,
            "payload": self.payload,
            "timestamp": self.timestamp,
            "node_id": self.node_id,
            "lamport_clock": self.lamport_clock,
            "causation_id": self.causation_id,
            "correlation_id": self.correlation_id,
        }
        if self.extra:
            d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        """Build and validate an event from a line object. Unknown keys go to ``extra``."""
        if not isinstance(data, Mapping):
            raise EventValidationError(f"an event must be a JSON object, got {type(data).__name__}")
        d = dict(data)
        if not is_plain(d):
            # Not what json.loads gives (NaN, a set, a tuple...): let __init__ check and
            # normalize the payload and extra keys as it does for a new event.
            absent = frozenset(k for k in OPTIONAL_FIELDS if k not in d)
            extra = {k: v for k, v in d.items() if k not in FIELD_SET}
            fields: dict[str, Any] = {k: d.get(k) for k in EVENT_FIELDS}
            return cls(**fields, extra=extra, absent=absent)
        check_envelope(d)
        return build_event(d)

    def to_line(self) -> bytes:
        """The canonical line, newline included, as the log stores it."""
        return canonical_line(self.to_dict())
