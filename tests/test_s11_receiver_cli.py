"""SPEC section 11: ``replaylog serve`` as a command: its options, errors, logs, start-up cost."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner
from server_fixtures import TOKEN_A, LiveServer, body, envelope, free_port

from replaylog.cli import cli


def _run(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "replaylog", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_serve_has_help_naming_every_option() -> None:
    result = CliRunner().invoke(cli, ["serve", "--help"])
    assert result.exit_code == 0
    for option in ("--host", "--port", "--db", "--tokens-file", "sqlite:///replaylog-server.db"):
        assert option in result.output


def test_importing_the_cli_does_not_load_the_server() -> None:
    code = (
        "import sys, replaylog.cli; heavy = sorted(m for m in sys.modules if m.split('.')[0]"
        " in ('starlette', 'uvicorn', 'psycopg', 'anyio') or m.startswith('replaylog.server'));"
        " print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_a_bad_tokens_file_is_one_error_line_exit_2_without_the_secret(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("alpha the-raw-token-by-mistake\n", encoding="utf-8")
    db = f"sqlite:///{tmp_path / 's.db'}"
    result = _run("serve", "--port", str(free_port()), "--db", db, "--tokens-file", str(tokens),
                  cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "line 1" in lines[0]
    assert "the-raw-token-by-mistake" not in result.stderr + result.stdout
    missing = _run("serve", "--db", db, "--tokens-file", str(tmp_path / "nope"), cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.startswith("Error: ")


def test_an_unreachable_database_is_one_error_line_exit_1(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test"
    result = _run("serve", "--port", str(free_port()), "--db", url, cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.stderr


def test_a_file_where_the_database_folder_must_be_is_named_exit_1(tmp_path: Path) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("notes\n")
    url = f"sqlite:///{blocker}/events.db"
    result = _run("serve", "--port", str(free_port()), "--db", url, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"Error: {blocker}/events.db: cannot create the database: {blocker} is not a folder;"
        " move it away, or give --db another path"
    ], result.stderr
    assert blocker.read_text() == "notes\n"


def test_a_database_url_of_another_kind_is_a_usage_error(tmp_path: Path) -> None:
    result = _run("serve", "--db", "mysql://u@h/db", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("Error: --db") and "Traceback" not in result.stderr


def test_the_default_database_is_a_private_file_in_the_working_directory(tmp_path: Path) -> None:
    with LiveServer(None, tmp_path) as server, server.client() as c:  # no --db
        assert c.post("/api/v1/events/batch/", content=body([envelope(0)])).status_code == 200
    db = tmp_path / "replaylog-server.db"
    assert db.is_file() and (db.stat().st_mode & 0o777) == 0o600


def test_tokens_never_appear_in_the_server_log(tmp_path: Path, tokens_file: Path) -> None:
    server = LiveServer(f"sqlite:///{tmp_path / 's.db'}", tmp_path, tokens_file=tokens_file)
    with server:
        with server.client(TOKEN_A) as c:
            assert c.post("/api/v1/events/batch/", content=body([envelope(0)])).status_code == 200
            assert c.get("/api/v1/events").status_code == 200
        with server.client("a-wrong-token-value") as c:
            assert c.get("/api/v1/events").status_code == 401
    log = server.log()
    assert "POST /api/v1/events/batch/" in log  # the access log is on
    assert TOKEN_A not in log and "a-wrong-token-value" not in log
    assert "Bearer" not in log


def test_a_port_in_use_is_one_error_line_exit_1(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        db = f"sqlite:///{tmp_path / 's.db'}"
        result = _run("serve", "--port", str(port), "--db", db, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]


def test_ctrl_c_stops_the_receiver_as_its_way_out_not_as_an_error(tmp_path: Path) -> None:
    # uvicorn shuts down gracefully, then raises the SIGINT it caught again: that is how
    # a receiver in a terminal is stopped, so it exits 0 and says so, with what it stored.
    db = tmp_path / "server.db"
    server = LiveServer(f"sqlite:///{db}", tmp_path).start()
    try:
        with server.client() as client:
            stored = client.post("/api/v1/events/batch/", content=body([envelope(1)]))
            assert stored.status_code == 200, stored.text
        assert server.proc is not None
        server.proc.send_signal(signal.SIGINT)
        assert server.proc.wait(timeout=30) == 0, server.log()
    finally:
        server.stop()
    log = server.log()
    assert log.rstrip().endswith("replaylog serve stopped") and "Error" not in log, log
    again = LiveServer(f"sqlite:///{db}", tmp_path).start()
    try:
        with again.client() as client:
            assert len(client.get("/api/v1/events").json()["events"]) == 1
    finally:
        again.stop()
