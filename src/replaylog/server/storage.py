"""The receiver's storage (SPEC section 11): its tables and every SQL statement it runs.

SQLAlchemy Core over SQLite (the default, one file) or PostgreSQL (``postgresql+psycopg``).
Alembic makes and upgrades the schema (``migrations/`` beside this module), run by
:meth:`Storage.migrate` when the server starts.

- ``events``: one row per ``(project, event_id)``: the line's JSON text as received (the
  replay client sends each log line as it is; a body laid out otherwise gives section 2's
  form of the line), its feature and sender's node id, and ``seq``, the receive sequence
  number, which only grows. Contents are compared as parsed JSON.
- ``conflicts``: a line that came with an ``event_id`` already stored with other content.
- ``idempotency_keys``: per project, sender and key (its ``key`` column holds the sender's
  node id, a newline and the key), the hash of the body and the answer given. A key is the
  hash of a batch's event ids (SPEC section 5), so two clones that replay the same events
  send the same key with different bodies (each names its own node id): scoped by sender,
  neither is taken for a reuse of the other's key.

Ordering: a reader pages by ``seq``, so a row with a smaller ``seq`` must never become
visible after a larger one. SQLite has one writer at a time. On PostgreSQL, sequence values
are taken when rows are inserted but become visible when their transaction commits, so two
ingests could commit out of order; each ingest first takes a transaction-level advisory lock
of its project, so that ingests of one project take their values and commit one after the
other (eventsourcing takes a table lock for the same reason).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    InterfaceError,
    NoSuchModuleError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from ..errors import ReceiverError, UsageError
from ..lines.canonical import same_json
from ..posix import not_a_folder

__all__ = [
    "Busy",
    "Candidate",
    "ConflictRow",
    "DEFAULT_DB_URL",
    "EventRow",
    "HEAD_REVISION",
    "IdempotencyMismatch",
    "REVISIONS",
    "Storage",
    "VERSION_TABLE",
    "conflicts",
    "events",
    "find_migrations",
    "idempotency_keys",
    "metadata",
]

DEFAULT_DB_URL = "sqlite:///replaylog-server.db"
T = TypeVar("T")

#: Every Alembic revision of ``migrations/versions``, oldest first; a test checks the list.
REVISIONS = ("s0001",)
HEAD_REVISION = REVISIONS[-1]
#: Alembic's own table, named for replaylog so that a shared PostgreSQL database can hold
#: other applications' migrations too.
VERSION_TABLE = "replaylog_server_version"


def _refuse_foreign_sqlite(path: str) -> None:
    """Raise :class:`ReceiverError` if ``path`` is a file the receiver did not make: one
    that is not a SQLite database, or a database holding tables but not the receiver's
    version table (another application's). Looked at read-only, before the receiver's
    first connection sets anything (its journal mode is kept in the file)."""
    import sqlite3
    from urllib.parse import quote

    try:
        if not os.path.getsize(path):
            return  # absent or empty: the receiver makes it
    except OSError:
        return  # (what it cannot reach, creating it says)
    try:
        con = sqlite3.connect(f"file:{quote(os.path.abspath(path))}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master")}
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise ReceiverError(
            f"{path}: cannot open the receiver's database ({exc}); replaylog changes no"
            " file it did not make: give `replaylog serve --db` a database of its own"
        ) from exc
    if tables and VERSION_TABLE not in tables:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise ReceiverError(
            f"{path} holds tables the receiver did not make ({shown}): replaylog changes no"
            " file it did not make; give `replaylog serve --db` a database of its own"
        )


# SQLite's INTEGER PRIMARY KEY is the rowid (BIGINT would not be), PostgreSQL's BIGSERIAL.
_SEQ_TYPE = BigInteger().with_variant(Integer, "sqlite")

metadata = MetaData()

events = Table(
    "events",
    metadata,
    Column("seq", _SEQ_TYPE, primary_key=True, autoincrement=True),
    Column("project", String, nullable=False),
    Column("event_id", String, nullable=False),
    Column("feature", String, nullable=False),
    Column("node_id", String, nullable=False),
    Column("line", Text, nullable=False),
    UniqueConstraint("project", "event_id", name="uq_events_project_event_id"),
    sqlite_autoincrement=True,  # a seq is never given twice, even after the last row went
)
Index("ix_events_project_feature_seq", events.c.project, events.c.feature, events.c.seq)

conflicts = Table(
    "conflicts",
    metadata,
    Column("id", _SEQ_TYPE, primary_key=True, autoincrement=True),
    Column("project", String, nullable=False),
    Column("event_id", String, nullable=False),
    Column("feature", String, nullable=False),
    Column("node_id", String, nullable=False),
    Column("line", Text, nullable=False),  # what was received, refused
    Column("line_hash", String, nullable=False),  # one row per distinct refused content
    UniqueConstraint("project", "event_id", "line_hash", name="uq_conflicts_content"),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("project", String, primary_key=True),
    Column("key", String, primary_key=True),
    Column("body_hash", String, nullable=False),
    Column("answer", Text, nullable=False),
)


class Busy(Exception):
    """The database cannot take the request now (locked, restarting, unreachable): 503."""


class IdempotencyMismatch(Exception):
    """An ``Idempotency-Key`` seen before came with another body: 422."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """A valid line of a batch, to store: its id, feature, canonical text and object."""

    event_id: str
    feature: str
    line: str
    obj: Any


class EventRow(NamedTuple):
    seq: int
    feature: str
    node_id: str
    line: str


class ConflictRow(NamedTuple):
    id: int
    event_id: str
    feature: str
    node_id: str
    line: str
    stored: str | None


def _same_content(stored: str, received: Candidate) -> bool:
    """Equal as parsed JSON, as the merge driver compares two sides' lines (SPEC section 9):
    the texts are equal, or they parse to equal JSON (another key order, other spacing or
    escapes), where ``true`` is not ``1`` and ``1.0`` is not ``1``."""
    return stored == received.line or same_json(json.loads(stored), received.obj)


def _is_busy(exc: SQLAlchemyError) -> bool:
    """Errors that say the database cannot answer now, not that the request is wrong:
    SQLite's "database is locked", PostgreSQL's refused or lost connections and admin
    shutdowns (OperationalError in both drivers), a full pool."""
    if isinstance(exc, (PoolTimeoutError, OperationalError, InterfaceError)):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


class Storage:
    """The receiver's database: one engine, thread-safe (each call takes a connection)."""

    def __init__(self, url: str = DEFAULT_DB_URL, *, busy_timeout: float = 5.0) -> None:
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise UsageError(f"--db {url!r} is not a database URL: {exc}") from exc
        self.url = parsed
        self.shown_url = parsed.render_as_string(hide_password=True)
        backend = parsed.get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise UsageError(
                f"--db {self.shown_url}: the receiver stores its events in SQLite"
                " (sqlite:///PATH) or PostgreSQL (postgresql+psycopg://...)"
            )
        self.dialect = backend
        self._sql = _DriverSql.of(backend)
        # One writer at a time within this process: SQLite serializes writers anyway, and
        # a thread waiting here wakes as soon as the lock is free, while one waiting in
        # SQLite's busy handler sleeps for growing intervals.
        self._write_lock = threading.Lock() if backend == "sqlite" else None
        self._sqlite_file = parsed.database if backend == "sqlite" else None
        try:
            if backend == "sqlite":
                self.engine = self._sqlite_engine(parsed, busy_timeout)
            else:
                if parsed.drivername == "postgresql":
                    parsed = parsed.set(drivername="postgresql+psycopg")
                self.engine = create_engine(
                    parsed,
                    pool_size=8,
                    max_overflow=8,
                    pool_timeout=busy_timeout,
                    connect_args={"connect_timeout": max(1, int(busy_timeout))},
                )
        except (NoSuchModuleError, ImportError, ArgumentError) as exc:
            raise UsageError(f"--db {self.shown_url}: {exc}") from exc

    @staticmethod
    def _sqlite_engine(url: Any, busy_timeout: float) -> Engine:
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": busy_timeout}
        )
        path = url.database
        if path and path != ":memory:":
            # The file holds a team's events: readable by its owner only, from its first byte.
            try:
                directory = os.path.dirname(os.path.abspath(path))
                os.makedirs(directory, exist_ok=True)
                os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
            except OSError as exc:
                blocker = (
                    not_a_folder(directory)
                    if isinstance(exc, (FileExistsError, NotADirectoryError))
                    else None
                )
                why = (
                    f"{blocker} is not a folder; move it away, or give --db another path"
                    if blocker is not None
                    else exc.strerror
                )
                raise ReceiverError(f"{path}: cannot create the database: {why}") from exc
        busy_ms = int(busy_timeout * 1000)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Transactions are begun by hand below (BEGIN IMMEDIATE for writes): the
            # driver's own implicit BEGIN would take the write lock too late.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout = {busy_ms}")
            cur.execute("PRAGMA journal_mode = WAL")
            # FULL: an answered batch survives a power cut, not just a killed process.
            cur.execute("PRAGMA synchronous = FULL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            immediate = conn.get_execution_options().get("replaylog_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine

    # ------------------------------------------------------------------ lifecycle

    def migrate(self) -> None:
        """Make or upgrade the schema to the head revision (Alembic, imported only now)."""
        from alembic import command
        from alembic.config import Config

        if self._sqlite_file and self._sqlite_file != ":memory:":
            _refuse_foreign_sqlite(self._sqlite_file)  # before a connection changes it
        config = Config()
        config.set_main_option("script_location", find_migrations())
        try:
            with self._write() as conn:
                if self.dialect == "postgresql":
                    # Two servers starting at once must not both create the tables.
                    conn.execute(text("SELECT pg_advisory_xact_lock(7268001, 0)"))
                revision, tables = self._revision(conn)
                self._check_revision(revision, tables)
                if revision != HEAD_REVISION:
                    config.attributes["connection"] = conn
                    command.upgrade(config, "head")
        except ReceiverError:
            raise
        except SQLAlchemyError as exc:
            raise ReceiverError(
                f"{self.shown_url}: cannot open the receiver's database: {_first_line(exc)}"
            ) from exc

    def _revision(self, conn: Connection) -> tuple[str | None, set[str]]:
        from sqlalchemy import inspect

        tables = set(inspect(conn).get_table_names())
        if VERSION_TABLE not in tables:
            return None, tables
        row = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).first()
        return (row[0] if row else None), tables

    def _check_revision(self, revision: str | None, tables: set[str]) -> None:
        ours = {"events", "conflicts", "idempotency_keys"}
        if revision is None and tables & ours:
            raise ReceiverError(
                f"{self.shown_url} holds tables named like the receiver's"
                f" ({', '.join(sorted(tables & ours))}) that it did not make: give"
                " `replaylog serve --db` a database of its own"
            )
        if revision is not None and revision not in REVISIONS:
            raise ReceiverError(
                f"{self.shown_url} was made by a newer replaylog (schema revision"
                f" {revision}): upgrade replaylog to serve it"
            )

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ transactions

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        lock = self._write_lock
        if lock is not None:
            lock.acquire()
        try:
            with self.engine.connect() as conn:
                conn = conn.execution_options(replaylog_write=True)
                with conn.begin():
                    yield conn
        finally:
            if lock is not None:
                lock.release()

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def _run(self, work: Callable[[Connection], T], *, write: bool = False) -> T:
        """``work`` in one transaction. A connection found dead (the database restarted,
        or killed it) is tried once more on a new one: nothing of the first try was
        committed, or, for an ingest, its idempotency key answers the second. Errors that
        say "not now" become :class:`Busy`."""
        for attempt in (1, 2):
            try:
                with self._write() if write else self._read() as conn:
                    return work(conn)
            except DBAPIError as exc:
                if attempt == 1 and exc.connection_invalidated:
                    continue
                if _is_busy(exc):
                    raise Busy(_first_line(exc)) from exc
                raise
            except PoolTimeoutError as exc:
                raise Busy(_first_line(exc)) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ ingest

    def ingest(
        self,
        project: str,
        node_id: str,
        entries: Sequence[Candidate | dict[str, str]],
        *,
        key: str | None = None,
        body_hash: str = "",
    ) -> bytes:
        """Store a batch's valid lines and answer ``{"results": [...]}`` as JSON bytes.

        ``entries`` are in request order: a :class:`Candidate` to store, or the result of a
        line already refused (``{"event_id", "status": "rejected", "error"}``). With
        ``key``, the answer is kept under it; the same key with the same ``body_hash``
        later gets the same answer, with another hash :class:`IdempotencyMismatch`; a key
        is the sender's (``node_id``'s) own.
        """
        batch = _Batch.of(project, node_id, entries, self._sql)  # before the write lock
        return self._run(
            lambda conn: self._ingest(conn, project, node_id, entries, key, body_hash, batch),
            write=True,
        )

    def _ingest(
        self,
        conn: Connection,
        project: str,
        node_id: str,
        entries: Sequence[Candidate | dict[str, str]],
        key: str | None,
        body_hash: str,
        batch: _Batch,
    ) -> bytes:
        if self.dialect == "postgresql":
            conn.execute(_PG_PROJECT_LOCK, {"project": project})
        if key is not None:
            key = f"{node_id}\n{key}"  # (neither may hold a newline: see the docstring)
            # Driver SQL, as the INSERT below: run for every batch, under the write lock.
            row = conn.exec_driver_sql(self._sql.select_key, (project, key)).first()
            if row is not None:
                stored_hash, answer = row
                if stored_hash != body_hash:
                    raise IdempotencyMismatch(key)
                return str(answer).encode("utf-8")
        first = batch.first
        inserted: set[str] = set()
        if first:
            # The hot path of ingest: one INSERT ... ON CONFLICT DO NOTHING RETURNING per
            # batch (see _DriverSql.insert_lines), as driver SQL (the Core statement,
            # compiled for each row, costs more than the rest of the batch's Python work).
            cursor = conn.exec_driver_sql(batch.insert, batch.params)
            inserted = {event_id for (event_id,) in cursor.fetchall()}
            if batch.stored_all is not None and len(inserted) == len(entries):
                # Every line new, each one a success: the answer made before the lock.
                return self._answer(conn, project, key, body_hash, batch.stored_all)
        stored: dict[str, str] = {}
        missing = [i for i in first if i not in inserted]
        if missing:
            for chunk in _chunks(missing, 500):
                found = conn.execute(_SELECT_LINES, {"project": project, "ids": chunk})
                stored.update((r.event_id, r.line) for r in found)
        for event_id in inserted:
            stored[event_id] = first[event_id].line
        results: list[dict[str, str]] = []
        seen: set[str] = set()
        refused: list[dict[str, str]] = []
        for entry in entries:
            if not isinstance(entry, Candidate):
                results.append(entry)
                continue
            event_id = entry.event_id
            if event_id in inserted and event_id not in seen:
                results.append({"event_id": event_id, "status": "success"})
            elif _same_content(stored[event_id], entry):
                results.append({"event_id": event_id, "status": "duplicate"})
            else:
                results.append(
                    {
                        "event_id": event_id,
                        "status": "rejected",
                        "error": "conflict: this event_id is already stored with other"
                        " content (see GET /api/v1/conflicts)",
                    }
                )
                refused.append(
                    {
                        "project": project,
                        "event_id": event_id,
                        "feature": entry.feature,
                        "node_id": node_id,
                        "line": entry.line,
                        "line_hash": hashlib.sha256(entry.line.encode("utf-8")).hexdigest(),
                    }
                )
            seen.add(event_id)
        if refused:
            conn.execute(self._conflict_insert, refused)
        return self._answer(conn, project, key, body_hash, json.dumps({"results": results}))

    def _answer(
        self, conn: Connection, project: str, key: str | None, body_hash: str, answer: str
    ) -> bytes:
        """A batch's answer, kept under its idempotency key when it has one."""
        if key is not None:
            conn.exec_driver_sql(self._sql.insert_key, (project, key, body_hash, answer))
        return answer.encode("utf-8")

    @property
    def _conflict_insert(self) -> Any:
        if self.dialect == "sqlite":
            return _SQLITE_CONFLICT_INSERT
        return _PG_CONFLICT_INSERT

    # ------------------------------------------------------------------ reading

    def events_page(
        self, project: str, *, after: int, limit: int, feature: str | None = None
    ) -> list[EventRow]:
        """Events of ``project`` with ``seq > after`` in receive order, at most ``limit``."""
        query = select(events.c.seq, events.c.feature, events.c.node_id, events.c.line).where(
            events.c.project == project, events.c.seq > after
        )
        if feature is not None:
            query = query.where(events.c.feature == feature)
        query = query.order_by(events.c.seq).limit(limit)
        return self._run(lambda conn: [EventRow(*r) for r in conn.execute(query)])

    def features(self, project: str) -> list[tuple[str, int, int]]:
        """``(feature, events, last seq)`` of every feature of ``project``, by name."""
        query = (
            select(events.c.feature, func.count(), func.max(events.c.seq))
            .where(events.c.project == project)
            .group_by(events.c.feature)
            .order_by(events.c.feature)
        )
        return self._run(
            lambda conn: [(f, int(n), int(last)) for f, n, last in conn.execute(query)]
        )

    def feature_lines(self, project: str, feature: str) -> list[str]:
        """Every stored line of one feature, in receive order."""
        query = (
            select(events.c.line)
            .where(events.c.project == project, events.c.feature == feature)
            .order_by(events.c.seq)
        )
        return self._run(lambda conn: list(conn.scalars(query)))

    def conflicts_page(self, project: str, *, after: int, limit: int) -> list[ConflictRow]:
        """Refused conflicting lines of ``project`` with their stored line, oldest first."""
        query = (
            select(
                conflicts.c.id,
                conflicts.c.event_id,
                conflicts.c.feature,
                conflicts.c.node_id,
                conflicts.c.line,
                events.c.line,
            )
            .select_from(
                conflicts.outerjoin(
                    events,
                    (events.c.project == conflicts.c.project)
                    & (events.c.event_id == conflicts.c.event_id),
                )
            )
            .where(conflicts.c.project == project, conflicts.c.id > after)
            .order_by(conflicts.c.id)
            .limit(limit)
        )
        return self._run(lambda conn: [ConflictRow(*r) for r in conn.execute(query)])

    def ping(self) -> None:
        """Raise :class:`Busy` unless the database answers."""
        self._run(lambda conn: conn.execute(text("SELECT 1")))


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc
    return (str(cause).strip().splitlines() or [type(cause).__name__])[0]


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def find_migrations() -> str:
    """The receiver's Alembic script folder, shipped inside the package."""
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "migrations")
    if not os.path.isfile(os.path.join(here, "env.py")):
        raise ReceiverError("the receiver's migrations are missing from this installation")
    return here


def _conflict_statements() -> tuple[Any, Any]:
    from sqlalchemy.dialects import postgresql, sqlite

    cols = [conflicts.c.project, conflicts.c.event_id, conflicts.c.line_hash]
    return (
        sqlite.insert(conflicts).on_conflict_do_nothing(index_elements=cols),
        postgresql.insert(conflicts).on_conflict_do_nothing(index_elements=cols),
    )


_SQLITE_CONFLICT_INSERT, _PG_CONFLICT_INSERT = _conflict_statements()


class _Batch(NamedTuple):
    """What an ingest works out of its batch before it takes the write lock."""

    first: dict[str, Candidate]  # the first line of each id: the one to store
    insert: str  # the INSERT of ``first``, and its parameters
    params: tuple[Any, ...]
    stored_all: str | None  # the answer if every line is new; None: a refused line, an id twice

    @classmethod
    def of(
        cls,
        project: str,
        node_id: str,
        entries: Sequence[Candidate | dict[str, str]],
        sql: _DriverSql,
    ) -> _Batch:
        # Later lines of an id are compared with the first like with a stored line.
        first: dict[str, Candidate] = {}
        for entry in entries:
            if isinstance(entry, Candidate) and entry.event_id not in first:
                first[entry.event_id] = entry
        insert, params = sql.insert_lines(project, node_id, list(first.values()))
        stored_all = None
        if len(first) == len(entries):  # no refused line, no id twice
            stored_all = json.dumps(
                {"results": [{"event_id": i, "status": "success"} for i in first]}
            )
        return cls(first, insert, params, stored_all)


_INSERT_HEAD = "INSERT INTO events (project, event_id, feature, node_id, line) "
_INSERT_TAIL = " ON CONFLICT (project, event_id) DO NOTHING RETURNING event_id"
# PostgreSQL: the batch's columns as three arrays, so that the statement is the same for
# every batch (psycopg converts a statement of more than 50 parameters anew each time, in
# Python: with 100 rows of five, that cost more than the rest of the ingest). Inserted in
# the batch's order, so that ``seq`` follows it.
_PG_INSERT_LINES = (
    _INSERT_HEAD
    + "SELECT %s, e, f, %s, l FROM unnest(%b::text[], %b::text[], %b::text[])"
    + " WITH ORDINALITY AS batch(e, f, l, n) ORDER BY n"
    + _INSERT_TAIL
)


class _DriverSql(NamedTuple):
    """The statements every ingest runs, as driver SQL in the backend's parameter style:
    through SQLAlchemy Core, compiling and binding them cost more than running them."""

    backend: str
    select_key: str
    insert_key: str

    @classmethod
    def of(cls, backend: str) -> _DriverSql:
        m = "?" if backend == "sqlite" else "%s"
        return cls(
            backend,
            f'SELECT body_hash, answer FROM idempotency_keys WHERE project = {m} AND "key" = {m}',
            f'INSERT INTO idempotency_keys (project, "key", body_hash, answer)'
            f" VALUES ({m}, {m}, {m}, {m})",
        )

    def insert_lines(
        self, project: str, node_id: str, lines: list[Candidate]
    ) -> tuple[str, tuple[Any, ...]]:
        """The INSERT ... ON CONFLICT DO NOTHING RETURNING of ``lines``, and its parameters."""
        if self.backend == "postgresql":
            ids = [c.event_id for c in lines]
            features = [c.feature for c in lines]
            texts = [c.line for c in lines]
            return _PG_INSERT_LINES, (project, node_id, ids, features, texts)
        # SQLite: one row of values a line (the driver keeps the statement of each size).
        params: list[str] = []
        for c in lines:
            params += (project, c.event_id, c.feature, node_id, c.line)
        values = ",".join(["(?,?,?,?,?)"] * len(lines))
        return _INSERT_HEAD + "VALUES " + values + _INSERT_TAIL, tuple(params)


_SELECT_LINES = select(events.c.event_id, events.c.line).where(
    events.c.project == bindparam("project"),
    events.c.event_id.in_(bindparam("ids", expanding=True)),
)
# Two-key form: the first key names replaylog's ingest, the second the project.
_PG_PROJECT_LOCK = text("SELECT pg_advisory_xact_lock(7268002, hashtext(:project))")
