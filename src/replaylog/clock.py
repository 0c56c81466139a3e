"""The Lamport clock (SPEC sections 4 and 10): reserve values, observe others', derive the rest.

- **reserve**: an append takes its values from :class:`ClockFile`, the small file
  ``<index>-clock`` beside the index, under that file's own ``flock``
  (:meth:`ClockFile.reserve`).
- **observe**: lines other nodes wrote raise the clock to their values
  (:meth:`ClockFile.raise_to`), so a later append is above every value seen.
- **derive**: a line that carries no ``lamport_clock`` has 1 + the largest value of the
  lines before it in its log (:func:`lamport_of`, :func:`derive_clocks`).

The index keeps its own record of the clock too (its ``meta`` table), which the file
always equals or exceeds: :func:`reserve`, :func:`observe` and :func:`current` join the
two, and :class:`replaylog.index.Index` holds only the SQL of that record.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import stat
import struct
from collections.abc import Callable
from typing import Any

from .errors import BadIndexError, StoreError, os_error
from .lines.canonical import MAX_CLOCK

__all__ = ["ClockFile", "current", "derive_clocks", "lamport_of", "observe", "reserve"]

_CLOCK = struct.Struct("<qq")
#: The clock file holds its value twice: as it is, and XORed with this. A file whose two
#: words disagree (junk bytes, an older or torn file) backs no value and is ignored.
_CLOCK_CHECK = 0x72706C67636C6F63


def lamport_of(obj: dict[str, Any], before: int) -> int:
    """A line's Lamport value (SPEC section 10): its ``lamport_clock``, or for a line
    that carries none, 1 + ``before``, the largest value of the lines before it."""
    value = obj.get("lamport_clock")
    return value if type(value) is int else before + 1


def derive_clocks(rows: list[tuple[Any, ...]], before: int) -> tuple[list[tuple[Any, ...]], int]:
    """Rows whose last field is a line's ``lamport_clock`` (None when it carries none),
    with that field filled in as :func:`lamport_of` does, in log order. ``before`` is the
    largest value before the first row; returns the rows and the largest value so far."""
    out = []
    for row in rows:
        # lamport_of written out: this runs for every line an index takes in.
        clock = row[-1]
        if clock is None:
            clock = before + 1
            row = (*row[:-1], clock)
        if clock > before:
            before = clock
        out.append(row)
    return out, before


class ClockFile:
    """The highest Lamport value the index has issued or seen, in ``<index>-clock``.

    An append takes its values here, under this small file's own ``flock``, instead of
    in an index transaction; the index takes the appended lines in when it next catches
    up (SPEC section 4 lets its writes be deferred). The file is mapped into memory, so
    that taking a value costs two system calls (the lock and its release). The value
    only rises. Lock order: a log's ``flock``, then SQLite, then this file's lock, which
    is never held while waiting for anything else.

    The index keeps its own record of the clock too (``meta``), which the file always
    equals or exceeds; a file that is missing or unreadable is started again from that
    record by the next append that goes through the index. The file is a cache (SPEC
    section 12): its value is stored with a check word, and a value whose check does not
    match (junk written into it, a file of another format) is ignored like a missing one.
    """

    # The value and its check, each a signed 64-bit integer, little-endian (what SQLite
    # can hold too).
    SIZE = 16

    def __init__(self, path: str, key: int = 0) -> None:
        """``key``: the index's own (see :meth:`replaylog.index.Index.clock_file`); a file
        written for another index (a deleted one's) has no valid check for it."""
        self.path = path
        self.key = key
        self._check = _CLOCK_CHECK ^ key
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            self.fd = os.open(path, flags, 0o600)
            try:
                st = os.fstat(self.fd)
                if not stat.S_ISREG(st.st_mode):
                    raise BadIndexError(f"{path}: the clock file is not a regular file")
                if st.st_size < self.SIZE or st.st_blocks == 0:
                    fcntl.flock(self.fd, fcntl.LOCK_EX)
                    try:
                        # Zeros, or an older file padded: no valid check, so the value is
                        # taken from the index by the next append.
                        self._allocate()
                    finally:
                        fcntl.flock(self.fd, fcntl.LOCK_UN)
                self._map = mmap.mmap(self.fd, self.SIZE)
            except BaseException:
                os.close(self.fd)
                raise
        except OSError as exc:
            raise os_error(exc, path, "write the clock file") from exc
        self.pid = os.getpid()

    def _allocate(self) -> None:
        """Give the file's bytes real disk space before they are mapped: a store through
        the map into a page that has none, on a full disk, kills the process (SIGBUS)
        where a write only fails with ENOSPC."""
        size = os.fstat(self.fd).st_size
        if size < self.SIZE:
            data = bytes(self.SIZE - size)  # zeros: 0, nothing issued
            if os.pwrite(self.fd, data, size) != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.path)
        if os.fstat(self.fd).st_blocks == 0:  # a sparse file (made by ftruncate)
            try:
                os.posix_fallocate(self.fd, 0, self.SIZE)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise

    def _read(self) -> int | None:
        value, check = _CLOCK.unpack_from(self._map)
        return value if value >= 0 and check == value ^ self._check else None

    def _write(self, value: int) -> None:
        _CLOCK.pack_into(self._map, 0, value, value ^ self._check)

    def reserve(self, count: int, floor: int | None = None) -> int | None:
        """Issue ``count`` values above the file's value (and above ``floor``, when given);
        returns the first. None if the file is unreadable and no ``floor`` was given."""
        fd = self.fd
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            # _read and _write written out: this runs on every append of the fast path.
            value: int
            check: int
            value, check = _CLOCK.unpack_from(self._map)
            mark = self._check
            if value < 0 or check != value ^ mark:
                if floor is None:
                    return None
                value = 0
            if floor is not None and floor > value:
                value = floor
            last = value + count
            if last > MAX_CLOCK:
                raise StoreError(
                    "the Lamport clock would pass 2**63-1, the largest value a line may"
                    f" hold (it is at {value}): a log holds, or held, a value close to that"
                    " limit. Correct such a line by hand; if no log holds one any more,"
                    f" remove {self.path} and run `replaylog rebuild-index`, which takes"
                    " the clock from the logs again"
                )
            _CLOCK.pack_into(self._map, 0, last, last ^ mark)
            return value + 1
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def release(self, first: int, count: int) -> None:
        """Give back the values ``first`` to ``first + count - 1`` of a reservation whose
        lines were not written (a full disk): if nothing was issued after them, the clock
        goes back to where it was, so that a failed append leaves it as it found it."""
        fd = self.fd
        if fd < 0:
            return
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if self._read() == first + count - 1:
                self._write(first - 1)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def raise_to(self, value: int) -> None:
        """Make sure the clock is at least ``value`` (lines other nodes wrote, seen)."""
        fd = self.fd
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            current = self._read()
            if current is None or current < value:
                self._write(value)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def value(self) -> int:
        return self._read() or 0

    def close(self) -> None:
        if self.fd >= 0:
            self._map.close()
            os.close(self.fd)
            self.fd = -1


# --------------------------------------------------------------------------- the rules


def current(recorded: int, clock_file: ClockFile) -> int:
    """The highest value issued or seen: the larger of the index's record and the file's.
    The next append's values are above it."""
    return max(recorded, clock_file.value())


def observe(clock_file: ClockFile, value: int, record: Callable[[int], None]) -> None:
    """Raise the clock to ``value`` (SPEC section 10: every value seen in a log): the
    index's record first (``record``, in the caller's write transaction), then the file."""
    record(value)
    clock_file.raise_to(value)


def reserve(clock_file: ClockFile, count: int, recorded: int) -> int:
    """Issue ``count`` values above both the file's value and ``recorded``, the index's
    record (a missing or unreadable file is started again from it); returns the first.

    The index's record is raised when it takes the lines in (their values are then in a
    log), not here: a reservation whose lines are never written (a full disk) is given
    back (:meth:`ClockFile.release`) and leaves no value that no log backs.

    Lock order: the caller holds the SQLite write lock; the file's lock is taken here,
    never while waiting for anything."""
    first = clock_file.reserve(count, floor=recorded)
    assert first is not None  # with a floor, an unreadable file is started again
    return first
