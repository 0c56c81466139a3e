"""SPEC section 1 (files) and the security promises of sections 5 and 6, through the CLI.

- the index and everything beside it is private (0600) and ignored by git;
- a log that is a symbolic link is refused, for reading and for writing;
- a feature name cannot climb out of the logs folder: refused before any file exists;
- the token is never printed, logged, stored or shown in a repr or an error;
- plain ``http://`` goes to loopback only, unless ``--allow-insecure-http``;
- payloads are data: nothing in them is ever evaluated, and they travel byte for byte.

What a symlinked *folder* does is decided here too: SPEC refuses a symbolic link
anywhere between the logs folder and a log (section 12), since a cloned repository can
hold one; the logs folder itself is refused the same way, for the same reason. The root
(and what is above it) is followed: the user names it, and a project under a linked
home or workspace is common.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cli_run import Run
from conftest import log_of
from receiver import Action, Receiver, RecordedRequest, unused_port_url

from replaylog import (
    EVENTS_FILENAME,
    AuthenticationError,
    DeliveryError,
    EventStore,
    TransientDeliveryError,
    UsageError,
)
from replaylog.replay import ReplayConfig, Replayer

pytestmark = pytest.mark.reliability

FEATURE = "feat"
DEAD_URL = "http://127.0.0.1:9"  # the discard port: nothing listens
APPEND = ["append", FEATURE, "--type", "t", "--aggregate", "a"]
TOKEN = "rlTok_s3cr3t-Qx7vLm2Zp9Kw4Tn8"


# --------------------------------------------------------------------------- helpers


def cli(
    root: Path,
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    umask: int | None = None,
    timeout: float = 60.0,
) -> Run:
    """``python -m replaylog --root ROOT ARGS`` in a real process, from ``cwd``."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("REPLAYLOG_")}
    full_env["REPLAYLOG_FSYNC"] = "0"
    full_env.update(env or {})
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "replaylog", "--root", str(root), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=timeout,
        preexec_fn=None if umask is None else lambda: os.umask(umask),
    )
    return Run(tuple(args), proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)


def cli_many(root: Path, commands: list[list[str]], **kwargs: Any) -> list[Run]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda args: cli(root, *args, **kwargs), commands))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def everything_under(path: Path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*"))


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    """An empty working directory for the commands, outside the project root."""
    path = tmp_path / "cwd"
    path.mkdir()
    return path


# --------------------------------------------------------------------------- the index is private


def assert_private(replaylog_dir: Path) -> None:
    """queue.db and every companion file private; .gitignore holding ``*``."""
    names = sorted(os.listdir(replaylog_dir))
    assert "queue.db" in names and ".gitignore" in names, names
    assert (replaylog_dir / ".gitignore").read_text().split() == ["*"]
    for name in names:
        if name != ".gitignore":
            mode = (replaylog_dir / name).stat().st_mode & 0o777
            assert mode == 0o600, f"{name} has mode {oct(mode)}"


def test_index_and_its_companions_stay_private_and_git_ignored_even_with_umask_0(
    root: Path, cwd: Path
) -> None:
    with Receiver() as receiver:
        for args in (
            APPEND,
            ["status"],
            ["replay", "--url", receiver.url],
            ["rebuild-index"],  # a new file renamed over the old one
            APPEND,
        ):
            run = cli(root, *args, cwd=cwd, umask=0)
            assert run.code == 0, run
            assert_private(root / ".replaylog")
    assert len(receiver.events) == 1

    # While a store is open the index is in WAL mode: its -wal and -shm are private too.
    other = root.parent / "other"
    other.mkdir()
    old = os.umask(0)
    try:
        with EventStore(other, fsync=False) as store:
            store.append(FEATURE, "t", "a")
            assert store.status()["totals"]["events"] == 1
            names = set(os.listdir(other / ".replaylog"))
            assert {"queue.db-wal", "queue.db-shm"} <= names, names
            assert_private(other / ".replaylog")
    finally:
        os.umask(old)

    if shutil.which("git"):
        subprocess.run(["git", "init", "-q", str(root)], check=True)
        ignored = subprocess.run(
            ["git", "-C", str(root), "check-ignore", ".replaylog/queue.db"], capture_output=True
        )
        assert ignored.returncode == 0, "git does not ignore the index"
        tracked = subprocess.run(
            ["git", "-C", str(root), "check-ignore", f"kitty-specs/{FEATURE}/{EVENTS_FILENAME}"],
            capture_output=True,
        )
        assert tracked.returncode == 1, "git ignores the log, which must be tracked"


# --------------------------------------------------------------------------- symbolic links


def every_command_on_one_log(url: str = DEAD_URL) -> list[list[str]]:
    return [
        ["log", FEATURE],
        ["status"],
        ["status", FEATURE],
        ["verify"],
        ["verify", FEATURE],
        APPEND,
        ["replay", "--url", url],
        ["repair", FEATURE],
        ["requeue", FEATURE],
        ["rebuild-index"],
    ]


def assert_every_command_refuses(root: Path, cwd: Path, says: str, **kwargs: Any) -> None:
    """Every command of :func:`every_command_on_one_log` exits 1 and its one error line
    (``verify``: its report on stdout) holds ``says``."""
    for run in cli_many(root, every_command_on_one_log(), cwd=cwd, **kwargs):
        assert run.code == 1, run
        if run.args[0] == "verify":
            assert run.err == "" and "Traceback" not in run.out, run
            text = run.out
        else:
            text = run.error_line()
        assert says in text, run


def test_a_symlinked_log_is_refused_by_every_command_and_its_target_is_untouched(
    tmp_path: Path, root: Path, cwd: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "precious.jsonl"
    (tmp_path / "donor").mkdir()
    with EventStore(tmp_path / "donor", fsync=False) as donor:
        donor.append(FEATURE, "t", "a", {"n": 1})
    shutil.copy(log_of(tmp_path / "donor"), target)  # a valid log: following it would work
    before = sha256(target)
    link = log_of(root)
    link.parent.mkdir(parents=True)
    link.symlink_to(target)

    assert_every_command_refuses(root, cwd, f"{link} is a symbolic link")

    assert sha256(target) == before
    assert os.listdir(outside) == ["precious.jsonl"]
    assert link.is_symlink() and os.listdir(link.parent) == [EVENTS_FILENAME]


def test_a_fifo_in_place_of_a_log_is_refused_by_every_command_without_waiting_on_it(
    root: Path, cwd: Path
) -> None:
    # Nothing writes to the FIFO: a command that opened it to read without O_NONBLOCK, or
    # read it, would wait for ever (here: until the runner's timeout fails the test). The
    # readers tell a log's kind after opening it (fastread by the fstat it makes after the
    # lock, the catch-up by an lstat): each must still refuse it, at once.
    fifo = log_of(root)
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)
    assert_every_command_refuses(root, cwd, f"{fifo} is not a regular file", timeout=30.0)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # left in place, nothing written beside it
    assert os.listdir(fifo.parent) == [EVENTS_FILENAME]


def test_a_folder_in_place_of_a_log_is_refused_by_every_command_and_left_as_it_was(
    root: Path, cwd: Path
) -> None:
    # A folder opened to write (append, move, repair) fails in the open itself, before
    # any look at what it is: it is named as the FIFO above is, not as "Is a directory".
    folder = log_of(root)
    folder.mkdir(parents=True)
    assert_every_command_refuses(root, cwd, f"{folder} is not a regular file")
    assert folder.is_dir() and os.listdir(folder) == []
    assert os.listdir(folder.parent) == [EVENTS_FILENAME]


def test_a_dangling_symlinked_log_creates_no_file_through_it(
    tmp_path: Path, root: Path, cwd: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    link = log_of(root)
    link.parent.mkdir(parents=True)
    link.symlink_to(outside / "created-through-the-link.jsonl")

    for run in cli_many(root, [APPEND, ["repair", FEATURE], ["log", FEATURE], ["status"]], cwd=cwd):
        assert run.code == 1, run
        assert "is a symbolic link" in run.error_line(), run
    assert os.listdir(outside) == []


def test_a_symlinked_feature_folder_is_refused_and_nothing_is_written_through_it(
    tmp_path: Path, root: Path, cwd: Path
) -> None:
    # A cloned repository can hold such a link: following it would write anywhere.
    real = tmp_path / "shared" / FEATURE
    real.mkdir(parents=True)
    (root / "kitty-specs").mkdir(parents=True)
    link = root / "kitty-specs" / FEATURE
    link.symlink_to(real, target_is_directory=True)
    (tmp_path / "donor").mkdir()
    with EventStore(tmp_path / "donor", fsync=False) as donor:
        donor.append(FEATURE, "t", "a", {"n": 1})
    for run in cli_many(root, [APPEND, ["log", FEATURE], ["repair", FEATURE]], cwd=cwd):
        assert run.code == 1, run
        assert f"{link} is a symbolic link" in run.error_line(), run
    assert os.listdir(real) == []
    # A valid log behind the link is not read either, by any command.
    shutil.copy(log_of(tmp_path / "donor"), real / EVENTS_FILENAME)
    before = sha256(real / EVENTS_FILENAME)
    for run in cli_many(root, every_command_on_one_log(), cwd=cwd):
        assert run.code == 1, run
        text = run.out if run.args[0] == "verify" and not run.err else run.error_line()
        assert f"{link} is a symbolic link" in text, run
    assert sha256(real / EVENTS_FILENAME) == before and os.listdir(real) == [EVENTS_FILENAME]


def test_a_symlinked_logs_folder_is_refused_but_a_linked_root_is_followed(
    tmp_path: Path, root: Path, cwd: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "kitty-specs").symlink_to(elsewhere, target_is_directory=True)
    refused = cli(root, *APPEND, cwd=cwd)
    assert refused.code == 1, refused
    assert f"{root / 'kitty-specs'} is a symbolic link" in refused.error_line()
    assert os.listdir(elsewhere) == []
    # The root is the user's own choice: a link to it is followed.
    (root / "kitty-specs").unlink()
    linked_root = tmp_path / "linked-root"
    linked_root.symlink_to(root, target_is_directory=True)
    append = cli(linked_root, *APPEND, cwd=cwd)
    assert append.code == 0, append
    assert log_of(root).is_file()


# --------------------------------------------------------------------------- feature names


def feature_commands(name: str) -> list[list[str]]:
    """Every command that takes a feature name, the creating ones first."""
    return [
        ["append", name, "--type", "t", "--aggregate", "a"],
        ["append", name, "--type", "t", "--aggregate", "a", "--sync", "--url", DEAD_URL],
        ["replay", "--feature", name, "--url", DEAD_URL],
        ["status", name],
        ["log", name],
        ["verify", name],
        ["repair", name],
        ["requeue", name],
    ]


ESCAPES = {
    "dot dot": "..",
    "parent": "../x",
    "climbing": "a/../../b",
    "absolute": "<tmp>/abs/x",  # an absolute path inside tmp_path: anything made there shows
}
BAD_NAMES = {
    **ESCAPES,
    "dot": ".",
    "slash": "a/b",
    "backslash": "a\\b",
    "129 characters": "x" * 129,
    "5000 characters": "x" * 5000,
    "empty": "",
    "leading dot": ".hidden",
}


@pytest.mark.parametrize("kind", list(BAD_NAMES))
def test_a_bad_feature_name_is_refused_with_exit_2_before_any_file_exists(
    tmp_path: Path, root: Path, cwd: Path, kind: str
) -> None:
    name = BAD_NAMES[kind].replace("<tmp>", str(tmp_path))
    # Each command for the names that try to climb out; the creating ones for the rest.
    commands = feature_commands(name)
    runs = cli_many(root, commands if kind in ESCAPES else commands[:3], cwd=cwd)
    for run in runs:
        assert run.code == 2, run
        assert "invalid feature name" in run.error_line(), run
    assert everything_under(tmp_path) == ["cwd", "proj"]


def test_a_feature_name_holding_nul_is_refused_by_the_api_before_any_file_exists(
    tmp_path: Path,
) -> None:
    # A command line cannot carry a NUL byte (execve ends the argument there): the API can.
    name = "feat\x00../../x"
    with EventStore(tmp_path, fsync=False) as store:
        calls: list[Callable[[], object]] = [
            lambda: store.append(name, "t", "a"),
            lambda: store.append_many(name, [{"event_type": "t", "aggregate_id": "a"}]),
            lambda: store.emit(name, "t", "a", url=DEAD_URL),
            lambda: store.read(name),
            lambda: store.read_raw(name),
            lambda: list(store.iter_events(name)),
            lambda: store.status(name),
            lambda: store.pending(name),
            lambda: store.verify([name]),
            lambda: store.repair(name),
            lambda: store.requeue(name),
            lambda: store.replay(DEAD_URL, feature=name),
        ]
        for call in calls:
            with pytest.raises(UsageError, match="invalid feature name"):
                call()
    assert everything_under(tmp_path) == []


# --------------------------------------------------------------------------- the token


def leaks(text: str) -> bool:
    """True if ``text`` holds the token, or either half of it."""
    half = len(TOKEN) // 2
    return TOKEN in text or TOKEN[:half] in text or TOKEN[half:] in text


def echo_token_in_reasons(request: RecordedRequest) -> Action:
    """A 200 that rejects every event, quoting the credentials it was sent."""
    auth = request.headers.get("authorization", "")
    rejected = [{"event_id": i, "reason": f"token {auth} not welcome"} for i in request.event_ids]
    return Action.answer(200, body=json.dumps({"accepted": [], "rejected": rejected}).encode())


@dataclass
class Servers:
    ok: Receiver
    unauthorized: Receiver
    failing: Receiver
    garbage: Receiver
    echo_400: Receiver
    echo_reasons: Receiver
    elsewhere: Receiver  # serves under another prefix: our path gets 404
    closed: str

    @property
    def not_found(self) -> str:
        return f"http://127.0.0.1:{self.elsewhere.port}"

    def all(self) -> list[Receiver]:
        return [
            self.ok,
            self.unauthorized,
            self.failing,
            self.garbage,
            self.echo_400,
            self.echo_reasons,
            self.elsewhere,
        ]


@pytest.fixture
def servers() -> Iterator[Servers]:
    receivers = [Receiver() for _ in range(6)] + [Receiver(prefix="/elsewhere")]
    for r in receivers:
        r.start()
    ok, unauthorized, failing, garbage, echo_400, echo_reasons, elsewhere = receivers
    unauthorized.hook = lambda request: Action.answer(
        401, body=f"who is {request.headers.get('authorization')}?".encode()
    )
    failing.hook = lambda request: Action.answer(
        503, body=str(request.headers.get("authorization")).encode()
    )
    garbage.hook = lambda request: "garbage"
    echo_400.hook = lambda request: Action.answer(
        400, body=f"bad credentials: {request.headers.get('authorization')}".encode()
    )
    echo_reasons.hook = echo_token_in_reasons
    try:
        yield Servers(*receivers, closed=unused_port_url())
    finally:
        for r in receivers:
            r.stop()


def test_the_token_is_never_printed_stored_or_shown_by_any_command(
    root: Path, cwd: Path, servers: Servers
) -> None:
    env = {"REPLAYLOG_TOKEN": TOKEN}
    s = servers
    runs: list[Run] = []

    def run(*args: str, code: int) -> Run:
        result = cli(root, *args, cwd=cwd, env=env)
        assert result.code == code, result
        runs.append(result)
        return result

    run(*APPEND, "--json", code=0)
    # Offline-first: a sync that fails for any reason still succeeds, with a warning.
    for url in (s.unauthorized.url, s.failing.url, s.garbage.url):
        synced = run(*APPEND, "--sync", "--url", url, code=0)
        assert synced.err.startswith("Warning: "), synced
    fast = ["--max-retries", "1", "--backoff-base", "0"]
    run("replay", "--url", s.unauthorized.url, code=4)
    run("replay", "--url", s.unauthorized.url, "--json", code=4)
    run("replay", "--url", s.failing.url, *fast, "--json", code=3)
    run("replay", "--url", s.closed, *fast, code=3)
    run("replay", "--url", s.garbage.url, *fast, code=3)
    run("replay", "--url", s.not_found, code=1)
    run("replay", "--url", s.echo_400.url, code=0)  # every event failed, the body quoting us
    run("requeue", code=0)
    run("replay", "--url", s.echo_reasons.url, "--json", code=0)  # rejected, reasons quoting us
    run("requeue", "--json", code=0)
    reads = [["status"], ["status", "--json"], ["verify"], ["log", FEATURE, "--json"]]
    for result in cli_many(root, reads, cwd=cwd, env=env):
        assert result.code == 0, result
        runs.append(result)
    run("rebuild-index", code=0)
    run(*APPEND, "--sync", "--url", s.ok.url, "--sync-timeout", "10", code=0)
    assert json.loads(run("status", "--json", code=0).out)["totals"]["delivered"] == 5

    # The token was really in use: every server was sent it.
    for receiver in s.all():
        assert receiver.requests, f"{receiver.url} got nothing"
        assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in receiver.requests)
    printed = [r for r in runs if leaks(r.out + r.err)]
    assert printed == [], "\n".join(map(str, printed))
    stored = [p for p in root.rglob("*") if p.is_file() and TOKEN[:12].encode() in p.read_bytes()]
    assert stored == []


def describe(exc: BaseException) -> str:
    """Everything an exception can show: its chain, traceback, repr, args and attributes."""
    return (
        "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        + repr(exc)
        + repr(exc.args)
        + repr(vars(exc))
    )


def test_the_token_is_in_no_repr_exception_or_debug_log_record(
    tmp_path: Path, servers: Servers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    s = servers
    texts: list[str] = []
    (tmp_path / "proj").mkdir()
    with EventStore(tmp_path / "proj", fsync=False) as store:
        store.append(FEATURE, "t", "a", {"n": 1})
        failures: list[tuple[str, type[BaseException]]] = [
            (s.unauthorized.url, AuthenticationError),
            (s.failing.url, TransientDeliveryError),
            (s.closed, TransientDeliveryError),
            (s.garbage.url, TransientDeliveryError),
            (s.not_found, DeliveryError),
        ]
        for url, kind in failures:
            with pytest.raises(kind) as info:
                store.replay(url, token=TOKEN, max_retries=1, backoff_base=0)
            texts.append(describe(info.value))
        with pytest.raises(UsageError) as bad_token:
            store.replay(s.ok.url, token=f"{TOKEN} {TOKEN}")  # a space cannot go in a header
        texts.append(describe(bad_token.value))
        emitted = store.emit(FEATURE, "t", "a", url=s.unauthorized.url, token=TOKEN)
        assert emitted.warning and not emitted.delivered
        texts.append(repr(emitted))
        texts.append(repr(store.replay(s.echo_400.url, token=TOKEN)))
        texts += [repr(store), str(store)]

        # A redirect whose Location quotes the token (some sign-on proxies do this).
        def redirect(request: httpx.Request) -> httpx.Response:
            token = request.headers["authorization"].removeprefix("Bearer ")
            return httpx.Response(302, headers={"Location": f"https://sso.example/?t={token}"})

        store.append(FEATURE, "t", "a")
        with pytest.raises(DeliveryError) as moved:
            store.replay(
                "https://events.example", token=TOKEN, transport=httpx.MockTransport(redirect)
            )
        texts.append(describe(moved.value))

    config = ReplayConfig(url=s.ok.url, token=TOKEN)
    with Replayer(config) as replayer:
        texts += [repr(config), str(config), repr(replayer), str(replayer)]

    # Debug logging was on, down to httpcore's connection traces.
    assert any(record.name.startswith("httpcore") for record in caplog.records)
    texts.append(caplog.text)
    texts += [f"{record.getMessage()} {record.args!r}" for record in caplog.records]
    assert [text for text in texts if leaks(text)] == []
    assert s.unauthorized.requests[0].headers["authorization"] == f"Bearer {TOKEN}"


# --------------------------------------------------------------------------- plain http


REFUSED_HOSTS = [
    "192.0.2.1:9",  # TEST-NET-1: never routed
    "events.example",
    "127.0.0.1.example",  # a name, not the loopback address it starts like
    "[::ffff:192.0.2.1]:9",
    "[2001:db8::1]:9",
]


def test_plain_http_to_a_non_loopback_host_is_refused_at_once_and_nothing_is_written(
    root: Path, cwd: Path
) -> None:
    prepared = cli(root, *APPEND, cwd=cwd)
    assert prepared.code == 0, prepared
    before = log_of(root).read_bytes()
    commands = [["replay", "--url", f"http://{REFUSED_HOSTS[0]}", "--json"]]
    for host in REFUSED_HOSTS:
        url = f"http://{host}"
        commands += [
            ["replay", "--url", url, "--timeout", "30"],
            [*APPEND, "--sync", "--url", url, "--sync-timeout", "30"],
        ]
    as_json, *runs = cli_many(root, commands, cwd=cwd)
    assert as_json.code == 2 and json.loads(as_json.out)["error"]["type"] == "UsageError"
    for run in runs:
        assert run.code == 2, run
        assert "--allow-insecure-http" in run.error_line(), run
        # A connection attempt would take up to the 30 s timeout; a refusal takes none.
        assert run.seconds < 15, run
    assert log_of(root).read_bytes() == before, "--sync wrote an event it could never send"


def loopback_alias() -> str | None:
    """A name from /etc/hosts that only means 127.x here (no DNS), other than localhost."""
    try:
        text = Path("/etc/hosts").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        fields = line.split("#")[0].split()
        if len(fields) < 2 or not fields[0].startswith("127."):
            continue
        for name in fields[1:]:
            if name.lower().rstrip(".") == "localhost":
                continue
            try:
                addresses = {info[4][0] for info in socket.getaddrinfo(name, 80)}
            except OSError:
                continue
            if addresses and all(a.startswith("127.") for a in addresses):
                return name
    return None


def test_plain_http_through_a_loopback_alias_sends_nothing_without_the_flag(
    root: Path, cwd: Path
) -> None:
    alias = loopback_alias()
    if alias is None:
        pytest.skip("no name in /etc/hosts maps to loopback only")
    with Receiver() as receiver:
        url = f"http://{alias}:{receiver.port}"
        assert cli(root, *APPEND, cwd=cwd).code == 0
        before = log_of(root).read_bytes()
        for args in (["replay", "--url", url], [*APPEND, "--sync", "--url", url]):
            refused = cli(root, *args, cwd=cwd)
            assert refused.code == 2 and "--allow-insecure-http" in refused.error_line(), refused
        assert receiver.requests == []
        assert log_of(root).read_bytes() == before
        # The same URL does reach the receiver: the refusal is what kept it silent.
        allowed = cli(root, "replay", "--url", url, "--allow-insecure-http", "--json", cwd=cwd)
        assert allowed.code == 0, allowed
        assert json.loads(allowed.out)["accepted"] == 1
        assert len(receiver.requests) == 1


# --------------------------------------------------------------------------- payloads are data


NASTY: dict[str, Any] = {
    "python": "__import__('os').system('touch PWNED')",
    "eval": "eval(compile('open(\"PWNED\", \"w\")', 'x', 'exec'))",
    "template": "{{7*7}}",
    "jinja": "{% for x in ().__class__.__base__.__subclasses__() %}{{ x }}{% endfor %}",
    "format": "{0.__class__.__init__.__globals__} %s %n",
    "shell": "$(touch PWNED)",
    "backticks": "`touch PWNED`",
    "semicolon": "; touch PWNED",
    "pipe": "| touch PWNED &",
    "newline": "ok\n; touch PWNED\r\n",
    "sql": "'); DROP TABLE events; --",
    "nul": "a\x00b",
    "unicode": "caf\u00e9 \u2028 \U0001f600",
    "nested": {"list": ["$(touch PWNED)", {"k": "{{7*7}}"}], "n": 49},
}


def no_pwned(*places: Path) -> None:
    for place in places:
        found = [p for p in place.rglob("*") if "PWNED" in p.name]
        assert found == [] and not (place / "PWNED").exists(), found


def test_payloads_are_data_never_evaluated_and_round_trip_byte_identically(
    tmp_path: Path, root: Path, cwd: Path
) -> None:
    payload_file = tmp_path / "payload.json"
    payload_file.write_text(json.dumps(NASTY, ensure_ascii=False), encoding="utf-8")
    first = cli(
        root,
        "append",
        FEATURE,
        "--type",
        "$(touch PWNED)",
        "--aggregate",
        "'; DROP TABLE events; --",
        "--payload",
        json.dumps(NASTY),
        "--causation-id",
        "`touch PWNED`",
        "--correlation-id",
        "{{7*7}}",
        cwd=cwd,
    )
    second = cli(
        root,
        "append",
        FEATURE,
        "--type",
        "__import__('os').system('touch PWNED')",
        "--aggregate",
        "; touch PWNED",
        "--payload-file",
        str(payload_file),
        cwd=cwd,
    )
    assert first.code == 0 and second.code == 0, (first, second)

    data = log_of(root).read_bytes()
    lines = data.splitlines(keepends=True)
    objs = [json.loads(line) for line in lines]
    assert [o["payload"] for o in objs] == [NASTY, NASTY]
    assert objs[0]["event_type"] == "$(touch PWNED)" and objs[0]["correlation_id"] == "{{7*7}}"
    for line, obj in zip(lines, objs, strict=True):
        assert line == (json.dumps(obj, sort_keys=True) + "\n").encode()

    shown, human, status, verify = cli_many(
        root, [["log", FEATURE, "--json"], ["log", FEATURE], ["status", "--json"], ["verify"]],
        cwd=cwd,
    )  # fmt: skip
    assert shown.code == 0 and shown.out.encode() == data, shown  # byte for byte
    assert human.code == 0 and "{{7*7}}" in human.out and "$(touch PWNED)" in human.out, human
    assert status.code == 0 and json.loads(status.out)["totals"]["events"] == 2, status
    assert verify.code == 0, verify
    with Receiver() as receiver:
        replay = cli(root, "replay", "--url", receiver.url, cwd=cwd)
        assert replay.code == 0, replay
    assert receiver.events == {o["event_id"]: o for o in objs}
    assert log_of(root).read_bytes() == data
    no_pwned(tmp_path, Path.cwd())


def test_replay_sends_the_log_lines_byte_for_byte(root: Path) -> None:
    bodies: list[bytes] = []

    def server(request: httpx.Request) -> httpx.Response:
        body = request.content
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        bodies.append(body)
        ids = [event["event_id"] for event in json.loads(body)["events"]]
        return httpx.Response(200, json={"accepted": ids, "rejected": []})

    with EventStore(root, fsync=False) as store:
        for _ in range(3):
            store.append(FEATURE, "$(touch PWNED)", "{{7*7}}", NASTY)
        report = store.replay(DEAD_URL, transport=httpx.MockTransport(server))
    assert report.accepted == 3
    lines = log_of(root).read_bytes().splitlines()
    assert len(bodies) == 1
    assert bodies[0].startswith(b'{"events": [' + b", ".join(lines) + b'], "features": [')
    no_pwned(root.parent)
