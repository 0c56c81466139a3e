"""The replay lock beside the index (SPEC sections 4 and 5): a replay holds it while it
records outcomes, ``rebuild-index`` while it swaps the new index in."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

from ..errors import os_error
from ..posix import LOCK_EX_NB, ensure_index_folder, wait_for_lock

__all__ = ["replay_lock", "replay_lock_path"]

#: The flags of a lock or clock file: made 0600 if missing, never through a link.
_LOCK_FLAGS = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW


def replay_lock_path(index_path: str) -> str:
    """The lock a replay holds for its whole run, beside the index it records in."""
    return os.path.join(os.path.dirname(os.path.abspath(index_path)), "replay.lock")


def make_replay_lock(index_path: str) -> None:
    """Create the replay lock file of a new index (nothing if that fails: the first
    replay or rebuild that needs it makes it)."""
    with contextlib.suppress(OSError):
        os.close(os.open(replay_lock_path(index_path), _LOCK_FLAGS, 0o600))


@contextlib.contextmanager
def replay_lock(index_path: str, *, timeout: float | None) -> Iterator[bool]:
    """Hold the replay lock of an index; yields False if ``timeout`` passed first.

    A replay holds it while it records outcomes; ``rebuild-index`` holds it while it
    carries those outcomes into the new index and renames it into place, so that no
    outcome is recorded in an index that is about to be replaced. Nothing is written in
    the file: whoever waits finds the holder's process id in ``/proc/locks``.
    """
    path = replay_lock_path(index_path)
    try:
        ensure_index_folder(path, "open the replay lock")
        fd = os.open(path, _LOCK_FLAGS, 0o600)
    except OSError as exc:
        raise os_error(exc, path, "open the replay lock") from exc
    try:
        if timeout == 0.0:
            try:
                fcntl.flock(fd, LOCK_EX_NB)
                held = True
            except BlockingIOError:
                held = False
        else:
            holder = _flock_holder(fd)
            who = f" (process {holder})" if holder is not None else ""
            held = wait_for_lock(
                fd,
                fcntl.LOCK_EX,
                f"the replay running on this index{who}: {path}",
                timeout=timeout,
            )
        yield held
    finally:
        os.close(fd)


def _flock_holder(fd: int) -> int | None:
    """The process holding a ``flock`` on the file of ``fd``, as ``/proc/locks`` says
    (Linux), or None when it cannot tell."""
    try:
        inode = os.fstat(fd).st_ino
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            for line in f:
                # "1: FLOCK  ADVISORY  WRITE 4242 08:01:131090 0 EOF"
                fields = line.split()
                if len(fields) >= 6 and fields[1] == "FLOCK" and fields[4].isdigit():
                    if fields[5].rsplit(":", 1)[-1] == str(inode):
                        return int(fields[4])
    except OSError:
        pass
    return None
