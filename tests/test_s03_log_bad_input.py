"""SPEC section 3 (with 4 and 6), bad input, corpus style: every broken log and index a
user can meet, through the real command line.

Each broken log of the corpus is put under a fresh root and ``python -m replaylog`` runs
``log``, ``verify``, ``status``, ``append`` and ``replay`` on it, each as its own process.
Every run must give the documented exit code (1 for data and index errors), one
``Error: ...`` line naming the path and the line (``verify`` lists ``PATH:LINE: message``
on stdout instead), no traceback, a bounded time and a bounded peak memory (measured
with ``wait4`` and capped with ``RLIMIT_AS`` far below the 100 MiB line), and write
nothing: the log keeps its bytes and no file appears beside it. Broken ``queue.db`` files
get the same treatment, and the error names ``replaylog rebuild-index``, which fixes them.

A hypothesis fuzz of the reader closes the file: whatever the bytes, a read returns
events or raises :class:`StoreError` with ``.path`` and ``.line``, never anything else.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from broken_index import foreign_schema, newer_revision, random_bytes, truncated_to_half
from cli_run import Run
from conftest import child_env
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from receiver import Receiver

from replaylog import EVENTS_FILENAME, Event, EventStore, StoreError, read_events, read_events_raw
from replaylog.index import Index
from replaylog.lines.envelope import EVENT_FIELDS
from replaylog.log import scan_log, verify_log

pytestmark = pytest.mark.reliability

MiB = 1 << 20
FEATURE = "feat"
DEAD_URL = "http://127.0.0.1:9"  # the discard port: nothing listens, connections are refused
#: Address space each child may use. The 100 MiB line must fail cleanly inside it; the
#: corpus is small, so the same cap holds for every run.
AS_LIMIT = 400 * MiB
#: Peak resident memory any run may reach: below the size of the 100 MiB line, so a
#: reader that held the whole line could not pass.
RSS_LIMIT = 96 * MiB
LINE_ERROR = re.compile(r"Line (\d+): invalid (JSON|event structure): ")


# --------------------------------------------------------------------------- running the CLI


LAUNCHER = """
import os, resource, sys, time
result, limit, timeout, cmd = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
pid = os.fork()
if pid == 0:
    if limit:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    os.execv(cmd[0], cmd)
start, killed = time.monotonic(), 0
while True:
    done, status, usage = os.wait4(pid, os.WNOHANG)
    if done:
        break
    if time.monotonic() - start > timeout:
        os.kill(pid, 9)
        killed = 1
        done, status, usage = os.wait4(pid, 0)
        break
    time.sleep(0.005)
with open(result, "w") as f:
    code = os.waitstatus_to_exitcode(status)
    f.write(f"{code} {usage.ru_maxrss} {usage.ru_utime + usage.ru_stime} {killed}")
"""


def cli(
    root: Path,
    *args: str,
    cwd: Path,
    timeout: float = 30.0,
    as_limit: int | None = AS_LIMIT,
    env: dict[str, str] | None = None,
) -> Run:
    """Run ``python -m replaylog --root ROOT ARGS`` and measure its time and peak memory.

    The child is reaped with ``wait4`` so that its own peak RSS is known (``RUSAGE_CHILDREN``
    would mix it with every earlier child). Past ``timeout`` it is killed and the run fails.
    """

    # The command is forked by a small launcher, not by this (large) pytest process: a
    # child's peak RSS counts the pages it shared with its parent before exec.
    started = time.monotonic()
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.TemporaryDirectory() as box,
    ):
        result = os.path.join(box, "result")
        proc = subprocess.run(
            [
                sys.executable,
                "-S",
                "-c",
                LAUNCHER,
                result,
                str(as_limit or 0),
                str(timeout),
                sys.executable,
                "-m",
                "replaylog",
                "--root",
                str(root),
                *args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=cwd,
            env=env if env is not None else child_env(),
            timeout=timeout + 30,
        )
        assert proc.returncode == 0, "the launcher failed"
        with open(result) as f:
            code, maxrss, cpu, killed_flag = f.read().split()
        seconds = time.monotonic() - started
        killed = killed_flag == "1"
        out.seek(0)
        err.seek(0)
        run = Run(
            tuple(args),
            int(code),
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            seconds,
            int(maxrss) * 1024,  # KiB on Linux
            float(cpu),
        )
    assert not killed, f"still running after {timeout} s: {run}"
    assert run.peak_rss is not None and run.peak_rss < RSS_LIMIT, f"peak memory: {run}"
    return run


def cli_many(root: Path, commands: list[list[str]], **kwargs: Any) -> list[Run]:
    """Run several commands at once (they only read, or are refused): time is short."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda args: cli(root, *args, **kwargs), commands))


# --------------------------------------------------------------------------- the project


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            digest.update(block)
    return digest.hexdigest()


def files_under(path: Path, *, skip: str | None = None) -> set[str]:
    """Every file and folder below ``path`` (relative), leaving out the folder ``skip``."""
    found = set()
    for item in path.rglob("*"):
        rel = item.relative_to(path).as_posix()
        if skip is None or not (rel == skip or rel.startswith(skip + "/")):
            found.add(rel)
    return found


@pytest.fixture(scope="session")
def index_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty index at the head revision: copied into each root so that no run pays for
    the migrations (the broken log is what each test is about)."""
    path = tmp_path_factory.mktemp("template") / "queue.db"
    Index(str(path)).close()
    return path


@dataclass
class Project:
    root: Path
    cwd: Path  # an empty working directory outside the root: verify prints absolute paths

    @property
    def feature_dir(self) -> Path:
        return self.root / "kitty-specs" / FEATURE

    @property
    def log(self) -> Path:
        return self.feature_dir / EVENTS_FILENAME

    @property
    def index(self) -> Path:
        return self.root / ".replaylog" / "queue.db"


@pytest.fixture
def project(tmp_path: Path, index_template: Path) -> Project:
    root = tmp_path / "proj"
    (root / ".replaylog").mkdir(parents=True)
    (root / ".replaylog" / ".gitignore").write_text("*\n")
    shutil.copy2(index_template, root / ".replaylog" / "queue.db")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    project = Project(root, cwd)
    project.feature_dir.mkdir(parents=True)
    return project


def good_lines() -> list[bytes]:
    """Three valid lines as the store writes them, Lamport values 1, 2, 3."""
    return [
        Event.new("WPCreated", "WP01", {"n": 1, "title": "caf\u00e9"}, lamport_clock=1).to_line(),
        Event.new("WPMoved", "WP02", {"n": 2}, lamport_clock=2).to_line(),
        Event.new("WPDone", "WP03", {"n": 3}, lamport_clock=3, causation_id="x").to_line(),
    ]


def with_field(line: bytes, name: str, value: Any, *, drop: bool = False) -> bytes:
    """``line`` with one field set to ``value`` (or removed), written like the store does."""
    obj = json.loads(line)
    if drop:
        del obj[name]
    else:
        obj[name] = value
    return (json.dumps(obj, sort_keys=True) + "\n").encode()


# --------------------------------------------------------------------------- the log corpus


@dataclass(frozen=True)
class Broken:
    """A broken log: how to make it, and the line and kind of error every read names."""

    make: Callable[[list[bytes]], bytes]
    line: int
    kind: str  # "JSON" or "event structure"
    torn: bool = False  # the bad line is the last one, with no newline: append names repair
    detail: str = ""  # a further fragment the message must hold


def _deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _huge_line(g: list[bytes]) -> bytes:
    return g[0] + b"{" + b"a" * (100 * MiB)  # a 100 MiB torn line after a good one


BROKEN_LOGS: dict[str, Broken] = {
    "invalid json": Broken(lambda g: g[0] + b'{"event_id": nope}\n' + g[2], 2, "JSON"),
    "torn middle line": Broken(lambda g: g[0] + g[1][:45] + b"\n" + g[2], 2, "JSON"),
    "torn tail": Broken(lambda g: g[0] + g[1] + g[2][:50], 3, "JSON", torn=True),
    "binary junk line": Broken(
        lambda g: g[0] + bytes(b for b in range(256) if b != 10) * 16 + b"\n" + g[2], 2, "JSON"
    ),
    "binary file": Broken(
        lambda g: b"\x80" + random.Random(7).randbytes(64 * 1024) + b"\n", 1, "JSON"
    ),
    "invalid utf-8": Broken(
        lambda g: g[0] + g[1].replace(b'"WP02"', b'"WP\xff\xfe"') + g[2],
        2,
        "JSON",
        detail="(not UTF-8 text (byte ",
    ),
    "line of nul bytes": Broken(lambda g: g[0] + b"\x00" * 64 + b"\n" + g[2], 2, "JSON"),
    "nul byte inside a string": Broken(
        lambda g: g[0] + g[1].replace(b'"WP02"', b'"WP\x0002"') + g[2], 2, "JSON"
    ),
    "utf-8 bom": Broken(lambda g: b"\xef\xbb\xbf" + g[0] + g[1], 1, "JSON"),
    "utf-16 file": Broken(lambda g: b"".join(g).decode().encode("utf-16") + b"\n", 1, "JSON"),
    # Old Mac line ends: no "\n" at all, so the whole file is one torn line.
    "cr-only line ends": Broken(
        lambda g: b"".join(x[:-1] + b"\r" for x in g), 1, "JSON", torn=True
    ),
    "100,000 open brackets": Broken(lambda g: g[0] + b"[" * 100_000 + b"\n" + g[2], 2, "JSON"),
    "payload nested 100,000 deep": Broken(
        lambda g: g[0] + g[1].replace(b'"n": 2', b'"n": ' + _deep(100_000)) + g[2],
        2,
        "JSON",
        detail="(objects and arrays nested too deeply to read",
    ),
    "nan in a payload": Broken(
        lambda g: g[0] + g[1].replace(b'"n": 2', b'"n": NaN'),
        2,
        "JSON",
        detail="(NaN is not a JSON number)",
    ),
    # Python refuses to read an integer of more than 4300 digits: said without Python.
    "a 5000-digit integer": Broken(
        lambda g: g[0] + g[1].replace(b'"n": 2', b'"n": ' + b"7" * 5000) + g[2],
        2,
        "JSON",
        detail="(an integer of more than 4300 digits",
    ),
    # A lone surrogate (half of a UTF-16 pair) is no text: json reads it, nothing can
    # print or encode it. Refused as JSON an event may not hold, like NaN.
    "a lone surrogate in a payload": Broken(
        lambda g: g[0] + g[1].replace(b'"n": 2', b'"n": "\\ud800"') + g[2],
        2,
        "JSON",
        detail="(field 'payload.n' holds a lone surrogate",
    ),
    "a lone surrogate in event_type": Broken(
        lambda g: g[0] + g[1].replace(b'"WPMoved"', b'"WP\\udc00Moved"') + g[2],
        2,
        "JSON",
        detail="(field 'event_type' holds a lone surrogate",
    ),
    # A blank last line without its newline is a torn tail that is not JSON (SPEC 3):
    # verify and the readers say so, as append and repair do.
    "a torn tail of spaces": Broken(
        lambda g: g[0] + g[1] + b"   ", 3, "JSON", torn=True, detail="only white space"
    ),
    # Names are identifiers, shown one per line: a control character would forge lines.
    "a newline in event_type": Broken(
        lambda g: g[0] + with_field(g[1], "event_type", "a\nb") + g[2],
        2,
        "event structure",
        detail="field 'event_type' holds a control character",
    ),
    "a carriage return in aggregate_id": Broken(
        lambda g: g[0] + with_field(g[1], "aggregate_id", "x\ry") + g[2],
        2,
        "event structure",
        detail="field 'aggregate_id' holds a control character",
    ),
    "an escape sequence in node_id": Broken(
        lambda g: g[0] + g[1] + with_field(g[2], "node_id", "n\x1b[2J"),
        3,
        "event structure",
        detail="field 'node_id' holds a control character",
    ),
    "two objects on one line": Broken(lambda g: g[0][:-1] + g[1] + g[2], 1, "JSON"),
    "a 2 MiB line in the middle": Broken(
        lambda g: g[0] + b'{"a": "' + b"x" * (2 * MiB) + b'"}\n' + g[2],
        2,
        "JSON",
        detail="1 MiB limit",
    ),
    "a 100 MiB line": Broken(_huge_line, 2, "JSON", torn=True, detail="1 MiB limit"),
    "a json array line": Broken(lambda g: g[0] + b"[1, 2]\n" + g[2], 2, "event structure"),
    "a json null line": Broken(lambda g: g[0] + b"null\n" + g[2], 2, "event structure"),
    "same id, different content": Broken(
        lambda g: g[0] + g[1] + with_field(g[0], "payload", {"n": 99}),
        3,
        "event structure",
        detail="line 1",
    ),
    "payload missing": Broken(
        lambda g: g[0] + with_field(g[1], "payload", None, drop=True) + g[2],
        2,
        "event structure",
        detail="missing field 'payload'",
    ),
    # Valid JSON, but wider than the index's 64-bit integers: refused, not a crash.
    "a lamport_clock of 2**63": Broken(
        lambda g: g[0] + with_field(g[1], "lamport_clock", 2**63) + g[2],
        2,
        "event structure",
        detail="at most 2**63-1",
    ),
}

READS = [["log", FEATURE], ["verify"], ["status"], ["replay", "--url", DEAD_URL]]
APPEND = ["append", FEATURE, "--type", "t", "--aggregate", "a"]


def check_refused_everywhere(project: Project, case: Broken, *, timeout: float = 30.0) -> None:
    """Run the five commands on the broken log at once and check each one's promises."""
    log = str(project.log)
    before = sha256(project.log)
    files_before = files_under(project.root, skip=".replaylog")

    runs = cli_many(project.root, [*READS, APPEND], cwd=project.cwd, timeout=timeout)

    expected = f"Line {case.line}: invalid {case.kind}: "
    for run in runs:
        assert run.code == 1, run
        if run.args[0] == "verify":
            # verify reports on stdout, one ``PATH:LINE: message`` per problem.
            assert "Traceback" not in run.out + run.err and run.err == "", run
            problems = run.out.splitlines()
            assert problems and all(p.startswith(f"{log}:") for p in problems), run
            assert problems[0].startswith(f"{log}:{case.line}: {expected}"), run
            message = problems[0]
        elif run.args[0] in ("status", "replay"):
            # Over every log (SPEC 10): each bad one listed as on verify, then one error.
            assert run.error_line().startswith("Error: 1 log cannot be read: "), run
            listed = [p for p in run.out.splitlines() if p.startswith(f"{log}:")]
            assert listed and listed[0].startswith(f"{log}:{case.line}: {expected}"), run
            message = listed[0]
        elif run.args[0] == "append" and case.torn:
            # Refused by the reader (naming the line) or by the writer's look at the tail:
            # either way the message names the command that fixes it.
            message = run.error_line()
            assert message.startswith(f"Error: {log}: "), run
            assert "replaylog repair" in message, run
            continue
        else:
            message = run.error_line()
            assert message.startswith(f"Error: {log}: {expected}"), run
        assert case.detail in message, run
        assert message.isprintable(), run
        assert "sys." not in message and "codec" not in message, run  # no Python internals

    assert sha256(project.log) == before, "a refused command changed the log"
    assert files_under(project.root, skip=".replaylog") == files_before


@pytest.mark.parametrize("name", list(BROKEN_LOGS))
def test_every_command_refuses_a_broken_log_cleanly_and_writes_nothing(
    project: Project, name: str
) -> None:
    case = BROKEN_LOGS[name]
    project.log.write_bytes(case.make(good_lines()))
    check_refused_everywhere(project, case, timeout=60.0)


def test_a_1_gib_sparse_line_fails_cleanly_in_bounded_time_and_memory(
    project: Project, big: bool
) -> None:
    if not big:
        pytest.skip("the 1 GiB line runs under --big (the 100 MiB line always runs)")
    first = good_lines()[0]
    with open(project.log, "wb") as f:
        f.write(first)
        f.truncate(len(first) + 1024 * MiB)  # a hole of NUL bytes: one 1 GiB line, no newline
    check_refused_everywhere(
        project, Broken(lambda g: b"", 2, "JSON", torn=True, detail="1 MiB limit"), timeout=60.0
    )


# --------------------------------------------------------------------------- fields and types

JSON_VALUES: dict[str, Any] = {
    "string": "x",
    "integer": 7,
    "float": 1.0,
    "boolean": True,
    "null": None,
    "array": [],
    "object": {},
}
ALLOWED = {name: {"string"} for name in EVENT_FIELDS}
ALLOWED.update(
    payload={"object"},
    lamport_clock={"integer"},
    causation_id={"string", "null"},
    correlation_id={"string", "null"},
)
WRONG_TYPES = [
    (field, kind) for field in EVENT_FIELDS for kind in JSON_VALUES if kind not in ALLOWED[field]
]
ENVELOPE_REQUIRED = ("event_id", "event_type", "payload", "timestamp")


def per_log_commands(name: str) -> list[list[str]]:
    """The commands that read one feature's log, each by its own path through the code."""
    return [
        ["log", name],
        ["append", name, "--type", "t", "--aggregate", "a"],
        ["status", name],
        ["replay", "--feature", name, "--url", DEAD_URL],
    ]


@pytest.mark.parametrize("field", EVENT_FIELDS)
def test_each_field_of_each_wrong_type_or_missing_is_refused_naming_field_and_line(
    tmp_path: Path, index_template: Path, field: str, big: bool
) -> None:
    """Nine fields, each of every JSON type it may not have, and each that an envelope
    must hold missing: 56 logs.

    One ``verify`` checks all of a field's logs; four of them also go through ``log``,
    ``append``, ``status`` and ``replay``, one each, so that every command meets every
    field (under ``--big`` every log goes through all four).
    """
    g = good_lines()
    kinds = [kind for f, kind in WRONG_TYPES if f == field]
    if field in ENVELOPE_REQUIRED:  # SPEC 10: an envelope written elsewhere may lack the rest
        kinds.append("missing")
    root = tmp_path / "proj"
    (root / ".replaylog").mkdir(parents=True)
    shutil.copy2(index_template, root / ".replaylog" / "queue.db")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    logs = {}
    commands = [["verify", "--json"]]
    for k, kind in enumerate(kinds):
        bad = (
            with_field(g[1], field, None, drop=True)
            if kind == "missing"
            else with_field(g[1], field, JSON_VALUES[kind])
        )
        name = f"{field.replace('_', '-')}-{kind}"
        (root / "kitty-specs" / name).mkdir(parents=True)
        logs[name] = root / "kitty-specs" / name / EVENTS_FILENAME
        logs[name].write_bytes(g[0] + bad + g[2])
        if big:
            commands += per_log_commands(name)
        elif k < 4:  # each command meets each field: the first four logs, one command each
            commands.append(per_log_commands(name)[(EVENT_FIELDS.index(field) + k) % 4])
    hashes = {name: sha256(path) for name, path in logs.items()}

    verify, *per_log = cli_many(root, commands, cwd=cwd)

    assert verify.code == 1, verify
    problems = {p["path"]: p for p in json.loads(verify.out)["problems"]}
    for path in logs.values():
        problem = problems[str(path)]
        assert problem["line"] == 2 and problem["level"] == "error", problem
        assert problem["message"].startswith("Line 2: invalid event structure: ")
        assert f"'{field}'" in problem["message"], problem
    for run in per_log:
        name = run.args[run.args.index("--feature") + 1] if "--feature" in run.args else run.args[1]
        # An append first catches up with every log of the project (for the clock), so
        # it may name another of this field's broken logs.
        named = logs.values() if run.args[0] == "append" else [logs[name]]
        assert run.code == 1, run
        message = run.error_line()
        assert any(
            message.startswith(f"Error: {path}: Line 2: invalid event structure: ")
            for path in named
        ), run
        assert f"'{field}'" in message, run
    assert {name: sha256(path) for name, path in logs.items()} == hashes
    assert all(os.listdir(path.parent) == [EVENTS_FILENAME] for path in logs.values())


# --------------------------------------------------------------------------- unusual but readable


def crlf(g: list[bytes]) -> bytes:
    return b"".join(g).replace(b"\n", b"\r\n")


READABLE: dict[str, tuple[Callable[[list[bytes]], bytes], int]] = {
    # JSON allows "\r" as white space around a value: a CRLF log reads as it is.
    "crlf line ends": (crlf, 3),
    "extra keys": (lambda g: g[0] + with_field(g[1], "zz_extra", {"kept": [1, None]}) + g[2], 3),
    "identical duplicate line": (lambda g: g[0] + g[1] + g[2] + g[0], 3),
    "blank lines and spaces": (lambda g: b"\n \t\n" + g[0] + b"\r\n" + b"  " + g[1] + g[2], 3),
    "torn tail that is valid json": (lambda g: g[0] + g[1] + g[2][:-1], 3),
}


@pytest.mark.parametrize("name", list(READABLE))
def test_unusual_but_valid_logs_read_everywhere_and_are_never_rewritten(
    project: Project, name: str
) -> None:
    make, count = READABLE[name]
    data = make(good_lines())
    project.log.write_bytes(data)
    expected = [json.loads(line) for line in data.splitlines() if line.strip()][:count]

    log, verify, status = cli_many(
        project.root,
        [["log", FEATURE, "--json"], ["verify", FEATURE], ["status", "--json"]],
        cwd=project.cwd,
    )
    assert log.code == 0 and [json.loads(x) for x in log.out.splitlines()] == expected, log
    assert verify.code == 0 and "Traceback" not in verify.err, verify
    assert status.code == 0, status
    assert json.loads(status.out)["features"][FEATURE]["events"] == count
    assert project.log.read_bytes() == data, "reading rewrote the log"

    append = cli(project.root, *APPEND, cwd=project.cwd)
    assert append.code == 0, append
    after = project.log.read_bytes()
    # The old bytes stay as they are; only a torn (valid) tail gets its newline first.
    assert after.startswith(data) and after.count(b"\n") == data.count(b"\n") + 1 + (
        not data.endswith(b"\n")
    )
    reread = cli(project.root, "log", FEATURE, "--json", cwd=project.cwd)
    assert reread.code == 0 and len(reread.out.splitlines()) == count + 1, reread
    assert os.listdir(project.feature_dir) == [EVENTS_FILENAME]


def test_crlf_lines_extra_keys_and_duplicates_replay_as_they_are_in_the_log(
    project: Project,
) -> None:
    g = good_lines()
    fourth = Event.new("Late", "WP04", {"n": 4}, lamport_clock=4).to_line()
    data = (
        crlf([g[0], with_field(g[1], "zz_extra", {"kept": [1, None]})])
        + b"\n"
        + g[2]
        + g[0]  # an identical duplicate: sent once
        + fourth[:-1]  # a torn tail that is valid JSON: an event like the others
    )
    project.log.write_bytes(data)
    with Receiver() as receiver:
        replay = cli(project.root, "replay", "--url", receiver.url, "--json", cwd=project.cwd)
    assert replay.code == 0, replay
    assert json.loads(replay.out) == {"accepted": 4, "rejected": 0, "pending": 0, "batches": 1}
    sent = {obj["event_id"]: obj for obj in map(json.loads, [*g, fourth])}
    sent[json.loads(g[1])["event_id"]]["zz_extra"] = {"kept": [1, None]}
    assert receiver.events == sent
    assert receiver.duplicates == 0
    assert project.log.read_bytes() == data


# --------------------------------------------------------------------------- broken queue.db


BROKEN_INDEXES: dict[str, Callable[[Path], None]] = {
    "random bytes": random_bytes,
    "truncated to half": truncated_to_half,
    "foreign sqlite schema": foreign_schema,
    "newer alembic revision": newer_revision,
}
EVENTS_IN_INDEX_TESTS = 200


@pytest.fixture
def indexed(tmp_path: Path) -> Project:
    """A project of 200 events, indexed: the index spans enough pages to cut in half."""
    root = tmp_path / "proj"
    root.mkdir()
    with EventStore(root, fsync=False) as store:
        store.append_many(
            FEATURE,
            [{"event_type": "T", "aggregate_id": "x" * 150}] * EVENTS_IN_INDEX_TESTS,
        )
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    project = Project(root, cwd)
    assert sorted(os.listdir(project.index.parent)) == [
        ".gitignore",
        "queue.db",
        "queue.db-clock",
        "replay.lock",  # made with the index, so that a failed rebuild leaves no new file
    ]
    return project


@pytest.mark.parametrize("name", list(BROKEN_INDEXES))
def test_a_broken_index_names_rebuild_index_writes_nothing_and_rebuild_fixes_it(
    indexed: Project, name: str
) -> None:
    project = indexed
    BROKEN_INDEXES[name](project.index)
    log_before = sha256(project.log)
    index_before = sha256(project.index)
    files_before = files_under(project.root, skip=".replaylog")

    log, verify, status, append, replay = cli_many(
        project.root, [["log", FEATURE], ["verify"], ["status"], APPEND, READS[3]], cwd=project.cwd
    )
    # Reading and checking logs need no index.
    assert log.code == 0 and len(log.out.splitlines()) == EVENTS_IN_INDEX_TESTS, log
    assert verify.code == 0, verify
    for run in (status, append, replay):
        assert run.code == 1, run
        message = run.error_line()
        assert message.startswith(f"Error: {project.index}"), run
        assert "replaylog rebuild-index" in message, run
    assert sha256(project.log) == log_before, "an append went through with a broken index"
    assert files_under(project.root, skip=".replaylog") == files_before
    assert sha256(project.index) == index_before, "a refused command changed the index file"

    rebuilt = cli(project.root, "rebuild-index", "--json", cwd=project.cwd)
    assert rebuilt.code == 0, rebuilt
    assert json.loads(rebuilt.out) == {"features": 1, "events": EVENTS_IN_INDEX_TESTS}
    assert project.index.stat().st_mode & 0o777 == 0o600
    status = cli(project.root, "status", "--json", cwd=project.cwd)
    assert status.code == 0, status
    assert json.loads(status.out)["totals"] == {
        "events": EVENTS_IN_INDEX_TESTS,
        "pending": EVENTS_IN_INDEX_TESTS,
        "delivered": 0,
        "failed": 0,
    }


def test_an_empty_index_file_is_a_new_index_filled_from_the_logs(indexed: Project) -> None:
    project = indexed
    project.index.write_bytes(b"")
    status = cli(project.root, "status", "--json", cwd=project.cwd)
    assert status.code == 0, status
    report = json.loads(status.out)
    assert report["totals"]["events"] == EVENTS_IN_INDEX_TESTS
    assert report["lamport_clock"] == EVENTS_IN_INDEX_TESTS  # the clock comes back from the log
    append = cli(project.root, *APPEND, "--json", cwd=project.cwd)
    assert append.code == 0 and json.loads(append.out)["lamport_clock"] == 201, append
    assert project.index.stat().st_mode & 0o777 == 0o600


# --------------------------------------------------------------------------- fuzzing the reader


def base_log() -> bytes:
    """A valid log with some of everything the reader handles: extra keys, wide integers,
    unicode, a blank line, a CRLF line, ids and an identical duplicate."""
    events = [
        Event.new("A", "WP01", {"n": 1}, lamport_clock=1),
        Event.new("B", "WP02", {"s": "\u00e9\u2028\n", "f": -0.5, "wide": 2**70}, lamport_clock=2),
        Event.new("C", "WP03", {"deep": [[{"k": [None, True]}]]}, lamport_clock=3,
                  causation_id="c", correlation_id="r", extra={"zz": [1, {"y": "z"}]}),
        Event.new("D", "WP04", lamport_clock=4),
    ]  # fmt: skip
    lines = [e.to_line() for e in events]
    return lines[0] + b"\n" + lines[1][:-1] + b"\r\n" + lines[2] + lines[3] + lines[0]


POSITION = st.integers(0, 1 << 16)
MUTATION = st.one_of(
    st.tuples(st.just("flip"), POSITION, st.integers(1, 255)),
    st.tuples(st.just("truncate"), POSITION),
    st.tuples(st.just("newline"), POSITION),
    st.tuples(st.just("duplicate line"), POSITION),
    st.tuples(st.just("insert"), POSITION, st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), POSITION, st.integers(1, 40)),
)
#: Changes to whole lines, which mostly leave a valid log: so that the reader's results
#: (not only its errors) are compared often.
LINE_MUTATION = st.one_of(
    st.tuples(st.just("duplicate line"), POSITION),
    st.tuples(st.just("swap lines"), POSITION, POSITION),
    st.tuples(st.just("blank line"), POSITION, st.sampled_from([b"\n", b" \t\n", b"\r\n"])),
    st.tuples(st.just("crlf"), POSITION),
    st.tuples(st.just("cut at line"), POSITION),
)


def mutate(data: bytes, mutations: list[tuple[Any, ...]]) -> bytes:
    for op, pos, *rest in mutations:
        at = pos % (len(data) + 1)
        if op == "flip" and data:
            at %= len(data)
            data = data[:at] + bytes([data[at] ^ rest[0]]) + data[at + 1 :]
        elif op == "truncate":
            data = data[:at]
        elif op == "newline":
            data = data[:at] + b"\n" + data[at:]
        elif op == "duplicate line":
            lines = data.splitlines(keepends=True)
            if lines:
                k = pos % len(lines)
                lines.insert(k, lines[k])
                data = b"".join(lines)
        elif op == "insert":
            data = data[:at] + rest[0] + data[at:]
        elif op == "delete":
            data = data[:at] + data[at + rest[0] :]
        else:
            lines = data.splitlines(keepends=True)
            if not lines:
                continue
            k = pos % len(lines)
            if op == "swap lines":
                j = rest[0] % len(lines)
                lines[k], lines[j] = lines[j], lines[k]
            elif op == "blank line":
                lines.insert(k, rest[0])
            elif op == "crlf" and lines[k].endswith(b"\n"):
                lines[k] = lines[k][:-1].rstrip(b"\r") + b"\r\n"
            elif op == "cut at line":
                del lines[k:]
            data = b"".join(lines)
    return data


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON text: unlike ``==``, ``1`` is not ``1.0`` nor ``true``."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def outcome(path: Path, read: Callable[[], Any]) -> tuple[str, Any]:
    """``("ok", result)`` or ``("error", line)``; anything but StoreError escapes and fails."""
    try:
        return "ok", read()
    except StoreError as err:
        assert err.path == str(path), (err.path, str(err))
        assert isinstance(err.line, int) and err.line >= 1, str(err)
        match = LINE_ERROR.match(str(err))
        assert match and int(match[1]) == err.line, str(err)
        return "error", err.line


def check_reader(feature: Path) -> str:
    path = feature / EVENTS_FILENAME
    raw = outcome(path, lambda: read_events_raw(feature))
    events = outcome(path, lambda: read_events(feature))
    scanned = outcome(path, lambda: [line.obj for line in scan_log(str(path))])
    problems = verify_log(str(path))  # never raises: it returns what it found
    assert raw[0] == events[0] == scanned[0], (raw, events, scanned)
    errors = [p for p in problems if p.level == "error"]
    assert all(p.path == str(path) for p in problems)
    if raw[0] == "error":
        assert raw[1] == events[1] == scanned[1]
        assert errors and errors[0].line == raw[1], problems
    else:
        assert not errors, problems
        assert same_json(raw[1], scanned[1])
        assert same_json([e.to_dict() for e in events[1]], raw[1])
    return raw[0]


def test_fuzzed_logs_read_as_events_or_store_error_naming_path_and_line(
    tmp_path: Path, big: bool
) -> None:
    examples = 2000 if big else 200
    base = base_log()
    ids = itertools.count()
    seen: dict[str, int] = {"ok": 0, "error": 0}

    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(
        data=st.one_of(
            st.binary(max_size=2048),
            st.lists(MUTATION, min_size=1, max_size=5).map(lambda m: mutate(base, m)),
            st.lists(LINE_MUTATION, min_size=1, max_size=5).map(lambda m: mutate(base, m)),
        )
    )
    def check(data: bytes) -> None:
        feature = tmp_path / f"f{next(ids)}"
        feature.mkdir()
        (feature / EVENTS_FILENAME).write_bytes(data)
        result = check_reader(feature)
        seen[result] += 1
        event(f"read: {result}")  # shown by --hypothesis-show-statistics
        shutil.rmtree(feature)

    check()
    assert check_reader_of(base, tmp_path) == "ok"  # the unmutated log is valid
    # Both outcomes were met: the fuzz reached past the first byte of the reader.
    assert seen["ok"] > 0 and seen["error"] > 0, seen


def check_reader_of(data: bytes, tmp_path: Path) -> str:
    feature = tmp_path / "base"
    feature.mkdir()
    (feature / EVENTS_FILENAME).write_bytes(data)
    return check_reader(feature)
