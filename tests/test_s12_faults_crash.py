"""SPEC section 12 (for sections 3, 4 and 5), SIGKILL: a crash at any moment loses nothing.

Child processes are killed with SIGKILL at random moments, many times over, in every
activity that writes: single appends (two writers at once, fsync on), batch appends,
the index catching up with logs that grew behind its back (``status``),
``rebuild-index`` over a sizeable log, and ``replay`` between sending a batch and
recording its answer. After every kill:

- every append that returned is in the log (the child prints each returned event id
  on stdout, one flushed line per append; a line cut by the kill is not a report);
- the logs verify, or each has at most one torn tail, which ``repair`` fixes, after
  which they verify;
- the index opens (or, failing that, is rebuilt) and then equals an index rebuilt from
  the logs into another file (feature, line, event id, Lamport value); its clock is at
  least every Lamport value in the logs, and each log's values still grow line by line;
- the next replay ends with every event of the logs ``delivered`` and on the server,
  which may have seen an event twice, never with two contents.

Kill delays and sizes come from a seeded ``random.Random``: the seed is printed and is
in every assertion message (``CRASH_SEED=<n>`` replays the same choices; the timing of
the kills is the operating system's). Each test prints a one-line summary; run with
``-s`` to read them. Default sizes keep the file quick; ``pytest --big`` kills 100
times per activity.
"""

from __future__ import annotations

import glob
import json
import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from receiver import Receiver, RecordedRequest

from replaylog import EVENTS_FILENAME, BadIndexError, Event, EventStore

pytestmark = pytest.mark.reliability

SEED = int(os.environ.get("CRASH_SEED") or random.SystemRandom().randrange(2**32))
KILLS, BIG_KILLS = 10, 100
GENERATION = 5  # rounds on one project before a fresh one, so checks stay cheap
PEER_NODE = "crash-peer-node"

_PREAMBLE = r"""
import os, random, sys, time

def say(text):
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
"""

APPENDER = (
    _PREAMBLE
    + r"""
from replaylog import EventStore, StoreError

root, features, seed = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
rng = random.Random(seed)
store = EventStore(root, fsync=True)
say("ready")
i = 0
while True:
    feature = features[i % len(features)]
    try:
        event = store.append(
            feature, "crash.tick", f"agg-{i % 5}", {"i": i, "pad": "x" * rng.randint(0, 600)}
        )
    except StoreError as exc:
        if "repair" not in str(exc):
            raise
        # The other writer was killed halfway through a line: appends are refused
        # until repair (SPEC section 3). Wait for the kill.
        say("refused")
        time.sleep(3600)
    say("ok " + event.event_id)
    i += 1
"""
)

BATCH_APPENDER = (
    _PREAMBLE
    + r"""
from replaylog import EventStore

root, feature, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(seed)
store = EventStore(root, fsync=True)
say("ready")
while True:
    size = rng.choice([1, 2, rng.randint(3, 20), rng.randint(20, 100)])
    pad = 300
    if rng.random() < 0.2:
        # About a megabyte in one write: a kill can land inside the write itself.
        size, pad = 40, 50_000
    items = [
        {
            "event_type": "crash.batch",
            "aggregate_id": f"agg-{k % 3}",
            "payload": {"k": k, "pad": "y" * rng.randint(0, pad)},
        }
        for k in range(size)
    ]
    events = store.append_many(feature, items)
    say("ok " + " ".join(e.event_id for e in events))
"""
)

CATCHER_UP = (
    _PREAMBLE
    + r"""
import replaylog.index.delivery  # SQLAlchemy loaded before "ready": the kill window is the work
from replaylog import EventStore

store = EventStore(sys.argv[1])
say("ready")
store.status()
say("done")
"""
)

REBUILDER = (
    _PREAMBLE
    + r"""
import alembic.command, alembic.config, sqlalchemy  # imported before "ready", as above
import replaylog.index.rebuild
from replaylog import EventStore

store = EventStore(sys.argv[1])
say("ready")
store.rebuild_index()
say("done")
"""
)

REPLAYER = (
    _PREAMBLE
    + r"""
from replaylog import EventStore

root, url, batch_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = EventStore(root)
say("ready")
store.replay(url, batch_size=batch_size, max_retries=0, backoff_base=0, timeout=30)
say("done")
"""
)


def child_env() -> dict[str, str]:
    """The test's environment without any REPLAYLOG_* setting of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLAYLOG_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Child:
    """A Python child running ``code``; its whole stdout lines are collected as they come."""

    def __init__(self, code: str, *args: str, err: Path) -> None:
        self._err_path = err
        self._err: IO[bytes] = open(err, "wb")  # noqa: SIM115 - closed in kill()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdout=subprocess.PIPE,
            stderr=self._err,
            env=child_env(),
            cwd=err.parent,
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.done = threading.Event()
        self.settled = threading.Event()  # "done" printed, or the output ended
        self.ready_at = self.done_at = 0.0
        self.acks = 0  # "ok" lines so far: appends that returned
        self._progress = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            if not raw.endswith(b"\n"):
                break  # cut by the kill: not a report
            line = raw[:-1].decode()
            self.lines.append(line)
            if line.startswith("ok "):
                with self._progress:
                    self.acks += 1
                    self._progress.notify_all()
            elif line == "ready":
                self.ready_at = time.monotonic()
                self.ready.set()
            elif line == "done":
                self.done_at = time.monotonic()
                self.done.set()
                self.settled.set()
        self.ready.set()  # end of output: nobody waits for "ready" in vain
        self.settled.set()
        with self._progress:
            self._progress.notify_all()

    def wait_for_acks(self, count: int) -> None:
        """Until ``count`` appends have returned (or the child has stopped)."""
        with self._progress:
            self._progress.wait_for(lambda: self.acks >= count or self.settled.is_set(), 120)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> int:
        """SIGKILL (a no-op if it has exited), reap it, and return its exit status."""
        self.proc.send_signal(signal.SIGKILL)
        rc = self.proc.wait(timeout=60)
        self._reader.join(timeout=60)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self._err.close()
        return rc

    def stderr(self) -> str:
        return self._err_path.read_text(errors="replace")[-3000:]

    def acknowledged(self) -> list[str]:
        """Every event id whose append returned, as reported before the kill."""
        return [eid for line in self.lines if line.startswith("ok ") for eid in line.split()[1:]]

    @property
    def duration(self) -> float:
        return self.done_at - self.ready_at


def kill_at(
    children: list[Child],
    delays: list[float],
    where: str,
    *,
    after_acks: list[int] | None = None,
) -> list[bool]:
    """Kill each child ``delay`` seconds after all are ready; True where it was mid-work.

    With ``after_acks``, each child is killed ``delay`` seconds after its
    ``after_acks[i]``-th append returned instead, in the order given: so the volume
    written before a kill does not depend on the machine's speed. A child that printed
    "done" before its kill was not mid-work; any exit other than SIGKILL or a clean
    finish is a failure that shows the child's stderr.
    """
    for child in children:
        if not child.ready.wait(timeout=120) or child.proc.poll() is not None:
            rcs = [c.kill() for c in children]
            pytest.fail(f"{where}: a child did not start (exit {rcs}):\n{child.stderr()}")
    start = time.monotonic()
    mid_work = {}
    order = sorted(zip(children, delays, strict=True), key=lambda cd: cd[1])
    if after_acks is not None:
        order = list(zip(children, delays, strict=True))
    for k, (child, delay) in enumerate(order):
        if after_acks is not None:
            child.wait_for_acks(after_acks[k])
            start = time.monotonic()
        child.settled.wait(max(0.0, start + delay - time.monotonic()))
        rc = child.kill()
        finished = child.done.is_set()
        if not (rc == -signal.SIGKILL or (rc == 0 and finished)):
            pytest.fail(f"{where}: a child failed by itself (exit {rc}):\n{child.stderr()}")
        mid_work[id(child)] = not finished
    return [mid_work[id(c)] for c in children]


@dataclass
class Tally:
    """What the kills of one test did, for its summary line."""

    kills: int = 0  # SIGKILLs that hit a child before it finished its work
    finished: int = 0  # children that were done before their kill came
    acknowledged: int = 0  # appends that returned before a kill, each checked in the log
    events: int = 0  # events in the logs, over all projects of the test
    torn: int = 0  # torn tails repaired
    rebuilt: int = 0  # indexes that did not open after a kill and were rebuilt
    checks: int = 0
    notes: dict[str, int] = field(default_factory=dict)

    def note(self, key: str, n: int = 1) -> None:
        self.notes[key] = self.notes.get(key, 0) + n

    def count(self, mid_work: Iterable[bool]) -> None:
        for hit in mid_work:
            if hit:
                self.kills += 1
            else:
                self.finished += 1


def index_rows(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT feature, line, event_id, lamport FROM events ORDER BY feature, line"
    ).fetchall()


def delivery_rows(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    return conn.execute(
        'SELECT feature, line, "offset", length, event_id, lamport, status, retry_count,'
        " last_retry_at, last_error FROM events ORDER BY feature, line"
    ).fetchall()


def check_after_kill(
    root: Path,
    server: Receiver,
    acknowledged: Iterable[str],
    tally: Tally,
    where: str,
    *,
    failed: Iterable[str] = (),
) -> None:
    """Every promise that must hold after a kill (see the module docstring).

    ``failed``: the events that must be ``failed`` in the index (rejected on purpose);
    they are requeued before the final replay. Nothing else may be failed or pending
    once that replay is over.
    """
    tally.checks += 1
    with EventStore(root) as store:
        features = store.features()

        # The log: it verifies, or has at most one torn tail per log, which repair fixes.
        errors = [p for p in store.verify().problems if p.level == "error"]
        by_path: dict[str, list[str]] = {}
        for problem in errors:
            by_path.setdefault(problem.path, []).append(problem.message)
        for path, messages in by_path.items():
            assert len(messages) == 1 and "torn" in messages[0], f"{where}: {path}: {messages}"
            assert store.repair(Path(path).parent.name), f"{where}: repair did nothing: {path}"
            tally.torn += 1
        if errors:
            report = store.verify()
            assert report.ok, f"{where}: the logs do not verify after repair: {report.to_dict()}"

        # Every append that returned is in the log; Lamport values grow line by line.
        logs = {name: store.read_raw(name) for name in features}
        in_logs = {obj["event_id"]: obj for objs in logs.values() for obj in objs}
        acknowledged = list(acknowledged)
        lost = [eid for eid in acknowledged if eid not in in_logs]
        assert not lost, f"{where}: {len(lost)} acknowledged event(s) lost: {lost[:5]}"
        tally.acknowledged += len(acknowledged)
        for name, objs in logs.items():
            clocks = [obj["lamport_clock"] for obj in objs]
            back = [(a, b) for a, b in pairwise(clocks) if a >= b]
            assert not back, f"{where}: {name}: Lamport values go back: {back[:5]}"
        top = max((obj["lamport_clock"] for obj in in_logs.values()), default=0)

        # The index opens (or is rebuilt) and equals one rebuilt from the logs.
        try:
            store.status()
        except BadIndexError:
            tally.rebuilt += 1
            store.rebuild_index()
            store.status()
        kept = index_rows(store.index.conn)
        fresh_path = root / "fresh" / f"queue-{tally.checks}.db"
        with EventStore(root, index_path=fresh_path) as fresh:
            fresh.rebuild_index(reset_delivery=True)
            rebuilt = index_rows(fresh.index.conn)
            fresh_clock = fresh.index.clock()
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(f"{fresh_path}{suffix}"):
                os.unlink(f"{fresh_path}{suffix}")
        assert kept == rebuilt, (
            f"{where}: the index differs from a rebuilt one:"
            f" only kept {sorted(set(kept) - set(rebuilt))[:3]},"
            f" only rebuilt {sorted(set(rebuilt) - set(kept))[:3]}"
        )
        assert len(kept) == len(in_logs), f"{where}: {len(kept)} indexed, {len(in_logs)} logged"
        clock = store.index.clock()
        assert clock >= top, f"{where}: clock {clock} is below a logged Lamport value {top}"
        assert fresh_clock == top, f"{where}: a rebuilt clock is {fresh_clock}, not {top}"

        # The next replay delivers everything; the server never sees two contents.
        now_failed = {
            r[0]
            for r in store.index.conn.execute("SELECT event_id FROM events WHERE status = 'failed'")
        }
        assert now_failed == set(failed), f"{where}: failed {sorted(now_failed)[:5]}"
        if now_failed:
            store.requeue()
        store.replay(server.url, backoff_base=0.01, timeout=30, transport=plain_http())
        totals = store.status()["totals"]
        assert totals == {
            "events": len(in_logs),
            "pending": 0,
            "delivered": len(in_logs),
            "failed": 0,
        }, f"{where}: after the replay: {totals}"
        missing = [eid for eid in in_logs if eid not in server.events]
        assert not missing, f"{where}: {len(missing)} event(s) not on the server: {missing[:5]}"
        differ = [eid for eid, obj in in_logs.items() if server.events[eid] != obj]
        assert not differ, f"{where}: the server holds other content for {differ[:5]}"
        assert server.conflicts == [], f"{where}: one id, two contents: {server.conflicts[:5]}"


def plain_http() -> httpx.HTTPTransport:
    """A transport for http:// only: by default httpx loads the system's CA certificates
    for each client, a quarter of a second on a busy machine."""
    return httpx.HTTPTransport(verify=False)


def project(tmp_path: Path, round_no: int, tally: Tally, roots: list[Path]) -> Path:
    """The project of this round: a fresh one every GENERATION rounds."""
    root = tmp_path / f"project-{round_no // GENERATION}"
    if not roots or roots[-1] != root:
        if roots:
            tally.events += count_events(roots[-1])
        root.mkdir()
        roots.append(root)
    return root


def count_events(root: Path) -> int:
    with EventStore(root) as store:
        return sum(len(store.read_raw(name)) for name in store.features())


def hand_lines(rng: random.Random, count: int, first_clock: int) -> bytes:
    """``count`` canonical lines from another node, as a ``git pull`` would bring them."""
    out = []
    for k in range(count):
        event = Event.new(
            "peer.note",
            f"peer-{k % 4}",
            {"k": k, "note": "z" * rng.randint(0, 200)},
            node_id=PEER_NODE,
            lamport_clock=first_clock + k,
        )
        out.append(event.to_line())
    return b"".join(out)


def grow_by_hand(root: Path, feature: str, data: bytes) -> None:
    directory = root / "kitty-specs" / feature
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / EVENTS_FILENAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def rounds_limit(target: int) -> int:
    """How many rounds may be spent reaching ``target`` kills that hit work in progress."""
    return 4 * target + 5


# --------------------------------------------------------------------------- the tests


def test_sigkill_during_single_appends_loses_no_acknowledged_event(
    tmp_path: Path, big: bool
) -> None:
    rng = random.Random(SEED)
    target = BIG_KILLS if big else KILLS
    tally = Tally()
    roots: list[Path] = []
    with Receiver() as server:
        round_no = 0
        while tally.kills < target:
            assert round_no < rounds_limit(target), f"seed {SEED}: too few kills hit appends"
            root = project(tmp_path, round_no, tally, roots)
            # Two writers at once, one shared log and one each, both killed.
            writers = [
                Child(
                    APPENDER,
                    str(root),
                    f"shared,own-{k}",
                    str(rng.randrange(2**32)),
                    err=tmp_path / f"appender-{round_no}-{k}.err",
                )
                for k in range(2)
            ]
            acks = [rng.choice([0, rng.randint(1, 10), rng.randint(10, 60)]) for _ in writers]
            delays = [rng.uniform(0.0, 0.03) for _ in writers]
            where = (
                f"seed {SEED}, round {round_no}, kills {[round(d, 3) for d in delays]}s"
                f" after appends {acks}"
            )
            mid_work = kill_at(writers, delays, where, after_acks=acks)
            tally.count(mid_work)
            tally.note("refused", sum("refused" in w.lines for w in writers))
            acknowledged = [eid for w in writers for eid in w.acknowledged()]
            check_after_kill(root, server, acknowledged, tally, where)
            round_no += 1
        tally.events += count_events(roots[-1])
    print(
        f"\ncrash/appends: {tally.kills} kills, {tally.acknowledged} acknowledged events,"
        f" 0 lost; {tally.torn} torn tails repaired ({tally.notes.get('refused', 0)} appends"
        f" refused until then), {tally.rebuilt} indexes rebuilt, {tally.events} events"
        f" delivered (seed {SEED})"
    )


def test_sigkill_during_batch_appends_loses_no_acknowledged_batch(
    tmp_path: Path, big: bool
) -> None:
    rng = random.Random(SEED + 1)
    target = BIG_KILLS if big else KILLS
    tally = Tally()
    roots: list[Path] = []
    with Receiver() as server:
        round_no = 0
        while tally.kills < target:
            assert round_no < rounds_limit(target), f"seed {SEED}: too few kills hit batches"
            root = project(tmp_path, round_no, tally, roots)
            writer = Child(
                BATCH_APPENDER,
                str(root),
                "batches",
                str(rng.randrange(2**32)),
                err=tmp_path / f"batcher-{round_no}.err",
            )
            acks, delay = rng.randint(0, 6), rng.uniform(0.0, 0.05)
            where = f"seed {SEED}, round {round_no}, kill {delay:.3f}s after batch {acks}"
            tally.count(kill_at([writer], [delay], where, after_acks=[acks]))
            acknowledged = writer.acknowledged()
            tally.note("batches", sum(line.startswith("ok ") for line in writer.lines))
            check_after_kill(root, server, acknowledged, tally, where)
            round_no += 1
        tally.events += count_events(roots[-1])
    print(
        f"\ncrash/append_many: {tally.kills} kills, {tally.notes.get('batches', 0)} acknowledged"
        f" batches of {tally.acknowledged} events, 0 lost; {tally.torn} torn tails repaired,"
        f" {tally.rebuilt} indexes rebuilt, {tally.events} events delivered (seed {SEED})"
    )


def test_sigkill_during_index_catch_up_leaves_an_index_equal_to_a_rebuild(
    tmp_path: Path, big: bool
) -> None:
    rng = random.Random(SEED + 2)
    target = BIG_KILLS if big else KILLS
    tally = Tally()
    roots: list[Path] = []
    clocks: dict[tuple[Path, str], int] = {}
    expected = 0.0  # how long a catch-up of one round's growth takes, once measured
    with Receiver() as server:
        round_no = 0
        while tally.kills < target:
            assert round_no < rounds_limit(target), f"seed {SEED}: too few kills hit catch-up"
            root = project(tmp_path, round_no, tally, roots)
            # The logs grow behind the index's back, as a `git pull` makes them grow:
            # four features (a new one now and then), lines from another node whose
            # clock runs ahead now and then.
            features = ["alpha", "beta", "gamma", f"new-{round_no // 3}"]
            for name in features:
                first = clocks.get((root, name), 0) + 1 + rng.choice([0, 0, 0, 500])
                count = rng.randint(50, 300)
                grow_by_hand(root, name, hand_lines(rng, count, first))
                clocks[root, name] = first + count - 1
            status = Child(CATCHER_UP, str(root), err=tmp_path / f"status-{round_no}.err")
            # Until a catch-up has been seen to finish, let the first one run through.
            delay = rng.uniform(0.0, 1.2 * expected) if expected else 60.0
            where = f"seed {SEED}, round {round_no}, kill delay {delay:.3f}s"
            [mid_work] = kill_at([status], [delay], where)
            tally.count([mid_work])
            if not mid_work:
                expected = status.duration
            elif partly_caught_up(root):
                tally.note("partial")
            check_after_kill(root, server, [], tally, where)
            # The caught-up clock is above every line the peer wrote (the receive rule).
            with EventStore(root) as store:
                top = max(value for (at, _), value in clocks.items() if at == root)
                event = store.append("alpha", "crash.local", "a")
                assert event.lamport_clock > top, f"{where}: {event.lamport_clock} <= {top}"
                clocks[root, "alpha"] = event.lamport_clock
            round_no += 1
        tally.events += count_events(roots[-1])
    print(
        f"\ncrash/catch-up: {tally.kills} kills ({tally.notes.get('partial', 0)} with some"
        f" logs indexed and others not), {tally.rebuilt} indexes rebuilt, every index equal"
        f" to a rebuild, {tally.events} events delivered, 0 lost (seed {SEED})"
    )


def kill_at_batch(pid: int, k: int, answer: str) -> Callable[[RecordedRequest], str]:
    """A receiver hook: SIGKILL ``pid`` when batch ``k`` arrives, then answer ``answer``.

    The replayer waits for the answer before it records anything, so the kill always
    falls between sending and recording.
    """
    seen = 0

    def hook(request: RecordedRequest) -> str:
        nonlocal seen
        seen += 1
        if seen == k:
            os.kill(pid, signal.SIGKILL)
            return answer
        return "ok"

    return hook


def partly_caught_up(root: Path) -> bool:
    """True if the index has caught up with some logs and not with others."""
    try:
        conn = sqlite3.connect(root / ".replaylog" / "queue.db")
        try:
            sizes = dict(conn.execute("SELECT feature, size FROM logs").fetchall())
        finally:
            conn.close()
    except sqlite3.Error:
        return False
    logs = sorted((root / "kitty-specs").glob(f"*/{EVENTS_FILENAME}"))
    done = [sizes.get(p.parent.name) == p.stat().st_size for p in logs]
    return any(done) and not all(done)


def test_sigkill_during_rebuild_index_leaves_the_old_index_usable(
    tmp_path: Path, big: bool
) -> None:
    rng = random.Random(SEED + 3)
    target = BIG_KILLS if big else KILLS
    tally = Tally()
    root = tmp_path / "project"
    index_path = root / ".replaylog" / "queue.db"
    per_feature = 1000 if big else 400
    features = [f"feature-{k}" for k in range(8)]
    for name in features:
        grow_by_hand(root, name, hand_lines(rng, per_feature, 1))
    expected = 0.0
    with Receiver() as server:
        check_after_kill(root, server, [], tally, f"seed {SEED}, before the first kill")
        round_no = 0
        while tally.kills < target:
            assert round_no < rounds_limit(target), f"seed {SEED}: too few kills hit rebuilds"
            where = f"seed {SEED}, round {round_no}"
            # Delivery state to keep: new events, some delivered and some rejected.
            with EventStore(root) as store:
                new = store.append_many(
                    rng.choice(features),
                    [
                        {"event_type": "crash.new", "aggregate_id": "a", "payload": {"n": n}}
                        for n in range(rng.randint(1, 20))
                    ],
                )
                rejected = {e.event_id: f"rejected in round {round_no}" for e in new[::3]}
                server.reject_ids = rejected
                store.replay(server.url, backoff_base=0.01, transport=plain_http())
                server.reject_ids = {}
                before = delivery_rows(store.index.conn)
                clock_before = store.index.clock()
            assert {r[4] for r in before if r[6] == "failed"} == set(rejected), where

            rebuilder = Child(REBUILDER, str(root), err=tmp_path / f"rebuild-{round_no}.err")
            delay = rng.uniform(0.0, 1.2 * expected) if expected else 60.0
            where += f", kill delay {delay:.3f}s"
            [mid_work] = kill_at([rebuilder], [delay], where)
            tally.count([mid_work])
            if not mid_work:
                expected = rebuilder.duration
            stale = glob.glob(glob.escape(str(index_path)) + ".rebuild-*")
            tally.note("stale", 1 if stale else 0)

            # The old index (or the new one, if the rename came first) opens and holds the
            # same delivery state, line for line.
            with EventStore(root) as store:
                after = delivery_rows(store.index.conn)
                assert after == before, (
                    f"{where}: the index lost state: only before"
                    f" {sorted(set(before) - set(after))[:3]}, only after"
                    f" {sorted(set(after) - set(before))[:3]}"
                )
                assert store.index.clock() == clock_before, where
            check_after_kill(root, server, [e.event_id for e in new], tally, where, failed=rejected)

            if round_no % 2:
                # The next rebuild works beside the leftovers of killed ones and clears
                # them (on even rounds the next child's rebuild meets them instead).
                with EventStore(root) as store:
                    before = delivery_rows(store.index.conn)
                    store.rebuild_index()
                    assert delivery_rows(store.index.conn) == before, where
                left = glob.glob(glob.escape(str(index_path)) + ".rebuild-*")
                assert not left, f"{where}: a rebuild left {left}"
            round_no += 1
        with EventStore(root) as store:
            store.rebuild_index()
        assert not glob.glob(glob.escape(str(index_path)) + ".rebuild-*"), SEED
        tally.events = count_events(root)
    assert tally.notes.get("stale", 0) > 0, f"seed {SEED}: no kill ever hit a rebuild mid-way"
    print(
        f"\ncrash/rebuild-index: {tally.kills} kills of a rebuild over {tally.events} events"
        f" ({tally.finished} more came after it finished), {tally.notes['stale']} of them left"
        f" a temporary file that the next rebuild cleared, old index usable and its delivery"
        f" state kept every time, 0 lost (seed {SEED})"
    )


def test_sigkill_during_replay_before_recording_loses_and_garbles_nothing(
    tmp_path: Path, big: bool
) -> None:
    rng = random.Random(SEED + 4)
    target = BIG_KILLS if big else KILLS
    tally = Tally()
    roots: list[Path] = []
    features = ["north", "south", "east"]
    with Receiver() as server:
        round_no = 0
        while tally.kills < target:
            assert round_no < rounds_limit(target), f"seed {SEED}: too few kills hit replays"
            root = project(tmp_path, round_no, tally, roots)
            appended = []
            with EventStore(root) as store:
                for name in features:
                    appended += store.append_many(
                        name,
                        [
                            {"event_type": "crash.send", "aggregate_id": name, "payload": {"n": n}}
                            for n in range(rng.randint(20, 60))
                        ],
                    )
            batch_size = rng.randint(1, 8)
            batches = math.ceil(len(appended) / batch_size)
            replayer = Child(
                REPLAYER,
                str(root),
                server.url,
                str(batch_size),
                err=tmp_path / f"replay-{round_no}.err",
            )
            if rng.random() < 0.5:
                # Kill while the server holds batch k: sent, maybe stored, never recorded.
                k = rng.randint(1, batches)
                answer = rng.choice(["ok", "close"])
                where = f"seed {SEED}, round {round_no}, kill at batch {k}/{batches} ({answer})"
                server.hook = kill_at_batch(replayer.pid, k, answer)
                delay = 120.0  # the hook kills; this is only a limit
                how = "at a batch"
            else:
                delay = rng.uniform(0.0, 1.5)
                where = f"seed {SEED}, round {round_no}, kill delay {delay:.3f}s"
                how = "at a time"
            try:
                mid_work = kill_at([replayer], [delay], where)
            finally:
                server.hook = None
            tally.count(mid_work)
            tally.note(how, sum(mid_work))
            duplicates = server.duplicates
            check_after_kill(root, server, [e.event_id for e in appended], tally, where)
            tally.note("resent", server.duplicates - duplicates)
            round_no += 1
        tally.events += count_events(roots[-1])
    print(
        f"\ncrash/replay: {tally.kills} kills ({tally.notes.get('at a batch', 0)} while the"
        f" server held a batch, {tally.notes.get('at a time', 0)} at random times),"
        f" {tally.events} events all delivered, {tally.notes.get('resent', 0)} sent twice"
        f" after a kill, 0 with two contents, 0 lost (seed {SEED})"
    )


@pytest.mark.parametrize("as_json", [False, True])
def test_ctrl_c_during_a_replay_says_what_was_delivered_and_the_next_replay_sends_the_rest(
    tmp_path: Path, as_json: bool
) -> None:
    # A command that did part of its work before it was stopped says what it did: the
    # answers recorded are kept, the other events stay pending.
    root = tmp_path / "proj"
    root.mkdir()
    with EventStore(root, fsync=False) as store:
        store.append_many("feat", [{"event_type": "T", "aggregate_id": str(n)} for n in range(40)])
    with Receiver() as receiver:
        answered = threading.Event()

        def slow(request: RecordedRequest) -> None:
            if len(receiver.requests) > 2:
                answered.set()
            time.sleep(0.2)  # each batch of one takes a while to answer

        receiver.hook = slow
        replay = subprocess.Popen(
            [sys.executable, "-m", "replaylog", "--root", str(root), "replay"]
            + ["--url", receiver.url, "--batch-size", "1"]
            + (["--json"] if as_json else []),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**child_env(), "REPLAYLOG_FSYNC": "0"},
        )
        try:
            assert answered.wait(timeout=30), "the replay sent nothing"
            replay.send_signal(signal.SIGINT)
            out, err = replay.communicate(timeout=30)
        finally:
            if replay.poll() is None:
                replay.kill()
        assert replay.returncode == 130, err
        if as_json:  # SPEC 6: the error object on stdout
            error = json.loads(out)["error"]
            assert error["type"] == "KeyboardInterrupt", out
            line = "Error: " + error["message"]
        else:
            line = err.strip().splitlines()[-1]
        assert line.startswith("Error: interrupted; "), (out, err)
        sent = int(line.removeprefix("Error: interrupted; ").split()[0])
        with EventStore(root, fsync=False) as store:
            totals = store.status()["totals"]
            assert sent >= 2 and totals["delivered"] == sent, (line, totals)
            assert totals["pending"] == 40 - sent
            receiver.hook = None
            assert store.replay(receiver.url).accepted == 40 - sent
        assert len(receiver.events) == 40 and receiver.conflicts == []
