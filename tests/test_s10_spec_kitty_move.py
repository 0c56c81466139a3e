"""SPEC section 10, "The board", "Moving a work package" and "API": ``replaylog board``,
``replaylog move``, ``EventStore.board`` and ``EventStore.move``, on copies of the real
spec-kitty logs (``../shared/corpus/spec-kitty``, read-only) and on small logs made here.

The CLI runs in this process through :func:`replaylog.cli.main` under click's
``CliRunner`` isolation (``main`` turns every failure into one ``Error:`` line and its
exit code); a few tests run real processes, to move from several at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from spec_kitty_reader import read_event_stream, read_lanes

from replaylog import (
    EventStore,
    LogsUnreadableError,
    ReplaylogWarning,
    StatusEvent,
    StoreError,
    UsageError,
    read_events_raw,
)
from replaylog.board import ALLOWED_MOVES, LANES, new_transition, render, snapshot
from replaylog.cli import main

#: No REPLAYLOG_* setting of the caller's reaches a test, and fsync is off.
pytestmark = pytest.mark.usefixtures("clean_env")

SNAPSHOT_FIELDS = ("event_count", "last_event_id", "materialized_at", "summary", "work_packages")
MISSION_FIELDS = ("mission_slug", "mission_number", "mission_type")
AT_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00")
#: A corpus feature with a status.json, a meta.json (and its mission_id) and annotations.
FEATURE = "002-lightweight-pypi-release"
MOVES = [(source, target) for source, targets in ALLOWED_MOVES.items() for target in targets]
#: Refused by the lane rules; a move to genesis is refused before them (see its own test).
REFUSED = [(s, t) for s in LANES for t in LANES[1:] if t not in ALLOWED_MOVES[s]]
#: Evidence spec-kitty's ``validate_done_evidence`` accepts for a move to done.
EVIDENCE = {"review": {"reviewer": "rev", "verdict": "approved", "reference": "PR#1"}}


@dataclass
class Run:
    code: int
    out: str
    err: str

    def error_line(self) -> str:
        """The one ``Error: ...`` line on stderr; fails if stderr holds anything else."""
        assert "Traceback" not in self.out + self.err
        lines = self.err.splitlines()
        assert len(lines) == 1, self.err
        assert lines[0].startswith("Error: "), self.err
        return lines[0]


def run(root: Path, *args: str, input: str | None = None, columns: int = 80) -> Run:
    """``replaylog --root ROOT ARGS...`` as the console script runs it, stdout and stderr apart."""
    runner = CliRunner()
    code = 0
    env = {"COLUMNS": str(columns), "LINES": "24"}
    with runner.isolation(input=input, env=env) as (out, err, _mixed):
        try:
            main(["--root", str(root), *args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        return Run(code, out.getvalue().decode(), err.getvalue().decode())


def copy_corpus(corpus: Path, root: Path, release: str = "head") -> None:
    """The corpus's logs, status.json and meta.json files, writable, under ``root``."""
    for feature in sorted((corpus / release / "kitty-specs").iterdir()):
        target = root / "kitty-specs" / feature.name
        target.mkdir(parents=True, exist_ok=True)
        for name in ("status.events.jsonl", "status.json", "meta.json"):
            if (feature / name).exists():
                shutil.copyfile(feature / name, target / name)
                (target / name).chmod(0o644)


@pytest.fixture
def project(tmp_path: Path, spec_kitty_corpus: Path) -> Path:
    """A project whose kitty-specs/ holds the corpus at head (logs, status.json, meta.json)."""
    root = tmp_path / "project"
    copy_corpus(spec_kitty_corpus, root)
    (root / ".git").mkdir()
    return root


@pytest.fixture
def small(tmp_path: Path) -> Path:
    """A project with one feature, ``demo``: a meta.json, a status.json, no log yet."""
    root = tmp_path / "small"
    feature = root / "kitty-specs" / "demo"
    feature.mkdir(parents=True)
    (root / ".git").mkdir()
    meta = {"mission_id": "01KN2371WNZX28ME4MN97B67PJ", "mission_number": 7}
    (feature / "meta.json").write_text(json.dumps(meta))
    (feature / "status.json").write_text(
        json.dumps(snapshot([], meta=meta), sort_keys=True, indent=2) + "\n"
    )
    return root


def feature_dir(root: Path, feature: str) -> Path:
    return root / "kitty-specs" / feature


def log_of(root: Path, feature: str) -> Path:
    return feature_dir(root, feature) / "status.events.jsonl"


def status_of(root: Path, feature: str) -> dict[str, Any]:
    return json.loads((feature_dir(root, feature) / "status.json").read_text())


def meta_of(root: Path, feature: str) -> dict[str, Any] | None:
    path = feature_dir(root, feature) / "meta.json"
    return json.loads(path.read_text()) if path.exists() else None


def expected_snapshot(root: Path, feature: str) -> dict[str, Any]:
    """The reducer over the log's lines, parsed one by one with plain json."""
    text = log_of(root, feature).read_text(encoding="utf-8")
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    return snapshot(lines, meta=meta_of(root, feature))


def files_of(root: Path) -> dict[str, str]:
    """A hash of every file under ``root``, index included (its lock files aside)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


def move(root: Path, feature: str, wp: str, to: str, *args: str) -> Run:
    return run(root, "move", feature, wp, "--to", to, "--actor", "tester", *args)


def moved(root: Path, feature: str, wp: str, to: str, *args: str) -> dict[str, Any]:
    """Move and return the transition ``--json`` printed."""
    r = move(root, feature, wp, to, *args, "--json")
    assert r.code == 0, r
    assert r.err == ""
    line: dict[str, Any] = json.loads(r.out)
    return line


def put_in_lane(root: Path, feature: str, wp: str, lane: str) -> None:
    """Bring ``wp`` to ``lane`` with a forced move (none for genesis)."""
    if lane != "genesis":
        moved(root, feature, wp, lane, "--force", "--reason", "set up for the test")


def evidence_file(root: Path) -> str:
    """A file beside the project (not in it) holding ``EVIDENCE``."""
    path = root.parent / "evidence.json"
    path.write_text(json.dumps(EVIDENCE))
    return str(path)


# --------------------------------------------------------------------------- board


def test_board_json_equals_every_fresh_status_json_of_the_corpus(
    project: Path, spec_kitty_corpus: Path
) -> None:
    expectations = json.loads((spec_kitty_corpus / "head" / "expectations.json").read_text())
    stale = set(expectations["stale_status_json"])
    r = run(project, "board", "--json")
    assert r.code == 0, r
    boards = json.loads(r.out)
    compared, mismatched = 0, []
    for name in sorted(boards):
        path = feature_dir(project, name) / "status.json"
        if name in stale or not path.exists():
            continue
        want = json.loads(path.read_text())
        compared += 1
        fields = [f for f in SNAPSHOT_FIELDS + MISSION_FIELDS if boards[name][f] != want[f]]
        if fields:
            mismatched.append((name, fields))
    assert mismatched == []
    assert compared == 174
    # One feature at a time gives the same snapshot, through the API too.
    for name in (FEATURE, *sorted(stale)[:1]):
        single = run(project, "board", name, "--json")
        assert single.code == 0, single
        assert json.loads(single.out) == boards[name]
        with EventStore(project) as store:
            assert store.board(name) == boards[name]


def test_board_without_a_feature_shows_every_feature(project: Path) -> None:
    logs = sorted(p.parent.name for p in (project / "kitty-specs").glob("*/status.events.jsonl"))
    r = run(project, "board", "--json")
    assert r.code == 0, r
    boards = json.loads(r.out)
    assert sorted(boards) == logs
    for name in logs[:10]:
        assert boards[name] == expected_snapshot(project, name)
    text = run(project, "board")
    assert text.code == 0, text
    # One board after the other, each under its feature's name.
    headings = [line for line in text.out.splitlines() if line in set(logs)]
    assert headings == logs
    assert text.out == "\n".join(render(boards[name], width=80, title=name) for name in logs)


def test_the_board_on_a_terminal_is_the_lanes_at_80_columns(project: Path) -> None:
    with EventStore(project) as store:
        names = store.features()
    # The feature with the most work packages: the widest board of the corpus.
    widest = max(names, key=lambda name: len(expected_snapshot(project, name)["work_packages"]))
    snap = expected_snapshot(project, widest)
    r = run(project, "board", widest)
    assert r.code == 0, r
    assert r.out == render(snap, width=80, title=widest)
    lines = r.out.splitlines()
    assert lines[0] == widest
    assert max(map(len, lines)) <= 80
    for wp, state in snap["work_packages"].items():
        assert any(line.startswith(f"{wp} ") for line in lines) or f"  {wp} " in r.out, wp
        assert state["actor"][:5] in r.out
    for lane in ("planned", "in_progress", "done", "canceled"):
        assert re.search(rf"\b{lane} \d+", r.out), lane
    # A wider terminal draws the same board wider.
    wide = run(project, "board", widest, columns=200)
    assert wide.out == render(snap, width=200, title=widest)
    assert wide.out != r.out


def test_a_bad_log_among_many_is_listed_and_every_other_board_is_shown(project: Path) -> None:
    bad = log_of(project, FEATURE)
    with bad.open("ab") as f:
        f.write(b'{"event_id": "01KJ5V38JDYQW3ESGM3ER1JJV9", "to_lane": "nowhere"}\n')
    number = len(bad.read_bytes().splitlines())
    r = run(project, "board")
    assert r.code == 1
    assert f"{bad}:{number}: Line {number}: invalid event structure" in r.out
    assert r.error_line().startswith(f"Error: 1 log cannot be read: {bad}")
    assert "003-auto-protect-agent\n" in r.out
    j = run(project, "board", "--json")
    assert j.code == 1
    out = json.loads(j.out)
    assert FEATURE not in out["boards"] and "003-auto-protect-agent" in out["boards"]
    assert [p["path"] for p in out["problems"]] == [str(bad)]
    assert out["problems"][0]["line"] == number
    assert out["error"]["type"] == "LogsUnreadableError"
    with EventStore(project) as store, pytest.raises(LogsUnreadableError) as caught:
        store.boards()
    assert isinstance(caught.value.partial, dict)
    assert FEATURE not in caught.value.partial
    # Alone, the bad log is a data error naming its line.
    single = run(project, "board", FEATURE)
    assert single.code == 1
    assert f"Line {number}: invalid event structure" in single.error_line()


def test_the_board_leaves_the_cycle_collector_as_it_found_it(project: Path) -> None:
    """The board pauses the collector while it reads and folds a log, and gives it back
    as it was: on after a board, after a refused one, and off when the caller had it off."""
    import gc

    assert gc.isenabled()
    with EventStore(project) as store:
        assert store.board(FEATURE)["event_count"] > 0
        assert gc.isenabled()
        with log_of(project, FEATURE).open("ab") as f:
            f.write(b'{"event_id": "01KJ5V38JDYQW3ESGM3ER1JJV9", "to_lane": "nowhere"}\n')
        with pytest.raises(StoreError):
            store.board(FEATURE)
        assert gc.isenabled()
        gc.disable()
        try:
            with pytest.raises(StoreError):
                store.board(FEATURE)
            assert not gc.isenabled()
        finally:
            gc.enable()


def test_a_bad_meta_json_is_an_error_naming_it(project: Path) -> None:
    meta = feature_dir(project, FEATURE) / "meta.json"
    before = files_of(project)
    meta.write_text("{not json")
    r = run(project, "board", FEATURE)
    assert r.code == 1
    assert r.error_line() == (
        f"Error: {meta}: the feature's meta.json is not valid JSON (a key in double quotes"
        " expected at character 2); correct it or remove it"  # the reader's words, not json's
    )
    m = move(project, FEATURE, "WP99", "planned")
    assert m.code == 1
    assert str(meta) in m.error_line()
    meta.write_text("[1, 2]")
    with EventStore(project) as store:
        with pytest.raises(StoreError, match="must hold a JSON object") as caught:
            store.board(FEATURE)
        assert caught.value.path == str(meta)
        with pytest.raises(LogsUnreadableError) as many:
            store.boards()
        assert many.value.problems[0][0] == str(meta)
    meta.write_text(json.dumps({"mission_id": 5}))
    assert str(meta) in move(project, FEATURE, "WP99", "planned").error_line()
    meta.unlink()
    os.symlink("/etc/hostname", meta)
    assert "symbolic link" in run(project, "board", FEATURE).error_line()
    # Nothing but meta.json itself changed: no move was written.
    meta.unlink()
    meta_key = str(meta.relative_to(project))
    assert files_of(project) == {k: v for k, v in before.items() if k != meta_key}


def test_a_feature_without_a_log_has_an_empty_board(small: Path) -> None:
    r = run(small, "board", "demo", "--json")
    assert r.code == 0, r
    assert json.loads(r.out) == snapshot([], meta=meta_of(small, "demo"))
    assert "0 work packages" in run(small, "board", "demo").out
    assert not log_of(small, "demo").exists()
    assert run(small, "board", "../etc").code == 2


@pytest.mark.parametrize(
    ("meta", "mission_type"),
    [
        (None, "software-dev"),
        ({"mission": "research"}, "research"),
        ({"mission_type": "documentation", "mission": "research"}, "documentation"),
        ({"mission_type": " ", "mission": None}, "software-dev"),
    ],
)
def test_mission_type_is_resolved_as_spec_kitty_at_the_corpus_commit_resolves_it(
    small: Path, meta: dict[str, Any] | None, mission_type: str
) -> None:
    """meta.json's ``mission_type``, else its older ``mission``, else ``software-dev``
    (no meta.json at all too), as spec-kitty's ``resolve_mission_identity`` did at the
    corpus's commit; later releases give ``""`` instead (see the README)."""
    path = feature_dir(small, "demo") / "meta.json"
    path.unlink()
    if meta is not None:
        path.write_text(json.dumps(meta))
    moved(small, "demo", "WP01", "planned")
    board = json.loads(run(small, "board", "demo", "--json").out)
    assert board["mission_type"] == mission_type
    assert (board["mission_slug"], board["mission_number"]) == ("demo", "")
    assert status_of(small, "demo")["mission_type"] == mission_type


def test_board_of_a_feature_that_does_not_exist_is_an_error_as_in_log(small: Path) -> None:
    r = run(small, "board", "nosuch")
    assert r.code == 1, r
    assert "feature 'nosuch' has no log" in r.error_line()
    assert not (small / "kitty-specs" / "nosuch").exists()


def test_appended_envelopes_leave_the_board_unchanged(project: Path) -> None:
    before = run(project, "board", FEATURE, "--json").out
    with EventStore(project) as store:
        store.append(FEATURE, "Noted", "WP01", {"note": "from replaylog"})
        store.append_many(FEATURE, [{"event_type": "Moved", "aggregate_id": "WP02"}] * 3)
        assert len(store.read(FEATURE)) == len(read_events_raw(log_of(project, FEATURE).parent))
    after = run(project, "board", FEATURE, "--json")
    assert after.out == before
    # ... and spec-kitty's own reader still takes the log, with the same lanes.
    assert read_lanes(feature_dir(project, FEATURE)) == {
        wp: s["lane"] for wp, s in json.loads(before)["work_packages"].items()
    }


# --------------------------------------------------------------------------- move


def test_a_move_appends_one_canonical_spec_kitty_line_and_keeps_the_rest(project: Path) -> None:
    log = log_of(project, FEATURE)
    prefix = log.read_bytes()
    line = moved(project, FEATURE, "WP05", "planned", "--reason", "new work")
    data = log.read_bytes()
    assert hashlib.sha256(data[: len(prefix)]).digest() == hashlib.sha256(prefix).digest()
    tail = data[len(prefix) :]
    assert tail.count(b"\n") == 1 and tail.endswith(b"\n")
    obj = json.loads(tail)
    assert tail == (json.dumps(obj, sort_keys=True) + "\n").encode()
    assert obj == line
    reference = new_transition(
        event_id=obj["event_id"],
        at=obj["at"],
        wp_id="WP05",
        from_lane="genesis",
        to_lane="planned",
        actor="tester",
        mission_slug=FEATURE,
        mission_id=meta_of(project, FEATURE)["mission_id"],  # type: ignore[index]
        reason="new work",
    )
    assert obj == reference
    assert list(obj) == sorted(reference)
    assert AT_RE.fullmatch(obj["at"]), obj["at"]
    assert obj["mission_slug"] == FEATURE
    assert obj["mission_id"] == "01KN2371WNZX28ME4MN97B67PJ"
    assert obj["force"] is False and obj["execution_mode"] == "worktree"
    # The transition carries no Lamport value: the index derives it from the log.
    assert "lamport_clock" not in obj


def test_a_feature_without_meta_json_gets_no_mission_id(small: Path) -> None:
    (feature_dir(small, "demo") / "meta.json").unlink()
    line = moved(small, "demo", "WP01", "planned")
    assert "mission_id" not in line
    assert line["mission_slug"] == "demo"


@pytest.mark.parametrize(("source", "target"), MOVES)
def test_every_allowed_move_is_written(small: Path, source: str, target: str) -> None:
    put_in_lane(small, "demo", "WP01", source)
    # spec-kitty takes a move to done without --force only with evidence.
    extra = ("--evidence-file", evidence_file(small)) if target == "done" else ()
    line = moved(small, "demo", "WP01", target, *extra)
    assert (line["from_lane"], line["to_lane"], line["force"]) == (source, target, False)
    board = json.loads(run(small, "board", "demo", "--json").out)
    assert board["work_packages"]["WP01"]["lane"] == target
    assert board["work_packages"]["WP01"]["last_event_id"] == line["event_id"]
    assert status_of(small, "demo") == board


@pytest.mark.parametrize(("source", "target"), REFUSED)
def test_every_other_move_is_refused_naming_the_allowed_lanes_and_touches_nothing(
    small: Path, source: str, target: str
) -> None:
    put_in_lane(small, "demo", "WP01", source)
    run(small, "status")  # the index exists, caught up
    before = files_of(small)
    r = move(small, "demo", "WP01", target)
    assert r.code == 2, r
    allowed = ", ".join(ALLOWED_MOVES[source]) or "none (it is a final lane)"
    assert r.error_line() == (
        f"Error: cannot move WP01 from {source} to {target} without --force;"
        f" allowed from {source}: {allowed}"
    )
    assert r.out == ""
    assert files_of(small) == before
    assert sorted(p.name for p in feature_dir(small, "demo").iterdir()) == sorted(
        ["meta.json", "status.json"] + (["status.events.jsonl"] if source != "genesis" else [])
    )


def test_a_refused_move_on_a_corpus_feature_leaves_log_index_and_status_json_as_they_were(
    project: Path,
) -> None:
    run(project, "status")
    before = files_of(project)
    assert status_of(project, FEATURE)["work_packages"]["WP01"]["lane"] == "done"
    r = move(project, FEATURE, "WP01", "planned", "--json")
    assert r.code == 2
    out = json.loads(r.out)
    assert out["error"]["type"] == "UsageError"
    assert "allowed from done: none" in out["error"]["message"]
    assert files_of(project) == before
    with EventStore(project) as store, pytest.raises(UsageError, match="allowed from done"):
        store.move(FEATURE, "WP01", to="in_progress", actor="tester")
    assert files_of(project) == before


def test_force_passes_the_lane_rules_and_is_recorded(project: Path) -> None:
    line = moved(project, FEATURE, "WP01", "in_progress", "--force", "--reason", "reopen")
    assert line["force"] is True
    assert (line["from_lane"], line["to_lane"], line["reason"]) == ("done", "in_progress", "reopen")
    state = status_of(project, FEATURE)["work_packages"]["WP01"]
    assert state["lane"] == "in_progress"
    assert state["force_count"] == 2  # the migration's forced move, and this one
    text = move(project, FEATURE, "WP01", "done", "--force", "--reason", "merged by hand")
    assert text.code == 0, text
    assert re.fullmatch(r"[0-9A-Z]{26}  WP01  in_progress -> done \(forced\)\n", text.out)


# --------------------------------------------------------------------------- spec-kitty checks


def spec_kitty_findings(lines: list[dict[str, Any]]) -> list[str]:
    """What spec-kitty's ``validate_event_schema`` and ``validate_done_evidence``
    (``specify_cli/status/validate.py``) find wrong in transition lines, rule by rule."""
    findings = []
    for line in lines:
        event_id = line["event_id"]
        for name in ("from_lane", "to_lane"):
            canonical = set(LANES[1:]) | ({"genesis"} if name == "from_lane" else set())
            if line[name] not in canonical:
                findings.append(f"{name} is not canonical: {line[name]}")
        if line["execution_mode"] not in ("worktree", "direct_repo"):
            findings.append(f"Event {event_id}: execution_mode must be 'worktree' or 'direct_repo'")
        if line["force"] is True and not line.get("reason"):
            findings.append(f"Event {event_id}: force=true without reason")
        if (line["from_lane"], line["to_lane"]) == ("for_review", "in_progress") and not line.get(
            "review_ref"
        ):
            findings.append(f"Event {event_id}: for_review->in_progress without review_ref")
        if line["to_lane"] == "done" and not line["force"]:
            review = (line.get("evidence") or {}).get("review") or {}
            if not all(review.get(k) for k in ("reviewer", "verdict", "reference")):
                findings.append(f"Event {event_id}: done without evidence (not forced)")
    return findings


def log_lines(root: Path, feature: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in log_of(root, feature).read_text().splitlines()]


def assert_refused(root: Path, r: Run, message: str, before: dict[str, str]) -> None:
    """A usage error (exit 2) saying ``message``, with every file as it was."""
    assert r.code == 2, r
    assert message in r.error_line()
    assert r.out == ""
    assert files_of(root) == before


def test_force_without_a_reason_is_refused_naming_reason(small: Path) -> None:
    run(small, "status")
    before = files_of(small)
    for args in (("--force",), ("--force", "--evidence-file", evidence_file(small))):
        r = move(small, "demo", "WP03", "done", *args)
        assert_refused(small, r, "a forced move needs a reason: give --reason", before)
    with EventStore(small) as store, pytest.raises(UsageError, match="give --reason"):
        store.move("demo", "WP03", to="planned", actor="lead", force=True)
    assert files_of(small) == before
    # A feature without a log gets none for a refused first move.
    r = move(small, "fresh", "WP01", "canceled", "--force")
    assert r.code == 2, r
    assert not feature_dir(small, "fresh").exists()
    line = moved(small, "demo", "WP03", "done", "--force", "--reason", "merged by hand")
    assert (line["force"], line["reason"]) == (True, "merged by hand")
    assert spec_kitty_findings(log_lines(small, "demo")) == []


@pytest.mark.parametrize("mode", ["foo", "Worktree", "direct-repo", " worktree"])
def test_an_execution_mode_spec_kitty_does_not_know_is_refused_naming_the_modes(
    small: Path, mode: str
) -> None:
    before = files_of(small)
    r = move(small, "demo", "WP04", "planned", "--execution-mode", mode)
    assert_refused(small, r, "must be 'worktree' or 'direct_repo', not", before)
    with EventStore(small) as store, pytest.raises(UsageError, match="'worktree' or 'direct_repo'"):
        store.move("demo", "WP04", to="planned", actor="lead", execution_mode=mode)
    assert files_of(small) == before


def test_both_execution_modes_spec_kitty_knows_are_written(small: Path) -> None:
    for wp, mode in (("WP01", "worktree"), ("WP02", "direct_repo")):
        assert moved(small, "demo", wp, "planned", "--execution-mode", mode)["execution_mode"] == (
            mode
        )
    assert spec_kitty_findings(log_lines(small, "demo")) == []


@pytest.mark.parametrize("source", LANES)
def test_no_move_goes_to_genesis_even_forced(small: Path, source: str) -> None:
    put_in_lane(small, "demo", "WP02", source)
    run(small, "status")
    before = files_of(small)
    for args in ((), ("--force", "--reason", "r")):
        r = move(small, "demo", "WP02", "genesis", *args)
        assert_refused(small, r, "cannot move WP02 to genesis", before)
    with EventStore(small) as store, pytest.raises(UsageError, match="to genesis"):
        store.move("demo", "WP02", to="genesis", actor="a", force=True, reason="r")
    assert files_of(small) == before


def test_a_new_feature_is_not_made_for_a_move_to_genesis(tmp_path: Path) -> None:
    root = tmp_path / "p"
    (root / ".git").mkdir(parents=True)
    r = move(root, "newf", "WP02", "genesis", "--force", "--reason", "r")
    assert r.code == 2, r
    assert "cannot move WP02 to genesis" in r.error_line()
    assert not (root / "kitty-specs").exists()


@pytest.mark.parametrize("source", ["approved", "in_review"])
def test_done_without_evidence_is_refused_unless_forced(
    small: Path, tmp_path: Path, source: str
) -> None:
    put_in_lane(small, "demo", "WP05", source)
    run(small, "status")
    before = files_of(small)
    blank = tmp_path / "blank.json"
    blank.write_text(json.dumps({"review": {"reviewer": " ", "verdict": "ok", "reference": "r"}}))
    empty = tmp_path / "empty.json"
    empty.write_text("{}")  # no evidence, as in spec-kitty
    for args in ((), ("--evidence-file", str(blank)), ("--evidence-file", str(empty))):
        r = move(small, "demo", "WP05", "done", *args)
        assert_refused(small, r, "cannot move WP05 to done without evidence", before)
        assert "--evidence-file" in r.error_line() and "--force" in r.error_line()
    with EventStore(small) as store, pytest.raises(UsageError, match="--evidence-file"):
        store.move("demo", "WP05", to="done", actor="lead")
    assert files_of(small) == before
    line = moved(small, "demo", "WP05", "done", "--evidence-file", evidence_file(small))
    assert line["evidence"] == EVIDENCE and line["force"] is False
    put_in_lane(small, "demo", "WP06", source)
    forced = moved(small, "demo", "WP06", "done", "--force", "--reason", "no review needed")
    assert (forced["force"], forced["evidence"]) == (True, None)
    assert spec_kitty_findings(log_lines(small, "demo")) == []


def test_for_review_back_to_in_progress_needs_a_review_ref(small: Path) -> None:
    put_in_lane(small, "demo", "WP07", "for_review")
    run(small, "status")
    before = files_of(small)
    r = move(small, "demo", "WP07", "in_progress", "--force", "--reason", "rework")
    assert_refused(small, r, "without --review-ref", before)
    line = moved(
        small, "demo", "WP07", "in_progress", "--force", "--reason", "rework", "--review-ref", "R1"
    )
    assert (line["from_lane"], line["review_ref"]) == ("for_review", "R1")
    assert spec_kitty_findings(log_lines(small, "demo")) == []


def test_every_line_move_writes_is_one_spec_kittys_validators_accept(small: Path) -> None:
    """Each allowed move, then each other move forced, as the commands above write them."""
    for n, (source, target) in enumerate(MOVES + REFUSED):
        wp = f"WP{n:03d}"
        put_in_lane(small, "demo", wp, source)
        extra: tuple[str, ...] = ()
        if (source, target) in REFUSED:
            extra = ("--force", "--reason", "forced for the test", "--review-ref", "R1")
        elif target == "done":
            extra = ("--evidence-file", evidence_file(small))
        moved(small, "demo", wp, target, *extra)
    lines = log_lines(small, "demo")
    assert len(lines) > len(MOVES) + len(REFUSED)
    assert spec_kitty_findings(lines) == []


def test_doing_is_read_as_in_progress(small: Path) -> None:
    put_in_lane(small, "demo", "WP01", "claimed")
    line = moved(small, "demo", "WP01", "doing")
    assert line["to_lane"] == "in_progress"
    assert status_of(small, "demo")["work_packages"]["WP01"]["lane"] == "in_progress"
    with EventStore(small) as store:
        record = store.move("demo", "WP01", to="Doing", actor="a", force=True, reason="r")
    assert record.to_lane == "in_progress"
    assert (
        move(small, "demo", "WP01", "nowhere")
        .error_line()
        .startswith("Error: unknown lane 'nowhere'; lanes are: genesis, planned")
    )


def test_a_wps_first_move_starts_from_genesis(project: Path) -> None:
    line = moved(project, FEATURE, "WP42", "planned")
    assert line["from_lane"] == "genesis"
    refused = move(project, FEATURE, "WP43", "done")
    assert refused.error_line().endswith("allowed from genesis: planned, canceled")
    with EventStore(project) as store:
        record = store.move(FEATURE, "WP44", to="canceled", actor="tester")
        assert isinstance(record, StatusEvent)
        assert record.from_lane == "genesis"
        assert store.board(FEATURE)["work_packages"]["WP44"]["lane"] == "canceled"


def test_a_wp_known_only_from_annotations_moves_from_genesis(small: Path) -> None:
    log = log_of(small, "demo")
    log.write_text(
        json.dumps(
            {
                "actor": "user",
                "at": "2026-01-01T00:00:00Z",
                "delta": {"note": "hello"},
                "event_id": "01KJ5V38JDYQW3ESGM3ER1JJV3",
                "kind": "annotation",
                "wp_id": "WP07",
            },
            sort_keys=True,
        )
        + "\n"
    )
    assert (
        json.loads(run(small, "board", "demo", "--json").out)["work_packages"]["WP07"]["lane"]
        == "uninitialized"
    )
    line = moved(small, "demo", "WP07", "planned")
    assert line["from_lane"] == "genesis"
    state = status_of(small, "demo")["work_packages"]["WP07"]
    assert state["lane"] == "planned" and state["notes"] == ["hello"]


def test_a_move_on_a_feature_without_a_log_creates_it(tmp_path: Path) -> None:
    root = tmp_path / "p"
    (root / ".git").mkdir(parents=True)
    refused = move(root, "fresh", "WP01", "done")
    assert refused.code == 2
    assert not (root / "kitty-specs").exists()  # nothing made for a refused move
    line = moved(root, "fresh", "WP01", "planned")
    assert [json.loads(x) for x in log_of(root, "fresh").read_text().splitlines()] == [line]
    # No status.json was there, so none is made (spec-kitty's materialize makes it).
    assert sorted(p.name for p in feature_dir(root, "fresh").iterdir()) == ["status.events.jsonl"]
    assert move(root, "bad/name", "WP01", "planned").code == 2


def test_status_json_is_replaced_atomically_by_the_new_snapshot(project: Path) -> None:
    path = feature_dir(project, FEATURE) / "status.json"
    path.chmod(0o640)
    # A second name for the old file: it keeps its inode taken, and shows it untouched.
    original = path.read_bytes()
    os.link(path, project / "old-status.json")
    inode = path.stat().st_ino
    moved(project, FEATURE, "WP05", "planned")
    moved(project, FEATURE, "WP05", "claimed")
    written = path.read_bytes()
    snap = expected_snapshot(project, FEATURE)
    assert (
        written == (json.dumps(snap, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()
    )
    assert snap["work_packages"]["WP05"]["lane"] == "claimed"
    assert snap["event_count"] == status_of(project, FEATURE)["event_count"]
    assert path.stat().st_ino != inode  # a new file renamed over the old one
    assert (project / "old-status.json").read_bytes() == original
    assert path.stat().st_mode & 0o777 == 0o640
    # No temporary file is left behind.
    assert sorted(p.name for p in feature_dir(project, FEATURE).iterdir()) == [
        "meta.json",
        "status.events.jsonl",
        "status.json",
    ]
    assert json.loads(run(project, "board", FEATURE, "--json").out) == snap


def test_a_damaged_status_json_is_replaced_by_the_board_and_the_move_says_so(
    small: Path,
) -> None:
    # A derived file (spec-kitty overwrites a damaged one too): replaced, with a warning
    # in the reader's words, and the move done.
    path = feature_dir(small, "demo") / "status.json"
    path.write_text("{not json")
    r = move(small, "demo", "WP01", "planned")
    assert r.code == 0, r
    assert r.err.splitlines() == [
        f"Warning: {path} was not a readable snapshot (a key in double quotes expected at"
        " character 2); it was replaced by the board of the log"
    ]
    assert status_of(small, "demo") == expected_snapshot(small, "demo")
    assert status_of(small, "demo")["work_packages"]["WP01"]["lane"] == "planned"


def test_status_json_keeps_the_keys_the_board_does_not_make(small: Path) -> None:
    path = feature_dir(small, "demo") / "status.json"
    old = json.loads(path.read_text())
    old["retrospective"] = {"status": "completed", "proposals_total": 2}
    path.write_text(json.dumps(old))
    moved(small, "demo", "WP01", "planned")
    new = status_of(small, "demo")
    assert new["retrospective"] == {"status": "completed", "proposals_total": 2}
    assert {k: v for k, v in new.items() if k != "retrospective"} == expected_snapshot(
        small, "demo"
    )


def test_a_status_json_that_is_a_link_or_not_a_file_is_never_replaced(small: Path) -> None:
    path = feature_dir(small, "demo") / "status.json"
    target = small / "elsewhere.json"
    target.write_text("{}\n")
    path.unlink()
    os.symlink(target, path)
    r = move(small, "demo", "WP01", "planned")
    assert r.code == 1
    assert f"{path} is a symbolic link" in r.error_line()
    assert not log_of(small, "demo").exists()
    assert target.read_text() == "{}\n" and path.is_symlink()
    path.unlink()
    path.mkdir()
    assert "not a regular file" in move(small, "demo", "WP01", "planned").error_line()
    assert not log_of(small, "demo").exists()


def test_a_status_json_that_cannot_be_written_is_a_warning_after_the_move(
    small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = feature_dir(small, "demo") / "status.json"
    before = path.read_bytes()
    real_replace = os.replace

    def full_disk(src: Any, dst: Any) -> None:
        if str(dst) == str(path):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_disk)
    with EventStore(small, fsync=False) as store:
        with pytest.warns(ReplaylogWarning, match="status.json could not be updated"):
            record = store.move("demo", "WP01", to="planned", actor="tester")
    assert [json.loads(x)["event_id"] for x in log_of(small, "demo").read_text().splitlines()] == [
        record.event_id
    ]
    assert path.read_bytes() == before
    assert sorted(p.name for p in feature_dir(small, "demo").iterdir()) == [
        "meta.json",
        "status.events.jsonl",
        "status.json",
    ]
    r = move(small, "demo", "WP01", "claimed")
    assert r.code == 0
    assert r.err.startswith("Warning: ") and "no space left on the device holding it" in r.err


def test_spec_kittys_reader_reads_the_log_after_moves_and_shows_the_new_lanes(
    project: Path,
) -> None:
    before = read_event_stream(feature_dir(project, FEATURE))
    moved(project, FEATURE, "WP05", "planned")
    moved(project, FEATURE, "WP05", "claimed")
    moved(project, FEATURE, "WP01", "in_progress", "--force", "--reason", "reopen")
    with EventStore(project) as store:
        store.append(FEATURE, "Noted", "WP05", {"by": "replaylog"})
    after = read_event_stream(feature_dir(project, FEATURE))
    assert len(after.transitions) == len(before.transitions) + 3
    assert after.skipped == before.skipped + 1  # the envelope, skipped in place
    lanes = read_lanes(feature_dir(project, FEATURE))
    assert lanes["WP05"] == "claimed"
    assert lanes["WP01"] == "in_progress"
    assert lanes == {
        wp: s["lane"] for wp, s in status_of(project, FEATURE)["work_packages"].items()
    }


def test_evidence_is_read_from_a_file_or_stdin(small: Path, tmp_path: Path) -> None:
    evidence = {
        "review": {"reviewer": "rev", "verdict": "approved", "reference": "PR#1"},
        "repos": [{"repo": "r", "branch": "main", "commit": "abc1234", "files_touched": []}],
    }
    put_in_lane(small, "demo", "WP01", "approved")
    path = tmp_path / "evidence.json"
    path.write_text(json.dumps(evidence))
    line = moved(small, "demo", "WP01", "done", "--evidence-file", str(path))
    assert line["evidence"] == {
        "review": evidence["review"],
        "repos": [{"repo": "r", "branch": "main", "commit": "abc1234"}],
    }
    put_in_lane(small, "demo", "WP02", "approved")
    r = run(
        small,
        "move",
        "demo",
        "WP02",
        "--to",
        "done",
        "--actor",
        "a",
        "--evidence-file",
        "-",
        "--json",
        input=json.dumps(evidence),
    )
    assert r.code == 0, r
    assert json.loads(r.out)["evidence"]["review"]["reviewer"] == "rev"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not valid JSON"),
        ("[1]", "must be a JSON object, not list"),
        ('{"review": NaN}', "is not valid JSON"),
        (None, "cannot read the evidence from"),
        ('{"review": {"reviewer": "r"}}', "evidence: review.verdict must be a string"),
    ],
)
def test_bad_evidence_is_a_usage_error_naming_the_file(
    small: Path, tmp_path: Path, content: str | None, message: str
) -> None:
    put_in_lane(small, "demo", "WP01", "approved")
    before = files_of(small)
    path = tmp_path / "evidence.json"
    if content is not None:
        path.write_text(content)
    r = move(small, "demo", "WP01", "done", "--evidence-file", str(path))
    assert r.code == 2, r
    line = r.error_line()
    assert message in line
    if "evidence:" not in message:
        assert str(path) in line
    assert files_of(small) == before


def test_bad_values_are_usage_errors_before_anything_is_written(small: Path) -> None:
    before = files_of(small)
    cases = [
        (("demo", " ", "--to", "planned", "--actor", "a"), "wp_id must be a non-empty string"),
        (("demo", "WP01", "--to", "planned", "--actor", ""), "actor must be a non-empty string"),
        (
            ("demo", "WP01", "--to", "planned", "--actor", "a", "--execution-mode", ""),
            "execution_mode must be a non-empty string",
        ),
        (
            ("demo", "WP01", "--to", "planned", "--actor", "a", "--reason", "\udcff"),
            "not valid Unicode",
        ),
        (("demo", "WP01", "--actor", "a"), "Missing option '--to'"),
    ]
    for args, message in cases:
        r = run(small, "move", *args)
        assert r.code == 2, r
        assert message in r.error_line(), args
    assert files_of(small) == before


def test_the_index_takes_the_move_in_and_the_next_event_is_above_it(project: Path) -> None:
    counted = json.loads(run(project, "status", FEATURE, "--json").out)
    line = moved(project, FEATURE, "WP05", "planned")
    # In the index as soon as the move returns, before any other command catches up.
    with sqlite3.connect(project / ".replaylog" / "queue.db") as conn:
        rows = conn.execute(
            "SELECT line, status FROM events WHERE feature = ? AND event_id = ?",
            (FEATURE, line["event_id"]),
        ).fetchall()
    assert rows == [(len(log_of(project, FEATURE).read_text().splitlines()), "pending")]
    status = json.loads(run(project, "status", FEATURE, "--json").out)
    events = counted["features"][FEATURE]["events"]
    assert status["features"][FEATURE]["events"] == events + 1
    assert status["features"][FEATURE]["pending"] == counted["features"][FEATURE]["pending"] + 1
    with EventStore(project) as store:
        pending = [line.event_id for line in store.pending(FEATURE)]
        event = store.append(FEATURE, "Noted", "WP05")
    last = json.loads(log_of(project, FEATURE).read_text().splitlines()[-2])
    assert last["event_id"] in pending
    assert event.lamport_clock is not None
    assert event.lamport_clock > status["lamport_clock"]
    # The incremental index equals a rebuilt one.
    again = json.loads(run(project, "status", "--json").out)
    run(project, "rebuild-index")
    assert json.loads(run(project, "status", "--json").out) == again


def test_a_move_dated_before_the_wps_last_move_is_refused(small: Path) -> None:
    future = new_transition(
        event_id="01KJ5V38JDYQW3ESGM3ER1JJV3",
        at="2999-01-01T00:00:00.000000+00:00",
        wp_id="WP01",
        from_lane="genesis",
        to_lane="planned",
        actor="time-traveller",
        mission_slug="demo",
    )
    log = log_of(small, "demo")
    log.write_text(json.dumps(future, sort_keys=True) + "\n")
    before = files_of(small)
    r = move(small, "demo", "WP01", "claimed")
    assert r.code == 1
    assert "2999-01-01T00:00:00.000000+00:00" in r.error_line()
    assert "check this machine's clock" in r.error_line()
    assert files_of(small) == before


def _mover(root: Path, wp: str, count: int) -> subprocess.Popen[str]:
    code = (
        "import sys\n"
        "from replaylog import EventStore\n"
        "lanes = ['planned', 'claimed'] + ['in_progress', 'blocked'] * 50\n"
        f"with EventStore({str(root)!r}, fsync=False) as store:\n"
        f"    for lane in lanes[:{count}]:\n"
        f"        store.move('demo', {wp!r}, to=lane, actor={wp!r})\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def _wait(procs: list[subprocess.Popen[str]]) -> Iterator[str]:
    for proc in procs:
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        yield err


def test_moves_from_several_processes_at_once_are_all_kept_in_order(small: Path) -> None:
    wps = ["WP01", "WP02", "WP03", "WP04"]
    assert list(_wait([_mover(small, wp, 12) for wp in wps])) == [""] * len(wps)
    lines = [json.loads(x) for x in log_of(small, "demo").read_text().splitlines()]
    assert len(lines) == 4 * 12
    for wp in wps:
        mine = [(x["from_lane"], x["to_lane"]) for x in lines if x["wp_id"] == wp]
        path = ["genesis", "planned", "claimed"] + ["in_progress", "blocked"] * 5
        assert mine == list(zip(path[:-1], path[1:], strict=True))
    # status.json holds the last snapshot, which every line is in.
    assert status_of(small, "demo") == expected_snapshot(small, "demo")
    assert status_of(small, "demo")["summary"]["in_progress"] == 0
    assert status_of(small, "demo")["summary"]["blocked"] == 4


def test_a_move_whose_write_fails_reports_it_and_leaves_nothing_behind(
    small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import replaylog.log.write

    def full_disk(fd: int, data: bytes, before: int, fsync: bool, path: str) -> None:
        raise StoreError(f"{path}: cannot append to the log: No space left on device", path=path)

    status = (feature_dir(small, "demo") / "status.json").read_bytes()
    monkeypatch.setattr(replaylog.log.write, "write_durably", full_disk)
    r = move(small, "demo", "WP01", "planned")
    assert r.code == 1
    assert "No space left on device" in r.error_line()
    # The log this move would have created is gone again; status.json is as it was.
    assert not log_of(small, "demo").exists()
    assert (feature_dir(small, "demo") / "status.json").read_bytes() == status
    monkeypatch.undo()
    assert moved(small, "demo", "WP01", "planned")["from_lane"] == "genesis"


def test_an_older_spec_kitty_log_is_moved_in_place(tmp_path: Path, spec_kitty_corpus: Path) -> None:
    """v2.0.0's lines name ``feature_slug`` and have no meta.json: the move still reads
    as spec-kitty's, and the board keeps the slug of the earliest line."""
    root = tmp_path / "old"
    copy_corpus(spec_kitty_corpus, root, release="v2.0.0")
    name = "035-frontmatter-history-to-canonical-jsonl"
    before = run(root, "board", name, "--json")
    assert before.code == 0, before
    board = json.loads(before.out)
    assert board["mission_slug"] == name and board["mission_number"] == "35"
    line = moved(root, name, "WP77", "planned")
    assert "mission_id" not in line and line["mission_slug"] == name
    after = json.loads(run(root, "board", name, "--json").out)
    assert after["work_packages"]["WP77"]["lane"] == "planned"
    assert after["event_count"] == board["event_count"] + 1
    assert read_lanes(feature_dir(root, name))["WP77"] == "planned"
    assert not (feature_dir(root, name) / "status.json").exists()


@pytest.mark.parametrize(("wp", "actor"), [("WP9\n5", "a"), ("WP01", "me\x1b[2J"), (" WP01", "a")])
def test_a_work_package_or_actor_with_control_characters_is_refused(
    tmp_path: Path, wp: str, actor: str
) -> None:
    with EventStore(tmp_path, fsync=False) as store:
        with pytest.raises(UsageError, match="control character or surrounding space"):
            store.move("f", wp, to="planned", actor=actor)
    assert not (tmp_path / "kitty-specs").exists()
