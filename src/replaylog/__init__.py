"""replaylog: an embedded, offline-first event store.

Append-only JSONL logs are the truth; a SQLite index (``queue.db``) is derived from
them and drives batched HTTP replay. Names are imported on first use, so that
``import replaylog`` (and the ``replaylog append`` command) stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_getattr
from ._version import __version__

__all__ = [
    "EVENTS_FILENAME",
    "AccessDeniedError",
    "Annotation",
    "AuthenticationError",
    "BadIndexError",
    "DeliveryError",
    "DiskError",
    "DiskFullError",
    "Event",
    "EventStore",
    "LogsUnreadableError",
    "Record",
    "ReplaylogError",
    "ReplaylogWarning",
    "StatusEvent",
    "StoreError",
    "TransientDeliveryError",
    "UsageError",
    "__version__",
    "append_event",
    "append_events",
    "generate_event_id",
    "iter_events",
    "read_events",
    "read_events_raw",
    "validate_ulid_format",
]

_WHERE = {
    "EVENTS_FILENAME": "log",
    "append_event": "log",
    "append_events": "log",
    "iter_events": "log",
    "read_events": "log",
    "read_events_raw": "log",
    "Event": "lines.event",
    "StatusEvent": "lines",
    "Annotation": "lines",
    "Record": "lines",
    "LogsUnreadableError": "errors",
    "generate_event_id": "lines.ids",
    "validate_ulid_format": "lines.ids",
    "EventStore": "store",
    "AccessDeniedError": "errors",
    "AuthenticationError": "errors",
    "BadIndexError": "errors",
    "DeliveryError": "errors",
    "DiskError": "errors",
    "DiskFullError": "errors",
    "ReplaylogError": "errors",
    "ReplaylogWarning": "errors",
    "StoreError": "errors",
    "TransientDeliveryError": "errors",
    "UsageError": "errors",
}

if TYPE_CHECKING:
    from .errors import (
        AccessDeniedError,
        AuthenticationError,
        BadIndexError,
        DeliveryError,
        DiskError,
        DiskFullError,
        LogsUnreadableError,
        ReplaylogError,
        ReplaylogWarning,
        StoreError,
        TransientDeliveryError,
        UsageError,
    )
    from .lines import Annotation, Record, StatusEvent
    from .lines.event import Event
    from .lines.ids import generate_event_id, validate_ulid_format
    from .log import (
        EVENTS_FILENAME,
        append_event,
        append_events,
        iter_events,
        read_events,
        read_events_raw,
    )
    from .store import EventStore


__getattr__ = lazy_getattr(__name__, _WHERE)


def __dir__() -> list[str]:
    return sorted(__all__)
