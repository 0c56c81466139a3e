"""SPEC section 7 (with 6): EventStore over real files: append and read, status, pending,
requeue, verify, repair and close. The index as a cache and the clock, through the same
API, are in ``test_s04_index_store.py``.

No network here: delivery state is set through the index itself (``store.delivery``
inside ``store.index.write()``), as a replay run would. Other processes are real
processes; "another machine" is a line with a foreign ``node_id`` written into the log.
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    foreign_line,
    log_file,
    rebuilt_elsewhere,
    record,
    snapshot,
    states,
    write_by_hand,
)

from replaylog import (
    EVENTS_FILENAME,
    Event,
    EventStore,
    LogsUnreadableError,
    StoreError,
    UsageError,
)

# --------------------------------------------------------------------------- append and read


def test_append_returns_the_event_exactly_as_written(store: EventStore, root: Path) -> None:
    event = store.append(
        "feat-1", "Created", "WP01", {"title": "x", "n": [1, 2.5, None]}, causation_id="c-1"
    )
    assert event.lamport_clock >= 1
    assert event.node_id == store.node_id
    assert event.causation_id == "c-1" and event.correlation_id is None
    line = log_file(root, "feat-1").read_bytes()
    assert line == event.to_line()
    assert line == (json.dumps(json.loads(line), sort_keys=True) + "\n").encode()
    assert store.read("feat-1") == [event]
    assert list(store.iter_events("feat-1")) == [event]
    assert store.read_raw("feat-1") == [json.loads(line)]


def test_append_many_takes_events_and_mappings_in_order(store: EventStore) -> None:
    mine = Event.new("Given", "WP09", {"k": "v"}, correlation_id="corr")
    written = store.append_many(
        "feat-1",
        [
            {"event_type": "A", "aggregate_id": "WP01"},
            mine,
            {"event_type": "B", "aggregate_id": "WP02", "payload": {"x": 1}, "causation_id": "z"},
        ],
    )
    assert [e.event_type for e in written] == ["A", "Given", "B"]
    assert written[1].event_id == mine.event_id and written[1].payload == {"k": "v"}
    assert written[1].correlation_id == "corr" and written[2].causation_id == "z"
    clocks = [e.lamport_clock for e in written]
    assert clocks == list(range(clocks[0], clocks[0] + 3)) and clocks[0] >= 1
    assert store.read("feat-1") == written
    assert store.status()["features"]["feat-1"]["events"] == 3


def test_append_many_of_nothing_touches_nothing(store: EventStore, root: Path) -> None:
    assert store.append_many("feat-1", []) == []
    assert os.listdir(root) == []


@pytest.mark.parametrize(
    ("events", "said"),
    [
        (None, "got None$"),
        ({"event_type": "T", "aggregate_id": "a"}, "got dict; for one event, use append"),
        (Event.new("T", "a"), "got Event; for one event, use append"),
        ("TT", "got str$"),
        (5, "got int$"),
    ],
)
def test_append_many_of_something_that_is_not_a_list_of_events_says_so(
    store: EventStore, root: Path, events: Any, said: str
) -> None:
    # A mapping would be taken apart into its keys, and a string into its letters.
    with pytest.raises(UsageError, match="append_many takes a list of events .*" + said):
        store.append_many("feat-1", events)
    assert os.listdir(root) == []
    made = store.append_many(
        "feat-1", ({"event_type": "T", "aggregate_id": str(i)} for i in range(2))
    )
    assert [e.aggregate_id for e in store.read("feat-1")] == [e.aggregate_id for e in made]


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ({"url": 5}, "invalid replay URL 5: it must be a string"),
        ({"batch_size": "10"}, "batch size must be between 1 and 1000, got '10'"),
        ({"batch_size": 2.0}, "batch size must be between 1 and 1000, got 2.0"),
        ({"max_retries": "3"}, "max retries must be 0 or more, got '3'"),
        ({"timeout": "1"}, "timeout must be more than 0 seconds, got '1'"),
        ({"backoff_base": None}, "backoff base must be 0 or more seconds, got None"),
    ],
)
def test_replay_settings_of_the_wrong_type_are_usage_errors(
    store: EventStore, given: dict[str, Any], said: str
) -> None:
    # The API raises what the CLI would say of a bad --batch-size, not a TypeError.
    store.append("feat-1", "T", "a")
    settings = {"url": "http://127.0.0.1:9", **given}
    with pytest.raises(UsageError, match=re.escape(said)):
        store.replay(**settings)
    assert store.status()["totals"]["pending"] == 1


@pytest.mark.parametrize("sync_timeout", ["2", -1, math.inf, math.nan, True, None])
def test_emit_with_a_sync_timeout_that_is_no_time_writes_nothing(
    store: EventStore, root: Path, sync_timeout: Any
) -> None:
    # Checked before the append: a failed emit has done nothing.
    with pytest.raises(UsageError, match="the sync timeout must be a finite number of seconds"):
        store.emit("feat-1", "T", "a", url="http://127.0.0.1:9", sync_timeout=sync_timeout)
    assert os.listdir(root) == []
    with pytest.raises(UsageError, match="the deadline must be a time.monotonic"):
        store.replay("http://127.0.0.1:9", deadline=str(sync_timeout))


def test_move_with_evidence_whose_keys_are_not_strings_is_a_usage_error(
    store: EventStore, root: Path
) -> None:
    for evidence, said in (
        ({1: "a"}, "evidence has unknown field(s): 1"),
        ({"review": {"reviewer": "r", 2: "x"}}, "evidence: review has unknown field(s): 2"),
        ({3: "a", "zz": 1}, "evidence has unknown field(s): 3, zz"),
    ):
        with pytest.raises(UsageError, match=re.escape(said)):
            store.move("feat-1", "WP01", to="planned", actor="me", evidence=evidence)
    assert os.listdir(root) == []


BAD_NAMES = ["", ".", "..", "a/b", "../x", "-lead", ".hidden", "x" * 129, "sp ace", "ä", "a\nb"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_feature_name_is_refused_before_any_file_or_index_exists(root: Path, name: str) -> None:
    with EventStore(root, fsync=False) as store:
        with pytest.raises(UsageError, match="invalid feature name"):
            store.append(name, "T", "A")
        with pytest.raises(UsageError, match="invalid feature name"):
            store.append_many(name, [{"event_type": "T", "aggregate_id": "A"}])
        for call in (store.status, store.pending, store.requeue, store.read, store.repair):
            with pytest.raises(UsageError, match="invalid feature name"):
                call(name)
    assert os.listdir(root) == []


BAD_ITEMS: dict[str, Any] = {
    "empty-type": {"event_type": "", "aggregate_id": "A"},
    "long-aggregate": {"event_type": "T", "aggregate_id": "a" * 201},
    "nan-payload": {"event_type": "T", "aggregate_id": "A", "payload": {"x": math.nan}},
    "list-payload": {"event_type": "T", "aggregate_id": "A", "payload": [1]},
    "unknown-key": {"event_type": "T", "aggregate_id": "A", "lamport_clock": 5},
    "missing-aggregate": {"event_type": "T"},
    "not-a-mapping": ("T", "A"),
    "over-1-MiB": {"event_type": "T", "aggregate_id": "A", "payload": {"x": "y" * (1 << 20)}},
}


@pytest.mark.parametrize("bad", sorted(BAD_ITEMS))
def test_append_many_is_all_or_nothing(store: EventStore, root: Path, bad: str) -> None:
    store.append("feat-1", "First", "A")
    before = (log_file(root, "feat-1").read_bytes(), store.status())
    good = {"event_type": "T", "aggregate_id": "A"}
    with pytest.raises(UsageError):
        store.append_many("feat-1", [good, good, BAD_ITEMS[bad], good])
    with pytest.raises(UsageError):
        store.append_many("feat-new", [good, BAD_ITEMS[bad]])
    assert (log_file(root, "feat-1").read_bytes(), store.status()) == before
    assert not (root / "kitty-specs" / "feat-new").exists()


def test_append_refuses_an_event_id_already_in_the_log(store: EventStore, root: Path) -> None:
    """Appending an Event twice would put one id with two contents in the log: refused."""
    first = store.append("feat-1", "T", "A")
    again = Event.new("T", "A", event_id=first.event_id)
    fresh = Event.new("T", "B")
    before = log_file(root, "feat-1").read_bytes()
    with pytest.raises(UsageError, match=first.event_id):
        store.append_many("feat-1", [fresh, again])
    with pytest.raises(UsageError, match=fresh.event_id):
        store.append_many("feat-1", [fresh, fresh])
    assert log_file(root, "feat-1").read_bytes() == before
    assert store.read("feat-1") == [first]
    # The same id in another feature's log is another event.
    assert store.append_many("feat-2", [again])[0].event_id == first.event_id


def test_extra_keys_of_a_line_survive_read_and_index(store: EventStore, root: Path) -> None:
    obj = json.loads(foreign_line(7))
    obj["schema_version"] = 3
    obj["trace"] = {"span": "abc"}
    write_by_hand(root, "feat-1", (json.dumps(obj, sort_keys=True) + "\n").encode())
    assert store.read_raw("feat-1") == [obj]
    [event] = store.read("feat-1")
    assert event.extra == {"schema_version": 3, "trace": {"span": "abc"}}
    assert event.to_dict() == obj
    assert store.pending("feat-1") == [event]


def test_features_lists_every_log_sorted(store: EventStore, root: Path) -> None:
    assert store.features() == []
    for name in ("zeta", "Alpha", "mid.1"):
        store.append(name, "T", "A")
    (root / "kitty-specs" / "no-log-here").mkdir()
    (root / "kitty-specs" / "bad name").mkdir()
    (root / "kitty-specs" / "bad name" / EVENTS_FILENAME).write_bytes(foreign_line(1))
    assert store.features() == ["Alpha", "mid.1", "zeta"]


#: Folders that cannot be a feature's (SPEC section 1), and how a report shows their log:
#: a name that is not printable text is escaped, so that it cannot break the report.
STRAY_FOLDERS = {"ünï": "ünï", "a b": "a b", ".hid": ".hid", "nl\nx": "nl\\nx"}


def test_a_log_in_a_folder_that_cannot_be_a_feature_is_listed_never_skipped(
    store: EventStore, root: Path
) -> None:
    store.append("good", "T", "A")
    write_by_hand(root, "broken", foreign_line(1), b"{oops\n")
    for name in STRAY_FOLDERS:
        (root / "kitty-specs" / name).mkdir()
        (root / "kitty-specs" / name / EVENTS_FILENAME).write_bytes(foreign_line(1))
    (root / "kitty-specs" / "no log here").mkdir()  # holds no log: nothing to say
    strays = sorted(
        str(root / "kitty-specs" / shown / EVENTS_FILENAME) for shown in STRAY_FOLDERS.values()
    )
    broken = str(log_file(root, "broken"))
    assert store.features() == ["broken", "good"]

    report = store.verify()
    assert not report.ok
    assert sorted((p.path, p.line) for p in report.problems) == sorted(
        [(broken, 2)] + [(path, None) for path in strays]
    )
    for problem in report.problems:
        assert problem.level == "error" and problem.message.isprintable()
        if problem.path != broken:
            assert "is not a feature name" in problem.message, problem

    with pytest.raises(LogsUnreadableError) as caught:
        store.status()
    assert sorted(path for path, _, _ in caught.value.problems) == sorted([broken, *strays])
    assert list(caught.value.partial["features"]) == ["good"]  # type: ignore[index]

    index = os.stat(store.index_path)
    with pytest.raises(LogsUnreadableError, match="the index was not rebuilt") as caught:
        store.rebuild_index()
    # Every log was read all the same: the bad line of another log is listed too.
    assert sorted(path for path, _, _ in caught.value.problems) == sorted([broken, *strays])
    assert os.stat(store.index_path).st_ino == index.st_ino  # the old index, kept
    result = store.rebuild_index(skip_bad=True)
    assert result["features"] == 1 and result["events"] == 1
    assert sorted(s["path"] for s in result["skipped"]) == sorted([broken, *strays])

    for over_logs in (store.catch_up, store.boards):
        with pytest.raises(LogsUnreadableError) as caught:
            over_logs()
        assert sorted(path for path, _, _ in caught.value.problems) == sorted([broken, *strays])
    assert list(caught.value.partial) == ["good"]  # type: ignore[arg-type]


def test_verify_lists_a_symlinked_feature_folder_and_checks_every_other_log(
    store: EventStore, root: Path, tmp_path: Path
) -> None:
    store.append("good", "T", "A")
    write_by_hand(root, "broken", foreign_line(1), b"{oops\n")
    elsewhere = tmp_path / "elsewhere" / "f"
    elsewhere.mkdir(parents=True)
    (elsewhere / EVENTS_FILENAME).write_bytes(log_file(root, "good").read_bytes())
    link = root / "kitty-specs" / "linked"
    link.symlink_to(elsewhere, target_is_directory=True)
    report = store.verify()
    assert not report.ok
    assert sorted((p.path, p.line) for p in report.problems) == [
        (str(log_file(root, "broken")), 2),
        (str(link), None),
    ]
    [linked] = [p for p in report.problems if p.path == str(link)]
    assert f"{link} is a symbolic link" in linked.message
    assert [(p.path, p.level) for p in store.verify(["linked", "good"]).problems] == [
        (str(link), "error")
    ]
    assert os.listdir(elsewhere) == [EVENTS_FILENAME]  # read through the link by nothing


def test_log_of_a_feature_without_a_log_raises_before_any_line(
    store: EventStore, root: Path
) -> None:
    store.append("real", "Created", "WP01")
    with pytest.raises(StoreError, match="feature 'nosuch' has no log"):
        store.log("nosuch")  # raised by the call itself, not when iterating
    assert not (root / "kitty-specs" / "nosuch").exists()
    assert [e.event_type for e in store.log("real", limit=1)] == ["Created"]


@pytest.mark.parametrize(
    ("value", "fsync"),
    [(None, True), ("1", True), ("0", False), (" False ", False), ("no", False), ("yes", True)],
)
def test_from_environment_turns_fsync_off_only_when_replaylog_fsync_says_so(
    root: Path, monkeypatch: pytest.MonkeyPatch, value: str | None, fsync: bool
) -> None:
    if value is None:
        monkeypatch.delenv("REPLAYLOG_FSYNC", raising=False)
    else:
        monkeypatch.setenv("REPLAYLOG_FSYNC", value)
    with EventStore.from_environment(root, logs_dir="logs") as s:
        assert s.fsync is fsync
        assert s.logs_root == os.path.join(str(root), "logs")


def test_status_json_shape_is_exactly_the_spec(store: EventStore) -> None:
    store.append_many("feat-1", [{"event_type": "T", "aggregate_id": "A"}] * 3)
    store.append("feat-2", "T", "A")
    status = store.status()
    assert json.loads(json.dumps(status)) == status
    assert set(status) == {"lamport_clock", "features", "totals"}
    assert status["lamport_clock"] == 4
    assert status["features"] == {
        "feat-1": {"events": 3, "pending": 3, "delivered": 0, "failed": 0},
        "feat-2": {"events": 1, "pending": 1, "delivered": 0, "failed": 0},
    }
    assert status["totals"] == {"events": 4, "pending": 4, "delivered": 0, "failed": 0}
    one = store.status("feat-2")
    assert one["features"] == {"feat-2": status["features"]["feat-2"]}
    assert one["totals"] == status["features"]["feat-2"]


def test_status_of_a_feature_without_a_log_raises_as_log_does(
    store: EventStore, root: Path
) -> None:
    store.append("real", "T", "A")
    for call in (store.status, store.log):
        with pytest.raises(StoreError, match="feature 'nosuch' has no log") as caught:
            call("nosuch")
        assert caught.value.path == str(log_file(root, "nosuch"))
    assert not (root / "kitty-specs" / "nosuch").exists()


def test_status_counts_delivery_states(store: EventStore) -> None:
    a, b, c, d = store.append_many("f", [{"event_type": "T", "aggregate_id": "A"}] * 4)
    record(store, accepted=[a.event_id], rejected={b.event_id: "no"})
    record(store, transient=([c.event_id], "timeout"))
    status = store.status()
    assert status["features"]["f"] == {"events": 4, "pending": 2, "delivered": 1, "failed": 1}
    assert states(store)[c.event_id] == ("pending", 1, "timeout")


def test_a_delivered_event_whose_row_id_is_stale_is_still_recorded_by_its_key(
    store: EventStore,
) -> None:
    # Replay hands record() each event's row id as it read it; if the log was indexed
    # again meanwhile, that id may be gone or another event's. Only the event named is
    # marked delivered, and it is.
    a, b, c = store.append_many("f", [{"event_type": "T", "aggregate_id": "A"}] * 3)
    store.status()
    ids = dict(store.index.conn.execute("SELECT event_id, id FROM events").fetchall())
    gone = 1 + max(ids.values())
    with store.index.write():
        store.delivery.record(
            accepted=[a.event_id, b.event_id],
            rejected={},
            transient=None,
            now="2026-01-01T00:00:00+00:00",
            # a: another event's row (c's); b: a row id no row has.
            rows_of={a.event_id: [("f", ids[c.event_id])], b.event_id: [("f", gone)]},
        )
    assert {e: s[0] for e, s in states(store).items()} == {
        a.event_id: "delivered",
        b.event_id: "delivered",
        c.event_id: "pending",
    }
    # With the right row id one UPDATE, by the row id, does it.
    d = store.append("f", "T", "A")
    store.status()
    (row_id,) = store.index.conn.execute(
        "SELECT id FROM events WHERE event_id = ?", (d.event_id,)
    ).fetchone()
    statements: list[str] = []
    with store.index.write():
        store.index.conn.set_trace_callback(statements.append)
        store.delivery.record(
            accepted=[d.event_id],
            rejected={},
            transient=None,
            now="2026-01-01T00:00:00+00:00",
            rows_of={d.event_id: [("f", row_id)]},
        )
        store.index.conn.set_trace_callback(None)
    updates = [sql for sql in statements if sql.startswith("UPDATE")]
    assert len(updates) == 1 and "events.id = " in updates[0], updates
    assert states(store)[d.event_id][0] == "delivered"
    assert states(store)[c.event_id][0] == "pending"


def test_pending_is_in_lamport_then_event_id_order(store: EventStore, root: Path) -> None:
    local = store.append_many("f1", [{"event_type": "T", "aggregate_id": "A"}] * 3)
    # Two foreign events share a Lamport value: the event id breaks the tie.
    low, high = sorted(
        [Event.new("R", "x", node_id="n2", lamport_clock=2) for _ in range(2)],
        key=lambda e: e.event_id,
    )
    write_by_hand(root, "f2", high.to_line(), low.to_line())
    later = store.append("f2", "T", "B")
    pending = store.pending()
    order = [(e.lamport_clock, e.event_id) for e in pending]
    assert order == sorted(order)
    assert [e.event_id for e in pending] == [
        local[0].event_id,
        local[1].event_id,
        low.event_id,
        high.event_id,
        local[2].event_id,
        later.event_id,
    ]
    assert store.pending("f2") == [low, high, later]
    assert store.pending(limit=2) == pending[:2]
    record(store, accepted=[low.event_id], rejected={local[0].event_id: "bad"})
    assert [e.event_id for e in store.pending()] == [
        local[1].event_id,
        high.event_id,
        local[2].event_id,
        later.event_id,
    ]


def test_pending_query_uses_the_partial_index(store: EventStore) -> None:
    store.append_many("f1", [{"event_type": "T", "aggregate_id": "A"}] * 5)
    store.append_many("f2", [{"event_type": "T", "aggregate_id": "A"}] * 5)
    store.status()
    seen: list[str] = []  # each statement as run, its values in it
    store.index.conn.set_trace_callback(seen.append)
    # A small page, so that the keyset query of the second page is seen too.
    assert len(list(store.delivery.pending(page=3))) == 10
    assert len(list(store.delivery.pending(["f1"], page=3))) == 5
    store.index.conn.set_trace_callback(None)
    assert len(seen) == 6, seen
    for statement in seen:
        plan = store.index.conn.execute("EXPLAIN QUERY PLAN " + statement).fetchall()
        assert "ix_events_pending" in " ".join(str(step[-1]) for step in plan), plan


def test_requeue_moves_failed_events_back_to_pending(store: EventStore) -> None:
    a, b = store.append_many("f1", [{"event_type": "T", "aggregate_id": "A"}] * 2)
    c = store.append("f2", "T", "A")
    record(store, accepted=[a.event_id], rejected={b.event_id: "bad", c.event_id: "worse"})
    assert store.requeue("f1", event_id=a.event_id) == 0  # in f1, but not failed
    assert store.requeue(event_id=b.event_id) == 1
    assert states(store)[b.event_id] == ("pending", 1, "bad")
    assert store.requeue("f2") == 1
    assert store.requeue() == 0
    assert states(store)[a.event_id][0] == "delivered"
    assert store.status()["totals"] == {"events": 3, "pending": 2, "delivered": 1, "failed": 0}


def test_requeue_refuses_a_feature_without_a_log_and_an_event_outside_its_scope(
    store: EventStore, root: Path
) -> None:
    a = store.append("f1", "T", "A")
    b = store.append("f2", "T", "A")
    record(store, rejected={a.event_id: "bad", b.event_id: "worse"})
    before = states(store)
    with pytest.raises(StoreError, match=f"event {a.event_id} is not in the log of feature 'f2'"):
        store.requeue("f2", event_id=a.event_id)  # it is in f1's log
    with pytest.raises(StoreError, match="feature 'nosuch' has no log"):
        store.requeue("nosuch")
    with pytest.raises(StoreError, match="feature 'nosuch' has no log"):
        store.requeue("nosuch", event_id=a.event_id)
    unknown = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
    with pytest.raises(StoreError, match=f"event {unknown} is in no log"):
        store.requeue(event_id=unknown)
    for bad_id in ("NOTANID", "", a.event_id.lower(), a.event_id + "0"):
        with pytest.raises(UsageError, match="is not a ULID"):
            store.requeue(event_id=bad_id)
        with pytest.raises(UsageError, match="is not a ULID"):
            store.requeue("f1", event_id=bad_id)
    assert states(store) == before  # nothing changed by any refused call
    assert not (root / "kitty-specs" / "nosuch").exists()
    assert store.requeue("f2", event_id=b.event_id) == 1


def test_a_root_that_does_not_exist_is_refused_and_nothing_is_made(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-project"
    with pytest.raises(UsageError, match=f"the root {missing} does not exist"):
        EventStore(missing).append("f1", "T", "A")
    with pytest.raises(UsageError, match=f"the root {missing} does not exist"):
        EventStore.from_environment(missing)
    assert os.listdir(tmp_path) == []
    (tmp_path / "a-file").write_text("")
    with pytest.raises(UsageError, match="is not a folder"):
        EventStore(tmp_path / "a-file")
    assert os.listdir(tmp_path) == ["a-file"]


def test_verify_passes_a_clean_log_and_warns_on_identical_duplicates(
    store: EventStore, root: Path
) -> None:
    store.append_many("f1", [{"event_type": "T", "aggregate_id": "A"}] * 2)
    assert store.verify().ok and store.verify().problems == []
    first = log_file(root, "f1").read_bytes().splitlines(keepends=True)[0]
    write_by_hand(root, "f1", first)  # what a merge=union leaves behind
    report = store.verify(["f1"])
    assert report.ok
    assert [(p.line, p.level) for p in report.problems] == [(3, "warning")]
    assert len(store.read("f1")) == 2
    assert store.status()["features"]["f1"]["events"] == 2
    assert snapshot(store) == rebuilt_elsewhere(root, root.parent / "other.db")


def test_verify_fails_on_one_id_with_two_contents(store: EventStore, root: Path) -> None:
    event = store.append("f1", "T", "A")
    changed = json.loads(event.to_line())
    changed["payload"] = {"changed": True}
    write_by_hand(root, "f1", (json.dumps(changed, sort_keys=True) + "\n").encode())
    report = store.verify()
    assert not report.ok
    assert report.to_dict()["problems"][0]["line"] == 2
    with pytest.raises(StoreError, match="line 1"):
        store.status()


def test_repair_moves_an_invalid_torn_tail_aside(store: EventStore, root: Path) -> None:
    store.append("f1", "T", "A")
    write_by_hand(root, "f1", b'{"event_id": "01HZ')
    with pytest.raises(StoreError, match="replaylog repair"):
        store.append("f1", "T", "B")
    assert not store.verify().ok
    assert store.repair("f1") is True
    assert store.repair("f1") is False
    torn = [p for p in log_file(root, "f1").parent.iterdir() if ".torn-" in p.name]
    assert len(torn) == 1 and torn[0].read_bytes() == b'{"event_id": "01HZ'
    store.append("f1", "T", "B")
    assert store.status()["features"]["f1"]["events"] == 2
    assert snapshot(store) == rebuilt_elsewhere(root, root.parent / "other.db")


def test_valid_torn_tail_is_indexed_and_completed_by_the_next_append(
    store: EventStore, root: Path
) -> None:
    store.append("f1", "T", "A")
    write_by_hand(root, "f1", foreign_line(50).rstrip(b"\n"))
    assert store.status()["features"]["f1"]["events"] == 2
    after = store.append("f1", "T", "B")
    assert after.lamport_clock == 51
    assert [e.lamport_clock for e in store.read("f1")] == [1, 50, 51]
    assert snapshot(store) == rebuilt_elsewhere(root, root.parent / "other.db")
    assert [e.event_id for e in store.pending()][-1] == after.event_id


def test_close_and_context_manager_release_the_index(root: Path) -> None:
    with EventStore(root, fsync=False) as store:
        store.append("f1", "T", "A")
        conn = store.index.conn
        assert os.path.exists(store.index_path + "-wal")
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("SELECT 1")
    # The last connection gone, SQLite has folded its write-ahead log into the file.
    assert not os.path.exists(store.index_path + "-wal")
    store.close()  # twice is harmless
    assert store.status()["totals"]["events"] == 1  # and the store opens it again
    store.close()


def test_a_large_batch_to_an_open_log_is_indexed_when_append_many_returns(
    store: EventStore,
) -> None:
    """Single appends to a log the store keeps open leave the index behind (SPEC section
    4 lets it catch up later); a batch of many events is taken in at once, with the lines
    appended before it, so no later command reads the batch back."""
    store.append("f1", "T", "A")
    store.append("f1", "T", "A")  # to the open log: not indexed yet
    store.append_many("f1", [{"event_type": "T", "aggregate_id": "A"}] * 100)
    with sqlite3.connect(store.index_path) as conn:
        (count,) = conn.execute("SELECT count(*) FROM events WHERE feature = 'f1'").fetchone()
        clocks = [c for (c,) in conn.execute("SELECT lamport FROM events ORDER BY line")]
    assert count == 102
    assert clocks == list(range(clocks[0], clocks[0] + 102))
    assert [e.lamport_clock for e in store.read("f1")] == clocks


@pytest.mark.parametrize("count", [10, 100])  # to the open log; through the index (>= 64)
def test_a_batch_takes_one_lock_and_one_fsync_of_the_log(
    root: Path, monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    """SPEC section 3: appending a batch takes one lock and one fsync, whichever way the
    store writes it."""
    import fcntl

    with EventStore(root, fsync=True) as store:
        store.append("f1", "T", "A")
        log_inode = log_file(root, "f1").stat().st_ino
        fsyncs: list[int] = []
        locks: list[int] = []
        real_fsync, real_flock = os.fsync, fcntl.flock

        def fsync(fd: int) -> None:
            real_fsync(fd)
            if os.fstat(fd).st_ino == log_inode:
                fsyncs.append(fd)

        def flock(fd: int, operation: int) -> None:
            real_flock(fd, operation)  # a refused try raises: only locks taken count
            if operation & fcntl.LOCK_EX and os.fstat(fd).st_ino == log_inode:
                locks.append(fd)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(fcntl, "flock", flock)
        store.append_many(
            "f1", [{"event_type": "T", "aggregate_id": f"A{i}"} for i in range(count)]
        )
        monkeypatch.undo()
        assert (len(fsyncs), len(locks)) == (1, 1)
        assert store.status()["features"]["f1"]["events"] == count + 1
