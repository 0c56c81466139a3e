"""Which kind a line is (SPEC sections 2 and 10), its check and its record, whatever the kind.

:func:`check_line` validates a parsed line object without changing it and names the
kind and the field of the first problem; :func:`build_line` turns a checked object into
its kind's record. The checks of each kind live in its own module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import EventValidationError
from .annotation import Annotation, check_annotation
from .canonical import MAX_CLOCK, show_value
from .envelope import build_event, check_envelope
from .event import Event
from .ids import validate_ulid_format
from .record import Record, check_record
from .transition import StatusEvent, check_transition

__all__ = [
    "LINE_KINDS",
    "Line",
    "build_line",
    "check_line",
    "describe",
    "index_fields",
    "line_kind",
    "matches",
]

LINE_KINDS = ("envelope", "transition", "annotation", "record")

#: What :func:`build_line` returns: the record of one kind.
Line = Event | StatusEvent | Annotation | Record


def line_kind(obj: Mapping[str, Any]) -> str:
    """The kind of a line object, or raise :class:`EventValidationError` if it has none."""
    if "event_type" in obj:
        return "envelope"
    if "kind" in obj:
        if obj["kind"] == "annotation":
            return "annotation"
        raise EventValidationError(
            f"unknown kind {show_value(obj['kind'])}: the only kind a line may name is 'annotation'"
        )
    if "type" in obj:
        return "record"
    if "to_lane" in obj:
        return "transition"
    raise EventValidationError(
        "a line of no known kind: an event needs 'event_type', a transition 'to_lane',"
        " an annotation 'kind', a record 'type'"
    )


_CHECKS = {
    "envelope": check_envelope,
    "transition": check_transition,
    "annotation": check_annotation,
    "record": check_record,
}


def check_line(obj: Mapping[str, Any]) -> str:
    """Validate a parsed line object of any kind; returns its kind.

    Raises :class:`EventValidationError` whose message starts with the kind and names
    the field, e.g. ``transition: field 'to_lane' must be a lane ...``.
    """
    if not isinstance(obj, Mapping):
        raise EventValidationError(f"a line must hold a JSON object, not {type(obj).__name__}")
    kind = line_kind(obj)
    eid = obj.get("event_id")
    try:
        if type(eid) is not str or not validate_ulid_format(eid):
            raise EventValidationError(f"field 'event_id' must be a ULID, got {show_value(eid)}")
        if kind != "envelope" and "lamport_clock" in obj:
            clock = obj["lamport_clock"]
            if type(clock) is not int or clock < 0 or clock > MAX_CLOCK:
                raise EventValidationError(
                    "field 'lamport_clock' must be a non-negative integer of at most 2**63-1,"
                    f" got {show_value(clock)}"
                )
        _CHECKS[kind](obj)
    except EventValidationError as exc:
        raise EventValidationError(f"{kind}: {exc}") from None
    return kind


_BUILDERS = {
    "transition": StatusEvent.build,
    "annotation": Annotation.build,
    "record": Record.build,
}


def build_line(obj: dict[str, Any]) -> Line:
    """The record of a checked line object (a dict this function may consume)."""
    kind = "envelope" if "event_type" in obj else line_kind(obj)
    if kind == "envelope":
        return build_event(obj)
    return _BUILDERS[kind](obj)  # type: ignore[return-value]


def index_fields(obj: Mapping[str, Any]) -> tuple[str, str, str, int | None]:
    """What the index keeps of a checked line: ``(event_type, aggregate_id, node_id,
    lamport_clock)``, ``""`` for what the line does not carry, None for no clock.

    A transition's or annotation's aggregate is its work package; a record's type is
    kept as its type.
    """
    clock = obj.get("lamport_clock")
    if "event_type" in obj:
        return (
            obj["event_type"],
            obj.get("aggregate_id") or "",
            obj.get("node_id") or "",
            clock,
        )
    if "type" in obj and "kind" not in obj:
        wp = obj.get("wp_id")
        return obj["type"], wp if type(wp) is str else "", "", clock
    return "", obj["wp_id"], "", clock


def matches(line: Line, *, type: str | None = None, aggregate: str | None = None) -> bool:
    """``log --type T --aggregate A``: ``type`` is an envelope's ``event_type``, a
    record's ``type`` or a kind (``transition``, ``annotation``); ``aggregate`` is an
    envelope's ``aggregate_id`` or a work package (``wp_id``)."""
    if type is not None:
        if isinstance(line, Event):
            if line.event_type != type and type != "envelope":
                return False
        elif isinstance(line, Record):
            if line.type != type and type != "record":
                return False
        elif type != line.KIND:
            return False
    if aggregate is not None:
        subject = line.aggregate_id if isinstance(line, Event) else getattr(line, "wp_id", None)
        if subject != aggregate:
            return False
    return True


def describe(line: Line) -> tuple[str, str, str, str, str]:
    """One line for people: ``(lamport, time, what, subject, detail)``, ``-`` where the
    line holds nothing of the sort (its Lamport value is then the index's, derived)."""
    import json

    def text(value: object) -> str:
        return json.dumps(value, sort_keys=True, ensure_ascii=False)

    if isinstance(line, Event):
        clock = "-" if line.lamport_clock is None else str(line.lamport_clock)
        when = line.timestamp or str(line.extra.get("at", "-"))
        return clock, when, line.event_type, line.aggregate_id or "-", text(line.payload)
    clock = str(line.extra.get("lamport_clock", "-"))
    if isinstance(line, StatusEvent):
        actor = line.actor if type(line.actor) is str else text(line.actor)
        force = " (forced)" if line.force else ""
        return clock, line.at, f"{line.from_lane}->{line.to_lane}{force}", line.wp_id, actor
    if isinstance(line, Annotation):
        return clock, line.at, "annotation", line.wp_id, text(line.delta)
    wp = line.extra.get("wp_id")
    return clock, line.at, line.type, wp if isinstance(wp, str) else "-", text(line.extra)
