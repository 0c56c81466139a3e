"""SPEC section 12 on a real full disk and a real read-only filesystem.

Each test mounts a small tmpfs (root only: the test is skipped with the reason
elsewhere), puts a log, the index or both on it, fills it with a filler file and runs a
write path: append, append_many, append --sync, the index's catch-up, rebuild-index,
repair, the merge driver, replay's delivery records and the clock file. Every failure
must be one ``Error:`` line that names the path and its device (never "rebuild-index",
never "please report this"), exit 1, leave every file as it was (hashes before and
after, no temporary file left), and keep every event acknowledged before. Once the
filler is removed, the next command goes on, and the index equals a rebuilt one.

A read-only filesystem (a tmpfs remounted ``ro``, or a read-only bind mount of the logs)
lets ``log``, ``verify`` and ``board`` work and makes the writing commands fail in one line that
says so; a child process running as an unprivileged user (``os.setuid``) meets real
permission bits. Through the API, every one of these raises a ``ReplaylogError``, never
an ``OSError``, a ``sqlite3`` or a SQLAlchemy error.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_run import Run
from receiver import Receiver

from replaylog import (
    EVENTS_FILENAME,
    AccessDeniedError,
    BadIndexError,
    DiskError,
    DiskFullError,
    Event,
    EventStore,
    ReplaylogError,
    ReplaylogWarning,
    append_event,
)
from replaylog.errors import translate

pytestmark = pytest.mark.reliability

PAGE = 4096
DISK_SIZE = 1 << 20  # bytes of each small tmpfs
FEATURE = "feat"
DEAD_URL = "http://127.0.0.1:9"  # nothing listens on the discard port
FULL = "no space left on the device holding it"
#: What must never be said about a disk that is merely full or read-only.
WRONG_ADVICE = ("rebuild-index", "please report", "Traceback", "not a usable")


# --------------------------------------------------------------------------- the disk


class Disk:
    """A mounted tmpfs and a filler file that takes its free space."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / ".filler"

    def available(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int = 0) -> None:
        """Take every free byte, then give back ``leave`` bytes (whole pages)."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (64 * 1024, PAGE, 512, 1):  # the last partial page too, to the byte
                block = bytes(size)
                while True:
                    try:
                        os.write(fd, block)
                    except OSError as exc:
                        assert exc.errno == errno.ENOSPC, exc
                        break
        finally:
            os.close(fd)
        size = self.filler.stat().st_size
        os.truncate(self.filler, max(0, size - leave))
        assert abs(self.available() - leave) <= PAGE, (self.available(), leave)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def remount(self, option: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{option}", str(self.path)], check=True)


def _mount_tmpfs(path: Path, size: int) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (a real full disk) needs root")
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


def _unmount(path: Path) -> None:
    done = subprocess.run(["umount", str(path)], capture_output=True, check=False)
    if done.returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    path = tmp_path / "disk"
    _mount_tmpfs(path, DISK_SIZE)
    try:
        yield Disk(path)
    finally:
        _unmount(path)


@pytest.fixture
def big_disk(tmp_path: Path) -> Iterator[Disk]:
    """A larger disk, for an index bigger than SQLite's page cache."""
    path = tmp_path / "big-disk"
    _mount_tmpfs(path, 32 * DISK_SIZE)
    try:
        yield Disk(path)
    finally:
        _unmount(path)


# --------------------------------------------------------------------------- helpers


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLAYLOG_")}
    env["REPLAYLOG_NODE_ID"] = "node-test"
    return env


def cli(root: Path, *args: str, index: Path | None = None, timeout: float = 60.0) -> Run:
    """``python -m replaylog --root ROOT [--index INDEX] ARGS`` as its own process."""
    argv = ["--root", str(root)]
    if index is not None:
        argv += ["--index", str(index)]
    argv += list(args)
    done = subprocess.run(
        [sys.executable, "-m", "replaylog", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
        cwd=root,
        check=False,
    )
    return Run(tuple(argv), done.returncode, done.stdout, done.stderr, 0.0)


def sqlite_own(name: str) -> bool:
    """SQLite's transient files (``-wal``, ``-shm``), which SQLite makes and drops itself,
    and the clock file: a cache of the highest Lamport value issued, which may rise by
    values a failed append reserved and never wrote (gaps are harmless; it never falls)."""
    return name.endswith(("-wal", "-shm", "-clock"))


def files(top: Path) -> dict[str, str]:
    """Every file below ``top`` (but the filler and SQLite's own) and its sha256."""
    out = {}
    for dirpath, _dirs, names in os.walk(top):
        for name in names:
            path = Path(dirpath, name)
            if name == ".filler" or sqlite_own(name):
                continue
            out[str(path.relative_to(top))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def index_content(index: Path, *, delivery: bool = True) -> tuple[list[Any], list[Any]]:
    """The index's events and logs, as rows (its file bytes may differ after a checkpoint);
    ``delivery``: with each event's delivery state."""
    state = ", status, retry_count, last_error" if delivery else ""
    wal = Path(f"{index}-wal")
    # With no WAL to read, the file alone is the index: read it without making a shared
    # memory file, which a full disk may have no room for.
    mode = "mode=ro" if wal.exists() and wal.stat().st_size else "immutable=1"
    conn = sqlite3.connect(f"file:{index}?{mode}", uri=True)
    try:
        events = conn.execute(
            'SELECT feature, line, "offset", length, event_id, event_type, aggregate_id,'
            f" node_id, lamport{state} FROM events ORDER BY feature, line"
        ).fetchall()
        logs = conn.execute(
            "SELECT feature, size, lines, head_hash, tail_offset, tail_hash, max_lamport"
            " FROM logs ORDER BY feature"
        ).fetchall()
    finally:
        conn.close()
    return events, logs


def assert_index_equals_rebuilt(root: Path, index: Path, tmp_path: Path) -> None:
    """The index kept through the faults equals one rebuilt from the logs (delivery
    state aside: a fresh index has none to carry over)."""
    fresh = tmp_path / "rebuilt" / "queue.db"
    with EventStore(root, index_path=fresh, fsync=False) as store:
        store.rebuild_index()
    assert index_content(index, delivery=False) == index_content(fresh, delivery=False)


def assert_clean_failure(run: Run, path: Path | str, *, says: str = FULL) -> str:
    """Exit 1, one ``Error:`` line naming ``path`` and what is wrong with its disk."""
    assert run.code == 1, run
    line = run.error_line()
    assert str(path) in line, run
    assert says in line, run
    for wrong in WRONG_ADVICE:
        assert wrong not in line, run
    return line


def log_file(root: Path, feature: str = FEATURE) -> Path:
    return root / "kitty-specs" / feature / EVENTS_FILENAME


def seed(root: Path, count: int = 3, *, index: Path | None = None) -> list[str]:
    """Append ``count`` events through the API and index them; returns their ids."""
    with EventStore(root, index_path=index, node_id="node-test", fsync=False) as store:
        ids = [store.append(FEATURE, "seeded", f"a{k}", {"k": k}).event_id for k in range(count)]
        store.status()  # the index has caught up: what it holds is the baseline
    return ids


def ids_in_log(root: Path, feature: str = FEATURE) -> list[str]:
    path = log_file(root, feature)
    if not path.exists():
        return []
    return [json.loads(line)["event_id"] for line in path.read_bytes().splitlines() if line]


# --------------------------------------------------------------------------- append


def test_append_on_a_full_disk_fails_in_one_line_and_changes_nothing(
    disk: Disk, tmp_path: Path
) -> None:
    root = disk.path / "root"
    (root / ".git").mkdir(parents=True)
    acknowledged = seed(root)
    before = files(root)
    disk.fill()
    run = cli(root, "append", FEATURE, "--type", "t", "--aggregate", "a", "--payload", "{}")
    assert_clean_failure(run, disk.path)
    assert "mounted at " + str(disk.path) in run.err
    assert files(root) == before
    disk.free()
    run = cli(root, "append", FEATURE, "--type", "t", "--aggregate", "a")
    assert run.code == 0, run
    assert ids_in_log(root) == [*acknowledged, run.out.strip()]
    assert_index_equals_rebuilt(root, root / ".replaylog" / "queue.db", tmp_path)


def test_append_when_only_the_log_is_full_names_the_log(disk: Disk, tmp_path: Path) -> None:
    root = disk.path / "root"
    root.mkdir()
    index = tmp_path / "index" / "queue.db"
    acknowledged = seed(root, index=index)
    log = log_file(root)
    log_bytes = log.read_bytes()
    rows = index_content(index)[0]
    disk.fill()
    big = json.dumps({"text": "x" * 3 * PAGE})  # more than the last page of the log holds
    run = cli(
        root, "append", FEATURE, "--type", "t", "--aggregate", "a", "--payload", big, index=index
    )
    assert_clean_failure(run, log)
    assert "cannot append to the log" in run.err
    assert log.read_bytes() == log_bytes
    assert index_content(index)[0] == rows
    # A first append to a new feature leaves no empty log (no new feature) behind.
    run = cli(
        root, "append", "new", "--type", "t", "--aggregate", "a", "--payload", big, index=index
    )
    assert_clean_failure(run, log_file(root, "new"))
    assert not log_file(root, "new").exists()
    assert cli(root, "status", "--json", index=index).out.count('"new"') == 0

    # The API: the same error, a ReplaylogError with the path; nothing half-written.
    with EventStore(root, index_path=index, fsync=True) as store:
        with pytest.raises(DiskFullError) as info:
            store.append(FEATURE, "t", "a", {"text": "x" * 3 * PAGE})
        assert info.value.path == str(log) and info.value.errno == errno.ENOSPC
        assert isinstance(info.value.__cause__, OSError)
        with pytest.raises(DiskFullError):
            store.append_many(FEATURE, [{"event_type": "t", "aggregate_id": "a"}] * 200)
        assert log.read_bytes() == log_bytes
    disk.free()
    run = cli(root, "append", FEATURE, "--type", "t", "--aggregate", "a", index=index)
    assert run.code == 0, run
    assert ids_in_log(root) == [*acknowledged, run.out.strip()]
    assert_index_equals_rebuilt(root, index, tmp_path)


def test_an_append_that_fails_on_a_full_disk_leaves_the_clock_as_it_was(
    disk: Disk, tmp_path: Path
) -> None:
    # "A command that reports a failure did not do it": the Lamport values it reserved
    # are given back, so a rebuilt index (and one made again from nothing) agrees.
    root = disk.path / "root"
    root.mkdir()
    index = tmp_path / "index" / "queue.db"
    seed(root, index=index)
    big = {"text": "x" * 3 * PAGE}
    with EventStore(root, index_path=index, fsync=True) as store:
        store.append(FEATURE, "t", "a")  # the log now kept open: the next take the fast path
        clock = store.status()["lamport_clock"]
        disk.fill()
        with pytest.raises(DiskFullError):
            store.append(FEATURE, "t", "a", big)  # the fast path
        with pytest.raises(DiskFullError):
            store.append_many(FEATURE, [{"event_type": "t", "aggregate_id": "a"}] * 200)
        with pytest.raises(DiskFullError):
            store.append("another", "t", "a", big)  # the whole transaction, a new log
        assert store.status()["lamport_clock"] == clock
        disk.free()
        assert store.append(FEATURE, "t", "a").lamport_clock == clock + 1
    assert_index_equals_rebuilt(root, index, tmp_path)
    for suffix in ("", "-wal", "-shm"):
        Path(str(index) + suffix).unlink(missing_ok=True)
    with EventStore(root, index_path=index, fsync=False) as store:
        store.rebuild_index()
        assert store.status()["lamport_clock"] == clock + 1


def test_append_many_that_does_not_fit_writes_none_of_the_batch(disk: Disk, tmp_path: Path) -> None:
    root = disk.path / "root"
    root.mkdir()
    index = tmp_path / "index" / "queue.db"
    acknowledged = seed(root, index=index)
    log = log_file(root)
    log_bytes = log.read_bytes()
    disk.fill(leave=8 * PAGE)  # room for part of the batch: a short write, then ENOSPC
    batch = [{"event_type": "t", "aggregate_id": f"a{k}", "payload": {"k": k}} for k in range(600)]
    with EventStore(root, index_path=index) as store, pytest.raises(DiskFullError):
        store.append_many(FEATURE, batch)
    assert log.read_bytes() == log_bytes
    disk.free()
    with EventStore(root, index_path=index) as store:
        written = store.append_many(FEATURE, batch)
    assert ids_in_log(root) == acknowledged + [e.event_id for e in written]
    assert_index_equals_rebuilt(root, index, tmp_path)


def test_a_line_durable_in_the_log_whose_index_write_failed_is_a_success_with_a_warning(
    disk: Disk, tmp_path: Path
) -> None:
    """Log on a disk with room, index on a full one: from the fill level where the
    index's first small write fits but its large record of the batch does not, the
    append returns its events with a warning, and a retry is never needed."""
    root = tmp_path / "root"
    root.mkdir()
    index = disk.path / "queue.db"
    acknowledged = seed(root, index=index)
    batch = [{"event_type": "t", "aggregate_id": f"a{k}", "payload": {}} for k in range(3000)]
    outcome = None
    with EventStore(root, index_path=index, fsync=False) as store:
        store.status()  # the index is open: its shared memory is in place
        for pages in range(0, 40):
            disk.fill(leave=pages * PAGE)
            size = log_file(root).stat().st_size
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    written = store.append_many(FEATURE, batch)
                except DiskFullError as exc:
                    assert exc.path == str(index), exc
                    assert log_file(root).stat().st_size == size  # refused before the log
                    continue
            outcome = (pages, written, [w for w in caught if w.category is ReplaylogWarning])
            break
    assert outcome is not None, "no fill level let the append through"
    pages, written, said = outcome
    assert len(said) == 1, f"at {pages} free pages the index took the batch: no deferral seen"
    message = str(said[0].message)
    assert "saved in the log" in message and str(index) in message and FULL in message
    assert ids_in_log(root) == acknowledged + [e.event_id for e in written]
    disk.free()
    with EventStore(root, index_path=index) as store:
        counts = store.status(FEATURE)["features"][FEATURE]
    assert counts["events"] == len(acknowledged) + len(batch)  # each event once
    assert_index_equals_rebuilt(root, index, tmp_path)


def test_cli_append_at_every_fill_level_fails_cleanly_or_keeps_its_event(
    disk: Disk, tmp_path: Path
) -> None:
    """``replaylog append`` with the log and the index on one disk, given 0, 1, 2, ...
    free pages: each run either fails in one line with every file as it was, or prints
    an id that is in the log once (a deferred index write says so in a warning)."""
    root = disk.path / "root"
    (root / ".git").mkdir(parents=True)
    acknowledged = seed(root)
    seen = {"failed": 0, "ok": 0, "ok, index deferred": 0}
    for pages in range(0, 24):
        disk.fill(leave=pages * PAGE)
        before = files(root)
        run = cli(root, "append", FEATURE, "--type", "t", "--aggregate", f"p{pages}")
        if run.code != 0:
            assert_clean_failure(run, disk.path)
            assert files(root) == before, pages
            seen["failed"] += 1
            continue
        assert "Traceback" not in run.err, run
        event_id = run.out.strip()
        acknowledged.append(event_id)
        if run.err:
            assert run.err.startswith("Warning: ") and len(run.err.splitlines()) == 1, run
            assert "saved in the log" in run.err, run
            seen["ok, index deferred"] += 1
        else:
            seen["ok"] += 1
        assert ids_in_log(root) == acknowledged
    print(f"\nappend at 0..23 free pages of a full disk: {seen}")
    assert seen["failed"] and seen["ok"], seen
    disk.free()
    run = cli(root, "status", "--json")
    assert run.code == 0, run
    assert json.loads(run.out)["features"][FEATURE]["events"] == len(acknowledged)
    assert ids_in_log(root) == acknowledged
    assert_index_equals_rebuilt(root, root / ".replaylog" / "queue.db", tmp_path)


def test_append_sync_on_a_full_disk_fails_before_anything_is_sent(
    disk: Disk, tmp_path: Path
) -> None:
    root = disk.path / "root"
    (root / ".git").mkdir(parents=True)
    acknowledged = seed(root)
    before = files(root)
    disk.fill()
    with Receiver() as server:
        sync = ["append", FEATURE, "--type", "t", "--aggregate", "a", "--sync", "--url", server.url]
        run = cli(root, *sync)
        assert_clean_failure(run, disk.path)
        assert files(root) == before and not server.requests
        disk.free()
        run = cli(root, *sync)
        assert run.code == 0 and not run.err, run
        assert list(server.events) == [*acknowledged, run.out.strip()]
    assert_index_equals_rebuilt(root, root / ".replaylog" / "queue.db", tmp_path)


def test_a_clock_file_on_a_full_disk_is_an_error_not_a_crash(disk: Disk, tmp_path: Path) -> None:
    """The clock file is mapped into memory: a store into a page without disk space
    behind it would kill the process (SIGBUS). It gets its space first, or fails."""
    root = disk.path / "root"
    (root / ".git").mkdir(parents=True)
    index = root / ".replaylog" / "queue.db"
    acknowledged = seed(root)
    holder = sqlite3.connect(index)  # keeps the index's WAL and shared memory in place
    try:
        holder.execute("SELECT count(*) FROM events").fetchall()
        seed(root, 60)  # a WAL with room in it, reused after the checkpoint below
        holder.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        acknowledged = ids_in_log(root)
        clock = Path(f"{index}-clock")
        clock.unlink()
        disk.fill()
        run = cli(root, "append", FEATURE, "--type", "t", "--aggregate", "a")
        assert_clean_failure(run, clock)
        assert ids_in_log(root) == acknowledged
    finally:
        holder.close()
    disk.free()
    run = cli(root, "append", FEATURE, "--type", "t", "--aggregate", "a")
    assert run.code == 0, run
    assert ids_in_log(root) == [*acknowledged, run.out.strip()]
    assert_index_equals_rebuilt(root, index, tmp_path)


def test_a_clock_file_the_disk_refuses_during_a_catch_up_is_a_disk_error_not_a_bad_log(
    disk: Disk, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    index = disk.path / "queue.db"
    seed(root, index=index)
    holder = sqlite3.connect(index)  # keeps the index's WAL and shared memory in place
    try:
        holder.execute("SELECT count(*) FROM events").fetchall()
        seed(root, 60, index=index)  # a WAL with room in it, reused after the checkpoint
        holder.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        for k in range(5):  # lines the index has not seen (a `git pull`)
            append_event(root / "kitty-specs" / FEATURE, Event.new("pulled", f"b{k}"))
        clock = Path(f"{index}-clock")
        with EventStore(root, index_path=index) as store:
            assert store.index is not None  # open, with its clock file not opened yet
            clock.unlink()
            disk.fill()
            for call in (store.status, store.rebuild_index):
                with pytest.raises(DiskFullError) as info:
                    call()
                assert str(index) in str(info.value), call
    finally:
        holder.close()
    disk.free()
    with EventStore(root, index_path=index) as store:
        assert store.status()["features"][FEATURE]["events"] == 68
    assert_index_equals_rebuilt(root, index, tmp_path)


# --------------------------------------------------------------------------- the index


def test_catch_up_on_a_full_index_disk_fails_in_one_line_then_goes_on(
    disk: Disk, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    index = disk.path / "queue.db"
    seed(root, index=index)
    content = index_content(index)
    for k in range(200):  # lines the index has not seen (a `git pull`)
        append_event(root / "kitty-specs" / FEATURE, Event.new("pulled", f"b{k}"), fsync=False)
    disk.fill()
    run = cli(root, "status", index=index)
    assert_clean_failure(run, index)
    assert index_content(index) == content
    with EventStore(root, index_path=index) as store:
        for call in (store.status, store.pending, store.requeue, store.catch_up):
            with pytest.raises(DiskFullError) as info:
                call()
            assert info.value.path == str(index)
            assert isinstance(info.value.__cause__, sqlite3.Error)
    assert index_content(index) == content
    disk.free()
    run = cli(root, "status", "--json", index=index)
    assert run.code == 0, run
    assert json.loads(run.out)["features"][FEATURE]["events"] == 203
    assert_index_equals_rebuilt(root, index, tmp_path)


def test_a_first_index_on_a_full_disk_leaves_no_empty_file_behind(disk: Disk) -> None:
    """The first command of a clone, on a full disk: no empty ``queue.db`` and no empty
    ``.gitignore`` (which would never be written again, and let git see the index)."""
    root = disk.path / "root"
    (root / ".git").mkdir(parents=True)
    feature_dir = root / "kitty-specs" / FEATURE
    first = append_event(feature_dir, Event.new("t", "a"))
    before = files(root)
    disk.fill()
    run = cli(root, "status")
    assert_clean_failure(run, disk.path)
    assert files(root) == before
    elsewhere = disk.path / "indexes" / "queue.db"
    elsewhere.parent.mkdir()
    run = cli(root, "status", index=elsewhere)
    assert_clean_failure(run, elsewhere)
    assert os.listdir(elsewhere.parent) == []
    disk.free()
    run = cli(root, "status", "--json")
    assert run.code == 0, run
    assert json.loads(run.out)["features"][FEATURE]["events"] == 1
    assert (root / ".replaylog" / ".gitignore").read_text() == "*\n"
    assert ids_in_log(root) == [first.event_id]


def test_rebuild_index_on_a_full_disk_keeps_the_old_index_and_leaves_no_temporary_file(
    disk: Disk, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    index = disk.path / "queue.db"
    for k in range(2000):
        append_event(root / "kitty-specs" / FEATURE, Event.new("t", f"a{k}"), fsync=False)
    with EventStore(root, index_path=index) as store:
        store.status()
        store.index.conn.execute("UPDATE events SET status = 'delivered' WHERE line <= 10")
    content = index_content(index)
    before = files(disk.path)
    failures = 0
    for pages in (0, 4, 16, 48):  # none, then part of what the new index needs
        disk.fill(leave=pages * PAGE)
        run = cli(root, "rebuild-index", index=index)
        assert_clean_failure(run, index)
        assert "cannot rebuild the index" in run.err
        assert files(disk.path) == before, pages  # no 0-byte or partial temporary file
        assert index_content(index) == content
        failures += 1
    with EventStore(root, index_path=index) as store, pytest.raises(DiskFullError) as info:
        store.rebuild_index()
    assert info.value.path == str(index)
    assert files(disk.path) == before
    disk.free()
    run = cli(root, "rebuild-index", "--json", index=index)
    assert run.code == 0, run
    assert json.loads(run.out) == {"features": 1, "events": 2000}
    assert index_content(index) == content  # delivery state carried over
    assert failures == 4


def test_rebuild_index_at_every_fill_level_fails_cleanly_or_carries_the_delivery_state(
    disk: Disk, tmp_path: Path
) -> None:
    """From no free page up: each rebuild fails in one line, leaving the old index and no
    temporary file, until the first that succeeds, which has kept every delivery state
    (none dropped because the old index could not be opened on the full disk)."""
    root = tmp_path / "root"
    root.mkdir()
    index = disk.path / "queue.db"
    for k in range(1500):
        append_event(root / "kitty-specs" / FEATURE, Event.new("t", f"a{k}"), fsync=False)
    with EventStore(root, index_path=index) as store:
        store.status()
        store.index.conn.execute("UPDATE events SET status = 'delivered' WHERE line % 3 = 0")
    content = index_content(index)
    before = files(disk.path)
    for pages in range(0, 256):
        # No shared-memory file (as after a reboot): opening the old index to read its
        # delivery state needs disk space too.
        Path(f"{index}-shm").unlink(missing_ok=True)
        disk.fill(leave=pages * PAGE)
        with EventStore(root, index_path=index) as store:
            try:
                store.rebuild_index()
            except DiskFullError as exc:
                assert exc.path == str(index) and "rebuild-index" not in str(exc)
                assert files(disk.path) == before, pages
                assert index_content(index) == content, pages
                continue
        break
    else:
        pytest.fail("no fill level let the rebuild through")
    print(f"\nrebuild-index on a full disk: failed cleanly up to {pages - 1} free pages")
    assert index_content(index) == content  # every delivery state carried over


def test_a_large_catch_up_on_a_full_disk_is_a_disk_error_and_keeps_the_index(
    big_disk: Disk, tmp_path: Path
) -> None:
    """A catch-up larger than SQLite's page cache writes pages before its COMMIT: the disk
    fills in the middle of the transaction, which SQLite rolls back by itself."""
    root = tmp_path / "root"
    root.mkdir()
    index = big_disk.path / "queue.db"
    seed(root, index=index)
    content = index_content(index)
    lines = b"".join(Event.new("pulled", f"b{k}", {"k": k}).to_line() for k in range(40_000))
    with open(log_file(root), "ab") as f:
        f.write(lines)
    big_disk.fill(leave=256 * PAGE)
    with EventStore(root, index_path=index) as store:
        with pytest.raises(DiskFullError) as info:
            store.status()
        assert info.value.path == str(index)
        assert index_content(index) == content
        big_disk.free()
        assert store.status()["features"][FEATURE]["events"] == 40_003  # the same store
    assert_index_equals_rebuilt(root, index, tmp_path)


def test_replay_on_a_full_disk_keeps_every_outcome_it_recorded(disk: Disk, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    index = disk.path / "queue.db"
    total = 1000
    for k in range(total):
        append_event(root / "kitty-specs" / FEATURE, Event.new("t", f"a{k}"), fsync=False)
    with EventStore(root, index_path=index) as store:
        store.status()
    with Receiver() as server, EventStore(root, index_path=index) as store:
        store.status()
        disk.fill(leave=24 * PAGE)  # room for the records of a few batches, not of all
        with pytest.raises(DiskFullError) as info:
            store.replay(server.url, batch_size=20, max_retries=0)
        assert info.value.path == str(index) and FULL in str(info.value)
        delivered = store.status()["totals"]["delivered"]
        assert 0 < delivered < total and delivered <= len(server.events)
        disk.free()
        report = store.replay(server.url, batch_size=500)
        assert store.status()["totals"] == {
            "events": total,
            "pending": 0,
            "delivered": total,
            "failed": 0,
        }
        assert report.accepted == total - delivered
        assert len(server.events) == total
    print(f"\nreplay on a full disk: {delivered} of {total} recorded before it stopped")
    assert_index_equals_rebuilt(root, index, tmp_path)


# --------------------------------------------------------------------------- repair, merge


def test_a_move_whose_status_json_the_full_disk_refuses_warns_naming_the_device(
    disk: Disk, tmp_path: Path
) -> None:
    # The line is durable (it fits in the log's last page), so the move has happened:
    # a success with a warning that names status.json and the disk, as every command does.
    root = disk.path / "root"
    feature = root / "kitty-specs" / "demo"
    feature.mkdir(parents=True)
    (feature / "status.json").write_text("{}\n")
    index = tmp_path / "index" / "queue.db"
    first = cli(root, "move", "demo", "WP01", "--to", "planned", "--actor", "a", index=index)
    assert first.code == 0, first
    status_before = (feature / "status.json").read_bytes()
    disk.fill()
    run = cli(root, "move", "demo", "WP01", "--to", "claimed", "--actor", "a", index=index)
    assert run.code == 0, run
    assert "is in the log, but" in run.err and str(feature / "status.json") in run.err
    assert FULL in run.err and "mounted at " + str(disk.path) in run.err
    assert ".tmp" not in run.err and "Errno" not in run.err
    assert (feature / "status.json").read_bytes() == status_before
    assert sorted(p.name for p in feature.iterdir()) == ["status.events.jsonl", "status.json"]
    assert log_file(root, "demo").read_text().count("\n") == 2


def test_repair_on_a_full_disk_moves_all_of_the_torn_bytes_or_nothing(
    disk: Disk, tmp_path: Path
) -> None:
    root = disk.path / "root"
    root.mkdir()
    index = tmp_path / "index" / "queue.db"
    acknowledged = seed(root, index=index)
    log = log_file(root)
    torn = b'{"event_id": "' + b"x" * (60 * 1024)  # 60 KiB of a line that never ended
    with open(log, "ab") as f:
        f.write(torn)
    log_bytes = log.read_bytes()
    disk.fill(leave=16 * 1024)
    run = cli(root, "repair", FEATURE, index=index)
    assert_clean_failure(run, str(log) + ".torn-")
    assert "move the torn last line" in run.err
    assert log.read_bytes() == log_bytes
    assert sorted(os.listdir(log.parent)) == [EVENTS_FILENAME]  # no partial copy
    with EventStore(root, index_path=index) as store, pytest.raises(DiskFullError):
        store.repair(FEATURE)
    assert log.read_bytes() == log_bytes
    disk.free()
    run = cli(root, "repair", FEATURE, index=index)
    assert run.code == 0 and run.out.strip() == "repaired", run
    (aside,) = [p for p in log.parent.iterdir() if p.name != EVENTS_FILENAME]
    assert aside.read_bytes() == torn
    assert ids_in_log(root) == acknowledged


def test_merge_driver_on_a_full_disk_leaves_ours_as_it_was(disk: Disk, tmp_path: Path) -> None:
    base = disk.path / "base"
    ours = disk.path / "ours"
    theirs = tmp_path / "theirs"
    shared = [Event.new("t", f"s{k}").to_line() for k in range(5)]
    base.write_bytes(b"".join(shared))
    ours.write_bytes(b"".join(shared + [Event.new("t", "ours").to_line()]))
    theirs.write_bytes(b"".join(shared + [Event.new("t", f"th{k}").to_line() for k in range(50)]))
    ours_bytes = ours.read_bytes()
    disk.fill()
    argv = ["merge-driver", str(base), str(ours), str(theirs), "kitty-specs/f/" + EVENTS_FILENAME]
    run = cli(tmp_path, *argv)
    assert_clean_failure(run, ours)
    assert "OURS was left as it was" in run.err
    assert ours.read_bytes() == ours_bytes
    assert sorted(os.listdir(disk.path)) == [".filler", "base", "ours"]  # no temporary file
    from replaylog.gitmerge import merge_logs

    with pytest.raises(DiskFullError) as info:
        merge_logs(str(base), str(ours), str(theirs), argv[-1])
    assert info.value.path == str(ours)
    assert ours.read_bytes() == ours_bytes
    assert sorted(os.listdir(disk.path)) == [".filler", "base", "ours"]
    disk.free()
    run = cli(tmp_path, *argv)
    assert run.code == 0, run
    assert ours.read_bytes().startswith(ours_bytes)
    assert len(ours.read_bytes().splitlines()) == 6 + 50


# --------------------------------------------------------------------------- read-only


WRITING = [
    ("append", FEATURE, "--type", "t", "--aggregate", "a"),
    ("status",),
    ("rebuild-index",),
    ("requeue",),
    ("replay", "--url", DEAD_URL),
]


def _has_board() -> bool:
    done = subprocess.run(
        [sys.executable, "-m", "replaylog", "board", "--help"],
        capture_output=True,
        env=child_env(),
        check=False,
    )
    return done.returncode == 0


def test_a_read_only_filesystem_lets_log_and_verify_work_and_writers_say_so(disk: Disk) -> None:
    root = disk.path / "root"
    (root / ".git").mkdir(parents=True)
    acknowledged = seed(root)
    before = files(root)
    disk.remount("ro")
    run = cli(root, "log", FEATURE, "--json")
    assert run.code == 0 and not run.err, run
    assert [json.loads(line)["event_id"] for line in run.out.splitlines()] == acknowledged
    run = cli(root, "verify")
    assert run.code == 0, run
    if _has_board():
        run = cli(root, "board", FEATURE)
        assert run.code == 0, run
    for args in [*WRITING, ("repair", FEATURE)]:
        run = cli(root, *args)
        assert_clean_failure(run, disk.path, says="read-only filesystem")
    with EventStore(root) as store:
        assert [e.event_id for e in store.read(FEATURE)] == acknowledged
        assert [e.event_id for e in store.iter_events(FEATURE)] == acknowledged
        assert store.verify().ok
        for call, args in [
            (store.append, (FEATURE, "t", "a")),
            (store.status, ()),
            (store.repair, (FEATURE,)),
            (store.rebuild_index, ()),
        ]:
            with pytest.raises(AccessDeniedError) as info:
                call(*args)
            assert str(disk.path) in str(info.value.path), call
    disk.remount("rw")
    assert files(root) == before
    run = cli(root, "append", FEATURE, "--type", "t", "--aggregate", "a")
    assert run.code == 0, run


def test_read_only_logs_beside_a_writable_index(tmp_path: Path, disk: Disk) -> None:
    """The logs on a read-only bind mount: the index still follows them (status works);
    an append or a repair fails in one line naming the log."""
    source = disk.path / "root"
    source.mkdir()
    index = tmp_path / "index" / "queue.db"
    acknowledged = seed(source, index=index)
    root = tmp_path / "ro-root"
    root.mkdir()
    subprocess.run(["mount", "--bind", str(source), str(root)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(root)], check=True)
        log = log_file(root)
        run = cli(root, "status", "--json", index=index)
        assert run.code == 0, run
        assert json.loads(run.out)["features"][FEATURE]["events"] == len(acknowledged)
        for args in [("append", FEATURE, "--type", "t", "--aggregate", "a"), ("repair", FEATURE)]:
            run = cli(root, *args, index=index)
            assert_clean_failure(run, log, says="read-only filesystem")
        run = cli(root, "log", FEATURE, index=index)
        assert run.code == 0 and len(run.out.splitlines()) == len(acknowledged), run
    finally:
        _unmount(root)


def _as_nobody(work: Any) -> dict[str, Any]:
    """Run ``work()`` in a forked child that has dropped root for uid/gid 65534; returns
    what it returned (a dict), or the description of what it raised."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            result = work()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            result = {"raised": f"{type(exc).__module__}.{type(exc).__name__}: {exc}"}
            code = 1
        with os.fdopen(write_fd, "w") as f:
            json.dump(result, f)
        os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as f:
        data = f.read()
    os.waitpid(pid, 0)
    return dict(json.loads(data))


@pytest.fixture
def open_disk() -> Iterator[Disk]:
    """A small disk mounted where any user can reach it (pytest's folders are 0700)."""
    top = Path(tempfile.mkdtemp(prefix="replaylog-faults-"))
    top.chmod(0o755)
    path = top / "disk"
    try:
        _mount_tmpfs(path, DISK_SIZE)
        try:
            yield Disk(path)
        finally:
            _unmount(path)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_files_this_user_may_not_write_are_named_with_the_permission(open_disk: Disk) -> None:
    disk = open_disk
    root = disk.path / "root"
    (root / ".git").mkdir(parents=True)
    acknowledged = seed(root)
    os.chmod(disk.path, 0o755)
    for dirpath, dirs, names in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(dirpath, name), 0o755)
        for name in names:
            os.chmod(os.path.join(dirpath, name), 0o644)
    before = files(root)
    import replaylog.gitmerge  # noqa: F401
    import replaylog.index.delivery  # noqa: F401 - loaded before the child loses access to it
    import replaylog.reports  # noqa: F401

    def work() -> dict[str, Any]:
        out: dict[str, Any] = {}
        with EventStore(root, node_id="n") as store:
            out["read"] = [e.event_id for e in store.read(FEATURE)]
            out["verify"] = store.verify().ok
            for name, call in [
                ("append", lambda: store.append(FEATURE, "t", "a")),
                ("status", store.status),
                ("repair", lambda: store.repair(FEATURE)),
                ("rebuild_index", store.rebuild_index),
            ]:
                try:
                    call()
                    out[name] = "no error"
                except Exception as exc:  # noqa: BLE001 - reported to the parent
                    out[name] = [type(exc).__name__, str(exc)]
        return out

    result = _as_nobody(work)
    assert "raised" not in result, result
    assert result["read"] == acknowledged and result["verify"] is True
    for name in ("append", "status", "repair", "rebuild_index"):
        kind, message = result[name]
        assert kind == "AccessDeniedError", result
        assert "permission denied" in message and str(root) in message, result
        assert not any(wrong in message for wrong in WRONG_ADVICE), result
    assert files(root) == before


# --------------------------------------------------------------------------- the edge


@pytest.mark.parametrize(
    ("error", "kind", "says"),
    [
        (sqlite3.OperationalError("database or disk is full"), DiskFullError, FULL),
        (sqlite3.DatabaseError("file is not a database"), BadIndexError, "rebuild-index"),
        (sqlite3.DatabaseError("database disk image is malformed"), BadIndexError, "rebuild"),
        (OSError(errno.ENOSPC, "No space left on device"), DiskFullError, FULL),
        (OSError(errno.EROFS, "Read-only file system"), AccessDeniedError, "read-only"),
        (OSError(errno.EACCES, "Permission denied"), AccessDeniedError, "permission denied"),
        (OSError(errno.EIO, "Input/output error"), DiskError, "an I/O error on the device"),
    ],
)
def test_low_level_errors_become_the_trees_errors_with_the_path(
    tmp_path: Path, error: Exception, kind: type[ReplaylogError], says: str
) -> None:
    index = tmp_path / "queue.db"
    mapped = translate(error, path=str(index), index=str(index))
    assert type(mapped) is kind
    assert str(index) in str(mapped) and says in str(mapped)
    if kind is not BadIndexError:
        assert "rebuild-index" not in str(mapped)


def test_a_damaged_index_still_names_rebuild_index(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    index = tmp_path / "queue.db"
    index.write_bytes(b"not a database at all" * 100)
    with EventStore(root, index_path=index) as store, pytest.raises(BadIndexError) as info:
        store.status()
    assert "rebuild-index" in str(info.value) and str(index) in str(info.value)


def test_sqlalchemy_errors_are_mapped_by_their_cause(tmp_path: Path) -> None:
    from sqlalchemy.exc import OperationalError

    index = str(tmp_path / "queue.db")
    wrapped = OperationalError("UPDATE events ...", {}, sqlite3.OperationalError("disk I/O error"))
    mapped = translate(wrapped, index=index)
    assert isinstance(mapped, DiskError) and index in str(mapped)
    full = OperationalError("UPDATE", {}, sqlite3.OperationalError("database or disk is full"))
    assert isinstance(translate(full, index=index), DiskFullError)


def test_the_low_level_log_functions_raise_only_replaylog_errors_on_a_full_or_read_only_disk(
    disk: Disk,
) -> None:
    from replaylog.log import append_events, read_events, repair_log

    feature_dir = disk.path / "kitty-specs" / FEATURE
    first = append_event(feature_dir, Event.new("t", "a"))
    with open(log_file(disk.path), "ab") as f:
        f.write(b'{"torn": ' + b"x" * 3 * PAGE)
    log_bytes = log_file(disk.path).read_bytes()
    disk.fill()
    big = Event.new("t", "a", {"text": "x" * 3 * PAGE})
    with pytest.raises(DiskFullError, match="move the torn last line"):
        repair_log(feature_dir)
    assert log_file(disk.path).read_bytes() == log_bytes
    disk.free()
    assert repair_log(feature_dir) is not None
    log_bytes = log_file(disk.path).read_bytes()
    disk.fill()
    with pytest.raises(DiskFullError, match=str(log_file(disk.path))):
        append_event(feature_dir, big)
    with pytest.raises(DiskFullError, match="cannot append to the log"):
        append_events(feature_dir, [big, Event.new("t", "b")])
    assert log_file(disk.path).read_bytes() == log_bytes
    disk.free()
    disk.remount("ro")
    assert [e.event_id for e in read_events(feature_dir)] == [first.event_id]
    with pytest.raises(AccessDeniedError, match="read-only filesystem"):
        append_event(feature_dir, Event.new("t", "a"))
    disk.remount("rw")
    assert log_file(disk.path).read_bytes() == log_bytes


def test_a_full_disk_with_json_is_one_error_object_of_its_kind(disk: Disk) -> None:
    root = disk.path / "root"
    (root / ".git").mkdir(parents=True)
    seed(root)
    disk.fill()
    run = cli(root, "status", "--json")
    assert run.code == 1 and not run.err, run
    error = json.loads(run.out)["error"]
    assert error["type"] == "DiskFullError" and FULL in error["message"]
