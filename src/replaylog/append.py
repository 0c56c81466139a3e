"""The append transaction (SPEC sections 3, 4 and 7), in one place: lock the log, catch
the index up with it, reserve Lamport values, write and fsync, record the new lines in
the index; and the fast path for a log the store left open.

The first append of a store to a log runs the whole transaction. The store then keeps the
log open: a later append that finds the log exactly as the store left it (the same file,
the same size) only takes its Lamport values from the clock file, writes and fsyncs. The
index takes those lines in when it next catches up (SPEC section 4 lets its writes be
deferred past an append, never skipped), in one batch.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import warnings
from itertools import accumulate, repeat
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from .errors import ReplaylogWarning, StoreError, UsageError, translate
from .lines.canonical import LineTemplate, lines_of
from .log import LogWriter, write_durably
from .posix import LOCK_EX_NB, wait_for_lock

if TYPE_CHECKING:
    from .clock import ClockFile
    from .store import EventStore

__all__ = ["Appender", "OpenLog"]

#: A batch of at least this many lines runs the whole transaction even when the log is
#: open: the index takes it in at once from the rows made here, which costs less than
#: reading the batch back at the next catch-up, and a batch pays the lock once.
_BATCH = 64

#: How many forks made this process (from the one that imported this module): a log kept
#: open by a parent is not the child's (an inherited descriptor shares its locks), and
#: this is cheaper to compare on every append than a ``getpid`` system call.
_forks = 0


def _count_fork() -> None:
    global _forks
    _forks += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_count_fork)


class OpenLog:
    """A log the store appended to, kept open, and how it looked after that append."""

    __slots__ = ("fd", "path", "ino", "dev", "size", "forks", "clock")

    def __init__(self, fd: int, path: str, st: os.stat_result, clock: ClockFile | None) -> None:
        self.fd = fd
        self.path = path
        self.forks = _forks
        self.ino, self.dev, self.size = st.st_ino, st.st_dev, st.st_size
        # The index's clock file, open in this process, or None: the next appends take
        # their values from it without going through the index.
        self.clock = clock

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Appender:
    """The appends of one :class:`~replaylog.store.EventStore`, and the logs it keeps open.

    The store checks its arguments and builds the line objects; everything from the
    log's lock to the index's record of the new lines happens here. The store passes
    itself to each call (it is not kept here: no reference cycle keeps it alive).
    """

    __slots__ = ("open_logs", "seen_all_logs")

    def __init__(self) -> None:
        #: The logs kept open for the next appends, by feature (names already checked).
        self.open_logs: dict[str, OpenLog] = {}
        # Whether this store has caught up with the other logs once (see append).
        self.seen_all_logs = False

    def close(self) -> None:
        """Close the logs kept open (every append is complete on return)."""
        for open_log in self.open_logs.values():
            open_log.close()
        self.open_logs.clear()

    def append(
        self,
        store: EventStore,
        feature: str,
        feature_dir: str,
        templates: list[LineTemplate],
        objs: list[dict[str, Any]],
        given_ids: list[str] | None,
    ) -> list[dict[str, Any]]:
        """Append checked line objects to ``feature``'s log, durably, and index them;
        returns the objects, each with its Lamport value (the store builds the events).

        ``given_ids``: ids that came from the caller's Events (ids made here are new by
        construction, so only those are looked up in the index, and only a batch without
        them can take the fast path).
        """
        if not given_ids and len(objs) < _BATCH:
            if self.append_to_open_log(store, feature, templates, objs):
                return objs
        index = store.index
        if not self.seen_all_logs:
            # Once per store (so once per command): lines merged into other logs since
            # the index last looked (a `git pull`) raise the clock before this append.
            # Later appends of a long-lived store catch up with their own log only.
            for name in store.features():
                if name == feature:
                    continue  # caught up below, under the log's own lock
                try:
                    store.catch_up([name])
                except StoreError:
                    # Another log's problem is reported by that log's own commands;
                    # it must not stop an append to this one.
                    continue
            self.seen_all_logs = True
        # 1. Lock the log (LogWriter); under the index's write lock, catch up with it,
        #    refuse ids it already holds, and reserve the Lamport values.
        with LogWriter(feature_dir, fsync=store.fsync) as writer:
            with index.write():
                index.catch_up_locked(feature, writer.path, lock_log=False)
                known = index.known_event_ids(feature, given_ids) if given_ids else []
                if known:
                    # The same id again would be a second, different line of one event.
                    raise UsageError(
                        f"event {known[0]} is already in the log of {feature!r};"
                        " a new event needs a new event_id"
                    )
                first = index.reserve_clock(len(objs))
            progress = index.progress(feature)
            size_before, lines_before = (progress[0], progress[1]) if progress else (0, 0)
            # 2. Write and fsync (cut back if it fails: all of the batch or nothing, and
            #    the values reserved are given back).
            lines = lines_of(templates, first)
            try:
                offset = writer.write(lines)
            except BaseException:
                index.clock_file.release(first, len(objs))
                raise
            # 3. Record the new lines in the index, without reading them back. A torn
            #    (but valid) last line was completed by this write: it is a line too.
            number = lines_before + (1 if size_before < offset else 0)
            count = len(lines)
            clocks = range(first, first + count)
            list(map(dict.__setitem__, objs, repeat("lamport_clock"), clocks))
            lengths = list(map(len, lines))
            offsets = list(accumulate(lengths, initial=offset))
            rows = list(
                zip(
                    repeat(feature),
                    range(number + 1, number + 1 + count),
                    offsets,
                    map((-1).__add__, lengths),  # without the newline
                    map(itemgetter("event_id"), objs),
                    map(itemgetter("event_type"), objs),
                    map(itemgetter("aggregate_id"), objs),
                    map(itemgetter("node_id"), objs),
                    clocks,
                )
            )
            number += count
            try:
                index.add_appended(
                    feature,
                    writer.path,
                    rows,
                    size=writer.size,
                    line_count=number,
                    fd=writer.fd,
                    last_line=lines[-1],
                )
            except (OSError, sqlite3.Error) as exc:
                # The lines are durable in the log, so the append is done (SPEC section
                # 12): reporting a failure would make a retry write them twice. The
                # index takes them in when it next catches up (section 4).
                error = translate(exc, index=store.index_path)
                warnings.warn(
                    ReplaylogWarning(
                        f"{len(lines)} event(s) saved in the log, but the index could not"
                        f" take them in yet ({error}); the next command that can write the"
                        " index catches up"
                    ),
                    stacklevel=5,  # the caller of EventStore.append / append_many
                )
            # 4. Keep the log open for the next append; its lock is released.
            old = self.open_logs.pop(feature, None)
            if old is not None:
                old.close()
            st = os.fstat(writer.fd)
            open_log = OpenLog(writer.detach(), writer.path, st, index.opened_clock())
            fcntl.flock(open_log.fd, fcntl.LOCK_UN)
            self.open_logs[feature] = open_log
        return objs

    def append_to_open_log(
        self,
        store: EventStore,
        feature: str,
        templates: list[LineTemplate],
        objs: list[dict[str, Any]],
    ) -> bool:
        """The fast path: append to a log the store left open, if nobody changed it
        since, and give each object its Lamport value; False when the whole transaction
        must run (first append, another writer, a rewrite, a fork)."""
        open_log = self.open_logs.get(feature)
        if open_log is None or store._index is None:
            return False
        clock = open_log.clock
        if open_log.forks != _forks or clock is None or clock.fd < 0:
            # A forked child: an inherited descriptor would share its parent's locks.
            self.open_logs.pop(feature).close()
            return False
        fd = open_log.fd
        flock = fcntl.flock
        try:
            flock(fd, LOCK_EX_NB)
        except BlockingIOError:
            wait_for_lock(fd, fcntl.LOCK_EX, f"the lock on {open_log.path}")
        try:
            first = None
            # Nothing new in the log since this store's last append: the file at its path
            # is the one kept open, of the size it had then (one lstat tells both). Every
            # value in it is at most the clock's, so the clock alone gives the next ones.
            try:
                here = os.lstat(open_log.path)
            except OSError:
                here = None
            if (
                here is not None
                and here.st_ino == open_log.ino
                and here.st_dev == open_log.dev
                and here.st_size == open_log.size
            ):
                first = clock.reserve(len(templates))
            if first is None:
                self.open_logs.pop(feature).close()  # closing releases the lock
                return False
            if len(templates) == 1:
                data = templates[0].line(first)
            else:
                data = b"".join(lines_of(templates, first))
            try:
                write_durably(fd, data, open_log.size, store.fsync, open_log.path)
            except BaseException:
                clock.release(first, len(templates))  # nothing of them is in the log
                self.open_logs.pop(feature).close()
                raise
            open_log.size += len(data)
        finally:
            if open_log.fd >= 0:
                flock(fd, fcntl.LOCK_UN)
        if len(objs) == 1:  # objects of new events only (given ids go the whole way)
            objs[0]["lamport_clock"] = first
        else:
            for k, obj in enumerate(objs):
                obj["lamport_clock"] = first + k
        return True
