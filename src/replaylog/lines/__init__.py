"""The kinds of line a log holds (SPEC sections 2 and 10), told apart and checked.

Every line is one JSON object with an ``event_id`` (a ULID). What else it must hold
depends on its kind, told by its keys:

======================  ==========================================================
kind                    a line is of this kind when
======================  ==========================================================
``envelope``            it has ``event_type`` (:class:`Event`)
``annotation``          ``kind`` is ``"annotation"`` (:class:`Annotation`)
``record``              it has ``type`` (:class:`Record`)
``transition``          it has ``to_lane`` and no ``kind``, ``type`` or ``event_type``
                        (:class:`StatusEvent`)
======================  ==========================================================

Anything else (another ``kind``, a line of no kind) is refused. :func:`check_line`
validates a parsed line object without changing it and names the kind and the field of
the first problem (:mod:`.kinds`); :func:`build_line` turns a checked object into its
kind's record. The checks of each kind live in its own module: envelopes, the store's
own events, in :mod:`.envelope`; what every kind shares (limits, the canonical JSON
line) in :mod:`.canonical`; ids and times in :mod:`.ids`.

Names are imported on first use: the CLI append needs :mod:`.envelope` and
:mod:`.canonical` only, and the other kinds' records cost start-up time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_getattr

__all__ = [
    "LANES",
    "LINE_KINDS",
    "Annotation",
    "Event",
    "Line",
    "Record",
    "StatusEvent",
    "build_line",
    "check_line",
    "describe",
    "index_fields",
    "line_kind",
    "matches",
]

_WHERE = {
    "LANES": "transition",
    "LINE_KINDS": "kinds",
    "Annotation": "annotation",
    "Event": "event",
    "Line": "kinds",
    "Record": "record",
    "StatusEvent": "transition",
    "build_line": "kinds",
    "check_line": "kinds",
    "describe": "kinds",
    "index_fields": "kinds",
    "line_kind": "kinds",
    "matches": "kinds",
}

if TYPE_CHECKING:
    from .annotation import Annotation
    from .event import Event
    from .kinds import (
        LINE_KINDS,
        Line,
        build_line,
        check_line,
        describe,
        index_fields,
        line_kind,
        matches,
    )
    from .record import Record
    from .transition import LANES, StatusEvent


__getattr__ = lazy_getattr(__name__, _WHERE)


def __dir__() -> list[str]:
    return sorted(__all__)
