"""Where a durable single append's time goes beyond its floor (one write + fsync).

    .venv/bin/python benchmarks/append_parts.py [--rounds 16] [--appends 200]

Three loops, each paired round by round with ``floors.fsync_append_rate`` of as many
lines in the same minute, and reported as the median and quartiles of the paired ratios:

- ``syscalls``: the system calls of the store's fast path only (the log's lock, one
  ``lstat``, the clock file's lock around a read and write of its mapped value, the
  ``write``, the ``fsync``, the unlock), with a line made beforehand;
- ``api``: ``EventStore.append`` itself, fsync on;
- and, with fsync off, the time of one ``EventStore.append`` (no disk wait).

The difference between the first two is what the Python work of an append costs when it
runs right after an ``fsync``, which is much more than it costs in a loop without one.
"""

from __future__ import annotations

import argparse
import fcntl
import mmap
import os
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import floors  # noqa: E402

from replaylog import EventStore  # noqa: E402

_CLOCK = struct.Struct("<qq")


def syscalls_loop(directory: str) -> Callable[[int], float]:
    """The fast path's system calls, with a ready line: appends per second."""
    clock_fd = os.open(os.path.join(directory, "clock"), os.O_RDWR | os.O_CREAT, 0o644)
    os.write(clock_fd, bytes(4096))
    os.fsync(clock_fd)
    clock = mmap.mmap(clock_fd, 4096)
    path = os.path.join(directory, "log.jsonl")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    line = floors._line(1)  # the floor's own line

    def run(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.lstat(path)
            fcntl.flock(clock_fd, fcntl.LOCK_EX)
            value, check = _CLOCK.unpack_from(clock)
            _CLOCK.pack_into(clock, 0, value + 1, check)
            fcntl.flock(clock_fd, fcntl.LOCK_UN)
            os.write(fd, line)
            os.fsync(fd)
            fcntl.flock(fd, fcntl.LOCK_UN)
        return n / (time.perf_counter() - t0)

    return run


def api_loop(directory: str, fsync: bool = True) -> Callable[[int], float]:
    store = EventStore(Path(directory) / "project", fsync=fsync)
    store.append("feat", "Warm", "WP00")  # the first append runs the whole transaction
    store.append("feat", "Warm", "WP00")

    def run(n: int) -> float:
        t0 = time.perf_counter()
        for i in range(n):
            store.append("feat", "WPStatusChanged", f"WP{i % 50:02d}", {"reason": "x" * 40})
        return n / (time.perf_counter() - t0)

    return run


def paired(run: Callable[[int], float], n: int, rounds: int, directory: str) -> str:
    ratios = sorted(
        run(n) / floors.fsync_append_rate(n, directory=directory) for _ in range(rounds)
    )
    q = len(ratios) // 4
    return (
        f"median {statistics.median(ratios):.2f}"
        f" (quartiles {ratios[q]:.2f} to {ratios[-1 - q]:.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--appends", type=int, default=200)
    args = parser.parse_args()
    if floors is None:
        sys.exit("Error: no floors.py found (see benchmarks/bench.py)")
    with tempfile.TemporaryDirectory(prefix="replaylog-parts-") as tmp:
        n, rounds = args.appends, args.rounds
        print(f"paired ratios to write+fsync, {rounds} rounds of {n} appends")
        print(f"  the fast path's system calls only: {paired(syscalls_loop(tmp), n, rounds, tmp)}")
        print(f"  EventStore.append, fsync on:       {paired(api_loop(tmp), n, rounds, tmp)}")
        no_fsync = api_loop(tempfile.mkdtemp(dir=tmp), fsync=False)
        best = max(no_fsync(20 * n) for _ in range(5))
        print(f"  EventStore.append, fsync off:      {1e6 / best:.1f} µs an append (best of 5)")


if __name__ == "__main__":
    main()
