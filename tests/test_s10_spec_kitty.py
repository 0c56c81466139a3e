"""SPEC section 10: the logs spec-kitty writes are read, indexed, counted and replayed in
place, and never rewritten; the index's Lamport value of a line without one
(:mod:`replaylog.clock`).

The real logs of spec-kitty's own repository (``../shared/corpus/spec-kitty``) are
copied into a temporary project first: the corpus itself is read-only.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from receiver import Receiver

from replaylog import (
    Annotation,
    Event,
    EventStore,
    Record,
    StatusEvent,
    StoreError,
    UsageError,
    read_events,
    read_events_raw,
)
from replaylog.clock import derive_clocks, lamport_of
from replaylog.lines import check_line
from replaylog.log import log_path

KIND_TYPES = {
    "envelope": Event,
    "transition": StatusEvent,
    "annotation": Annotation,
    "record": Record,
}


def corpus_lines(log: Path) -> list[dict[str, Any]]:
    """The objects of a log's lines, identical duplicates once (as SPEC section 3 reads)."""
    seen: set[str] = set()
    out = []
    for raw in log.read_bytes().splitlines():
        if not raw.strip():
            continue
        obj = json.loads(raw)
        if obj["event_id"] in seen:
            continue
        seen.add(obj["event_id"])
        out.append(obj)
    return out


def kind_of(obj: dict[str, Any]) -> str:
    if "event_type" in obj:
        return "envelope"
    if "kind" in obj:
        return "annotation"
    if "type" in obj:
        return "record"
    return "transition"


def hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".replaylog" not in p.parts
    }


def run(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "replaylog", "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "REPLAYLOG_FSYNC": "0"},
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def corpus_logs(spec_kitty_corpus: Path) -> dict[str, Path]:
    """Every log of the corpus, by ``<version>/<feature>``."""
    logs = {}
    for version in ("head", "v2.0.0"):
        for log in sorted(
            (spec_kitty_corpus / version / "kitty-specs").glob("*/" + "status.events.jsonl")
        ):
            logs[f"{version}/{log.parent.name}"] = log
    assert len(logs) == 183
    return logs


@pytest.fixture
def project(tmp_path: Path, spec_kitty_corpus: Path) -> Path:
    """A project whose kitty-specs/ is a writable copy of the corpus at head."""
    root = tmp_path / "project"
    shutil.copytree(spec_kitty_corpus / "head" / "kitty-specs", root / "kitty-specs")
    for p in root.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    (root / ".git").mkdir()  # the nearest root, as in a clone
    return root


# --------------------------------------------------------------------------- reading


def test_every_line_of_every_corpus_log_is_read_as_its_kind_exactly(
    corpus_logs: dict[str, Path],
) -> None:
    counted = {kind: 0 for kind in KIND_TYPES}
    for name, log in corpus_logs.items():
        expected = corpus_lines(log)
        lines = read_events(log.parent)
        assert len(lines) == len(expected), name
        for line, obj in zip(lines, expected, strict=True):
            kind = kind_of(obj)
            assert type(line) is KIND_TYPES[kind], (name, obj["event_id"])
            assert line.to_dict() == obj, (name, obj["event_id"])  # absent stays absent
            assert type(line).from_dict(obj) == line
            counted[kind] += 1
        assert read_events_raw(log.parent) == expected
    assert sum(counted.values()) == 11_069
    assert all(counted.values()), counted


def test_every_corpus_log_verifies_and_nothing_of_it_is_rewritten(project: Path) -> None:
    before = hashes(project)
    report = json.loads(run(project, "verify", "--json").stdout)
    assert report == {"ok": True, "problems": []}
    for feature in sorted(p.name for p in (project / "kitty-specs").iterdir())[:5]:
        run(project, "log", feature, "--json")
        run(project, "log", feature)
    run(project, "status", "--json")
    run(project, "rebuild-index", "--json")
    assert hashes(project) == before


def test_rebuild_and_status_count_every_line_of_every_log(project: Path) -> None:
    logs = {p.parent.name: p for p in (project / "kitty-specs").glob("*/status.events.jsonl")}
    expected = {name: len(corpus_lines(log)) for name, log in logs.items()}
    rebuilt = json.loads(run(project, "rebuild-index", "--json").stdout)
    assert rebuilt == {"features": len(logs), "events": sum(expected.values())}
    status = json.loads(run(project, "status", "--json").stdout)
    assert {name: c["events"] for name, c in status["features"].items()} == expected
    assert status["totals"]["pending"] == status["totals"]["events"] == 10_966
    # Kept incrementally (a fresh index caught up by status) equals rebuilt.
    shutil.rmtree(project / ".replaylog")
    again = json.loads(run(project, "status", "--json").stdout)
    assert again == status


def index_rows(root: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(root / ".replaylog" / "queue.db") as conn:
        return conn.execute(
            "SELECT feature, line, event_id, lamport FROM events ORDER BY feature, line"
        ).fetchall()


def test_a_line_without_a_lamport_clock_gets_one_more_than_the_lines_before_it(
    project: Path,
) -> None:
    run(project, "status")
    rows = index_rows(project)
    by_feature: dict[str, list[int]] = {}
    for feature, _line, _eid, lamport in rows:
        by_feature.setdefault(feature, []).append(lamport)
    for feature, values in by_feature.items():
        objs = corpus_lines(project / "kitty-specs" / feature / "status.events.jsonl")
        best, want = 0, []
        for obj in objs:
            value = obj.get("lamport_clock", best + 1)
            best = max(best, value)
            want.append(value)
        assert values == want, feature
    # A function of the logs alone: a deleted and rebuilt index has the same values,
    # and the same clock; a new event's value is above every one of them.
    clock = json.loads(run(project, "status", "--json").stdout)["lamport_clock"]
    shutil.rmtree(project / ".replaylog")
    run(project, "rebuild-index")
    assert index_rows(project) == rows
    assert json.loads(run(project, "status", "--json").stdout)["lamport_clock"] == clock
    feature = max(by_feature, key=lambda f: max(by_feature[f]))
    event = json.loads(
        run(project, "append", feature, "--type", "Noted", "--aggregate", "WP01", "--json").stdout
    )
    assert event["lamport_clock"] > max(max(v) for v in by_feature.values())
    assert event["lamport_clock"] == clock + 1


def test_an_appended_envelope_extends_a_spec_kitty_log_and_the_rest_is_kept_byte_for_byte(
    project: Path,
) -> None:
    feature = "canonical-seams-path-trust-guard-capability-01KVBBT6"
    log = project / "kitty-specs" / feature / "status.events.jsonl"
    before = log.read_bytes()
    with EventStore(project, fsync=False) as store:
        event = store.append(feature, "Noted", "WP01", {"note": "from replaylog"})
        assert log.read_bytes().startswith(before)
        assert log.read_bytes()[len(before) :] == event.to_line()
        assert store.read(feature)[-1] == event
        assert store.verify([feature]).ok


def test_lines_of_every_kind_are_replayed_exactly_as_in_the_log(project: Path) -> None:
    features = ["canonical-seams-path-trust-guard-capability-01KVBBT6"]
    features += sorted(p.name for p in (project / "kitty-specs").iterdir())[:3]
    keep = set(features)
    for p in (project / "kitty-specs").iterdir():
        if p.name not in keep:
            shutil.rmtree(p)
    expected = {
        obj["event_id"]: obj
        for feature in features
        for obj in corpus_lines(project / "kitty-specs" / feature / "status.events.jsonl")
    }
    assert {kind_of(obj) for obj in expected.values()} == set(KIND_TYPES)
    with Receiver() as r, EventStore(project, fsync=False) as store:
        report = store.replay(r.url, backoff_base=0)
        assert report.accepted == len(expected) and report.pending == 0
        assert r.events == expected
        sent = [eid for req in r.requests for eid in req.event_ids]
        # In (Lamport, event_id) order of the index's values.
        with sqlite3.connect(store.index_path) as conn:
            order = [
                eid
                for (eid,) in conn.execute("SELECT event_id FROM events ORDER BY lamport, event_id")
            ]
        assert sent == order


# --------------------------------------------------------------------------- bad lines

GOOD: dict[str, dict[str, Any]] = {
    "transition": {
        "actor": "claude",
        "at": "2026-06-17T19:13:22.170524+00:00",
        "event_id": "01KVBG177TQKJ7XDBRS1QP8NZ8",
        "evidence": None,
        "execution_mode": "worktree",
        "force": False,
        "from_lane": "planned",
        "mission_slug": "m",
        "reason": None,
        "review_ref": None,
        "to_lane": "claimed",
        "wp_id": "WP01",
    },
    "annotation": {
        "actor": {"model": None, "profile": "p", "role": "implementer", "tool": "claude"},
        "at": "2026-06-17T20:15:43.889257+00:00",
        "delta": {"subtasks": {"T001": "done"}},
        "event_id": "01KVBG177TQKJ7XDBRS1QP8NZ9",
        "kind": "annotation",
        "wp_id": "WP01",
    },
    "record": {
        "at": "2026-06-17T21:03:31.766594+00:00",
        "event_id": "01KVBPAXXPWMHGG35MXA7AEE98",
        "type": "RetrospectiveCaptured",
        "lamport": 1,
    },
    "envelope": {
        "aggregate_id": "01KVBBT6FEQ01NHNSQD7X8JTPE",
        "event_id": "01KVBBT6W9C24PGHW3K4KJH1W1",
        "event_type": "MissionCreated",
        "payload": {},
        "timestamp": "2026-06-17T17:59:38.121297+00:00",
    },
}

# (kind, field, a bad value or MISSING, what the message says)
MISSING = object()
BAD_FIELDS: list[tuple[str, str, Any, str]] = [
    ("transition", "wp_id", MISSING, "missing field 'wp_id'"),
    ("transition", "wp_id", 7, "field 'wp_id' must be a non-empty string"),
    ("transition", "wp_id", "", "field 'wp_id' must be a non-empty string"),
    ("transition", "from_lane", MISSING, "missing field 'from_lane'"),
    ("transition", "from_lane", "doing", "field 'from_lane' must be a lane"),
    ("transition", "to_lane", "nowhere", "field 'to_lane' must be a lane"),
    ("transition", "to_lane", None, "field 'to_lane' must be a lane"),
    ("transition", "at", MISSING, "missing field 'at'"),
    ("transition", "at", 1750000000, "field 'at' must be a string"),
    ("transition", "at", "yesterday", "field 'at' must be an ISO-8601 date and time"),
    ("transition", "actor", MISSING, "missing field 'actor'"),
    ("transition", "actor", 5, "field 'actor' must be a string or an object"),
    ("transition", "actor", {"role": "r"}, "field 'actor' must be a string or an object"),
    (
        "transition",
        "actor",
        {"role": 1, "profile": None, "tool": None, "model": None},
        "field 'actor.role' must be a string or null",
    ),
    ("transition", "force", MISSING, "missing field 'force'"),
    ("transition", "force", "no", "field 'force' must be true or false"),
    ("transition", "force", 0, "field 'force' must be true or false"),
    ("transition", "execution_mode", MISSING, "missing field 'execution_mode'"),
    ("transition", "execution_mode", None, "field 'execution_mode' must be a string"),
    ("transition", "event_id", "01kvbg177tqkj7xdbrs1qp8nz8", "field 'event_id' must be a ULID"),
    ("transition", "lamport_clock", "3", "field 'lamport_clock' must be a non-negative integer"),
    ("annotation", "wp_id", MISSING, "missing field 'wp_id'"),
    ("annotation", "at", None, "field 'at' must be a string"),
    ("annotation", "actor", [], "field 'actor' must be a string or an object"),
    ("annotation", "delta", MISSING, "missing field 'delta'"),
    ("annotation", "delta", "note", "field 'delta' must be a JSON object"),
    ("annotation", "event_id", MISSING, "field 'event_id' must be a ULID"),
    ("record", "type", "", "field 'type' must be a non-empty string"),
    ("record", "type", 5, "field 'type' must be a non-empty string"),
    ("record", "at", MISSING, "missing field 'at'"),
    ("record", "at", 3.5, "field 'at' must be a string"),
    ("envelope", "payload", MISSING, "missing field 'payload'"),
    ("envelope", "timestamp", MISSING, "missing field 'timestamp' (or 'at')"),
    ("envelope", "timestamp", "2026-06-17 17:59", "field 'timestamp' must be ISO-8601 UTC"),
    ("envelope", "node_id", "", "field 'node_id' must be a non-empty string"),
    ("envelope", "lamport_clock", -1, "field 'lamport_clock' must be a non-negative integer"),
    ("envelope", "aggregate_id", None, "field 'aggregate_id' must be a non-empty string"),
    ("envelope", "causation_id", 5, "field 'causation_id' must be a string or null"),
]


def with_value(kind: str, field: str, value: Any) -> dict[str, Any]:
    obj = dict(GOOD[kind])
    if value is MISSING:
        obj.pop(field, None)
    else:
        obj[field] = value
    return obj


@pytest.mark.parametrize("kind", sorted(GOOD))
def test_a_good_line_of_each_kind_is_valid(kind: str) -> None:
    assert check_line(GOOD[kind]) == kind


@pytest.mark.parametrize(("kind", "field", "value", "says"), BAD_FIELDS)
def test_each_kind_names_its_bad_or_missing_field_with_the_line(
    tmp_path: Path, kind: str, field: str, value: Any, says: str
) -> None:
    feature_dir = tmp_path / "kitty-specs" / "f"
    feature_dir.mkdir(parents=True)
    good = [GOOD[k] for k in ("envelope", "transition")]
    bad = with_value(kind, field, value)
    lines = [json.dumps(obj, sort_keys=True) for obj in [*good, bad]]
    original = ("\n".join(lines) + "\n").encode()
    Path(log_path(feature_dir)).write_bytes(original)
    with pytest.raises(StoreError) as info:
        read_events(feature_dir)
    assert str(info.value).startswith(f"Line 3: invalid event structure: {kind}: {says}")
    assert info.value.line == 3 and info.value.path == log_path(feature_dir)
    proc = run(tmp_path, "verify", check=False)
    assert proc.returncode == 1
    assert f"status.events.jsonl:3: Line 3: invalid event structure: {kind}: {says}" in proc.stdout
    assert Path(log_path(feature_dir)).read_bytes() == original


@pytest.mark.parametrize(
    ("obj", "says"),
    [
        (
            {"event_id": "01KVBG177TQKJ7XDBRS1QP8NZ8", "kind": "note", "wp_id": "WP01"},
            "unknown kind 'note'",
        ),
        ({"event_id": "01KVBG177TQKJ7XDBRS1QP8NZ8", "wp_id": "WP01"}, "a line of no known kind"),
    ],
)
def test_a_line_of_another_kind_or_of_none_is_refused(obj: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        check_line(obj)


# --------------------------------------------------------------------------- many logs


def break_one(project: Path) -> tuple[str, Path]:
    feature = "canonical-seams-path-trust-guard-capability-01KVBBT6"
    log = project / "kitty-specs" / feature / "status.events.jsonl"
    with log.open("ab") as f:
        f.write(b'{"event_id": "01KVBG177TQKJ7XDBRS1QP8NZ9", "to_lane": "nowhere"}\n')
    return feature, log


def test_one_bad_log_does_not_stop_status_which_counts_the_others_and_exits_1(
    project: Path,
) -> None:
    feature, log = break_one(project)
    lines = len(log.read_bytes().splitlines())
    proc = run(project, "status", "--json", check=False)
    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    assert feature not in out["features"] and len(out["features"]) == 179
    assert out["totals"]["events"] == 10_966 - len(corpus_lines(log)) + 1
    assert out["problems"] == [
        {
            "path": str(log),
            "line": lines,
            "message": f"Line {lines}: invalid event structure: transition: missing field 'wp_id'",
        }
    ]
    assert out["error"]["type"] == "LogsUnreadableError"
    human = run(project, "status", check=False)
    assert human.returncode == 1
    assert f"status.events.jsonl:{lines}: Line {lines}: invalid event structure" in human.stdout
    assert human.stderr.splitlines() == [human.stderr.strip()]
    assert human.stderr.startswith("Error: 1 log cannot be read: ")
    assert "total" in human.stdout


def test_rebuild_index_keeps_the_old_index_while_a_log_is_bad_unless_skip_bad(
    project: Path,
) -> None:
    run(project, "rebuild-index")
    index = project / ".replaylog" / "queue.db"
    before = index_rows(project)
    feature, log = break_one(project)
    proc = run(project, "rebuild-index", check=False)
    assert proc.returncode == 1
    assert "the index was not rebuilt and stays as it was" in proc.stderr
    assert f"{feature}/status.events.jsonl:" in proc.stdout
    assert index_rows(project) == before
    assert not list(index.parent.glob("queue.db.rebuild-*"))
    skipped = run(project, "rebuild-index", "--skip-bad", "--json")
    result = json.loads(skipped.stdout)
    assert result["features"] == 179 and [s["feature"] for s in result["skipped"]] == [feature]
    assert {row[0] for row in index_rows(project)} == {
        p.parent.name
        for p in (project / "kitty-specs").glob("*/status.events.jsonl")
        if p.stat().st_size
    } - {feature}


def test_replay_without_feature_sends_the_readable_logs_and_lists_the_bad_one(
    project: Path,
) -> None:
    keep = {
        "canonical-seams-path-trust-guard-capability-01KVBBT6",
        "write-side-context-factory-adoption-01KV9W0X",
    }
    for p in (project / "kitty-specs").iterdir():
        if p.name not in keep:
            shutil.rmtree(p)
    feature, _log = break_one(project)
    (good,) = keep - {feature}
    expected = corpus_lines(project / "kitty-specs" / good / "status.events.jsonl")
    with Receiver() as r:
        proc = run(project, "replay", "--url", r.url, "--json", check=False)
        assert proc.returncode == 1, proc.stderr
        out = json.loads(proc.stdout)
        assert out["accepted"] == len(expected)
        assert [p["path"].endswith(f"{feature}/status.events.jsonl") for p in out["problems"]] == [
            True
        ]
        assert set(r.events) == {obj["event_id"] for obj in expected}


KEPT_FEATURE = "write-side-context-factory-adoption-01KV9W0X"


def link_and_stray(project: Path, tmp_path: Path) -> tuple[Path, Path]:
    """``kitty-specs/linked``, a link to a copy of a corpus feature elsewhere (a valid log
    behind it), and a valid log in ``kitty-specs/not a feature/``: neither can be read
    (SPEC sections 1 and 12), and neither may stop the other logs or go unsaid."""
    source = project / "kitty-specs" / KEPT_FEATURE
    elsewhere = tmp_path / "elsewhere" / KEPT_FEATURE
    shutil.copytree(source, elsewhere)
    link = project / "kitty-specs" / "linked"
    link.symlink_to(elsewhere, target_is_directory=True)
    stray = project / "kitty-specs" / "not a feature" / "status.events.jsonl"
    stray.parent.mkdir()
    shutil.copy(source / "status.events.jsonl", stray)
    return link, stray


def test_a_linked_folder_and_a_log_outside_any_feature_are_listed_by_every_command_over_logs(
    project: Path, tmp_path: Path
) -> None:
    features = {p.parent.name for p in (project / "kitty-specs").glob("*/status.events.jsonl")}
    run(project, "rebuild-index")
    before = index_rows(project)
    link, stray = link_and_stray(project, tmp_path)
    for command in ("status", "verify", "rebuild-index", "board"):
        proc = run(project, command, "--json", check=False)
        assert proc.returncode == 1, (command, proc.stderr)
        out = json.loads(proc.stdout)
        errors = [p for p in out["problems"] if p.get("level", "error") == "error"]
        assert {p["path"]: p["line"] for p in errors} == {str(link): None, str(stray): None}
        assert "is a symbolic link" in errors[0]["message"] + errors[1]["message"]
        assert "is not a feature name" in errors[0]["message"] + errors[1]["message"]
        if command == "status":
            assert set(out["features"]) == features  # every readable log is counted
        human = run(project, command, check=False)
        assert human.returncode == 1
        shown = [line.split(": ", 1)[0] for line in human.stdout.splitlines()]
        assert {str(link), str(stray)} <= set(shown), human.stdout
        if command == "verify":
            assert human.stderr == "", human.stderr  # the report is its output
        else:
            assert human.stderr.startswith("Error: 2 logs cannot be read"), human.stderr
    assert index_rows(project) == before  # rebuild-index kept the old index


def test_replay_without_feature_sends_every_log_but_a_linked_or_misnamed_folder_and_lists_them(
    project: Path, tmp_path: Path
) -> None:
    for p in (project / "kitty-specs").iterdir():
        if p.name != KEPT_FEATURE:
            shutil.rmtree(p)
    link, stray = link_and_stray(project, tmp_path)
    expected = corpus_lines(project / "kitty-specs" / KEPT_FEATURE / "status.events.jsonl")
    with Receiver() as r:
        proc = run(project, "replay", "--url", r.url, "--json", check=False)
        assert proc.returncode == 1, proc.stderr
        out = json.loads(proc.stdout)
        assert out["accepted"] == len(expected)
        assert sorted(p["path"] for p in out["problems"]) == sorted([str(link), str(stray)])
        assert set(r.events) == {obj["event_id"] for obj in expected}


def test_an_envelope_read_from_elsewhere_is_not_written_by_the_store_without_its_fields(
    project: Path,
) -> None:
    """SPEC 10: section 2's fields are required in lines the store writes."""
    feature = "canonical-seams-path-trust-guard-capability-01KVBBT6"
    log = project / "kitty-specs" / feature / "status.events.jsonl"
    foreign = next(line for line in read_events(log.parent) if isinstance(line, Event))
    assert foreign.absent  # spec-kitty's envelopes carry no node_id or lamport_clock
    before = log.read_bytes()
    with EventStore(project, fsync=False) as store:
        with pytest.raises(UsageError, match="holds every field of SPEC section 2"):
            store.append_many("other", [foreign])
    assert log.read_bytes() == before
    assert not (project / "kitty-specs" / "other").exists()


CLOCKS: list[list[int | None]] = [
    [None, None, None],
    [5, None, 3, None, 9, None],
    [None, 7, None, 2, 2, None],
    [],
]


@pytest.mark.parametrize("clocks", CLOCKS)
@pytest.mark.parametrize("before", [0, 4])
def test_the_index_derives_each_missing_clock_as_lamport_of_does(
    clocks: list[int | None], before: int
) -> None:
    rows = [("f", n, f"id{n}", clock) for n, clock in enumerate(clocks)]
    derived, top = derive_clocks(rows, before)
    expected: list[int] = []
    best = before
    for clock in clocks:
        obj: dict[str, Any] = {} if clock is None else {"lamport_clock": clock}
        value = lamport_of(obj, best)
        expected.append(value)
        best = max(best, value)
    assert [row[-1] for row in derived] == expected
    assert [row[:-1] for row in derived] == [row[:-1] for row in rows]
    assert top == best


def test_a_line_without_a_clock_is_one_above_the_largest_value_before_it() -> None:
    assert lamport_of({}, 9) == 10
    assert lamport_of({"lamport_clock": 3}, 9) == 3
    derived, top = derive_clocks([("a", 9), ("b", 3), ("c", None)], 0)
    assert [row[-1] for row in derived] == [9, 3, 10] and top == 10
