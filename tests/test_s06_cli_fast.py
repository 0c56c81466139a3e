"""SPEC sections 6 and 8: ``replaylog append`` without click agrees with the click command.

:func:`replaylog.fastcli.main` (the console script and ``python -m replaylog``) parses
the plain forms of ``append`` itself and hands every other command line to the click
CLI. These tests hold the two together: the option tables against the click objects,
the parameters each path gives for many command lines, and whole runs of both paths,
in real processes on real files, compared output for output and file for file.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from conftest import child_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import replaylog.cli
from replaylog import fastcli
from replaylog.index.catchup import _sha
from replaylog.lines.ids import builtin_sha256

pytestmark = pytest.mark.usefixtures("clean_env")

FAST = [sys.executable, "-m", "replaylog"]
CLICK = [sys.executable, "-c", "import sys; from replaylog.cli import main; main(sys.argv[1:])"]
ULID = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}")
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
TORN_STAMP = re.compile(r"\d{8}T\d{6}[0-9.]*Z?")


# --------------------------------------------------------------------------- the tables


def _params(command: click.Command) -> dict[str, click.Parameter]:
    """A command's options by their one name (and its arguments by parameter name)."""
    params: dict[str, click.Parameter] = {}
    for param in command.params:
        if isinstance(param, click.Option) and not param.expose_value:
            continue  # --version: not a value; the fast path leaves it to click
        names = [*param.opts, *param.secondary_opts]
        if isinstance(param, click.Option):
            assert len(names) == 1, f"{names}: give the fast path each name, or none"
        params[names[0] if isinstance(param, click.Option) else str(param.name)] = param
    return params


def _click_default(command: click.Command, param: click.Parameter) -> Any:
    ctx = click.Context(command)
    default = param.get_default(ctx)
    if not isinstance(default, (str, int, float)):  # None, or click's marker for no default
        return None
    return param.type_cast_value(ctx, default)


def _assert_same(command: click.Command, name: str, param: click.Parameter, opt: Any) -> None:
    assert isinstance(param, click.Option), name
    assert (param.name, param.is_flag, param.envvar, param.required) == (
        opt.name,
        opt.is_flag,
        opt.envvar,
        opt.required,
    ), name
    assert (param.multiple, param.nargs, param.count, param.is_eager) == (False, 1, False, False)
    assert param.callback is None, name
    assert _click_default(command, param) == opt.default, name
    if name in fastcli.CLICK_ONLY:
        return
    if opt.path is None:
        assert param.is_flag or param.type is click.STRING, name
    else:
        assert isinstance(param.type, click.Path), name
        info = param.type.to_info_dict()
        assert param.type.type is None, name  # a str, as given
        for field in fastcli.PathCheck._fields:
            expected = getattr(param.type, field)
            assert getattr(opt.path, field) == expected, (name, field, info)


def test_group_options_are_the_click_groups() -> None:
    params = _params(replaylog.cli.cli)
    assert set(params) == set(fastcli.GROUP_OPTIONS)
    for name, opt in fastcli.GROUP_OPTIONS.items():
        _assert_same(replaylog.cli.cli, name, params[name], opt)


def test_append_options_are_the_click_commands() -> None:
    command = replaylog.cli.cli.commands["append"]
    params = _params(command)
    assert set(params) == {*fastcli.APPEND_OPTIONS, fastcli.APPEND_ARGUMENT}
    for name, opt in fastcli.APPEND_OPTIONS.items():
        _assert_same(command, name, params[name], opt)
    argument = params[fastcli.APPEND_ARGUMENT]
    assert isinstance(argument, click.Argument)
    assert (argument.required, argument.nargs, argument.type) == (True, 1, click.STRING)
    assert fastcli.CLICK_ONLY <= set(fastcli.APPEND_OPTIONS)


def test_append_command_takes_every_parameter_of_the_click_command() -> None:
    names = list(inspect.signature(fastcli.append_command).parameters)
    command = replaylog.cli.cli.commands["append"]
    assert names == ["ctx", *(p.name for p in command.params)]
    assert set(names[1:]) == {o.name for o in fastcli.APPEND_OPTIONS.values()} | {"feature"}


def test_the_console_script_and_python_dash_m_start_the_fast_path() -> None:
    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts["replaylog"] == "replaylog.fastcli:main"
    main_module = importlib.util.find_spec("replaylog.__main__")
    assert main_module is not None and main_module.origin is not None
    assert "from .fastcli import main" in Path(main_module.origin).read_text()


# --------------------------------------------------------------------------- parsing


def _click_call(args: list[str]) -> dict[str, Any] | None:
    """What the click CLI passes to append_command for ``args``, or None if it does not
    call it (an error, help, another command)."""
    seen: dict[str, Any] = {}

    def capture(ctx: fastcli.CliContext, /, **values: Any) -> None:
        names = list(inspect.signature(fastcli.append_command).parameters)[1:]
        assert sorted(values) == sorted(names)  # every parameter, by its name
        seen.update(vars(ctx), **values)

    original = replaylog.cli.append_command
    replaylog.cli.append_command = capture
    try:
        with CliRunner().isolation():
            replaylog.cli.cli.main(args=args, prog_name="replaylog", standalone_mode=False)
    except (click.ClickException, click.exceptions.Abort, click.exceptions.Exit, SystemExit):
        pass  # click refused the command line, or ran another command
    finally:
        replaylog.cli.append_command = original
    return seen or None


def _fast_call(args: list[str]) -> dict[str, Any] | None:
    parsed = fastcli.parse_append(args, os.environ)
    if parsed is None:
        return None
    group, values = parsed
    return {**vars(fastcli.CliContext(**group)), **values}


def _check_parse(args: list[str], *, fast: bool | None = None) -> None:
    """The fast path takes ``args`` only as click does; ``fast``: whether it must take them."""
    by_fast = _fast_call(args)
    if fast is not None:
        assert (by_fast is not None) == fast, args
    if by_fast is not None:
        assert by_fast == _click_call(args), args


@pytest.fixture
def proj(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "a-file").write_text("x")
    (root / "a-dir").mkdir()
    monkeypatch.chdir(root)
    return root


TAKEN = [
    ["append", "feat", "--type", "T", "--aggregate", "A"],
    ["append", "--type", "T", "feat", "--aggregate", "A", "--json"],
    ["append", "--type=T", "--aggregate=A", "feat", '--payload={"a": 1}'],
    ["append", "feat", "--type", "", "--aggregate", "A"],
    ["append", "feat", "--type", "--json", "--aggregate", "--"],
    ["append", "-", "--type", "T", "--aggregate", "A"],
    ["append", "feat", "--type", "T", "--aggregate", "A", "--payload-file", "-"],
    ["append", "feat", "--type", "T", "--aggregate", "A", "--causation-id", "c"],
    ["append", "feat", "--type", "T", "--aggregate", "A", "--correlation-id", "k"],
    ["append", "feat", "--type", "T", "--aggregate", "A", "--token-env", "X"],
    ["append", "feat", "--type", "T", "--aggregate", "A", "--allow-insecure-http"],
    ["--logs-dir", "logs", "append", "feat", "--type", "T", "--aggregate", "A"],
    ["--logs-dir=", "append", "feat", "--type", "T", "--aggregate", "A"],
    ["--index", "i.db", "append", "feat", "--type", "T", "--aggregate", "A"],
    ["--index", "a-file", "append", "feat", "--type", "T", "--aggregate", "A"],
    ["--root", "a-dir", "append", "feat", "--type", "T", "--aggregate", "A"],
    ["--root=.", "--index=x", "append", "feat", "--type", "T", "--aggregate", "A"],
]

LEFT_TO_CLICK = [
    [],
    ["--help"],
    ["-h"],
    ["--version"],
    ["append"],
    ["append", "--help"],
    ["append", "feat", "--type", "T", "--aggregate", "A", "-h"],
    ["status"],
    ["log", "feat"],
    ["appen", "feat", "--type", "T", "--aggregate", "A"],
    ["append", "feat", "--aggregate", "A"],
    ["append", "feat", "--type", "T"],
    ["append", "--type", "T", "--aggregate", "A"],
    ["append", "f", "g", "--type", "T", "--aggregate", "A"],
    ["append", "feat", "--type", "T", "--aggregate"],
    ["append", "feat", "--type", "T", "--type", "U", "--aggregate", "A"],
    ["append", "feat", "--type", "T", "--aggregate", "A", "--json", "--json"],
    ["append", "feat", "--type", "T", "--aggregate", "A", "--json=1"],
    ["append", "feat", "--type", "T", "--aggregate", "A", "--nope"],
    ["append", "feat", "--type", "T", "--aggregate", "A", "--", "x"],
    ["append", "--type", "T", "--aggregate", "A", "--", "feat"],
    ["append", "feat", "--type", "T", "--aggregate", "A", "--sync"],
    ["append", "feat", "--type", "T", "--aggregate", "A", "--url", "http://x"],
    ["append", "feat", "--type", "T", "--aggregate", "A", "--sync-timeout", "1"],
    ["append", "feat", "-t", "T", "--aggregate", "A"],
    ["append", "feat", "--typ", "T", "--aggregate", "A"],
    ["--root", "nope", "append", "feat", "--type", "T", "--aggregate", "A"],
    ["--root", "a-file", "append", "feat", "--type", "T", "--aggregate", "A"],
    ["--root", "", "append", "feat", "--type", "T", "--aggregate", "A"],
    ["--index", "a-dir", "append", "feat", "--type", "T", "--aggregate", "A"],
    ["--root", ".", "--root", ".", "append", "feat", "--type", "T", "--aggregate", "A"],
    ["--json", "append", "feat", "--type", "T", "--aggregate", "A"],
    ["--", "append", "feat", "--type", "T", "--aggregate", "A"],
    ["--root"],
]


@pytest.mark.parametrize("args", TAKEN, ids=" ".join)
def test_the_fast_path_takes_plain_appends_with_clicks_values(args: list[str], proj: Path) -> None:
    _check_parse(args, fast=True)


@pytest.mark.parametrize("args", LEFT_TO_CLICK, ids=" ".join)
def test_the_fast_path_leaves_everything_else_to_click(args: list[str], proj: Path) -> None:
    _check_parse(args, fast=False)


def test_environment_variables_give_the_values_click_gives(
    proj: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = ["append", "feat", "--type", "T", "--aggregate", "A"]
    monkeypatch.setenv("REPLAYLOG_ROOT", "a-dir")
    monkeypatch.setenv("REPLAYLOG_LOGS_DIR", "logs")
    monkeypatch.setenv("REPLAYLOG_INDEX", "x.db")
    monkeypatch.setenv("REPLAYLOG_URL", "http://example.invalid")
    _check_parse(plain, fast=True)
    _check_parse(["--root", ".", "--logs-dir", "l", *plain], fast=True)
    for name in ("REPLAYLOG_ROOT", "REPLAYLOG_LOGS_DIR", "REPLAYLOG_INDEX"):
        monkeypatch.setenv(name, "")  # click takes an empty variable as unset
        _check_parse(plain, fast=True)
    monkeypatch.setenv("REPLAYLOG_ROOT", "nope")
    _check_parse(plain, fast=False)
    monkeypatch.setenv("REPLAYLOG_ROOT", "a-file")
    _check_parse(plain, fast=False)
    monkeypatch.setenv("REPLAYLOG_ROOT", "a-dir")
    monkeypatch.setenv("REPLAYLOG_INDEX", "a-dir")
    _check_parse(plain, fast=False)


def test_shell_completion_is_left_to_click(proj: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("_REPLAYLOG_COMPLETE", "bash_complete")
    assert (
        fastcli.parse_append(["append", "f", "--type", "T", "--aggregate", "A"], os.environ) is None
    )


TOKENS = st.sampled_from(
    [
        "append",
        "status",
        "feat",
        "x",
        "-",
        "--",
        "-h",
        "--help",
        "--version",
        "--type",
        "--type=T",
        "--aggregate",
        "--aggregate=",
        "--payload",
        "--payload={}",
        "--payload-file",
        "--json",
        "--json=",
        "--sync",
        "--url",
        "--token-env",
        "--allow-insecure-http",
        "--causation-id",
        "--correlation-id=c",
        "--root",
        "--root=.",
        "a-dir",
        "a-file",
        "nope",
        "--logs-dir",
        "--index",
        "--index=a-dir",
        "--nope",
    ]
)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    head=st.lists(TOKENS, max_size=3),
    tail=st.lists(TOKENS, max_size=8),
)
def test_any_command_line_is_parsed_as_click_parses_it(
    proj: Path, head: list[str], tail: list[str]
) -> None:
    _check_parse([*head, "append", *tail])
    _check_parse([*head, "append", "feat", "--type", "T", "--aggregate", "A", *tail])


# --------------------------------------------------------------------------- whole runs


def _tree(root: Path) -> dict[str, Any]:
    """Every file under ``root``: a log as its lines (ids and times left out), else its name."""
    files: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        name = TORN_STAMP.sub("<TIME>", str(path.relative_to(root)))
        if path.is_dir() or name.endswith(("-wal", "-shm")):
            continue
        if ".jsonl" in name:
            files[name] = [_normal(line) for line in path.read_text().splitlines()]
        elif path.suffix == ".json":
            files[name] = _normal(path.read_text())
        else:
            files[name] = None
    return files


def _normal(text: str) -> str:
    return STAMP.sub("<TIME>", ULID.sub("<ULID>", text))


Setup = Callable[[Path], None]


def _nothing(root: Path) -> None:
    pass


def _a_payload_file(root: Path) -> None:
    (root / "p.json").write_text('{"from": "file", "n": [1, 2.5, null, true]}')


def _a_file_and_a_dir(root: Path) -> None:
    (root / "a-file").write_text("x")
    (root / "a-dir").mkdir()


def _a_log(root: Path, *lines: str) -> None:
    log = root / "kitty-specs" / "feat" / "status.events.jsonl"
    log.parent.mkdir(parents=True)
    log.write_text("".join(lines))


def _good_line(n: int) -> str:
    obj = {
        "event_id": f"01J{n:023d}",
        "event_type": "T",
        "aggregate_id": "A",
        "payload": {},
        "timestamp": "2026-01-01T00:00:00Z",
        "node_id": "n",
        "lamport_clock": n,
        "causation_id": None,
        "correlation_id": None,
    }
    return json.dumps(obj, sort_keys=True) + "\n"


def _a_bad_line(root: Path) -> None:
    _a_log(root, _good_line(1), "{broken\n", _good_line(3))


def _a_torn_tail(root: Path) -> None:
    _a_log(root, _good_line(1), '{"event_id": "01J')


def _a_foreign_index(root: Path) -> None:
    (root / ".replaylog").mkdir()
    (root / ".replaylog" / "queue.db").write_bytes(b"not a database at all" * 100)


def _a_log_that_is_a_folder(root: Path) -> None:
    (root / "kitty-specs" / "feat" / "status.events.jsonl").mkdir(parents=True)


BASE = ["append", "feat", "--type", "T", "--aggregate", "A"]
RUNS: list[tuple[str, list[str], Setup, str | None, dict[str, str]]] = [
    ("plain", BASE, _nothing, None, {}),
    ("payload", [*BASE, "--payload", '{"title": "hello"}'], _nothing, None, {}),
    (
        "equals forms, json",
        ["append", "--type=T", "feat", "--aggregate=A", '--payload={"a": [1, 2.5]}', "--json"],
        _nothing,
        None,
        {},
    ),
    ("ids", [*BASE, "--causation-id", "c1", "--correlation-id", "k1"], _nothing, None, {}),
    ("server options", [*BASE, "--token-env", "TOK", "--allow-insecure-http"], _nothing, None, {}),
    ("payload file", [*BASE, "--payload-file", "{root}/p.json"], _a_payload_file, None, {}),
    ("payload stdin", [*BASE, "--payload-file", "-", "--json"], _nothing, '{"in": "put"}', {}),
    (
        "non-ascii payload",
        [*BASE, "--payload", '{"t": "\u00e9\u2713"}', "--json"],
        _nothing,
        None,
        {},
    ),
    (
        "logs dir, index",
        ["--logs-dir", "other", "--index", "{root}/i.db", *BASE],
        _nothing,
        None,
        {},
    ),
    (
        "environment",
        BASE,
        _nothing,
        None,
        {"REPLAYLOG_LOGS_DIR": "env-logs", "REPLAYLOG_INDEX": "{root}/env.db"},
    ),
    (
        "value like an option",
        ["append", "feat", "--type", "--json", "--aggregate", "--"],
        _nothing,
        None,
        {},
    ),
    ("empty type", ["append", "feat", "--type", "", "--aggregate", "A"], _nothing, None, {}),
    ("long type", ["append", "feat", "--type", "t" * 201, "--aggregate", "A"], _nothing, None, {}),
    ("bad json", [*BASE, "--payload", '{"title": '], _nothing, None, {}),
    ("bad json --json", [*BASE, "--payload", "{", "--json"], _nothing, None, {}),
    ("not an object", [*BASE, "--payload", "[1]"], _nothing, None, {}),
    ("nan", [*BASE, "--payload", '{"x": NaN}', "--json"], _nothing, None, {}),
    ("both payloads", [*BASE, "--payload", "{}", "--payload-file", "p.json"], _nothing, None, {}),
    ("no payload file", [*BASE, "--payload-file", "{root}/none.json"], _nothing, None, {}),
    ("bad feature", ["append", "../x", "--type", "T", "--aggregate", "A"], _nothing, None, {}),
    (
        "dash feature",
        ["append", "-", "--type", "T", "--aggregate", "A", "--json"],
        _nothing,
        None,
        {},
    ),
    (
        "non-ascii feature",
        ["append", "f\u00e9at", "--type", "T", "--aggregate", "A"],
        _nothing,
        None,
        {},
    ),
    ("bad line", [*BASE, "--json"], _a_bad_line, None, {}),
    ("bad line, text", BASE, _a_bad_line, None, {}),
    ("torn tail", BASE, _a_torn_tail, None, {}),
    ("foreign index", BASE, _a_foreign_index, None, {}),
    ("log is a folder", BASE, _a_log_that_is_a_folder, None, {}),
    ("no such root", ["--root", "{root}/nope", *BASE], _nothing, None, {}),
    ("root is a file", ["--root", "{root}/a-file", *BASE], _a_file_and_a_dir, None, {}),
    ("index is a folder", ["--index", "{root}/a-dir", *BASE], _a_file_and_a_dir, None, {}),
    ("env root missing", BASE, _nothing, None, {"REPLAYLOG_ROOT": "{root}/nope"}),
    ("no type", ["append", "feat", "--aggregate", "A"], _nothing, None, {}),
    ("no type --json", ["append", "feat", "--aggregate", "A", "--json"], _nothing, None, {}),
    ("unknown option", [*BASE, "--nope"], _nothing, None, {}),
    ("repeated", [*BASE, "--type", "U"], _nothing, None, {}),
    ("missing value", [*BASE, "--payload"], _nothing, None, {}),
    ("flag with value", [*BASE, "--json=yes"], _nothing, None, {}),
    (
        "double dash",
        ["append", "--type", "T", "--aggregate", "A", "--", "feat"],
        _nothing,
        None,
        {},
    ),
    ("two features", [*BASE, "more"], _nothing, None, {}),
    ("sync without url", [*BASE, "--sync"], _nothing, None, {}),
    ("help", ["append", "--help"], _nothing, None, {}),
    ("version", ["--version"], _nothing, None, {}),
    ("no command", [], _nothing, None, {}),
]


def _run(
    command: list[str],
    root: Path,
    args: list[str],
    setup: Setup,
    stdin: str | None,
    env: dict[str, str],
    **kwargs: Any,
) -> dict[str, Any]:
    """One run in a fresh ``root`` (also the working directory): what it did."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir()
    setup(root)
    argv = [a.replace("{root}", str(root)) for a in args]
    environ = child_env(**{k: v.replace("{root}", str(root)) for k, v in env.items()})
    if "REPLAYLOG_ROOT" not in env:
        argv = ["--root", str(root), *argv]
    r = subprocess.run(
        command + argv,
        input=stdin,
        capture_output="stdout" not in kwargs,
        text=True,
        cwd=root,
        env=environ,
        timeout=120,
        **kwargs,
    )
    return {
        "code": r.returncode,
        "out": _normal(r.stdout or ""),
        "err": _normal(r.stderr or ""),
        "files": _tree(root),
    }


@pytest.mark.parametrize(
    ("args", "setup", "stdin", "env"), [r[1:] for r in RUNS], ids=[r[0] for r in RUNS]
)
def test_a_run_of_the_fast_path_is_a_run_of_the_click_command(
    tmp_path: Path, args: list[str], setup: Setup, stdin: str | None, env: dict[str, str]
) -> None:
    root = tmp_path / "proj"
    fast = _run(FAST, root, args, setup, stdin, env)
    slow = _run(CLICK, root, args, setup, stdin, env)
    assert fast == slow
    assert "Traceback" not in fast["err"]


def test_the_outcomes_compared_are_the_ones_meant(tmp_path: Path) -> None:
    """The comparisons above see appends, errors and usage messages, not only one kind."""
    root = tmp_path / "proj"
    plain = _run(FAST, root, RUNS[0][1], _nothing, None, {})
    assert plain["code"] == 0 and plain["out"] == "<ULID>\n", plain
    assert plain["files"]["kitty-specs/feat/status.events.jsonl"][0].startswith("{")
    bad = _run(FAST, root, [*BASE, "--payload", "{"], _nothing, None, {})
    assert bad["code"] == 2 and bad["err"].startswith("Error: the payload"), bad
    usage = _run(FAST, root, [*BASE, "--nope"], _nothing, None, {})
    assert usage["code"] == 2 and "--nope" in usage["err"], usage


def test_a_closed_standard_output_ends_both_paths_alike(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    outcomes = []
    for command in (FAST, CLICK):
        read_end, write_end = os.pipe()
        os.close(read_end)  # the reader is gone before the id is printed
        try:
            r = _run(
                command, root, BASE, _nothing, None, {}, stdout=write_end, stderr=subprocess.PIPE
            )
        finally:
            os.close(write_end)
        outcomes.append(r)
    assert outcomes[0] == outcomes[1]
    assert outcomes[0]["code"] == 1 and outcomes[0]["err"] == "", outcomes[0]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_standard_output_fails_both_paths_alike(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    outcomes = []
    for command in (FAST, CLICK):
        with open("/dev/full", "w") as full:
            outcomes.append(
                _run(command, root, BASE, _nothing, None, {}, stdout=full, stderr=subprocess.PIPE)
            )
    assert outcomes[0] == outcomes[1]
    assert outcomes[0]["code"] == 1, outcomes[0]
    assert outcomes[0]["err"].startswith("Error: cannot write the output"), outcomes[0]


# --------------------------------------------------------------------------- start-up


#: Modules the fast path must not import: click, and what only other paths need. The
#: command prints the line it wrote, so it builds no Event: the dataclasses module its
#: class needs (with inspect, which that imports) costs a tenth of the command.
NOT_ON_THE_FAST_PATH = [
    "click",
    "orjson",
    "urllib.parse",
    "sqlalchemy",
    "alembic",
    "httpx",
    "dataclasses",
    "inspect",
    "replaylog.lines.event",
    "random",
    "threading",
]
if importlib.util.find_spec("_sha2") or importlib.util.find_spec("_sha256"):
    NOT_ON_THE_FAST_PATH.append("hashlib")  # OpenSSL: its own SHA-256 is used instead


def test_the_fast_path_imports_no_click(tmp_path: Path) -> None:
    args = ["--root", str(tmp_path), "append", "feat", "--type", "t", "--aggregate", "a"]
    code = f"import sys\nfrom replaylog.fastcli import main\nmain({args!r})\n"
    code += "print(sorted(sys.modules))"
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), timeout=60
    )
    assert r.returncode == 0, r.stderr
    event_id, modules_text = r.stdout.splitlines()
    assert ULID.fullmatch(event_id)
    modules = set(ast.literal_eval(modules_text))
    assert "replaylog.fastcli" in modules
    assert "replaylog.cli" not in modules
    assert sorted(m for m in NOT_ON_THE_FAST_PATH if m in modules) == []


def test_the_console_script_imports_no_click_for_an_append(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("replaylog")
    if not script.exists():
        pytest.skip("the replaylog console script is not installed")
    r = subprocess.run(
        [str(script), "--root", str(tmp_path), "append", "feat", "--type", "t", "--aggregate", "a"],
        capture_output=True,
        text=True,
        env=child_env(PYTHONPROFILEIMPORTTIME="1"),
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if "|" in line}
    assert "replaylog.fastcli" in imported
    assert "click" not in imported


@pytest.mark.parametrize(
    "args",
    [["--help"], ["--version"], ["status"], ["append", "--help"], ["log", "--help"]],
    ids=" ".join,
)
def test_other_command_lines_still_run_click(tmp_path: Path, args: list[str]) -> None:
    fast = _run(FAST, tmp_path / "proj", args, _nothing, None, {})
    slow = _run(CLICK, tmp_path / "proj", args, _nothing, None, {})
    assert fast == slow
    assert fast["code"] == 0, fast
    assert fast["out"], fast


# --------------------------------------------------------------------------- SHA-256


@pytest.mark.parametrize("size", [0, 1, 64, 16 * 1024 - 1, 16 * 1024, 16 * 1024 + 1, 70_000])
def test_the_index_hashes_as_hashlib_does(size: int) -> None:
    data = os.urandom(size)
    assert _sha(data) == hashlib.sha256(data).hexdigest()
    assert builtin_sha256(data).hexdigest() == hashlib.sha256(data).hexdigest()


def test_the_node_id_is_the_sha256_of_machine_and_user(monkeypatch: pytest.MonkeyPatch) -> None:
    from replaylog.lines import ids

    monkeypatch.delenv("REPLAYLOG_NODE_ID", raising=False)
    monkeypatch.setattr(ids, "_node_id_cache", None)
    node = ids.local_node_id()
    machine = ""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            machine = Path(path).read_text(encoding="ascii").strip()
            break
        except OSError:
            continue
    if not machine:
        import socket

        machine = socket.gethostname()
    seed = f"replaylog-node\0{machine}\0{os.getuid()}"
    assert node == hashlib.sha256(seed.encode()).hexdigest()[:16]
