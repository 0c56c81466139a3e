"""SPEC section 4 through :class:`EventStore`: the index as a cache of the logs, rebuilt
and caught up, and the Lamport clock.

The index catches up with lines another process, a hand or a merge added, reading only
the new bytes, and re-indexes a log that was rewritten; a rebuilt index equals an
incrementally kept one and keeps delivery state; clock values are never reused, also
across processes, indexes and a lost clock file. No network here: delivery state is set
through the index itself, as a replay run would.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    NOW,
    clock_file,
    event_rows,
    foreign_line,
    log_file,
    rebuilt_elsewhere,
    record,
    snapshot,
    states,
    write_by_hand,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replaylog import Event, EventStore, StoreError, append_event
from replaylog.index import Index
from replaylog.lines.ids import local_node_id


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The project root: it exists (the store refuses one that does not, as the CLI does)."""
    path = tmp_path / "proj"
    path.mkdir()
    return path


@pytest.fixture
def bytes_read(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], int]:
    """Count the bytes read from a file (by ``os.pread``, as the log code reads) from now on."""
    tally: dict[int, int] = {}
    real = os.pread

    def counting(fd: int, size: int, offset: int) -> bytes:
        data = real(fd, size, offset)
        inode = os.fstat(fd).st_ino
        tally[inode] = tally.get(inode, 0) + len(data)
        return data

    monkeypatch.setattr(os, "pread", counting)

    def taken(path: Path) -> int:
        return tally.pop(path.stat().st_ino, 0)

    return taken


# --------------------------------------------------------------------------- catch-up


_EXTERNAL = """
import sys
from replaylog.lines.envelope import Event
from replaylog.log import append_event
for i in range(int(sys.argv[2])):
    append_event(sys.argv[1], Event.new("Ext", "WP", {"i": i}, node_id="other-box",
                 lamport_clock=500 + i), fsync=False)
"""


def test_catch_up_takes_in_lines_another_process_appended(store: EventStore, root: Path) -> None:
    store.append("f1", "T", "A")
    assert store.status()["features"]["f1"]["events"] == 1
    for feature in ("f1", "f-new"):
        result = subprocess.run(
            [sys.executable, "-c", _EXTERNAL, str(root / "kitty-specs" / feature), "3"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
    status = store.status()
    assert status["features"]["f1"]["events"] == 4
    assert status["features"]["f-new"]["events"] == 3
    assert status["lamport_clock"] == 502
    assert [e.node_id for e in store.pending("f1")] == [store.node_id] + ["other-box"] * 3
    assert store.append("f1", "T", "B").lamport_clock == 503
    assert snapshot(store) == rebuilt_elsewhere(root, root.parent / "other.db")


def test_catch_up_takes_in_lines_written_by_hand(store: EventStore, root: Path) -> None:
    store.append("f1", "T", "A")
    store.status()
    write_by_hand(root, "f1", foreign_line(9), b"\n", foreign_line(3))
    status = store.status()
    assert status["features"]["f1"]["events"] == 3
    assert status["lamport_clock"] == 9
    assert snapshot(store) == rebuilt_elsewhere(root, root.parent / "other.db")


def test_an_empty_log_indexed_then_written_by_hand_is_taken_in(
    store: EventStore, root: Path
) -> None:
    # The catch-up of a log with nothing to read reads nothing (SPEC section 8): its
    # progress is still recorded, so what is written to it later is taken in.
    log = log_file(root, "f1")
    log.parent.mkdir(parents=True)
    log.write_bytes(b"")
    status = store.status()
    assert status["features"]["f1"]["events"] == 0
    write_by_hand(root, "f1", foreign_line(4), foreign_line(2))
    status = store.status()
    assert status["features"]["f1"]["events"] == 2
    assert status["lamport_clock"] == 4
    assert snapshot(store) == rebuilt_elsewhere(root, root.parent / "other.db")


def test_the_catch_up_skips_reading_only_a_regular_file_with_nothing_new(
    root: Path,
) -> None:
    # The check that lets the catch-up read nothing of an empty log looks at the path
    # itself: a FIFO (or a folder) in a log's place has no size to trust, and goes to
    # the reader, which refuses it, rather than being taken for an empty log.
    from replaylog.index import catchup
    from replaylog.log.read import Unclean

    log = log_file(root, "f1")
    log.parent.mkdir(parents=True)
    log.write_bytes(b"")
    assert list(catchup._chunks(str(log), 0, 0, True)) == []  # read nothing
    log.unlink()
    os.mkfifo(log)
    with pytest.raises(Unclean):
        list(catchup._chunks(str(log), 0, 0, True))
    log.unlink()
    log.mkdir()
    with pytest.raises(Unclean):
        list(catchup._chunks(str(log), 0, 0, True))


def test_catch_up_reads_only_the_new_bytes(
    store: EventStore, root: Path, bytes_read: Callable[[Path], int]
) -> None:
    # Besides the new lines, catch-up may look at the first 64 KiB and the last line
    # (a few times), to tell a log that grew from one that was rewritten. The log is
    # far bigger than that.
    allowance = 4 * 64 * 1024
    store.append_many("f1", [{"event_type": "T", "aggregate_id": "A" * 100}] * 4000)
    store.append("f2", "T", "A")
    path = log_file(root, "f1")
    assert path.stat().st_size > 3 * allowance
    store.status()
    ids_before = store.index.conn.execute("SELECT id, event_id FROM events ORDER BY id").fetchall()
    bytes_read(path)

    new = foreign_line(5000) + foreign_line(5001) + foreign_line(5002)
    write_by_hand(root, "f1", new)
    assert store.status()["features"]["f1"]["events"] == 4003
    assert len(new) <= bytes_read(path) <= len(new) + allowance
    size, lines, max_lamport = store.index.progress("f1") or (0, 0, 0)
    assert (size, lines, max_lamport) == (path.stat().st_size, 4003, 5002)
    ids_after = store.index.conn.execute("SELECT id, event_id FROM events ORDER BY id").fetchall()
    assert ids_after[: len(ids_before)] == ids_before

    # Nothing new: nothing is read at all (pending() reads the lines it returns, so it
    # is not part of this check).
    store.status()
    store.requeue()
    assert bytes_read(path) == 0

    # An append through the store catches up with the new lines only, too.
    new = foreign_line(6000)
    write_by_hand(root, "f1", new)
    assert store.append("f1", "T", "B").lamport_clock == 6001
    assert len(new) <= bytes_read(path) <= len(new) + allowance
    assert snapshot(store) == rebuilt_elsewhere(root, root.parent / "other.db")


def test_merged_log_that_extends_ours_is_taken_in_as_an_append(
    store: EventStore, root: Path
) -> None:
    """The merge driver writes OURS + new lines of THEIRS over the log (section 9)."""
    ours = store.append_many("f1", [{"event_type": "T", "aggregate_id": "A"}] * 20)
    record(store, accepted=[ours[0].event_id])
    ids_before = store.index.conn.execute("SELECT id, event_id FROM events ORDER BY id").fetchall()
    path = log_file(root, "f1")
    merged = path.with_name("merge.tmp")
    merged.write_bytes(path.read_bytes() + foreign_line(3) + foreign_line(40))
    os.replace(merged, path)
    assert store.status()["features"]["f1"] == {
        "events": 22,
        "pending": 21,
        "delivered": 1,
        "failed": 0,
    }
    # Rows of the lines OURS had are the same rows: the log was not indexed again.
    assert (
        store.index.conn.execute("SELECT id, event_id FROM events ORDER BY id LIMIT 20").fetchall()
        == ids_before
    )
    assert store.index.clock() == 40


def test_catch_up_after_checkout_replaces_the_log(store: EventStore, root: Path) -> None:
    a, b, c = store.append_many("f1", [{"event_type": "T", "aggregate_id": "A"}] * 3)
    other = store.append("f2", "T", "A")
    record(store, accepted=[a.event_id, other.event_id], rejected={b.event_id: "bad"})
    record(store, transient=([c.event_id], "offline"))
    path = log_file(root, "f1")
    lines = {e.event_id: e.to_line() for e in store.read("f1")}
    new_one, new_two = foreign_line(20), foreign_line(21)
    # The other branch has b and a (in another order), not c, and two events of its own.
    checkout = path.with_name("checkout.tmp")
    checkout.write_bytes(lines[b.event_id] + new_one + lines[a.event_id] + new_two)
    os.replace(checkout, path)

    status = store.status()
    assert status["features"]["f1"] == {"events": 4, "pending": 2, "delivered": 1, "failed": 1}
    assert status["features"]["f2"] == {"events": 1, "pending": 0, "delivered": 1, "failed": 0}
    kept = states(store)
    assert c.event_id not in kept
    assert kept[a.event_id] == ("delivered", 0, None)
    assert kept[b.event_id] == ("failed", 1, "bad")
    assert [e.lamport_clock for e in store.pending("f1")] == [20, 21]
    assert [e.event_id for e in store.read("f1")][0] == b.event_id
    # Lines are read back from their new places.
    store.requeue(event_id=b.event_id)
    assert [e.event_id for e in store.pending("f1")][0] == b.event_id
    assert store.append("f1", "T", "B").lamport_clock == 22

    # The index kept this way equals one rebuilt from the logs, delivery state included.
    incremental = snapshot(store)
    store.rebuild_index()
    assert snapshot(store) == incremental


def test_a_log_that_vanishes_takes_its_events_with_it(store: EventStore, root: Path) -> None:
    store.append("f1", "T", "A")
    store.append("f2", "T", "A")
    store.status()
    log_file(root, "f2").unlink()
    status = store.status()
    assert list(status["features"]) == ["f1"]
    assert status["totals"]["events"] == 1
    assert [e.event_id for e in store.pending()] == [store.read("f1")[0].event_id]


def test_log_shrunk_in_place_is_indexed_again(store: EventStore, root: Path) -> None:
    events = store.append_many("f1", [{"event_type": "T", "aggregate_id": "A"}] * 5)
    store.status()
    path = log_file(root, "f1")
    data = path.read_bytes().splitlines(keepends=True)
    with open(path, "r+b") as f:  # same inode, as `git reset --hard` on some systems
        f.truncate(0)
        f.write(b"".join(data[:2]))
    assert store.status()["features"]["f1"]["events"] == 2
    assert [e.event_id for e in store.pending()] == [e.event_id for e in events[:2]]
    rows, logs, clock = snapshot(store)
    assert (rows, logs) == rebuilt_elsewhere(root, root.parent / "other.db")[:2]
    # Values once issued are never issued again, even though their events are gone.
    assert clock == 5
    assert store.append("f1", "T", "B").lamport_clock == 6


# --------------------------------------------------------------------------- rebuild


FEATURES = ("alpha", "beta", "gamma.1")
OPERATIONS = st.one_of(
    st.tuples(st.just("append"), st.sampled_from(FEATURES), st.just(1)),
    st.tuples(st.just("many"), st.sampled_from(FEATURES), st.integers(0, 4)),
    st.tuples(st.just("external"), st.sampled_from(FEATURES), st.integers(1, 3000)),
    st.tuples(st.just("hand"), st.sampled_from(FEATURES), st.integers(1, 3000)),
    st.tuples(st.just("deliver"), st.sampled_from(FEATURES), st.integers(0, 2)),
    st.tuples(st.just("status"), st.just(""), st.just(0)),
    st.tuples(st.just("reopen"), st.just(""), st.just(0)),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(OPERATIONS, min_size=1, max_size=14))
def test_rebuilt_index_equals_incremental_index(ops: list[tuple[str, str, int]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "proj"
        root.mkdir()
        store = EventStore(root, fsync=False)
        try:
            for kind, feature, n in ops:
                feature_dir = root / "kitty-specs" / feature
                if kind == "append":
                    store.append(feature, "T", "agg", {"n": n})
                elif kind == "many":
                    store.append_many(feature, [{"event_type": "M", "aggregate_id": "g"}] * n)
                elif kind == "external":
                    event = Event.new("X", "ext", node_id=f"node-{n % 3}", lamport_clock=n)
                    append_event(feature_dir, event, fsync=False)
                elif kind == "hand":
                    write_by_hand(root, feature, foreign_line(n, node_id="by-hand"))
                elif kind == "deliver":
                    store.status()
                    rows = store.index.conn.execute(
                        "SELECT event_id FROM events WHERE feature = ? ORDER BY line",
                        (feature,),
                    ).fetchall()
                    if rows:
                        eid = rows[len(rows) // 2][0]
                        record(
                            store,
                            accepted=[eid] if n == 0 else [],
                            rejected={eid: "no"} if n == 1 else {},
                            transient=([eid], "later") if n == 2 else None,
                        )
                elif kind == "status":
                    store.status()
                else:
                    store.close()
            events, logs, clock = snapshot(store)

            # A fresh index of the same logs: the same rows, all pending, the same clock.
            fresh_events, fresh_logs, fresh_clock = rebuilt_elsewhere(root, Path(tmp) / "x.db")
            assert [r[:9] for r in fresh_events] == [r[:9] for r in events]
            assert {r[9:] for r in fresh_events} <= {("pending", 0, None, None)}
            assert fresh_logs == logs
            assert fresh_clock == clock
            highest = max((r[8] for r in events), default=0)
            assert clock == highest

            # Rebuilt in place, the delivery state comes along too.
            store.rebuild_index()
            assert snapshot(store) == (events, logs, clock)
        finally:
            store.close()


def test_rebuild_index_reports_features_and_events(store: EventStore, root: Path) -> None:
    store.append_many("f1", [{"event_type": "T", "aggregate_id": "A"}] * 3)
    store.append("f2", "T", "A")
    write_by_hand(root, "f3", foreign_line(5))
    assert store.rebuild_index() == {"features": 3, "events": 5}
    assert store.status()["totals"]["events"] == 5


def test_delivery_state_survives_rebuild_index(store: EventStore) -> None:
    a, b, c, d = store.append_many("f1", [{"event_type": "T", "aggregate_id": "A"}] * 4)
    record(store, accepted=[a.event_id], rejected={b.event_id: "bad request"})
    record(store, transient=([c.event_id], "timed out"))
    before = states(store)
    retried_at = store.index.conn.execute(
        "SELECT last_retry_at FROM events WHERE event_id = ?", (c.event_id,)
    ).fetchone()
    assert before[a.event_id] == ("delivered", 0, None)
    assert before[b.event_id] == ("failed", 1, "bad request")
    assert before[c.event_id] == ("pending", 1, "timed out")

    store.rebuild_index()
    assert states(store) == before
    assert (
        store.index.conn.execute(
            "SELECT last_retry_at FROM events WHERE event_id = ?", (c.event_id,)
        ).fetchone()
        == retried_at
        == (NOW,)
    )

    store.rebuild_index(reset_delivery=True)
    assert set(states(store).values()) == {("pending", 0, None)}
    assert store.status()["totals"]["pending"] == 4


def test_deleting_the_index_loses_nothing_but_delivery_state(store: EventStore, root: Path) -> None:
    store.append_many("f1", [{"event_type": "T", "aggregate_id": "A"}] * 3)
    write_by_hand(root, "f2", foreign_line(77))
    store.append("f2", "T", "A")
    a = store.read("f1")[0]
    record(store, accepted=[a.event_id], rejected={store.read("f2")[1].event_id: "x"})
    before = store.status()
    events_before = [r[:9] for r in event_rows(store.index.conn)]
    store.close()
    os.remove(store.index_path)

    after = store.status()
    assert after["lamport_clock"] == before["lamport_clock"] == 78
    assert {f: c["events"] for f, c in after["features"].items()} == {"f1": 3, "f2": 2}
    assert after["totals"] == {"events": 5, "pending": 5, "delivered": 0, "failed": 0}
    assert [r[:9] for r in event_rows(store.index.conn)] == events_before


# --------------------------------------------------------------------------- Lamport clock


def test_lamport_values_strictly_increase_and_are_never_reused(store: EventStore) -> None:
    seen = []
    for i in range(10):
        feature = "f1" if i % 3 else "f2"
        seen.append(store.append(feature, "T", "A").lamport_clock)
        seen.extend(e.lamport_clock for e in store.append_many(feature, [Event.new("T", "A")] * 0))
        seen.extend(
            e.lamport_clock
            for e in store.append_many(feature, [{"event_type": "T", "aggregate_id": "B"}] * 2)
        )
    assert seen == sorted(seen) and len(set(seen)) == len(seen) and seen[0] == 1
    for feature in ("f1", "f2"):
        clocks = [e.lamport_clock for e in store.read(feature)]
        assert all(x < y for x, y in pairwise(clocks))


def test_merged_remote_line_raises_the_clock_for_the_next_append(
    store: EventStore, root: Path
) -> None:
    store.append("f1", "T", "A")
    store.append("f2", "T", "A")
    write_by_hand(root, "f1", foreign_line(1000, node_id="laptop-of-someone-else"))
    assert store.append("f1", "T", "B").lamport_clock == 1001
    # Once the index has seen it, appends to any feature come after it.
    write_by_hand(root, "f1", foreign_line(2000, node_id="laptop-of-someone-else"))
    assert store.status()["lamport_clock"] == 2000
    assert store.append("f2", "T", "B").lamport_clock == 2001
    assert [e.lamport_clock for e in store.read("f2")] == [2, 2001]


def test_clock_is_the_same_after_deleting_the_index_and_rebuilding(
    store: EventStore, root: Path
) -> None:
    store.append("f1", "T", "A")
    write_by_hand(root, "f1", foreign_line(1000))
    store.append("f1", "T", "B")
    store.append("f2", "T", "B")
    clock = store.status()["lamport_clock"]
    assert clock == 1002
    store.close()
    os.remove(store.index_path)
    assert store.rebuild_index() == {"features": 2, "events": 4}
    assert store.status()["lamport_clock"] == clock
    assert store.append("f2", "T", "C").lamport_clock == clock + 1


def test_two_indexes_of_the_same_logs_never_reuse_a_value(root: Path, tmp_path: Path) -> None:
    with (
        EventStore(root, fsync=False) as one,
        EventStore(root, index_path=tmp_path / "two.db", fsync=False) as two,
    ):
        one.append("f1", "T", "A")
        two.append("f1", "T", "A")
        one.append("f1", "T", "A")
        one.append("f2", "T", "A")
        assert two.append("f1", "T", "A").lamport_clock > 3
        clocks = [e.lamport_clock for e in one.read("f1")]
        assert clocks == sorted(set(clocks))


def test_node_id_is_stable_across_rebuilds(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REPLAYLOG_NODE_ID", raising=False)
    with EventStore(root, fsync=False) as store:
        before = store.append("f1", "T", "A").node_id
        store.rebuild_index()
    os.remove(root / ".replaylog" / "queue.db")
    with EventStore(root, fsync=False) as store:
        store.rebuild_index()
        after = store.append("f1", "T", "B").node_id
    assert before == after == local_node_id()
    assert socket.gethostname() not in before
    user = os.environ.get("USER") or os.environ.get("LOGNAME")
    if user and len(user) > 2:
        assert user not in before


def test_node_id_can_be_set(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPLAYLOG_NODE_ID", "ci-runner-7")
    with EventStore(root, fsync=False) as store:
        assert store.append("f1", "T", "A").node_id == "ci-runner-7"
    with EventStore(root, fsync=False, node_id="given") as store:
        assert store.append("f1", "T", "A").node_id == "given"


_WORKER = """
import os, sys, time
from replaylog.store import EventStore
root, go, proc, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
features = sys.argv[5].split(",")
while not os.path.exists(go):
    time.sleep(0.001)
with EventStore(root, fsync=False) as store:
    for i in range(count):
        store.append(features[i % len(features)], "Tick", f"proc-{proc}", {"proc": proc, "i": i})
"""


@pytest.mark.parametrize("features", [["one"], ["one", "two"]], ids=["one-feature", "two"])
def test_lamport_values_are_unique_under_concurrent_processes(
    root: Path, tmp_path: Path, features: list[str]
) -> None:
    procs, count = 4, 200
    go = tmp_path / "go"
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _WORKER,
                str(root),
                str(go),
                str(p),
                str(count),
                ",".join(features),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for p in range(procs)
    ]
    go.touch()
    for worker in workers:
        _out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err

    with EventStore(root, fsync=False) as store:
        every: list[dict[str, Any]] = []
        for feature in features:
            objs = store.read_raw(feature)
            clocks = [o["lamport_clock"] for o in objs]
            assert all(x < y for x, y in pairwise(clocks)), feature
            every.extend(objs)
        # Every event present once.
        assert len(every) == procs * count
        assert len({o["event_id"] for o in every}) == len(every)
        assert sorted((o["payload"]["proc"], o["payload"]["i"]) for o in every) == [
            (p, i) for p in range(procs) for i in range(count)
        ]
        # Lamport values unique across the logs, and each process's order kept.
        assert len({o["lamport_clock"] for o in every}) == len(every)
        for p in range(procs):
            mine = sorted(
                (o["payload"]["i"], o["lamport_clock"]) for o in every if o["payload"]["proc"] == p
            )
            assert [c for _i, c in mine] == sorted(c for _i, c in mine)
        status = store.status()
        assert status["totals"]["events"] == procs * count
        assert status["lamport_clock"] == max(o["lamport_clock"] for o in every)
        assert snapshot(store) == rebuilt_elsewhere(root, tmp_path / "rebuilt.db")


def test_index_written_by_old_connection_is_checked_on_open(tmp_path: Path) -> None:
    """An Index opened by path sees what a store wrote (one file, WAL, shared)."""
    with EventStore(tmp_path, fsync=False) as store:
        store.append("f1", "T", "A")
        index = Index(store.index_path)
        try:
            assert index.clock() == 1
            assert index.known_features() == ["f1"]
        finally:
            index.close()


_READER_OR_WRITER = """
import os, sys, time
from replaylog.store import EventStore
root, go, role, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
while not os.path.exists(go):
    time.sleep(0.001)
worst = 0.0
with EventStore(root, fsync=False) as store:
    for i in range(count):
        started = time.monotonic()
        if role == "append":
            store.append("f1", "T", "A", {"i": i})
        else:
            store.status()
            store.pending("f1", limit=1)
        worst = max(worst, time.monotonic() - started)
print(worst)
"""


def test_catch_up_and_append_in_other_processes_never_wait_on_each_other(
    root: Path, tmp_path: Path
) -> None:
    """Readers take the log's lock before the index's, as appends do: no deadlock."""
    with EventStore(root, fsync=False) as store:
        store.append("f1", "T", "A")
    go = tmp_path / "go"
    roles = ["append", "append", "status", "status"]
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _READER_OR_WRITER, str(root), str(go), role, "150"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for role in roles
    ]
    go.touch()
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        assert float(out) < 10.0  # a lock-order deadlock waits out SQLite's 60 s timeout
    with EventStore(root, fsync=False) as store:
        assert store.status()["totals"]["events"] == 301


def test_a_line_merged_into_another_feature_raises_the_next_commands_clock(root: Path) -> None:
    """After a `git pull` brings lamport 5000 into feature A, a new store's first append
    to feature B is above it (the store looks at every log once before its first append)."""
    with EventStore(root, fsync=False) as store:
        store.append("f-a", "T", "A")
        store.append("f-b", "T", "B")
    write_by_hand(root, "f-a", foreign_line(5000))
    with EventStore(root, fsync=False) as store:
        assert store.append("f-b", "T", "B").lamport_clock > 5000


def test_a_corrupt_log_elsewhere_does_not_block_an_append(root: Path) -> None:
    with EventStore(root, fsync=False) as store:
        store.append("f-a", "T", "A")
    write_by_hand(root, "f-b", b"{not json\n")
    with EventStore(root, fsync=False) as store:
        assert store.append("f-a", "T", "A").lamport_clock == 2
        with pytest.raises(StoreError, match="Line 1: invalid JSON"):
            store.status()


# --------------------------------------------------------------------------- later appends

# After its first append to a log, a store keeps the log open and appends to it with the
# clock file alone, leaving the index to catch up later. These tests pin what that may
# never cost: a line missing from the index, a value issued twice, a line in the wrong file.


def indexed_count(root: Path) -> int:
    """Rows in the index file right now, read without catching it up."""
    conn = sqlite3.connect(root / ".replaylog" / "queue.db")
    try:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        conn.close()


def test_lines_appended_after_the_first_reach_the_index_when_anyone_catches_up(
    root: Path, tmp_path: Path
) -> None:
    with EventStore(root, fsync=False) as store:
        written = [store.append("f1", "T", "A", {"i": i}) for i in range(5)]
        deferred = indexed_count(root)
    assert deferred < 5  # what the test is about: the index was behind the log
    # Another process, which never appended, sees every line and can deliver it.
    result = subprocess.run(
        [sys.executable, "-m", "replaylog", "--root", str(root), "status", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["totals"] == {"events": 5, "pending": 5, "delivered": 0, "failed": 0}
    assert status["lamport_clock"] == written[-1].lamport_clock == 5
    with EventStore(root, fsync=False) as store:
        assert [e.event_id for e in store.pending()] == [e.event_id for e in written]
        assert snapshot(store) == rebuilt_elsewhere(root, tmp_path / "rebuilt.db")


def test_a_log_replaced_by_one_of_the_same_size_gets_the_next_line(
    store: EventStore, root: Path
) -> None:
    store.append("f1", "T", "A")
    store.append("f1", "T", "A")
    path = log_file(root, "f1")
    # A checkout puts another file of exactly the same size in its place.
    other = foreign_line(700, node_id="elsewhere")
    padding = path.stat().st_size - len(other)
    assert padding > 0
    replacement = foreign_line(700, node_id="elsewhere" + "x" * padding)
    assert len(replacement) == path.stat().st_size
    staged = path.with_name("checkout.tmp")
    staged.write_bytes(replacement)
    os.replace(staged, path)
    event = store.append("f1", "T", "B")
    assert event.lamport_clock == 701
    assert [e.lamport_clock for e in store.read("f1")] == [700, 701]


def test_a_log_grown_by_another_writer_puts_the_next_value_above_its_lines(
    store: EventStore, root: Path
) -> None:
    store.append("f1", "T", "A")
    store.append("f1", "T", "A")
    append_event(root / "kitty-specs" / "f1", Event.new("X", "Y", lamport_clock=90), fsync=False)
    assert store.append("f1", "T", "B").lamport_clock == 91
    assert store.append("f1", "T", "B").lamport_clock == 92
    assert [e.lamport_clock for e in store.read("f1")] == [1, 2, 90, 91, 92]


_FORKED = """
import os, sys
from replaylog.store import EventStore
root, count = sys.argv[1], int(sys.argv[2])
with EventStore(root, fsync=False) as store:
    store.append("shared", "T", "parent")  # the log is now kept open, and the clock
    pid = os.fork()
    who = "child" if pid == 0 else "parent"
    for i in range(count):
        store.append("shared", "T", who, {"i": i})
    if pid == 0:
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_a_forked_child_and_its_parent_append_at_once_without_sharing_locks(root: Path) -> None:
    count = 400
    result = subprocess.run(
        [sys.executable, "-c", _FORKED, str(root), str(count)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    with EventStore(root, fsync=False) as store:
        objs = store.read_raw("shared")
        clocks = [o["lamport_clock"] for o in objs]
        assert len(objs) == 1 + 2 * count
        assert all(x < y for x, y in pairwise(clocks)), "values not rising in file order"
        for who in ("parent", "child"):
            mine = [o["payload"]["i"] for o in objs if o["aggregate_id"] == who and o["payload"]]
            assert mine == list(range(count)), who
        assert store.status()["totals"]["events"] == 1 + 2 * count


def test_a_lost_clock_file_is_started_again_above_every_value(root: Path) -> None:
    with EventStore(root, fsync=False) as store:
        for _ in range(3):
            store.append("f1", "T", "A")
        store.append("f2", "T", "A")
    clock_file(root).unlink()
    with EventStore(root, fsync=False) as store:
        assert store.append("f2", "T", "B").lamport_clock == 5
        assert store.append("f1", "T", "B").lamport_clock == 6


def test_an_unreadable_clock_file_is_never_trusted(root: Path) -> None:
    with EventStore(root, fsync=False) as store:
        for _ in range(3):
            store.append("f1", "T", "A")
        # Garbage where the value was (a negative number as read): the next append
        # goes through the index and writes the clock again.
        clock_file(root).write_bytes(b"\xff" * 8)
        assert store.append("f1", "T", "B").lamport_clock == 4
        assert store.append("f1", "T", "B").lamport_clock == 5
    assert store.status()["lamport_clock"] == 5


def _write_clock(root: Path, value: int, key: int = 0) -> None:
    """A clock file as replaylog writes it, with a valid check for ``key``."""
    clock_file(root).write_bytes(struct.pack("<qq", value, value ^ 0x72706C67636C6F63 ^ key))


def test_a_clock_file_no_index_backs_is_ignored(root: Path) -> None:
    # SPEC 12: the clock file is a cache. A value in it that neither a log nor this
    # index backs (a file of the old format, the constant check alone, or a file left
    # by a deleted index) does not count.
    with EventStore(root, fsync=False) as store:
        for _ in range(3):
            store.append("f1", "T", "A")
    _write_clock(root, 2**63 - 3)  # valid for no index's key: ignored
    with EventStore(root, fsync=False) as store:
        assert store.status()["lamport_clock"] == 3
        assert store.append("f1", "T", "B").lamport_clock == 4
    # A file with this index's key, then the index deleted: the new index has its own
    # key, and its clock is the logs' (SPEC 4: the same as before the deletion).
    with EventStore(root, fsync=False) as store:
        key = store.index._clock_key()
        assert key != 0
    _write_clock(root, 900, key)
    with EventStore(root, fsync=False) as store:
        assert store.status()["lamport_clock"] == 900  # this index's own: it counts
    for suffix in ("", "-wal", "-shm"):
        Path(str(root / ".replaylog" / "queue.db") + suffix).unlink(missing_ok=True)
    with EventStore(root, fsync=False) as store:
        assert store.rebuild_index() == {"features": 1, "events": 4}
        assert store.status()["lamport_clock"] == 4
        assert store.append("f1", "T", "C").lamport_clock == 5


def test_rebuild_index_keeps_the_clock_of_the_index_it_replaces(root: Path) -> None:
    with EventStore(root, fsync=False) as store:
        store.append("f1", "T", "A")
        write_by_hand(root, "f1", foreign_line(50))
        assert store.append("f1", "T", "B").lamport_clock == 51
        store.rebuild_index()
        assert store.status()["lamport_clock"] == 51
        assert store.append("f1", "T", "C").lamport_clock == 52


def test_a_clock_with_no_value_left_refuses_the_append_and_writes_nothing(
    store: EventStore, root: Path
) -> None:
    write_by_hand(root, "f1", foreign_line(2**63 - 1))
    before = log_file(root, "f1").read_bytes()
    with pytest.raises(StoreError, match="Correct such a line by hand"):
        store.append("f1", "T", "A")
    assert log_file(root, "f1").read_bytes() == before


_FORK_WHILE_LOCKED = """
import fcntl, os, sys, time
from replaylog.store import EventStore
root = sys.argv[1]
with EventStore(root, fsync=False) as store:
    store.append("shared", "T", "parent")
    path = store.log_path("shared")
    kept = store._open_logs["shared"].fd  # the descriptor kept open for the next append
    fcntl.flock(kept, fcntl.LOCK_EX)  # as if the parent were in the middle of an append
    pid = os.fork()
    if pid == 0:
        store.append("shared", "T", "child")  # must wait: the lock is its parent's
        os._exit(0)
    time.sleep(1.0)
    while_locked = os.path.getsize(path)
    fcntl.flock(kept, fcntl.LOCK_UN)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status), while_locked, os.path.getsize(path))
"""


def test_a_forked_child_waits_for_a_lock_its_parent_holds(root: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _FORK_WHILE_LOCKED, str(root)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    code, while_locked, after = map(int, result.stdout.split())
    assert code == 0
    assert while_locked == len(log_file(root, "shared").read_bytes().splitlines(True)[0])
    assert after > while_locked
