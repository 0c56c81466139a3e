"""Shared test options, and the fixtures and helpers that several test files use.

Long runs (the soak of many replays against a faulty server, many SIGKILLs, thousands
of events per process) have a small default size so that the whole suite stays quick.
``pytest --big`` runs them at full size (see the README, "Guarantees").
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from replaylog import EVENTS_FILENAME, Event, EventStore

#: The real spec-kitty logs (SPEC section 10): ``shared/`` is beside the repository
#: (CI puts a copy next to its clone). Read-only: copy a feature before writing to it.
SPEC_KITTY_CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus" / "spec-kitty"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--big",
        action="store_true",
        default=False,
        help="run the reliability tests (soak, kills, concurrency) at full size",
    )


@pytest.fixture
def big(request: pytest.FixtureRequest) -> bool:
    """True when the run asked for full-size reliability tests (``pytest --big``)."""
    return bool(request.config.getoption("--big"))


@pytest.fixture(scope="session")
def spec_kitty_corpus() -> Path:
    """The folder of real spec-kitty logs (its ``head/`` and ``v2.0.0/``), read-only."""
    if not (SPEC_KITTY_CORPUS / "head" / "kitty-specs").is_dir():
        pytest.skip(
            f"no spec-kitty corpus at {SPEC_KITTY_CORPUS}: put shared/ beside the repository"
        )
    return SPEC_KITTY_CORPUS


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No REPLAYLOG_* setting of the caller's, and fsync off (for tests in this process)."""
    for name in list(os.environ):
        if name.startswith("REPLAYLOG_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("REPLAYLOG_FSYNC", "0")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The project root: it exists (a --root that does not is refused, SPEC section 12)."""
    path = tmp_path / "proj"
    path.mkdir()
    return path


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child ``replaylog``: no REPLAYLOG_* of the caller's, fsync off."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLAYLOG_")}
    env["REPLAYLOG_FSYNC"] = "0"  # durability is not what these tests are about
    env.update(extra)
    return env


def log_of(root: Path, feature: str = "feat") -> Path:
    return root / "kitty-specs" / feature / EVENTS_FILENAME


def clock_file(root: Path) -> Path:
    return root / ".replaylog" / "queue.db-clock"


def new_event(n: int, **payload: Any) -> Event:
    """An event with Lamport value ``n`` (so lines can be written by hand)."""
    return Event.new("WPStatusChanged", f"WP{n:02d}", {"n": n, **payload}, lamport_clock=n)


def lines_of(*events: Event) -> list[bytes]:
    return [e.to_line() for e in events]


def write_log(feature: Path, *parts: bytes) -> Path:
    feature.mkdir(parents=True, exist_ok=True)
    path = feature / EVENTS_FILENAME
    path.write_bytes(b"".join(parts))
    return path


def typed(value: Any) -> str:
    """A text that tells 1 from 1.0 from true, which == does not."""
    return json.dumps(value, sort_keys=True)


# The EventStore tests' (test_s04_index_store.py, test_s07_api.py): a store over the
# module's ``root``, and what its index holds.

NOW = "2024-01-01T00:00:00Z"


@pytest.fixture
def store(root: Path) -> Iterator[EventStore]:
    with EventStore(root, fsync=False) as s:
        yield s


def log_file(root: Path, feature: str) -> Path:
    return root / "kitty-specs" / feature / EVENTS_FILENAME


def foreign_line(lamport: int, *, node_id: str = "remote-node", **payload: Any) -> bytes:
    """A canonical line as another machine's replaylog would have written it."""
    return Event.new("Remote", "agg", payload, node_id=node_id, lamport_clock=lamport).to_line()


def write_by_hand(root: Path, feature: str, *lines: bytes) -> None:
    path = log_file(root, feature)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        f.write(b"".join(lines))


EVENT_COLUMNS = (
    'feature, line, "offset", length, event_id, event_type, aggregate_id, node_id, lamport,'
    " status, retry_count, last_retry_at, last_error"
)


def event_rows(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    return conn.execute(f"SELECT {EVENT_COLUMNS} FROM events ORDER BY feature, line").fetchall()


def log_rows(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    """How far each log is indexed (where the next catch-up resumes)."""
    return conn.execute(
        "SELECT feature, size, lines, max_lamport FROM logs ORDER BY feature"
    ).fetchall()


def snapshot(store: EventStore) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], int]:
    """What the index knows, after catching up: events, per-log progress, the clock."""
    store.status()
    conn = store.index.conn
    return event_rows(conn), log_rows(conn), store.index.clock()


def rebuilt_elsewhere(
    root: Path, index_path: Path
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], int]:
    """A fresh index of the logs under ``root``, built by rebuild-index at ``index_path``."""
    with EventStore(root, index_path=index_path, fsync=False) as other:
        other.rebuild_index()
        conn = other.index.conn
        return event_rows(conn), log_rows(conn), other.index.clock()


def record(
    store: EventStore,
    *,
    accepted: Sequence[str] = (),
    rejected: dict[str, str] | None = None,
    transient: tuple[list[str], str] | None = None,
) -> None:
    """Apply a replay answer the way replay does: one transaction in the index."""
    store.status()
    rows_of: dict[str, list[tuple[str, int | None]]] = {}
    query = "SELECT feature, event_id, id FROM events"
    for feature, event_id, row_id in store.index.conn.execute(query):
        rows_of.setdefault(event_id, []).append((feature, row_id))
    with store.index.write():
        store.delivery.record(
            accepted=accepted,
            rejected=rejected or {},
            transient=transient,
            now=NOW,
            rows_of=rows_of,
        )


def states(store: EventStore) -> dict[str, tuple[str, int, str | None]]:
    store.status()
    return {
        eid: (status, retries, error)
        for eid, status, retries, error in store.index.conn.execute(
            "SELECT event_id, status, retry_count, last_error FROM events"
        )
    }


# The receiver's fixtures (db_url over SQLite and PostgreSQL, tokens_file).
pytest_plugins = ["server_fixtures"]
