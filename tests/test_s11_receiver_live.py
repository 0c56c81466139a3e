"""SPEC section 11, the receiver end to end: ``replaylog serve`` as a real process on
127.0.0.1, on SQLite and PostgreSQL, under bad input, load and faults.

- Bad bodies over real HTTP: each a clear answer, nothing stored from it, memory bounded
  (a gzip bomb is not inflated), the server still serving.
- Senders posting at once while the server is killed with SIGKILL and started again:
  every acknowledged event is there, every event stored exactly once.
- Real ``EventStore.replay`` clients at once, with the server killed mid-replay, the
  database busy (SQLite) or its connections killed (PostgreSQL): every event stored
  exactly once and every client's index says delivered.
"""

from __future__ import annotations

import gzip
import json
import shutil
import sqlite3
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_fixtures import (
    BATCH,
    LiveServer,
    all_events,
    application_name,
    body,
    envelope,
    terminate_pg_connections,
)

from replaylog import EventStore, TransientDeliveryError

pytestmark = pytest.mark.reliability


def _peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _gzip_bomb(size: int) -> bytes:
    """``size`` bytes of JSON whitespace, gzipped to a few hundred KiB."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b" " * (1 << 20)
    parts = [comp.compress(block) for _ in range(size >> 20)]
    return b"".join(parts) + comp.flush()


def test_bad_input_gets_clear_answers_stores_nothing_and_the_server_keeps_serving(
    db_url: str, tmp_path: Path
) -> None:
    with LiveServer(db_url, tmp_path) as server, server.client() as c:
        good = envelope(0)
        assert c.post(BATCH, content=body([good])).status_code == 200
        gz = {"Content-Encoding": "gzip"}
        bomb = _gzip_bomb(512 << 20)  # 512 MiB inflated
        assert len(bomb) < 1 << 20
        cases: list[tuple[bytes, dict[str, str], int, str]] = [
            (b"{not json", {}, 400, "not JSON"),
            (b"plain text, not gzip", gz, 400, "gzip"),
            (bomb, gz, 413, "decompressed"),
            (gzip.compress(body([envelope(i) for i in range(1001)])), gz, 413, "1000"),
            (body([dict(good, payload={"other": 1})]), {}, 200, "conflict"),
            (body([dict(envelope(5), timestamp="yesterday")]), {}, 200, "timestamp"),
        ]
        for raw, headers, status, words in cases:
            answer = c.post(BATCH, content=raw, headers=headers)
            assert answer.status_code == status, (words, answer.text)
            assert words in answer.text
            assert c.get("/health").status_code == 200
        assert [e["event"] for e in all_events(c)] == [good]
        assert len(c.get("/api/v1/conflicts").json()["conflicts"]) == 1
        assert server.proc is not None
        assert _peak_rss_mib(server.proc.pid) < 200  # the bomb was never inflated


def _sender(
    url: str, batches: list[list[dict[str, Any]]], acked: list[str], stop: threading.Event
) -> None:
    """Posts each batch until it is answered 200, with the same Idempotency-Key each time."""
    with httpx.Client(base_url=url, timeout=10) as c:
        for number, lines in enumerate(batches):
            key = f"{lines[0]['event_id']}-{number}"
            while not stop.is_set():
                try:
                    answer = c.post(BATCH, content=body(lines), headers={"Idempotency-Key": key})
                except httpx.HTTPError:
                    time.sleep(0.05)
                    continue
                if answer.status_code == 200:
                    for r in answer.json()["results"]:
                        assert r["status"] in ("success", "duplicate"), r
                        acked.append(r["event_id"])
                    break
                assert answer.status_code == 503, answer.text
                time.sleep(0.05)


def test_senders_at_once_with_the_server_killed_lose_nothing_acknowledged(
    db_url: str, tmp_path: Path, big: bool
) -> None:
    senders, batches, per = 4, (40 if big else 12), 25
    plan = [
        [[envelope(10_000 * s + 100 * b + i, node=f"n{s}") for i in range(per)]
         for b in range(batches)]
        for s in range(senders)
    ]  # fmt: skip
    server = LiveServer(db_url, tmp_path).start()
    acked: list[str] = []
    stop = threading.Event()
    threads = [
        threading.Thread(target=_sender, args=(server.url, plan[s], acked, stop))
        for s in range(senders)
    ]
    try:
        for t in threads:
            t.start()
        kills = 0
        for _ in range(3 if big else 2):
            time.sleep(0.4)
            server.kill()
            kills += 1
            time.sleep(0.2)
            server.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads)
        with server.client() as c:
            stored = [e["event"]["event_id"] for e in all_events(c)]
    finally:
        stop.set()
        server.stop()
    expected = {line["event_id"] for sender in plan for batch in sender for line in batch}
    assert len(stored) == len(set(stored)) == len(expected)  # each exactly once
    assert set(stored) == expected
    assert set(acked) <= set(stored)  # nothing acknowledged is lost
    assert kills >= 2


# --------------------------------------------------------------------------- replay clients


def _clone(tmp_path: Path, k: int, events: int) -> Path:
    root = tmp_path / f"clone{k}"
    root.mkdir()
    with EventStore(root, node_id=root.name, fsync=False) as store:
        for feature in ("alpha", "beta"):
            store.append_many(
                feature,
                [{"event_type": "Created", "aggregate_id": f"WP{i:03d}"} for i in range(events)],
            )
    return root


def _replay_until_done(root: Path, url: str, errors: list[BaseException]) -> None:
    try:
        with EventStore(root, node_id=root.name, fsync=False) as store:
            for _ in range(60):
                try:
                    report = store.replay(url, batch_size=20, max_retries=5, backoff_base=0.05)
                except TransientDeliveryError:
                    time.sleep(0.2)
                    continue
                if report.pending == 0:
                    return
            raise AssertionError(f"{root}: events still pending")
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)


def _check_every_event_once_and_delivered(server: LiveServer, roots: list[Path]) -> None:
    expected: dict[str, tuple[str, str]] = {}  # event_id: (feature, sender's node id)
    for root in roots:
        with EventStore(root, fsync=False) as store:
            totals = store.status()["totals"]
            assert totals["delivered"] == totals["events"] and totals["failed"] == 0, totals
            for feature in store.features():
                expected.update((e.event_id, (feature, root.name)) for e in store.read(feature))
    with server.client() as c:
        stored = all_events(c)
    ids = [e["event"]["event_id"] for e in stored]
    assert len(ids) == len(set(ids)) == len(expected)
    assert {e["event"]["event_id"]: (e["feature"], e["node_id"]) for e in stored} == expected


def _replay_all(roots: list[Path], url: str, during: Any = None) -> None:
    errors: list[BaseException] = []
    threads = [threading.Thread(target=_replay_until_done, args=(r, url, errors)) for r in roots]
    for t in threads:
        t.start()
    if during is not None:
        during()
    for t in threads:
        t.join(300)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors


def test_clients_replaying_at_once_deliver_every_event_exactly_once(
    db_url: str, tmp_path: Path, big: bool
) -> None:
    roots = [_clone(tmp_path, k, 300 if big else 60) for k in range(4)]
    with LiveServer(db_url, tmp_path) as server:
        _replay_all(roots, server.url)
        _check_every_event_once_and_delivered(server, roots)


def test_a_second_clone_of_the_same_logs_replays_them_as_delivered_not_failed(
    tmp_path: Path,
) -> None:
    first = _clone(tmp_path, 0, 25)
    second = tmp_path / "clone1"
    second.mkdir()
    shutil.copytree(first / "kitty-specs", second / "kitty-specs")  # the same events, pulled
    with LiveServer(None, tmp_path) as server:
        reports = []
        for root in (first, second):
            with EventStore(root, node_id=root.name, fsync=False) as store:
                reports.append(store.replay(server.url, batch_size=10))
                totals = store.status()["totals"]
            assert totals["delivered"] == totals["events"] == 50, (root, totals)
        # The second clone's batches have the first's idempotency keys (the same event
        # ids) but name another sender: answered as duplicates, so accepted.
        assert [(r.accepted, r.rejected) for r in reports] == [(50, 0), (50, 0)]
        with server.client() as c:
            assert len(all_events(c)) == 50


def test_the_server_killed_mid_replay_and_started_again_loses_nothing(
    db_url: str, tmp_path: Path, big: bool
) -> None:
    per = 400 if big else 150
    roots = [_clone(tmp_path, k, per) for k in range(3)]
    total = 3 * 2 * per
    server = LiveServer(db_url, tmp_path).start()
    stored_at_kills: list[int] = []

    def stored() -> int:
        with server.client() as c:
            return sum(f["events"] for f in c.get("/api/v1/features").json()["features"])

    def kill_and_restart() -> None:
        # Kill once a quarter, then half, then three quarters of the events are in.
        for share in (0.25, 0.5, 0.75):
            deadline = time.monotonic() + 60
            while (count := stored()) < share * total and time.monotonic() < deadline:
                time.sleep(0.01)
            stored_at_kills.append(count)
            server.kill()
            time.sleep(0.2)
            server.start()

    try:
        _replay_all(roots, server.url, kill_and_restart)
        _check_every_event_once_and_delivered(server, roots)
    finally:
        server.stop()
    assert any(count < total for count in stored_at_kills), stored_at_kills  # mid-replay


def test_a_busy_sqlite_database_is_waited_for_and_nothing_is_lost(tmp_path: Path) -> None:
    path = tmp_path / "server.db"
    roots = [_clone(tmp_path, k, 40) for k in range(2)]
    with LiveServer(f"sqlite:///{path}", tmp_path, busy_timeout=0.2) as server:
        blocker = sqlite3.connect(path, isolation_level=None)

        def hold_the_write_lock() -> None:
            blocker.execute("BEGIN IMMEDIATE")  # another writer, for 2 s
            time.sleep(2.0)
            blocker.execute("ROLLBACK")

        try:
            _replay_all(roots, server.url, hold_the_write_lock)
        finally:
            blocker.close()
        _check_every_event_once_and_delivered(server, roots)


def test_postgresql_connections_killed_during_replay_lose_nothing(tmp_path: Path) -> None:
    from server_fixtures import pg_schema_url

    with pg_schema_url() as url:
        roots = [_clone(tmp_path, k, 150) for k in range(3)]
        with LiveServer(url, tmp_path) as server:

            def kill_connections() -> None:
                for _ in range(10):
                    time.sleep(0.15)
                    terminate_pg_connections(application_name(url))

            _replay_all(roots, server.url, kill_connections)
            _check_every_event_once_and_delivered(server, roots)


def test_json_answers_parse(tmp_path: Path) -> None:
    """The pull API's hand-spliced JSON is JSON, with names that need escaping too."""
    with LiveServer(f"sqlite:///{tmp_path / 's.db'}", tmp_path) as server, server.client() as c:
        raw = json.dumps({"events": [envelope(0)], "features": ["a.b_c-d"], "node_id": 'n"\\x'})
        assert c.post(BATCH, content=raw).status_code == 200
        event = c.get("/api/v1/events").json()["events"][0]
        assert event["node_id"] == 'n"\\x' and event["feature"] == "a.b_c-d"
