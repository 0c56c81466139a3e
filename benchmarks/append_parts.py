"""Where a durable single append's time goes beyond its floor (one write + fsync).

    .venv/bin/python benchmarks/append_parts.py [--rounds 40] [--appends 200]

A store appends once (so that it keeps its log open), then five loops run on that log,
each paired round by round with ``floors.fsync_append_rate`` of as many lines, in a
rotating order; each is reported as the median and quartiles of its paired ratios:

- ``write+fsync``: the floor's own work, on the store's log;
- ``+ locks, lstat, clock``: the system calls of the store's fast path (the log's lock,
  the ``lstat`` that tells the log was not replaced, the clock file's reservation
  under its own lock), with the floor's line;
- ``+ id and time``: and a new ULID and timestamp made per append;
- ``+ the line``: instead, the line object and canonical line of a new event, made by
  the store's own functions (its id and time included);
- ``EventStore.append``: the whole API call.

Each step costs much more right after an ``fsync`` than in a loop without one (its
code and data are no longer in the CPU's caches), which is why the steps cost so much
more of the ratio than their time with fsync off suggests; that time is printed last.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import floors  # noqa: E402

from replaylog import EventStore  # noqa: E402
from replaylog.lines.canonical import LineTemplate, new_line_object  # noqa: E402
from replaylog.lines.ids import generate_event_id, utc_now  # noqa: E402


def loops(store: EventStore) -> dict[str, Callable[[int], None]]:
    open_log = store._open_logs["feat"]
    fd, path, clock = open_log.fd, open_log.path, open_log.clock
    assert clock is not None and floors is not None
    line = floors._line(1)
    node_id = store.node_id

    def floor_work(i: int) -> None:
        os.write(fd, line)
        os.fsync(fd)

    def syscalls(data: bytes) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.lstat(path)
        clock.reserve(1)
        os.write(fd, data)
        os.fsync(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)

    def with_syscalls(i: int) -> None:
        syscalls(line)

    def with_id_and_time(i: int) -> None:
        generate_event_id()
        utc_now()
        syscalls(line)

    def with_line(i: int) -> None:
        # The store's own way to make a new event's line object and its line (its id and
        # time included), as EventStore.append makes them, without the Event or the store.
        obj = new_line_object(
            "WPStatusChanged", f"WP{i % 50:02d}", {"reason": "x" * 40}, None, None, node_id
        )
        syscalls(LineTemplate.of_new(obj).line(i))

    def api(i: int) -> None:
        store.append("feat", "WPStatusChanged", f"WP{i % 50:02d}", {"reason": "x" * 40})

    return {
        "write+fsync": floor_work,
        "+ locks, lstat, clock": with_syscalls,
        "+ id and time": with_id_and_time,
        "+ the line": with_line,
        "EventStore.append": api,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--appends", type=int, default=200)
    args = parser.parse_args()
    if floors is None:
        sys.exit("Error: no floors.py found (see benchmarks/bench.py)")
    n, rounds = args.appends, args.rounds
    with tempfile.TemporaryDirectory(prefix="replaylog-parts-") as tmp:
        (Path(tmp) / "project").mkdir()
        with EventStore(Path(tmp) / "project", fsync=True) as store:
            store.append("feat", "Warm", "WP00")  # the whole transaction; the log kept open
            store.append("feat", "Warm", "WP00")
            variants = list(loops(store).items())
            ratios: dict[str, list[float]] = {name: [] for name, _ in variants}
            open_log = store._open_logs["feat"]
            for r in range(rounds):
                for name, work in variants[r % 5 :] + variants[: r % 5]:
                    t0 = time.perf_counter()
                    for i in range(n):
                        work(i)
                    rate = n / (time.perf_counter() - t0)
                    # The loops above wrote past the store's record of its log's size.
                    open_log.size = os.fstat(open_log.fd).st_size
                    ratios[name].append(rate / floors.fsync_append_rate(n, directory=tmp))
        (Path(tmp) / "no-fsync").mkdir()
        with EventStore(Path(tmp) / "no-fsync", fsync=False) as quick:
            quick.append("feat", "Warm", "WP00")
            best = float("inf")
            for _ in range(5):
                t0 = time.perf_counter()
                for i in range(20 * n):
                    quick.append("feat", "WPStatusChanged", f"WP{i % 50:02d}", {"reason": "x"})
                best = min(best, (time.perf_counter() - t0) / (20 * n))
    print(f"paired ratios to floors.fsync_append_rate, {rounds} rounds of {n} appends")
    for name, values in ratios.items():
        values.sort()
        q = len(values) // 4
        print(
            f"  {name:24s} median {statistics.median(values):.2f}"
            f" (quartiles {values[q]:.2f} to {values[-1 - q]:.2f})"
        )
    print(f"  EventStore.append with fsync off: {best * 1e6:.1f} µs an append (best of 5)")


if __name__ == "__main__":
    main()
