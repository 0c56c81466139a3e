"""The exception tree of replaylog.

    ReplaylogError                 every error replaylog raises on purpose
    ├── UsageError                 bad input from the caller (feature name, payload, URL)  exit 2
    ├── StoreError                 a log cannot be read or written (.path, .line)           exit 1
    │   └── LogsUnreadableError    some of several logs are bad; the rest were handled      exit 1
    ├── BadIndexError              queue.db is unreadable, foreign or newer than this code  exit 1
    └── DeliveryError              replay stopped (404, protocol, ...)                      exit 1
        ├── TransientDeliveryError retries spent; events left pending                        exit 3
        └── AuthenticationError    the server refused the credentials (401/403)             exit 4

Low-level errors (OSError, sqlite3.Error, httpx errors) are re-raised as one of these
with ``raise ... from exc`` so that callers need to catch only ``ReplaylogError``.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "DeliveryError",
    "BadIndexError",
    "LogsUnreadableError",
    "ReplaylogError",
    "StoreError",
    "TransientDeliveryError",
    "UsageError",
]


class ReplaylogError(Exception):
    """Root of every error replaylog raises on purpose."""

    exit_code = 1


class UsageError(ReplaylogError, ValueError):
    """The caller asked for something invalid: a bad feature name, payload or option."""

    exit_code = 2


class StoreError(ReplaylogError):
    """A log file cannot be read or written. ``path`` and ``line`` say where."""

    exit_code = 1

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.line = line


class LogsUnreadableError(StoreError):
    """A command over many logs (``status``, ``rebuild-index``, ``replay``) handled every
    readable log, and some could not be read (SPEC section 10).

    ``problems`` lists each bad log as ``(path, line, message)``; ``partial`` holds what
    the command made of the readable logs (a status report, a replay report, ...), or
    None when it kept things as they were (``rebuild-index`` without ``--skip-bad``).
    """

    def __init__(
        self,
        message: str,
        *,
        problems: list[tuple[str, int | None, str]],
        partial: object = None,
    ) -> None:
        super().__init__(message)
        self.problems = problems
        self.partial = partial


class BadIndexError(ReplaylogError):
    """queue.db cannot be used: not a database, a foreign schema, or newer than this code."""

    exit_code = 1


class DeliveryError(ReplaylogError):
    """Replay stopped for a reason that retrying will not fix (404, bad URL, ...)."""

    exit_code = 1


class TransientDeliveryError(DeliveryError):
    """Replay retried as often as allowed and gave up; the events stay pending."""

    exit_code = 3


class AuthenticationError(DeliveryError):
    """The server refused the credentials (401 or 403)."""

    exit_code = 4
