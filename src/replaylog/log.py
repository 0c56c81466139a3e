"""The canonical JSONL log (SPEC sections 1 and 3): lock, durable append, strict read, repair.

Writers take an exclusive ``flock`` and write on an ``O_APPEND`` descriptor; readers take
a shared one, so a reader never sees half of an append. Reading is strict: a bad line
stops the read with a :class:`StoreError` naming the line, and memory stays bounded
whatever the file holds. This module knows nothing of the index (no SQLAlchemy).
"""

from __future__ import annotations

import errno
import fcntl
import gc
import json
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, NamedTuple

from .clock import lamport_of
from .errors import StoreError, UsageError, os_error
from .event import (
    MAX_LINE_BYTES,
    Event,
    EventValidationError,
)
from .posix import fsync_dir, open_regular

if TYPE_CHECKING:
    from .lines import Line

_new_object = object.__new__
_set_attr = object.__setattr__

try:  # orjson parses several times faster; json is the fallback and the tie-breaker.
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - orjson is a dependency
    _fast_loads = json.loads  # type: ignore[assignment]

if TYPE_CHECKING:
    from .reports import Problem

#: Open a log: a regular file, never through a symbolic link.
_open_log = open_regular

__all__ = [
    "EVENTS_FILENAME",
    "LogLine",
    "LogWriter",
    "append_event",
    "append_events",
    "iter_events",
    "log_path",
    "read_events",
    "read_events_raw",
    "repair_log",
    "scan_log",
    "validate_feature_name",
    "verify_log",
]

EVENTS_FILENAME = "status.events.jsonl"
_FEATURE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_CHUNK = 1 << 20
_READ_CHUNK = 4 << 20
_SNIPPET = 80
_JSON_SPACE = b" \t\r"  # a line of only these (or nothing) is blank

# orjson reads an integer wider than 64 bits as a float, silently. Such a number is a run
# of at least 19 digits after "-", a bracket, a comma, a colon or white space: mapping
# those bytes to "!" and every digit to "0" finds one with a single bytes.find.
_WIDE_INT = b"!" + b"0" * 19
_NUMBER_MAP = bytes(
    0x21 if b in b"-[,: \t\r\n" else 0x30 if 0x30 <= b <= 0x39 else b for b in range(256)
)


def validate_feature_name(name: object) -> str:
    """Return ``name`` if it is a valid feature name, else raise :class:`UsageError`."""
    if not isinstance(name, str) or name in (".", "..") or not _FEATURE_RE.fullmatch(name):
        raise UsageError(
            f"invalid feature name {name!r}: use 1-128 characters from A-Z a-z 0-9 . _ -,"
            " starting with a letter or digit"
        )
    return name


def log_path(feature_dir: str | os.PathLike[str]) -> str:
    """The path of the log inside a feature folder."""
    return os.path.join(os.fspath(feature_dir), EVENTS_FILENAME)


# --------------------------------------------------------------------------- reading


class LogLine(NamedTuple):
    """One non-blank line of a log: where it is and what it holds."""

    number: int  # 1-based physical line number
    offset: int  # byte offset of the line's first byte
    end: int  # byte offset just past the line's newline (or end of file when torn)
    obj: dict[str, Any]  # the parsed JSON object
    terminated: bool  # False only for a torn last line that still parses


def _snippet(raw: bytes) -> str:
    text = raw[: 4 * _SNIPPET].decode("utf-8", "replace")[:_SNIPPET]
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _has_wide_int(data: bytes) -> bool:
    """True if ``data`` may hold an integer orjson would turn into a float."""
    return data.translate(_NUMBER_MAP).find(_WIDE_INT) >= 0


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: valid JSON syntax, but no event may hold it
        raise ValueError(f"{text} is out of range")
    return value


def parse_line(raw: bytes) -> Any:
    """Parse one line strictly: orjson first, then json for what orjson cannot hold."""
    if not _has_wide_int(raw):
        try:
            return _fast_loads(raw)
        except ValueError:
            pass
    # json.loads keeps integers wider than 64 bits exact (orjson reads them as floats or
    # refuses them); it must still refuse NaN/Infinity and invalid UTF-8 as orjson does.
    return json.loads(raw.decode("utf-8"), parse_constant=_no_constants, parse_float=_finite_float)


def _same_json(a: Any, b: Any) -> bool:
    """Equal as JSON: unlike ``==``, ``true`` is not ``1`` and ``1.0`` is not ``1``."""
    try:
        return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    except (ValueError, RecursionError):
        return False


def _raw_lines(fd: int, start: int, limit: int | None) -> Iterator[tuple[int, bytes, bool]]:
    """Yield ``(offset, line_without_newline, terminated)`` from ``start`` in bounded memory.

    A line longer than the limit is yielded as its first bytes with ``terminated`` False
    and the scan stops there: nothing past it can be trusted to be a line boundary.
    """
    offset = start
    carry = b""
    pos = start
    end = limit
    while True:
        want = _CHUNK if end is None else min(_CHUNK, end - pos)
        chunk = os.pread(fd, want, pos) if want > 0 else b""
        pos += len(chunk)
        if not chunk:
            if carry:
                yield offset, carry, False
            return
        data = carry + chunk if carry else chunk
        parts = data.split(b"\n")
        carry = parts.pop()
        for part in parts:
            yield offset, part, True
            offset += len(part) + 1
        if len(carry) >= MAX_LINE_BYTES:
            yield offset, carry[: MAX_LINE_BYTES + 1], False
            return


#: How long a lock is waited for in silence before stderr says what is waited for.
LOCK_NOTICE_SECONDS = 1.0


def wait_for_lock(fd: int, kind: int, what: str, *, timeout: float | None = None) -> bool:
    """``flock(fd, kind)``; after a second of waiting, stderr says what it waits for.

    ``what`` names the lock and its path. With ``timeout`` (seconds), gives up then and
    returns False; without, waits as long as it takes (a lock is held only while its
    holder works, so a long wait means a stuck process, which the notice points at).
    """
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        pass
    limit = f" (up to {timeout:g} s)" if timeout is not None else ""

    def notice() -> None:
        sys.stderr.write(f"replaylog: waiting for {what}, held by another process{limit} ...\n")
        sys.stderr.flush()

    if timeout is None:
        # A blocking flock wakes as soon as the lock is free; the timer only speaks.
        timer = threading.Timer(LOCK_NOTICE_SECONDS, notice)
        timer.daemon = True
        timer.start()
        try:
            fcntl.flock(fd, kind)
        finally:
            timer.cancel()
        return True
    started = time.monotonic()
    told = False
    while True:
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        waited = time.monotonic() - started
        if not told and waited >= LOCK_NOTICE_SECONDS:
            told = True
            notice()
        if waited >= timeout:
            return False
        time.sleep(0.02)


def _flock(fd: int, kind: int, path: str) -> None:
    try:
        wait_for_lock(fd, kind, f"the lock on {path}")
    except OSError as exc:  # pragma: no cover - flock on a local file does not fail
        raise StoreError(f"{path}: cannot lock the log: {exc}", path=path) from exc


def scan_log(
    path: str,
    *,
    start: int = 0,
    start_line: int = 0,
    lock: bool = True,
    dedup: bool = True,
    on_problem: Callable[[StoreError], None] | None = None,
    on_duplicate: Callable[[int, int, str], None] | None = None,
    limit: int | None = None,
    position: list[int] | None = None,
) -> Iterator[LogLine]:
    """Yield every event line of the log at ``path``, strictly.

    A bad line raises :class:`StoreError` (``Line N: invalid JSON: ...`` or ``Line N:
    invalid event structure: ...``) unless ``on_problem`` is given, which then receives
    each problem and the scan goes on (``verify`` uses that). With ``dedup``, a second
    identical line of an ``event_id`` is skipped (``on_duplicate(line, first_line, id)``
    hears of it) and a different one is a problem. With ``lock``, the scan reads the log
    as it was when no append was in progress, holding the shared lock only for that
    moment; ``lock=False`` is for a caller that already holds the log's lock.
    ``position``, when given as ``[offset, line]``, is kept at the end of the last whole
    (newline-terminated) line read, blank ones included: where an incremental reader
    resumes. A missing file yields nothing.
    """
    # Imported here: the line kinds' records cost start-up time, and an append that finds
    # its log as the index left it reads nothing.
    from .lines import check_line

    try:
        fd = _open_log(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise os_error(exc, path, "read the log") from exc
    try:
        if lock:
            # The shared lock waits out an append in progress; every byte below the size
            # seen then is a complete write that later appends leave alone. Reading only
            # those, the lock can go at once: a slow consumer of this generator
            # (`replaylog log | less`) must not hold up every append to the log.
            _flock(fd, fcntl.LOCK_SH, path)
            size = os.fstat(fd).st_size
            fcntl.flock(fd, fcntl.LOCK_UN)
            limit = size if limit is None else min(limit, size)
        seen: dict[str, tuple[int, int, int]] = {}
        number = start_line
        for offset, raw, terminated in _raw_lines(fd, start, limit):
            number += 1
            if position is not None and terminated:
                position[0] = offset + len(raw) + 1
                position[1] = number
            if not raw.strip(_JSON_SPACE):
                continue
            problem: StoreError | None = None
            bad_json = True
            obj: Any = None
            if len(raw) > MAX_LINE_BYTES - 1:
                problem = StoreError(
                    f"Line {number}: invalid JSON: {_snippet(raw)} (the line is longer than"
                    f" the 1 MiB limit)",
                    path=path,
                    line=number,
                )
            else:
                try:
                    obj = parse_line(raw)
                    bad_json = False
                except (ValueError, RecursionError):
                    problem = StoreError(
                        f"Line {number}: invalid JSON: {_snippet(raw)}", path=path, line=number
                    )
            if problem is None and type(obj) is not dict:
                problem = StoreError(
                    f"Line {number}: invalid event structure: a line must hold a JSON object,"
                    f" not {type(obj).__name__ if obj is not None else 'null'}",
                    path=path,
                    line=number,
                )
            if problem is None:
                try:
                    check_line(obj)
                except EventValidationError as exc:
                    problem = StoreError(
                        f"Line {number}: invalid event structure: {exc}", path=path, line=number
                    )
            if problem is None and dedup:
                eid = obj["event_id"]
                first = seen.get(eid)
                if first is None:
                    seen[eid] = (number, offset, len(raw))
                else:
                    first_line, first_offset, first_size = first
                    if _same_json(_line_object_at(fd, first_offset, first_size), obj):
                        if on_duplicate is not None:
                            on_duplicate(number, first_line, eid)
                        continue
                    problem = StoreError(
                        f"Line {number}: invalid event structure: event_id {eid} already"
                        f" appears at line {first_line} with different content",
                        path=path,
                        line=number,
                    )
            if problem is not None:
                # A line over the limit was cut short: it is the torn tail only if no
                # newline follows it (a look back from the end, on this error path only).
                if (
                    not terminated
                    and bad_json
                    and (
                        len(raw) < MAX_LINE_BYTES
                        or _last_newline(fd, os.fstat(fd).st_size) < offset
                    )
                ):
                    problem = StoreError(
                        f"{problem} (the last line is torn: it has no newline; run"
                        f" `replaylog repair` to move it aside)",
                        path=path,
                        line=number,
                    )
                if on_problem is None:
                    raise problem
                on_problem(problem)
                if len(raw) > MAX_LINE_BYTES - 1:
                    return
                continue
            end = offset + len(raw) + (1 if terminated else 0)
            yield LogLine(number, offset, end, obj, terminated)
    finally:
        os.close(fd)


def _line_object_at(fd: int, offset: int, size: int | None = None) -> Any:
    """Parse the line at ``offset``, ``size`` bytes when known (to compare duplicate ids)."""
    if size is not None:
        return parse_line(os.pread(fd, size, offset))
    for _, raw, _terminated in _raw_lines(fd, offset, None):
        return parse_line(raw)
    return None


class Unclean(Exception):
    """The fast path met something unusual: :func:`scan_log` must judge the log."""


@contextmanager
def _gc_paused() -> Iterator[None]:
    # Reading makes many small objects, none of them cyclic: the cycle collector would
    # only walk them again and again (about half the time of a large read).
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def read_events_raw(feature_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every line of a feature's log as its JSON object, in file order (every kind)."""
    from .fastread import read_objects

    path = log_path(feature_dir)
    with _gc_paused():
        objs = read_objects(path)
        if objs is None:  # something unusual: the plain path judges it, and names it
            objs = [line.obj for line in scan_log(path)]
    return objs


def iter_events(feature_dir: str | os.PathLike[str]) -> Iterator[Line]:
    """Stream the lines of a feature's log in file order, each as its kind's record
    (:class:`Event`, :class:`~replaylog.lines.StatusEvent`, ...), in bounded memory."""
    from .fastread import build_records, mixed_chunks
    from .lines import build_line

    path = log_path(feature_dir)
    done = 0  # lines given out by the fast path
    try:
        for chunk in mixed_chunks(path):
            yield from build_records(chunk)
            done = chunk.first_line + len(chunk.objs) - 1
        return
    except Unclean:
        pass
    # The plain path reads from the start, so that it knows every id before this point
    # (duplicates), and gives out only what the fast path had not.
    for line in scan_log(path):
        if line.number > done:
            yield build_line(line.obj)


def read_events(feature_dir: str | os.PathLike[str]) -> list[Line]:
    """Every line of a feature's log in file order, each as its kind's record
    (an envelope as :class:`Event`, a transition as :class:`~replaylog.lines.StatusEvent`,
    an annotation as :class:`~replaylog.lines.Annotation`, a record as
    :class:`~replaylog.lines.Record`); ``[]`` when there is no log."""
    from .fastread import read_lines

    path = log_path(feature_dir)
    with _gc_paused():
        lines = read_lines(path)
        if lines is not None:
            return lines
        from .lines import build_line

        return [build_line(line.obj) for line in scan_log(path)]


def verify_log(path: str) -> list[Problem]:
    """Every problem of one log: errors for unreadable lines, warnings for identical duplicates."""
    from .reports import Problem

    problems: list[Problem] = []

    def problem(err: StoreError) -> None:
        problems.append(Problem(path, err.line, str(err)))

    def duplicate(number: int, first: int, eid: str) -> None:
        problems.append(
            Problem(
                path,
                number,
                f"Line {number}: duplicate of line {first} (event_id {eid}); read once",
                "warning",
            )
        )

    try:
        for _ in scan_log(path, on_problem=problem, on_duplicate=duplicate):
            pass
    except StoreError as err:
        problems.append(Problem(path, err.line, str(err)))
    return problems


# --------------------------------------------------------------------------- writing


def _makedirs(path: str, fsync: bool) -> None:
    """``mkdir -p`` that also fsyncs each parent whose entries it changed."""
    missing = []
    current = os.path.abspath(path)
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise
        if fsync:
            fsync_dir(os.path.dirname(directory))


def _tail_state(fd: int, size: int) -> tuple[int, bytes | None]:
    """Look at the end of the log: ``(start of last line, torn bytes or None)``."""
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size, None
    # Walk back to the last newline, at most one line's limit: a longer tail is torn garbage.
    pos = size
    while pos > 0 and size - pos <= MAX_LINE_BYTES:
        step = min(65536, pos)
        block = os.pread(fd, step, pos - step)
        newline = block.rfind(b"\n")
        if newline >= 0:
            start = pos - step + newline + 1
            return start, os.pread(fd, min(size - start, MAX_LINE_BYTES + 1), start)
        pos -= step
    if pos == 0:
        return 0, os.pread(fd, min(size, MAX_LINE_BYTES + 1), 0)
    return -1, b""  # longer than any line may be


def write_durably(fd: int, data: bytes, before: int, fsync: bool, path: str) -> None:
    """Append ``data`` to the locked log ``fd`` of size ``before`` and fsync it.

    On failure the log is cut back to ``before``, so nothing half-written is left.
    """
    try:
        written = os.write(fd, data)
        if written < len(data):  # a short write (a full disk, a signal): write the rest
            view = memoryview(data)[written:]
            while view:
                view = view[os.write(fd, view) :]
        if fsync:
            os.fsync(fd)
    except OSError as exc:
        try:
            os.ftruncate(fd, before)
        except OSError:
            pass
        raise os_error(exc, path, "append to the log") from exc


class LogWriter:
    """An open, exclusively locked log, ready to take whole lines.

    Used as a context manager; ``size`` is the log's size once locked, and
    ``torn_tail`` the parsed object of a valid but unterminated last line, which the next
    ``write`` completes with a newline first. An invalid torn tail makes ``__enter__``
    raise :class:`StoreError` that names ``replaylog repair``.
    """

    def __init__(self, feature_dir: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.feature_dir = os.fspath(feature_dir)
        self.path = log_path(self.feature_dir)
        self.fsync = fsync
        self.fd = -1
        self.size = 0
        self.created = False
        self.torn_tail: dict[str, Any] | None = None
        self._needs_newline = False

    def __enter__(self) -> LogWriter:
        self._open_locked()
        try:
            if self.created and self.fsync:
                fsync_dir(self.feature_dir)
            self.size = os.fstat(self.fd).st_size
            self._check_tail()
        except BaseException:
            self.close()
            raise
        return self

    def _open_locked(self) -> None:
        """Open the log (creating it if need be) and take its exclusive lock."""
        while True:
            self._open()
            try:
                _flock(self.fd, fcntl.LOCK_EX, self.path)
                st = os.fstat(self.fd)
                here = os.lstat(self.path)
            except FileNotFoundError:
                here = None
            except BaseException:
                self.close()
                raise
            if here is not None and (here.st_ino, here.st_dev) == (st.st_ino, st.st_dev):
                return
            # A first append that failed (a full disk) removed the file it had made
            # while this one waited for the lock: open the log at the path again.
            self.close()
            self.created = False

    def _open(self) -> None:
        flags = os.O_RDWR | os.O_APPEND  # read access to inspect the tail
        try:
            try:
                self.fd = _open_log(self.path, flags)
            except FileNotFoundError:
                _makedirs(self.feature_dir, self.fsync)
                try:
                    self.fd = _open_log(self.path, flags | os.O_CREAT | os.O_EXCL)
                    self.created = True
                except FileExistsError:
                    self.fd = _open_log(self.path, flags)
        except StoreError:
            raise
        except OSError as exc:
            # mkdir names the folder it could not make; the log is the file to name.
            exc.filename = None
            raise os_error(exc, self.path, "append to the log") from exc

    def _check_tail(self) -> None:
        start, torn = _tail_state(self.fd, self.size)
        if torn is None:
            return
        obj: Any = None
        valid = False
        if start >= 0 and len(torn) <= MAX_LINE_BYTES - 1:
            try:
                obj = parse_line(torn)
                valid = True  # JSON null is valid too: repair_log only adds its newline
            except (ValueError, RecursionError):
                valid = False
        if not valid:
            raise StoreError(
                f"{self.path}: the last line is torn (it has no newline and is not valid JSON);"
                f" appends are refused until `replaylog repair"
                f" {os.path.basename(self.feature_dir)}` moves it aside",
                path=self.path,
            )
        self._needs_newline = True
        self.torn_tail = obj if isinstance(obj, dict) else None

    def write(self, lines: Iterable[bytes]) -> int:
        """Append whole lines in one ``write`` (each already ``\\n``-terminated) and fsync.

        Returns the offset where the first line starts. On failure the log is cut back
        to its size before the call, so nothing half-written is left behind.
        """
        data = b"".join(lines)
        if self._needs_newline:
            data = b"\n" + data
        before = self.size
        try:
            write_durably(self.fd, data, before, self.fsync, self.path)
        except StoreError:
            if self.created and before == 0:
                # The log this append made holds nothing: remove it, so that a failed
                # first append leaves no empty log (and no new feature) behind.
                with suppress(OSError):
                    os.unlink(self.path)
            raise
        self.size = before + len(data)
        first = before + (1 if self._needs_newline else 0)
        self._needs_newline = False
        self.torn_tail = None
        return first

    def detach(self) -> int:
        """Hand the open descriptor to the caller, who must release its lock and close it."""
        fd, self.fd = self.fd, -1
        return fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = -1

    def __exit__(self, *exc: object) -> None:
        self.close()


def _max_clock(writer: LogWriter) -> int:
    """The largest Lamport value in the log (a full scan; the store keeps it in the index)."""
    best = 0
    for line in scan_log(writer.path, lock=False):
        best = max(best, lamport_of(line.obj, best))
    if writer.torn_tail is not None:
        best = max(best, lamport_of(writer.torn_tail, best))
    return best


def append_events(
    feature_dir: str | os.PathLike[str], events: Iterable[Line], *, fsync: bool = True
) -> list[Line]:
    """Append lines of any kind to a feature's log with one lock, one write and one fsync.

    An :class:`Event` whose ``lamport_clock`` is 0 is given a value above every value in
    the log; this reads the whole log, which :class:`~replaylog.EventStore` avoids with
    its index. Lines of other kinds (a :class:`~replaylog.lines.StatusEvent`, ...) and
    events whose ``lamport_clock`` is absent are written as they are: their Lamport value
    is derived from the log (SPEC section 10).
    """
    events = list(events)
    if not events:
        return []
    with LogWriter(feature_dir, fsync=fsync) as writer:
        if any(type(e) is Event and e.lamport_clock == 0 for e in events):
            clock = _max_clock(writer)
            stamped: list[Line] = []
            for event in events:
                if type(event) is Event and event.lamport_clock == 0:
                    clock += 1
                    event = event.with_clock(clock)
                else:
                    clock = lamport_of(event.to_dict(), clock)
                stamped.append(event)
            events = stamped
        writer.write([e.to_line() for e in events])
    return events


def append_event(feature_dir: str | os.PathLike[str], event: Line, *, fsync: bool = True) -> Line:
    """Append one line durably (an :class:`Event` or a line of another kind, such as a
    :class:`~replaylog.lines.StatusEvent`); returns it as written (an event with its
    Lamport value)."""
    return append_events(feature_dir, [event], fsync=fsync)[0]


# --------------------------------------------------------------------------- repair


def repair_log(feature_dir: str | os.PathLike[str], *, fsync: bool = True) -> str | None:
    """Fix a torn tail (SPEC section 3). Returns the path the torn bytes went to, or None.

    A valid but unterminated last line only gets its newline. An invalid one is moved
    to ``status.events.jsonl.torn-<UTC timestamp>`` beside the log and the log is cut
    back to its last complete line. A bad line in the middle is never touched.
    """
    path = log_path(feature_dir)
    try:
        fd = _open_log(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise os_error(exc, path, "repair the log") from exc
    try:
        _flock(fd, fcntl.LOCK_EX, path)
        size = os.fstat(fd).st_size
        start, torn = _tail_state(fd, size)
        if torn is None:
            return None
        valid = False
        if start >= 0 and len(torn) <= MAX_LINE_BYTES - 1:
            try:
                parse_line(torn)
                valid = True
            except (ValueError, RecursionError):
                valid = False
        if valid:
            try:
                os.pwrite(fd, b"\n", size)  # fd is not O_APPEND: a plain write would go to 0
                if fsync:
                    os.fsync(fd)
            except OSError as exc:
                with suppress(OSError):
                    os.ftruncate(fd, size)
                raise os_error(exc, path, "repair the log") from exc
            return None
        if start < 0:  # a torn tail longer than a line may be: find its start the slow way
            start = _last_newline(fd, size) + 1
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = f"{path}.torn-{stamp}"
        n = 1
        while os.path.lexists(target):
            n += 1
            target = f"{path}.torn-{stamp}-{n}"
        doing = f"move the torn last line of {path} aside to"
        try:
            # All of the torn bytes are kept aside, or none: the log stays as it was.
            _copy_aside(fd, start, size, target)
        except OSError as exc:
            raise os_error(exc, target, doing) from exc
        try:
            os.ftruncate(fd, start)
        except OSError as exc:
            with suppress(OSError):
                os.unlink(target)
            raise os_error(exc, path, "repair the log") from exc
        if fsync:
            try:
                os.fsync(fd)
                fsync_dir(os.fspath(feature_dir))
            except OSError as exc:  # the cut is made; only its durability is in doubt
                raise os_error(exc, path, "repair the log") from exc
        return target
    finally:
        os.close(fd)


def _copy_aside(fd: int, start: int, size: int, target: str) -> None:
    """Copy bytes ``start``..``size`` of ``fd`` into a new file ``target``, all of them
    (a full disk cuts a write short before it fails), and fsync it; on failure the new
    file is removed."""
    out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        pos = start
        while pos < size:
            block = memoryview(os.pread(fd, min(_CHUNK, size - pos), pos))
            if not block:
                raise OSError(errno.EIO, "the log ended before its torn line did", target)
            pos += len(block)
            while block:
                block = block[os.write(out, block) :]
        os.fsync(out)
    except BaseException:
        os.close(out)
        with suppress(OSError):
            os.unlink(target)
        raise
    os.close(out)


def _last_newline(fd: int, size: int) -> int:
    pos = size
    while pos > 0:
        step = min(_CHUNK, pos)
        block = os.pread(fd, step, pos - step)
        newline = block.rfind(b"\n")
        if newline >= 0:
            return pos - step + newline
        pos -= step
    return -1
