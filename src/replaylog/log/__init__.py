"""The canonical JSONL logs (SPEC sections 1, 3 and 8): lock, durable append, strict
read, repair.

Writers take an exclusive ``flock`` and write on an ``O_APPEND`` descriptor; readers take
a shared one, so a reader never sees half of an append. Reading is strict: a bad line
stops the read with a :class:`~replaylog.StoreError` naming the line. One module per
job: :mod:`.paths` (where a log is), :mod:`.read` (the plain, strict reader),
:mod:`.fastread` (the fast path for whole logs), :mod:`.write` (appends) and
:mod:`.repair` (a torn tail). This package knows nothing of the index (no SQLAlchemy).
"""

from __future__ import annotations

from .paths import EVENTS_FILENAME, log_path, validate_feature_name
from .read import (
    GcPaused,
    LogLine,
    iter_events,
    parse_line,
    read_events,
    read_events_raw,
    scan_log,
    verify_log,
)
from .repair import repair_log
from .write import LogWriter, append_event, append_events, write_durably

__all__ = [
    "EVENTS_FILENAME",
    "GcPaused",
    "LogLine",
    "LogWriter",
    "append_event",
    "append_events",
    "iter_events",
    "log_path",
    "parse_line",
    "read_events",
    "read_events_raw",
    "repair_log",
    "scan_log",
    "validate_feature_name",
    "verify_log",
    "write_durably",
]
