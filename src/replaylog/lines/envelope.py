"""The envelope line (SPEC sections 2 and 10): :class:`Event`, its fields and their
checks, and the reader's quick way from a parsed line to an :class:`Event`.

On every hot path (the CLI append, the reader), so it imports nothing heavier than the
standard library.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from itertools import repeat
from typing import Any

from ..errors import EventValidationError
from .canonical import (
    EVENT_FIELDS,
    MAX_CLOCK,
    canonical_line,
    check_name,
    check_optional_id,
    is_plain,
    normalize_payload,
    show_value,
)
from .ids import ULID_PATTERN, generate_event_id, local_node_id, utc_now

__all__ = [
    "EVENT_FIELDS",
    "FIELD_SET",
    "OPTIONAL_FIELDS",
    "TIMESTAMP_PATTERN",
    "Event",
    "build_event",
    "build_events",
    "build_new_event",
    "check_envelope",
]

FIELD_SET = frozenset(EVENT_FIELDS)
#: ISO-8601 UTC. ASCII digits only (``\d`` would take any script's digits) and each
#: part within its range, so that what passes can be parsed as a date and time.
TIMESTAMP_PATTERN = (
    r"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
    r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60)(?:\.[0-9]{1,9})?(?:Z|\+00:00)"
)
_ULID_RE = re.compile(ULID_PATTERN)
_TIMESTAMP_RE = re.compile(TIMESTAMP_PATTERN)


# --------------------------------------------------------------------------- the record


#: Fields an envelope written elsewhere may lack (SPEC section 10); the store writes all.
OPTIONAL_FIELDS = (
    "aggregate_id",
    "timestamp",
    "node_id",
    "lamport_clock",
    "causation_id",
    "correlation_id",
)
_OPTIONAL_SET = frozenset(OPTIONAL_FIELDS)


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


def _check_fields(d: Mapping[str, Any], *, partial: bool = False) -> None:
    """Validate the nine fields of SPEC section 2 in ``d``; raise naming the first bad one.

    ``partial``: the optional fields (:data:`OPTIONAL_FIELDS`) are checked only when
    present (an envelope written elsewhere, SPEC section 10).
    """
    eid = d.get("event_id")
    if type(eid) is not str or _ULID_RE.fullmatch(eid) is None:
        raise EventValidationError(f"field 'event_id' must be a ULID, got {show_value(eid)}")
    check_name(d.get("event_type"), "event_type")
    if not partial or "aggregate_id" in d:
        check_name(d.get("aggregate_id"), "aggregate_id")
    if not partial or "timestamp" in d:
        ts = d.get("timestamp")
        if type(ts) is not str or _TIMESTAMP_RE.fullmatch(ts) is None:
            raise EventValidationError(
                "field 'timestamp' must be ISO-8601 UTC ending in Z or +00:00,"
                f" got {show_value(ts)}"
            )
    if not partial or "node_id" in d:
        node = d.get("node_id")
        if type(node) is not str or not node:
            raise EventValidationError(
                f"field 'node_id' must be a non-empty string, got {show_value(node)}"
            )
    if not partial or "lamport_clock" in d:
        clock = d.get("lamport_clock")
        if type(clock) is not int or clock < 0 or clock > MAX_CLOCK:
            raise EventValidationError(
                f"field 'lamport_clock' must be a non-negative integer of at most 2**63-1,"
                f" got {show_value(clock)}"
            )
    if not partial or "causation_id" in d:
        check_optional_id(d.get("causation_id"), "causation_id")
    if not partial or "correlation_id" in d:
        check_optional_id(d.get("correlation_id"), "correlation_id")


_new_object = object.__new__
_set_attr = object.__setattr__


def check_envelope(d: Mapping[str, Any]) -> None:
    """Validate an envelope line (one with ``event_type``) without changing it.

    A line the store writes holds every field of section 2; one written elsewhere may
    lack ``aggregate_id``, ``node_id``, ``lamport_clock``, ``causation_id`` and
    ``correlation_id``, and give its time as ``at`` instead of ``timestamp``; what it
    holds follows section 2 all the same (SPEC section 10).
    """
    if d.keys() >= FIELD_SET:
        _check_fields(d)
    else:
        if "event_type" not in d:
            raise EventValidationError("missing field 'event_type'")
        if "payload" not in d:
            raise EventValidationError("missing field 'payload'")
        if "timestamp" not in d and type(d.get("at")) is not str:
            raise EventValidationError(
                "missing field 'timestamp' (or 'at'): an event needs the time it was written"
            )
        _check_fields(d, partial=True)
    if type(d["payload"]) is not dict:
        raise EventValidationError(
            f"field 'payload' must be a JSON object, got {show_value(d['payload'])}"
        )


def build_event(d: dict[str, Any]) -> Event:
    """Turn an already validated line object (a dict this function consumes) into an Event.

    The reader's hot path: it skips dataclass ``__init__`` and reuses the parsed dict as
    the instance dict, moving unknown keys into ``extra``.
    """
    if len(d) == 9 and d.keys() == FIELD_SET:
        d["extra"] = {}
    else:
        d["extra"] = {k: d.pop(k) for k in [k for k in d if k not in FIELD_SET]}
        if len(d) != 10:
            missing = [k for k in OPTIONAL_FIELDS if k not in d]
            for k in missing:
                d[k] = None
            d["absent"] = frozenset(missing)
    event: Event = _new_object(Event)
    _set_attr(event, "__dict__", d)
    return event


def build_new_event(d: dict[str, Any]) -> Event:
    """:func:`build_event` for the object of a new event (section 2's nine fields, no
    other key, as :func:`~replaylog.lines.new_line_object` makes it): consumed, no
    key looked at."""
    d["extra"] = {}
    event: Event = _new_object(Event)
    _set_attr(event, "__dict__", d)
    return event


def build_events(objs: list[dict[str, Any]]) -> list[Event]:
    """:func:`build_event` for many envelope objects that hold every field of section 2
    (the lines of a clean log); when none has extra keys, without a Python call per
    event (``map`` over C functions)."""
    if set(map(len, objs)) - {9}:
        return [build_event(d) for d in objs]
    list(map(dict.__setitem__, objs, repeat("extra"), iter(dict, None)))
    events: list[Event] = list(map(_new_object, repeat(Event, len(objs))))
    list(map(_set_attr, events, repeat("__dict__"), objs))
    return events
