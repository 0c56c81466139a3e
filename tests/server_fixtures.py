"""Fixtures for the receiver's tests (``replaylog serve``, SPEC section 11).

- ``db_url``: parametrized over a SQLite file and a real PostgreSQL (a fresh schema per
  test, dropped after). PostgreSQL is ``REPLAYLOG_TEST_POSTGRES`` or
  ``postgresql+psycopg://postgres@127.0.0.1:5432/test``; when it does not answer, its
  tests are skipped with the reason, or fail when ``REPLAYLOG_REQUIRE_POSTGRES=1`` (CI).
- :class:`AppClient`: the app in this process through ``httpx.ASGITransport``.
- :class:`LiveServer`: ``replaylog serve`` as a real process on 127.0.0.1, killed and
  started again at will.
- Line makers: :func:`envelope`, :func:`transition`, :func:`body`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from replaylog import Event, generate_event_id

PG_URL = os.environ.get(
    "REPLAYLOG_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
TOKEN_A = "token-of-project-a"
TOKEN_B = "token-of-project-b"
BATCH = "/api/v1/events/batch/"


def _plain_pg_url(url: str) -> str:
    return "postgresql://" + url.split("://", 1)[1]


def postgres_unreachable() -> str | None:
    """Why PostgreSQL cannot be used for tests, or None when it answers."""
    try:
        import psycopg

        with psycopg.connect(_plain_pg_url(PG_URL), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - any failure means: not reachable
        return f"PostgreSQL at {PG_URL} is not reachable ({type(exc).__name__}: {exc})"
    return None


def require_postgres() -> None:
    """Skip (or with REPLAYLOG_REQUIRE_POSTGRES=1, fail) when PostgreSQL does not answer."""
    reason = postgres_unreachable()
    if reason is None:
        return
    if os.environ.get("REPLAYLOG_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"{reason}; REPLAYLOG_REQUIRE_POSTGRES=1 requires it")
    pytest.skip(f"{reason}; set REPLAYLOG_REQUIRE_POSTGRES=1 to make this a failure")


def pg_admin(sql: str) -> list[tuple[Any, ...]]:
    """Run one statement on the test database as its own short connection."""
    import psycopg

    with psycopg.connect(_plain_pg_url(PG_URL), autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute(sql)
        return list(cur.fetchall()) if cur.description else []


@contextlib.contextmanager
def pg_schema_url() -> Iterator[str]:
    """A URL whose tables live in a new schema of their own, dropped afterwards. The
    schema's name is also the connections' ``application_name``, to find them again."""
    require_postgres()
    schema = f"rl_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    pg_admin(f"CREATE SCHEMA {schema}")
    options = quote(f"-csearch_path={schema}")
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options={options}&application_name={schema}"
    finally:
        terminate_pg_connections(schema)
        pg_admin(f"DROP SCHEMA {schema} CASCADE")


def terminate_pg_connections(application_name: str) -> int:
    """Kill the server's connections, as a database restart would: how many there were."""
    rows = pg_admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        f" WHERE application_name = '{application_name}' AND pid <> pg_backend_pid()"
    )
    return len(rows)


def application_name(url: str) -> str:
    return url.rsplit("application_name=", 1)[1]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The receiver's database, once a SQLite file and once a real PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'server.db'}"
        return
    with pg_schema_url() as url:
        yield url


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    """Two projects, one token each (and a comment and a blank line)."""
    from replaylog.server.tokens import token_digest

    path = tmp_path / "tokens"
    path.write_text(
        "# project  sha256                 name\n\n"
        f"alpha {token_digest(TOKEN_A)} alice laptop\n"
        f"beta\t{token_digest(TOKEN_B)}\n",
        encoding="utf-8",
    )
    return path


# --------------------------------------------------------------------------- lines


def envelope(n: int = 0, *, node: str = "node-a", **fields: Any) -> dict[str, Any]:
    """A section 2 line as the store writes it."""
    fields.setdefault("lamport_clock", n + 1)
    return Event.new("Created", f"WP{n:02d}", {"n": n}, node_id=node, **fields).to_dict()


def transition(
    wp: str, from_lane: str, to_lane: str, *, at: str = "2026-11-20T10:00:00+00:00", **more: Any
) -> dict[str, Any]:
    """A spec-kitty transition line (section 10)."""
    line = {
        "event_id": generate_event_id(),
        "wp_id": wp,
        "from_lane": from_lane,
        "to_lane": to_lane,
        "at": at,
        "actor": "alice",
        "force": False,
        "execution_mode": "worktree",
        "mission_slug": "demo",
    }
    line.update(more)
    return line


def annotation(
    wp: str, delta: dict[str, Any], *, at: str = "2026-11-20T10:00:05+00:00"
) -> dict[str, Any]:
    """A spec-kitty annotation line (section 10)."""
    return {
        "actor": "alice",
        "at": at,
        "delta": delta,
        "event_id": generate_event_id(),
        "kind": "annotation",
        "wp_id": wp,
    }


def body(lines: list[dict[str, Any]], *, feature: str = "demo", node: str = "node-a") -> bytes:
    batch = {"events": lines, "features": [feature] * len(lines), "node_id": node}
    return json.dumps(batch).encode()


# --------------------------------------------------------------------------- in process


class AppClient:
    """Synchronous calls into the app through ``httpx.ASGITransport`` (no network)."""

    def __init__(self, app: Any, *, client: tuple[str, int] = ("127.0.0.1", 40000)) -> None:
        self._loop = asyncio.new_event_loop()
        self._client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=client), base_url="http://test"
        )

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self._loop.run_until_complete(
            asyncio.wait_for(self._client.request(method, path, **kwargs), 60)
        )

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str = BATCH, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def close(self) -> None:
        self._loop.run_until_complete(self._client.aclose())
        self._loop.close()


def all_events(client: AppClient | httpx.Client, **headers: str) -> list[dict[str, Any]]:
    """Every stored event of the project, paging through ``GET /api/v1/events``."""
    found: list[dict[str, Any]] = []
    after = 0
    while True:
        page = client.get(f"/api/v1/events?after={after}&limit=1000", headers=headers)
        assert page.status_code == 200, page.text
        data = page.json()
        found.extend(data["events"])
        if not data["events"]:
            return found
        after = data["next"]


# --------------------------------------------------------------------------- live server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


_LAUNCHER = """\
import sys, uvicorn
from replaylog.server import create_app
url, port, busy = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
app = create_app(url, busy_timeout=busy)
uvicorn.run(app, host="127.0.0.1", port=port, proxy_headers=False, log_level="warning")
"""


class LiveServer:
    """``replaylog serve`` in a process of its own on 127.0.0.1; the port stays the same
    across :meth:`kill` and :meth:`start`, so that clients keep their URL. With
    ``busy_timeout``, the app is started by a tiny launcher instead of the CLI, to give
    it a short SQLite busy timeout."""

    def __init__(
        self,
        db_url: str | None,
        workdir: Path,
        *,
        tokens_file: Path | None = None,
        busy_timeout: float | None = None,
    ) -> None:
        self.db_url = db_url
        self.workdir = workdir
        self.tokens_file = tokens_file
        self.busy_timeout = busy_timeout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"server-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        if self.busy_timeout is not None:
            return [sys.executable, "-c", _LAUNCHER, str(self.db_url), str(self.port),
                    str(self.busy_timeout)]  # fmt: skip
        cmd = [sys.executable, "-m", "replaylog", "serve", "--port", str(self.port)]
        if self.db_url is not None:
            cmd += ["--db", self.db_url]
        if self.tokens_file is not None:
            cmd += ["--tokens-file", str(self.tokens_file)]
        return cmd

    def start(self, timeout: float = 30.0) -> LiveServer:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(
                self.command(), cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise AssertionError(f"the server did not answer within {timeout} s:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush, as a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self.proc = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class TcpProxy:
    """A TCP forwarder on 127.0.0.1 to ``target``: :meth:`down` closes it and every
    connection through it (the database as a client sees it restart), :meth:`up` opens it
    again on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def up(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def down(self) -> None:
        if self._listener is not None:
            # shutdown first: a bare close leaves a thread's accept() running on Linux
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
