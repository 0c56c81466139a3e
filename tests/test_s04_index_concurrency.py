"""SPEC section 4 (with 3 and 5) under real concurrency: many processes, one project, one clock.

Eight writer processes append at once, through the API (``EventStore.append`` and
``append_many`` mixed) or through ``replaylog append`` commands, to one feature or
spread over several, while ``replaylog log``, ``verify`` and ``status`` run beside them
in loops, as separate processes. Afterwards every event is in the logs exactly once,
each writer's own order is kept, Lamport values are unique and grow in each writer's
order, the index equals one rebuilt from the logs, and no reader ever failed.

Two ``replaylog replay`` commands started at once against one server deliver every
event, never two contents for one id.

Default sizes keep the file quick; ``pytest --big`` runs them at full size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from conftest import rebuilt_elsewhere, snapshot
from receiver import Receiver

from replaylog import EventStore

pytestmark = pytest.mark.reliability

WRITERS = 8
PEER_NODE = "peer-node-b"  # odd writers append as another node (REPLAYLOG_NODE_ID)

API_WRITER = r"""
import json, os, random, sys, time
from replaylog import Event, EventStore

root, name, count, features, fsync, go, out, hold = sys.argv[1:9]
count = int(count)
features = features.split(",")
rng = random.Random(name)
written = []
while not os.path.exists(go):
    time.sleep(0.002)
seq = step = 0
with EventStore(root, fsync=fsync == "1") as store:
    while seq < count:
        if seq == count - 1:
            # The last event waits until every reader has run beside the writers, so
            # that the readers are proved against appends in progress on every machine.
            deadline = time.monotonic() + 300
            while not os.path.exists(hold) and time.monotonic() < deadline:
                time.sleep(0.005)
        feature = features[step % len(features)]
        step += 1
        if rng.random() < 0.4 and seq < count - 1:
            # One lock, one write, one fsync for several events; Event objects and
            # mappings mixed, as append_many takes both.
            size = min(rng.randint(2, 12), count - seq)
            items = []
            for k in range(size):
                payload = {"writer": name, "seq": seq + k}
                if k % 2:
                    items.append(Event.new("w", name, payload))
                else:
                    items.append({"event_type": "w", "aggregate_id": name, "payload": payload})
            events = store.append_many(feature, items)
        else:
            events = [store.append(feature, "w", name, {"writer": name, "seq": seq})]
        for e in events:
            written.append([e.event_id, e.lamport_clock, feature, e.payload["seq"]])
        seq += len(events)
with open(out, "w") as f:
    json.dump(written, f)
"""

API_READER = r"""
import json, os, sys, time
from replaylog import EventStore

root, feature, stop, ready = sys.argv[1:5]
seen, counted, rounds = [], 0, 0
# One long-lived store: its index catches up again and again while the writers append.
with EventStore(root) as store:
    while True:
        last_round = os.path.exists(stop)
        ids = [e.event_id for e in store.read(feature)]
        if ids[: len(seen)] != seen:
            sys.exit("read lost or reordered events that an earlier read saw")
        seen = ids
        streamed = [e.event_id for e in store.iter_events(feature)]
        if streamed[: len(seen)] != seen:
            sys.exit("iter_events disagrees with read")
        total = store.status()["totals"]["events"]
        if total < counted:
            sys.exit(f"status counted {total} events after {counted}")
        counted = total
        report = store.verify()
        if report.problems:
            sys.exit(f"verify: {report.to_dict()}")
        rounds += 1
        if rounds == 1:
            open(ready, "w").close()
        if last_round:
            break
        time.sleep(0.01)
print(json.dumps({"rounds": rounds, "events": len(seen)}))
"""


def env_for(**extra: str) -> dict[str, str]:
    """The test's environment without any REPLAYLOG_* setting of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLAYLOG_")}
    env.update(extra)
    return env


def writer_env(k: int, fsync: bool) -> dict[str, str]:
    extra = {"REPLAYLOG_FSYNC": "1" if fsync else "0"}
    if k % 2:
        extra["REPLAYLOG_NODE_ID"] = PEER_NODE
    return env_for(**extra)


def cli_args(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "replaylog", "--root", str(root), *args]


# --------------------------------------------------------------------------- readers


@dataclass
class ReaderLoop:
    """Runs one ``replaylog`` reading command again and again, until told to stop.

    ``check(stdout)`` returns a complaint or None. Every run that exits non-zero,
    writes an error, or draws a complaint is kept in ``failures``.
    """

    name: str
    argv: list[str]
    check: Callable[[str], str | None]
    runs: int = 0
    spans: list[tuple[float, float]] = field(default_factory=list)  # (start, end) per run
    outputs: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        deadline = time.monotonic() + 900  # never outlive a stuck test
        while not self.stop.is_set() and time.monotonic() < deadline:
            began = time.monotonic()
            try:
                proc = subprocess.run(
                    self.argv, capture_output=True, text=True, env=env_for(), timeout=300
                )
            except subprocess.TimeoutExpired:
                self.failures.append(f"{self.name}: timed out")
                return
            self.runs += 1
            self.spans.append((began, time.monotonic()))
            complaint = None
            if proc.returncode != 0:
                complaint = f"exit {proc.returncode}"
            elif "Error" in proc.stderr or "Traceback" in proc.stderr:
                complaint = "error output"
            else:
                try:
                    complaint = self.check(proc.stdout)
                except (ValueError, KeyError, TypeError) as exc:
                    complaint = f"unreadable output ({exc!r})"
            if complaint:
                self.failures.append(
                    f"{self.name} run {self.runs}: {complaint}: {proc.stderr[-500:]}"
                    f" {proc.stdout[:300]}"
                )
            else:
                self.outputs.append(proc.stdout)
            self.stop.wait(0.3)  # leave the CPU to the writers now and then


@dataclass
class Readers:
    """The CLI reader loops, and one API reader process looping in a single store."""

    loops: list[ReaderLoop]
    api: subprocess.Popen[str]
    stop_file: Path
    api_out: str = ""
    api_err: str = ""


def start_readers(root: Path, feature: str, stop_file: Path) -> Readers:
    def log_ok(out: str) -> str | None:
        for line in out.splitlines():
            json.loads(line)
        return None

    def verify_ok(out: str) -> str | None:
        report = json.loads(out)
        return None if report == {"ok": True, "problems": []} else "verify reported problems"

    def status_ok(out: str) -> str | None:
        totals = json.loads(out)["totals"]
        if totals["failed"] or totals["delivered"] or totals["pending"] != totals["events"]:
            return f"status counts do not add up: {totals}"
        return None

    # The root exists, and so does the (empty) log: `log` of a feature with no log is
    # an error, and the readers start before the writers' first append.
    log = root / "kitty-specs" / feature / "status.events.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.touch()
    loops = [
        ReaderLoop("log", cli_args(root, "log", feature, "--json"), log_ok),
        ReaderLoop("verify", cli_args(root, "verify", "--json"), verify_ok),
        ReaderLoop("status", cli_args(root, "status", "--json"), status_ok),
    ]
    for reader in loops:
        reader.thread.start()
    api = subprocess.Popen(
        [
            sys.executable,
            "-c",
            API_READER,
            str(root),
            feature,
            str(stop_file),
            f"{stop_file}.ready",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_for(),
    )
    return Readers(loops, api, stop_file)


def wait_until_reading(readers: Readers) -> None:
    """Every reader has done one round: from now on they all read beside the writers."""
    deadline = time.monotonic() + 300
    ready = Path(f"{readers.stop_file}.ready")
    while not (ready.exists() and all(reader.runs for reader in readers.loops)):
        failed = [f for reader in readers.loops for f in reader.failures]
        assert not failed, failed
        assert readers.api.poll() is None, readers.api.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "the readers did not start"
        time.sleep(0.05)


def wait_until_beside(readers: Readers, go_at: float) -> None:
    """Every reader loop has completed a run that began after the writers started.

    The writers hold their last event until this returns, so each such run overlaps
    the writing, however fast the writers are on this machine.
    """
    deadline = time.monotonic() + 300
    while not all(any(began >= go_at for began, _ in reader.spans) for reader in readers.loops):
        failed = [f for reader in readers.loops for f in reader.failures]
        assert not failed, failed
        assert time.monotonic() < deadline, "the readers did not run beside the writers"
        time.sleep(0.02)


def stop_readers(readers: Readers) -> None:
    readers.stop_file.touch()
    for reader in readers.loops:
        reader.stop.set()
    try:
        readers.api_out, readers.api_err = readers.api.communicate(timeout=600)
    finally:
        if readers.api.poll() is None:
            readers.api.kill()
            readers.api.wait()
    for reader in readers.loops:
        reader.thread.join(timeout=600)
        assert not reader.thread.is_alive(), f"reader {reader.name} did not stop"


def check_readers(readers: Readers, root: Path, feature: str, writing: tuple[float, float]) -> None:
    """No reader failed, each ran beside the writers, and what they saw only grew."""
    assert readers.api.returncode == 0, f"API reader: {readers.api_err[-2000:]}"
    assert json.loads(readers.api_out)["rounds"] >= 2
    failures = [f for reader in readers.loops for f in reader.failures]
    assert failures == [], "\n".join(failures[:10])
    for reader in readers.loops:
        beside = [1 for began, ended in reader.spans if began < writing[1] and ended > writing[0]]
        assert beside, f"{reader.name} never ran beside the writers"
    with EventStore(root) as store:
        final = [obj["event_id"] for obj in store.read_raw(feature)]
    log_reader, _verify, status_reader = readers.loops
    for out in log_reader.outputs:
        seen = [json.loads(line)["event_id"] for line in out.splitlines()]
        assert seen == final[: len(seen)], "`replaylog log` saw events the file does not keep"
    counts = [json.loads(out)["totals"]["events"] for out in status_reader.outputs]
    assert counts == sorted(counts), "`replaylog status` counted fewer events than before"
    clocks = [json.loads(out)["lamport_clock"] for out in status_reader.outputs]
    assert clocks == sorted(clocks), "`replaylog status` showed the clock going back"


# --------------------------------------------------------------------------- the checks


Written = dict[str, list[tuple[str, int, str, int]]]  # writer: [(id, lamport, feature, seq)]


def rising(values: list[int]) -> bool:
    return all(a < b for a, b in pairwise(values))


def check_logs(root: Path, written: Written, features: list[str]) -> int:
    """Every promise of the logs and the clock after a race; returns the event count."""
    with EventStore(root) as store:
        assert sorted(store.features()) == sorted(features)
        logs = {feature: store.read_raw(feature) for feature in features}
        for feature in features:
            raw = Path(store.log_path(feature)).read_bytes()
            assert raw.endswith(b"\n")
            lines = raw.splitlines(keepends=True)
            assert len(lines) == len(logs[feature]), f"{feature}: blank or duplicate lines"
        assert store.verify().to_dict() == {"ok": True, "problems": []}

    where: dict[str, tuple[str, dict[str, Any]]] = {}
    for feature, objs in logs.items():
        for obj in objs:
            assert obj["event_id"] not in where, f"{obj['event_id']} is in the logs twice"
            where[obj["event_id"]] = (feature, obj)
        # Section 4: a new value is above every value of its own log, so within one log
        # the values strictly grow in file order.
        clocks = [obj["lamport_clock"] for obj in objs]
        assert rising(clocks), f"{feature}: Lamport values not rising in file order"
        # Each writer's own order is kept in the file.
        seqs: dict[str, list[int]] = defaultdict(list)
        for obj in objs:
            seqs[obj["payload"]["writer"]].append(obj["payload"]["seq"])
        for name, values in seqs.items():
            assert values == sorted(values), f"{feature}: writer {name}'s order not kept"

    expected = sum(len(events) for events in written.values())
    assert len(where) == expected, f"{expected - len(where)} event(s) lost (or extra)"
    for name, events in written.items():
        assert sorted(seq for *_, seq in events) == list(range(len(events))), name
        for event_id, lamport, feature, seq in events:
            assert event_id in where, f"writer {name}: event {event_id} is not in any log"
            in_log, obj = where[event_id]
            assert (in_log, obj["lamport_clock"], obj["payload"]) == (
                feature,
                lamport,
                {"writer": name, "seq": seq},
            ), f"writer {name}: event {event_id} is not as it was appended"
        clocks = [lamport for _, lamport, _, _ in events]
        assert rising(clocks), f"writer {name}: Lamport values do not grow in the order it appended"

    # One index issued every value: unique per node, and across the whole project.
    by_node: dict[str, list[int]] = defaultdict(list)
    for _feature, obj in where.values():
        by_node[obj["node_id"]].append(obj["lamport_clock"])
    assert len(by_node) == 2, sorted(by_node)
    for node, clocks in by_node.items():
        assert len(set(clocks)) == len(clocks), f"node {node}: a Lamport value issued twice"
    every = [c for clocks in by_node.values() for c in clocks]
    assert len(set(every)) == len(every), "one Lamport value issued twice"
    assert min(every) >= 1
    return expected


def check_index_equals_rebuilt(root: Path, tmp_path: Path) -> None:
    """Section 4: the incrementally kept index equals one rebuilt from the logs."""
    query = "SELECT feature, line, event_id, lamport FROM events ORDER BY feature, line"
    with EventStore(root) as store:
        store.catch_up()
        kept = store.index.conn.execute(query).fetchall()
        kept_clock = store.index.clock()
        counts = store.status()["totals"]
    with EventStore(root, index_path=tmp_path / "rebuilt" / "queue.db") as fresh:
        fresh.rebuild_index()
        rebuilt = fresh.index.conn.execute(query).fetchall()
        rebuilt_clock = fresh.index.clock()
    assert len(kept) == len(rebuilt) == counts["events"] == counts["pending"]
    assert kept == rebuilt
    assert kept_clock == rebuilt_clock == max(row[3] for row in rebuilt)


# --------------------------------------------------------------------------- API writers


@pytest.mark.parametrize(
    ("layout", "fsync"),
    [("one-feature", False), ("several-features", True)],
)
def test_api_writers_racing_lose_nothing_and_keep_order_and_clock(
    tmp_path: Path, big: bool, layout: str, fsync: bool
) -> None:
    root = tmp_path / "project"
    per_writer = 2000 if big else 250
    if layout == "one-feature":
        plans = {f"w{k}": ["shared"] for k in range(WRITERS)}
    else:
        # Every writer touches the shared log and two of three others, in its own order.
        plans = {
            f"w{k}": ["shared", f"side-{k % 3}", f"side-{(k + 1) % 3}"] for k in range(WRITERS)
        }
    features = sorted({f for plan in plans.values() for f in plan})
    go = tmp_path / "go"
    hold = tmp_path / "readers-ran-beside"
    readers = start_readers(root, "shared", tmp_path / "stop")
    procs = {
        name: subprocess.Popen(
            [
                sys.executable,
                "-c",
                API_WRITER,
                str(root),
                name,
                str(per_writer),
                ",".join(plan),
                "1" if fsync else "0",
                str(go),
                str(tmp_path / f"{name}.json"),
                str(hold),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=writer_env(k, fsync),
        )
        for k, (name, plan) in enumerate(plans.items())
    }
    try:
        wait_until_reading(readers)  # the writers' interpreters start meanwhile
        go_at = time.monotonic()
        go.touch()
        wait_until_beside(readers, go_at)
        hold.touch()
        for name, proc in procs.items():
            _, err = proc.communicate(timeout=900)
            assert proc.returncode == 0, f"writer {name}: {err[-2000:]}"
    finally:
        done_at = time.monotonic()
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        stop_readers(readers)
    seconds = done_at - go_at

    written: Written = {
        name: [tuple(item) for item in json.loads((tmp_path / f"{name}.json").read_text())]
        for name in plans
    }
    total = check_logs(root, written, features)
    assert total == WRITERS * per_writer
    check_index_equals_rebuilt(root, tmp_path)
    check_readers(readers, root, "shared", (go_at, done_at))
    print(
        f"api {layout}: {WRITERS} processes x {per_writer} events, fsync={fsync},"
        f" {len(features)} feature(s), {seconds:.1f} s; reader runs"
        f" {', '.join(f'{r.name} {r.runs}' for r in readers.loops)},"
        f" API reader rounds {json.loads(readers.api_out)['rounds']}"
    )


# --------------------------------------------------------------------------- CLI writers


def test_cli_appends_racing_lose_nothing_and_keep_order_and_clock(
    tmp_path: Path, big: bool
) -> None:
    """``replaylog append`` commands (fsync on, the default) from eight sequences at once."""
    root = tmp_path / "project"
    per_writer = 200 if big else 25
    # Half the writers append to the shared log only, half spread over it and their own.
    plans = {
        f"c{k}": ["shared"] if k < WRITERS // 2 else ["shared", f"own-{k}"] for k in range(WRITERS)
    }
    features = sorted({f for plan in plans.values() for f in plan})
    written: Written = {name: [] for name in plans}
    errors: list[str] = []
    go = threading.Event()
    hold = threading.Event()  # the last append waits until the readers ran beside

    def write(k: int, name: str, plan: list[str]) -> None:
        env = writer_env(k, fsync=True)
        go.wait(timeout=60)
        for seq in range(per_writer):
            if seq == per_writer - 1:
                hold.wait(timeout=300)
            feature = plan[seq % len(plan)]
            payload = json.dumps({"writer": name, "seq": seq})
            argv = cli_args(root, "append", feature, "--type", "w", "--aggregate", name)
            try:
                proc = subprocess.run(
                    [*argv, "--payload", payload, "--json"],
                    capture_output=True,
                    text=True,
                    env=env,
                    timeout=300,
                )
            except subprocess.TimeoutExpired:
                errors.append(f"{name} seq {seq}: timed out")
                return
            # A wait of over a second for a lock is said on stderr (README, "The log"): on a
            # loaded machine eight writers may cause one. Anything else there is a fault.
            said = [
                line
                for line in proc.stderr.splitlines()
                if not line.startswith("replaylog: waiting for ")
            ]
            if proc.returncode != 0 or said:
                errors.append(f"{name} seq {seq}: exit {proc.returncode}: {proc.stderr[-500:]}")
                return
            event = json.loads(proc.stdout)
            written[name].append((event["event_id"], event["lamport_clock"], feature, seq))

    readers = start_readers(root, "shared", tmp_path / "stop")
    threads = [
        threading.Thread(target=write, args=(k, name, plan), daemon=True)
        for k, (name, plan) in enumerate(plans.items())
    ]
    try:
        for thread in threads:
            thread.start()
        wait_until_reading(readers)
        go_at = time.monotonic()
        go.set()
        wait_until_beside(readers, go_at)
        hold.set()
        for thread in threads:
            thread.join(timeout=1800)
            assert not thread.is_alive(), "a CLI writer did not finish"
    finally:
        done_at = time.monotonic()
        stop_readers(readers)
    seconds = done_at - go_at
    assert errors == [], "\n".join(errors[:10])

    total = check_logs(root, written, features)
    assert total == WRITERS * per_writer
    check_index_equals_rebuilt(root, tmp_path)
    check_readers(readers, root, "shared", (go_at, done_at))
    print(
        f"cli: {WRITERS} sequences x {per_writer} `replaylog append`, fsync=True,"
        f" {len(features)} features, {seconds:.1f} s; reader runs"
        f" {', '.join(f'{r.name} {r.runs}' for r in readers.loops)},"
        f" API reader rounds {json.loads(readers.api_out)['rounds']}"
    )


# --------------------------------------------------------------------------- two replays


def test_two_replays_at_once_lose_nothing_and_never_send_two_contents(
    tmp_path: Path, big: bool
) -> None:
    """Two ``replaylog replay`` at once, while a third process appends to the project."""
    root = tmp_path / "project"
    root.mkdir()
    per_feature = 1000 if big else 100
    with EventStore(root, fsync=False) as store:
        for start in range(0, per_feature, 10):
            for feature in ("a", "b", "c"):
                store.append_many(
                    feature,
                    [
                        {"event_type": "t", "aggregate_id": feature, "payload": {"i": i}}
                        for i in range(start, start + 10)
                    ],
                )
        before = {obj["event_id"] for f in ("a", "b", "c") for obj in store.read_raw(f)}
    go = tmp_path / "go"
    late = per_feature // 2
    with Receiver() as r:
        appender = subprocess.Popen(
            [
                sys.executable,
                "-c",
                API_WRITER,
                str(root),
                "late",
                str(late),
                "d,a",
                "0",
                str(go),
                str(tmp_path / "late.json"),
                str(go),  # nothing to wait for before its last event
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env_for(),
        )
        replays = [
            subprocess.Popen(
                cli_args(root, "replay", "--url", r.url, "--batch-size", size, "--json"),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env_for(REPLAYLOG_FSYNC="0"),
            )
            for size in ("7", "13")
        ]
        go.touch()
        try:
            outs = [proc.communicate(timeout=600) for proc in replays]
            _, err = appender.communicate(timeout=600)
        finally:
            for proc in [*replays, appender]:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        assert appender.returncode == 0, err[-2000:]
        assert [proc.returncode for proc in replays] == [0, 0], outs
        reports = [json.loads(out) for out, _ in outs]
        assert r.conflicts == []
        assert before <= set(r.events), f"{len(before - set(r.events))} event(s) never arrived"
        # The replays hold one lock per index: no event is in both runs' batches.
        assert r.duplicates == 0
        assert sum(report["accepted"] for report in reports) == len(r.events)
        assert all(report["rejected"] == 0 for report in reports)

        # What was appended during the replays goes with the next one.
        final = subprocess.run(
            cli_args(root, "replay", "--url", r.url, "--json"),
            capture_output=True,
            text=True,
            env=env_for(),
            timeout=600,
        )
        assert final.returncode == 0, final.stderr
        with EventStore(root) as store:
            logged = {
                obj["event_id"]: obj for f in ("a", "b", "c", "d") for obj in store.read_raw(f)
            }
            totals = store.status()["totals"]
        assert len(logged) == 3 * per_feature + late
        assert r.events == logged, "the server does not hold exactly the logged events"
        assert r.conflicts == [] and r.duplicates == 0
        assert totals == {
            "events": len(logged),
            "pending": 0,
            "delivered": len(logged),
            "failed": 0,
        }
        print(
            f"two replays: {len(logged)} events, {len(r.requests)} requests,"
            f" accepted {[report['accepted'] for report in reports]}"
            f" + {json.loads(final.stdout)['accepted']} after, 0 lost"
        )


# --------------------------------------------------------------------------- slow readers


def test_a_stalled_log_reader_does_not_hold_up_appends(tmp_path: Path) -> None:
    """`replaylog log F | less`, left open, must not make appends to F wait for it.

    The reader locks the log only to see where its complete lines end (so it never reads
    an append in progress); it then reads what was there without keeping the lock.
    """
    root = tmp_path / "project"
    root.mkdir()
    with EventStore(root, fsync=False) as store:
        store.append_many(
            "f",
            [{"event_type": "t", "aggregate_id": "a", "payload": {"pad": "x" * 200}}] * 2000,
        )
        before = [obj["event_id"] for obj in store.read_raw("f")]
    # Far more output than a pipe holds: unread, the reader blocks in the middle.
    # bufsize=0: readline takes bytes from the pipe one at a time, so nothing of the
    # output sits in a Python buffer that communicate() (which reads the raw pipe) skips.
    reader = subprocess.Popen(
        cli_args(root, "log", "f", "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env_for(),
        bufsize=0,
    )
    appended: list[str] = []
    held_up = stalled = False
    try:
        assert reader.stdout is not None
        first = reader.stdout.readline()  # the reader is in the middle of its read now
        if first:

            def append() -> None:
                with EventStore(root, fsync=False) as store:
                    appended.append(store.append("f", "t", "late").event_id)

            thread = threading.Thread(target=append, daemon=True)
            thread.start()
            thread.join(timeout=20)
            held_up = thread.is_alive()
            stalled = reader.poll() is None
    finally:
        out, err = reader.communicate(timeout=120)  # drains the pipe: the reader ends
    assert first and reader.returncode == 0, err
    assert stalled, "the reader did not stall: the test proves nothing"
    assert not held_up, "an append waited for a stalled `replaylog log` reader"
    seen = [json.loads(line)["event_id"] for line in [first, *out.splitlines()]]
    assert seen == before, "the reader saw other than the log as it was when it began"
    thread.join(timeout=30)
    with EventStore(root) as store:
        assert [obj["event_id"] for obj in store.read_raw("f")] == [*before, *appended]


# --------------------------------------------------------- one store, several threads


def _in_threads(count: int, work: Callable[[int], None]) -> list[BaseException]:
    """Run ``work(i)`` in ``count`` threads started together; the errors they raised."""
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def run(i: int) -> None:
        try:
            start.wait(timeout=30)
            work(i)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive(), "a thread did not finish"
    return errors


def _shared_store(tmp_path: Path) -> tuple[Path, EventStore]:
    """A project and the one store its threads share."""
    root = tmp_path / "proj"
    root.mkdir()
    return root, EventStore(root, fsync=False)


def test_threads_that_share_one_store_lose_nothing_and_share_one_clock(tmp_path: Path) -> None:
    # Each thread uses its own connection to the index and its own descriptors of the
    # log: as processes do, with nothing said about a thread (such as an index made in
    # another thread needing to be rebuilt).
    root, store = _shared_store(tmp_path)
    per = 150

    def work(i: int) -> None:
        for j in range(per):
            store.append("feat", "T", f"writer-{i}", {"j": j})
            if j % 50 == 0:
                store.append_many("feat", [{"event_type": "M", "aggregate_id": f"writer-{i}"}] * 3)
                assert store.status()["totals"]["events"] >= j
                store.read("feat")

    assert _in_threads(4, work) == []
    events = store.read("feat")
    assert len(events) == 4 * (per + 3 * 3)
    assert len({e.event_id for e in events}) == len(events)
    assert sorted(e.lamport_clock for e in events) == list(range(1, len(events) + 1))
    for i in range(4):  # each writer's own order is kept
        mine = [e.payload["j"] for e in events if e.aggregate_id == f"writer-{i}" and e.payload]
        assert mine == list(range(per))
    assert store.verify().problems == []
    assert snapshot(store) == rebuilt_elsewhere(root, tmp_path / "rebuilt.db")
    store.close()  # closes what each thread opened, from this thread
    assert store.status()["totals"]["events"] == len(events)  # and opens again
    store.close()


def test_a_replay_in_one_thread_while_another_appends_to_the_same_store(
    tmp_path: Path,
) -> None:
    _, store = _shared_store(tmp_path)
    store.append_many("feat", [{"event_type": "T", "aggregate_id": str(n)} for n in range(2000)])
    appended: list[str] = []
    with Receiver() as receiver:

        def work(i: int) -> None:
            if i == 0:
                store.replay(receiver.url, batch_size=50)
            else:
                for n in range(200):
                    appended.append(store.append("feat", "T", f"late-{n}").event_id)

        assert _in_threads(2, work) == []
        report = store.replay(receiver.url, batch_size=500)  # whatever came after the first
        assert report.pending == 0
        assert len(receiver.events) == 2200 and set(appended) <= set(receiver.events)
        assert receiver.duplicates == 0 and receiver.conflicts == []
    assert store.status()["totals"] == {
        "events": 2200,
        "pending": 0,
        "delivered": 2200,
        "failed": 0,
    }
    store.close()


def test_a_thread_per_task_leaves_no_descriptors_behind_when_its_threads_end(
    tmp_path: Path,
) -> None:
    # What a thread opened (its index connection, clock file and log) is closed when the
    # thread ends, not only when the store is closed: a server that starts a thread per
    # request must not run out of descriptors.
    _, store = _shared_store(tmp_path)
    store.append("feat", "T", "a")  # this thread's own, kept
    open_before = len(os.listdir("/proc/self/fd"))
    for n in range(60):
        thread = threading.Thread(target=lambda n=n: store.append("feat", "T", f"task-{n}"))
        thread.start()
        thread.join(timeout=30)
    assert len(os.listdir("/proc/self/fd")) <= open_before + 2
    assert len(store.read("feat")) == 61
    assert store.status()["totals"]["events"] == 61
    store.close()
