"""SPEC section 12, machine faults met through what a user gives replaylog.

- files it did not make: an ``--index`` that is not a replaylog index is refused, named,
  and left as it was;
- the clock file is a cache: a value in it that nothing backs is ignored;
- what ``append`` accepts every reader gives back: lone surrogates, nesting deeper
  than the readers allow and control characters in names are refused at append, as
  usage errors (exit 2), and a line holding a lone surrogate that got into a log by
  other means is a bad line every reader names;
- the smaller promises met on the way: a line of exactly 1 MiB, ``log`` of a feature
  with no log, a ``--root`` that does not exist, bounds given as seconds, a lock held
  by a stuck process, and ``merge-driver --json``.

Real processes and real files throughout.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cli_run import Run
from conftest import clock_file, log_of

from replaylog import Event, EventStore, StoreError, UsageError, read_events
from replaylog.lines.canonical import MAX_LINE_BYTES, MAX_NESTING

FEATURE = "feat"
APPEND = ("append", FEATURE, "--type", "T", "--aggregate", "a")


def cli(
    root: Path | None,
    *args: str,
    stdin: str | None = None,
    timeout: float = 60.0,
    env_extra: dict[str, str] | None = None,
) -> Run:
    """``python -m replaylog [--root ROOT] ARGS`` in a real process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLAYLOG_")}
    env["REPLAYLOG_FSYNC"] = "0"
    env.update(env_extra or {})
    prefix = ("--root", str(root)) if root is not None else ()
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "replaylog", *prefix, *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    return Run(tuple(args), proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


# --------------------------------------------------------------------------- files it did not make


def another_applications_database(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO users (name) VALUES ('ada')")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("kind", ["notes", "sqlite", "alembic-of-another-app", "named-queue.db"])
def test_an_index_that_is_not_replaylogs_is_refused_named_and_left_as_it_was(
    tmp_path: Path, root: Path, kind: str
) -> None:
    with EventStore(root, fsync=False) as store:
        store.append(FEATURE, "T", "a")
    other = tmp_path / "other"
    other.mkdir()
    names = {"notes": "notes.txt", "named-queue.db": "queue.db"}
    path = other / names.get(kind, "app.db")  # another application's queue.db is not ours
    if kind == "notes":
        path.write_text("my notes, not an index\n" * 100)
    else:
        another_applications_database(path)
        if kind == "alembic-of-another-app":
            conn = sqlite3.connect(path)
            conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
            conn.execute("INSERT INTO alembic_version VALUES ('0002')")
            conn.commit()
            conn.close()
    before, listed = digest(path), siblings(path)
    for args in (["rebuild-index"], ["rebuild-index", "--reset-delivery"], ["status"], APPEND):
        run = cli(root, "--index", str(path), *args)
        assert run.code == 1, run
        line = run.error_line()
        assert str(path) in line and "not a replaylog index" in line, run
        assert "run `replaylog rebuild-index`" not in line, run
        assert "a path of its own" in line, run
    assert digest(path) == before and siblings(path) == listed


def test_a_damaged_index_at_its_own_place_is_still_rebuilt(root: Path) -> None:
    with EventStore(root, fsync=False) as store:
        store.append_many(FEATURE, [{"event_type": "T", "aggregate_id": "a"}] * 3)
    index = root / ".replaylog" / "queue.db"
    index.write_bytes(b"garbage, not a database" * 100)
    status = cli(root, "status")
    assert status.code == 1 and "rebuild-index" in status.error_line(), status
    rebuilt = cli(root, "rebuild-index", "--json")
    assert rebuilt.code == 0 and json.loads(rebuilt.out) == {"features": 1, "events": 3}, rebuilt


def test_an_index_elsewhere_that_replaylog_made_or_an_empty_file_is_rebuilt(
    tmp_path: Path, root: Path
) -> None:
    with EventStore(root, fsync=False) as store:
        store.append(FEATURE, "T", "a")
    made = tmp_path / "mine.db"
    assert cli(root, "--index", str(made), "status").code == 0
    rebuilt = cli(root, "--index", str(made), "rebuild-index", "--json")
    assert rebuilt.code == 0 and json.loads(rebuilt.out)["events"] == 1, rebuilt
    empty = tmp_path / "empty.db"
    empty.touch()
    rebuilt = cli(root, "--index", str(empty), "rebuild-index", "--json")
    assert rebuilt.code == 0 and json.loads(rebuilt.out)["events"] == 1, rebuilt


# --------------------------------------------------------------------------- the clock file


def appended_clock(root: Path) -> int:
    run = cli(root, *APPEND, "--json")
    assert run.code == 0, run
    return int(json.loads(run.out)["lamport_clock"])


@pytest.mark.parametrize(
    "junk",
    [
        b"abc",  # three junk bytes: read as 6,513,249 once padded
        struct.pack("<q", 2**63 - 2),  # a huge value, as the older format held it
        struct.pack("<qq", 2**62, 12345),  # a huge value whose check does not match
        b"\xff" * 16,
    ],
    ids=["three-bytes", "huge-old-format", "huge-bad-check", "all-ones"],
)
def test_a_clock_file_value_that_nothing_backs_is_ignored(root: Path, junk: bytes) -> None:
    assert [appended_clock(root) for _ in range(3)] == [1, 2, 3]
    clock_file(root).write_bytes(junk)
    assert appended_clock(root) == 4
    assert appended_clock(root) == 5
    assert [e.lamport_clock for e in EventStore(root).read(FEATURE)] == [1, 2, 3, 4, 5]
    status = cli(root, "status", "--json")
    assert json.loads(status.out)["lamport_clock"] == 5, status


def test_junk_in_the_clock_file_is_ignored_by_a_store_appending_on_its_fast_path(
    root: Path,
) -> None:
    with EventStore(root, fsync=False) as store:
        assert [store.append(FEATURE, "T", "a").lamport_clock for _ in range(3)] == [1, 2, 3]
        with open(clock_file(root), "r+b") as f:
            f.write(b"abc")  # into the file the store has mapped
        assert store.append(FEATURE, "T", "a").lamport_clock == 4
        assert store.append(FEATURE, "T", "a").lamport_clock == 5


# --------------------------------------------------------------------------- read back


def test_a_lone_surrogate_is_refused_at_append_with_exit_2_and_nothing_written(
    root: Path,
) -> None:
    assert cli(root, *APPEND, "--payload", '{"ok": "caf\\u00e9 \\ud83d\\ude00"}').code == 0
    before = log_of(root).read_bytes()
    for payload in ('{"a": "\\ud800"}', '{"\\udc00": 1}', '{"a": ["x", {"b": "\\udfff z"}]}'):
        run = cli(root, *APPEND, "--payload", payload)
        assert run.code == 2, run
        assert "lone surrogate" in run.error_line(), run
    with_type = cli(root, "append", FEATURE, "--type", "T", "--aggregate", "a\udcff")
    assert with_type.code == 2 and "lone surrogate" in with_type.error_line(), with_type
    assert log_of(root).read_bytes() == before
    shown = cli(root, "log", FEATURE)
    assert shown.code == 0 and "caf\u00e9 \U0001f600" in shown.out, shown
    with EventStore(root, fsync=False) as store:
        with pytest.raises(UsageError, match="lone surrogate"):
            store.append(FEATURE, "T", "a", {"x": "\ud800"})
        with pytest.raises(UsageError, match="lone surrogate"):
            store.append_many(FEATURE, [{"event_type": "T\udc80", "aggregate_id": "a"}])
        with pytest.raises(UsageError, match="lone surrogate"):
            store.append_many(FEATURE, [Event.new("T", "a", {"k": ["\udbff"]})])
    assert log_of(root).read_bytes() == before


def test_a_line_holding_a_lone_surrogate_is_a_bad_line_every_command_names(root: Path) -> None:
    # Written by hand (append refuses it): json reads "\ud800" as a string that no
    # terminal can print and no encoder can write, so `log` once died half-way with
    # "'utf-8' codec can't encode character" and no path or line, while verify said ok.
    with EventStore(root, fsync=False) as store:
        first = store.append(FEATURE, "T", "a", {"n": 1})
    good = first.to_line()
    for field, bad in (
        ("payload.x", good.replace(b'"n": 1', b'"x": "\\ud800"')),
        ("event_type", good.replace(b'"event_type": "T"', b'"event_type": "T\\udc00"')),
    ):
        other = Event.new("T", "b", {"n": 2}, lamport_clock=2).to_line()
        bad = bad.replace(first.event_id.encode(), json.loads(other)["event_id"].encode())
        log_of(root).write_bytes(good + bad)
        where = f"{log_of(root)}:2: Line 2: invalid JSON: "
        verify = cli(root, "verify")
        assert verify.code == 1 and verify.out.startswith(where), verify
        assert f"field '{field}' holds a lone surrogate" in verify.out, verify
        for args in (["log", FEATURE], ["log", FEATURE, "--json"], ["status"], [*APPEND]):
            run = cli(root, *args)
            assert run.code == 1, run
            if "--json" in args:  # the first line, then the error as JSON on stdout
                assert run.err == "" and len(run.out.splitlines()) == 2, run
                message = json.loads(run.out.splitlines()[-1])["error"]["message"]
            else:
                message = run.error_line()
            assert str(log_of(root)) in message and "Line 2: invalid JSON: " in message, run
            assert "codec" not in message, run
        assert log_of(root).read_bytes() == good + bad  # nothing appended
        with pytest.raises(StoreError, match="lone surrogate") as err:
            read_events(log_of(root).parent)
        assert err.value.line == 2 and err.value.path == str(log_of(root))


def test_a_control_character_in_a_name_is_refused_at_append_naming_the_field(
    root: Path,
) -> None:
    # A newline in --type made `log` print two events as three lines.
    assert cli(root, *APPEND).code == 0
    before = log_of(root).read_bytes()
    for option, value, field in (
        ("--type", "a\nb", "event_type"),
        ("--aggregate", "x\ry", "aggregate_id"),
        ("--type", "tab\there", "event_type"),
        ("--aggregate", "x\x1b[31m", "aggregate_id"),
        ("--aggregate", "del\x7f", "aggregate_id"),
        ("--type", "c1\x85", "event_type"),
    ):
        args = {"--type": "T", "--aggregate": "a", option: value}
        run = cli(root, "append", FEATURE, *(x for kv in args.items() for x in kv))
        assert run.code == 2, run
        assert f"field '{field}' holds a control character" in run.error_line(), run
    node = cli(root, *APPEND, env_extra={"REPLAYLOG_NODE_ID": "laptop\n7"})
    assert node.code == 2 and "field 'node_id' holds a control character" in node.error_line()
    assert "REPLAYLOG_NODE_ID" in node.error_line(), node
    with EventStore(root, fsync=False) as store:
        with pytest.raises(UsageError, match="field 'event_type' holds a control character"):
            store.append(FEATURE, "a\nb", "x")
        with pytest.raises(UsageError, match="field 'aggregate_id' holds a control character"):
            store.append_many(FEATURE, [{"event_type": "T", "aggregate_id": "x\ry"}])
        with pytest.raises(UsageError, match="field 'aggregate_id' holds a control character"):
            store.append_many(FEATURE, [Event.new("T", "x\x00y")])
    with EventStore(root, fsync=False, node_id="n\r") as store:
        with pytest.raises(UsageError, match="field 'node_id' holds a control character"):
            store.append(FEATURE, "T", "a")
        with pytest.raises(UsageError, match="field 'node_id' holds a control character"):
            store.append_many(FEATURE, [{"event_type": "T", "aggregate_id": "a"}])
    assert log_of(root).read_bytes() == before


def test_a_name_of_printable_but_unusual_text_is_appended_and_read_back(root: Path) -> None:
    # Only control characters are refused: other text that is not "printable" to Python
    # (a no-break space, a joiner, a line separator) is taken, and every reader gives it back.
    names = ["a\u00a0b", "\U0001f469\u200d\U0001f4bb", "e\u0301", "a\u2028b"]
    for name in names:
        assert cli(root, "append", FEATURE, "--type", name, "--aggregate", name).code == 0
    with EventStore(root, fsync=False, node_id="node\u00a0one") as store:
        store.append(FEATURE, "T", "a")
        assert [e.event_type for e in store.read(FEATURE)] == [*names, "T"]
    shown = cli(root, "log", FEATURE, "--json")
    assert shown.code == 0, shown
    objs = [json.loads(line) for line in shown.out.split("\n") if line]
    assert [o["aggregate_id"] for o in objs] == [*names, "a"]
    assert objs[-1]["node_id"] == "node\u00a0one"
    for args in (["log", FEATURE], ["verify"], ["status"]):
        assert cli(root, *args).code == 0


def test_a_payload_python_cannot_read_is_refused_in_the_projects_words(root: Path) -> None:
    # json.loads says "Exceeds the limit (4300 digits) for integer string conversion ...;
    # use sys.set_int_max_str_digits() to increase the limit": advice for Python, not for
    # a user of the command.
    for payload, reason in (
        ('{"n": ' + "7" * 5000 + "}", "an integer of more than 4300 digits"),
        ('{"n": ' + "[" * 5000 + "]" * 5000 + "}", "nested too deeply"),
        ('{"n": NaN}', "NaN is not allowed in the payload"),
        ('{"n": 1', "Expecting ',' delimiter: line 1 column 8"),
    ):
        run = cli(root, *APPEND, "--payload-file", "-", stdin=payload)
        assert run.code == 2, run
        message = run.error_line()
        assert message.startswith("Error: the payload from standard input is not valid JSON: ")
        assert reason in message and "sys." not in message, run
    assert not log_of(root).exists()


@pytest.mark.parametrize("option", ["--payload", "--payload-file"])
def test_a_payload_that_holds_a_key_twice_is_refused(root: Path, option: str) -> None:
    # JSON's parsers keep the last value of a key given twice, and drop the first
    # without a word: the command refuses it instead, naming the key.
    text = '{"a": {"x": 1, "y": [{"z": 1, "z": 2}]}, "b": 2}'
    from_file = option == "--payload-file"
    run = cli(root, *APPEND, option, "-" if from_file else text, stdin=text if from_file else None)
    assert run.code == 2, run
    assert "holds the key 'z' twice in one object" in run.error_line(), run
    assert not log_of(root).exists()
    ok = cli(root, *APPEND, "--payload", '{"a": {"x": 1}, "b": {"x": 2}}')  # other objects
    assert ok.code == 0, ok


@pytest.mark.parametrize(
    "payload",
    [
        {1: "a", "1": "b"},
        {"deep": [{None: 1, "null": 2}]},
        {"x": {True: 1, "true": 2}},
        {"x": {1.5: 1, "1.5": 2}},
    ],
)
def test_a_payload_two_of_whose_keys_json_writes_alike_is_refused(
    root: Path, payload: dict[Any, Any]
) -> None:
    # json.dumps writes the key 1 as "1": beside a key "1", one of the two values would be
    # lost from the line without a word.
    with EventStore(root, fsync=False) as store:
        with pytest.raises(UsageError, match="which JSON writes alike"):
            store.append(FEATURE, "T", "a", payload)
        with pytest.raises(UsageError, match="which JSON writes alike"):
            store.append_many(
                FEATURE, [{"event_type": "T", "aggregate_id": "a", "payload": payload}]
            )
        assert not log_of(root).exists()
        # A key that is not a string alone is written as JSON writes it, as before.
        assert store.append(FEATURE, "T", "a", {1: "a"}).payload == {"1": "a"}


@pytest.mark.parametrize(
    "args",
    [
        [*APPEND, "--payload-file", "/dev/zero"],
        [
            "move",
            FEATURE,
            "WP01",
            "--to",
            "planned",
            "--actor",
            "a",
            "--evidence-file",
            "/dev/zero",
        ],
    ],
)
def test_an_option_file_that_never_ends_is_refused_not_read_without_end(
    root: Path, args: list[str]
) -> None:
    # /dev/zero (or a pipe that never ends) would be read into memory until none is left.
    run = cli(root, *args, timeout=30)
    assert run.code == 2, run
    assert "from /dev/zero is longer than 64 MiB, and a log line holds at most 1 MiB" in (
        run.error_line()
    ), run
    assert not log_of(root).exists()


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda p: p.mkdir(), "it is a folder"),
        (lambda p: None, "No such file or directory"),
        (lambda p: p.write_bytes(b'{"a": "\xff"}'), "not UTF-8 text (byte 8)"),
    ],
    ids=["folder", "missing", "not-utf8"],
)
def test_an_option_file_that_cannot_be_read_says_why_in_words(
    root: Path, tmp_path: Path, make: Any, why: str
) -> None:
    path = tmp_path / "payload.json"
    make(path)
    run = cli(root, *APPEND, "--payload-file", str(path))
    assert run.code == 2, run
    assert run.error_line() == f"Error: cannot read the payload from {path}: {why}", run
    assert not log_of(root).exists()


def nested(depth: int) -> dict[str, object]:
    payload: dict[str, object] = {}
    current = payload
    for _ in range(depth - 1):
        inner: dict[str, object] = {}
        current["x"] = inner
        current = inner
    return payload


def test_a_payload_nested_deeper_than_the_readers_allow_is_refused_at_append(root: Path) -> None:
    with EventStore(root, fsync=False) as store:
        store.append(FEATURE, "T", "a", nested(MAX_NESTING))
        before = log_of(root).read_bytes()
        for depth in (MAX_NESTING + 1, 1030, 5000):
            with pytest.raises(UsageError, match="nested more than 256 levels"):
                store.append(FEATURE, "T", "a", nested(depth))
            with pytest.raises(UsageError, match="nested more than 256 levels"):
                store.append_many(
                    FEATURE,
                    [{"event_type": "T", "aggregate_id": "a", "payload": {"l": [nested(depth)]}}],
                )
        assert log_of(root).read_bytes() == before
        assert len(store.read(FEATURE)) == 1
    deep = '{"x": ' * 299 + "{}" + "}" * 299
    run = cli(root, *APPEND, "--payload-file", "-", stdin=deep)
    assert run.code == 2 and "nested more than" in run.error_line(), run
    # What was accepted, every reader gives back.
    for args in (["log", FEATURE], ["log", FEATURE, "--json"], ["verify"], ["status"]):
        shown = cli(root, *args)
        assert shown.code == 0, shown
    assert log_of(root).read_bytes() == before


# --------------------------------------------------------------------------- smaller ones


def line_of(root: Path, size: int) -> Run:
    """Append one event whose line is ``size`` bytes, newline included."""
    (root / "probe").mkdir(exist_ok=True)
    with EventStore(root / "probe", fsync=False) as probe:
        base = len(probe.append(FEATURE, "T", "a", {"p": ""}).to_line())
    payload = json.dumps({"p": "x" * (size - base)})
    return cli(root, *APPEND, "--json", "--payload-file", "-", stdin=payload)


def test_a_line_of_up_to_1_mib_newline_included_is_written_and_read_back(root: Path) -> None:
    for size in (1_048_560, MAX_LINE_BYTES):
        run = line_of(root, size)
        assert run.code == 0, run
    lines = log_of(root).read_bytes().splitlines(keepends=True)
    assert [len(line) for line in lines] == [1_048_560, MAX_LINE_BYTES]
    too_big = line_of(root, MAX_LINE_BYTES + 1)
    assert too_big.code == 2, too_big
    assert "at most 1048576 bytes" in json.loads(too_big.out)["error"]["message"], too_big
    assert len(log_of(root).read_bytes().splitlines()) == 2
    for args in (["log", FEATURE, "--json"], ["verify"], ["status", "--json"]):
        shown = cli(root, *args)
        assert shown.code == 0, shown
    assert len(EventStore(root).read(FEATURE)) == 2


def test_log_of_a_feature_with_no_log_is_one_error_line_exit_1(root: Path) -> None:
    run = cli(root, "log", "nosuch")
    assert run.code == 1 and run.out == "", run
    assert "feature 'nosuch' has no log" in run.error_line(), run
    as_json = cli(root, "log", "nosuch", "--json")
    assert as_json.code == 1 and json.loads(as_json.out)["error"]["type"] == "StoreError"
    assert not (root / "kitty-specs").exists()


def test_a_root_that_does_not_exist_is_refused_by_every_command_creating_nothing(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "typo"
    commands = [
        list(APPEND),
        ["log", FEATURE],
        ["status"],
        ["replay", "--url", "http://127.0.0.1:9"],
        ["rebuild-index"],
        ["verify"],
        ["repair", FEATURE],
        ["requeue"],
        ["git-setup"],
        ["board"],
    ]
    for args in commands:
        run = cli(missing, *args)
        assert run.code == 2, run
        assert "--root" in run.error_line() and "does not exist" in run.error_line(), run
    assert os.listdir(tmp_path) == []


def test_appends_still_make_the_logs_folder_and_feature_folders_under_an_existing_root(
    root: Path,
) -> None:
    assert cli(root, *APPEND).code == 0
    assert log_of(root).is_file()


@pytest.mark.parametrize("where", ["logs folder", "feature folder"])
def test_a_file_in_place_of_a_folder_on_the_way_to_a_log_is_named(root: Path, where: str) -> None:
    # Made by something else: named as what it is, left as it was, nothing written.
    feature = log_of(root).parent
    blocker = feature.parent if where == "logs folder" else feature
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("notes\n")
    for args in (APPEND, ["log", feature.name]):
        run = cli(root, *args)
        assert run.code == 1, run
        line = run.error_line()
        assert f"{blocker} is not a folder, and a log can only be in a folder there" in line
        assert "Not a directory" not in line, line
    assert blocker.read_text() == "notes\n"
    assert not list(root.rglob(log_of(root).name))  # no log written anywhere


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "-inf", "soon"])
def test_bounds_in_seconds_must_be_finite_and_not_negative(root: Path, value: str) -> None:
    for args in (
        [*APPEND, "--sync", "--url", "http://127.0.0.1:9", "--sync-timeout", value],
        ["replay", "--url", "http://127.0.0.1:9", "--timeout", value],
        ["replay", "--url", "http://127.0.0.1:9", "--backoff-base", value],
        ["rebuild-index", "--wait", value],
    ):
        run = cli(root, *args)
        assert run.code == 2, run
        assert "seconds" in run.error_line(), run
    assert not log_of(root).exists()


def first_stderr_line(proc: subprocess.Popen[str], *, timeout: float) -> str:
    """The first line the process writes on stderr, read byte by byte from the pipe's
    descriptor (so that nothing waits in a buffer that ``communicate`` would not see),
    in a thread (so that a process that never writes one fails the test, not hangs it)."""
    got: list[str] = []
    assert proc.stderr is not None
    fd = proc.stderr.fileno()

    def read() -> None:
        data = b""
        while not data.endswith(b"\n"):
            byte = os.read(fd, 1)
            if not byte:
                break
            data += byte
        got.append(data.decode())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    assert got, f"nothing on stderr within {timeout} s"
    return got[0]


def run_behind_a_held_lock(
    root: Path, path: Path, args: list[str], *, while_held: bytes = b""
) -> tuple[int, str, str]:
    """Run ``replaylog ARGS`` while another process holds the log's exclusive lock (and
    has written ``while_held`` under it); returns its exit code, stdout and stderr, once
    the lock is released after its first line on stderr."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a process stuck in the middle of an append
        if while_held:
            os.write(fd, while_held)
        env = {k: v for k, v in os.environ.items() if not k.startswith("REPLAYLOG_")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "replaylog", "--root", str(root), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            notice = first_stderr_line(proc, timeout=60)
            assert proc.poll() is None, f"{args[0]} did not wait for the lock"
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        out, rest = proc.communicate(timeout=60)
    finally:
        os.close(fd)
    return proc.returncode, out, notice + rest


def test_an_append_waiting_for_a_lock_says_on_stderr_what_it_waits_for(root: Path) -> None:
    assert cli(root, *APPEND).code == 0
    path = log_of(root)
    code, out, err = run_behind_a_held_lock(root, path, APPEND)
    assert code == 0, (out, err)
    assert err.splitlines() == [
        f"replaylog: waiting for the lock on {path}, held by another process ..."
    ], err
    assert len(path.read_bytes().splitlines()) == 2


def test_a_reader_waiting_for_a_lock_says_on_stderr_what_it_waits_for(root: Path) -> None:
    assert cli(root, *APPEND).code == 0
    path = log_of(root)
    line = Event.new("T", "by-hand", lamport_clock=7).to_line()
    code, out, err = run_behind_a_held_lock(root, path, ["status", "--json"], while_held=line)
    assert code == 0, (out, err)
    assert json.loads(out)["totals"]["events"] == 2
    assert err.splitlines() == [
        f"replaylog: waiting for the lock on {path}, held by another process ..."
    ], err


def merge_sides(tmp_path: Path, theirs_line: bytes) -> tuple[Path, Path, Path]:
    shared = Event.new("T", "a", {"n": 1}, lamport_clock=1).to_line()
    base, ours, theirs = (tmp_path / name for name in ("base", "ours", "theirs"))
    base.write_bytes(shared)
    ours.write_bytes(shared)
    theirs.write_bytes(shared + theirs_line)
    return base, ours, theirs


def test_merge_driver_json_says_whether_it_merged_and_what_conflicted(
    tmp_path: Path, root: Path
) -> None:
    new = Event.new("T", "b", {"n": 2}, lamport_clock=2)
    base, ours, theirs = merge_sides(tmp_path, new.to_line())
    merged = cli(root, "merge-driver", str(base), str(ours), str(theirs), "--json")
    assert merged.code == 0, merged
    assert json.loads(merged.out) == {"merged": True, "added": 1, "conflict": None}
    assert ours.read_bytes() == theirs.read_bytes()

    clash = Event.from_dict({**new.to_dict(), "payload": {"n": 3}})
    ours.write_bytes(theirs.read_bytes())
    theirs.write_bytes(theirs.read_bytes().splitlines(keepends=True)[0] + clash.to_line())
    kept = ours.read_bytes()
    conflict = cli(root, "merge-driver", str(base), str(ours), str(theirs), "--json")
    assert conflict.code == 1, conflict
    answer = json.loads(conflict.out)
    assert answer["merged"] is False and answer["added"] == 0
    assert new.event_id in answer["conflict"]["message"], answer
    assert ours.read_bytes() == kept
