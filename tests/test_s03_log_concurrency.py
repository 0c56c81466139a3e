"""SPEC section 3 under real concurrency: several processes append and read one log.

Writers and readers are separate interpreters (``sys.executable -c``), as several
``replaylog`` commands would be, so ``flock`` and ``O_APPEND`` are tested for real.
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
from pathlib import Path
from typing import Any

from replaylog import (
    EVENTS_FILENAME,
    Event,
    append_event,
    iter_events,
    read_events,
    read_events_raw,
)
from replaylog.log import LogWriter, log_path, verify_log

WRITER = r"""
import os, sys, time
from replaylog.lines.envelope import Event
from replaylog.log import append_event, append_events

feature, name, count, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
# With "auto" each append reads the log for its largest Lamport value under the lock
# (a full scan, quadratic over a run); otherwise events carry their own value.
auto = sys.argv[5] == "auto"

def new(seq, **more):
    clock = 0 if auto else seq + 1
    return Event.new("w", name, {"writer": name, "seq": seq, **more}, lamport_clock=clock)

while not os.path.exists(go):
    time.sleep(0.001)
seq = 0
step = 0
while seq < count:
    if step % 4 == 3:
        # A batch: one write of several lines, some of them large, so that a reader
        # without the lock could catch a write half done.
        size = min(2 + step % 9, count - seq)
        batch = [new(seq + k, pad="p" * (8000 * (k % 2))) for k in range(size)]
        append_events(feature, batch, fsync=False)
        seq += size
    else:
        append_event(feature, new(seq), fsync=False)
        seq += 1
    step += 1
"""

READER = r"""
import json, os, sys, time
from replaylog.log import iter_events, log_path, read_events, verify_log

feature, stop, ready = sys.argv[1], sys.argv[2], sys.argv[3]
open(ready, "w").close()
seen = []
reads = 0
while True:
    last_round = os.path.exists(stop)
    ids = [e.event_id for e in read_events(feature)]
    if ids[: len(seen)] != seen:
        sys.exit("a read lost or reordered events that an earlier read saw")
    seen = ids
    # verify_log and iter_events read line by line, as a slow read does.
    problems = verify_log(log_path(feature))
    if problems:
        sys.exit(f"verify found problems: {problems}")
    if reads % 4 == 3:
        streamed = [e.event_id for e in iter_events(feature)]
        if streamed[: len(seen)] != seen:
            sys.exit("iter_events disagrees with read_events")
    reads += 1
    if last_round:
        break
    time.sleep(0.002)  # flock does not queue: back-to-back readers could starve writers
print(json.dumps({"reads": reads, "events": len(seen)}))
"""


def start(script: str, *args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out


def check_log(feature: Path, writers: dict[str, int], *, auto_clock: bool) -> None:
    """Every event once, each writer's order kept, no bad line, canonical lines."""
    raw = (feature / EVENTS_FILENAME).read_bytes()
    assert raw.endswith(b"\n")
    for line in raw.splitlines(keepends=True):
        assert line == (json.dumps(json.loads(line), sort_keys=True) + "\n").encode()
    assert verify_log(log_path(feature)) == []
    events = read_events(feature)
    assert len({e.event_id for e in events}) == len(events)
    by_writer: dict[str, list[int]] = defaultdict(list)
    for e in events:
        by_writer[e.payload["writer"]].append(e.payload["seq"])
    assert dict(by_writer) == {name: list(range(n)) for name, n in writers.items()}
    if auto_clock:
        # Clocks are assigned under the lock: they strictly increase in file order.
        assert [e.lamport_clock for e in events] == list(range(1, len(events) + 1))


def test_processes_appending_at_once_lose_and_corrupt_nothing(tmp_path: Path) -> None:
    feature = tmp_path / "kitty-specs" / "001-race"  # created by the racing writers
    go = tmp_path / "go"
    writers = {f"w{k}": 300 for k in range(4)}
    procs = [start(WRITER, feature, name, n, go, "given") for name, n in writers.items()]
    time.sleep(0.3)  # let every interpreter start, so that they race on the first append
    go.touch()
    for proc in procs:
        finish(proc)
    check_log(feature, writers, auto_clock=False)


def test_processes_appending_at_once_get_increasing_lamport_values(tmp_path: Path) -> None:
    go = tmp_path / "go"
    writers = {f"c{k}": 60 for k in range(3)}
    procs = [start(WRITER, tmp_path, name, n, go, "auto") for name, n in writers.items()]
    go.touch()
    for proc in procs:
        finish(proc)
    check_log(tmp_path, writers, auto_clock=True)


def test_readers_never_see_an_append_in_progress(tmp_path: Path) -> None:
    feature = tmp_path / "feat"
    go, stop = tmp_path / "go", tmp_path / "stop"
    writers = {f"w{k}": 250 for k in range(3)}
    ready = [tmp_path / f"ready{k}" for k in range(2)]
    readers = [start(READER, feature, stop, flag) for flag in ready]
    procs = [start(WRITER, feature, name, n, go, "given") for name, n in writers.items()]
    deadline = time.monotonic() + 30
    while not all(flag.exists() for flag in ready) and time.monotonic() < deadline:
        time.sleep(0.01)  # the readers are reading before the writers start
    time.sleep(0.2)
    go.touch()
    for proc in procs:
        finish(proc)
    stop.touch()
    total = sum(writers.values())
    for reader in readers:
        report = json.loads(finish(reader))
        assert report["events"] == total
        assert report["reads"] >= 2  # it did read while the writers ran
    check_log(feature, writers, auto_clock=False)


def test_threads_appending_at_once_lose_and_corrupt_nothing(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            for seq in range(60):
                event = Event.new("w", name, {"writer": name, "seq": seq})
                append_event(tmp_path, event, fsync=False)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"t{k}",)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    check_log(tmp_path, {f"t{k}": 60 for k in range(6)}, auto_clock=True)


def test_durable_appends_from_several_processes_all_land(tmp_path: Path) -> None:
    script = WRITER.replace("fsync=False", "fsync=True")
    go = tmp_path / "go"
    writers = {f"d{k}": 25 for k in range(3)}
    procs = [start(script, tmp_path, name, n, go, "given") for name, n in writers.items()]
    go.touch()
    for proc in procs:
        finish(proc)
    check_log(tmp_path, writers, auto_clock=False)
    assert os.path.getsize(log_path(tmp_path)) > 0


class InThread:
    """Run a call in a thread and keep its result or exception."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.result = call()
            except BaseException as exc:  # pragma: no cover - asserted on
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()


def test_a_reader_waits_for_an_append_in_progress(tmp_path: Path) -> None:
    a, b = Event.new("t", "a", lamport_clock=1), Event.new("t", "b", lamport_clock=2)
    append_event(tmp_path, a, fsync=False)
    line = b.to_line()
    with LogWriter(tmp_path, fsync=False) as writer:
        os.write(writer.fd, line[:40])  # half of an append, as a slow writer leaves it
        reads = [
            InThread(lambda: read_events(tmp_path)),
            InThread(lambda: read_events_raw(tmp_path)),
            InThread(lambda: list(iter_events(tmp_path))),
            InThread(lambda: verify_log(log_path(tmp_path))),
        ]
        time.sleep(0.3)
        assert all(r.thread.is_alive() for r in reads)  # blocked on the lock
        os.write(writer.fd, line[40:])
    for r in reads:
        r.thread.join(10)
        assert r.error is None
    assert reads[0].result == [a, b]
    assert reads[1].result == [a.to_dict(), b.to_dict()]
    assert reads[2].result == [a, b]
    assert reads[3].result == []


def test_an_append_waits_for_another_append_in_progress(tmp_path: Path) -> None:
    a, b = Event.new("t", "a", lamport_clock=1), Event.new("t", "b", lamport_clock=2)
    with LogWriter(tmp_path, fsync=False) as writer:
        os.write(writer.fd, a.to_line()[:30])
        other = InThread(lambda: append_event(tmp_path, b, fsync=False))
        time.sleep(0.3)
        assert other.thread.is_alive()
        os.write(writer.fd, a.to_line()[30:])
    other.thread.join(10)
    assert other.error is None
    assert (tmp_path / EVENTS_FILENAME).read_bytes() == a.to_line() + b.to_line()
