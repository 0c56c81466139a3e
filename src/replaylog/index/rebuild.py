"""``rebuild-index`` (SPEC section 4): a fresh index from the logs, swapped in atomically."""

from __future__ import annotations

import glob
import os
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import (
    BadIndexError,
    DiskError,
    ReplaylogError,
    StoreError,
    disk_error,
    is_log_problem,
    translate,
)
from ..posix import ensure_index_folder, fsync_dir, fsync_file, refuse_links
from .core import Index
from .locks import replay_lock, replay_lock_path
from .opening import foreign_file
from .remembered import DeliveryState, delivery_states, remember_states
from .sql import (
    CLOCK_KEY,
    DROP_INDEX_SQL,
    INDEX_SQL,
    JOURNAL_DELETE,
    JOURNAL_OFF,
    RELEASE_ONE_LOG,
    ROLLBACK_TO_ONE_LOG,
    SAVEPOINT_ONE_LOG,
    SYNCHRONOUS_FULL,
    SYNCHRONOUS_OFF,
    WAL_CHECKPOINT,
)

__all__ = ["rebuild"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(index_path: str) -> None:
    """Remove temporary files of rebuilds whose process is gone (killed mid-rebuild)."""
    for leftover in glob.glob(glob.escape(index_path) + ".rebuild-*"):
        pid_text = leftover.rsplit(".rebuild-", 1)[1].split("-", 1)[0]
        if pid_text.isdigit() and _alive(int(pid_text)) and int(pid_text) != os.getpid():
            continue
        try:
            os.unlink(leftover)
        except FileNotFoundError:
            pass


def _old_states(index_path: str) -> list[DeliveryState]:
    """Delivery state worth keeping from the old index, or [] if it cannot be read: that
    of its events and that it remembers of events absent for now (SPEC section 12)."""
    if not os.path.exists(index_path) or os.path.getsize(index_path) == 0:
        return []
    try:
        old = Index(index_path)
    except DiskError:
        raise  # the index is fine, the disk is not: its state must not be dropped
    except ReplaylogError:
        return []
    try:
        return delivery_states(old.conn)
    except Exception as exc:  # noqa: BLE001 - an unreadable old index has no state to give
        if isinstance(translate(exc, index=index_path), DiskError):
            raise
        return []
    finally:
        old.close()


def _old_clock_key(index_path: str) -> int | None:
    """The clock key of the index at ``index_path`` (see ``Index.clock_file``), or None
    when there is no such index, it has no key yet, or it cannot be read."""
    if not os.path.exists(index_path) or os.path.getsize(index_path) == 0:
        return None
    try:
        conn = sqlite3.connect(index_path, timeout=60.0)
        try:
            row = conn.execute(CLOCK_KEY).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return int(row[0]) if row and type(row[0]) is int else None


def _settle(index_path: str) -> None:
    """Fold the old index's WAL into its file, then remove the WAL and its shared memory.

    Done before the rename, so that no moment exists at which the new file sits beside
    the old file's WAL (SQLite would read that WAL against the new file). A kill at
    any point leaves either the old index, whole, or the new one.
    """
    if os.path.exists(index_path):
        try:
            conn = sqlite3.connect(index_path, timeout=60.0)
            try:
                conn.execute(WAL_CHECKPOINT)
            finally:
                conn.close()
        except sqlite3.Error:
            pass  # not a database (being replaced because of that): nothing to fold in
    for suffix in ("-wal", "-shm"):
        try:
            os.unlink(index_path + suffix)
        except FileNotFoundError:
            pass


#: How long a rebuild waits for a running replay to finish before it gives up.
REPLAY_WAIT_SECONDS = 300.0


def rebuild(
    index_path: str,
    logs: Sequence[tuple[str, str]],
    *,
    root: str,
    reset_delivery: bool,
    skip_bad: bool = False,
    progress: Callable[[str, int], None] | None = None,
    wait: float = REPLAY_WAIT_SECONDS,
) -> tuple[dict[str, Any], dict[str, StoreError]]:
    """Build the index at ``index_path`` from ``logs`` (``(feature, path of its log)``),
    then put it in place while no replay records outcomes.

    ``root`` is the project's root: a symbolic link to a folder below it, on the way to a
    log, makes that log a bad one (SPEC section 12).

    Returns the result and the logs that could not be read. With any such log and no
    ``skip_bad``, nothing is swapped in. The new index is built beside the old one and
    renamed over it; on any failure the temporary files are removed and the old index is
    left as it was.

    The logs are read without any lock on the index. The old index's delivery state is
    read, and the new index renamed over it, under the replay lock: a replay running
    then records every outcome in the old index first, and a replay that starts later
    opens the new one. The rebuild waits ``wait`` seconds at most for a running replay
    (saying so on stderr after a second), then gives up with the old index unchanged.
    """
    foreign = foreign_file(index_path)
    if foreign is not None:
        raise BadIndexError(
            f"{index_path} is not a replaylog index ({foreign}); rebuild-index replaces only"
            " a file replaylog made: give --index (or REPLAYLOG_INDEX) a path of its own,"
            " or move this file away"
        )
    temp = f"{index_path}.rebuild-{os.getpid()}"
    try:
        ensure_index_folder(index_path, "rebuild the index")
        _remove_stale(index_path)
        return _rebuild(index_path, logs, root, temp, reset_delivery, skip_bad, progress, wait)
    except (OSError, sqlite3.Error, DiskError) as exc:
        # The temporary file's name means nothing to the user: name the index instead.
        mapped = translate(exc, path=temp, index=temp)
        if not isinstance(mapped, DiskError):
            raise
        if not (mapped.path or index_path).startswith(index_path):
            raise mapped from exc  # a log, not the index: its own path says where
        raise disk_error(mapped.errno, index_path, "rebuild the index") from exc


def _rebuild(
    index_path: str,
    logs: Sequence[tuple[str, str]],
    root: str,
    temp: str,
    reset_delivery: bool,
    skip_bad: bool,
    progress: Callable[[str, int], None] | None,
    wait: float,
) -> tuple[dict[str, Any], dict[str, StoreError]]:
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(temp + suffix):
            os.unlink(temp + suffix)
    events = 0
    bad: dict[str, StoreError] = {}
    fresh: Index | None = None
    try:
        fresh = Index(temp, clock_of=index_path)
        # A temporary file that is thrown away on any failure: no journal, no syncing of
        # each page, and the indexes built once after the rows are in (much faster than
        # keeping them up to date row by row).
        fresh.conn.execute(JOURNAL_OFF)
        fresh.conn.execute(SYNCHRONOUS_OFF)
        for statement in DROP_INDEX_SQL:
            fresh.conn.execute(statement)
        old_key = _old_clock_key(index_path)
        with fresh.write():
            if old_key is not None:
                # The clock file is shared with the index this one replaces: its value
                # counts for the new index too. With no old index (deleted), the file
                # counts for none and the clock is taken from the logs alone.
                fresh.adopt_clock_key(old_key)
            for name, path in logs:
                # Every log is read even after a bad one, so that all are listed (SPEC 10).
                fresh.conn.execute(SAVEPOINT_ONE_LOG)
                try:
                    refuse_links(root, os.path.dirname(path))  # SPEC section 12
                    events += fresh.ingest(name, path, fresh=True)
                except StoreError as exc:
                    if not is_log_problem(exc, path):
                        raise  # the new index's disk: no log can be indexed
                    fresh.conn.execute(ROLLBACK_TO_ONE_LOG)
                    exc.path = exc.path or path
                    bad[name] = exc
                fresh.conn.execute(RELEASE_ONE_LOG)
                if progress is not None:
                    progress(name, events)
            if bad and not skip_bad:
                raise _KeepOld
            for statement in INDEX_SQL:
                fresh.conn.execute(statement)
        with replay_lock(index_path, timeout=wait) as held:
            if not held:
                raise ReplaylogError(
                    f"a replay is still running on this index after {wait:g} s (it holds"
                    f" {replay_lock_path(index_path)}); the index was left as it was: run"
                    " `replaylog rebuild-index` again when the replay has finished"
                )
            if not reset_delivery:
                with fresh.write():
                    remember_states(fresh.conn, _old_states(index_path))
                    # Events of the logs take their state back; the others' is kept.
                    fresh._restore()
            fresh.conn.execute(SYNCHRONOUS_FULL)
            # Leave a single self-contained file: no -wal to go astray in the rename.
            fresh.conn.execute(JOURNAL_DELETE)
            fresh.close()
            fsync_file(temp)
            _settle(index_path)
            os.replace(temp, index_path)
            fsync_dir(os.path.dirname(index_path))
    except BaseException as exc:
        if fresh is not None:
            fresh.close()
        for suffix in ("", "-wal", "-shm"):
            try:
                os.unlink(temp + suffix)
            except FileNotFoundError:
                pass
        if isinstance(exc, _KeepOld):
            return {"features": len(logs) - len(bad), "events": events}, bad
        raise
    return {"features": len(logs) - len(bad), "events": events}, bad


class _KeepOld(Exception):
    """Some log is bad and no --skip-bad: the new index is thrown away."""
