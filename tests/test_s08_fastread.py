"""SPEC section 8, the fast read path (``replaylog.log.fastread``): it gives what the plain
path gives.

The plain path is :func:`~replaylog.log.scan_log` line by line, each line built with
:func:`~replaylog.lines.build_line`. The fast path must give the same records (same
types, fields, ``extra`` and ``absent``) and, on a bad log, the same error, on every
log of the spec-kitty corpus, on the store's own logs and on generated mixes of valid
and invalid lines of every kind; and it must really be taken for a log that is good.
The index built through it holds what the plain path gives too.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import pickle
import shutil
import sqlite3
from io import BytesIO
from itertools import accumulate
from pathlib import Path
from typing import Any

import pytest
from conftest import lines_of, new_event, typed, write_log
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replaylog import (
    EVENTS_FILENAME,
    Event,
    EventStore,
    StoreError,
    append_events,
    iter_events,
    read_events,
    read_events_raw,
)
from replaylog.clock import lamport_of
from replaylog.lines import Line, StatusEvent, build_line, index_fields
from replaylog.log import fastread, log_path, scan_log

Outcome = tuple[Any, ...]


def described(records: list[Line]) -> list[tuple[str, str, list[str]]]:
    """Each record as its type, every field in JSON (``true`` is not ``1``) and the keys
    of its ``extra`` in their order (the line's)."""
    out = []
    for record in records:
        names = [f.name for f in dataclasses.fields(record)]
        assert set(vars(record)) <= set(names)  # nothing but fields in the instance
        d = {name: getattr(record, name) for name in names}
        d["absent"] = sorted(d["absent"])
        out.append((type(record).__name__, json.dumps(d, sort_keys=True), list(record.extra)))
    return out


def plain(feature: Path) -> Outcome:
    try:
        records = [build_line(line.obj) for line in scan_log(log_path(feature))]
    except StoreError as err:
        return "error", str(err), err.line, err.path
    return "ok", described(records)


def plain_raw(feature: Path) -> Outcome:
    try:
        objs = [line.obj for line in scan_log(log_path(feature))]
    except StoreError as err:
        return "error", str(err), err.line, err.path
    return "ok", json.dumps(objs)


def fast(feature: Path) -> Outcome:
    try:
        records = read_events(feature)
    except StoreError as err:
        return "error", str(err), err.line, err.path
    return "ok", described(records)


def fast_stream(feature: Path) -> Outcome:
    records = []
    try:
        for record in iter_events(feature):
            records.append(record)
    except StoreError as err:
        return "error", str(err), err.line, err.path
    return "ok", described(records)


def fast_raw(feature: Path) -> Outcome:
    try:
        objs = read_events_raw(feature)
    except StoreError as err:
        return "error", str(err), err.line, err.path
    return "ok", json.dumps(objs)


def unordered_raw(feature: Path, *, fast: bool) -> Outcome:
    """The line objects, compared as dicts (their keys' order aside)."""
    try:
        if fast:
            objs = read_events_raw(feature, ordered=False)
        else:
            objs = [line.obj for line in scan_log(log_path(feature))]
    except StoreError as err:
        return "error", str(err), err.line, err.path
    # Each value's type beside it: true is not 1.
    return "ok", [(obj, sorted((k, type(v).__name__) for k, v in obj.items())) for obj in objs]


def assert_paths_agree(feature: Path) -> None:
    expected = plain(feature)
    assert fast(feature) == expected
    assert fast_stream(feature) == expected
    assert fast_raw(feature) == plain_raw(feature)
    assert unordered_raw(feature, fast=True) == unordered_raw(feature, fast=False)


def corpus_logs(corpus: Path) -> list[Path]:
    logs = sorted(corpus.glob("*/kitty-specs/*/" + EVENTS_FILENAME))
    assert len(logs) == 183
    return logs


# --------------------------------------------------------------------------- real logs


def test_every_corpus_log_is_read_by_the_fast_path_exactly_as_by_the_plain_path(
    spec_kitty_corpus: Path,
) -> None:
    for log in corpus_logs(spec_kitty_corpus):
        assert fastread.read_lines(str(log)) is not None, f"{log}: the fast path gave up"
        assert_paths_agree(log.parent)


def test_the_stores_own_logs_are_read_by_the_fast_path_exactly_as_by_the_plain_path(
    tmp_path: Path,
) -> None:
    events = [
        Event.new("WPStatusChanged", f"WP{i % 7}", {"i": i, "f": i / 3, "big": 2**70})
        for i in range(3000)
    ]
    events.append(Event.new("Noted", "WP1", {}, causation_id="c", correlation_id=None))
    events.append(Event.new("Noted", "WP2", {"deep": [{"a": [1, None]}]}, extra={"zz": [1]}))
    written = append_events(tmp_path, events, fsync=False)
    assert fastread.read_lines(log_path(tmp_path)) is not None
    assert_paths_agree(tmp_path)
    assert read_events(tmp_path) == written


def index_rows(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            'SELECT feature, line, "offset", length, event_id, event_type, aggregate_id,'
            " node_id, lamport FROM events ORDER BY feature, line"
        ).fetchall()


def expected_rows(feature: str, log: Path) -> list[tuple[Any, ...]]:
    """What the index must hold of a log, worked out from the plain path."""
    rows, clock = [], 0
    for line in scan_log(str(log)):
        event_type, aggregate, node, _ = index_fields(line.obj)
        clock_before = clock
        value = lamport_of(line.obj, clock_before)
        clock = max(clock, value)
        length = line.end - line.offset - (1 if line.terminated else 0)
        rows.append(
            (feature, line.number, line.offset, length, line.obj["event_id"], event_type,
             aggregate, node, value)
        )  # fmt: skip
    return rows


def test_the_index_of_the_corpus_holds_what_the_plain_path_reads(
    tmp_path: Path, spec_kitty_corpus: Path
) -> None:
    root = tmp_path / "project"
    shutil.copytree(spec_kitty_corpus / "head" / "kitty-specs", root / "kitty-specs")
    for p in root.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    logs = sorted((root / "kitty-specs").glob("*/" + EVENTS_FILENAME))
    with EventStore(root, fsync=False) as store:
        store.rebuild_index()
        rebuilt = index_rows(root / ".replaylog" / "queue.db")
    expected = [row for log in logs for row in expected_rows(log.parent.name, log)]
    assert rebuilt == expected
    # Caught up line by line from an empty index, it holds the same.
    (root / ".replaylog" / "queue.db").unlink()
    with EventStore(root, fsync=False) as store:
        store.status()
    assert index_rows(root / ".replaylog" / "queue.db") == expected


# --------------------------------------------------------------------------- generated

ULID_CHARS = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
LANES = ["planned", "claimed", "in_progress", "for_review", "done", "genesis", "blocked"]
ACTORS = st.one_of(
    st.sampled_from(["claude", "human", ""]),
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["implementer", None]),
            "profile": st.sampled_from(["p", None]),
            "tool": st.sampled_from(["t", None]),
            "model": st.sampled_from(["m", None]),
        }
    ),
)
TIMES = st.sampled_from(
    ["2026-02-09T10:31:07.123456+00:00", "2026-02-09T10:31:07Z", "2026-02-09 10:31",
     "2026-02-09T10:31:07+0530"]
)  # fmt: skip
STAMPS = st.sampled_from(["2026-11-20T22:00:00.000001Z", "2026-11-20T22:00:00+00:00"])
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
# Values that break a field of some kind or other (and some that are still good).
ODD_VALUES = [
    None, 0, 1, -1, 2**63, 2**64, True, 1.5, "", "x", "doing", "in_progress", [], {},
    {"role": "r"}, {"role": 1, "profile": None, "tool": None, "model": None},
    "01jd0000000000000000000000", "81JD0000000000000000000000", "01JD000000000000000000000I",
    "01JD00000000000000000000000", "01JD0000000000000000000\u00e90", "annotation", "note",
    "2026-13-01T00:00:00Z", "t" * 201, "2026-11-20T22:00:00Z",
    "a\nb", "x\x7f", "n\x85", "\x1b[0m", "a\u00a0b", "T\udc00"]  # fmt: skip
BAD_VALUES = st.sampled_from(ODD_VALUES)


def ulid(i: int) -> str:
    return "01JD" + "".join(ULID_CHARS[(i >> (5 * k)) & 31] for k in range(22))[::-1]


@st.composite
def good_line(draw: st.DrawFn, i: int) -> dict[str, Any]:
    kind = draw(st.sampled_from(["transition", "annotation", "record", "envelope", "partial"]))
    obj: dict[str, Any] = {"event_id": ulid(i)}
    if kind == "transition":
        obj.update(
            wp_id=draw(st.sampled_from(["WP01", "WP02"])),
            from_lane=draw(st.sampled_from(LANES)),
            to_lane=draw(st.sampled_from(LANES)),
            at=draw(TIMES),
            actor=draw(ACTORS),
            force=draw(st.booleans()),
            execution_mode=draw(st.sampled_from(["worktree", ""])),
        )
        for name in draw(
            st.lists(
                st.sampled_from(
                    ["mission_slug", "feature_slug", "mission_id", "reason", "review_ref",
                     "evidence", "review_result", "policy_metadata"]
                ),
                unique=True,
            )
        ):  # fmt: skip
            obj[name] = draw(VALUES)
    elif kind == "annotation":
        obj.update(
            kind="annotation",
            wp_id="WP01",
            at=draw(st.sampled_from(["", "whenever", "2026-02-09T10:31:07Z"])),
            actor=draw(ACTORS),
            delta=draw(st.dictionaries(st.sampled_from(["note", "agent"]), VALUES, max_size=2)),
        )
    elif kind == "record":
        obj.update(type=draw(st.sampled_from(["DecisionRecorded", "x"])), at="2026-02-09")
    elif kind == "envelope":
        obj.update(
            Event.new(
                "Moved", "WP01", {"v": draw(VALUES)}, lamport_clock=draw(st.integers(0, 2**63 - 1))
            ).to_dict()
        )
        obj["event_id"] = ulid(i)
    else:
        obj.update(event_type="Moved", payload={}, timestamp=draw(STAMPS))
        if draw(st.booleans()):
            del obj["timestamp"]
            obj["at"] = "any time"
    if kind != "envelope" and draw(st.integers(0, 5)) == 0:
        obj["lamport_clock"] = draw(st.integers(0, 2**63 - 1))
    if draw(st.integers(0, 3)) == 0:
        obj[draw(st.sampled_from(["zz", "aa", "aggregate_type", "project_slug"]))] = draw(VALUES)
    return obj


@st.composite
def log_lines(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A log of a few lines of every kind, some broken; and whether it is all plain good."""
    lines: list[bytes] = []
    clean = True
    for i in range(draw(st.integers(1, 10))):
        obj = draw(good_line(i))
        if draw(st.integers(0, 5)) == 0:  # break (or perhaps not) a field
            clean = False
            name = draw(st.sampled_from(sorted(obj) + ["kind", "type", "to_lane", "event_type"]))
            if draw(st.booleans()) and name in obj:
                del obj[name]
            else:
                obj[name] = draw(BAD_VALUES)
        keys = sorted(obj) if draw(st.booleans()) else list(reversed(sorted(obj)))
        lines.append(json.dumps({k: obj[k] for k in keys}).encode() + b"\n")
    if draw(st.integers(0, 3)) == 0:  # a mishap of the bytes
        clean = False
        where = draw(st.integers(0, len(lines) - 1))
        mishap = draw(
            st.sampled_from(["blank", "garbage", "duplicate", "conflict", "torn", "crlf"])
        )
        if mishap == "blank":
            lines.insert(where, b"  \n")
        elif mishap == "garbage":
            lines[where] = lines[where][: draw(st.integers(0, 20))] + b"\n"
        elif mishap == "duplicate":
            lines.append(lines[where])
        elif mishap == "conflict":
            obj = json.loads(lines[where])
            obj["zz_changed"] = 1
            lines.append(json.dumps(obj).encode() + b"\n")
        elif mishap == "torn":
            lines[-1] = lines[-1][:-1]
        else:
            lines = [line.replace(b"\n", b"\r\n") for line in lines]
    return b"".join(lines), clean


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(log=log_lines())
def test_generated_logs_of_every_kind_give_the_same_records_and_errors_on_both_paths(
    tmp_path_factory: pytest.TempPathFactory, log: tuple[bytes, bool]
) -> None:
    data, clean = log
    feature = tmp_path_factory.mktemp("feat")
    (feature / EVENTS_FILENAME).write_bytes(data)
    assert_paths_agree(feature)
    if clean:  # good lines of every kind: the fast path must take them itself
        assert fastread.read_lines(log_path(feature)) is not None


def test_every_field_of_every_kind_given_every_odd_value_is_judged_alike_on_both_paths(
    tmp_path: Path,
) -> None:
    good = {
        "transition": {"event_id": ulid(1), "wp_id": "WP01", "from_lane": "planned",
                       "to_lane": "claimed", "at": "2026-02-09T10:31:07Z", "actor": "a",
                       "force": False, "execution_mode": "worktree", "mission_slug": "m"},
        "annotation": {"event_id": ulid(1), "kind": "annotation", "wp_id": "WP01", "at": "x",
                       "actor": {"role": None, "profile": None, "tool": None, "model": None},
                       "delta": {}},
        "record": {"event_id": ulid(1), "type": "DecisionRecorded", "at": "x", "wp_id": 3},
        "envelope": {**Event.new("Moved", "WP01", {}).to_dict(), "event_id": ulid(1)},
        "partial": {"event_id": ulid(1), "event_type": "Moved", "payload": {}, "at": "x"},
    }  # fmt: skip
    taken = 0
    for kind, obj in good.items():
        names = sorted(obj) + ["kind", "type", "to_lane", "event_type", "lamport_clock"]
        for name in names:
            variants = [{k: v for k, v in obj.items() if k != name}]
            variants += [{**obj, name: value} for value in ODD_VALUES]
            for variant in variants:
                # Beside a good line of another kind, so that the log mixes kinds; and
                # beside one of the same kind (the store's own lines have a path of theirs).
                # Its keys as given, and sorted as spec-kitty writes them (the typed
                # decoders' lines).
                for other, sort in itertools.product(("transition", kind), (False, True)):
                    feature = tmp_path / f"f{taken}"
                    feature.mkdir()
                    neighbour = {**good[other], "event_id": ulid(2)}
                    (feature / EVENTS_FILENAME).write_text(
                        json.dumps(neighbour, sort_keys=True)
                        + "\n"
                        + json.dumps(variant, sort_keys=sort)
                        + "\n"
                    )
                    assert fast(feature) == plain(feature), (kind, name, variant.get(name))
                    taken += 1
    assert taken > 4000


@pytest.mark.parametrize("tail", ["good", "identical duplicate", "conflicting duplicate", "bad"])
def test_a_log_of_several_chunks_is_read_alike_whatever_its_later_chunk_holds(
    tmp_path: Path, tail: str
) -> None:
    first = Event.new("Moved", "WP01", {"text": "x" * 300}).to_line()
    lines = [first] + [
        Event.new("Moved", f"WP{i % 9}", {"text": "x" * 300}).to_line() for i in range(14_000)
    ]
    assert sum(map(len, lines)) > 4 << 20  # more than one chunk
    if tail == "identical duplicate":
        lines.append(first)
    elif tail == "conflicting duplicate":
        lines.append(first.replace(b'"text": "x', b'"text": "y'))
    elif tail == "bad":
        lines.append(b'{"event_id": 1}\n')
    lines.append(Event.new("Moved", "WP02", {}).to_line())
    (tmp_path / EVENTS_FILENAME).write_bytes(b"".join(lines))
    assert_paths_agree(tmp_path)
    if tail == "good":
        assert fastread.read_lines(log_path(tmp_path)) is not None


# --------------------------------------------------------------------------- the log's readers


def read_outcome(feature: Path) -> tuple[str, Any]:
    """What the public read returns (its fast path when it can)."""
    try:
        return "ok", typed(read_events_raw(feature))
    except StoreError as err:
        return "error", err.line


def scan_outcome(feature: Path) -> tuple[str, Any]:
    """What the strict line-by-line scan returns."""
    try:
        return "ok", typed([line.obj for line in scan_log(log_path(feature))])
    except StoreError as err:
        return "error", err.line


def unusual_files() -> dict[str, bytes]:
    a, b, c = new_event(1), new_event(2), new_event(3)
    clean = b"".join(lines_of(a, b, c))
    d = a.to_dict()

    def line(obj: Any) -> bytes:
        return (json.dumps(obj) + "\n").encode()

    return {
        "clean": clean,
        "crlf": clean.replace(b"\n", b"\r\n"),
        "blank lines": b"\n" + clean.replace(b"\n", b"\n\n"),
        "spaces around": b"".join(b"  " + x[:-1] + b" \t\n" for x in lines_of(a, b, c)),
        "unsorted keys": line(dict(reversed(list(d.items())))),
        "extra keys": line({**d, "zz": 1, "aa": [None]}),
        "identical duplicate": clean + a.to_line(),
        "conflicting duplicate": clean + line({**d, "payload": {"n": 2}}),
        "wide integer": line({**d, "payload": {"v": 2**64}}),
        "wide negative": line({**d, "payload": {"v": -(2**63) - 1}}),
        "wide clock": line({**d, "lamport_clock": 2**64}),
        "out of range float": a.to_line().replace(b'"n": 1', b'"n": 1e999'),
        "id with newline": line({**d, "event_id": f"{b.event_id}\n{c.event_id}"}),
        "stamp with newline": line({**d, "timestamp": f"{a.timestamp}\n{a.timestamp}"}),
        "stamp digits": line({**d, "timestamp": "٢٠٢٦-11-20T22:00:00Z"}),
        "stamp month 13": line({**d, "timestamp": "2026-13-20T22:00:00Z"}),
        "bool clock": line({**d, "lamport_clock": True}),
        "float clock": line({**d, "lamport_clock": 1.0}),
        "negative clock": line({**d, "lamport_clock": -1}),
        "long type": line({**d, "event_type": "t" * 201}),
        "empty node": line({**d, "node_id": ""}),
        "payload list": line({**d, "payload": []}),
        "torn valid tail": clean + b.to_line()[:-1].replace(b.event_id.encode(), b"7" * 26),
        "torn invalid tail": clean + b'{"event',
        "bom": b"\xef\xbb\xbf" + clean,
        "form feed line": clean + b"\x0c\n",
        "nul line": clean + b"\x00\n",
        "lone surrogate": line({**d, "payload": {"s": "\ud800"}}),
        "lone surrogate in a type": line({**d, "event_type": "T\udc00"}),
        "lone surrogate in a key": line({**d, "payload": {"\udbff": 1}}),
        "newline in a type": clean + line({**d, "event_type": "a\nb"}),
        "carriage return in an aggregate": line({**d, "aggregate_id": "x\ry"}),
        "del in a node": clean.replace(b'"node_id": "', b'"node_id": "\x7f'),
        "c1 in a node, as utf-8": clean.replace(b'"node_id": "', '"node_id": "\x85'.encode()),
        "no-break space in a type": clean.replace(b'"WPStatusChanged"', b'"WP\\u00a0Status"'),
        "blank torn tail": clean + b"   ",
        "tab torn tail": clean + b"\t",
        "null line": clean + b"null\n",
    }


@pytest.mark.parametrize("name", list(unusual_files()))
def test_fast_and_slow_read_paths_agree(tmp_path: Path, name: str) -> None:
    write_log(tmp_path, unusual_files()[name])
    assert read_outcome(tmp_path) == scan_outcome(tmp_path)


def name_cases() -> dict[str, list[dict[str, Any]]]:
    """Logs read by each way of the fast path: the store's own lines, envelopes with other
    keys (the general way), envelopes among spec-kitty's transitions (the typed decoders'
    leftovers). Their payloads hold escapes and other scripts, so names are looked at."""
    text = {"s": "line\none \u00e9\u4e8b \\ \x7f \x85", "t": "\t"}
    store = [Event.new("T\u00e9", f"WP{i}", text, lamport_clock=i).to_dict() for i in range(1, 40)]
    extra = [{**o, "aggregate_type": "wp"} for o in store]
    mixed: list[dict[str, Any]] = []
    for i in range(40):
        mixed.append(spec_kitty_transition(i))
        mixed.append({"event_id": ulid(100 + i), "event_type": "Moved", "payload": text, "at": "x"})
    return {"store lines": store, "other keys": extra, "among transitions": mixed}


@pytest.mark.parametrize("way", ["store lines", "other keys", "among transitions"])
def test_names_are_checked_for_control_characters_on_every_way_of_the_fast_path(
    tmp_path: Path, way: str
) -> None:
    objs = name_cases()[way]
    clean = b"".join(json.dumps(o, sort_keys=True).encode() + b"\n" for o in objs)
    path = write_log(tmp_path / "clean", clean)
    assert fastread.read_lines(str(path)) is not None  # good names: read fast
    assert_paths_agree(tmp_path / "clean")
    where = [k for k, o in enumerate(objs) if "event_type" in o][3]  # an envelope
    for field, value in (
        ("event_type", "a\nb"),
        ("event_type", "a\u00a0b"),  # not Python-printable, yet no control: good
        ("aggregate_id", "x\ry"),
        ("node_id", "n\x1b"),
        ("node_id", "n\x7f"),
        ("aggregate_id", "x\x85"),
    ):
        bad = [dict(o) for o in objs]
        bad[where][field] = value
        for ascii in (True, False):
            data = b"".join(
                json.dumps(o, sort_keys=True, ensure_ascii=ascii).encode() + b"\n" for o in bad
            )
            feature = tmp_path / f"{field}-{ord(value[1])}-{ascii}"
            write_log(feature, data)
            assert_paths_agree(feature)
            outcome = plain(feature)
            if value[1] == "\u00a0":
                assert outcome[0] == "ok", outcome
            else:
                assert outcome[0] == "error" and "control character" in outcome[1], outcome
                assert outcome[2] == where + 1


def test_fast_read_path_takes_a_clean_log_as_the_scan_does(tmp_path: Path) -> None:
    events = [Event.new("t", f"WP{i % 7}", {"i": i, "f": i / 3}) for i in range(2000)]
    append_events(tmp_path, events, fsync=False)
    assert read_outcome(tmp_path) == scan_outcome(tmp_path)
    assert read_outcome(tmp_path)[0] == "ok"


def test_a_record_read_with_nothing_absent_behaves_as_one_made_by_hand(tmp_path: Path) -> None:
    # Records read from a log share the class's empty ``absent`` instead of holding one
    # each (less memory per record); to the caller they are records like any other.
    made = [new_event(i) for i in range(1, 4)]
    transition = {"event_id": ulid(9), "wp_id": "WP01", "from_lane": "planned",
                  "to_lane": "claimed", "at": "2026-02-09T10:31:07Z", "actor": "a",
                  "force": False, "execution_mode": "worktree", "mission_slug": "m",
                  "feature_slug": "f", "mission_id": "i", "reason": None, "review_ref": None,
                  "evidence": None, "review_result": None, "policy_metadata": None}  # fmt: skip
    path = write_log(tmp_path, *lines_of(*made), json.dumps(transition).encode() + b"\n")
    fast_records = read_events(tmp_path)
    plain_records = [build_line(line.obj) for line in scan_log(str(path))]
    assert fastread.read_lines(str(path)) is not None  # the fast path took it
    expected: list[Line] = [*made, StatusEvent.from_dict(transition)]
    for records in (fast_records, plain_records):
        assert records == expected
        for record, other in zip(records, expected, strict=True):
            assert record.absent == frozenset() and type(record.absent) is frozenset
            assert record.to_dict() == other.to_dict()
            assert pickle.loads(pickle.dumps(record)) == record
            assert copy.deepcopy(record) == record
            assert dataclasses.replace(record, extra={"k": 1}).extra == {"k": 1}
            assert dataclasses.replace(record).absent == frozenset()
            assert dataclasses.asdict(record)["absent"] == frozenset()
            with pytest.raises(dataclasses.FrozenInstanceError):
                record.absent = frozenset({"reason"})  # type: ignore[misc]


def spec_kitty_transition(i: int, **more: Any) -> dict[str, Any]:
    return {"event_id": ulid(i), "wp_id": f"WP{i % 3:02d}", "from_lane": "planned",
            "to_lane": "claimed", "at": f"2026-02-09T10:31:{i % 60:02d}Z", "actor": "a",
            "force": False, "execution_mode": "worktree", "mission_slug": "m",
            "mission_id": "01KN2371WNZX28ME4MN97B67PJ", "reason": None, "review_ref": None,
            "evidence": None, "policy_metadata": None, **more}  # fmt: skip


def spec_kitty_annotation(i: int) -> dict[str, Any]:
    return {"event_id": ulid(i), "kind": "annotation", "wp_id": "WP01", "at": "x",
            "actor": {"role": "r", "profile": None, "tool": "t", "model": None},
            "delta": {"note": i}}  # fmt: skip


def test_spec_kitty_s_transitions_and_annotations_are_read_by_typed_decoders(
    tmp_path: Path,
) -> None:
    # As spec-kitty writes them: sorted keys, transitions of two key sets (one without
    # review_result, as older versions wrote them), annotations between them.
    objs: list[dict[str, Any]] = []
    for i in range(60):
        more = {"review_result": {"verdict": "ok"}} if i >= 25 else {}
        objs.append(spec_kitty_transition(i, **more))
        if i % 4 == 1:
            objs.append(spec_kitty_annotation(1000 + i))
    data = b"".join(json.dumps(obj, sort_keys=True).encode() + b"\n" for obj in objs)
    (tmp_path / EVENTS_FILENAME).write_bytes(data)
    typed = fastread._parse_typed(BytesIO(data).readlines())
    assert typed is not None
    read, groups = typed
    kinds = sorted(group.plan.kind for group in groups)
    assert kinds == ["annotation", "transition", "transition"]  # a group per key set
    assert sum(map(len, (group.objs for group in groups))) == len(objs)
    assert read == objs  # every line, in file order
    assert_paths_agree(tmp_path)
    # A line its typed decoder refuses (force is not a boolean) is judged by the plain
    # path, as every other odd value (test above).
    objs[0]["force"] = 1  # a transition
    (tmp_path / EVENTS_FILENAME).write_bytes(
        b"".join(json.dumps(obj, sort_keys=True).encode() + b"\n" for obj in objs)
    )
    assert fast(tmp_path) == plain(tmp_path)
    assert fast(tmp_path)[0] == "error"


def test_a_log_whose_key_sets_alternate_is_read_in_one_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two key sets of transitions, one line of each in turn: every line ends a run of its
    # decoder. Each line is decoded at most twice: by the decoder before it, which
    # refuses it, and by its own (not a second time by the one that refused it).
    monkeypatch.setattr(fastread, "_typed_shapes", {})
    monkeypatch.setattr(fastread, "_typed", {})
    decoded: list[bytes] = []
    make = fastread._make_typed

    def counting(shape: tuple[str, ...], objects: bool) -> Any:
        made = make(shape, objects)
        if made is None:
            return None

        def decode(line: bytes) -> Any:
            decoded.append(line)
            return made.decode(line)

        return made._replace(decode=decode)

    monkeypatch.setattr(fastread, "_make_typed", counting)
    objs = [
        spec_kitty_transition(i, **({"review_result": None} if i % 2 else {})) for i in range(400)
    ]
    data = b"".join(json.dumps(obj, sort_keys=True).encode() + b"\n" for obj in objs)
    (tmp_path / EVENTS_FILENAME).write_bytes(data)
    typed = fastread._parse_typed(BytesIO(data).readlines())
    assert typed is not None and typed[0] == objs
    assert len(typed[1]) == 2  # a group per key set
    assert len(decoded) <= 2 * len(objs)
    assert_paths_agree(tmp_path)
    # No lines: nothing read, whether a decoder of the kind is known yet or not.
    assert fastread._typed_groups("transition", [], []) is None
    monkeypatch.setattr(fastread, "_typed", {})
    assert fastread._typed_groups("transition", [], []) is None


def spec_kitty_record(i: int) -> dict[str, Any]:
    return {"actor": {"display": None, "id": "gen", "kind": "runtime"},
            "at": "2026-06-28T08:51:33.878931+00:00", "event_id": ulid(i),
            "evidence_ref_count": i, "force": False, "lamport": 1, "schema_version": 1,
            "type": "RetrospectiveCaptured", "wp_id": None}  # fmt: skip


def test_a_line_of_a_known_key_set_in_another_order_keeps_its_own_order_of_extra_keys(
    tmp_path: Path,
) -> None:
    # A record's extra keys are in the line's order, whichever order a line of the same
    # keys came in before (a msgspec Struct, as the typed decoders use, takes its fields
    # in any order: it could not be the one to tell).
    sorted_line = json.dumps(spec_kitty_record(1), sort_keys=True)
    # The extra keys reversed, the line's end as spec-kitty writes it (`"type": ...,
    # "wp_id": ...}`): a reader that told a record by its last keys would still take
    # this line for one of the same key set.
    obj = spec_kitty_record(2)
    tail = {"type": obj.pop("type"), "wp_id": obj.pop("wp_id")}
    other_line = json.dumps({**dict(reversed(sorted(obj.items()))), **tail})
    for first, second in ((sorted_line, other_line), (other_line, sorted_line)):
        (tmp_path / EVENTS_FILENAME).write_text(first + "\n" + second + "\n")
        assert fast(tmp_path) == plain(tmp_path)
        records = read_events(tmp_path)
        for record, line in zip(records, (first, second), strict=True):
            assert list(record.extra) == [
                key for key in json.loads(line) if key not in ("event_id", "type", "at")
            ]


def test_a_log_of_more_key_sets_than_the_typed_decoders_kept_is_read_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The decoders remembered are bounded: with room for two, a log of six key sets
    # (each optional field in turn), interleaved, makes them forgotten again and again.
    monkeypatch.setattr(fastread, "_MAX_TYPED", 2)
    monkeypatch.setattr(fastread, "_typed_shapes", {})
    optional = ["feature_slug", "review_result", "evidence", "reason", "review_ref", "mission_id"]
    objs = []
    for i in range(60):
        obj = spec_kitty_transition(i)
        for name in ("evidence", "reason", "review_ref", "mission_id"):
            del obj[name]
        obj[optional[i % len(optional)]] = None
        objs.append(obj)
    data = b"".join(json.dumps(obj, sort_keys=True).encode() + b"\n" for obj in objs)
    (tmp_path / EVENTS_FILENAME).write_bytes(data)
    typed = fastread._parse_typed(BytesIO(data).readlines())
    assert typed is not None and len(typed[1]) == len(optional)  # a group per key set
    assert len(fastread._typed_shapes) <= 2
    assert_paths_agree(tmp_path)


def test_a_spec_kitty_record_read_holds_only_its_line_yet_behaves_as_one_made_by_hand(
    tmp_path: Path,
) -> None:
    # The fast path stores only what a line held: the optional fields it lacks are the
    # class's None, its empty ``extra`` is made when asked for, and ``absent`` is told by
    # the fields it lacks. To a caller such a record is the plain path's.
    lines = [spec_kitty_transition(1), spec_kitty_annotation(2), spec_kitty_transition(3)]
    path = write_log(tmp_path, *(json.dumps(o, sort_keys=True).encode() + b"\n" for o in lines))
    assert fastread.read_lines(str(path)) is not None  # the fast path took it
    fast_records = read_events(tmp_path)
    plain_records = [build_line(line.obj) for line in scan_log(str(path))]
    assert "absent" in vars(plain_records[0]) and "extra" in vars(plain_records[0])
    for record, other in zip(fast_records, plain_records, strict=True):
        assert "extra" not in vars(record) and "absent" not in vars(record)
        assert record == other and hash(record) == hash(other) and repr(record) == repr(other)
        assert record.absent == other.absent and type(record.absent) is frozenset
        assert record.extra == {} and type(record.extra) is dict
        assert record.extra is record.extra  # made once, then kept
        assert record.to_dict() == other.to_dict() and record.to_line() == other.to_line()
        assert type(record).from_dict(record.to_dict()) == other  # the round trip
        assert pickle.loads(pickle.dumps(record)) == other
        assert copy.deepcopy(record) == other and copy.copy(record) == other
        assert dataclasses.asdict(record) == dataclasses.asdict(other)
        assert dataclasses.replace(record) == other
        assert dataclasses.replace(record, extra={"k": 1}).extra == {"k": 1}
        with pytest.raises(dataclasses.FrozenInstanceError):
            record.absent = frozenset()  # type: ignore[misc]
        with pytest.raises(AttributeError, match="object has no attribute 'nope'"):
            record.nope  # type: ignore[attr-defined]  # noqa: B018
        assert not hasattr(record, "nope")
    assert fast_records[0].absent == {"feature_slug", "review_result"}
    assert fast_records[0].feature_slug is None and "feature_slug" not in vars(fast_records[0])


MUTATION_BYTES = st.sampled_from(
    [b"\n", b"\r", b" ", b'"', b"\\", b"0", b"9" * 20, b"-", b"}", b"{", b"[", b",", b":",
     b"\x00", b"\xff", b"\x0c", b"e9", b".5", b"true", b"null", b"\\n", b"\\ud800", b"Z"]
)  # fmt: skip


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    cuts=st.lists(
        st.tuples(
            st.integers(0, 10_000),
            st.integers(0, 3),
            st.lists(MUTATION_BYTES, max_size=3).map(b"".join),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_fast_and_slow_read_paths_agree_on_mutated_logs(
    tmp_path: Path, cuts: list[tuple[int, int, bytes]]
) -> None:
    base = b"".join(lines_of(new_event(1), new_event(2, big=2**40, f=-0.5, s="a\nb"), new_event(3)))
    data = base
    for pos, drop, insert in cuts:
        pos %= len(data) + 1
        data = data[:pos] + insert + data[pos + drop :]
    feature = tmp_path / f"m{abs(hash(data)) % 10**12}"
    write_log(feature, data)
    assert read_outcome(feature) == scan_outcome(feature)


@pytest.mark.parametrize("room", [-1, 0, 1])
def test_a_line_at_the_length_limit_is_judged_alike_on_both_paths(
    tmp_path: Path, room: int
) -> None:
    from replaylog.lines.canonical import MAX_LINE_BYTES

    base = Event.new("Moved", "WP01", {"text": ""}).to_line()
    pad = MAX_LINE_BYTES - len(base) + room  # the line with its newline: the limit + room
    big_event = Event.new("Moved", "WP01", {"text": "x" * pad})
    big = (json.dumps(big_event.to_dict(), sort_keys=True) + "\n").encode()  # as to_line would
    assert len(big) == MAX_LINE_BYTES + room
    lines = [
        Event.new("Moved", "WP02", {}).to_line(),
        big,
        Event.new("Moved", "WP03", {}).to_line(),
    ]
    (tmp_path / EVENTS_FILENAME).write_bytes(b"".join(lines))
    assert_paths_agree(tmp_path)
    if room <= 0:  # a line shorter than the limit without its newline: read fast
        assert fastread.read_lines(log_path(tmp_path)) is not None
    else:
        assert plain(tmp_path)[0] == "error"


def test_the_fast_path_gives_the_index_each_line_s_place_with_or_without_a_newline_at_the_end(
    tmp_path: Path,
) -> None:
    lines = [Event.new("Moved", f"WP{i}", {"i": i}).to_line() for i in range(5)]
    lines[2] = lines[2].replace(b"\n", b"\r\n")
    data = b"".join(lines)
    (tmp_path / EVENTS_FILENAME).write_bytes(data)
    chunks = list(fastread.mixed_chunks(log_path(tmp_path)))
    assert len(chunks) == 1
    expected = [(line.offset, line.end - line.offset - 1) for line in scan_log(log_path(tmp_path))]
    assert list(zip(chunks[0].offsets, chunks[0].lengths, strict=True)) == expected
    assert chunks[0].end == len(data)
    bare = list(fastread.mixed_chunks(log_path(tmp_path), places=False))
    assert (bare[0].offsets, bare[0].lengths, bare[0].end) == ([], [], len(data))
    with pytest.raises(fastread.Unclean):
        (tmp_path / EVENTS_FILENAME).write_bytes(data + b'{"torn')
        list(fastread.mixed_chunks(log_path(tmp_path)))


@pytest.mark.parametrize("chunk", [700, 1024, 1531, 4096])
@pytest.mark.parametrize("tail", ["clean", "no newline at the end", "torn", "long line"])
def test_chunks_that_end_inside_a_line_give_every_line_and_its_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int, tail: str
) -> None:
    # Small chunks, so that many end inside a line: the line is read again, whole, by
    # the next read. The records, the errors and each line's place are the plain path's.
    monkeypatch.setattr(fastread, "_READ_CHUNK", chunk)
    events = [Event.new("Moved", f"WP{i}", {"text": "x" * (i * 37 % 400)}) for i in range(60)]
    data = b"".join(e.to_line() for e in events)
    if tail == "no newline at the end":
        data = data[:-1]
    elif tail == "torn":
        data += b'{"event_id": "01J'
    elif tail == "long line":  # longer than a chunk: the plain path judges it
        data += Event.new("Moved", "WP1", {"text": "y" * chunk}).to_line()
    path = write_log(tmp_path, data)
    assert_paths_agree(tmp_path)
    taken = fastread.read_lines(str(path)) is not None
    assert taken == (tail == "clean")  # a last line with no newline: the plain path judges it
    if taken:
        chunks = list(fastread.mixed_chunks(str(path)))
        assert len(chunks) > 5
        places = [p for c in chunks for p in zip(c.offsets, c.lengths, strict=True)]
        expected = [(line.offset, line.end - line.offset - 1) for line in scan_log(str(path))]
        assert places == expected
        assert chunks[-1].end == len(data)
        assert [c.first_line for c in chunks] == list(
            accumulate([1] + [len(c.objs) for c in chunks[:-1]])
        )


# --------------------------------------------------------------------------- times


def times() -> st.SearchStrategy[str]:
    """Times in many layouts, most of them good, with values at and beyond every bound of
    both patterns."""
    same = [lambda t: t] * 6
    return st.builds(
        lambda year, month, day, sep, hour, minute, second, fraction, zone, oddity: oddity(
            f"{year}-{month}-{day}{sep}{hour}:{minute}:{second}{fraction}{zone}"
        ),
        st.sampled_from(["2026", "0000", "9999"]),
        st.sampled_from(["01", "02", "09", "10", "12", "00", "13", "19"]),
        st.sampled_from(["01", "09", "10", "28", "31", "00", "32", "39"]),
        st.sampled_from(["T", "T", "T", " ", "t"]),
        st.sampled_from(["00", "09", "19", "23", "24", "29"]),
        st.sampled_from(["00", "09", "59", "60", "61"]),
        st.sampled_from(["00", "09", "59", "60", "61"]),
        st.sampled_from(["", ".1", ".123456", ",123456", ".123456789", ".1234567890", "."]),
        st.sampled_from(
            [
                "Z",
                "+00:00",
                "Z",
                "+00:00",
                "-00:00",
                "+0000",
                "+05:30",
                "-23:59",
                "+24:00",
                "+05:60",
                "",
                "z",
                "+05",
                "+00:00Z",
            ]
        ),  # fmt: skip
        st.sampled_from(
            [
                *same,
                lambda t: t[:-1],
                lambda t: t + "0",
                lambda t: t.replace("2", "\u0662", 1),  # an Arabic-Indic digit
                lambda t: t.replace(":", "\n", 1),
                lambda t: t[:16],  # no seconds
            ]
        ),
    )


_FIELD_EDGES = {
    "month": ["01", "12", "06", "00", "13", "19"],
    "day": ["01", "31", "15", "00", "32", "39"],
    "hour": ["00", "23", "12", "24", "29"],
    "minute": ["00", "59", "30", "60", "69"],
    "second": ["00", "59", "60", "61", "69"],
    "zone_hours": ["00", "23", "05", "24", "29"],
    "zone_minutes": ["00", "59", "30", "60", "69"],
}


@st.composite
def one_layout(draw: st.DrawFn, rule: str) -> list[str]:
    """A column of times of one layout that ``rule``'s pattern takes in its first time,
    mostly good, with every field at and beyond its bounds here and there: the column
    that the check by layout takes or refuses."""
    stamp = rule == "stamp"
    sep = "T" if stamp else draw(st.sampled_from(["T", " "]))
    fractions = ["", ".1", ".123456", ".123456789"] + ([] if stamp else [",123456"])
    fraction = draw(st.sampled_from(fractions))
    zone = draw(
        st.sampled_from(["Z", "+hh:mm"] if stamp else ["Z", "", "+hh:mm", "-hh:mm", "+hhmm"])
    )

    def one(edgy: bool) -> str:
        f = {name: edges[0 if stamp and name.startswith("zone") else draw(st.integers(0, 2))]
             for name, edges in _FIELD_EDGES.items()}  # fmt: skip
        if edgy:
            name = draw(st.sampled_from(sorted(_FIELD_EDGES)))
            f[name] = draw(st.sampled_from(_FIELD_EDGES[name]))
        z = zone.replace("hh", f["zone_hours"]).replace("mm", f["zone_minutes"])
        text = f"2026-{f['month']}-{f['day']}{sep}{f['hour']}:{f['minute']}:{f['second']}"
        return text + fraction + z

    return [one(False)] + [one(draw(st.booleans())) for _ in range(draw(st.integers(0, 12)))]


@settings(max_examples=1000, deadline=None)
@given(column=st.lists(times(), min_size=1, max_size=30), rule=st.sampled_from(["stamp", "iso"]))
def test_a_column_of_times_of_any_layouts_is_judged_as_each_time_by_the_pattern(
    column: list[str], rule: str
) -> None:
    times_rule = fastread._STAMP_TIMES if rule == "stamp" else fastread._ISO_TIMES_RULE
    expected = all(times_rule.one.fullmatch(t) is not None for t in column)
    assert fastread._all_times(times_rule, column, len(column)) is expected


@settings(max_examples=1000, deadline=None)
@given(data=st.data(), rule=st.sampled_from(["stamp", "iso"]))
def test_a_column_of_times_of_one_layout_is_judged_as_each_time_by_the_pattern(
    data: st.DataObject, rule: str
) -> None:
    column = data.draw(one_layout(rule))
    times_rule = fastread._STAMP_TIMES if rule == "stamp" else fastread._ISO_TIMES_RULE
    expected = all(times_rule.one.fullmatch(t) is not None for t in column)
    assert fastread._all_times(times_rule, column, len(column)) is expected
    if expected:  # the check by layout took it by itself
        assert fastread._same_layout(times_rule, "\n".join(column) + "\n", len(column))


@pytest.mark.parametrize(
    ("rule", "first", "changed", "good"),
    [
        ("stamp", "2026-12-01T15:33:54.920617Z", "2026-12-31T23:59:60.000000Z", True),
        ("stamp", "2026-11-20T22:00:00+00:00", "2026-01-01T00:00:00+00:00", True),
        ("stamp", "2026-11-20T22:00:00+00:00", "2026-11-20T22:00:00+00:01", False),
        ("stamp", "2026-11-20T22:00:00+00:00", "2026-13-20T22:00:00+00:00", False),
        ("stamp", "2026-11-20T22:00:00+00:00", "2026-11-00T22:00:00+00:00", False),
        ("stamp", "2026-11-20T22:00:00+00:00", "2026-11-32T22:00:00+00:00", False),
        ("stamp", "2026-11-20T22:00:00+00:00", "2026-11-20T24:00:00+00:00", False),
        ("stamp", "2026-11-20T22:00:00+00:00", "2026-11-20T22:60:00+00:00", False),
        ("stamp", "2026-11-20T22:00:00+00:00", "2026-11-20T22:00:61+00:00", False),
        ("iso", "2026-08-10T00:17:38.165395+00:00", "2026-08-10T00:17:38.165395+23:59", True),
        ("iso", "2026-08-10T00:17:38.165395+00:00", "2026-08-10T00:17:38.165395+24:00", False),
        ("iso", "2026-08-10T00:17:38.165395+00:00", "2026-08-10T00:17:38.165395+00:60", False),
        ("iso", "2026-08-10 00:17:38+0530", "2026-08-10 23:59:59+2359", True),
        ("iso", "2026-08-10T00:17:38Z", "2026-08-10T00:17:38z", False),
    ],
)
def test_a_column_of_one_layout_is_checked_without_the_regex(
    rule: str, first: str, changed: str, good: bool
) -> None:
    times_rule = fastread._STAMP_TIMES if rule == "stamp" else fastread._ISO_TIMES_RULE
    column = [first] * 500 + [changed] + [first] * 20
    joined = "\n".join(column) + "\n"
    # The check by layout takes a good column by itself, and never takes a bad one.
    assert fastread._same_layout(times_rule, joined, len(column)) is good
    assert fastread._all_times(times_rule, column, len(column)) is good
    assert fastread._same_layout(times_rule, "\n".join([first] * 3) + "\n", 3)


@pytest.mark.parametrize("rule", ["stamp", "iso"])
def test_a_layout_already_learned_still_refuses_a_column_whose_first_time_is_bad(
    rule: str,
) -> None:
    times_rule = fastread._STAMP_TIMES if rule == "stamp" else fastread._ISO_TIMES_RULE
    good = "2026-11-20T22:00:00.123456Z"
    assert fastread._same_layout(times_rule, good + "\n", 1)  # the layout is learned here
    assert good.encode().translate(fastread._AS_D) + b"\n" in times_rule.layouts
    for bad in ("2026-13-20T22:00:00.123456Z", "2026-11-20T22:60:00.123456Z"):
        column = [bad] + [good] * 30
        assert fastread._same_layout(times_rule, "\n".join(column) + "\n", len(column)) is False
        assert fastread._all_times(times_rule, column, len(column)) is False
