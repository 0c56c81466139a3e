"""The replay index, ``queue.db`` (SPEC section 4): open, migrate, catch up, clock, rebuild.

The index is a cache of the logs. Before it reports or uses anything, it catches up
with what the logs gained since it last looked, reading only the new bytes; a log whose
indexed prefix changed (checkout, rebase) is indexed again from the start, keeping the
delivery state of the events that are still there.

Ingesting lines is the hot path of ``replaylog append`` and of ``rebuild-index``, so it
runs on the standard ``sqlite3`` module: importing SQLAlchemy alone takes several times
longer than a whole append. Everything else (status, pending, delivery updates) is in
:mod:`replaylog.delivery`, on SQLAlchemy Core. Lock order is always: a log's ``flock``
first, then the SQLite write lock, then the clock file's lock
(:class:`~replaylog.clock.ClockFile`), never two logs at once, so processes cannot
deadlock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import sqlite3
import stat
import time
import urllib.parse
import zlib
from collections.abc import Iterable, Iterator, Sequence
from itertools import repeat
from typing import Any, NamedTuple

from .clock import ClockFile, derive_clocks
from .errors import (
    REBUILD_HINT,
    BadIndexError,
    DiskError,
    ReplaylogError,
    StoreError,
    database_error,
    os_error,
    translate,
)
from .log import scan_log
from .log.read import Unclean
from .log.read import line_object_at as _line_object_at
from .posix import open_regular as _open_log
from .posix import wait_for_lock

__all__ = [
    "HEAD_REVISION",
    "REVISIONS",
    "DeliveryState",
    "Index",
    "LogProgress",
    "delivery_states",
    "log_progress",
    "remember_states",
]

#: Every Alembic revision of ``migrations/versions``, oldest first; a test checks the list.
REVISIONS = ("0001", "0002")
HEAD_REVISION = REVISIONS[-1]

#: The tables of ``schema.metadata`` (not imported here, to keep SQLAlchemy off the
#: append path); a test checks that both agree.
_TABLES = frozenset({"events", "logs", "meta", "remembered"})

_HEAD_BYTES = 64 * 1024
_CRC_BLOCK = 4 << 20
_BATCH = 20_000
_REBUILD_HINT = REBUILD_HINT
_NOT_OURS_HINT = (
    "replaylog changes no file it did not make: give --index (or REPLAYLOG_INDEX) a path"
    " of its own, or move this file away"
)


_LOCK_FLAGS = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW


def _replay_lock_of(index_path: str) -> str:
    """The lock a replay holds for its whole run, beside the index it records in."""
    return os.path.join(os.path.dirname(os.path.abspath(index_path)), "replay.lock")


def is_index_place(path: str) -> bool:
    """True for ``.../.replaylog/queue.db``: replaylog's own place, so a file there is its
    index, whatever it holds, and may be rebuilt."""
    path = os.path.abspath(path)
    return os.path.basename(path) == "queue.db" and (
        os.path.basename(os.path.dirname(path)) == ".replaylog"
    )


def _hint(path: str) -> str:
    """What to do about an index file that cannot be used: rebuild it, if it is ours."""
    return _REBUILD_HINT if foreign_file(path) is None else _NOT_OURS_HINT


def _open_error(exc: BaseException, path: str) -> ReplaylogError:
    """The error for an index file SQLite cannot open or read: the disk's, or one that
    says to rebuild it when it is replaylog's, and to leave it alone when it is not."""
    error = database_error(exc, path, "open the index")
    if type(error) is BadIndexError and "locked" not in str(exc):
        foreign = foreign_file(path)
        if foreign is not None:
            return BadIndexError(f"{path} is not a replaylog index ({foreign}); {_NOT_OURS_HINT}")
    return error


def _tables(path: str) -> set[str] | None:
    """The tables of the SQLite database at ``path``, read without changing anything, or
    None when SQLite cannot read them."""
    uri = f"file:{urllib.parse.quote(path)}"
    # Read-only first; then as an immutable file, which needs no shared-memory file
    # (none can be made on a full or read-only disk).
    for mode in ("?mode=ro", "?mode=ro&immutable=1"):
        try:
            conn = sqlite3.connect(uri + mode, uri=True)
            try:
                return {
                    r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
                }
            finally:
                conn.close()
        except sqlite3.Error:
            continue
    return None


def foreign_file(path: str) -> str | None:
    """Why the file at ``path`` is not one replaylog made, or None if it may be.

    replaylog made (and so may rebuild) a file that is absent or empty; anything at its
    own place, ``.replaylog/queue.db``; a SQLite database with a replaylog schema (an
    ``alembic_version`` and the ``events``, ``logs`` and ``meta`` tables); and a file
    named ``queue.db`` (its index's name) that no database can be read from, a damaged
    index. Anything else (the user's notes, another application's database, whatever
    its name) is not its to replace.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"it cannot be looked at: {exc.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return "it is not a regular file"
    if st.st_size == 0 or is_index_place(path):
        return None
    named_like_ours = os.path.basename(path) == "queue.db"
    try:
        with open(path, "rb") as f:
            header = f.read(16)
    except OSError as exc:
        return f"it cannot be read: {exc.strerror}"
    if header != b"SQLite format 3\x00":
        return None if named_like_ours else "it is not a SQLite database"
    tables = _tables(path)
    if tables is None:
        return None if named_like_ours else "a SQLite database that cannot be read"
    if "alembic_version" in tables and {"events", "logs", "meta"} <= tables:
        return None
    shown = ", ".join(sorted(tables)) or "none"
    return f"a SQLite database of another application (tables: {shown})"


_INSERT = (
    'INSERT INTO events (feature, line, "offset", length, event_id, event_type,'
    " aggregate_id, node_id, lamport) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class LogProgress(NamedTuple):
    """A row of ``logs``: how much of a feature's log the index has taken in."""

    size: int  # bytes indexed: the end of the last whole line
    lines: int  # physical lines in those bytes
    head_hash: str  # SHA-256 of the first 64 KiB indexed
    tail_offset: int  # where the last indexed line starts
    tail_hash: str  # SHA-256 of that last line
    max_lamport: int
    file_id: str  # "inode:mtime_ns:size" when last seen
    prefix_crc: int | None  # CRC-32 of every byte indexed; None before revision 0002


_LOG_PROGRESS = (
    "SELECT size, lines, head_hash, tail_offset, tail_hash, max_lamport, file_id, prefix_crc"
    " FROM logs WHERE feature = ?"
)


def log_progress(conn: sqlite3.Connection, feature: str) -> LogProgress | None:
    """The ``logs`` row of ``feature``, or None if its log was never indexed."""
    row = conn.execute(_LOG_PROGRESS, (feature,)).fetchone()
    return LogProgress._make(row) if row is not None else None


class DeliveryState(NamedTuple):
    """An event's delivery state (SPEC section 5), as ``events`` and ``remembered`` hold it."""

    feature: str
    event_id: str
    status: str
    retry_count: int
    last_retry_at: str | None
    last_error: str | None


_STATE_COLUMNS = "feature, event_id, status, retry_count, last_retry_at, last_error"
#: The state worth keeping: a pending event never tried is what indexing it again gives.
_STATE_KEPT = "(status != 'pending' OR retry_count > 0)"
_REMEMBER = (
    f"INSERT INTO remembered ({_STATE_COLUMNS}) {{rows}} ON CONFLICT(feature, event_id)"
    " DO UPDATE SET status = excluded.status, retry_count = excluded.retry_count,"
    " last_retry_at = excluded.last_retry_at, last_error = excluded.last_error"
)


def delivery_states(conn: sqlite3.Connection) -> list[DeliveryState]:
    """Every delivery state worth keeping: those ``remembered`` of events absent for now,
    then those of indexed events (which, listed last, win for an event in both)."""
    rows = conn.execute(
        f"SELECT {_STATE_COLUMNS} FROM remembered UNION ALL"
        f" SELECT {_STATE_COLUMNS} FROM events WHERE {_STATE_KEPT}"
    )
    return [DeliveryState._make(row) for row in rows]


def remember_states(conn: sqlite3.Connection, states: Iterable[DeliveryState]) -> None:
    """Keep ``states`` in ``remembered``; a later state of an event replaces an earlier."""
    conn.executemany(_REMEMBER.format(rows="VALUES (?, ?, ?, ?, ?, ?)"), states)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _crc(fd: int, start: int, end: int, crc: int) -> int:
    """``crc`` (the CRC-32 of the bytes before ``start``) extended over ``[start, end)``."""
    while start < end:
        block = os.pread(fd, min(end - start, _CRC_BLOCK), start)
        if not block:
            break
        crc = zlib.crc32(block, crc)
        start += len(block)
    return crc


def _crc_from(prior: Sequence[Any] | None, start: int) -> tuple[int, int]:
    """Where the CRC of an ingest starts: after the indexed prefix, when it is known."""
    if prior is not None and start > 0 and len(prior) > 7 and prior[7] is not None:
        return start, int(prior[7])
    return 0, 0


def _file_id(st: os.stat_result) -> str:
    return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"


class Index:
    """An open ``queue.db``. Not shared between threads; one per process is plenty."""

    def __init__(self, path: str, *, clock_of: str | None = None) -> None:
        """``clock_of``: the index whose clock file this one shares (a rebuild's new
        index, built under a temporary name, raises the clock of the index it replaces)."""
        self.path = path
        self.clock_path = (clock_of or path) + "-clock"
        self.pid = os.getpid()
        self.conn = self._connect(path)
        self._in_write = False
        self._clock_file: ClockFile | None = None

    # ------------------------------------------------------------------ opening

    @staticmethod
    def _prepare_dir(path: str) -> None:
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        if os.path.basename(directory) == ".replaylog":
            ignore = os.path.join(directory, ".gitignore")
            if not os.path.exists(ignore):
                try:
                    with open(ignore, "w", encoding="ascii") as f:
                        f.write("*\n")
                except OSError:
                    # An empty .gitignore (a full disk) would be taken as done for good.
                    with contextlib.suppress(OSError):
                        os.unlink(ignore)
                    raise

    def _connect(self, path: str) -> sqlite3.Connection:
        created = False
        try:
            self._prepare_dir(path)
            # Create the file ourselves so that it is 0600 from its first byte; SQLite
            # gives its -wal and -shm files the same mode.
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                created = True
            except FileExistsError:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            os.close(fd)
        except OSError as exc:
            raise os_error(exc, path, "open the index") from exc
        try:
            conn = sqlite3.connect(path, isolation_level=None, timeout=60.0)
        except sqlite3.Error as exc:
            raise _open_error(exc, path) from exc
        try:
            conn.execute("PRAGMA busy_timeout = 60000")
            # Refuse a foreign or newer database before anything changes it: switching
            # to WAL rewrites the file's header, and such a file must be left as it was.
            self._check_schema(conn, path, migrate=False)
            _switch_to_wal(conn)
            # The index can always be rebuilt from the logs, so a commit need not wait
            # for the disk; WAL keeps it consistent after a crash all the same.
            conn.execute("PRAGMA synchronous = NORMAL")
            self._check_schema(conn, path)
        except sqlite3.DatabaseError as exc:
            conn.close()
            if created:
                self._forget_empty(path)
            raise _open_error(exc, path) from exc
        except BaseException:
            conn.close()
            raise
        if created:
            # The replay lock is made with the index, not by the first rebuild or replay
            # that needs it: a rebuild that fails then leaves no new file behind.
            with contextlib.suppress(OSError):
                os.close(os.open(_replay_lock_of(path), _LOCK_FLAGS, 0o600))
        return conn

    @staticmethod
    def _forget_empty(path: str) -> None:
        """Remove the index file this process created when it is still empty (a full or
        read-only disk refused its first page): leave the folder as it was."""
        with contextlib.suppress(OSError):
            if os.path.getsize(path) == 0:
                os.unlink(path)

    @staticmethod
    def _revision(conn: sqlite3.Connection) -> tuple[str | None, set[str]]:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "alembic_version" not in tables:
            return None, tables
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        return (row[0] if row else None), tables

    def _check_schema(self, conn: sqlite3.Connection, path: str, *, migrate: bool = True) -> None:
        revision, tables = self._revision(conn)
        if revision == HEAD_REVISION and _TABLES <= tables:
            return
        if revision == HEAD_REVISION:
            # Another application's Alembic database whose revision id matches ours.
            raise BadIndexError(
                f"{path} is not a replaylog index (tables {', '.join(sorted(tables))});"
                f" {_hint(path)}"
            )
        if revision is None and tables - {"alembic_version"}:
            raise BadIndexError(
                f"{path} holds tables that are not a replaylog index"
                f" ({', '.join(sorted(tables))}); {_hint(path)}"
            )
        if revision is not None and revision not in REVISIONS:
            raise BadIndexError(
                f"{path} was written by a newer replaylog (schema revision {revision});"
                f" upgrade replaylog, or {_REBUILD_HINT}"
            )
        if not migrate:
            return
        if revision is None:
            create_schema(conn)
        else:
            run_migrations(conn, path)
        if self._revision(conn)[0] != HEAD_REVISION:  # pragma: no cover - a broken migration
            raise BadIndexError(f"{path}: migration did not reach {HEAD_REVISION}")

    def close(self) -> None:
        self.conn.close()
        if self._clock_file is not None:
            self._clock_file.close()
            self._clock_file = None

    # ------------------------------------------------------------------ transactions

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``): all of it or nothing."""
        if self._in_write:
            yield self.conn
            return
        self.conn.execute("BEGIN IMMEDIATE")
        self._in_write = True
        try:
            yield self.conn
        except BaseException:
            self._in_write = False
            # SQLite may have rolled back already (a full disk does that): then a second
            # ROLLBACK would fail and hide the error that matters.
            if self.conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
            raise
        self._in_write = False
        self.conn.execute("COMMIT")

    # ------------------------------------------------------------------ clock

    @property
    def clock_file(self) -> ClockFile:
        """The clock file, opened on first use (and again in a forked child, whose
        inherited descriptor would share its parent's lock)."""
        clock_file = self._clock_file
        if clock_file is None or clock_file.pid != os.getpid():
            if clock_file is not None:
                clock_file.close()
            clock_file = self._clock_file = ClockFile(self.clock_path)
        return clock_file

    def opened_clock(self) -> ClockFile | None:
        """The clock file if this process has it open, else None (it is not opened here).

        An append to a log that nothing changed since this process's last append takes
        its values from it directly: the log holds no value above the file's.
        """
        clock_file = self._clock_file
        return clock_file if clock_file is not None and clock_file.pid == os.getpid() else None

    def _recorded_clock(self) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'lamport'").fetchone()
        return int(row[0]) if row else 0

    def clock(self) -> int:
        """The highest Lamport value issued or seen: the next append's is above it."""
        return max(self._recorded_clock(), self.clock_file.value())

    def _see(self, value: int) -> None:
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES ('lamport', ?) ON CONFLICT(key)"
            " DO UPDATE SET value = max(value, excluded.value)",
            (value,),
        )
        self.clock_file.raise_to(value)

    def reserve_clock(self, count: int) -> int:
        """Issue ``count`` clock values; returns the first. Call inside :meth:`write`."""
        first = self.clock_file.reserve(count, floor=self._recorded_clock())
        assert first is not None  # with a floor, an unreadable file is started again
        self._see(first + count - 1)
        return first

    # ------------------------------------------------------------------ catch-up

    def known_features(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT feature FROM logs ORDER BY feature")]

    def catch_up(self, feature: str, path: str, *, locked: bool = False) -> None:
        """Index what the log at ``path`` gained since last time (or all of it, if rewritten).

        ``locked``: the caller holds the log's exclusive lock. Otherwise a quick look
        (one ``stat``) settles the common case where nothing changed.
        """
        if not locked:
            row = self.conn.execute(
                "SELECT file_id FROM logs WHERE feature = ?", (feature,)
            ).fetchone()
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                if row is None:
                    return
                st = None
            if row is not None and st is not None and row[0] == _file_id(st):
                return
            # The log's lock first, then the SQLite write lock (the order of the module
            # docstring): the other way round deadlocks with an append, which holds the
            # log and waits for SQLite.
            with _shared_lock(path):
                with self.write():
                    self._catch_up_locked(feature, path, lock_log=False)
            return
        with self.write():
            self._catch_up_locked(feature, path, lock_log=False)

    def _catch_up_locked(self, feature: str, path: str, *, lock_log: bool) -> None:
        conn = self.conn
        row = log_progress(conn, feature)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            # The log is gone (a checkout to a branch without it, another --logs-dir): so
            # are its events, but not their delivery state, which comes back with them.
            self._remember(feature)
            conn.execute("DELETE FROM events WHERE feature = ?", (feature,))
            conn.execute("DELETE FROM logs WHERE feature = ?", (feature,))
            return
        if stat.S_ISLNK(st.st_mode):
            raise StoreError(
                f"{path} is a symbolic link; replaylog refuses to follow it."
                " Replace it with the real file.",
                path=path,
            )
        if row is not None and row.file_id == _file_id(st):
            return
        start, start_line = 0, 0
        if row is not None:
            if self._prefix_unchanged(path, row, st.st_size):
                start, start_line = row.size, row.lines
            else:
                self._remember(feature)
                conn.execute("DELETE FROM events WHERE feature = ?", (feature,))
        self.ingest(feature, path, start=start, start_line=start_line, lock_log=lock_log, prior=row)
        self._restore(feature)

    def _remember(self, feature: str) -> None:
        """Keep the delivery state of a feature's events that are about to be dropped
        from ``events``, until they are indexed again (SPEC section 12)."""
        rows = f"SELECT {_STATE_COLUMNS} FROM events WHERE feature = ? AND {_STATE_KEPT}"
        self.conn.execute(_REMEMBER.format(rows=rows), (feature,))

    def _restore(self, feature: str | None = None) -> None:
        """Give indexed events back the state remembered for them (one feature, or all)."""
        where, args = ("r.feature = ?", (feature,)) if feature is not None else ("1", ())
        if self.conn.execute(
            f"SELECT 1 FROM remembered AS r WHERE {where} LIMIT 1", args
        ).fetchone():
            self.conn.execute(
                "UPDATE events SET status = r.status, retry_count = r.retry_count,"
                " last_retry_at = r.last_retry_at, last_error = r.last_error"
                f" FROM remembered AS r WHERE {where} AND r.feature = events.feature"
                " AND r.event_id = events.event_id",
                args,
            )
            self.conn.execute(
                f"DELETE FROM remembered AS r WHERE {where} AND EXISTS (SELECT 1 FROM events"
                " AS e WHERE e.feature = r.feature AND e.event_id = r.event_id)",
                args,
            )

    @staticmethod
    def _prefix_unchanged(path: str, row: LogProgress, size_now: int) -> bool:
        """True if the log still begins with exactly the bytes indexed so far.

        The first 64 KiB and the last indexed line are compared by SHA-256. A log that
        grew is taken to have gained lines, and only its new bytes are read (SPEC
        section 4). A log that did not grow, yet is not the file this index last saw
        (an edit in place, a checkout of a version of the same size), has every indexed
        byte compared by its CRC-32, which the index keeps as it takes bytes in: a
        change anywhere in it is noticed (SPEC section 12).
        """
        size, tail_offset = row.size, row.tail_offset
        if size_now < size:
            return False
        try:
            fd = _open_log(path, os.O_RDONLY)
        except OSError:
            return False
        try:
            head = os.pread(fd, min(size, _HEAD_BYTES), 0)
            tail = os.pread(fd, size - tail_offset, tail_offset) if size else b""
            if _sha(head) != row.head_hash or _sha(tail) != row.tail_hash:
                return False
            if size_now > size:
                return True
            # No CRC: a log indexed before it was kept; indexing it again is always right.
            crc = row.prefix_crc
            return crc is not None and _crc(fd, 0, size, 0) == crc
        finally:
            os.close(fd)

    def ingest(
        self,
        feature: str,
        path: str,
        *,
        start: int = 0,
        start_line: int = 0,
        lock_log: bool = True,
        prior: Sequence[Any] | None = None,
        fresh: bool = False,
    ) -> int:
        """Index the lines of ``path`` from byte ``start``; returns how many were added.

        Call inside :meth:`write`. ``fresh``: the index holds nothing of this feature
        yet (a rebuild), so duplicates need no look-up in the table.
        """
        check_existing = start > 0 and not fresh
        # A clean log (the usual case) is read in large validated chunks; on anything
        # unusual, what the fast path inserted is undone and scan_log reads the log.
        self.conn.execute("SAVEPOINT clean_ingest")
        try:
            added = self._ingest_clean(
                feature, path, start, start_line, lock_log, prior, check_existing
            )
        except Unclean:
            self.conn.execute("ROLLBACK TO clean_ingest")
            self.conn.execute("RELEASE clean_ingest")
        except BaseException:
            if self.conn.in_transaction:  # not when SQLite rolled back by itself (disk full)
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK TO clean_ingest")
                    self.conn.execute("RELEASE clean_ingest")
            raise
        else:
            self.conn.execute("RELEASE clean_ingest")
            return added
        from .lines import index_fields  # the slow path only: see scan_log

        position = [start, start_line]
        max_lamport = prior[5] if prior is not None and start > 0 else 0
        check_existing = start > 0 and not fresh
        added = 0
        batch: list[tuple[Any, ...]] = []
        last_line_start = prior[3] if prior is not None and start > 0 else 0
        for line in scan_log(
            path, start=start, start_line=start_line, lock=lock_log, position=position
        ):
            obj = line.obj
            if line.terminated:
                last_line_start = line.offset
            event_type, aggregate_id, node_id, clock = index_fields(obj)
            batch.append(
                (
                    feature,
                    line.number,
                    line.offset,
                    line.end - line.offset - (1 if line.terminated else 0),
                    obj["event_id"],
                    event_type,
                    aggregate_id,
                    node_id,
                    clock,
                )
            )
            if len(batch) >= _BATCH:
                batch, max_lamport = self._with_clocks(
                    feature, path, batch, check_existing, max_lamport
                )
                added += self._insert(feature, path, batch, False)
                batch = []
        if batch:
            batch, max_lamport = self._with_clocks(
                feature, path, batch, check_existing, max_lamport
            )
            added += self._insert(feature, path, batch, False)
        self._see(max_lamport)
        self._record_progress(
            feature,
            path,
            position[0],
            position[1],
            last_line_start,
            max_lamport,
            crc_from=_crc_from(prior, start),
        )
        return added

    def _ingest_clean(
        self,
        feature: str,
        path: str,
        start: int,
        start_line: int,
        lock_log: bool,
        prior: Sequence[Any] | None,
        check_existing: bool,
    ) -> int:
        # The fast path of every line kind (spec-kitty's logs as well as the store's own).
        from .log.fastread import index_columns, mixed_chunks

        max_lamport = prior[5] if prior is not None and start > 0 else 0
        last_line_start = prior[3] if prior is not None and start > 0 else 0
        end, lines, added = start, start_line, 0
        for chunk in mixed_chunks(path, start=start, start_line=start_line, lock=lock_log):
            types, aggs, nodes, clocks = index_columns(chunk)
            count = len(chunk.event_ids)
            values: Sequence[int | None] = clocks
            derive = None in clocks
            if derive and not check_existing and clocks.count(None) == count:
                # No line carries a clock (spec-kitty's): each one's value is 1 + the last.
                values = range(max_lamport + 1, max_lamport + 1 + count)
                derive = False
            rows = list(
                zip(
                    repeat(feature),
                    range(chunk.first_line, chunk.first_line + count),
                    chunk.offsets,
                    chunk.lengths,
                    chunk.event_ids,
                    types,
                    aggs,
                    nodes,
                    values,
                )
            )
            if derive:  # some lines carry a clock and some not: line by line
                rows, max_lamport = self._with_clocks(
                    feature, path, rows, check_existing, max_lamport
                )
                added += self._insert(feature, path, rows, False)
            else:
                added += self._insert(feature, path, rows, check_existing)
                max_lamport = max(max_lamport, max(values))  # type: ignore[type-var]
            last_line_start = chunk.offsets[-1]
            end, lines = chunk.end, chunk.first_line + count - 1
        self._see(max_lamport)
        self._record_progress(
            feature,
            path,
            end,
            lines,
            last_line_start,
            max_lamport,
            crc_from=_crc_from(prior, start),
        )
        return added

    def _with_clocks(
        self,
        feature: str,
        path: str,
        rows: list[tuple[Any, ...]],
        check_existing: bool,
        before: int,
    ) -> tuple[list[tuple[Any, ...]], int]:
        """Rows with their Lamport values (SPEC section 10: a line that carries none gets
        1 + the largest value before it), once lines already indexed are left out, so
        that an index kept incrementally equals a rebuilt one. Returns the rows and the
        largest value so far."""
        if check_existing:
            rows = self._drop_known(feature, path, rows)
        return derive_clocks(rows, before)

    def _insert(
        self, feature: str, path: str, rows: list[tuple[Any, ...]], check_existing: bool
    ) -> int:
        if check_existing:
            rows = self._drop_known(feature, path, rows)
        self.conn.executemany(_INSERT, rows)
        return len(rows)

    def _drop_known(
        self, feature: str, path: str, rows: list[tuple[Any, ...]]
    ) -> list[tuple[Any, ...]]:
        """Leave out lines whose event is indexed already (an identical duplicate line).

        The same id with different content is a broken log: raise naming both lines.
        """
        known: dict[str, tuple[int, int]] = {}
        ids = [r[4] for r in rows]
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for eid, line, offset in self.conn.execute(
                f'SELECT event_id, line, "offset" FROM events WHERE feature = ?'
                f" AND event_id IN ({marks})",
                [feature, *chunk],
            ):
                known[eid] = (line, offset)
        if not known:
            return rows
        keep = []
        fd = _open_log(path, os.O_RDONLY)
        try:
            for r in rows:
                first = known.get(r[4])
                if first is None or first[0] == r[1]:
                    if first is None:
                        keep.append(r)
                    continue
                if _line_object_at(fd, first[1]) != _line_object_at(fd, r[2]):
                    raise StoreError(
                        f"Line {r[1]}: invalid event structure: event_id {r[4]} already"
                        f" appears at line {first[0]} with different content",
                        path=path,
                        line=r[1],
                    )
        finally:
            os.close(fd)
        return keep

    def _record_progress(
        self,
        feature: str,
        path: str,
        size: int,
        lines: int,
        tail_offset: int,
        max_lamport: int,
        *,
        fd: int | None = None,
        head_hash: str | None = None,
        tail: bytes | None = None,
        crc_from: tuple[int, int] = (0, 0),
    ) -> None:
        """Store how far the log is indexed. ``fd``: the log, open (not closed here);
        ``head_hash`` and ``tail``: already known, so not read again; ``crc_from``:
        ``(offset, CRC-32 of the bytes before it)``, so only the bytes after are read."""
        own = fd is None
        if own:
            try:
                fd = _open_log(path, os.O_RDONLY)
            except FileNotFoundError:
                return
        assert fd is not None
        try:
            st = os.fstat(fd)
            if head_hash is None:
                head_hash = _sha(os.pread(fd, min(size, _HEAD_BYTES), 0))
            if tail is None:
                tail_offset = min(tail_offset, size)
                tail = os.pread(fd, size - tail_offset, tail_offset) if size else b""
            crc = _crc(fd, crc_from[0], size, crc_from[1])
        finally:
            if own:
                os.close(fd)
        # A file that holds more than what was indexed (a torn tail) must be looked at
        # again next time, so its file id is not recorded as seen.
        file_id = _file_id(st) if st.st_size == size else "-"
        self.conn.execute(
            "INSERT INTO logs (feature, size, lines, head_hash, tail_offset, tail_hash,"
            " max_lamport, file_id, prefix_crc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(feature) DO UPDATE SET size = excluded.size, lines = excluded.lines,"
            " head_hash = excluded.head_hash, tail_offset = excluded.tail_offset,"
            " tail_hash = excluded.tail_hash, max_lamport = excluded.max_lamport,"
            " file_id = excluded.file_id, prefix_crc = excluded.prefix_crc",
            (feature, size, lines, head_hash, tail_offset, _sha(tail), max_lamport, file_id, crc),
        )

    def forget_progress(self, feature: str) -> None:
        """Make the next catch-up index a feature's log again from its start (its lines
        were found changed where a catch-up did not look), keeping delivery state.

        On a connection of its own: this one may be inside a reading transaction that
        the error being raised will end without a commit.
        """
        try:
            conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            try:
                conn.execute(
                    "UPDATE logs SET head_hash = '', file_id = '-' WHERE feature = ?", (feature,)
                )
            finally:
                conn.close()
        except sqlite3.Error:
            pass  # the caller reports the change; this only spares the next run the same

    def known_event_ids(self, feature: str, event_ids: Sequence[str]) -> list[str]:
        """Those of ``event_ids`` that the feature's log holds already (as indexed)."""
        known: list[str] = []
        for i in range(0, len(event_ids), 500):
            chunk = event_ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            known.extend(
                r[0]
                for r in self.conn.execute(
                    f"SELECT event_id FROM events WHERE feature = ? AND event_id IN ({marks})",
                    [feature, *chunk],
                )
            )
        return known

    def progress(self, feature: str) -> tuple[int, int, int] | None:
        """``(size, lines, max_lamport)`` indexed of a feature's log, or None."""
        row = self.conn.execute(
            "SELECT size, lines, max_lamport FROM logs WHERE feature = ?", (feature,)
        ).fetchone()
        return (int(row[0]), int(row[1]), int(row[2])) if row else None

    def add_appended(
        self,
        feature: str,
        path: str,
        rows: list[tuple[Any, ...]],
        *,
        size: int,
        line_count: int,
        fd: int | None = None,
        last_line: bytes | None = None,
    ) -> None:
        """Record lines this process has just appended (no need to read them back).

        ``rows`` are in the column order of the events insert: feature, line, offset,
        length, event_id, event_type, aggregate_id, node_id, lamport.

        ``fd`` is the log, still locked by the caller, and ``last_line`` the bytes of the
        last line written: with them nothing is read back from the log, and the hash of
        its first 64 KiB is read only while the log is shorter than that.
        """
        if not rows:
            return
        with self.write():
            prior = log_progress(self.conn, feature)
            self.conn.executemany(_INSERT, rows)
            top = max(r[8] for r in rows)
            head_hash = None
            crc_from = (0, 0)
            if prior is not None:
                top = max(top, prior.max_lamport)
                if prior.size >= _HEAD_BYTES:
                    head_hash = prior.head_hash  # appends never change a log's first bytes
                if prior.prefix_crc is not None:
                    crc_from = (prior.size, prior.prefix_crc)  # only the appended bytes are read
            # No _see(top): the values were reserved, so the clock is at least top already.
            self._record_progress(
                feature,
                path,
                size,
                line_count,
                rows[-1][2],
                top,
                fd=fd,
                head_hash=head_hash,
                tail=last_line,
                crc_from=crc_from,
            )


def _switch_to_wal(conn: sqlite3.Connection) -> None:
    """Put the index in WAL mode (stored in the file, so it is done once per file).

    Processes switching a new file at the same moment can get "database is locked" at
    once: SQLite does not wait on its busy timeout in that deadlock. The loser retries.
    """
    mode = None
    for attempt in range(200):
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 199:
                raise
            time.sleep(0.001 * (1 + attempt % 20))
    if mode is None or mode[0].lower() != "wal":
        raise sqlite3.DatabaseError("cannot switch the index to WAL mode")


@contextlib.contextmanager
def _shared_lock(path: str) -> Iterator[None]:
    """Hold a shared ``flock`` on the log at ``path`` (nothing, if there is no log)."""
    while True:
        try:
            fd = _open_log(path, os.O_RDONLY)
        except FileNotFoundError:
            yield
            return
        except OSError as exc:
            raise os_error(exc, path, "read the log") from exc
        try:
            wait_for_lock(fd, fcntl.LOCK_SH, f"the lock on {path}")
            try:
                same = os.lstat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                yield
                return
        finally:
            os.close(fd)
        # The log was replaced (checkout, merge driver) while we waited: lock the new one.


#: The schema at HEAD_REVISION exactly as the Alembic migrations create it (a test
#: compares the two), so that a new index is made without importing Alembic and
#: SQLAlchemy, which take longer than the whole first append.
SCHEMA_SQL = (
    (
        "CREATE TABLE alembic_version (\n\t"
        "version_num VARCHAR(32) NOT NULL, \n\t"
        "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)\n)"
    ),
    (
        "CREATE TABLE events (\n\t"
        "id INTEGER NOT NULL, \n\t"
        "feature VARCHAR NOT NULL, \n\t"
        "line INTEGER NOT NULL, \n\t"
        '"offset" INTEGER NOT NULL, \n\t'
        "length INTEGER NOT NULL, \n\t"
        "event_id VARCHAR NOT NULL, \n\t"
        "event_type VARCHAR NOT NULL, \n\t"
        "aggregate_id VARCHAR NOT NULL, \n\t"
        "node_id VARCHAR NOT NULL, \n\t"
        "lamport INTEGER NOT NULL, \n\t"
        "status VARCHAR DEFAULT 'pending' NOT NULL, \n\t"
        "retry_count INTEGER DEFAULT 0 NOT NULL, \n\t"
        "last_retry_at VARCHAR, \n\t"
        "last_error TEXT, \n\t"
        "PRIMARY KEY (id)\n)"
    ),
    "CREATE UNIQUE INDEX uq_events_feature_event_id ON events (feature, event_id)",
    "CREATE INDEX ix_events_pending ON events (lamport, event_id) WHERE status = 'pending'",
    (
        "CREATE TABLE logs (\n\t"
        "feature VARCHAR NOT NULL, \n\t"
        "size INTEGER NOT NULL, \n\t"
        "lines INTEGER NOT NULL, \n\t"
        "head_hash VARCHAR NOT NULL, \n\t"
        "tail_offset INTEGER NOT NULL, \n\t"
        "tail_hash VARCHAR NOT NULL, \n\t"
        "max_lamport INTEGER NOT NULL, \n\t"
        # Added by migration 0002: SQLite's ALTER TABLE writes it on the same line.
        "file_id VARCHAR NOT NULL, prefix_crc INTEGER, \n\t"
        "PRIMARY KEY (feature)\n)"
    ),
    (
        "CREATE TABLE meta (\n\t"
        '"key" VARCHAR NOT NULL, \n\t'
        "value INTEGER NOT NULL, \n\t"
        'PRIMARY KEY ("key")\n)'
    ),
    (
        "CREATE TABLE remembered (\n\t"
        "feature VARCHAR NOT NULL, \n\t"
        "event_id VARCHAR NOT NULL, \n\t"
        "status VARCHAR NOT NULL, \n\t"
        "retry_count INTEGER NOT NULL, \n\t"
        "last_retry_at VARCHAR, \n\t"
        "last_error TEXT, \n\t"
        "PRIMARY KEY (feature, event_id)\n)"
    ),
)


#: The statements of SCHEMA_SQL that create indexes (a rebuild runs them after loading).
INDEX_SQL = tuple(sql for sql in SCHEMA_SQL if sql.startswith(("CREATE INDEX", "CREATE UNIQUE")))
INDEX_NAMES = ("uq_events_feature_event_id", "ix_events_pending")


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the HEAD schema in an empty index, stamped as Alembic would stamp it."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Looked at again under the write lock: another process may have just made it.
        if Index._revision(conn) == (None, set()):
            for statement in SCHEMA_SQL:
                conn.execute(statement)
            conn.execute("INSERT INTO alembic_version (version_num) VALUES (?)", (HEAD_REVISION,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def find_migrations() -> str:
    """The Alembic script folder: shipped inside the package, or the repository's."""
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (
        os.path.join(here, "migrations"),
        os.path.join(os.path.dirname(os.path.dirname(here)), "migrations"),
    ):
        if os.path.isfile(os.path.join(candidate, "env.py")):
            return candidate
    raise BadIndexError("the replaylog migrations are missing from this installation")


def run_migrations(conn: sqlite3.Connection, path: str) -> None:
    """Upgrade the index on ``conn`` to the head revision with Alembic (imported only now)."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine
    from sqlalchemy.pool import StaticPool

    config = Config()
    config.set_main_option("script_location", find_migrations())
    engine = create_engine("sqlite://", creator=lambda: conn, poolclass=StaticPool)
    with engine.connect() as connection:
        # One transaction around the whole upgrade, taken before looking at the revision
        # again: two processes opening a new index at once must not both create it. It
        # starts only now because SQLAlchemy's first connect ends any open transaction.
        conn.execute("BEGIN IMMEDIATE")
        try:
            if Index._revision(conn)[0] != HEAD_REVISION:
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
            if conn.in_transaction:
                conn.execute("COMMIT")
        except Exception as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            mapped = translate(exc, index=path, doing="upgrade the index")
            if isinstance(mapped, DiskError):
                raise mapped from exc
            raise BadIndexError(
                f"{path}: cannot upgrade the index ({exc}); {_REBUILD_HINT}"
            ) from exc
