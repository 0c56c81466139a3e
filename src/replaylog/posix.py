"""The file-system moves every part of replaylog makes the same way.

Open a regular file without following a symbolic link, refuse a linked folder on the way
to a log, fsync a folder, and replace a file
atomically (a temporary file in the same folder, fsynced, renamed over the old one, then
the folder fsynced), so that each promise of SPEC section 12 (no symbolic links, nothing
half-written) is kept in one place. And take a ``flock``, saying on stderr what is waited
for when another process holds it (SPEC section 3).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import sys
import time
from collections.abc import Callable
from contextlib import suppress

from .errors import StoreError

__all__ = [
    "LOCK_EX_NB",
    "LOCK_NOTICE_SECONDS",
    "ensure_index_folder",
    "flock",
    "fsync_dir",
    "fsync_file",
    "not_a_folder",
    "open_regular",
    "refuse_links",
    "replace_atomically",
    "temp_beside",
    "wait_for_lock",
]


def not_a_folder(directory: str) -> str | None:
    """The first of ``directory`` and its parents that is there and is not a folder (a
    link to nothing included)."""
    path = os.path.abspath(directory)
    while True:
        try:
            st = os.stat(path)
        except OSError:  # not there, or a parent is not a folder: look further up
            if os.path.islink(path):
                return path
            parent = os.path.dirname(path)
            if parent == path:
                return None
            path = parent
            continue
        return None if stat.S_ISDIR(st.st_mode) else path


def ensure_index_folder(index_path: str, doing: str) -> None:
    """Make the folder the index at ``index_path`` (or its lock, its temporary file) goes
    in. A file where a folder must be (``.replaylog`` made by something else) is named."""
    directory = os.path.dirname(os.path.abspath(index_path))
    try:
        os.makedirs(directory, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        blocker = not_a_folder(directory)
        if blocker is None:
            raise
        raise StoreError(
            f"cannot {doing} {index_path}: {blocker} is not a folder; move it away, or"
            " give --index (or REPLAYLOG_INDEX) a path of its own",
            path=blocker,
        ) from exc


def open_regular(
    path: str, flags: int, *, refusal: str = "a log must be a plain file", mode: int = 0o644
) -> int:
    """``os.open`` that refuses a symbolic link and anything but a regular file.

    A symbolic link or a non-regular file raises :class:`StoreError` (``refusal`` ends
    the message for the latter); any other ``OSError`` is raised as it is.
    """
    try:
        # O_NONBLOCK: opening a FIFO for reading would wait for a writer forever; on a
        # regular file it changes nothing, and anything else is refused just below.
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StoreError(
                f"{path} is a symbolic link; replaylog refuses to follow it."
                " Replace it with the real file.",
                path=path,
            ) from exc
        if exc.errno == errno.EISDIR:  # a folder opened for writing
            raise StoreError(f"{path} is not a regular file; {refusal}", path=path) from exc
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # a directory opens read-only, then fails
        os.close(fd)
        raise StoreError(f"{path} is not a regular file; {refusal}", path=path)
    return fd


def refuse_links(root: str, path: str) -> None:
    """Raise :class:`StoreError` if a folder from below ``root`` down to ``path`` is a
    symbolic link, or not a folder (the ones that do not exist yet are made real by an
    append)."""
    relative = os.path.relpath(path, root)
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        # A logs folder outside the root (an absolute --logs-dir): named by the user
        # like the root, so only the feature folder below it is looked at.
        root, relative = os.path.dirname(path), os.path.basename(path)
    current = root
    for part in relative.split(os.sep):
        if part in ("", os.curdir):
            continue
        current = os.path.join(current, part)
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreError(f"{current}: cannot look at it: {exc.strerror}", path=current) from exc
        if stat.S_ISLNK(st.st_mode):
            raise StoreError(
                f"{current} is a symbolic link; replaylog refuses to follow a link between"
                " the root and a log (it could lead anywhere). Replace it with the real"
                " folder.",
                path=current,
            )
        if not stat.S_ISDIR(st.st_mode):
            raise StoreError(
                f"{current} is not a folder, and a log can only be in a folder there: move it away",
                path=current,
            )


def fsync_dir(path: str) -> None:
    """fsync the folder ``path``, so that a file created or renamed in it stays."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str) -> None:
    """fsync the file ``path`` written through another descriptor (SQLite's)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_beside(path: str, suffix: str) -> tuple[int, str]:
    """A new hidden temporary file in the folder of ``path``: ``(fd, its path)``."""
    import tempfile  # only a rewrite needs it; the CLI's start-up stays light

    directory = os.path.dirname(os.path.abspath(path))
    return tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=suffix, dir=directory)


def replace_atomically(
    fd: int,
    tmp: str,
    path: str,
    write: Callable[[int], None],
    *,
    mode: int,
    fsync: bool = True,
    check: Callable[[], object] | None = None,
    folder_best_effort: bool = False,
) -> None:
    """Fill the temporary file ``tmp`` (open as ``fd``, from :func:`temp_beside`) with
    ``write(fd)`` and rename it over ``path``, then fsync the folder.

    The file gets ``mode`` and is fsynced before the rename (if ``fsync``); ``check`` runs
    just before the rename and may raise to keep the old file. On any failure ``path`` is
    left as it was, ``tmp`` is removed and the error is raised; ``fd`` is always closed.
    With ``folder_best_effort`` a failed fsync of the folder, after the rename is done,
    is ignored.
    """
    try:
        try:
            write(fd)
            os.fchmod(fd, mode)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if check is not None:
            check()
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    if not fsync:
        return
    try:
        fsync_dir(os.path.dirname(os.path.abspath(path)))
    except OSError:
        if not folder_best_effort:
            raise


#: How long a lock is waited for in silence before stderr says what is waited for.
#: An exclusive lock, taken only if nobody holds it (then the waiting path runs).
LOCK_EX_NB = fcntl.LOCK_EX | fcntl.LOCK_NB

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
        import threading  # (here: only a wait for a lock needs it)

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


def flock(fd: int, kind: int, path: str) -> None:
    """Lock the log ``path`` (open as ``fd``) as :func:`wait_for_lock` does, as long as it
    takes; a failure is a :class:`StoreError` naming the log."""
    try:
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)  # the usual: nobody holds it
        except BlockingIOError:
            wait_for_lock(fd, kind, f"the lock on {path}")
    except OSError as exc:  # pragma: no cover - flock on a local file does not fail
        raise StoreError(f"{path}: cannot lock the log: {exc}", path=path) from exc
