"""The exception tree of replaylog.

    ReplaylogError                 every error replaylog raises on purpose
    ├── UsageError                 bad input from the caller (feature name, payload, URL)  exit 2
    │   └── EventValidationError   an event breaks a rule of SPEC section 2 (replaylog.lines)
    ├── StoreError                 a log cannot be read or written (.path, .line)           exit 1
    │   ├── LogsUnreadableError    some of several logs are bad; the rest were handled      exit 1
    │   ├── MergeConflict          two sides of a merge cannot be joined (replaylog.gitmerge)
    │   └── DiskError              the machine refused a file: an I/O error (.path, .errno) exit 1
    │       ├── DiskFullError      no space left (ENOSPC) or the disk quota is spent (EDQUOT)
    │       └── AccessDeniedError  a read-only filesystem (EROFS) or no permission (EACCES, EPERM)
    ├── BadIndexError              queue.db is unreadable, foreign or newer than this code  exit 1
    ├── DeliveryError              replay stopped (404, protocol, ...)                      exit 1
    │   ├── TransientDeliveryError retries spent; events left pending                        exit 3
    │   └── AuthenticationError    the server refused the credentials (401/403)             exit 4
    └── ReceiverError              `replaylog serve` cannot use its database                exit 1

    ReplaylogWarning               something worth saying that is not a failure (a UserWarning):
                                   an append is durable in its log, but the index will take it
                                   in only when it next catches up (SPEC section 12)

Low-level errors (``OSError``, ``sqlite3.Error``, SQLAlchemy's errors) are re-raised as
one of these with ``raise ... from exc`` so that callers need to catch only
``ReplaylogError``. :func:`translate` is the one place that decides which: a full disk,
an I/O error or a read-only file is a :class:`DiskError` naming the path and its device
(never "rebuild the index": the index is fine, the disk is not), a damaged index is a
:class:`BadIndexError` naming ``replaylog rebuild-index``. Every public method of
:class:`~replaylog.EventStore` applies it at the library's edge, as httpx's
``map_exceptions`` does, and the command line uses the same mapping.
"""

from __future__ import annotations

import errno as _errno
import os
import sys

__all__ = [
    "AccessDeniedError",
    "AuthenticationError",
    "BadIndexError",
    "DeliveryError",
    "DiskError",
    "DiskFullError",
    "EventValidationError",
    "LogsUnreadableError",
    "ReceiverError",
    "ReplaylogError",
    "ReplaylogWarning",
    "StoreError",
    "TransientDeliveryError",
    "UsageError",
    "disk_error",
    "database_error",
    "is_log_problem",
    "os_error",
    "translate",
]

REBUILD_HINT = "run `replaylog rebuild-index` to build it again from the logs"


class ReplaylogError(Exception):
    """Root of every error replaylog raises on purpose."""

    exit_code = 1


class ReplaylogWarning(UserWarning):
    """Not a failure, but worth saying: e.g. an append the index will take in later."""


class UsageError(ReplaylogError, ValueError):
    """The caller asked for something invalid: a bad feature name, payload or option."""

    exit_code = 2


class EventValidationError(UsageError):
    """An event breaks a rule of SPEC section 2. The message names the field and why."""


class StoreError(ReplaylogError):
    """A log file cannot be read or written. ``path`` and ``line`` say where."""

    exit_code = 1

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.line = line


class DiskError(StoreError):
    """The machine refused to read or write a file (a log, the index, the clock file, a
    rebuilt index, a repaired or merged log): an I/O error. ``path`` is the file and
    ``errno`` the system's error number. Nothing was half-written; once the disk is
    fine again, the same command goes on."""

    def __init__(self, message: str, *, path: str | None = None, errno: int | None = None) -> None:
        super().__init__(message, path=path)
        self.errno = errno


class DiskFullError(DiskError):
    """No space left on the device (ENOSPC), or the disk quota is spent (EDQUOT)."""


class AccessDeniedError(DiskError):
    """The filesystem is read-only (EROFS), or this user may not write there (EACCES, EPERM)."""


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


class ReceiverError(ReplaylogError):
    """The receiver (``replaylog serve``) cannot use its database: unreachable, not its
    own, or made by a newer replaylog."""

    exit_code = 1


# --------------------------------------------------------------------------- translation

#: The system errors that are about the disk or the file's permissions, not the data.
_DISK = frozenset(
    {_errno.ENOSPC, _errno.EDQUOT, _errno.EROFS, _errno.EACCES, _errno.EPERM, _errno.EIO}
)
_LOW_SPACE = 1 << 20  # bytes: below this, a vague SQLite I/O error is taken for a full disk


def _mount_point(path: str) -> str:
    current = os.path.abspath(path)
    while not os.path.ismount(current):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return current


def disk_error(code: int | None, path: str, doing: str, detail: str | None = None) -> StoreError:
    """The error for failing to ``doing`` (e.g. "append to the log") at ``path`` because of
    system error ``code``: one line that names the path, its device and what to do."""
    where = f"cannot {doing} {path}"
    device = f"the device holding it (mounted at {_mount_point(path)})"
    if code == _errno.ENOSPC:
        return DiskFullError(
            f"{where}: no space left on {device}; free some space and run the command again",
            path=path,
            errno=code,
        )
    if code == _errno.EDQUOT:
        return DiskFullError(
            f"{where}: the disk quota of this user is spent on {device}; free some space"
            " and run the command again",
            path=path,
            errno=code,
        )
    if code == _errno.EROFS:
        return AccessDeniedError(
            f"{where}: {device} is a read-only filesystem; make it writable (or point"
            " --root or --index elsewhere) and run the command again",
            path=path,
            errno=code,
        )
    if code in (_errno.EACCES, _errno.EPERM):
        return AccessDeniedError(
            f"{where}: permission denied; give this user access to it and its folder,"
            " then run the command again",
            path=path,
            errno=code,
        )
    if code == _errno.EIO:
        return DiskError(
            f"{where}: an I/O error on {device}; check the disk, then run the command again",
            path=path,
            errno=code,
        )
    reason = detail or (os.strerror(code) if code else "unknown error")
    return DiskError(f"{where}: {reason}", path=path, errno=code)


def os_error(exc: OSError, path: str | None, doing: str) -> StoreError:
    """The error for an ``OSError`` met while trying to ``doing`` the file at ``path``
    (the error's own file name wins when it has one)."""
    where = exc.filename if isinstance(exc.filename, str) else path
    reason = exc.strerror or str(exc)
    if where is None:
        return StoreError(f"cannot {doing} a file: {reason}")
    if exc.errno in _DISK:
        return disk_error(exc.errno, where, doing)
    return StoreError(f"cannot {doing} {where}: {reason}", path=where)


def _diagnose(path: str) -> int | None:
    """What is wrong with the disk holding ``path`` when SQLite only says "I/O error"."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return _errno.EROFS
    if st.f_bavail * st.f_frsize < _LOW_SPACE:
        return _errno.ENOSPC
    if not os.access(folder, os.W_OK) or (
        os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK)
    ):
        return _errno.EACCES
    return None


def _sqlite_errno(exc: BaseException, index: str) -> int | None:
    """The system error behind a SQLite error, or None when it is not about the disk."""
    name = str(getattr(exc, "sqlite_errorname", "") or "")
    text = str(exc).lower()
    if name.startswith("SQLITE_FULL") or "database or disk is full" in text:
        return _errno.ENOSPC
    if name.startswith("SQLITE_READONLY") or "readonly database" in text:
        return _diagnose(index) or _errno.EACCES
    if name.startswith("SQLITE_PERM"):
        return _errno.EACCES
    if name.startswith("SQLITE_IOERR") or "disk i/o error" in text:
        return _diagnose(index) or _errno.EIO
    if name.startswith("SQLITE_CANTOPEN") or "unable to open database file" in text:
        return _diagnose(index) or _errno.ENOENT
    return None


def database_error(
    exc: BaseException, index: str, doing: str = "write the index"
) -> ReplaylogError:
    """A SQLite error on the index at ``index``: a :class:`DiskError` when the disk is the
    trouble, else a :class:`BadIndexError` (SQLite's own message names no path)."""
    code = _sqlite_errno(exc, index)
    if code is not None:
        return disk_error(code, index, doing, detail=str(exc))
    if "locked" in str(exc).lower():
        return BadIndexError(
            f"{index}: the index stayed locked by another process ({exc}); run the command"
            " again when it is done"
        )
    return BadIndexError(f"{index} is not a usable replaylog index ({exc}); {REBUILD_HINT}")


def translate(
    exc: BaseException,
    *,
    path: str | None = None,
    index: str | None = None,
    doing: str | None = None,
) -> ReplaylogError | None:
    """The :class:`ReplaylogError` for a low-level error, or None for any other exception.

    ``path``: the file an ``OSError`` is about when it names none (``os.write`` does not);
    ``index``: the index a SQLite or SQLAlchemy error is about; ``doing``: what failed.
    """
    if isinstance(exc, ReplaylogError):
        return exc
    if isinstance(exc, OSError):
        return os_error(exc, path, doing or "use")
    sqlite3 = sys.modules.get("sqlite3")
    # SQLAlchemy wraps the driver's error: the original (``.orig``) says what happened.
    cause = getattr(exc, "orig", None) if type(exc).__module__.startswith("sqlalchemy") else exc
    if sqlite3 is not None and isinstance(cause, sqlite3.Error):
        if index is None:
            return BadIndexError(f"the index cannot be used ({cause}); {REBUILD_HINT}")
        return database_error(cause, index, doing or "write the index")
    if type(exc).__module__.startswith("sqlalchemy"):
        return BadIndexError(f"{index or 'the index'}: cannot be used ({exc}); {REBUILD_HINT}")
    return None


def is_log_problem(exc: StoreError, path: str) -> bool:
    """Whether ``exc`` is about the log at ``path`` (a bad line, a log the disk cannot
    read), not about the disk of the index or the clock, which stops every log."""
    return not isinstance(exc, DiskError) or exc.path in (None, path)
