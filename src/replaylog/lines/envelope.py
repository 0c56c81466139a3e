"""The envelope line (SPEC sections 2 and 10): its fields and their checks, and the
reader's quick way from a parsed line to an :class:`~replaylog.lines.event.Event`.

On every hot path (the CLI append, the reader), so it imports nothing heavier than the
standard library. The Event class itself is in :mod:`~replaylog.lines.event`, loaded on
first use (``envelope.Event`` works too): a ``replaylog append`` command builds none.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from itertools import repeat
from typing import TYPE_CHECKING, Any

from ..errors import EventValidationError
from .canonical import (
    EVENT_FIELDS,
    MAX_CLOCK,
    check_name,
    check_no_control,
    check_optional_id,
    show_value,
)
from .ids import ULID_PATTERN

if TYPE_CHECKING:
    from .event import Event

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
        if not node.isprintable():  # a name: no control character (as check_name says)
            check_no_control(node, "node_id")
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


def _load_event() -> type[Event]:
    """The Event class, its module imported on first use; then ``Event`` is a global
    here like any other."""
    from .event import Event

    globals()["Event"] = Event
    return Event


def _event_class() -> type[Event]:
    try:
        return Event
    except NameError:  # not loaded yet
        return _load_event()


if not TYPE_CHECKING:  # (to a type checker, Event is imported above)

    def __getattr__(name: str) -> Any:
        if name == "Event":
            return _load_event()
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    event: Event = _new_object(_event_class())
    _set_attr(event, "__dict__", d)
    return event


def build_new_event(d: dict[str, Any]) -> Event:
    """:func:`build_event` for the object of a new event (section 2's nine fields, no
    other key, as :func:`~replaylog.lines.new_line_object` makes it): consumed, no
    key looked at."""
    d["extra"] = {}
    event: Event = _new_object(_event_class())
    _set_attr(event, "__dict__", d)
    return event


def build_events(objs: list[dict[str, Any]]) -> list[Event]:
    """:func:`build_event` for many envelope objects that hold every field of section 2
    (the lines of a clean log); when none has extra keys, without a Python call per
    event (``map`` over C functions)."""
    if set(map(len, objs)) - {9}:
        return [build_event(d) for d in objs]
    list(map(dict.__setitem__, objs, repeat("extra"), iter(dict, None)))
    events: list[Event] = list(map(_new_object, repeat(_event_class(), len(objs))))
    list(map(_set_attr, events, repeat("__dict__"), objs))
    return events
