"""Catch-up (SPEC section 4): the index takes in what the logs gained since it last looked.

Only the new bytes of a log are read; a log whose indexed prefix changed (checkout,
rebase) is indexed again from the start, keeping the delivery state of the events that
are still there (:mod:`replaylog.index.remembered`). The ``logs`` table records how far
each log is indexed and what its prefix looked like.

Ingesting lines is the hot path of ``replaylog append`` and of ``rebuild-index``, so the
SQL here (in :mod:`replaylog.index.sql`) runs on the standard ``sqlite3`` module:
importing SQLAlchemy alone takes several times longer than a whole append. Lock order:
the log's ``flock`` first, then the SQLite write lock (:mod:`replaylog.index.core`).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import zlib
from collections.abc import Iterator, Sequence
from itertools import repeat
from operator import itemgetter
from typing import TYPE_CHECKING, Any, NamedTuple

from ..clock import derive_clocks
from ..errors import StoreError
from ..lines.ids import builtin_sha256
from ..log.read import Unclean, line_object_at, scan_log
from ..posix import open_regular
from .opening import shared_lock
from .remembered import remember, restore
from .sql import (
    DELETE_EVENTS,
    DELETE_LOG,
    FORGET_PROGRESS,
    INSERT_EVENT,
    KNOWN_FEATURES,
    LOG_FILE_ID,
    LOG_PROGRESS,
    PROGRESS,
    RECORD_CLOCK,
    RELEASE_CLEAN_INGEST,
    ROLLBACK_TO_CLEAN_INGEST,
    SAVE_PROGRESS,
    SAVEPOINT_CLEAN_INGEST,
    known_ids_sql,
    known_lines_sql,
)

if TYPE_CHECKING:
    from ..log.fastread import MixedChunk
    from .core import Index

__all__ = [
    "LogProgress",
    "add_appended",
    "catch_up",
    "catch_up_locked",
    "forget_progress",
    "ingest",
    "known_event_ids",
    "known_features",
    "log_progress",
    "progress",
]

_HEAD_BYTES = 64 * 1024
_SMALL_HASH = 16 * 1024
_CRC_BLOCK = 4 << 20
_BATCH = 20_000

# Where a field sits in a row of INSERT_EVENT. The rows stay plain tuples: one is made for
# every line taken in, and executemany takes them as they are.
_LINE, _OFFSET, _EVENT_ID, _LAMPORT = 1, 2, 4, 8


class LogProgress(NamedTuple):
    """A row of ``logs``: how much of a feature's log the index has taken in."""

    size: int  # bytes indexed: the end of the last whole line
    lines: int  # physical lines in those bytes
    head_hash: str  # SHA-256 of the first 64 KiB indexed
    tail_offset: int  # where the last indexed line starts
    tail_hash: str  # SHA-256 of that last line
    max_lamport: int
    file_id: str  # "inode:mtime_ns:ctime_ns:size" when last seen
    prefix_crc: int | None  # CRC-32 of every byte indexed; None before revision 0002


def log_progress(conn: sqlite3.Connection, feature: str) -> LogProgress | None:
    """The ``logs`` row of ``feature``, or None if its log was never indexed."""
    row = conn.execute(LOG_PROGRESS, (feature,)).fetchone()
    return LogProgress._make(row) if row is not None else None


def _sha(data: bytes) -> str:
    if len(data) <= _SMALL_HASH:  # the last line, the head of a short log: one append's
        return builtin_sha256(data).hexdigest()
    import hashlib  # OpenSSL's, several times faster on much data, but slow to import

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


def _crc_from(prior: LogProgress | None, start: int) -> tuple[int, int]:
    """Where the CRC of an ingest starts: after the indexed prefix, when it is known."""
    if prior is not None and start > 0 and prior.prefix_crc is not None:
        return start, int(prior.prefix_crc)
    return 0, 0


def _file_id(st: os.stat_result) -> str:
    # The change time too: a program can set a file's mtime back (``touch -r``, ``cp -p``)
    # after rewriting it, but not its ctime.
    return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_size}"


def known_features(conn: sqlite3.Connection) -> list[str]:
    """The features whose log the index has taken in, by name."""
    return [r[0] for r in conn.execute(KNOWN_FEATURES)]


def catch_up(index: Index, feature: str, path: str, *, locked: bool) -> None:
    """What :meth:`Index.catch_up` does: see there."""
    if not locked:
        row = index.conn.execute(LOG_FILE_ID, (feature,)).fetchone()
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            if row is None:
                return
            st = None
        if row is not None and st is not None:
            (seen_file_id,) = row
            if seen_file_id == _file_id(st):
                return
        # The log's lock first, then the SQLite write lock (the order of the module
        # docstring): the other way round deadlocks with an append, which holds the
        # log and waits for SQLite.
        with shared_lock(path):
            with index.write():
                catch_up_locked(index, feature, path, lock_log=False)
        return
    with index.write():
        catch_up_locked(index, feature, path, lock_log=False)


def catch_up_locked(index: Index, feature: str, path: str, *, lock_log: bool) -> None:
    """Catch up with one log inside the caller's write transaction."""
    conn = index.conn
    row = log_progress(conn, feature)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        # The log is gone (a checkout to a branch without it, another --logs-dir): so
        # are its events, but not their delivery state, which comes back with them.
        remember(conn, feature)
        conn.execute(DELETE_EVENTS, (feature,))
        conn.execute(DELETE_LOG, (feature,))
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
        if _prefix_unchanged(path, row, st):
            start, start_line = row.size, row.lines
        else:
            remember(conn, feature)
            conn.execute(DELETE_EVENTS, (feature,))
    index.ingest(feature, path, start=start, start_line=start_line, lock_log=lock_log, prior=row)
    restore(conn, feature)


def _prefix_unchanged(path: str, row: LogProgress, st: os.stat_result) -> bool:
    """True if the log still begins with exactly the bytes indexed so far.

    The first 64 KiB and the last indexed line are compared by SHA-256. The same file
    (inode) grown is taken to have gained lines, and only its new bytes are read (SPEC
    section 4); an edit made in place together with such growth is noticed when replay
    reads its line back. Any other change has every indexed byte compared by its
    CRC-32, which the index keeps as it takes bytes in, so that a change anywhere in
    them is noticed (SPEC section 12): a file that did not grow yet is not the one this
    index last saw (an edit in place, also with its mtime set back, a checkout of a
    version of the same size), and a file put in the log's place (a checkout or merge
    writes a new file) that grew.
    """
    size, tail_offset = row.size, row.tail_offset
    size_now = st.st_size
    if size_now < size:
        return False
    try:
        fd = open_regular(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        head = os.pread(fd, min(size, _HEAD_BYTES), 0)
        tail = os.pread(fd, size - tail_offset, tail_offset) if size else b""
        if _sha(head) != row.head_hash or _sha(tail) != row.tail_hash:
            return False
        if size_now > size and row.file_id.split(":", 1)[0] == str(st.st_ino):
            return True
        # No CRC: a log indexed before it was kept; indexing it again is always right.
        crc = row.prefix_crc
        return crc is not None and _crc(fd, 0, size, 0) == crc
    finally:
        os.close(fd)


def ingest(
    index: Index,
    feature: str,
    path: str,
    *,
    start: int,
    start_line: int,
    lock_log: bool,
    prior: LogProgress | None,
    fresh: bool,
) -> int:
    """What :meth:`Index.ingest` does: see there."""
    conn = index.conn
    check_existing = start > 0 and not fresh
    # A clean log (the usual case) is read in large validated chunks; on anything
    # unusual, what the fast path inserted is undone and scan_log reads the log.
    conn.execute(SAVEPOINT_CLEAN_INGEST)
    try:
        added = _ingest_clean(
            index, feature, path, start, start_line, lock_log, prior, check_existing
        )
    except Unclean:
        conn.execute(ROLLBACK_TO_CLEAN_INGEST)
        conn.execute(RELEASE_CLEAN_INGEST)
    except BaseException:
        if conn.in_transaction:  # not when SQLite rolled back by itself (disk full)
            with contextlib.suppress(sqlite3.Error):
                conn.execute(ROLLBACK_TO_CLEAN_INGEST)
                conn.execute(RELEASE_CLEAN_INGEST)
        raise
    else:
        conn.execute(RELEASE_CLEAN_INGEST)
        return added
    from ..lines import index_fields  # the slow path only: see scan_log

    position = [start, start_line]
    max_lamport = prior.max_lamport if prior is not None and start > 0 else 0
    check_existing = start > 0 and not fresh
    added = 0
    batch: list[tuple[Any, ...]] = []
    last_line_start = prior.tail_offset if prior is not None and start > 0 else 0
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
            batch, max_lamport = _with_clocks(
                conn, feature, path, batch, check_existing, max_lamport
            )
            added += _insert(conn, feature, path, batch, False)
            batch = []
    if batch:
        batch, max_lamport = _with_clocks(conn, feature, path, batch, check_existing, max_lamport)
        added += _insert(conn, feature, path, batch, False)
    index._see(max_lamport)
    _record_progress(
        conn,
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
    index: Index,
    feature: str,
    path: str,
    start: int,
    start_line: int,
    lock_log: bool,
    prior: LogProgress | None,
    check_existing: bool,
) -> int:
    conn = index.conn
    max_lamport = prior.max_lamport if prior is not None and start > 0 else 0
    last_line_start = prior.tail_offset if prior is not None and start > 0 else 0
    end, lines, added = start, start_line, 0
    for chunk, (types, aggs, nodes, clocks) in _chunks(path, start, start_line, lock_log):
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
            rows, max_lamport = _with_clocks(conn, feature, path, rows, check_existing, max_lamport)
            added += _insert(conn, feature, path, rows, False)
        else:
            added += _insert(conn, feature, path, rows, check_existing)
            max_lamport = max(max_lamport, max(values))  # type: ignore[type-var, assignment]
        last_line_start = chunk.offsets[-1]
        end, lines = chunk.end, chunk.first_line + count - 1
    index._see(max_lamport)
    _record_progress(
        conn,
        feature,
        path,
        end,
        lines,
        last_line_start,
        max_lamport,
        crc_from=_crc_from(prior, start),
    )
    return added


def _chunks(
    path: str, start: int, start_line: int, lock_log: bool
) -> Iterator[tuple[MixedChunk, tuple[list[str], list[str], list[str], list[int | None]]]]:
    """The log's validated chunks from ``start`` on (the fast path of every line kind,
    spec-kitty's logs as well as the store's own), each with its index columns; none,
    and no reader imported, when the log holds nothing past ``start`` (a new, empty log:
    the first ``replaylog append`` to it loads neither the reader nor msgspec)."""
    try:
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode) and st.st_size <= start:
            return
    except OSError:
        pass  # the reader finds and reports it, as anything but a regular file
    from ..log.fastread import index_columns, mixed_chunks

    for chunk in mixed_chunks(path, start=start, start_line=start_line, lock=lock_log):
        yield chunk, index_columns(chunk)


def _with_clocks(
    conn: sqlite3.Connection,
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
        rows = _drop_known(conn, feature, path, rows)
    return derive_clocks(rows, before)


def _insert(
    conn: sqlite3.Connection,
    feature: str,
    path: str,
    rows: list[tuple[Any, ...]],
    check_existing: bool,
) -> int:
    if check_existing:
        rows = _drop_known(conn, feature, path, rows)
    conn.executemany(INSERT_EVENT, rows)
    return len(rows)


def _drop_known(
    conn: sqlite3.Connection, feature: str, path: str, rows: list[tuple[Any, ...]]
) -> list[tuple[Any, ...]]:
    """Leave out lines whose event is indexed already (an identical duplicate line).

    The same id with different content is a broken log: raise naming both lines.
    """
    known: dict[str, tuple[int, int]] = {}
    ids = [r[_EVENT_ID] for r in rows]
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        for eid, line, offset in conn.execute(known_lines_sql(len(chunk)), [feature, *chunk]):
            known[eid] = (line, offset)
    if not known:
        return rows
    keep = []
    fd = open_regular(path, os.O_RDONLY)
    try:
        for r in rows:
            first = known.get(r[_EVENT_ID])
            if first is None:
                keep.append(r)
                continue
            first_line, first_offset = first
            if first_line == r[_LINE]:
                continue
            if line_object_at(fd, first_offset) != line_object_at(fd, r[_OFFSET]):
                raise StoreError(
                    f"Line {r[_LINE]}: invalid event structure: event_id {r[_EVENT_ID]}"
                    f" already appears at line {first_line} with different content",
                    path=path,
                    line=r[_LINE],
                )
    finally:
        os.close(fd)
    return keep


def _record_progress(
    conn: sqlite3.Connection,
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
            fd = open_regular(path, os.O_RDONLY)
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
    conn.execute(
        SAVE_PROGRESS,
        (feature, size, lines, head_hash, tail_offset, _sha(tail), max_lamport, file_id, crc),
    )


def forget_progress(index_path: str, feature: str) -> None:
    """What :meth:`Index.forget_progress` does: see there."""
    try:
        conn = sqlite3.connect(index_path, timeout=60.0, isolation_level=None)
        try:
            conn.execute(FORGET_PROGRESS, (feature,))
        finally:
            conn.close()
    except sqlite3.Error:
        pass  # the caller reports the change; this only spares the next run the same


def known_event_ids(conn: sqlite3.Connection, feature: str, event_ids: Sequence[str]) -> list[str]:
    """Those of ``event_ids`` that the feature's log holds already (as indexed)."""
    known: list[str] = []
    for i in range(0, len(event_ids), 500):
        chunk = event_ids[i : i + 500]
        known.extend(r[0] for r in conn.execute(known_ids_sql(len(chunk)), [feature, *chunk]))
    return known


def progress(conn: sqlite3.Connection, feature: str) -> tuple[int, int, int] | None:
    """``(size, lines, max_lamport)`` indexed of a feature's log, or None."""
    row = conn.execute(PROGRESS, (feature,)).fetchone()
    if row is None:
        return None
    size, lines, max_lamport = row
    return int(size), int(lines), int(max_lamport)


def add_appended(
    conn: sqlite3.Connection,
    feature: str,
    path: str,
    rows: list[tuple[Any, ...]],
    *,
    size: int,
    line_count: int,
    fd: int | None,
    last_line: bytes | None,
) -> None:
    """What :meth:`Index.add_appended` does, inside its write transaction: see there."""
    prior = log_progress(conn, feature)
    conn.executemany(INSERT_EVENT, rows)
    top = max(map(itemgetter(_LAMPORT), rows))
    head_hash = None
    crc_from = (0, 0)
    if prior is not None:
        top = max(top, prior.max_lamport)
        if prior.size >= _HEAD_BYTES:
            head_hash = prior.head_hash  # appends never change a log's first bytes
        if prior.prefix_crc is not None:
            crc_from = (prior.size, prior.prefix_crc)  # only the appended bytes are read
    # The clock file is at least top already (the values were reserved from it); the
    # index's record is raised now that they are in the log.
    conn.execute(RECORD_CLOCK, (top,))
    _record_progress(
        conn,
        feature,
        path,
        size,
        line_count,
        rows[-1][_OFFSET],
        top,
        fd=fd,
        head_hash=head_hash,
        tail=last_line,
        crc_from=crc_from,
    )
