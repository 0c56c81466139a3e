"""The replay index, ``queue.db`` (SPEC section 4): :class:`Index`, the front of the
index package, which opens it, runs its write transactions, catches it up and keeps
its record of the Lamport clock.

The index is a cache of the logs. Before it reports or uses anything, it catches up
with what the logs gained since it last looked (:mod:`replaylog.index.catchup`).
Opening and migrating are in :mod:`replaylog.index.opening`; delivery state (status,
pending, delivery updates) in :mod:`replaylog.index.delivery`, on SQLAlchemy Core; the
clock's rules in :mod:`replaylog.clock`. Lock order is always: a log's ``flock`` first,
then the SQLite write lock, then the clock file's lock
(:class:`~replaylog.clock.ClockFile`), never two logs at once, so processes cannot
deadlock.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

from .. import clock as _clock
from ..clock import ClockFile
from . import catchup, opening
from .catchup import LogProgress
from .remembered import restore
from .sql import (
    BEGIN_IMMEDIATE,
    CLOCK_KEY,
    COMMIT,
    RECORD_CLOCK,
    RECORDED_CLOCK,
    ROLLBACK,
    SET_CLOCK_KEY,
)

__all__ = ["Index"]


class Index:
    """An open ``queue.db``. Not shared between threads; one per process is plenty."""

    def __init__(self, path: str, *, clock_of: str | None = None) -> None:
        """``clock_of``: the index whose clock file this one shares (a rebuild's new
        index, built under a temporary name, raises the clock of the index it replaces)."""
        self.path = path
        self.clock_path = (clock_of or path) + "-clock"
        self.pid = os.getpid()
        self.conn = opening.connect(path)
        self._in_write = False
        self._clock_file: ClockFile | None = None

    #: The index's revision and tables (see :func:`replaylog.index.opening.revision`).
    _revision = staticmethod(opening.revision)

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
        self.conn.execute(BEGIN_IMMEDIATE)
        self._in_write = True
        try:
            yield self.conn
        except BaseException:
            self._in_write = False
            # SQLite may have rolled back already (a full disk does that): then a second
            # ROLLBACK would fail and hide the error that matters.
            if self.conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute(ROLLBACK)
            raise
        self._in_write = False
        self.conn.execute(COMMIT)

    # ------------------------------------------------------------------ clock

    @property
    def clock_file(self) -> ClockFile:
        """The clock file, opened on first use (and again in a forked child, whose
        inherited descriptor would share its parent's lock).

        Its value counts only with this index's key (:meth:`_clock_key`): a file left by
        an index that was deleted, or junk with a valid check of another key, backs no
        value and is started again from this index's record (SPEC section 12)."""
        clock_file = self._clock_file
        if clock_file is None or clock_file.pid != os.getpid() or clock_file.key == 0:
            key = self._clock_key()
            if clock_file is not None and clock_file.pid == os.getpid() and clock_file.key == key:
                return clock_file
            if clock_file is not None:
                clock_file.close()
            clock_file = self._clock_file = ClockFile(self.clock_path, key)
        return clock_file

    def _clock_key(self) -> int:
        """This index's key for its clock file, made (in a write transaction) when it
        has none; 0, the mark of files written before keys, until then."""
        row = self.conn.execute(CLOCK_KEY).fetchone()
        if row is None and self._in_write:
            # (os.urandom, not secrets: that imports hashlib, which the CLI append avoids)
            self.conn.execute(SET_CLOCK_KEY, (int.from_bytes(os.urandom(8), "big") >> 2 | 1,))
            row = self.conn.execute(CLOCK_KEY).fetchone()
        return int(row[0]) if row else 0

    def adopt_clock_key(self, key: int) -> None:
        """Take ``key`` as this index's clock key (a rebuild's new index takes the key of
        the index it replaces, so that the clock file they share counts for both). Call
        inside :meth:`write`, before anything uses the clock."""
        self.conn.execute(SET_CLOCK_KEY, (key,))

    def opened_clock(self) -> ClockFile | None:
        """The clock file if this process has it open, else None (it is not opened here).

        An append to a log that nothing changed since this process's last append takes
        its values from it directly: the log holds no value above the file's.
        """
        clock_file = self._clock_file
        return clock_file if clock_file is not None and clock_file.pid == os.getpid() else None

    def _recorded_clock(self) -> int:
        """The index's own record of the clock (``meta``), 0 if it has none."""
        row = self.conn.execute(RECORDED_CLOCK).fetchone()
        return int(row[0]) if row else 0

    def _record_clock(self, value: int) -> None:
        """Raise the index's record of the clock to ``value`` (never lower it)."""
        self.conn.execute(RECORD_CLOCK, (value,))

    def clock(self) -> int:
        """The highest Lamport value issued or seen: the next append's is above it."""
        return _clock.current(self._recorded_clock(), self.clock_file)

    def _see(self, value: int) -> None:
        """Raise the clock to ``value``, a value seen in a log. Call inside :meth:`write`."""
        _clock.observe(self.clock_file, value, self._record_clock)

    def reserve_clock(self, count: int) -> int:
        """Issue ``count`` clock values; returns the first. Call inside :meth:`write`.
        If their lines are not written, give them back with ``clock_file.release``."""
        return _clock.reserve(self.clock_file, count, self._recorded_clock())

    # ------------------------------------------------------------------ catch-up

    def known_features(self) -> list[str]:
        return catchup.known_features(self.conn)

    def catch_up(self, feature: str, path: str, *, locked: bool = False) -> None:
        """Index what the log at ``path`` gained since last time (or all of it, if rewritten).

        ``locked``: the caller holds the log's exclusive lock. Otherwise a quick look
        (one ``stat``) settles the common case where nothing changed.
        """
        catchup.catch_up(self, feature, path, locked=locked)

    def catch_up_locked(self, feature: str, path: str, *, lock_log: bool) -> None:
        """Catch up with one log; call inside :meth:`write`."""
        catchup.catch_up_locked(self, feature, path, lock_log=lock_log)

    def _restore(self, feature: str | None = None) -> None:
        """Give indexed events back the state remembered for them (one feature, or all)."""
        restore(self.conn, feature)

    def ingest(
        self,
        feature: str,
        path: str,
        *,
        start: int = 0,
        start_line: int = 0,
        lock_log: bool = True,
        prior: LogProgress | None = None,
        fresh: bool = False,
    ) -> int:
        """Index the lines of ``path`` from byte ``start``; returns how many were added.

        Call inside :meth:`write`. ``prior``: the log's progress before this ingest;
        ``fresh``: the index holds nothing of this feature yet (a rebuild), so
        duplicates need no look-up in the table.
        """
        return catchup.ingest(
            self,
            feature,
            path,
            start=start,
            start_line=start_line,
            lock_log=lock_log,
            prior=prior,
            fresh=fresh,
        )

    def forget_progress(self, feature: str) -> None:
        """Make the next catch-up index a feature's log again from its start (its lines
        were found changed where a catch-up did not look), keeping delivery state.

        On a connection of its own: this one may be inside a reading transaction that
        the error being raised will end without a commit.
        """
        catchup.forget_progress(self.path, feature)

    def known_event_ids(self, feature: str, event_ids: Sequence[str]) -> list[str]:
        """Those of ``event_ids`` that the feature's log holds already (as indexed)."""
        return catchup.known_event_ids(self.conn, feature, event_ids)

    def progress(self, feature: str) -> tuple[int, int, int] | None:
        """``(size, lines, max_lamport)`` indexed of a feature's log, or None."""
        return catchup.progress(self.conn, feature)

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
            catchup.add_appended(
                self.conn,
                feature,
                path,
                rows,
                size=size,
                line_count=line_count,
                fd=fd,
                last_line=last_line,
            )
