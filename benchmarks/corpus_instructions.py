"""Instructions a pass of ``read_events`` over the spec-kitty corpus takes, beside the
floor's pass (``floors.parse_rate_many``), counted by valgrind's callgrind.

    .venv/bin/python benchmarks/corpus_instructions.py [--passes 5]

Instruction counts do not vary with the machine's load as times do, so this backs the
corpus figure of ``bench.py`` with numbers that repeat. Each side runs in a process of
its own under callgrind, once with one pass and once with ``1 + passes``; the difference
over ``passes`` is one pass, without start-up, imports and the first pass (which makes
the decoders). Also given: the part of our pass spent in ``msgspec.structs.asdict``
(turning each parsed ``Struct`` into its record's dict), and the part of the floor's in
Python's file iteration and orjson.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench import FLOORS_DIR, corpus_logs, find_corpus  # noqa: E402

CHILD = """
import os, sys
sys.path.insert(0, sys.argv[3])
import floors
from replaylog.log.read import read_events
paths = sys.argv[4:]
dirs = [os.path.dirname(p) for p in paths]
def ours():
    return sum(len(read_events(d)) for d in dirs)
def floor():
    return floors.parse_rate_many(paths)
work = ours if sys.argv[1] == "ours" else floor
for _ in range(int(sys.argv[2])):
    work()
"""

_TOTAL = re.compile(r"^ *([\d,]+) +\(100\.0+%\) +PROGRAM TOTALS", re.M)


def counted(side: str, passes: int, paths: list[str], out: Path) -> tuple[int, dict[str, int]]:
    """Instructions of ``passes`` passes of ``side`` (start-up included), and the
    inclusive count of some functions, from one callgrind run."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

    def child(count: int) -> list[str]:
        return [sys.executable, "-c", CHILD, side, str(count), str(FLOORS_DIR), *paths]

    # Once without valgrind first: a module compiled from source (no cached bytecode
    # yet) would cost the first of the two counted runs more, and shrink their difference.
    subprocess.run(child(1), check=True, capture_output=True, env=env)
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *child(passes)]
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    report = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(out)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    total = _TOTAL.search(report)
    if total is None:
        raise SystemExit("callgrind_annotate printed no total")
    functions: dict[str, int] = {}
    for name in ("struct_asdict", "JSONDecoder_decode"):
        found = re.search(rf"^ *([\d,]+) \([^)]*\) +\S*:{name} ", report, re.M)
        functions[name] = int(found.group(1).replace(",", "")) if found else 0
    return int(total.group(1).replace(",", "")), functions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=5)
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None:
        print("not measured: valgrind is not installed")
        return 1
    corpus = find_corpus()
    if corpus is None or FLOORS_DIR is None:
        print("not measured: no corpus or no floors")
        return 1
    paths = [str(p) for p in corpus_logs(corpus)]
    per_pass: dict[str, tuple[float, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for side in ("ours", "floor"):
            one, f_one = counted(side, 1, paths, Path(tmp) / f"{side}.1")
            more, f_more = counted(side, 1 + args.passes, paths, Path(tmp) / f"{side}.n")
            per_pass[side] = (
                (more - one) / args.passes,
                {k: (f_more[k] - f_one[k]) / args.passes for k in f_one},
            )
    ours, parts = per_pass["ours"]
    floor, _ = per_pass["floor"]
    asdict = parts["struct_asdict"]
    print(f"{len(paths)} logs; instructions per pass, the mean of {args.passes}:")
    print(f"  read_events          {ours / 1e6:8.1f} M")
    print(f"  floor                {floor / 1e6:8.1f} M")
    print(f"  ratio (floor/ours)   {floor / ours:8.2f}   (the figure's line: 0.7)")
    print(f"  of ours, msgspec decoding   {parts['JSONDecoder_decode'] / 1e6:8.1f} M")
    print(f"  of ours, Struct to dict     {asdict / 1e6:8.1f} M ({asdict / ours:.0%})")
    print(f"  ratio without that part     {floor / (ours - asdict):8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
