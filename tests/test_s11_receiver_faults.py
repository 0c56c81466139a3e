"""SPEC section 11: the receiver under contention and database faults, in process.

- Paging never skips an event committed after a page was read, on both databases, also
  when two ingests overlap (PostgreSQL would commit them out of sequence order without
  the project lock).
- A busy SQLite file (another writer holds it) is 503 with ``Retry-After``, never 500.
- PostgreSQL connections killed (``pg_terminate_backend``) are replaced without an error;
  PostgreSQL unreachable is 503 with ``Retry-After``, and the server serves again once it
  is back.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_fixtures import (
    AppClient,
    TcpProxy,
    all_events,
    application_name,
    body,
    envelope,
    pg_schema_url,
    terminate_pg_connections,
)
from sqlalchemy.engine import make_url

from replaylog.server import Storage, create_app
from replaylog.server.ingest import parse_batch
from replaylog.server.storage import _Batch


def _entries(lines: list[dict[str, object]], node: str = "n") -> list[object]:
    return list(parse_batch(body(lines, node=node))[1])


def _drain(storage: Storage, after: int) -> tuple[list[str], int]:
    ids: list[str] = []
    while True:
        rows = storage.events_page("default", after=after, limit=1000)
        if not rows:
            return ids, after
        ids += [json.loads(r.line)["event_id"] for r in rows]
        after = rows[-1].seq


@pytest.fixture
def storage(db_url: str) -> Iterator[Storage]:
    s = Storage(db_url)
    s.migrate()
    yield s
    s.close()


def test_paging_never_skips_an_event_committed_after_a_page_was_read(storage: Storage) -> None:
    slow = [envelope(i) for i in range(3)]
    fast = [envelope(10 + i) for i in range(3)]
    slow_inserted = threading.Event()
    release = threading.Event()

    def slow_ingest() -> None:
        # An ingest that has taken its sequence numbers but not committed yet.
        with storage._write() as conn:
            entries = _entries(slow)
            batch = _Batch.of("default", "slow", entries, storage._sql)  # type: ignore[arg-type]
            storage._ingest(conn, "default", "slow", entries, None, "", batch)  # type: ignore[arg-type]
            slow_inserted.set()
            release.wait(30)

    t_slow = threading.Thread(target=slow_ingest)
    t_slow.start()
    assert slow_inserted.wait(30)
    t_fast = threading.Thread(
        target=lambda: storage.ingest("default", "fast", _entries(fast))  # type: ignore[arg-type]
    )
    t_fast.start()
    t_fast.join(1.5)  # it may not commit before the slow one: it waits for it
    seen, cursor = _drain(storage, 0)  # a reader pages while the slow one is open
    release.set()
    t_slow.join(30)
    t_fast.join(30)
    more, cursor = _drain(storage, cursor)
    seen += more
    assert sorted(seen) == sorted(e["event_id"] for e in slow + fast)


def test_concurrent_ingests_and_a_pager_see_every_event_once(storage: Storage) -> None:
    writers, batches, per = 4, 8, 20
    done = threading.Event()
    seen: list[str] = []
    errors: list[BaseException] = []

    def write(w: int) -> None:
        try:
            for b in range(batches):
                lines = [envelope(1000 * w + 100 * b + i) for i in range(per)]
                storage.ingest("default", f"node-{w}", _entries(lines))  # type: ignore[arg-type]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def read() -> None:
        cursor = 0
        while not done.is_set():
            ids, cursor = _drain(storage, cursor)
            seen.extend(ids)
        ids, cursor = _drain(storage, cursor)
        seen.extend(ids)

    reader = threading.Thread(target=read)
    reader.start()
    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    done.set()
    reader.join(60)
    assert not errors
    assert len(seen) == len(set(seen)) == writers * batches * per


def test_a_busy_sqlite_file_is_503_with_retry_after_and_stores_nothing(tmp_path: Path) -> None:
    path = tmp_path / "server.db"
    app = create_app(f"sqlite:///{path}", busy_timeout=0.3)
    client = AppClient(app)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process writing, for longer than the timeout
        answer = client.post(content=body([envelope(0)]))
        assert answer.status_code == 503, answer.text
        assert answer.headers["Retry-After"] == "1"
        assert "busy" in answer.json()["error"]
        other.execute("ROLLBACK")
        assert client.post(content=body([envelope(0)])).json()["results"][0]["status"] == (
            "success"
        )
        assert len(all_events(client)) == 1
    finally:
        other.close()
        client.close()
        app.state.receiver.storage.close()


def test_killed_postgresql_connections_are_replaced_without_an_error() -> None:
    with pg_schema_url() as url:
        app = create_app(url)
        client = AppClient(app)
        try:
            for k in range(5):
                assert client.post(content=body([envelope(k)])).status_code == 200
                assert client.get("/api/v1/features").status_code == 200
                assert terminate_pg_connections(application_name(url)) >= 1
            # Every pooled connection was killed at least once: each answer still came.
            assert len(all_events(client)) == 5
        finally:
            client.close()
            app.state.receiver.storage.close()


def test_postgresql_unreachable_is_503_with_retry_after_then_served_again() -> None:
    with pg_schema_url() as url:
        parsed = make_url(url)
        proxy = TcpProxy((parsed.host or "127.0.0.1", parsed.port or 5432)).up()
        via = parsed.set(port=proxy.port).render_as_string(hide_password=False)
        app = create_app(via, busy_timeout=2.0)
        client = AppClient(app)
        try:
            assert client.post(content=body([envelope(0)])).status_code == 200
            proxy.down()  # the database goes away, as in a restart
            for request in (
                lambda: client.post(content=body([envelope(1)])),
                lambda: client.get("/api/v1/events"),
                lambda: client.get("/health"),
            ):
                answer = request()
                assert answer.status_code == 503, answer.text
                assert answer.headers["Retry-After"] == "1"
            proxy.up()  # back
            assert client.post(content=body([envelope(1)])).status_code == 200
            assert client.get("/health").status_code == 200
            assert len(all_events(client)) == 2
        finally:
            proxy.down()
            client.close()
            app.state.receiver.storage.close()
