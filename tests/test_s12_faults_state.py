"""SPEC section 12, machine faults: maintenance beside replay, and state that must survive.

- a ``rebuild-index`` while a ``replay`` runs loses no outcome that the replay recorded;
- delivery state is dropped only by ``rebuild-index --reset-delivery``: events absent
  for a while (another ``--logs-dir``, a checkout of an older commit) get it back;
- any change to bytes the index has taken in is noticed and re-indexed, wherever it is.

Real processes, a real HTTP server on 127.0.0.1 (tests/receiver.py), real git.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cli_run import Run
from receiver import Receiver, RecordedRequest

from replaylog import EVENTS_FILENAME, Event, EventStore

pytestmark = pytest.mark.reliability

FEATURE = "feat"


def cli(root: Path, *args: str, timeout: float = 60.0) -> Run:
    """``python -m replaylog --root ROOT ARGS`` in a real process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLAYLOG_")}
    env["REPLAYLOG_FSYNC"] = "0"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "replaylog", "--root", str(root), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    return Run(tuple(args), proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)


def start_cli(root: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLAYLOG_")}
    env["REPLAYLOG_FSYNC"] = "0"
    return subprocess.Popen(
        [sys.executable, "-m", "replaylog", "--root", str(root), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def status(root: Path, *extra: str) -> dict[str, Any]:
    run = cli(root, *extra, "status", "--json")
    assert run.code == 0, run
    return json.loads(run.out)  # type: ignore[no-any-return]


def totals(root: Path, *extra: str) -> dict[str, int]:
    return status(root, *extra)["totals"]  # type: ignore[no-any-return]


def fill(root: Path, count: int, feature: str = FEATURE) -> list[str]:
    with EventStore(root, fsync=False) as store:
        events = store.append_many(
            feature, [{"event_type": "T", "aggregate_id": f"a{i}"} for i in range(count)]
        )
    return [e.event_id for e in events]


def slow(seconds: float) -> Any:
    def hook(request: RecordedRequest) -> None:
        time.sleep(seconds)  # then the default answer: stored and accepted

    return hook


# --------------------------------------------------------------------------- beside replay


def wait_for_requests(server: Receiver, count: int, *, seconds: float = 30) -> None:
    """Until the server has seen ``count`` requests: the replay is under way."""
    deadline = time.monotonic() + seconds
    while len(server.requests) < count and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_rebuild_during_a_replay_loses_no_outcome_the_replay_recorded(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    ids = fill(root, 40)
    with Receiver() as server:
        server.hook = slow(0.05)
        replay = start_cli(root, "replay", "--url", server.url, "--batch-size", "1", "--json")
        try:
            wait_for_requests(server, 5)
            assert len(server.requests) >= 5, "the replay did not start"
            rebuild = cli(root, "rebuild-index", "--json")
            out, err = replay.communicate(timeout=60)
        finally:
            if replay.poll() is None:
                replay.kill()
                replay.communicate()
        assert replay.returncode == 0, (out, err)
        assert json.loads(out)["accepted"] == 40
        assert rebuild.code == 0, rebuild
        assert json.loads(rebuild.out) == {"features": 1, "events": 40}
        # What the replay recorded is in the index that is now in place.
        assert totals(root) == {"events": 40, "pending": 0, "delivered": 40, "failed": 0}
        again = cli(root, "replay", "--url", server.url, "--json")
        assert again.code == 0 and json.loads(again.out)["accepted"] == 0, again
        assert sorted(server.deliveries) == sorted(ids)
        assert set(server.deliveries.values()) == {1}, "an event was sent twice"


def test_a_rebuild_waits_for_a_replay_a_bounded_time_and_says_what_it_waits_for(
    tmp_path: Path,
) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    fill(root, 6)
    with Receiver() as server:
        server.hook = slow(1.0)
        replay = start_cli(root, "replay", "--url", server.url, "--batch-size", "1")
        try:
            wait_for_requests(server, 1)
            refused = cli(root, "rebuild-index", "--wait", "1.5")
        finally:
            replay.kill()
            replay.communicate()
    assert refused.code == 1, refused
    lines = refused.err.splitlines()
    assert lines[0].startswith("replaylog: waiting for the replay running on this index"), refused
    assert "replay.lock" in lines[0] and "up to 1.5 s" in lines[0], refused
    assert lines[-1].startswith("Error: a replay is still running on this index after 1.5 s")
    assert "the index was left as it was" in lines[-1], refused
    assert not list((root / ".replaylog").glob("queue.db.rebuild-*"))


def test_a_requeue_during_a_replay_loses_no_outcome_the_replay_recorded(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    ids = fill(root, 30)
    with Receiver() as server:
        server.reject_ids = {ids[0]: "no"}
        first = cli(root, "replay", "--url", server.url, "--batch-size", "30")
        assert first.code == 0, first
        assert totals(root)["failed"] == 1
        fill(root, 30)
        server.hook = slow(0.03)
        replay = start_cli(root, "replay", "--url", server.url, "--batch-size", "1", "--json")
        try:
            wait_for_requests(server, 5)
            requeue = cli(root, "requeue", "--json")
            out, err = replay.communicate(timeout=60)
        finally:
            if replay.poll() is None:
                replay.kill()
                replay.communicate()
    assert requeue.code == 0 and json.loads(requeue.out) == {"requeued": 1}, requeue
    assert replay.returncode == 0, (out, err)
    delivered = totals(root)["delivered"]
    assert delivered == 29 + json.loads(out)["accepted"], totals(root)
    assert delivered == len(server.events)


def test_a_repair_during_a_replay_loses_no_outcome_the_replay_recorded(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    ids = fill(root, 30)
    log = root / "kitty-specs" / FEATURE / EVENTS_FILENAME
    with Receiver() as server:
        server.hook = slow(0.03)
        replay = start_cli(root, "replay", "--url", server.url, "--batch-size", "1", "--json")
        try:
            wait_for_requests(server, 5)
            with open(log, "ab") as f:
                f.write(b'{"event_id": "torn by a crash')  # no newline, not JSON
            repair = cli(root, "repair", FEATURE, "--json")
            out, err = replay.communicate(timeout=60)
        finally:
            if replay.poll() is None:
                replay.kill()
                replay.communicate()
    assert repair.code == 0 and json.loads(repair.out) == {"repaired": True}, repair
    assert replay.returncode == 0, (out, err)
    assert json.loads(out)["accepted"] == 30
    assert totals(root) == {"events": 30, "pending": 0, "delivered": 30, "failed": 0}
    assert sorted(server.deliveries) == sorted(ids)


# --------------------------------------------------------------------------- state survives


def deliver_all(root: Path, server: Receiver) -> None:
    run = cli(root, "replay", "--url", server.url, "--json")
    assert run.code == 0, run


def test_delivery_state_survives_a_command_run_with_another_logs_dir(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    fill(root, 12)
    fill(root, 5, feature="other-feat")
    (root / "elsewhere" / "x").mkdir(parents=True)
    with Receiver() as server:
        deliver_all(root, server)
        assert totals(root) == {"events": 17, "pending": 0, "delivered": 17, "failed": 0}
        assert totals(root, "--logs-dir", "elsewhere")["events"] == 0
        assert totals(root) == {"events": 17, "pending": 0, "delivered": 17, "failed": 0}
        again = cli(root, "replay", "--url", server.url, "--json")
        assert json.loads(again.out)["accepted"] == 0, again
        assert set(server.deliveries.values()) == {1}


def git(repo: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@example.invalid",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@example.invalid",
        },
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_delivery_state_survives_a_checkout_of_an_older_commit_and_back(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    fill(root, 10)
    fill(root, 4, feature="gone-later")
    git(root, "add", "kitty-specs")
    git(root, "commit", "-q", "-m", "first")
    fill(root, 15)
    git(root, "rm", "-q", "-r", "kitty-specs/gone-later")
    git(root, "commit", "-q", "-a", "-m", "second")
    with Receiver() as server:
        deliver_all(root, server)
        assert totals(root) == {"events": 25, "pending": 0, "delivered": 25, "failed": 0}
        git(root, "checkout", "-q", "HEAD~1")
        # The older commit: 10 events of feat (delivered) and gone-later's 4, never sent.
        assert totals(root) == {"events": 14, "pending": 4, "delivered": 10, "failed": 0}
        deliver_all(root, server)
        git(root, "checkout", "-q", "main")
        assert totals(root) == {"events": 25, "pending": 0, "delivered": 25, "failed": 0}
        git(root, "checkout", "-q", "HEAD~1")
        assert totals(root) == {"events": 14, "pending": 0, "delivered": 14, "failed": 0}
        git(root, "checkout", "-q", "main")
        # A rebuild carries what the index remembers of absent events, too.
        rebuilt = cli(root, "rebuild-index", "--json")
        assert rebuilt.code == 0, rebuilt
        git(root, "checkout", "-q", "HEAD~1")
        assert totals(root) == {"events": 14, "pending": 0, "delivered": 14, "failed": 0}
        git(root, "checkout", "-q", "main")
        again = cli(root, "replay", "--url", server.url, "--json")
        assert json.loads(again.out)["accepted"] == 0, again
        assert len(server.deliveries) == 29 and set(server.deliveries.values()) == {1}
        # Only --reset-delivery forgets it.
        reset = cli(root, "rebuild-index", "--reset-delivery")
        assert reset.code == 0, reset
        git(root, "checkout", "-q", "HEAD~1")
        assert totals(root)["pending"] == 14


def test_failed_state_and_retry_counts_come_back_with_their_events(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    ids = fill(root, 3)
    with Receiver() as server:
        server.reject_ids = {ids[1]: "bad event"}
        deliver_all(root, server)
    log = root / "kitty-specs" / FEATURE / EVENTS_FILENAME
    kept = log.read_bytes()
    log.rename(tmp_path / "aside.jsonl")
    assert totals(root)["events"] == 0
    log.write_bytes(kept)
    with EventStore(root) as store:
        store.status()
        rows = store.index.conn.execute(
            "SELECT event_id, status, retry_count, last_error FROM events ORDER BY line"
        ).fetchall()
    assert rows == [
        (ids[0], "delivered", 0, None),
        (ids[1], "failed", 1, "bad event"),
        (ids[2], "delivered", 0, None),
    ]


# --------------------------------------------------------------------------- changed bytes


def edit_in_place(path: Path, old: bytes, new: bytes) -> None:
    """Overwrite bytes of the log where they are (same inode, same size)."""
    assert len(old) == len(new)
    data = path.read_bytes()
    at = data.index(old)
    time.sleep(0.05)  # a later modification time than the index saw
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(new)


def test_a_same_size_edit_beyond_the_first_64_kib_is_noticed_and_indexed_again(
    tmp_path: Path,
) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    ids = fill(root, 1500)
    log = root / "kitty-specs" / FEATURE / EVENTS_FILENAME
    assert log.stat().st_size > 4 * 64 * 1024
    assert totals(root)["events"] == 1500
    victim = ids[1000]  # far beyond the first 64 KiB, and not the last line
    assert log.read_bytes().index(victim.encode()) > 3 * 64 * 1024
    replacement = victim[:-4] + ("ZZZZ" if not victim.endswith("ZZZZ") else "YYYY")
    edit_in_place(log, victim.encode(), replacement.encode())
    with Receiver() as server:
        run = cli(root, "replay", "--url", server.url, "--json")
        assert run.code == 0, run
        assert json.loads(run.out)["accepted"] == 1500
        assert replacement in server.events and victim not in server.events


def test_a_same_size_edit_of_a_delivered_line_is_indexed_again(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    fill(root, 1500)
    log = root / "kitty-specs" / FEATURE / EVENTS_FILENAME
    with Receiver() as server:
        deliver_all(root, server)
    edit_in_place(log, b'"aggregate_id": "a1200"', b'"aggregate_id": "b1200"')
    with EventStore(root) as store:
        assert store.status()["totals"]["delivered"] == 1500
        row = store.index.conn.execute(
            "SELECT aggregate_id FROM events WHERE line = 1201"
        ).fetchone()
    assert row == ("b1200",)


_BY_HAND = Event.new("T", "by-hand", lamport_clock=9999, node_id="elsewhere").to_line()


def _indexed_log_and_an_edit(tmp_path: Path) -> tuple[Path, Path, str, str]:
    """A project of 1,500 indexed events; its log, an id far beyond the first 64 KiB
    (not the last line) and the id of the same length that an edit puts in its place."""
    root = tmp_path / "proj"
    root.mkdir()
    ids = fill(root, 1500)
    assert totals(root)["events"] == 1500
    victim = ids[1000]
    replacement = victim[:-4] + ("ZZZZ" if not victim.endswith("ZZZZ") else "YYYY")
    return root, root / "kitty-specs" / FEATURE / EVENTS_FILENAME, victim, replacement


def test_an_edit_made_together_with_an_append_is_indexed_again_by_the_next_run(
    tmp_path: Path,
) -> None:
    # The same file grown is read from where the index stopped, reading only the new
    # bytes (SPEC section 4); an edit made in place together with the growth is noticed
    # when replay reads the line back, and the log is indexed again then: one run says
    # so, the next delivers everything.
    root, log, victim, replacement = _indexed_log_and_an_edit(tmp_path)
    edit_in_place(log, victim.encode(), replacement.encode())
    with open(log, "ab") as f:
        f.write(_BY_HAND)
    with Receiver() as server:
        runs = [cli(root, "replay", "--url", server.url, "--json") for _ in range(2)]
        assert runs[-1].code == 0, runs
        if runs[0].code != 0:
            message = json.loads(runs[0].out)["error"]["message"]
            assert "it is indexed again by the next command: run again" in message, runs[0]
        assert replacement in server.events and victim not in server.events
        assert len(server.events) == 1501
    assert totals(root) == {"events": 1501, "pending": 0, "delivered": 1501, "failed": 0}


def test_a_log_replaced_by_a_longer_file_with_an_old_line_changed_is_noticed_at_once(
    tmp_path: Path,
) -> None:
    # A checkout or a merge puts a new file in the log's place: grown or not, every byte
    # the index took in is checked (by its CRC), so the first command indexes it again.
    root, log, victim, replacement = _indexed_log_and_an_edit(tmp_path)
    new_file = log.with_name("checked-out")
    new_file.write_bytes(log.read_bytes().replace(victim.encode(), replacement.encode()) + _BY_HAND)
    os.replace(new_file, log)
    with Receiver() as server:
        run = cli(root, "replay", "--url", server.url, "--json")
        assert run.code == 0, run
        assert json.loads(run.out)["accepted"] == 1501
        assert replacement in server.events and victim not in server.events
    assert totals(root) == {"events": 1501, "pending": 0, "delivered": 1501, "failed": 0}


def test_an_edit_whose_modification_time_was_set_back_is_noticed(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    ids = fill(root, 50)
    log = root / "kitty-specs" / FEATURE / EVENTS_FILENAME
    assert totals(root)["events"] == 50
    seen = log.stat()
    victim = ids[20]
    replacement = victim[:-4] + ("ZZZZ" if not victim.endswith("ZZZZ") else "YYYY")
    edit_in_place(log, victim.encode(), replacement.encode())
    os.utime(log, ns=(seen.st_atime_ns, seen.st_mtime_ns))  # as `touch -r` does
    assert log.stat().st_mtime_ns == seen.st_mtime_ns and log.stat().st_size == seen.st_size
    with EventStore(root) as store:
        store.status()  # catches up first
        ids_now = [e.event_id for e in store.read(FEATURE)]
        indexed = {r[0] for r in store.index.conn.execute("SELECT event_id FROM events")}
    assert replacement in ids_now and indexed == set(ids_now)
