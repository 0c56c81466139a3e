"""Repairing a log's torn tail (SPEC section 3): complete it, or move it aside."""

from __future__ import annotations

import errno
import fcntl
import os
import time
from contextlib import suppress

from ..errors import os_error
from ..lines.canonical import MAX_LINE_BYTES
from ..posix import flock, fsync_dir, open_regular
from .paths import log_path
from .read import last_newline, parse_line
from .write import tail_state

__all__ = ["repair_log"]

_CHUNK = 1 << 20


def repair_log(feature_dir: str | os.PathLike[str], *, fsync: bool = True) -> str | None:
    """Fix a torn tail (SPEC section 3). Returns the path the torn bytes went to, or None.

    A valid but unterminated last line only gets its newline. An invalid one is moved
    to ``status.events.jsonl.torn-<UTC timestamp>`` beside the log and the log is cut
    back to its last complete line. A bad line in the middle is never touched.
    """
    path = log_path(feature_dir)
    try:
        fd = open_regular(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise os_error(exc, path, "repair the log") from exc
    try:
        flock(fd, fcntl.LOCK_EX, path)
        size = os.fstat(fd).st_size
        start, torn = tail_state(fd, size)
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
            start = last_newline(fd, size) + 1
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
