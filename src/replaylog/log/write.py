"""Appending to a log durably (SPEC sections 1 and 3): the exclusive lock, whole lines
in one ``write`` on an ``O_APPEND`` descriptor, fsync, and nothing half-written left."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterable
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from ..clock import lamport_of
from ..errors import StoreError, UsageError, os_error
from ..lines.canonical import MAX_LINE_BYTES
from ..posix import flock, fsync_dir, open_regular
from .paths import log_path
from .read import parse_line, scan_log

if TYPE_CHECKING:
    from ..lines import Line

__all__ = ["LogWriter", "append_event", "append_events", "tail_state", "write_durably"]


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


def tail_state(fd: int, size: int) -> tuple[int, bytes | None]:
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
                flock(self.fd, fcntl.LOCK_EX, self.path)
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
                self.fd = open_regular(self.path, flags)
            except FileNotFoundError:
                _makedirs(self.feature_dir, self.fsync)
                try:
                    self.fd = open_regular(self.path, flags | os.O_CREAT | os.O_EXCL)
                    self.created = True
                except FileExistsError:
                    self.fd = open_regular(self.path, flags)
        except StoreError:
            raise
        except OSError as exc:
            # mkdir names the folder it could not make; the log is the file to name.
            exc.filename = None
            raise os_error(exc, self.path, "append to the log") from exc

    def _check_tail(self) -> None:
        start, torn = tail_state(self.fd, self.size)
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
        if self.created and self.fd >= 0 and os.fstat(self.fd).st_size == 0:
            # A first append that wrote nothing (refused, or failed before its write):
            # the log it made, empty, is removed, so that it leaves no new feature.
            with suppress(OSError):
                os.unlink(self.path)
        self.close()


def _log_state(writer: LogWriter) -> tuple[int, set[str]]:
    """The largest Lamport value in the log and its event ids (a full scan; the store
    keeps both in its index). A torn but valid last line counts: the write completes it."""
    best = 0
    ids: set[str] = set()
    for line in scan_log(writer.path, lock=False):
        best = max(best, lamport_of(line.obj, best))
        ids.add(line.obj["event_id"])
    tail = writer.torn_tail
    if tail is not None:
        best = max(best, lamport_of(tail, best))
        if type(tail.get("event_id")) is str:
            ids.add(tail["event_id"])
    return best, ids


def append_events(
    feature_dir: str | os.PathLike[str], events: Iterable[Line], *, fsync: bool = True
) -> list[Line]:
    """Append lines of any kind to a feature's log with one lock, one write and one fsync.

    The whole log is read first, under its lock (which :class:`~replaylog.EventStore`
    avoids with its index): an event whose id the log holds already, or one given twice,
    is refused (:class:`UsageError`) and nothing is written. An :class:`Event` whose
    ``lamport_clock`` is 0 is given a value above every value in the log. Lines of other
    kinds (a :class:`~replaylog.lines.StatusEvent`, ...) and events whose
    ``lamport_clock`` is absent are written as they are: their Lamport value is derived
    from the log (SPEC section 10).
    """
    from ..lines._base import LineRecord
    from ..lines.event import Event  # (here: a command that appends builds no Event)

    events = list(events)
    if not events:
        return []
    for event in events:
        if not isinstance(event, (Event, LineRecord)):
            raise UsageError(
                "append_event takes an Event or a line record (StatusEvent, Annotation,"
                f" Record), not {type(event).__name__}; build one with Event.new(...) or"
                " from_dict(...)"
            )
    ids = [e.event_id for e in events]
    given: set[str] = set()
    for event_id in ids:
        if event_id in given:
            raise UsageError(f"event {event_id} is given twice; each needs its own event_id")
        given.add(event_id)
    with LogWriter(feature_dir, fsync=fsync) as writer:
        # Under the log's lock: an id the log holds already would make a second line of
        # one event, which no reader could read past (SPEC section 3).
        clock, known = _log_state(writer)
        held = next((i for i in ids if i in known), None)
        if held is not None:
            raise UsageError(
                f"event {held} is already in the log {writer.path}; a new event needs a new"
                " event_id"
            )
        if any(type(e) is Event and e.lamport_clock == 0 for e in events):
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
