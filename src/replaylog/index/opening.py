"""Opening the index (SPEC sections 4 and 12): make its file, refuse one that is not
replaylog's, check its revision, create or migrate its schema, switch it to WAL."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import stat
import time
from collections.abc import Iterator

from ..errors import (
    REBUILD_HINT,
    BadIndexError,
    DiskError,
    ReplaylogError,
    database_error,
    os_error,
    translate,
)
from ..posix import ensure_index_folder, open_regular, wait_for_lock
from .locks import make_replay_lock
from .sql import (
    ALEMBIC_REVISION,
    BEGIN_IMMEDIATE,
    BUSY_TIMEOUT,
    COMMIT,
    JOURNAL_WAL,
    LIST_TABLES,
    ROLLBACK,
    SCHEMA_SQL,
    STAMP_REVISION,
    SYNCHRONOUS_NORMAL,
    TABLES,
)

__all__ = [
    "HEAD_REVISION",
    "REVISIONS",
    "connect",
    "create_schema",
    "find_migrations",
    "foreign_file",
    "is_index_place",
    "revision",
    "run_migrations",
    "shared_lock",
]

#: Every Alembic revision of ``migrations/versions``, oldest first; a test checks the list.
REVISIONS = ("0001", "0002")
HEAD_REVISION = REVISIONS[-1]

_NOT_OURS_HINT = (
    "replaylog changes no file it did not make: give --index (or REPLAYLOG_INDEX) a path"
    " of its own, or move this file away"
)


def is_index_place(path: str) -> bool:
    """True for ``.../.replaylog/queue.db``: replaylog's own place, so a file there is its
    index, whatever it holds, and may be rebuilt."""
    path = os.path.abspath(path)
    return os.path.basename(path) == "queue.db" and (
        os.path.basename(os.path.dirname(path)) == ".replaylog"
    )


def _hint(path: str) -> str:
    """What to do about an index file that cannot be used: rebuild it, if it is ours."""
    return REBUILD_HINT if foreign_file(path) is None else _NOT_OURS_HINT


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
    import urllib.parse  # only to tell a foreign file: the open of an index stays light

    uri = f"file:{urllib.parse.quote(path)}"
    # Read-only first; then as an immutable file, which needs no shared-memory file
    # (none can be made on a full or read-only disk).
    for mode in ("?mode=ro", "?mode=ro&immutable=1"):
        try:
            conn = sqlite3.connect(uri + mode, uri=True)
            try:
                return {r[0] for r in conn.execute(LIST_TABLES)}
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
    except (FileNotFoundError, NotADirectoryError):
        return None  # not there (a file where its folder must be is named when it is made)
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


def _prepare_dir(path: str) -> None:
    ensure_index_folder(path, "open the index")
    directory = os.path.dirname(os.path.abspath(path))
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


def connect(path: str) -> sqlite3.Connection:
    """Open (creating it if needed) the index at ``path``, at the head revision, in WAL
    mode; a foreign or newer database is refused before anything changes it."""
    created = False
    try:
        _prepare_dir(path)
        # Create the file ourselves so that it is 0600 from its first byte; SQLite
        # gives its -wal and -shm files the same mode.
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            created = True
        except FileExistsError:
            # A FIFO, a folder or a device is never opened as a file (a FIFO would hang
            # SQLite or fail as "an I/O error"): refused, naming what it is.
            _refuse_special(path, os.stat(path))
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
            try:
                _refuse_special(path, os.fstat(fd))  # replaced in between
            finally:
                os.close(fd)
        else:
            os.close(fd)
    except OSError as exc:
        raise os_error(exc, path, "open the index") from exc
    try:
        # Used by one thread (each thread of a store has its own, see store._ThreadState),
        # but closed by whichever thread closes the store.
        conn = sqlite3.connect(path, isolation_level=None, timeout=60.0, check_same_thread=False)
    except sqlite3.Error as exc:
        raise _open_error(exc, path) from exc
    try:
        conn.execute(BUSY_TIMEOUT)
        # Refuse a foreign or newer database before anything changes it: switching
        # to WAL rewrites the file's header, and such a file must be left as it was.
        _check_schema(conn, path, migrate=False)
        _switch_to_wal(conn)
        # The index can always be rebuilt from the logs, so a commit need not wait
        # for the disk; WAL keeps it consistent after a crash all the same.
        conn.execute(SYNCHRONOUS_NORMAL)
        _check_schema(conn, path)
    except sqlite3.DatabaseError as exc:
        conn.close()
        if created:
            _forget_empty(path)
        raise _open_error(exc, path) from exc
    except BaseException:
        conn.close()
        raise
    if created:
        # The replay lock is made with the index, not by the first rebuild or replay
        # that needs it: a rebuild that fails then leaves no new file behind.
        make_replay_lock(path)
    return conn


_SPECIAL_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _refuse_special(path: str, st: os.stat_result) -> None:
    """:class:`BadIndexError` if ``st`` is not a regular file's: the index is one."""
    if stat.S_ISREG(st.st_mode):
        return
    kind = next((name for test, name in _SPECIAL_KINDS if test(st.st_mode)), "another kind of file")
    raise BadIndexError(
        f"{path} is not a replaylog index (it is not a regular file: it is {kind});"
        f" {_NOT_OURS_HINT}"
    )


def _forget_empty(path: str) -> None:
    """Remove the index file this process created when it is still empty (a full or
    read-only disk refused its first page): leave the folder as it was."""
    with contextlib.suppress(OSError):
        if os.path.getsize(path) == 0:
            os.unlink(path)


def revision(conn: sqlite3.Connection) -> tuple[str | None, set[str]]:
    """The index's Alembic revision (None if it has none) and the names of its tables."""
    tables = {r[0] for r in conn.execute(LIST_TABLES)}
    if "alembic_version" not in tables:
        return None, tables
    row = conn.execute(ALEMBIC_REVISION).fetchone()
    return (row[0] if row else None), tables


def _check_schema(conn: sqlite3.Connection, path: str, *, migrate: bool = True) -> None:
    found, tables = revision(conn)
    if found == HEAD_REVISION and TABLES <= tables:
        return
    if found == HEAD_REVISION:
        # Another application's Alembic database whose revision id matches ours.
        raise BadIndexError(
            f"{path} is not a replaylog index (tables {', '.join(sorted(tables))}); {_hint(path)}"
        )
    if found is None and tables - {"alembic_version"}:
        raise BadIndexError(
            f"{path} holds tables that are not a replaylog index"
            f" ({', '.join(sorted(tables))}); {_hint(path)}"
        )
    if found is not None and found not in REVISIONS:
        raise BadIndexError(
            f"{path} was written by a newer replaylog (schema revision {found});"
            f" upgrade replaylog, or {REBUILD_HINT}"
        )
    if not migrate:
        return
    if found is None:
        create_schema(conn)
    else:
        run_migrations(conn, path)
    if revision(conn)[0] != HEAD_REVISION:  # pragma: no cover - a broken migration
        raise BadIndexError(f"{path}: migration did not reach {HEAD_REVISION}")


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the HEAD schema in an empty index, stamped as Alembic would stamp it."""
    conn.execute(BEGIN_IMMEDIATE)
    try:
        # Looked at again under the write lock: another process may have just made it.
        if revision(conn) == (None, set()):
            for statement in SCHEMA_SQL:
                conn.execute(statement)
            conn.execute(STAMP_REVISION, (HEAD_REVISION,))
        conn.execute(COMMIT)
    except BaseException:
        if conn.in_transaction:
            conn.execute(ROLLBACK)
        raise


def find_migrations() -> str:
    """The Alembic script folder: shipped inside the package, or the repository's."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for candidate in (
        os.path.join(package, "migrations"),
        os.path.join(os.path.dirname(os.path.dirname(package)), "migrations"),
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
        conn.execute(BEGIN_IMMEDIATE)
        try:
            if revision(conn)[0] != HEAD_REVISION:
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
            if conn.in_transaction:
                conn.execute(COMMIT)
        except Exception as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute(ROLLBACK)
            mapped = translate(exc, index=path, doing="upgrade the index")
            if isinstance(mapped, DiskError):
                raise mapped from exc
            raise BadIndexError(
                f"{path}: cannot upgrade the index ({exc}); {REBUILD_HINT}"
            ) from exc


def _switch_to_wal(conn: sqlite3.Connection) -> None:
    """Put the index in WAL mode (stored in the file, so it is done once per file).

    Processes switching a new file at the same moment can get "database is locked" at
    once: SQLite does not wait on its busy timeout in that deadlock. The loser retries.
    """
    mode = None
    for attempt in range(200):
        try:
            mode = conn.execute(JOURNAL_WAL).fetchone()
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 199:
                raise
            time.sleep(0.001 * (1 + attempt % 20))
    if mode is None or mode[0].lower() != "wal":
        raise sqlite3.DatabaseError("cannot switch the index to WAL mode")


@contextlib.contextmanager
def shared_lock(path: str) -> Iterator[None]:
    """Hold a shared ``flock`` on the log at ``path`` (nothing, if there is no log)."""
    while True:
        try:
            fd = open_regular(path, os.O_RDONLY)
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
