"""SPEC section 6 (and the parts of 1, 2 and 3 a user meets through it): the command line.

Most tests run :func:`replaylog.cli.main` in this process, under click's ``CliRunner``
isolation, because ``main`` is what turns every failure into one ``Error: ...`` line (or
one JSON object) and the documented exit code. A few run real processes: ``python -m
replaylog``, the ``replaylog`` console script, the import-weight check and concurrent
appends.
"""

from __future__ import annotations

import ast
import json
import os
import re
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import child_env

from replaylog import EventStore, __version__
from replaylog.cli import cli, main
from replaylog.store import find_root

#: No REPLAYLOG_* setting of the caller's reaches a test, and fsync is off.
pytestmark = pytest.mark.usefixtures("clean_env")

ULID_RE = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$")
FIELDS = {
    "event_id",
    "event_type",
    "aggregate_id",
    "payload",
    "timestamp",
    "node_id",
    "lamport_clock",
    "causation_id",
    "correlation_id",
}
# The plainest append of these tests: feature "feat", type "t", aggregate "a".
APPEND = ("append", "feat", "--type", "t", "--aggregate", "a")
COMMANDS = [
    "append",
    "log",
    "status",
    "replay",
    "rebuild-index",
    "verify",
    "repair",
    "requeue",
    "merge-driver",
    "git-setup",
    "board",
    "move",
    "serve",
]
SCRIPT = Path(sys.executable).with_name("replaylog")


@dataclass
class Run:
    code: int
    out: str
    err: str

    def error_line(self) -> str:
        """The one ``Error: ...`` line on stderr; fails if stderr holds anything else."""
        lines = self.err.splitlines()
        assert len(lines) == 1, self.err
        assert lines[0].startswith("Error: "), self.err
        assert "Traceback" not in self.out + self.err
        return lines[0]

    def json_lines(self) -> list[Any]:
        return [json.loads(line) for line in self.out.splitlines()]


def run(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Run:
    """Run ``main(args)`` as the console script would, capturing stdout and stderr apart."""
    runner = CliRunner()
    code = 0
    with runner.isolation(input=input, env=env) as (out, err, _mixed):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        return Run(code, out.getvalue().decode(), err.getvalue().decode())


def at(root: Path, *args: str, **kwargs: Any) -> Run:
    """``replaylog --root ROOT ARGS...``"""
    return run("--root", str(root), *args, **kwargs)


def append(root: Path, feature: str = "feat", *args: str, **kwargs: Any) -> str:
    """Append one event and return its id."""
    r = at(root, "append", feature, "--type", "t", "--aggregate", "a", *args, **kwargs)
    assert r.code == 0, r
    return r.out.strip()


def log_file(root: Path, feature: str = "feat", logs_dir: str = "kitty-specs") -> Path:
    return root / logs_dir / feature / "status.events.jsonl"


def line_objects(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def corrupt_line_3(root: Path) -> Path:
    """A log of four events whose third line is not JSON."""
    for _ in range(4):
        append(root)
    path = log_file(root)
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = "{broken\n"
    path.write_text("".join(lines))
    return path


# --------------------------------------------------------------------------- help, version


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_command_has_help_text(command: str | None) -> None:
    r = run("--help") if command is None else run(command, "--help")
    assert r.code == 0, r
    usage, _, rest = r.out.partition("\n")
    assert usage.startswith("Usage: replaylog" + ("" if command is None else f" {command}"))
    description = rest.split("Options:")[0]
    assert len(description.strip()) >= 20, r.out
    if command is None:
        listed = set(re.findall(r"^  ([a-z-]+)  ", r.out.split("Commands:")[1], re.M))
        assert listed == set(COMMANDS)
        codes = r.out.split("Exit codes:")[1]
        for code in ("0", "1", "2", "3", "4"):
            assert re.search(rf"^\s+{code}\s+\w", codes, re.M), r.out


def test_every_command_is_in_the_help_test() -> None:
    assert set(cli.commands) == set(COMMANDS)


def test_version_prints_the_package_version() -> None:
    r = run("--version")
    assert r.code == 0
    assert r.out.strip() == f"replaylog, version {__version__}"


def test_python_dash_m_replaylog_runs_the_cli(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "replaylog", "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=child_env(),
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Usage: replaylog")
    assert "Exit codes:" in r.stdout


@pytest.mark.skipif(not SCRIPT.exists(), reason="the replaylog console script is not installed")
def test_console_script_appends_and_reads_back(root: Path) -> None:
    def script(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SCRIPT), "--root", str(root), *args],
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=60,
        )

    appended = script("append", "feat", "--type", "t", "--aggregate", "a")
    assert appended.returncode == 0, appended.stderr
    shown = script("log", "feat", "--json")
    assert shown.returncode == 0, shown.stderr
    assert [json.loads(x)["event_id"] for x in shown.stdout.splitlines()] == [
        appended.stdout.strip()
    ]


# --------------------------------------------------------------------------- append


def test_append_prints_the_ulid_and_writes_one_canonical_line(root: Path) -> None:
    r = at(root, "append", "feat", "--type", "created", "--aggregate", "wp-1")
    assert r.code == 0, r
    assert r.err == ""
    event_id = r.out.strip()
    assert ULID_RE.match(event_id)
    raw = log_file(root).read_bytes()
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    obj = json.loads(raw)
    assert raw == json.dumps(obj, sort_keys=True).encode() + b"\n"
    assert (obj["event_id"], obj["event_type"], obj["aggregate_id"]) == (
        event_id,
        "created",
        "wp-1",
    )
    assert obj["payload"] == {} and obj["lamport_clock"] >= 1


def test_append_ids_increase_and_clock_grows(root: Path) -> None:
    ids = [append(root) for _ in range(3)]
    assert ids == sorted(ids) and len(set(ids)) == 3
    clocks = [o["lamport_clock"] for o in line_objects(log_file(root))]
    assert clocks == sorted(clocks) and len(set(clocks)) == 3


def test_append_json_prints_the_event_object_with_all_nine_fields(root: Path) -> None:
    r = at(root, *APPEND, "--payload", '{"n": 1}', "--json")
    assert r.code == 0, r
    [printed] = r.json_lines()
    assert set(printed) == FIELDS
    assert printed == line_objects(log_file(root))[0]
    assert printed["payload"] == {"n": 1}
    assert printed["causation_id"] is None and printed["correlation_id"] is None


@pytest.mark.parametrize("source", ["--payload", "--payload-file", "stdin"])
def test_append_takes_the_payload_from_option_file_or_stdin(
    root: Path, tmp_path: Path, source: str
) -> None:
    payload = {"n": 1, "text": "h\u00e9llo", "nested": {"list": [1, 2.5, None, True]}}
    text = json.dumps(payload, ensure_ascii=False)
    if source == "--payload":
        extra, stdin = ["--payload", text], None
    elif source == "--payload-file":
        file = tmp_path / "payload.json"
        file.write_text(text, encoding="utf-8")
        extra, stdin = ["--payload-file", str(file)], None
    else:
        extra, stdin = ["--payload-file", "-"], text
    event_id = append(root, "feat", *extra, input=stdin)
    [obj] = line_objects(log_file(root))
    assert obj["event_id"] == event_id
    assert obj["payload"] == payload


def test_append_records_causation_and_correlation_ids(root: Path) -> None:
    first = append(root)
    second = append(root, "feat", "--causation-id", first, "--correlation-id", "flow-7")
    objs = {o["event_id"]: o for o in line_objects(log_file(root))}
    assert objs[second]["causation_id"] == first
    assert objs[second]["correlation_id"] == "flow-7"
    assert objs[first]["causation_id"] is None


def assert_nothing_created(root: Path) -> None:
    assert not (root / "kitty-specs").exists()
    assert not (root / ".replaylog").exists()
    assert list(root.iterdir()) == []


BAD_PAYLOADS = [
    "[1, 2]",
    '"text"',
    "42",
    "null",
    "{not json",
    "",
    '{"x": NaN}',
    '{"x": [1, Infinity]}',
    '{"x": {"y": -Infinity}}',
    '{"x": 1e999}',
]


@pytest.mark.parametrize("payload", BAD_PAYLOADS)
def test_bad_payload_is_a_usage_error_and_creates_nothing(root: Path, payload: str) -> None:
    r = at(root, *APPEND, "--payload", payload)
    assert r.code == 2, r
    assert "payload" in r.error_line()
    assert r.out == ""
    assert_nothing_created(root)


@pytest.mark.parametrize("payload", ["[1]", '{"x": NaN}', "{oops"])
def test_bad_payload_from_stdin_is_a_usage_error_and_creates_nothing(
    root: Path, payload: str
) -> None:
    r = at(
        root,
        *APPEND,
        "--payload-file",
        "-",
        input=payload,
    )
    assert r.code == 2, r
    r.error_line()
    assert_nothing_created(root)


def test_missing_payload_file_is_a_usage_error(root: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    r = at(root, *APPEND, "--payload-file", str(missing))
    assert r.code == 2, r
    assert str(missing) in r.error_line()
    assert_nothing_created(root)


def test_payload_and_payload_file_together_are_refused(root: Path, tmp_path: Path) -> None:
    file = tmp_path / "p.json"
    file.write_text("{}")
    r = at(
        root,
        *APPEND,
        "--payload",
        "{}",
        "--payload-file",
        str(file),
    )
    assert r.code == 2, r
    r.error_line()
    assert_nothing_created(root)


@pytest.mark.parametrize(
    "feature", ["../x", ".", "..", "a/b", "", "_x", ".hidden", "a b", "x" * 129]
)
def test_bad_feature_name_is_refused_before_anything_is_created(root: Path, feature: str) -> None:
    r = at(root, "append", feature, "--type", "t", "--aggregate", "a")
    assert r.code == 2, r
    assert "feature name" in r.error_line()
    assert_nothing_created(root)
    assert not (root.parent / "x").exists()


def test_longest_feature_name_is_accepted(root: Path) -> None:
    append(root, "F" * 128)
    assert log_file(root, "F" * 128).exists()


def test_sync_without_url_is_a_usage_error_and_writes_nothing(root: Path) -> None:
    r = at(root, *APPEND, "--sync")
    assert r.code == 2, r
    assert "URL" in r.error_line()
    assert_nothing_created(root)


def test_missing_type_is_a_one_line_usage_error(root: Path) -> None:
    r = at(root, "append", "feat", "--aggregate", "a")
    assert r.code == 2, r
    assert "--type" in r.error_line()
    assert r.out == ""
    assert_nothing_created(root)


def test_append_creates_the_index_private_with_a_gitignore(root: Path) -> None:
    append(root)
    index = root / ".replaylog" / "queue.db"
    assert index.stat().st_mode & 0o777 == 0o600
    assert (root / ".replaylog" / ".gitignore").read_text().strip() == "*"


# --------------------------------------------------------------------------- where files go


def test_root_option_chooses_the_root(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    append(root)
    assert log_file(root).exists()
    assert list(elsewhere.iterdir()) == []


def test_replaylog_root_env_chooses_the_root_and_the_option_wins(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(tmp_path)
    r = run(*APPEND, env={"REPLAYLOG_ROOT": str(root)})
    assert r.code == 0, r
    assert log_file(root).exists()
    r = run(
        "--root",
        str(other),
        *APPEND,
        env={"REPLAYLOG_ROOT": str(root)},
    )
    assert r.code == 0, r
    assert log_file(other).exists()
    assert len(line_objects(log_file(root))) == 1


@pytest.mark.parametrize("marker", [".git", ".replaylog"])
def test_root_is_the_nearest_ancestor_with_git_or_replaylog(
    root: Path, monkeypatch: pytest.MonkeyPatch, marker: str
) -> None:
    (root / marker).mkdir()
    deep = root / "src" / "pkg"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    event_id = run("append", "feat", "--type", "t", "--aggregate", "a").out.strip()
    assert line_objects(log_file(root))[0]["event_id"] == event_id
    assert not (deep / "kitty-specs").exists()


def test_root_falls_back_to_the_working_directory(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if find_root(str(root)) != str(root):
        pytest.skip("an ancestor of the temporary folder holds .git or .replaylog")
    monkeypatch.chdir(root)
    assert run("append", "feat", "--type", "t", "--aggregate", "a").code == 0
    assert log_file(root).exists()


def test_logs_dir_option_and_env(root: Path) -> None:
    append(root, "feat", env={"REPLAYLOG_LOGS_DIR": "from-env"})
    assert log_file(root, logs_dir="from-env").exists()
    r = at(
        root,
        "--logs-dir",
        "from-option",
        *APPEND,
        env={"REPLAYLOG_LOGS_DIR": "from-env"},
    )
    assert r.code == 0, r
    assert log_file(root, logs_dir="from-option").exists()
    assert not (root / "kitty-specs").exists()
    listed = at(root, "--logs-dir", "from-option", "log", "feat", "--json").json_lines()
    assert [o["event_id"] for o in listed] == [r.out.strip()]


@pytest.mark.parametrize("where", ["absolute", "parent", "empty"])
def test_a_logs_dir_outside_the_root_or_empty_is_taken_as_given(
    root: Path, tmp_path: Path, where: str
) -> None:
    """README: an absolute --logs-dir, or one that leaves the root by '..', holds the logs
    where it says; an empty one puts the feature folders under the root. A linked
    feature folder below it is still refused."""
    outside = tmp_path / "outside-logs"
    logs_dir, folder = {
        "absolute": (str(outside), outside),
        "parent": (os.path.relpath(outside, root), outside),
        "empty": ("", root),
    }[where]
    r = at(root, "--logs-dir", logs_dir, *APPEND)
    assert r.code == 0, r
    assert (folder / "feat" / "status.events.jsonl").is_file()
    assert not (root / "kitty-specs").exists()
    listed = at(root, "--logs-dir", logs_dir, "log", "feat", "--json").json_lines()
    assert [o["event_id"] for o in listed] == [r.out.strip()]
    target = tmp_path / "elsewhere"
    target.mkdir()
    (folder / "linked").symlink_to(target)
    refused = at(
        root, "--logs-dir", logs_dir, "append", "linked", "--type", "T", "--aggregate", "A"
    )
    assert refused.code == 1 and "symbolic link" in refused.err, refused
    assert list(target.iterdir()) == []


def test_index_option_and_env_put_the_index_there(root: Path, tmp_path: Path) -> None:
    by_option = tmp_path / "idx" / "a.db"
    by_option.parent.mkdir()
    r = at(root, "--index", str(by_option), "append", "feat", "--type", "t", "--aggregate", "a")
    assert r.code == 0, r
    assert by_option.is_file()
    by_env = tmp_path / "idx" / "b.db"
    r = at(root, "status", "--json", env={"REPLAYLOG_INDEX": str(by_env)})
    assert r.code == 0, r
    assert by_env.is_file()
    assert json.loads(r.out)["totals"]["events"] == 1
    assert not (root / ".replaylog" / "queue.db").exists()


@pytest.mark.parametrize(
    "value, fsyncs", [("0", False), ("false", False), ("1", True), (None, True)]
)
def test_replaylog_fsync_switches_fsync(
    root: Path, monkeypatch: pytest.MonkeyPatch, value: str | None, fsyncs: bool
) -> None:
    if value is None:
        monkeypatch.delenv("REPLAYLOG_FSYNC")
    else:
        monkeypatch.setenv("REPLAYLOG_FSYNC", value)
    calls: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        calls.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    append(root)
    assert bool(calls) is fsyncs
    assert len(line_objects(log_file(root))) == 1


# --------------------------------------------------------------------------- log


@pytest.fixture
def five(root: Path) -> list[dict[str, Any]]:
    """Five events of types x/y and aggregates a/b, as the line objects of the log."""
    for i, (kind, agg) in enumerate([("x", "a"), ("y", "a"), ("x", "b"), ("y", "b"), ("x", "a")]):
        r = at(
            root,
            "append",
            "feat",
            "--type",
            kind,
            "--aggregate",
            agg,
            "--payload",
            json.dumps({"i": i}),
        )
        assert r.code == 0, r
    return line_objects(log_file(root))


def test_log_json_prints_the_line_objects_in_file_order(
    root: Path, five: list[dict[str, Any]]
) -> None:
    r = at(root, "log", "feat", "--json")
    assert r.code == 0, r
    assert r.json_lines() == five


def test_log_human_output_is_in_file_order(root: Path, five: list[dict[str, Any]]) -> None:
    r = at(root, "log", "feat")
    assert r.code == 0, r
    lines = r.out.splitlines()
    assert len(lines) == 5
    for line, obj in zip(lines, five, strict=True):
        assert obj["event_id"] in line and f'{{"i": {obj["payload"]["i"]}}}' in line


def test_log_filters_by_type_and_aggregate(root: Path, five: list[dict[str, Any]]) -> None:
    by_type = at(root, "log", "feat", "--type", "x", "--json").json_lines()
    assert by_type == [o for o in five if o["event_type"] == "x"]
    by_agg = at(root, "log", "feat", "--aggregate", "b", "--json").json_lines()
    assert by_agg == [o for o in five if o["aggregate_id"] == "b"]
    both = at(root, "log", "feat", "--type", "x", "--aggregate", "a", "--json").json_lines()
    assert [o["payload"]["i"] for o in both] == [0, 4]


def test_log_limit_counts_shown_events(root: Path, five: list[dict[str, Any]]) -> None:
    assert at(root, "log", "feat", "--limit", "2", "--json").json_lines() == five[:2]
    assert at(root, "log", "feat", "--limit", "0", "--json").out == ""
    ys = at(root, "log", "feat", "--type", "y", "--limit", "1", "--json").json_lines()
    assert ys == [five[1]]


def test_log_stops_quietly_when_the_reader_goes_away(root: Path) -> None:
    with EventStore(root, fsync=False) as store:
        store.append_many(
            "big", [{"event_type": "t", "aggregate_id": "a"}] * 3_000
        )  # more than a pipe buffer holds
    proc = subprocess.Popen(
        [sys.executable, "-m", "replaylog", "--root", str(root), "log", "big"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline()
    proc.stdout.close()  # like `replaylog log big | head -1`
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert err == ""


# --------------------------------------------------------------------------- status


def test_status_json_has_exactly_the_documented_shape(root: Path) -> None:
    for _ in range(3):
        append(root, "one")
    append(root, "two")
    r = at(root, "status", "--json")
    assert r.code == 0, r
    report = json.loads(r.out)
    counts = {"events", "pending", "delivered", "failed"}
    assert set(report) == {"lamport_clock", "features", "totals"}
    assert set(report["features"]) == {"one", "two"}
    assert all(set(c) == counts for c in report["features"].values())
    assert report["features"]["one"] == {"events": 3, "pending": 3, "delivered": 0, "failed": 0}
    assert report["totals"] == {"events": 4, "pending": 4, "delivered": 0, "failed": 0}
    assert report["lamport_clock"] == 4
    only = json.loads(at(root, "status", "two", "--json").out)
    assert set(only["features"]) == {"two"}
    assert only["totals"]["events"] == 1


def test_status_human_table(root: Path) -> None:
    for _ in range(2):
        append(root, "alpha")
    r = at(root, "status")
    assert r.code == 0, r
    header, row, total, clock = r.out.splitlines()
    assert header.split() == ["feature", "events", "pending", "delivered", "failed"]
    assert row.split() == ["alpha", "2", "2", "0", "0"]
    assert total.split() == ["total", "2", "2", "0", "0"]
    assert clock == "lamport clock: 2"


def test_status_sees_lines_another_writer_added(root: Path) -> None:
    append(root)
    with EventStore(root, index_path=root / "other.db", fsync=False) as other:
        other.append("feat", "t", "a")
    report = json.loads(at(root, "status", "--json").out)
    assert report["features"]["feat"]["events"] == 2


# --------------------------------------------------------------------------- verify


def test_verify_clean_logs_exit_0(root: Path) -> None:
    append(root, "one")
    append(root, "two")
    r = at(root, "verify")
    assert r.code == 0, r
    assert r.out == ""
    j = at(root, "verify", "--json")
    assert j.code == 0
    assert json.loads(j.out) == {"ok": True, "problems": []}


#: What the reader says of corrupt_line_3's "{broken" after quoting it (SPEC 3).
WHY = " (a key in double quotes expected at character 2)"


def test_verify_names_path_and_line_of_a_corrupt_line(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = corrupt_line_3(root)
    monkeypatch.chdir(root)
    r = at(root, "verify")
    assert r.code == 1, r
    assert (
        "kitty-specs/feat/status.events.jsonl:3: Line 3: invalid JSON: {broken" + WHY
        in r.out.splitlines()
    )
    elsewhere = root.parent / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not below the log: the path is shown absolute
    r = at(root, "verify")
    assert r.code == 1, r
    assert f"{path}:3: Line 3: invalid JSON: {{broken{WHY}" in r.out.splitlines()


def test_verify_json_shape(root: Path) -> None:
    path = corrupt_line_3(root)
    r = at(root, "verify", "--json")
    assert r.code == 1, r
    report = json.loads(r.out)
    assert set(report) == {"ok", "problems"}
    assert report["ok"] is False
    [problem] = report["problems"]
    assert {"path", "line", "message"} <= set(problem)
    assert problem["path"] == str(path)
    assert problem["line"] == 3
    assert problem["message"].startswith("Line 3: invalid JSON: {broken")


def test_verify_warns_about_identical_duplicates_and_exits_0(root: Path) -> None:
    append(root)
    append(root)
    path = log_file(root)
    first = path.read_text().splitlines(keepends=True)[0]
    with path.open("a") as f:
        f.write(first)  # what a `merge=union` can leave behind
    r = at(root, "verify")
    assert r.code == 0, r
    assert re.search(r"status\.events\.jsonl:3: .*duplicate", r.out), r.out
    j = json.loads(at(root, "verify", "--json").out)
    assert j["ok"] is True
    assert [p["line"] for p in j["problems"]] == [3]
    assert len(at(root, "log", "feat", "--json").json_lines()) == 2


def test_verify_fails_on_same_id_with_different_content(root: Path) -> None:
    append(root)
    path = log_file(root)
    obj = line_objects(path)[0]
    obj["payload"] = {"changed": True}
    with path.open("a") as f:
        f.write(json.dumps(obj, sort_keys=True) + "\n")
    r = at(root, "verify", "--json")
    assert r.code == 1, r
    assert json.loads(r.out)["ok"] is False


def test_verify_lists_a_symlinked_feature_folder_and_checks_every_other_log(
    root: Path, tmp_path: Path
) -> None:
    # The tester's tree: kitty-specs/linked -> a folder elsewhere holding a log, beside
    # good logs (and here a bad one, to show that every log is still checked).
    append(root, "good")
    broken = corrupt_line_3(root)
    elsewhere = tmp_path / "elsewhere" / "f"
    elsewhere.mkdir(parents=True)
    (elsewhere / "status.events.jsonl").write_bytes(log_file(root, "good").read_bytes())
    link = root / "kitty-specs" / "linked"
    link.symlink_to(elsewhere, target_is_directory=True)
    r = at(root, "verify")
    assert r.code == 1, r
    assert r.err == "", r  # its report is the output: no Error: line
    bad_line, linked = r.out.splitlines()
    assert bad_line.startswith(f"{broken}:3: Line 3: invalid JSON: {{broken"), r
    assert linked == (
        f"{link}: {link} is a symbolic link; replaylog refuses to follow a link between the"
        " root and a log (it could lead anywhere). Replace it with the real folder."
    )
    j = at(root, "verify", "--json")
    assert j.code == 1, j
    report = json.loads(j.out)
    assert set(report) == {"ok", "problems"} and report["ok"] is False
    assert [(p["path"], p["line"]) for p in report["problems"]] == [
        (str(broken), 3),
        (str(link), None),
    ]
    assert os.listdir(elsewhere) == ["status.events.jsonl"]


#: Folders under the logs folder whose names cannot be a feature's (SPEC section 1).
STRAY_FOLDERS = ["ünï", "a b", ".hid"]


@pytest.mark.parametrize(
    "command",
    [["verify"], ["status"], ["rebuild-index"], ["board"], ["replay", "--url", "URL"]],
)
def test_a_log_in_a_folder_that_cannot_be_a_feature_is_listed_and_the_command_exits_1(
    root: Path, command: list[str]
) -> None:
    from receiver import Receiver

    append(root, "good")
    strays = []
    for name in STRAY_FOLDERS:
        path = log_file(root, name)
        path.parent.mkdir()
        path.write_bytes(log_file(root, "good").read_bytes())
        strays.append(path)
    with Receiver() as server:
        command = [server.url if part == "URL" else part for part in command]
        _listed_and_exits_1(root, command, strays)
        if command[0] == "replay":  # the good log was replayed all the same, and only it
            good = json.loads(log_file(root, "good").read_bytes())
            assert list(server.events) == [good["event_id"]]


def _listed_and_exits_1(root: Path, command: list[str], strays: list[Path]) -> None:
    r = at(root, *command)
    assert r.code == 1, r
    for name, path in zip(STRAY_FOLDERS, strays, strict=True):
        assert (
            f"{path}: the folder name {name!r} is not a feature name (1-128 characters from"
            " A-Z a-z 0-9 . _ -, starting with a letter or digit), so this log is not read,"
            " indexed or replayed: rename the folder"
        ) in r.out.splitlines(), r
    if command == ["verify"]:
        assert r.err == "", r
    else:
        assert r.error_line().startswith("Error: 3 logs cannot be read"), r
    j = at(root, *command, "--json")
    assert j.code == 1, j
    out = json.loads(j.out)
    assert sorted(p["path"] for p in out["problems"]) == sorted(map(str, strays))
    if command == ["status"]:
        assert list(out["features"]) == ["good"]
    if command == ["rebuild-index"]:
        skipped = at(root, "rebuild-index", "--skip-bad", "--json")
        assert skipped.code == 0, skipped
        result = json.loads(skipped.out)
        assert (result["features"], len(result["skipped"])) == (1, 3)


# --------------------------------------------------------------------------- repair


def test_repair_moves_an_invalid_torn_tail_aside_and_appends_work_again(root: Path) -> None:
    append(root)
    append(root)
    path = log_file(root)
    good = path.read_bytes()
    with path.open("ab") as f:
        f.write(b'{"event_id": "01')
    refused = at(root, "append", "feat", "--type", "t", "--aggregate", "a")
    assert refused.code == 1, refused
    assert "replaylog repair" in refused.error_line()
    r = at(root, "repair", "feat", "--json")
    assert r.code == 0, r
    assert json.loads(r.out) == {"repaired": True}
    assert path.read_bytes() == good
    [torn] = list(path.parent.glob("status.events.jsonl.torn-*"))
    assert torn.read_bytes() == b'{"event_id": "01'
    new_id = append(root)
    assert [o["event_id"] for o in line_objects(path)][-1] == new_id
    assert at(root, "verify").code == 0


def test_repair_of_a_clean_log_changes_nothing(root: Path) -> None:
    append(root)
    before = log_file(root).read_bytes()
    r = at(root, "repair", "feat", "--json")
    assert r.code == 0, r
    assert json.loads(r.out) == {"repaired": False}
    assert log_file(root).read_bytes() == before
    assert list(log_file(root).parent.glob("*.torn-*")) == []


# --------------------------------------------------------------------------- index commands


def test_rebuild_index_json_counts_features_and_events(root: Path) -> None:
    for _ in range(3):
        append(root, "one")
    append(root, "two")
    clock = json.loads(at(root, "status", "--json").out)["lamport_clock"]
    (root / ".replaylog" / "queue.db").unlink()
    r = at(root, "rebuild-index", "--json")
    assert r.code == 0, r
    assert json.loads(r.out) == {"features": 2, "events": 4}
    assert json.loads(at(root, "status", "--json").out)["lamport_clock"] == clock


def fail_all(root: Path) -> None:
    """Mark every indexed event failed, as a replay that was refused would."""
    assert at(root, "status").code == 0  # the index has caught up
    with sqlite3.connect(root / ".replaylog" / "queue.db") as db:
        db.execute("UPDATE events SET status = 'failed', retry_count = 1")
    db.close()


def test_requeue_json_counts_failed_events_made_pending(root: Path) -> None:
    append(root, "one")
    append(root, "one")
    append(root, "two")
    fail_all(root)
    r = at(root, "requeue", "one", "--json")
    assert r.code == 0, r
    assert json.loads(r.out) == {"requeued": 2}
    counts = json.loads(at(root, "status", "--json").out)["features"]
    assert counts["one"]["pending"] == 2 and counts["two"]["failed"] == 1
    assert json.loads(at(root, "requeue", "--json").out) == {"requeued": 1}
    assert json.loads(at(root, "requeue", "--json").out) == {"requeued": 0}


UNKNOWN_ID = "01ARZ3NDEKTSV4RRFFQ69G5FAV"


@pytest.mark.parametrize(
    "args, code, says",
    [
        (["log", "nosuch"], 1, "feature 'nosuch' has no log"),  # what the others follow
        (["status", "nosuch"], 1, "feature 'nosuch' has no log"),
        (["requeue", "nosuch"], 1, "feature 'nosuch' has no log"),
        (["requeue", "nosuch", "--event", "{one}"], 1, "feature 'nosuch' has no log"),
        (["requeue", "two", "--event", "{one}"], 1, "not in the log of feature 'two'"),
        (["requeue", "--event", UNKNOWN_ID], 1, f"event {UNKNOWN_ID} is in no log"),
        (["requeue", "one", "--event", UNKNOWN_ID], 1, "not in the log of feature 'one'"),
        (["requeue", "--event", "NOTANID"], 2, "the event id 'NOTANID' is not a ULID"),
        (["requeue", "one", "--event", "{lower}"], 2, "is not a ULID"),
    ],
)
def test_a_feature_or_event_that_is_not_there_is_an_error_and_changes_nothing(
    root: Path, args: list[str], code: int, says: str
) -> None:
    one = append(root, "one")
    append(root, "two")
    fail_all(root)
    args = [a.format(one=one, lower=one.lower()) for a in args]
    index = root / ".replaylog" / "queue.db"

    def states() -> list[tuple[Any, ...]]:
        with sqlite3.connect(index) as db:
            rows = db.execute("SELECT feature, event_id, status FROM events ORDER BY 1").fetchall()
        db.close()
        return rows

    before = states()
    r = at(root, *args)
    assert r.code == code, r
    assert says in r.error_line(), r
    j = at(root, *args, "--json")
    assert j.code == code, j
    assert json.loads(j.out)["error"]["type"] == ("UsageError" if code == 2 else "StoreError")
    assert states() == before
    assert not (root / "kitty-specs" / "nosuch").exists()


@pytest.mark.parametrize("command", [["status"], ["requeue"], list(APPEND), ["rebuild-index"]])
def test_a_fifo_in_place_of_the_index_is_named_as_such_not_as_a_disk_error(
    root: Path, command: list[str]
) -> None:
    index = root / ".replaylog" / "queue.db"
    index.parent.mkdir()
    os.mkfifo(index)
    r = at(root, *command)
    assert r.code == 1, r
    line = r.error_line()
    assert f"{index} is not a replaylog index (it is not a regular file" in line, line
    assert "I/O error" not in line and "disk" not in line, line
    assert stat.S_ISFIFO(os.lstat(index).st_mode)  # left as it was
    assert not (root / "kitty-specs").exists()


@pytest.mark.parametrize("blocker", ["file", "link to nothing"])
@pytest.mark.parametrize(
    "command",
    [["status"], list(APPEND), ["rebuild-index"], ["replay", "--url", "http://127.0.0.1:9/"]],
)
def test_a_file_in_place_of_the_index_folder_is_named(
    root: Path, command: list[str], blocker: str
) -> None:
    # `.replaylog` made by something else, as a file or a dangling link: said so, not
    # "File exists".
    folder = root / ".replaylog"
    if blocker == "file":
        folder.write_text("notes\n")
    else:
        folder.symlink_to(root / "nowhere")
    r = at(root, *command)
    assert r.code == 1, r
    line = r.error_line()
    assert f"{folder} is not a folder; move it away" in line, line
    assert "File exists" not in line and "Not a directory" not in line, line
    if blocker == "file":
        assert folder.read_text() == "notes\n"  # left as it was
    else:
        assert os.readlink(folder) == str(root / "nowhere") and not folder.exists()
    assert not (root / "kitty-specs").exists()


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("command", [["log", "feat"], ["status"], ["status", "feat"]])
def test_corrupt_log_is_one_error_line_with_path_and_line(root: Path, command: list[str]) -> None:
    path = corrupt_line_3(root)
    r = at(root, *command)
    assert r.code == 1, r
    line = r.error_line()
    assert str(path) in line and "Line 3: invalid JSON" in line


def test_corrupt_log_in_a_real_process_prints_no_traceback(root: Path) -> None:
    path = corrupt_line_3(root)
    for command in (["status"], ["log", "feat"]):
        r = subprocess.run(
            [sys.executable, "-m", "replaylog", "--root", str(root), *command],
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=60,
        )
        assert r.returncode == 1
        assert "Traceback" not in r.stdout + r.stderr
        if command == ["status"]:
            # Over every log (SPEC 10): the bad one listed as verify lists it, one error.
            assert f"{path}:3: Line 3: invalid JSON: {{broken{WHY}" in r.stdout.splitlines()
            assert r.stderr.splitlines() == [
                f"Error: 1 log cannot be read: {path}: Line 3: invalid JSON: {{broken{WHY};"
                " left out of"
                " the counts; every other log is counted. Fix what each problem names"
                " (`replaylog verify` lists them all): a torn last line with `replaylog"
                " repair`, a bad line by hand, a link or a misnamed folder as its message says"
            ]
            continue
        assert r.stderr.splitlines() == [
            f"Error: {path}: Line 3: invalid JSON: {{broken{WHY}; replaylog changes no line of a"
            " log: correct or remove this one by hand (`replaylog verify` lists every problem)"
        ]


@pytest.mark.parametrize(
    "command", [["status"], ["log", "feat"], ["append", "feat", "--type", "t", "--aggregate", "a"]]
)
def test_corrupt_index_names_rebuild_index(root: Path, command: list[str]) -> None:
    append(root)
    (root / ".replaylog" / "queue.db").write_bytes(os.urandom(8192))
    if command[0] == "log":
        assert at(root, *command).code == 0  # reading a log needs no index
        return
    r = at(root, *command)
    assert r.code == 1, r
    assert "replaylog rebuild-index" in r.error_line()
    j = at(root, *command, "--json")
    assert j.code == 1
    assert j.err == ""
    assert json.loads(j.out)["error"]["type"] == "BadIndexError"
    assert at(root, "rebuild-index").code == 0
    assert at(root, *command).code == 0


@pytest.mark.parametrize(
    "args, code, kind",
    [
        (["append", "../x", "--type", "t", "--aggregate", "a"], 2, "UsageError"),
        (["append", "feat", "--aggregate", "a"], 2, "UsageError"),
        ([*APPEND, "--payload", "[]"], 2, "UsageError"),
        (["status", "--no-such-option"], 2, "UsageError"),
        (["log", "feat", "--limit", "-1"], 2, "UsageError"),
    ],
)
def test_json_failures_print_one_error_object_on_stdout(
    root: Path, args: list[str], code: int, kind: str
) -> None:
    r = at(root, *args, "--json")
    assert r.code == code, r
    assert r.err == ""
    [obj] = r.json_lines()
    assert set(obj) == {"error"}
    assert set(obj["error"]) == {"type", "message"}
    assert obj["error"]["type"] == kind
    assert obj["error"]["message"]


def test_json_failure_of_a_corrupt_log(root: Path) -> None:
    path = corrupt_line_3(root)
    r = at(root, "status", "--json")
    assert r.code == 1, r
    assert r.err == ""
    out = json.loads(r.out)
    error = out["error"]
    assert error["type"] == "LogsUnreadableError"  # a StoreError over many logs (SPEC 10)
    assert str(path) in error["message"] and "Line 3" in error["message"]
    assert out["problems"] == [
        {"path": str(path), "line": 3, "message": "Line 3: invalid JSON: {broken" + WHY}
    ]
    assert out["features"] == {} and out["totals"]["events"] == 0


def test_log_json_streams_up_to_a_corrupt_line_then_ends_with_the_error(root: Path) -> None:
    path = corrupt_line_3(root)
    good = [json.loads(line) for line in path.read_text().splitlines()[:2]]
    r = at(root, "log", "feat", "--json")
    assert r.code == 1, r
    assert r.err == ""
    *events, last = r.json_lines()
    assert events == good
    assert last["error"]["type"] == "StoreError" and "Line 3" in last["error"]["message"]


@pytest.mark.parametrize(
    "args",
    [["no-such-command"], ["status", "--no-such-option"], ["--no-such-global", "status"], ["log"]],
)
def test_unknown_command_or_option_is_one_usage_line(root: Path, args: list[str]) -> None:
    r = at(root, *args)
    assert r.code == 2, r
    r.error_line()
    assert r.out == ""


def test_an_unforeseen_exception_is_still_one_line(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(self: EventStore, feature: str | None = None) -> dict[str, Any]:
        raise RuntimeError("something odd")

    monkeypatch.setattr(EventStore, "status", boom)
    r = at(root, "status")
    assert r.code == 1, r
    assert "something odd" in r.error_line()
    j = at(root, "status", "--json")
    assert j.code == 1
    assert json.loads(j.out)["error"]["type"] == "RuntimeError"


# --------------------------------------------------------------------------- real processes


HEAVY = ("sqlalchemy", "alembic", "httpx", "ulid", "hypothesis")


def test_a_cli_append_imports_no_heavy_module(root: Path) -> None:
    # The first append on a fresh index runs the migrations (Alembic) once; measure the next.
    append(root)
    code = textwrap.dedent(
        f"""
        import sys
        from replaylog.cli import main
        try:
            main(["--root", {str(root)!r}, "append", "feat", "--type", "t", "--aggregate", "a"])
        except SystemExit as exc:
            assert not exc.code, exc.code
        print(sorted(sys.modules))
        """
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), timeout=60
    )
    assert r.returncode == 0, r.stderr
    event_id, modules_text = r.stdout.splitlines()
    assert ULID_RE.match(event_id)
    modules = ast.literal_eval(modules_text)
    assert "replaylog.cli" in modules
    loaded = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert loaded == []
    assert len(line_objects(log_file(root))) == 2


def test_concurrent_cli_appends_keep_every_event_and_unique_clocks(root: Path) -> None:
    append(root)  # create the index (migrations) once, before the race
    per_worker, workers = 25, 4
    printed: list[list[str]] = [[] for _ in range(workers)]
    failures: list[str] = []

    def worker(n: int) -> None:
        for i in range(per_worker):
            r = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "replaylog",
                    "--root",
                    str(root),
                    "append",
                    "race",
                    "--type",
                    "t",
                    "--aggregate",
                    f"w{n}",
                    "--payload",
                    json.dumps({"i": i}),
                ],
                capture_output=True,
                text=True,
                env=child_env(),
                timeout=120,
            )
            if r.returncode != 0:
                failures.append(r.stderr)
            printed[n].append(r.stdout.strip())

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    objs = line_objects(log_file(root, "race"))
    ids = [o["event_id"] for o in objs]
    assert len(ids) == per_worker * workers == len(set(ids))
    assert sorted(ids) == sorted(i for ids_ in printed for i in ids_)
    clocks = [o["lamport_clock"] for o in objs]
    assert len(set(clocks)) == len(clocks)
    assert clocks == sorted(clocks)  # in file order, the clock only grows
    for n in range(workers):  # each worker's own events keep its order
        mine = [o["payload"]["i"] for o in objs if o["aggregate_id"] == f"w{n}"]
        assert mine == list(range(per_worker))
    assert at(root, "verify").code == 0
    report = json.loads(at(root, "status", "--json").out)
    assert report["features"]["race"]["events"] == 100


def test_an_index_damaged_inside_names_rebuild_index_and_rebuild_fixes_it(tmp_path: Path) -> None:
    """A queue.db whose header is fine but whose pages are not (a torn swap, a bad disk)."""
    from replaylog import EventStore

    with EventStore(tmp_path, fsync=False) as store:
        store.append_many(
            "f",
            [
                {"event_type": "t", "aggregate_id": f"a{i}", "payload": {"x": "y" * 200}}
                for i in range(3000)
            ],
        )
    index = tmp_path / ".replaylog" / "queue.db"
    size = index.stat().st_size
    with open(index, "r+b") as f:
        for offset in range(8192, size, 4096):
            f.seek(offset + 100)
            f.write(os.urandom(200))
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLAYLOG_")}
    status = subprocess.run(
        [sys.executable, "-m", "replaylog", "--root", str(tmp_path), "status"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert status.returncode == 1
    assert "replaylog rebuild-index" in status.stderr and "Traceback" not in status.stderr
    assert status.stderr.count("\n") == 1
    subprocess.run(
        [sys.executable, "-m", "replaylog", "--root", str(tmp_path), "rebuild-index"],
        check=True,
        capture_output=True,
        env=env,
    )
    with EventStore(tmp_path) as store:
        assert store.status()["totals"]["events"] == 3000


@pytest.mark.parametrize("command", [["rebuild-index"], ["replay", "--url", "URL"]])
def test_long_work_shows_a_progress_bar_on_a_terminal_only(root: Path, command: list[str]) -> None:
    import pty

    from receiver import Receiver

    for i in range(3):
        at(root, "append", f"feat-{i}", "--type", "t", "--aggregate", "a")
    with Receiver() as server:
        args = [server.url if a == "URL" else a for a in command]
        argv = [sys.executable, "-m", "replaylog", "--root", str(root), *args]
        plain = subprocess.run(argv, capture_output=True, text=True, env=child_env(), timeout=60)
        assert plain.returncode == 0 and plain.stderr == "", plain
        if command[0] == "replay":
            at(root, "rebuild-index", "--reset-delivery")  # pending again for the second run
        leader, follower = pty.openpty()
        try:
            shown = subprocess.run(
                argv, stdout=subprocess.PIPE, stderr=follower, env=child_env(), timeout=60
            )
            os.close(follower)
            follower = -1
            seen = b""
            while True:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:  # the terminal is closed once everything is read
                    break
                if not chunk:
                    break
                seen += chunk
        finally:
            os.close(leader)
            if follower >= 0:
                os.close(follower)
    assert shown.returncode == 0
    assert b"100%" in seen, seen


@pytest.mark.parametrize(
    "command", [["status", "--json"], ["verify", "--json"], ["board", "--json"], ["log", "feat"]]
)
def test_output_that_cannot_be_written_is_one_error_line_not_a_traceback(
    root: Path, command: list[str]
) -> None:
    append(root)
    with open("/dev/full", "wb") as full:
        r = subprocess.run(
            [sys.executable, "-m", "replaylog", "--root", str(root), *command],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
            timeout=60,
        )
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        "Error: cannot write the output to standard output: No space left on device;"
        " nothing more was printed"
    ]
