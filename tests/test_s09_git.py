"""SPEC section 9: the git merge driver, ``git-setup``, ``verify``'s driver warning, and the
index taking a merge in as an append (with section 4).

The first half calls :func:`merge_logs` on files; the second half runs real git in
repositories under ``tmp_path`` (a bare ``origin`` and clones of it), with git's global
and system configuration shut out so that nothing of the machine leaks in.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from replaylog import (
    EVENTS_FILENAME,
    Event,
    EventStore,
    StoreError,
    UsageError,
    append_event,
    read_events,
    read_events_raw,
)
from replaylog.gitmerge import (
    ATTRIBUTES_LINE,
    MergeConflict,
    driver_command,
    driver_warning,
    git_setup,
    merge_logs,
)
from replaylog.index import Index
from replaylog.log.read import verify_log

# Ids are ULID-shaped; a letter at the end tells them apart and is *not* sorted below.
ID_A = "01HZZZZZZZZZZZZZZZZZZZZZZA"
ID_B = "01HZZZZZZZZZZZZZZZZZZZZZZB"
ID_C = "01HZZZZZZZZZZZZZZZZZZZZZZC"
ID_D = "01HZZZZZZZZZZZZZZZZZZZZZZD"
ID_E = "01HZZZZZZZZZZZZZZZZZZZZZZE"


def event_line(eid: str, clock: int = 1, **payload: object) -> bytes:
    """A canonical line as the store writes it; the same arguments give the same bytes."""
    return Event.new(
        "t",
        "agg",
        payload,
        event_id=eid,
        lamport_clock=clock,
        timestamp="2024-01-01T00:00:00Z",
        node_id="node-1",
    ).to_line()


def odd_line(eid: str, clock: int = 1) -> bytes:
    """The same event as :func:`event_line` in non-canonical spacing and key order."""
    canonical = json.loads(event_line(eid, clock))
    keys = sorted(canonical, reverse=True)
    body = " ,  ".join(f"{json.dumps(k)}:{json.dumps(canonical[k], indent=None)}" for k in keys)
    return ("{  " + body + "   }\n").encode()


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


@pytest.fixture
def sides(tmp_path: Path) -> tuple[Path, Path, Path]:
    base, ours, theirs = tmp_path / "base", tmp_path / "ours", tmp_path / "theirs"
    base.write_bytes(b"")
    return base, ours, theirs


# --------------------------------------------------------------------------- merge_logs


def test_merge_keeps_ours_byte_for_byte_then_theirs_new_lines_in_theirs_order(sides):
    base, ours, theirs = sides
    ours_bytes = (
        odd_line(ID_C)
        + event_line(ID_A)
        + b'{"event_id":"%s"  ,"type": "note", "at": "t","x":[1, 2]}\n' % (ID_E.encode())
    )
    new_d = b'{ "event_id" : "%s", "type": "note", "at": "t", "note": "spaced  out" }\n' % (
        ID_D.encode()
    )
    new_b = odd_line(ID_B, 7)
    # THEIRS holds the shared events written differently, and the new ones unsorted.
    theirs_bytes = (
        event_line(ID_A)
        + new_d
        + b'{"x": [1,2], "at": "t", "type": "note", "event_id": "%s"}\n' % ID_E.encode()
        + new_b
        + event_line(ID_C)
    )
    write(ours, ours_bytes)
    write(theirs, theirs_bytes)

    added = merge_logs(str(base), str(ours), str(theirs), "kitty-specs/f/status.events.jsonl")

    assert added == 2
    assert ours.read_bytes() == ours_bytes + new_d + new_b


def test_shared_event_written_with_other_spacing_is_not_a_conflict_and_is_not_copied(sides):
    base, ours, theirs = sides
    write(ours, event_line(ID_A) + event_line(ID_B))
    write(theirs, odd_line(ID_B) + odd_line(ID_A))
    before = ours.stat()

    assert merge_logs(str(base), str(ours), str(theirs)) == 0
    assert ours.read_bytes() == event_line(ID_A) + event_line(ID_B)
    assert ours.stat().st_ino == before.st_ino


def test_merged_log_extends_ours_and_reads_with_every_event_once(sides, tmp_path):
    base, ours, theirs = sides
    feature = tmp_path / "feat"
    feature.mkdir()
    log = feature / EVENTS_FILENAME
    ours_bytes = event_line(ID_A, 1) + event_line(ID_B, 2)
    write(log, ours_bytes)
    write(theirs, event_line(ID_A, 1) + event_line(ID_C, 2) + event_line(ID_D, 3))

    assert merge_logs(str(base), str(log), str(theirs)) == 2

    assert log.read_bytes().startswith(ours_bytes)
    assert [e.event_id for e in read_events(feature)] == [ID_A, ID_B, ID_C, ID_D]


def test_same_id_with_different_content_is_a_conflict_naming_id_lines_and_path(sides, tmp_path):
    base, ours, theirs = sides
    ours_bytes = event_line(ID_A) + event_line(ID_B, n=1)
    write(ours, ours_bytes)
    write(theirs, event_line(ID_C) + event_line(ID_A) + event_line(ID_B, n=2))
    inode = ours.stat().st_ino

    with pytest.raises(MergeConflict) as caught:
        merge_logs(str(base), str(ours), str(theirs), "kitty-specs/f/status.events.jsonl")

    message = str(caught.value)
    assert ID_B in message
    assert "OURS line 2" in message and "THEIRS line 3" in message
    assert message.startswith("kitty-specs/f/status.events.jsonl: ")
    assert "\n" not in message
    assert isinstance(caught.value, StoreError) and caught.value.exit_code == 1
    assert ours.read_bytes() == ours_bytes
    assert ours.stat().st_ino == inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "ours", "theirs"]


@pytest.mark.parametrize(
    ("ours_value", "theirs_value"),
    [(b"true", b"1"), (b"12345678901234567890123", b"12345678901234567890124")],
)
def test_values_that_differ_as_json_are_a_conflict_even_when_python_calls_them_equal(
    sides, ours_value, theirs_value
):
    # Section 3's rule for duplicates: `true` is not `1`, and wide integers stay exact.
    base, ours, theirs = sides
    line = b'{"at": "t", "event_id": "%s", "type": "r", "v": %s}\n'
    ours_bytes = line % (ID_A.encode(), ours_value)
    write(ours, ours_bytes)
    write(theirs, line % (ID_A.encode(), theirs_value))
    with pytest.raises(MergeConflict, match=ID_A):
        merge_logs(str(base), str(ours), str(theirs))
    assert ours.read_bytes() == ours_bytes


def test_conflict_after_a_shared_history_names_the_right_line_numbers(sides):
    base, ours, theirs = sides
    shared = b"".join(event_line(eid) for eid in (ID_A, ID_B)) + b"\n"
    ours_bytes = shared + event_line(ID_C, n=1)
    write(ours, ours_bytes)
    write(theirs, shared + event_line(ID_D) + event_line(ID_C, n=2))
    with pytest.raises(MergeConflict, match=f"{ID_C} .* OURS line 4 and THEIRS line 5;"):
        merge_logs(str(base), str(ours), str(theirs))
    assert ours.read_bytes() == ours_bytes


def test_conflict_without_a_path_names_the_ours_file(sides):
    base, ours, theirs = sides
    write(ours, event_line(ID_A, n=1))
    write(theirs, event_line(ID_A, n=2))
    with pytest.raises(MergeConflict, match=f"^{ours}: .*{ID_A}"):
        merge_logs(str(base), str(ours), str(theirs))


def test_same_id_twice_with_different_content_inside_one_side_is_a_conflict(sides):
    base, ours, theirs = sides
    write(ours, event_line(ID_A))
    theirs_bytes = event_line(ID_B, n=1) + event_line(ID_C) + event_line(ID_B, n=2)
    write(theirs, theirs_bytes)
    with pytest.raises(MergeConflict, match=f"{ID_B}.*lines 1 and 3 of THEIRS"):
        merge_logs(str(base), str(ours), str(theirs))
    assert ours.read_bytes() == event_line(ID_A)


BAD_LINES = {
    "invalid JSON": b'{"event_id": "01HZZZZZZZZZZZZZZZZZZZZZZQ", oops\n',
    "not an object": b"[1, 2, 3]\n",
    "no event_id": b'{"event_type": "t"}\n',
    "event_id not a string": b'{"event_id": 12}\n',
    "NaN": b'{"event_id": "01HZZZZZZZZZZZZZZZZZZZZZZQ", "x": NaN}\n',
    # JSON objects with an id that sections 2 and 10 refuse: the merged log could not be
    # read either (these were once merged).
    "no kind": b'{"event_id": "01HZZZZZZZZZZZZZZZZZZZZZZQ", "foo": 1}\n',
    "a lane that is not one": (
        b'{"actor": "a", "at": "2026-06-30T00:00:00Z", "event_id": "01HZZZZZZZZZZZZZZZZZZZZZZQ",'
        b' "execution_mode": "worktree", "force": false, "from_lane": "approved",'
        b' "to_lane": "doing", "wp_id": "WP01"}\n'
    ),
    "an id that is not a ULID": b'{"at": "t", "event_id": "not-a-ulid", "type": "r"}\n',
}


@pytest.mark.parametrize("bad", sorted(BAD_LINES))
@pytest.mark.parametrize("side", ["OURS", "THEIRS"])
def test_unreadable_line_on_either_side_is_a_conflict_naming_file_and_line(sides, side, bad):
    base, ours, theirs = sides
    good = event_line(ID_A) + b"\n" + event_line(ID_B)
    ours_bytes = good + (BAD_LINES[bad] if side == "OURS" else b"")
    write(ours, ours_bytes)
    write(theirs, good + event_line(ID_C) + (BAD_LINES[bad] if side == "THEIRS" else b""))

    with pytest.raises(MergeConflict) as caught:
        merge_logs(str(base), str(ours), str(theirs), "kitty-specs/f/status.events.jsonl")

    bad_file = ours if side == "OURS" else theirs
    line = 4 if side == "OURS" else 5  # the blank line counts: numbers are physical lines
    assert f"{side} ({bad_file}) line {line}:" in str(caught.value)
    assert caught.value.path == str(bad_file) and caught.value.line == line
    assert ours.read_bytes() == ours_bytes


@pytest.mark.parametrize("bad", ["invalid JSON", "NaN"])
def test_a_line_that_is_not_json_is_named_with_the_reason_verify_gives(sides, bad):
    base, ours, theirs = sides
    write(ours, event_line(ID_A))
    write(theirs, event_line(ID_A) + BAD_LINES[bad])
    with pytest.raises(MergeConflict) as caught:
        merge_logs(str(base), str(ours), str(theirs))
    (problem,) = verify_log(str(theirs))
    assert problem.line == 2 and problem.message.startswith("Line 2: invalid JSON: ")
    said = problem.message.removeprefix("Line 2: ")
    assert said.endswith(")"), said  # a reason in brackets
    assert f"line 2: {said}; fix that line" in str(caught.value)


def test_a_line_sections_2_and_10_refuse_is_named_with_its_kind_and_field(sides):
    base, ours, theirs = sides
    write(ours, event_line(ID_A))
    write(theirs, event_line(ID_A) + BAD_LINES["a lane that is not one"])
    with pytest.raises(MergeConflict) as caught:
        merge_logs(str(base), str(ours), str(theirs))
    message = str(caught.value)
    assert "THEIRS" in message and "line 2: invalid event structure: transition:" in message
    assert "'to_lane' must be a lane" in message and "got 'doing'" in message


def test_line_longer_than_the_limit_is_unreadable(sides):
    base, ours, theirs = sides
    write(ours, event_line(ID_A))
    huge = b'{"event_id": "%s", "x": "%s"}\n' % (ID_B.encode(), b"y" * (1 << 20))
    write(theirs, event_line(ID_A) + huge)
    with pytest.raises(MergeConflict, match=r"THEIRS \(.*\) line 2: .*1 MiB limit"):
        merge_logs(str(base), str(ours), str(theirs))
    assert ours.read_bytes() == event_line(ID_A)


def test_missing_side_is_a_conflict_and_ours_is_untouched(sides):
    base, ours, theirs = sides
    write(ours, event_line(ID_A))
    with pytest.raises(MergeConflict, match="cannot read THEIRS"):
        merge_logs(str(base), str(ours), str(theirs))
    assert ours.read_bytes() == event_line(ID_A)


def test_ours_that_is_a_symbolic_link_is_refused(sides, tmp_path):
    base, ours, theirs = sides
    real = tmp_path / "real"
    write(real, event_line(ID_A))
    ours.symlink_to(real)
    write(theirs, event_line(ID_B))
    with pytest.raises(MergeConflict, match="symbolic link"):
        merge_logs(str(base), str(ours), str(theirs))
    assert ours.is_symlink() and real.read_bytes() == event_line(ID_A)


@pytest.mark.parametrize("shared_start", [False, True])
def test_ours_without_final_newline_gets_one_before_the_first_added_line(sides, shared_start):
    base, ours, theirs = sides
    torn = event_line(ID_B).rstrip(b"\n")
    write(ours, event_line(ID_A) + torn)
    start = event_line(ID_A) if shared_start else b""
    write(theirs, start + event_line(ID_B) + event_line(ID_C))

    assert merge_logs(str(base), str(ours), str(theirs)) == 1  # the torn B is a line of OURS
    assert ours.read_bytes() == event_line(ID_A) + torn + b"\n" + event_line(ID_C)


def test_ours_without_final_newline_is_untouched_when_nothing_is_added(sides):
    base, ours, theirs = sides
    torn = event_line(ID_A).rstrip(b"\n")
    write(ours, torn)
    write(theirs, event_line(ID_A))
    assert merge_logs(str(base), str(ours), str(theirs)) == 0
    assert ours.read_bytes() == torn


def test_theirs_torn_last_line_that_parses_is_taken_with_a_newline(sides):
    base, ours, theirs = sides
    write(ours, event_line(ID_A))
    write(theirs, event_line(ID_A) + event_line(ID_B).rstrip(b"\n"))
    assert merge_logs(str(base), str(ours), str(theirs)) == 1
    assert ours.read_bytes() == event_line(ID_A) + event_line(ID_B)


def test_blank_lines_of_ours_are_kept_and_those_of_theirs_are_not_copied(sides):
    base, ours, theirs = sides
    ours_bytes = b"\n" + event_line(ID_A) + b"   \n\n" + event_line(ID_B)
    write(ours, ours_bytes)
    write(theirs, b"\n\n" + event_line(ID_C) + b" \t\n" + event_line(ID_D) + b"\n")
    assert merge_logs(str(base), str(ours), str(theirs)) == 2
    assert ours.read_bytes() == ours_bytes + event_line(ID_C) + event_line(ID_D)


def test_identical_duplicates_are_kept_in_ours_and_copied_once_from_theirs(sides):
    base, ours, theirs = sides
    ours_bytes = event_line(ID_A) + odd_line(ID_A) + event_line(ID_B)
    write(ours, ours_bytes)
    write(theirs, odd_line(ID_C) + event_line(ID_A) + event_line(ID_C) + odd_line(ID_A))
    assert merge_logs(str(base), str(ours), str(theirs)) == 1
    assert ours.read_bytes() == ours_bytes + odd_line(ID_C)


def test_events_missing_on_one_side_relative_to_base_are_never_deleted(sides):
    base, ours, theirs = sides
    write(base, event_line(ID_A) + event_line(ID_B) + event_line(ID_C))
    write(ours, event_line(ID_A) + event_line(ID_C))  # B "deleted" on our side
    write(theirs, event_line(ID_B) + event_line(ID_D))  # A and C "deleted" on theirs
    assert merge_logs(str(base), str(ours), str(theirs)) == 2
    assert ours.read_bytes() == (
        event_line(ID_A) + event_line(ID_C) + event_line(ID_B) + event_line(ID_D)
    )


def test_empty_ours_takes_all_of_theirs_and_empty_theirs_changes_nothing(sides):
    base, ours, theirs = sides
    write(ours, b"")
    write(theirs, event_line(ID_A) + event_line(ID_B))
    assert merge_logs(str(base), str(ours), str(theirs)) == 2
    assert ours.read_bytes() == event_line(ID_A) + event_line(ID_B)

    write(theirs, b"")
    inode = ours.stat().st_ino
    assert merge_logs(str(base), str(ours), str(theirs)) == 0
    assert ours.stat().st_ino == inode


def test_merge_is_idempotent_when_theirs_is_already_in_ours(sides):
    base, ours, theirs = sides
    write(ours, event_line(ID_A) + event_line(ID_B))
    write(theirs, event_line(ID_C))
    assert merge_logs(str(base), str(ours), str(theirs)) == 1
    merged = ours.read_bytes()
    before = ours.stat()
    time.sleep(0.01)

    assert merge_logs(str(base), str(ours), str(theirs)) == 0
    assert ours.read_bytes() == merged
    after = ours.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_ours_is_replaced_atomically_by_rename_only_when_content_changes(sides, tmp_path):
    base, ours, theirs = sides
    write(ours, event_line(ID_A))
    write(theirs, event_line(ID_A))
    inode = ours.stat().st_ino
    assert merge_logs(str(base), str(ours), str(theirs)) == 0
    assert ours.stat().st_ino == inode

    # A reader holding the old file keeps seeing it whole: the result is a new inode.
    with open(ours, "rb") as reader:
        write(theirs, event_line(ID_B))
        assert merge_logs(str(base), str(ours), str(theirs)) == 1
        assert reader.read() == event_line(ID_A)
    assert ours.stat().st_ino != inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "ours", "theirs"]


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o755])
def test_merge_keeps_the_file_mode_of_ours(sides, mode):
    base, ours, theirs = sides
    write(ours, event_line(ID_A))
    os.chmod(ours, mode)
    write(theirs, event_line(ID_B))
    assert merge_logs(str(base), str(ours), str(theirs)) == 1
    assert stat.S_IMODE(ours.stat().st_mode) == mode


def test_merge_of_large_logs_keeps_every_line_in_order(sides):
    # 100,000 lines a side, half shared (speed is the benchmark's business, not this test's).
    base, ours, theirs = sides
    # (spec-kitty's record lines, the shortest a log may hold: an id, a type and a time)
    shared = [b'{"at": "t", "event_id": "01HS%022d", "n": %d, "type": "r"}\n' % (i, i)
              for i in range(50_000)]  # fmt: skip
    mine = [b'{"at": "t", "event_id": "01HR%022d", "type": "r"}\n' % i for i in range(50_000)]
    new = [b'{"at": "t", "event_id": "01HT%022d", "type": "r"}\n' % i for i in range(50_000)]
    write(ours, b"".join(shared + mine))
    write(theirs, b"".join(new[::-1] + shared))
    assert merge_logs(str(base), str(ours), str(theirs)) == 50_000
    assert ours.read_bytes() == b"".join(shared + mine + new[::-1])


# --------------------------------------------------------------------------- git


def _verify_warns_once(repo: Path) -> dict[str, Any]:
    """``replaylog verify --json`` of ``repo``, which passes with one warning."""
    r = subprocess.run(
        [sys.executable, "-m", "replaylog", "--root", str(repo), "verify", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    report: dict[str, Any] = json.loads(r.stdout)
    assert r.returncode == 0 and report["ok"] is True
    assert [p["level"] for p in report["problems"]] == ["warning"]
    return report


@pytest.fixture
def git_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """An environment where git sees only the repositories of this test."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    home = tmp_path / "home"
    home.mkdir()
    for key in list(os.environ):
        # A git hook running these tests sets GIT_DIR and friends; REPLAYLOG_* would steer
        # the CLI elsewhere.
        if key.startswith(("GIT_", "REPLAYLOG_")):
            monkeypatch.delenv(key)
    for key, value in {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "Test",
        "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "Test",
        "GIT_COMMITTER_EMAIL": "test@example.invalid",
        "GIT_TERMINAL_PROMPT": "0",
        "REPLAYLOG_FSYNC": "0",
    }.items():
        monkeypatch.setenv(key, value)
    return dict(os.environ)


def git(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result


def cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "replaylog", "--root", str(root), *args],
        capture_output=True,
        text=True,
    )


def cli_git_setup(root: Path) -> dict[str, bool]:
    result = cli(root, "git-setup", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def log_of(clone: Path) -> Path:
    return clone / "kitty-specs" / "feat" / EVENTS_FILENAME


def add_events(clone: Path, n: int, who: str) -> list[str]:
    """Append ``n`` events through the library, commit them, and return their ids."""
    feature = log_of(clone).parent
    ids = [
        append_event(feature, Event.new("note", who, {"i": i}), fsync=False).event_id
        for i in range(n)
    ]
    git(clone, "add", "-A")
    git(clone, "commit", "-q", "-m", f"{who}: {n} events")
    return ids


def ids_of(clone: Path) -> list[str]:
    return [obj["event_id"] for obj in read_events_raw(log_of(clone).parent)]


@pytest.fixture
def origin(tmp_path: Path, git_env: dict[str, str]) -> Path:
    """A bare origin whose main holds a configured .gitattributes and two base events."""
    bare = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    seed = tmp_path / "seed"
    git(tmp_path, "clone", "-q", str(bare), str(seed))
    git(seed, "symbolic-ref", "HEAD", "refs/heads/main")
    assert git_setup(str(seed)) == {"gitattributes": True, "config": True}
    add_events(seed, 2, "seed")
    git(seed, "push", "-q", "origin", "main")
    return bare


def clone(origin: Path, name: str) -> Path:
    path = origin.parent / name
    git(origin.parent, "clone", "-q", str(origin), str(path))
    return path


def configured_clone(origin: Path, name: str) -> Path:
    path = clone(origin, name)
    # .gitattributes came with the clone; only this clone's config is missing.
    assert cli_git_setup(path) == {"gitattributes": False, "config": True}
    return path


def test_git_pull_merge_of_concurrent_appends_has_no_conflict_and_keeps_ours_first(origin):
    alice = configured_clone(origin, "alice")
    bob = configured_clone(origin, "bob")
    base_ids = ids_of(alice)
    alice_ids = add_events(alice, 3, "alice")
    git(alice, "push", "-q", "origin", "main")
    bob_ids = add_events(bob, 2, "bob")
    bob_bytes = log_of(bob).read_bytes()

    pull = git(bob, "pull", "-q", "--no-rebase", "--no-edit", "origin", "main", check=False)

    assert pull.returncode == 0, pull.stderr
    assert git(bob, "status", "--porcelain").stdout == ""
    merged = log_of(bob).read_bytes()
    assert merged.startswith(bob_bytes)
    assert ids_of(bob) == base_ids + bob_ids + alice_ids
    alice_lines = log_of(alice).read_bytes().splitlines(keepends=True)
    assert merged[len(bob_bytes) :] == b"".join(alice_lines[len(base_ids) :])


@pytest.mark.parametrize("how", ["rebase", "pull --rebase"])
def test_git_rebase_of_concurrent_appends_puts_upstream_first_without_conflict(origin, how):
    alice = configured_clone(origin, "alice")
    bob = configured_clone(origin, "bob")
    base_ids = ids_of(alice)
    alice_ids = add_events(alice, 3, "alice")
    git(alice, "push", "-q", "origin", "main")
    bob_ids = add_events(bob, 2, "bob")
    bob_lines = log_of(bob).read_bytes().splitlines(keepends=True)

    if how == "rebase":
        git(bob, "fetch", "-q", "origin")
        result = git(bob, "rebase", "origin/main", check=False)
    else:
        result = git(bob, "pull", "-q", "--rebase", "origin", "main", check=False)

    assert result.returncode == 0, result.stderr
    # Replaying bob's commit onto alice's: alice's log is OURS and stays a prefix.
    assert log_of(bob).read_bytes() == log_of(alice).read_bytes() + b"".join(
        bob_lines[len(base_ids) :]
    )
    assert ids_of(bob) == base_ids + alice_ids + bob_ids
    assert git(bob, "rev-list", "--count", "HEAD").stdout.strip() == "3"  # linear history
    git(bob, "push", "-q", "origin", "main")  # a fast-forward now


def test_three_clones_merging_through_origin_hold_every_event_exactly_once(origin):
    alice = configured_clone(origin, "alice")
    bob = configured_clone(origin, "bob")
    carol = configured_clone(origin, "carol")
    base_ids = ids_of(alice)
    alice_ids = add_events(alice, 2, "alice")
    bob_ids = add_events(bob, 2, "bob")
    carol_ids = add_events(carol, 2, "carol")
    carol_bytes = log_of(carol).read_bytes()

    git(alice, "push", "-q", "origin", "main")
    git(bob, "pull", "-q", "--no-rebase", "--no-edit", "origin", "main")
    git(bob, "push", "-q", "origin", "main")
    git(carol, "pull", "-q", "--no-rebase", "--no-edit", "origin", "main")
    git(carol, "push", "-q", "origin", "main")
    git(alice, "pull", "-q", "--no-rebase", "--no-edit", "origin", "main")

    assert log_of(carol).read_bytes().startswith(carol_bytes)
    assert ids_of(carol) == base_ids + carol_ids + bob_ids + alice_ids
    assert log_of(alice).read_bytes() == log_of(carol).read_bytes()  # fast-forwarded
    all_ids = ids_of(alice)
    assert len(all_ids) == len(set(all_ids)) == 8
    raw = log_of(alice).read_bytes().splitlines()
    assert len(raw) == 8  # no duplicate lines, not even identical ones


def test_same_event_id_with_different_content_makes_git_report_a_conflict(origin):
    work = configured_clone(origin, "work")
    log = log_of(work)
    base_bytes = log.read_bytes()
    git(work, "checkout", "-q", "-b", "other")
    write(log, base_bytes + event_line(ID_A, 9, side="other") + event_line(ID_B, 10))
    git(work, "commit", "-q", "-am", "other")
    git(work, "checkout", "-q", "main")
    ours_bytes = base_bytes + event_line(ID_C, 9) + event_line(ID_A, 10, side="main")
    write(log, ours_bytes)
    git(work, "commit", "-q", "-am", "main")

    merge = git(work, "merge", "--no-edit", "other", check=False)

    assert merge.returncode != 0
    assert ID_A in merge.stdout + merge.stderr  # the driver's message reaches the user
    assert "CONFLICT" in merge.stdout
    assert log.read_bytes() == ours_bytes  # a failed custom driver leaves OURS as it was
    assert git(work, "status", "--porcelain").stdout.startswith("UU ")


def test_git_setup_is_idempotent_and_adds_the_attribute_line_once(tmp_path, git_env):
    repo = tmp_path / "repo"
    git(tmp_path, "init", "-q", "-b", "main", str(repo))
    write(repo / ".gitattributes", b"*.png binary")  # no final newline

    assert git_setup(str(repo)) == {"gitattributes": True, "config": True}
    assert git_setup(str(repo)) == {"gitattributes": False, "config": False}

    text = (repo / ".gitattributes").read_text()
    assert text == f"*.png binary\n{ATTRIBUTES_LINE}\n"
    config = git(repo, "config", "--local", "--get", "merge.replaylog.driver").stdout.strip()
    assert config == driver_command()
    assert git(repo, "config", "--local", "--get", "merge.replaylog.name").stdout.strip()
    attr = git(repo, "check-attr", "merge", "--", "kitty-specs/f/status.events.jsonl").stdout
    assert attr.strip().endswith("merge: replaylog")


def test_git_setup_creates_gitattributes_and_repairs_a_changed_driver(tmp_path, git_env):
    repo = tmp_path / "repo"
    git(tmp_path, "init", "-q", "-b", "main", str(repo))
    assert git_setup(str(repo)) == {"gitattributes": True, "config": True}
    assert (repo / ".gitattributes").read_text() == ATTRIBUTES_LINE + "\n"

    git(repo, "config", "--local", "merge.replaylog.driver", "false")
    assert git_setup(str(repo)) == {"gitattributes": False, "config": True}
    assert git(repo, "config", "--get", "merge.replaylog.driver").stdout.strip() == (
        driver_command()
    )


def test_git_setup_command_reports_json_and_is_idempotent(tmp_path, git_env):
    repo = tmp_path / "repo"
    git(tmp_path, "init", "-q", "-b", "main", str(repo))
    assert cli_git_setup(repo) == {"gitattributes": True, "config": True}
    assert cli_git_setup(repo) == {"gitattributes": False, "config": False}
    assert (repo / ".gitattributes").read_text().count(ATTRIBUTES_LINE) == 1


def test_git_setup_outside_a_git_work_tree_is_a_usage_error(tmp_path, git_env):
    with pytest.raises(UsageError, match="not inside a git work tree"):
        git_setup(str(tmp_path))
    assert not (tmp_path / ".gitattributes").exists()


def test_driver_command_is_this_python_by_its_absolute_path_whatever_is_on_path(monkeypatch):
    """A `replaylog` on PATH now may not be on the PATH git merges with later."""
    monkeypatch.setattr(shutil, "which", lambda name: f"/somewhere/bin/{name}")
    words = shlex.split(driver_command())
    assert os.path.isabs(words[0]) and os.path.samefile(words[0], sys.executable)
    assert words[1:] == [*PYTHON_FLAGS, "-m", "replaylog", "merge-driver", "%O", "%A", "%B", "%P"]


def test_driver_command_quotes_an_interpreter_path_with_spaces(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(sys, "executable", "/opt/my tools/bin/python3")
    command = driver_command()
    assert shlex.split(command) == [
        "/opt/my tools/bin/python3",
        *PYTHON_FLAGS,
        "-m",
        "replaylog",
        "merge-driver",
        "%O",
        "%A",
        "%B",
        "%P",
    ]


def test_driver_command_is_the_same_whichever_name_of_one_python_runs_it(tmp_path, monkeypatch):
    """`.venv/bin/python`, `python3` and `python3.11` are one program: one command, so
    setting up again from the same install changes nothing."""
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python3").symlink_to(sys.executable)
    (bin_dir / "python").symlink_to("python3")
    (bin_dir / "python3.99").symlink_to("python3")
    commands = set()
    for name in ("python", "python3", "python3.99"):
        monkeypatch.setattr(sys, "executable", str(bin_dir / name))
        commands.add(driver_command())
    assert len(commands) == 1
    (program,) = {shlex.split(c)[0] for c in commands}
    assert os.path.dirname(program) == str(bin_dir), "a venv's link is never resolved"


def test_driver_warning_for_a_clone_with_the_attribute_but_no_driver_config(origin):
    fresh = clone(origin, "fresh")
    warning = driver_warning(str(fresh))
    assert warning is not None
    assert "\n" not in warning and "git-setup" in warning and "merge=replaylog" in warning

    git_setup(str(fresh))
    assert driver_warning(str(fresh)) is None


def test_driver_warning_is_silent_without_the_attribute_outside_git_or_without_git(
    tmp_path, git_env, monkeypatch
):
    repo = tmp_path / "repo"
    git(tmp_path, "init", "-q", "-b", "main", str(repo))
    assert driver_warning(str(repo)) is None  # no .gitattributes
    write(repo / ".gitattributes", b"*.jsonl merge=union\n")
    assert driver_warning(str(repo)) is None  # another driver

    plain = tmp_path / "plain"
    plain.mkdir()
    write(plain / ".gitattributes", (ATTRIBUTES_LINE + "\n").encode())
    assert driver_warning(str(plain)) is None  # not a git work tree

    write(repo / ".gitattributes", (ATTRIBUTES_LINE + "\n").encode())
    assert driver_warning(str(repo)) is not None
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert driver_warning(str(repo)) is None  # git is not installed


def test_git_merges_with_the_driver_where_replaylog_is_not_on_path(origin, monkeypatch):
    """git-setup ran with a `replaylog` on PATH; git merges later without it there (the
    README's `.venv/bin/replaylog`, no venv activated)."""
    scripts = origin.parent / "scripts"
    scripts.mkdir()
    script = scripts / "replaylog"
    script.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m replaylog "$@"\n')
    script.chmod(0o755)
    plain_path = os.pathsep.join(
        folder
        for folder in os.environ["PATH"].split(os.pathsep)
        if not os.path.exists(os.path.join(folder, "replaylog"))
    )
    monkeypatch.setenv("PATH", f"{scripts}{os.pathsep}{plain_path}")
    alice = configured_clone(origin, "alice")
    bob = configured_clone(origin, "bob")
    add_events(alice, 1, "alice")
    git(alice, "push", "-q", "origin", "main")
    add_events(bob, 1, "bob")

    monkeypatch.setenv("PATH", plain_path)
    assert shutil.which("replaylog") is None
    assert driver_warning(str(bob)) is None
    pull = git(bob, "pull", "--no-rebase", "--no-edit", "origin", "main", check=False)

    assert pull.returncode == 0, pull.stdout + pull.stderr
    assert git(bob, "status", "--porcelain").stdout == ""
    assert len(ids_of(bob)) == 4


@pytest.mark.parametrize(
    "command",
    [
        "replaylog-not-installed merge-driver %O %A %B %P",
        "/nowhere/bin/python3 -m replaylog merge-driver %O %A %B %P",
        "venv/bin/replaylog merge-driver %O %A %B %P",  # from the top of the work tree
    ],
)
def test_verify_warns_when_the_configured_driver_program_cannot_be_found(
    tmp_path, git_env, command
):
    repo = tmp_path / "repo"
    git(tmp_path, "init", "-q", "-b", "main", str(repo))
    git_setup(str(repo))
    assert driver_warning(str(repo)) is None
    git(repo, "config", "--local", "merge.replaylog.driver", command)

    warning = driver_warning(str(repo))

    assert warning is not None and "\n" not in warning
    assert shlex.split(command)[0] in warning and "git-setup" in warning
    _verify_warns_once(repo)
    assert git_setup(str(repo)) == {"gitattributes": False, "config": True}
    assert driver_warning(str(repo)) is None


SPEC_KITTY_ATTRIBUTES = b"kitty-specs/**/status.events.jsonl merge=spec-kitty-event-log\n"
#: What the driver command puts between the interpreter and `-m replaylog`.
PYTHON_FLAGS = ["-P"] if sys.version_info >= (3, 11) else []


def test_git_setup_leaves_spec_kittys_merge_driver_alone_and_says_so(tmp_path, git_env):
    """SPEC 9: another driver already given to the logs is not taken over silently."""
    repo = tmp_path / "repo"
    git(tmp_path, "init", "-q", "-b", "main", str(repo))
    write(repo / ".gitattributes", SPEC_KITTY_ATTRIBUTES)
    before = git(repo, "config", "--local", "--list").stdout

    expected = {"gitattributes": False, "config": False, "existing_driver": "spec-kitty-event-log"}
    assert git_setup(str(repo)) == expected
    assert cli_git_setup(repo) == expected
    r = subprocess.run(
        [sys.executable, "-m", "replaylog", "--root", str(repo), "git-setup"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and r.stderr == ""
    assert "'spec-kitty-event-log'" in r.stdout and "nothing was changed" in r.stdout
    assert "--replace" in r.stdout
    assert (repo / ".gitattributes").read_bytes() == SPEC_KITTY_ATTRIBUTES
    assert git(repo, "config", "--local", "--list").stdout == before


def test_git_setup_replace_leaves_one_line_naming_replaylog_for_the_logs(tmp_path, git_env):
    repo = tmp_path / "repo"
    git(tmp_path, "init", "-q", "-b", "main", str(repo))
    write(repo / ".gitattributes", SPEC_KITTY_ATTRIBUTES)

    assert git_setup(str(repo), replace=True) == {
        "gitattributes": True,
        "config": True,
        "existing_driver": "spec-kitty-event-log",
    }
    text = (repo / ".gitattributes").read_bytes()
    assert text == ATTRIBUTES_LINE.encode() + b"\n"  # spec-kitty's line held nothing else
    attr = git(repo, "check-attr", "merge", "--", "kitty-specs/f/status.events.jsonl").stdout
    assert attr.strip().endswith("merge: replaylog")
    assert driver_warning(str(repo)) is None  # no longer "names two merge drivers"
    # Once git uses replaylog's driver, setting up again changes nothing.
    assert git_setup(str(repo), replace=True) == {"gitattributes": False, "config": False}
    assert git_setup(str(repo)) == {"gitattributes": False, "config": False}
    assert (repo / ".gitattributes").read_bytes() == text


def test_git_setup_replace_keeps_every_other_line_byte_for_byte_and_the_file_mode(
    tmp_path, git_env
):
    repo = tmp_path / "repo"
    git(tmp_path, "init", "-q", "-b", "main", str(repo))
    attributes = repo / ".gitattributes"
    before = (
        b"# attributes\r\n"
        b"*.png   binary\r\n"
        b"kitty-specs/**/status.events.jsonl merge=spec-kitty-event-log\n"
        b"\n"
        b"docs/**/status.events.jsonl  -text merge=spec-kitty-event-log\r\n"
        b"*.md text"  # no final newline
    )
    write(attributes, before)
    attributes.chmod(0o640)
    inode = attributes.stat().st_ino

    r = cli(repo, "git-setup", "--replace", "--json")

    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {
        "gitattributes": True,
        "config": True,
        "existing_driver": "spec-kitty-event-log",
    }
    assert attributes.read_bytes() == (
        b"# attributes\r\n"
        b"*.png   binary\r\n"
        b"\n"
        b"docs/**/status.events.jsonl -text\r\n"  # its other attribute stays
        b"*.md text\n" + ATTRIBUTES_LINE.encode() + b"\n"
    )
    assert stat.S_IMODE(attributes.stat().st_mode) == 0o640
    assert attributes.stat().st_ino != inode, "written beside and renamed over, not in place"
    assert sorted(p.name for p in repo.iterdir()) == [".git", ".gitattributes"]
    report = json.loads(cli(repo, "verify", "--json").stdout)
    assert report == {"ok": True, "problems": []}
    again = cli(repo, "git-setup", "--replace", "--json")
    assert json.loads(again.stdout) == {"gitattributes": False, "config": False}


def test_git_setup_replace_that_git_would_not_follow_is_an_error_that_changes_nothing(
    tmp_path, git_env
):
    """The other driver is set where git-setup does not write: saying "updated" would lie."""
    repo = tmp_path / "repo"
    git(tmp_path, "init", "-q", "-b", "main", str(repo))
    write(repo / ".gitattributes", SPEC_KITTY_ATTRIBUTES)
    write(repo / ".git" / "info" / "attributes", SPEC_KITTY_ATTRIBUTES)  # wins over both
    config = git(repo, "config", "--local", "--list").stdout

    with pytest.raises(StoreError, match="merge=spec-kitty-event-log.*nothing was changed"):
        git_setup(str(repo), replace=True)
    r = cli(repo, "git-setup", "--replace")

    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("Error: ") and r.stderr.count("\n") == 1, r.stderr
    assert (repo / ".gitattributes").read_bytes() == SPEC_KITTY_ATTRIBUTES
    assert git(repo, "config", "--local", "--list").stdout == config


def test_git_setup_that_cannot_write_the_config_leaves_gitattributes_as_it_was(tmp_path, git_env):
    repo = tmp_path / "repo"
    git(tmp_path, "init", "-q", "-b", "main", str(repo))
    (repo / ".git" / "config.lock").write_text("")  # another git is writing the config

    with pytest.raises(StoreError, match="merge.replaylog.*nothing was changed"):
        git_setup(str(repo))
    assert not (repo / ".gitattributes").exists()

    write(repo / ".gitattributes", SPEC_KITTY_ATTRIBUTES)
    with pytest.raises(StoreError, match="nothing was changed"):
        git_setup(str(repo), replace=True)
    assert (repo / ".gitattributes").read_bytes() == SPEC_KITTY_ATTRIBUTES
    (repo / ".git" / "config.lock").unlink()
    assert "replaylog" not in git(repo, "config", "--local", "--list").stdout


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail, rather than hang the run, if the block takes longer (opening a FIFO does)."""

    def expire(signum: int, frame: object) -> None:
        raise AssertionError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def make_not_a_regular_file(path: Path, what: str, outside: Path) -> None:
    if what == "symlink":
        path.symlink_to(outside)
    elif what == "dangling symlink":
        path.symlink_to(outside.parent / "nowhere")
    elif what == "directory":
        path.mkdir()
    else:
        os.mkfifo(path)


@pytest.mark.parametrize("what", ["symlink", "dangling symlink", "directory", "fifo"])
def test_git_setup_refuses_a_gitattributes_that_is_a_link_or_not_a_file_changing_nothing(
    tmp_path, git_env, what
):
    """replaylog never writes through a link it did not make; this one led out of the repo."""
    repo = tmp_path / "repo"
    git(tmp_path, "init", "-q", "-b", "main", str(repo))
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"*.png binary\n")
    attributes = repo / ".gitattributes"
    make_not_a_regular_file(attributes, what, outside)
    config = git(repo, "config", "--local", "--list").stdout

    with deadline(30), pytest.raises(StoreError, match="nothing was changed") as caught:
        git_setup(str(repo))
    assert caught.value.path == str(attributes)
    r = subprocess.run(
        [sys.executable, "-m", "replaylog", "--root", str(repo), "git-setup", "--replace"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and r.stdout == "", r
    assert r.stderr.startswith(f"Error: {attributes} is ") and r.stderr.count("\n") == 1
    assert "regular file" in r.stderr and "Traceback" not in r.stderr

    assert outside.read_bytes() == b"*.png binary\n"
    assert not (outside.parent / "nowhere").exists()
    assert attributes.is_symlink() == what.endswith("symlink")
    assert git(repo, "config", "--local", "--list").stdout == config
    assert sorted(p.name for p in repo.iterdir()) == [".git", ".gitattributes"]


@pytest.mark.parametrize("what", ["symlink", "directory", "fifo"])
def test_verify_warns_about_a_gitattributes_that_is_a_link_or_not_a_file(tmp_path, git_env, what):
    repo = tmp_path / "repo"
    git(tmp_path, "init", "-q", "-b", "main", str(repo))
    outside = tmp_path / "outside.txt"
    outside.write_bytes((ATTRIBUTES_LINE + "\n").encode())
    make_not_a_regular_file(repo / ".gitattributes", what, outside)

    with deadline(30):
        warning = driver_warning(str(repo))

    assert warning is not None and "\n" not in warning and "regular file" in warning
    r = subprocess.run(
        [sys.executable, "-m", "replaylog", "--root", str(repo), "verify", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] is True and [p["level"] for p in report["problems"]] == ["warning"]


def test_verify_warns_when_the_logs_are_given_two_merge_drivers(tmp_path, git_env):
    repo = tmp_path / "repo"
    git(tmp_path, "init", "-q", "-b", "main", str(repo))
    # replaylog's line first: spec-kitty's, later, is the one git uses.
    write(repo / ".gitattributes", ATTRIBUTES_LINE.encode() + b"\n" + SPEC_KITTY_ATTRIBUTES)
    git_setup(str(repo), replace=False)
    warning = driver_warning(str(repo))
    assert warning is not None and "\n" not in warning
    assert "two merge drivers" in warning and "git uses spec-kitty-event-log" in warning
    assert "--replace" in warning
    report = _verify_warns_once(repo)
    assert "two merge drivers" in report["problems"][0]["message"]

    git_setup(str(repo), replace=True)
    assert driver_warning(str(repo)) is None
    assert (repo / ".gitattributes").read_bytes() == ATTRIBUTES_LINE.encode() + b"\n"


def test_verify_in_a_fresh_clone_naming_two_drivers_says_the_driver_is_not_configured(
    tmp_path, git_env
):
    repo = tmp_path / "repo"
    git(tmp_path, "init", "-q", "-b", "main", str(repo))
    write(repo / ".gitattributes", SPEC_KITTY_ATTRIBUTES + ATTRIBUTES_LINE.encode() + b"\n")
    warning = driver_warning(str(repo))  # git picks replaylog's line, which is not configured
    assert warning is not None and "no merge.replaylog.driver" in warning
    assert "git-setup" in warning
    git_setup(str(repo))
    warning = driver_warning(str(repo))
    assert warning is not None and "git uses replaylog" in warning and "--replace" in warning
    assert git_setup(str(repo), replace=True) == {
        "gitattributes": True,
        "config": False,
        "existing_driver": "spec-kitty-event-log",  # named, though git did not use it
    }
    assert driver_warning(str(repo)) is None
    assert (repo / ".gitattributes").read_bytes() == ATTRIBUTES_LINE.encode() + b"\n"


def append_and_commit(clone: Path, n: int, who: str) -> list[str]:
    with EventStore(clone, fsync=False) as store:
        ids = [store.append("feat", "note", who, {"i": i}).event_id for i in range(n)]
        store.status()
    git(clone, "add", "-A")
    git(clone, "commit", "-q", "-m", f"{who}: {n} events")
    return ids


def table(index_path: Path) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(index_path)
    try:
        return con.execute(
            "SELECT feature, line, event_id, node_id, lamport, status FROM events"
            " ORDER BY feature, line"
        ).fetchall()
    finally:
        con.close()


def test_merged_lines_are_indexed_as_an_append_and_raise_the_clock(
    origin: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    theirs = configured_clone(origin, "theirs")
    ours = configured_clone(origin, "ours")
    their_ids = append_and_commit(theirs, 6, "theirs")
    git(theirs, "push", "-q", "origin", "main")
    our_ids = append_and_commit(ours, 3, "ours")
    before = log_of(ours).read_bytes()

    starts: list[int] = []
    real_ingest = Index.ingest

    def spy(self: Index, feature: str, path: str, **kw: Any) -> int:
        starts.append(kw.get("start", 0))
        return real_ingest(self, feature, path, **kw)

    monkeypatch.setattr(Index, "ingest", spy)
    git(ours, "pull", "-q", "--no-rebase", "--no-edit", "origin", "main")
    merged = log_of(ours).read_bytes()
    assert merged.startswith(before), "the merge driver keeps our lines first, byte for byte"
    assert sorted(ids_of(ours)) == sorted(set(ids_of(ours)))
    assert set(their_ids) | set(our_ids) <= set(ids_of(ours))

    with EventStore(ours, fsync=False) as store:
        status = store.status()
        assert starts == [len(before)], "catch-up read only the merged-in bytes"
        assert status["totals"]["events"] == len(ids_of(ours))
        merged_max = max(e.lamport_clock for e in store.read("feat"))
        nxt = store.append("feat", "note", "ours-after-merge")
        assert nxt.lamport_clock > merged_max
        incremental = table(Path(store.index_path))

    rebuilt_path = ours / "rebuilt.db"
    with EventStore(ours, index_path=rebuilt_path, fsync=False) as rebuilt:
        rebuilt.rebuild_index()
        assert rebuilt.status()["lamport_clock"] == nxt.lamport_clock
    assert table(rebuilt_path) == incremental


def test_rebase_rewrites_the_log_and_the_index_follows_without_losing_state(
    origin: Path,
) -> None:
    theirs = configured_clone(origin, "theirs")
    ours = configured_clone(origin, "ours")
    append_and_commit(theirs, 2, "theirs")
    git(theirs, "push", "-q", "origin", "main")
    our_ids = append_and_commit(ours, 2, "ours")
    with EventStore(ours, fsync=False) as store:
        delivery = store.delivery
        with store.index.write():
            delivery.record(
                accepted=our_ids[:1],
                rejected={},
                transient=None,
                now="t",
                rows_of={our_ids[0]: [("feat", None)]},
            )
    git(ours, "pull", "-q", "--rebase", "origin", "main")
    with EventStore(ours, fsync=False) as store:
        status = store.status()["features"]["feat"]
        assert status["events"] == len(ids_of(ours))
        assert status["delivered"] == 1, "delivery state of a surviving event is kept"
        incremental = table(Path(store.index_path))
    rebuilt_path = ours / "rebuilt.db"
    with EventStore(ours, index_path=rebuilt_path, fsync=False) as rebuilt:
        rebuilt.rebuild_index()
    # A rebuild into a new file has no old state to carry: compare all but the status.
    assert [r[:5] for r in table(rebuilt_path)] == [r[:5] for r in incremental]
