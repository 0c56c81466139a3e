"""SPEC section 3 (and the files of section 1), the JSONL log: append, read, torn tails, repair."""

from __future__ import annotations

import json
import os
import re
import stat
import time
import tracemalloc
from calendar import timegm
from pathlib import Path
from typing import Any

import pytest
from conftest import lines_of, new_event, typed, write_log

from replaylog import (
    EVENTS_FILENAME,
    Event,
    StoreError,
    UsageError,
    append_event,
    append_events,
    iter_events,
    read_events,
    read_events_raw,
)
from replaylog.lines.canonical import MAX_LINE_BYTES
from replaylog.log import log_path, repair_log, scan_log, verify_log

MiB = 1024 * 1024


def read_error(feature: Path) -> StoreError:
    with pytest.raises(StoreError) as info:
        read_events(feature)
    return info.value


# --------------------------------------------------------------------------- appending


def test_order_is_kept_over_many_appends(tmp_path: Path) -> None:
    written = [append_event(tmp_path, Event.new("t", f"a{i}"), fsync=False) for i in range(300)]
    events = read_events(tmp_path)
    assert [e.event_id for e in events] == [e.event_id for e in written]
    assert [e.lamport_clock for e in events] == list(range(1, 301))
    assert events == written


@pytest.mark.parametrize("state", ["no folder", "no file", "empty file", "blank lines"])
def test_empty_or_missing_log_reads_as_nothing(tmp_path: Path, state: str) -> None:
    feature = tmp_path / "feat"
    if state != "no folder":
        feature.mkdir()
    if state == "empty file":
        (feature / EVENTS_FILENAME).write_bytes(b"")
    if state == "blank lines":
        (feature / EVENTS_FILENAME).write_bytes(b"\n\n  \n\t\r\n")
    assert read_events(feature) == []
    assert read_events_raw(feature) == []
    assert list(iter_events(feature)) == []
    assert verify_log(log_path(feature)) == []
    assert not (feature / EVENTS_FILENAME).exists() or state != "no file"


def test_append_under_a_path_that_is_a_file_gives_store_error(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("not a folder")
    with pytest.raises(StoreError):
        append_event(tmp_path / "blocker" / "feat", Event.new("t", "a"), fsync=False)


class SyscallSpy:
    """Counts os.write and os.fsync calls (and fsyncs of directories)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.writes: list[bytes] = []
        self.fsyncs = 0
        self.dir_fsyncs = 0
        real_write, real_fsync = os.write, os.fsync

        def write(fd: int, data: Any) -> int:
            self.writes.append(bytes(data))
            return real_write(fd, data)

        def fsync(fd: int) -> None:
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                self.dir_fsyncs += 1
            else:
                self.fsyncs += 1
            real_fsync(fd)

        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(os, "fsync", fsync)


def test_append_events_is_one_write_and_one_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    append_event(tmp_path, new_event(41))
    before = (tmp_path / EVENTS_FILENAME).read_bytes()
    spy = SyscallSpy(monkeypatch)
    written = append_events(tmp_path, [Event.new("t", f"a{i}", {"i": i}) for i in range(200)])
    assert len(spy.writes) == 1
    assert spy.fsyncs == 1
    after = (tmp_path / EVENTS_FILENAME).read_bytes()
    assert after == before + b"".join(e.to_line() for e in written)


def test_append_events_assigns_increasing_clocks_above_the_logs_maximum(tmp_path: Path) -> None:
    write_log(tmp_path, *lines_of(new_event(5), new_event(41), new_event(7)))
    written = append_events(tmp_path, [Event.new("t", "a") for _ in range(5)], fsync=False)
    assert [e.lamport_clock for e in written] == [42, 43, 44, 45, 46]
    assert [e.lamport_clock for e in read_events(tmp_path)][3:] == [42, 43, 44, 45, 46]


def test_append_events_keeps_given_clocks_and_counts_on_above_them(tmp_path: Path) -> None:
    written = append_events(
        tmp_path, [Event.new("t", "a"), new_event(10), Event.new("t", "a")], fsync=False
    )
    assert [e.lamport_clock for e in written] == [1, 10, 11]


def test_appends_fsync_by_default_and_not_when_turned_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    append_event(tmp_path, Event.new("t", "a"), fsync=False)
    spy = SyscallSpy(monkeypatch)
    append_event(tmp_path, Event.new("t", "a"))
    assert spy.fsyncs == 1
    append_event(tmp_path, Event.new("t", "a"), fsync=False)
    assert spy.fsyncs == 1


def test_first_append_fsyncs_the_new_file_and_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = SyscallSpy(monkeypatch)
    append_event(tmp_path / "new", Event.new("t", "a"))
    assert spy.fsyncs == 1
    assert spy.dir_fsyncs >= 1


def test_an_event_over_1_mib_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    append_event(tmp_path, new_event(1), fsync=False)
    before = (tmp_path / EVENTS_FILENAME).read_bytes()
    big = Event.new("t", "a", {"blob": "x" * MiB})
    with pytest.raises(UsageError, match="1 MiB"):
        append_event(tmp_path, big, fsync=False)
    with pytest.raises(UsageError, match="1 MiB"):
        append_events(tmp_path, [Event.new("t", "a"), big], fsync=False)
    assert (tmp_path / EVENTS_FILENAME).read_bytes() == before


def test_a_line_of_exactly_1_mib_is_written_and_read(tmp_path: Path) -> None:
    base = new_event(1, blob="")
    room = MAX_LINE_BYTES - len(base.to_line())
    e = Event.from_dict({**base.to_dict(), "payload": {"n": 1, "blob": "y" * room}})
    append_event(tmp_path, e, fsync=False)
    assert (tmp_path / EVENTS_FILENAME).stat().st_size == MAX_LINE_BYTES
    assert read_events(tmp_path) == [e]
    assert [line.obj for line in scan_log(log_path(tmp_path))] == [e.to_dict()]


def test_unknown_keys_survive_append_and_read(tmp_path: Path) -> None:
    e = Event.from_dict({**new_event(3).to_dict(), "schema_version": 2, "origin": {"x": [1]}})
    append_event(tmp_path, e, fsync=False)
    [back] = read_events(tmp_path)
    assert back.extra == {"schema_version": 2, "origin": {"x": [1]}}
    assert read_events_raw(tmp_path)[0]["schema_version"] == 2


def test_integers_wider_than_64_bits_read_back_exactly(tmp_path: Path) -> None:
    payload = {
        "u64_max": 2**64 - 1,
        "u64_max_plus_1": 2**64,
        "i64_min_minus_1": -(2**63) - 1,
        "huge": 10**40,
        "nested": [{"v": -(10**30)}],
        "float": 1.5e300,
    }
    e = append_event(tmp_path, Event.new("t", "a", payload), fsync=False)
    assert typed(read_events(tmp_path)[0].payload) == typed(payload)
    assert typed(read_events_raw(tmp_path)[0]["payload"]) == typed(payload)
    assert typed(next(iter_events(tmp_path)).payload) == typed(payload)
    assert read_events(tmp_path) == [e]


def test_a_lamport_clock_the_index_cannot_hold_is_refused_naming_the_line(tmp_path: Path) -> None:
    top = new_event(2).to_line().replace(b'"lamport_clock": 2', b'"lamport_clock": %d' % 2**63)
    write_log(tmp_path, new_event(1).to_line(), top)
    err = read_error(tmp_path)
    assert str(err).startswith("Line 2: ") and "at most 2**63-1" in str(err)
    assert err.line == 2


def test_the_largest_lamport_clock_the_index_holds_reads_back_exactly(tmp_path: Path) -> None:
    write_log(tmp_path, new_event(1).with_clock(2**63 - 1).to_line())
    assert read_events(tmp_path)[0].lamport_clock == 2**63 - 1


def test_an_out_of_range_number_in_a_line_is_refused(tmp_path: Path) -> None:
    line = new_event(1).to_line().replace(b'"n": 1', b'"n": 1e400')
    assert b"1e400" in line
    write_log(tmp_path, line)
    err = read_error(tmp_path)
    assert str(err).startswith("Line 1: invalid JSON: ")


# --------------------------------------------------------------------------- strict reads

GOOD = [new_event(n) for n in (1, 2, 4, 5)]
GARBAGE = "this is not JSON at all; " + "".join(chr(65 + i % 26) for i in range(200))


def five_lines_with(line3: bytes) -> list[bytes]:
    return [GOOD[0].to_line(), GOOD[1].to_line(), line3, GOOD[2].to_line(), GOOD[3].to_line()]


def test_invalid_json_at_line_3_names_line_3_and_its_first_80_characters(tmp_path: Path) -> None:
    path = write_log(tmp_path, *five_lines_with(GARBAGE.encode() + b"\n"))
    prefix = "Line 3: invalid JSON: " + GARBAGE[:80]
    err = read_error(tmp_path)
    assert str(err).startswith(prefix)
    assert GARBAGE[:81] not in str(err)
    assert err.line == 3
    assert err.path == str(path)
    with pytest.raises(StoreError, match=re.escape(prefix)):
        list(iter_events(tmp_path))
    with pytest.raises(StoreError, match=re.escape(prefix)):
        read_events_raw(tmp_path)
    [problem] = verify_log(str(path))
    assert problem.line == 3 and problem.message.startswith(prefix)
    assert problem.level == "error"


def test_non_object_line_is_an_invalid_event_structure(tmp_path: Path) -> None:
    write_log(tmp_path, *five_lines_with(b"[1, 2, 3]\n"))
    err = read_error(tmp_path)
    assert str(err).startswith("Line 3: invalid event structure: ")
    assert err.line == 3


@pytest.mark.parametrize("line", [b"null\n", b'"text"\n', b"42\n", b"true\n"])
def test_json_scalars_are_invalid_event_structures(tmp_path: Path, line: bytes) -> None:
    write_log(tmp_path, *five_lines_with(line))
    assert str(read_error(tmp_path)).startswith("Line 3: invalid event structure: ")


def test_missing_field_is_an_invalid_event_structure_naming_the_field(tmp_path: Path) -> None:
    d = new_event(3).to_dict()
    del d["payload"]
    write_log(tmp_path, *five_lines_with((json.dumps(d, sort_keys=True) + "\n").encode()))
    err = read_error(tmp_path)
    assert str(err).startswith("Line 3: invalid event structure: envelope: ")
    assert "payload" in str(err)
    assert err.line == 3


WRONG_TYPES = [
    ("event_id", 12345),
    ("event_id", "not-a-ulid"),
    ("event_id", None),
    ("event_type", ""),
    ("event_type", 7),
    ("event_type", "x" * 201),
    ("aggregate_id", None),
    ("aggregate_id", ["WP01"]),
    ("payload", [1, 2]),
    ("payload", "{}"),
    ("payload", None),
    ("timestamp", 1_700_000_000),
    ("timestamp", "2026-11-20T22:00:00+02:00"),
    ("timestamp", "2026-11-20T22:00:00Z\n2026-11-20T22:00:00Z"),
    ("timestamp", "٢٠٢٦-١١-٢٠T22:00:00Z"),
    ("node_id", ""),
    ("node_id", 3),
    ("lamport_clock", "1"),
    ("lamport_clock", 1.0),
    ("lamport_clock", True),
    ("lamport_clock", -1),
    ("causation_id", 1),
    ("correlation_id", {"id": "x"}),
]


@pytest.mark.parametrize(("field", "value"), WRONG_TYPES)
def test_a_field_of_the_wrong_type_fails_the_read_naming_the_field(
    tmp_path: Path, field: str, value: object
) -> None:
    d = {**new_event(1).to_dict(), field: value}
    write_log(tmp_path, new_event(2).to_line(), (json.dumps(d) + "\n").encode())
    err = read_error(tmp_path)
    assert str(err).startswith("Line 2: invalid event structure: ")
    assert f"'{field}'" in str(err)
    with pytest.raises(StoreError, match=f"'{field}'"):
        list(iter_events(tmp_path))


def test_an_id_holding_a_newline_is_refused_by_every_read_path(tmp_path: Path) -> None:
    # Two valid ids joined by a newline would pass a column check done over the ids
    # joined by newlines.
    first = new_event(1)
    d = {**new_event(2).to_dict(), "event_id": f"{first.event_id}\n{first.event_id}"}
    write_log(tmp_path, first.to_line(), (json.dumps(d) + "\n").encode())
    err = read_error(tmp_path)
    assert err.line == 2 and "'event_id'" in str(err)
    with pytest.raises(StoreError):
        read_events_raw(tmp_path)


def test_blank_lines_are_skipped_and_line_numbers_stay_physical(tmp_path: Path) -> None:
    a, b = new_event(1), new_event(2)
    write_log(tmp_path, b"\n", a.to_line(), b"   \n", b"\t\r\n", b.to_line(), b"\n")
    assert read_events(tmp_path) == [a, b]
    assert [line.number for line in scan_log(log_path(tmp_path))] == [2, 5]
    write_log(tmp_path, b"\n", a.to_line(), b"   \n", b"\n", b"{oops\n")
    err = read_error(tmp_path)
    assert err.line == 5 and str(err).startswith("Line 5: invalid JSON: {oops")


def test_a_line_of_form_feeds_is_not_blank(tmp_path: Path) -> None:
    write_log(tmp_path, new_event(1).to_line(), b"\x0c\x0b\n")
    assert read_error(tmp_path).line == 2


def test_crlf_line_ends_are_readable(tmp_path: Path) -> None:
    events = [new_event(n) for n in (1, 2, 3)]
    write_log(tmp_path, *(e.to_line()[:-1] + b"\r\n" for e in events))
    assert read_events(tmp_path) == events
    assert [e.event_id for e in iter_events(tmp_path)] == [e.event_id for e in events]
    assert verify_log(log_path(tmp_path)) == []


def test_duplicate_identical_lines_are_read_once_at_the_first_place(tmp_path: Path) -> None:
    a, b = new_event(1), new_event(2)
    # The third line is a's line written with other spacing and key order: equal as JSON.
    a_again = (json.dumps(dict(reversed(list(a.to_dict().items()))), indent=None) + "\n").encode()
    path = write_log(tmp_path, a.to_line(), b.to_line(), a.to_line(), a_again)
    assert read_events(tmp_path) == [a, b]
    assert [e.event_id for e in iter_events(tmp_path)] == [a.event_id, b.event_id]
    problems = verify_log(str(path))
    assert [(p.line, p.level) for p in problems] == [(3, "warning"), (4, "warning")]
    assert "line 1" in problems[0].message


def test_same_id_with_different_content_fails_naming_both_lines(tmp_path: Path) -> None:
    a = new_event(1)
    other = Event.from_dict({**a.to_dict(), "payload": {"n": 999}})
    path = write_log(tmp_path, a.to_line(), new_event(2).to_line(), other.to_line())
    err = read_error(tmp_path)
    assert str(err).startswith("Line 3: invalid event structure: ")
    assert "line 1" in str(err) and a.event_id in str(err)
    assert err.line == 3
    [problem] = verify_log(str(path))
    assert problem.level == "error" and problem.line == 3


@pytest.mark.parametrize(("mine", "theirs"), [(1, True), (0, False), (1, 1.0), ("1", 1)])
def test_a_duplicate_that_differs_only_in_json_type_is_a_conflict(
    tmp_path: Path, mine: object, theirs: object
) -> None:
    a = Event.from_dict({**new_event(1).to_dict(), "payload": {"flag": mine}})
    b = Event.from_dict({**a.to_dict(), "payload": {"flag": theirs}})
    write_log(tmp_path, a.to_line(), b.to_line())
    assert read_error(tmp_path).line == 2


# --------------------------------------------------------------------------- torn tails


def test_torn_tail_is_never_glued_to_next_append(tmp_path: Path) -> None:
    a, b = new_event(1), new_event(2)
    path = write_log(tmp_path, a.to_line(), b.to_line()[:-1])  # b lost its newline
    c = append_event(tmp_path, Event.new("t", "c"), fsync=False)
    assert path.read_bytes() == a.to_line() + b.to_line() + c.to_line()
    assert read_events(tmp_path) == [a, b, c]
    assert c.lamport_clock == 3  # the torn line counted for the clock


def test_torn_tail_that_is_valid_json_is_read(tmp_path: Path) -> None:
    a, b = new_event(1), new_event(2)
    write_log(tmp_path, a.to_line(), b.to_line()[:-1])
    assert read_events(tmp_path) == [a, b]
    assert read_events_raw(tmp_path) == [a.to_dict(), b.to_dict()]


def torn_log(tmp_path: Path) -> tuple[Path, bytes, list[Event]]:
    a, b = new_event(1), new_event(2)
    torn = new_event(3).to_line()[:57]  # cut in the middle of the line
    return write_log(tmp_path, a.to_line(), b.to_line(), torn), torn, [a, b]


def test_torn_tail_that_is_not_json_fails_reads(tmp_path: Path) -> None:
    _, torn, _ = torn_log(tmp_path)
    err = read_error(tmp_path)
    assert str(err).startswith("Line 3: invalid JSON: " + torn.decode()[:80])
    assert err.line == 3
    assert "replaylog repair" in str(err)


def test_torn_tail_that_is_not_json_refuses_appends_naming_repair(tmp_path: Path) -> None:
    path, _, _ = torn_log(tmp_path)
    before = path.read_bytes()
    with pytest.raises(StoreError, match="replaylog repair") as info:
        append_event(tmp_path, Event.new("t", "a"), fsync=False)
    assert info.value.path == str(path)
    with pytest.raises(StoreError, match="replaylog repair"):
        append_events(tmp_path, [Event.new("t", "a")], fsync=False)
    assert path.read_bytes() == before


def test_repair_moves_the_torn_bytes_aside_and_truncates_the_log(tmp_path: Path) -> None:
    path, torn, events = torn_log(tmp_path)
    started = int(time.time())
    moved = repair_log(tmp_path)
    assert moved is not None
    name = os.path.basename(moved)
    found = re.fullmatch(rf"{re.escape(EVENTS_FILENAME)}\.torn-(\d{{8}}T\d{{6}}Z)(-\d+)?", name)
    assert found, name
    assert os.path.dirname(moved) == str(tmp_path)
    stamp = timegm(time.strptime(found.group(1), "%Y%m%dT%H%M%SZ"))  # UTC
    assert started - 2 <= stamp <= time.time() + 2
    assert Path(moved).read_bytes() == torn
    assert path.read_bytes() == b"".join(lines_of(*events))
    assert read_events(tmp_path) == events
    c = append_event(tmp_path, Event.new("t", "c"), fsync=False)
    assert read_events(tmp_path) == [*events, c]
    assert verify_log(str(path)) == []


def test_repair_twice_keeps_both_torn_files(tmp_path: Path) -> None:
    path, torn, events = torn_log(tmp_path)
    first = repair_log(tmp_path)
    path.write_bytes(path.read_bytes() + b"second torn tail")
    second = repair_log(tmp_path)
    assert first and second and first != second
    assert Path(first).read_bytes() == torn
    assert Path(second).read_bytes() == b"second torn tail"


def test_repair_of_a_valid_torn_tail_only_adds_its_newline(tmp_path: Path) -> None:
    a, b = new_event(1), new_event(2)
    path = write_log(tmp_path, a.to_line(), b.to_line()[:-1])
    assert repair_log(tmp_path) is None
    assert path.read_bytes() == a.to_line() + b.to_line()
    assert read_events(tmp_path) == [a, b]


def test_repair_leaves_a_clean_log_alone(tmp_path: Path) -> None:
    path = write_log(tmp_path, *lines_of(new_event(1), new_event(2)))
    before = path.read_bytes()
    assert repair_log(tmp_path) is None
    assert path.read_bytes() == before
    assert repair_log(tmp_path / "missing") is None
    assert list(tmp_path.iterdir()) == [path]


def test_a_bad_middle_line_is_never_repaired(tmp_path: Path) -> None:
    a, c = new_event(1), new_event(3)
    path = write_log(tmp_path, a.to_line(), b"{garbage\n", c.to_line())
    before = path.read_bytes()
    assert repair_log(tmp_path) is None
    assert path.read_bytes() == before
    assert read_error(tmp_path).line == 2
    # With a torn tail as well, only the tail goes.
    path.write_bytes(before + b'{"event_id": "01')
    moved = repair_log(tmp_path)
    assert moved is not None and Path(moved).read_bytes() == b'{"event_id": "01'
    assert path.read_bytes() == before
    assert read_error(tmp_path).line == 2


@pytest.mark.parametrize("tail", [b"   ", b"\t", b"\r", b" \t\r "])
def test_a_torn_tail_of_only_white_space_is_torn_for_readers_appends_and_repair_alike(
    tmp_path: Path, tail: bytes
) -> None:
    # A blank line is skipped; a blank last line without its newline is a torn tail that
    # is not JSON (SPEC 3). verify once said ok while append refused it as torn.
    a, b = new_event(1), new_event(2)
    path = write_log(tmp_path, a.to_line(), b.to_line(), tail)
    err = read_error(tmp_path)
    assert err.line == 3 and str(err).startswith("Line 3: invalid JSON: ")
    assert "(only white space, no JSON value)" in str(err) and "replaylog repair" in str(err)
    problems = verify_log(str(path))
    assert [(p.line, p.level) for p in problems] == [(3, "error")]
    with pytest.raises(StoreError):
        list(iter_events(tmp_path))
    with pytest.raises(StoreError, match="replaylog repair"):
        append_event(tmp_path, Event.new("t", "a"), fsync=False)
    assert path.read_bytes() == a.to_line() + b.to_line() + tail
    moved = repair_log(tmp_path)
    assert moved is not None and Path(moved).read_bytes() == tail
    assert read_events(tmp_path) == [a, b] and verify_log(str(path)) == []
    # With its newline it is a blank line, skipped, and appends go after it.
    path.write_bytes(a.to_line() + tail + b"\n")
    assert read_events(tmp_path) == [a] and verify_log(str(path)) == []
    c = append_event(tmp_path, Event.new("t", "c"), fsync=False)
    assert read_events(tmp_path) == [a, c]


def test_torn_tail_of_json_null_is_treated_as_valid_json_everywhere(tmp_path: Path) -> None:
    # Appends and repair agree: null is valid JSON, so repair only gives it its newline;
    # it then fails reads as the bad line it is, as it did while torn, and an append,
    # which reads the log's ids first, refuses it as the store's appends do.
    a, c = new_event(1), new_event(3)
    path = write_log(tmp_path, a.to_line(), b"null")
    assert repair_log(tmp_path) is None
    assert path.read_bytes() == a.to_line() + b"null\n"
    assert read_error(tmp_path).line == 2
    path.write_bytes(a.to_line() + b"null")
    with pytest.raises(StoreError, match="Line 2: invalid event structure"):
        append_event(tmp_path, c, fsync=False)
    assert path.read_bytes() == a.to_line() + b"null"


def test_huge_torn_tail_is_refused_and_repaired_in_bounded_memory(tmp_path: Path) -> None:
    a = new_event(1)
    path = write_log(tmp_path, a.to_line(), b"[")
    with open(path, "r+b") as f:  # sparse: 50 MiB without a newline
        f.seek(50 * MiB)
        f.write(b"x")
    size = path.stat().st_size
    tracemalloc.start()
    try:
        with pytest.raises(StoreError, match="replaylog repair"):
            append_event(tmp_path, Event.new("t", "a"), fsync=False)
        moved = repair_log(tmp_path, fsync=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * MiB
    assert moved is not None and os.path.getsize(moved) == size - len(a.to_line())
    assert path.read_bytes() == a.to_line()


# --------------------------------------------------------------------------- garbage


def test_huge_line_without_newline_fails_in_bounded_memory(tmp_path: Path) -> None:
    a = new_event(1)
    path = write_log(tmp_path, a.to_line(), b'{"event_id": "')
    with open(path, "r+b") as f:
        f.seek(50 * MiB)
        f.write(b"x")
    tracemalloc.start()
    try:
        with pytest.raises(StoreError) as info:
            read_events(tmp_path)
        with pytest.raises(StoreError):
            list(iter_events(tmp_path))
        problems = verify_log(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * MiB
    assert str(info.value).startswith('Line 2: invalid JSON: {"event_id": "')
    assert info.value.line == 2
    assert [p.line for p in problems] == [2]


def test_huge_terminated_line_fails_and_names_the_limit(tmp_path: Path) -> None:
    big = b'{"x": "' + b"y" * (3 * MiB) + b'"}\n'
    write_log(tmp_path, new_event(1).to_line(), big, new_event(2).to_line())
    err = read_error(tmp_path)
    assert err.line == 2 and "1 MiB" in str(err)


def test_a_line_one_byte_over_1_mib_is_refused(tmp_path: Path) -> None:
    base = new_event(1, blob="")
    room = MAX_LINE_BYTES - len(base.to_line()) + 1
    d = {**base.to_dict(), "payload": {"n": 1, "blob": "y" * room}}
    line = (json.dumps(d, sort_keys=True) + "\n").encode()
    assert len(line) == MAX_LINE_BYTES + 1
    write_log(tmp_path, line)
    assert read_error(tmp_path).line == 1
    with pytest.raises(StoreError):
        [line.obj for line in scan_log(log_path(tmp_path))]


GARBAGE_FILES = {
    "binary junk": (bytes(range(256)) * 8, 1),
    "invalid utf-8": (new_event(1).to_line().replace(b'"WP01"', b'"WP\xff\xfe"'), 1),
    "nul bytes": (new_event(1).to_line() + b"\x00" * 64 + b"\n", 2),
    "sparse zeros": (b"\x00" * 4 * MiB, 1),
    "bom": (b"\xef\xbb\xbf" + new_event(1).to_line(), 1),
    "lone close brace": (new_event(1).to_line() + b"}\n", 2),
    "two objects on a line": (new_event(1).to_line()[:-1] * 2 + b"\n", 1),
    "nan literal": (new_event(1).to_line().replace(b'"n": 1', b'"n": NaN'), 1),
    "infinity literal": (new_event(1).to_line().replace(b'"n": 1', b'"n": -Infinity'), 1),
    "trailing comma": (new_event(1).to_line().replace(b"}\n", b",}\n"), 1),
    "single quotes": (b"{'event_id': 1}\n", 1),
    "raw control char in string": (new_event(1).to_line().replace(b'"WP01"', b'"WP\x0101"'), 1),
}


@pytest.mark.parametrize("name", list(GARBAGE_FILES))
def test_garbage_gives_store_error_naming_the_line(tmp_path: Path, name: str) -> None:
    content, line = GARBAGE_FILES[name]
    path = write_log(tmp_path, content)
    err = read_error(tmp_path)
    assert err.line == line
    assert str(err).startswith(f"Line {line}: invalid ")
    assert err.path == str(path)
    assert str(err).isprintable()
    with pytest.raises(StoreError):
        list(iter_events(tmp_path))
    assert [p.level for p in verify_log(str(path))][:1] == ["error"]


# Why each line is not JSON, after its snippet: in the project's words, none of Python's
# (int()'s limit once said "use sys.set_int_max_str_digits()").
JSON_REASONS = {
    "nan": (b'"n": NaN', "NaN is not a JSON number"),
    "infinity": (b'"n": -Infinity', "-Infinity is not a JSON number"),
    "out of range": (b'"n": 1e400', "the number 1e400 is beyond a double's range"),
    "5000 digits": (b'"n": ' + b"9" * 5000, "an integer of more than 4300 digits"),
    "deep": (b'"n": ' + b"[" * 5000 + b"]" * 5000, "objects and arrays nested too deeply"),
    "not utf-8": (b'"n": "\xff"', "not UTF-8 text (byte "),
    "trailing comma": (b'"n": 1,}', "a key in double quotes expected at character "),
    "missing colon": (b'"n" 1', "':' expected at character "),
    "bad escape": (b'"n": "\\q"', "a backslash escape JSON does not have, at character "),
    "raw control": (b'"n": "\x01"', "a control character not escaped, at character "),
    "extra": (b'"n": 1}}', "more after the JSON value, from character "),
    "cut short": (b'"n": [1, 2', "',' or a closing bracket expected at character "),
}


@pytest.mark.parametrize("name", list(JSON_REASONS))
def test_a_line_that_is_not_json_says_why_after_its_snippet(tmp_path: Path, name: str) -> None:
    value, reason = JSON_REASONS[name]
    line = new_event(1).to_line().replace(b'"n": 1', value)
    path = write_log(tmp_path, new_event(2).to_line(), line)
    err = read_error(tmp_path)
    message = str(err)
    assert message.startswith("Line 2: invalid JSON: " + line.decode("utf-8", "replace")[:40])
    assert f" ({reason}" in message and message.endswith(")"), message
    assert "sys." not in message and "Python" not in message and message.isprintable()
    assert err.line == 2 and err.path == str(path)
    assert [p.message for p in verify_log(str(path))] == [message]


def test_a_line_cut_short_says_so(tmp_path: Path) -> None:
    write_log(tmp_path, new_event(1).to_line()[:-2] + b"\n")
    assert "(the line ends before its JSON value does)" in str(read_error(tmp_path))
    write_log(tmp_path, b"}\n")
    assert str(read_error(tmp_path)) == "Line 1: invalid JSON: } (no JSON value at character 1)"


LONE_SURROGATES = {
    "payload value": ('"n": 1', '"n": "\\ud800"', "field 'payload.n'"),
    "payload key": ('"n": 1', '"\\uDC00": 1', "a key in field 'payload'"),
    "deep in the payload": ('"n": 1', '"n": [{"k": "ok \\udbff"}]', "field 'payload.n[0].k'"),
    "event_type": ('"WPStatusChanged"', '"WP\\udfffStatus"', "field 'event_type'"),
    "aggregate_id": ('"WP01"', '"\\ud83dWP01"', "field 'aggregate_id'"),
    "a high one then a low one reversed": ('"n": 1', '"n": "\\ude00\\ud83d"', "field 'payload.n'"),
}


@pytest.mark.parametrize("name", list(LONE_SURROGATES))
def test_a_line_holding_a_lone_surrogate_is_invalid_json_on_every_read_path(
    tmp_path: Path, name: str
) -> None:
    # json reads "\ud800" as a string, but it is no text: printing or encoding it fails
    # (`replaylog log` died half-way on it). orjson and msgspec refuse it as JSON; the
    # plain path now does too, naming where it is.
    old, new, where = LONE_SURROGATES[name]
    bad = new_event(1).to_line().decode().replace(old, new, 1).encode()
    assert bad != new_event(1).to_line()
    path = write_log(tmp_path, new_event(2).to_line(), bad, new_event(3).to_line())
    err = read_error(tmp_path)
    assert err.line == 2 and str(err).startswith("Line 2: invalid JSON: ")
    assert str(err).endswith(
        f"({where} holds a lone surrogate (half of a UTF-16 pair), which is not text)"
    )
    for read in (read_events_raw, lambda f: list(iter_events(f))):
        with pytest.raises(StoreError, match="lone surrogate"):
            read(tmp_path)
    with pytest.raises(StoreError, match="lone surrogate"):
        [line.obj for line in scan_log(str(path))]
    assert [(p.line, p.level) for p in verify_log(str(path))] == [(2, "error")]


def test_a_surrogate_pair_escaped_is_text_and_reads_back(tmp_path: Path) -> None:
    line = new_event(1).to_line().replace(b'"n": 1', b'"n": "\\ud83d\\ude00 \\\\ud800"')
    write_log(tmp_path, line)
    assert read_events(tmp_path)[0].payload["n"] == "\U0001f600 \\ud800"  # (an escaped backslash)
    assert read_events_raw(tmp_path)[0]["payload"]["n"] == "\U0001f600 \\ud800"


CONTROLS = ["\n", "\r", "\t", "\x00", "\x1b", "\x7f", "\x85", "\x9f"]


@pytest.mark.parametrize("field", ["event_type", "aggregate_id", "node_id"])
def test_a_name_holding_a_control_character_is_a_bad_line_naming_the_field(
    tmp_path: Path, field: str
) -> None:
    # Names are identifiers, shown one to a line by `replaylog log`: a newline in one
    # made two events print as three lines. append refuses them; so do the readers.
    for control in CONTROLS:
        d = new_event(2).to_dict()
        d[field] = f"x{control}y"
        for line in (json.dumps(d, sort_keys=True), json.dumps(d, ensure_ascii=False)):
            path = write_log(tmp_path, new_event(1).to_line(), line.encode() + b"\n")
            err = read_error(tmp_path)
            assert err.line == 2, (control, str(err))
            assert str(err).startswith(
                f"Line 2: invalid event structure: envelope: field '{field}' holds a control"
                f" character ({control!r})"
            ), str(err)
            assert str(err).isprintable()
            with pytest.raises(StoreError, match="control character"):
                read_events_raw(tmp_path)
            assert [p.line for p in verify_log(str(path))] == [2]
    # An envelope written elsewhere, without node_id and the rest: its names all the same.
    other = {"event_id": new_event(3).event_id, "event_type": "a\nb", "payload": {}, "at": "x"}
    write_log(tmp_path, (json.dumps(other) + "\n").encode())
    assert "field 'event_type' holds a control character" in str(read_error(tmp_path))


def test_control_characters_outside_names_and_odd_printable_names_are_read(
    tmp_path: Path,
) -> None:
    # Only names are identifiers: a payload, an id, a transition's reason may hold any text
    # (spec-kitty's reasons hold newlines). A no-break space or a joiner is no control
    # character (Python does not call them printable: the readers look again).
    texts = {"s": "line one\nline two\r\n\ttab \x1b[0m \x7f \x85"}
    events = [
        Event.new("T", "a", texts, lamport_clock=1, causation_id="c\nd"),
        Event.new("a\u00a0b", "\U0001f469\u200d\U0001f4bb", lamport_clock=2, node_id="n\u2028"),
        Event.new("e\u0301", "x", lamport_clock=3, extra={"note": "a\nb"}),
    ]
    path = write_log(tmp_path, *lines_of(*events))
    assert read_events(tmp_path) == events
    assert [e.event_id for e in iter_events(tmp_path)] == [e.event_id for e in events]
    assert verify_log(str(path)) == []


@pytest.mark.parametrize("depth", [2_000, 200_000])
def test_deep_nesting_gives_store_error_not_recursion_error(tmp_path: Path, depth: int) -> None:
    nested = b"[" * depth + b"]" * depth
    line = new_event(1).to_line().replace(b'"n": 1', b'"n": ' + nested)
    write_log(tmp_path, line, b"[" * depth + b"\n")
    err = read_error(tmp_path)
    assert err.line == 1
    with pytest.raises(StoreError):
        list(iter_events(tmp_path))
    assert verify_log(log_path(tmp_path))


def test_deep_nesting_in_a_torn_tail_refuses_appends_cleanly(tmp_path: Path) -> None:
    write_log(tmp_path, new_event(1).to_line(), b"[" * 200_000)
    with pytest.raises(StoreError, match="replaylog repair"):
        append_event(tmp_path, Event.new("t", "a"), fsync=False)


def test_log_path_that_is_a_directory_gives_store_error(tmp_path: Path) -> None:
    (tmp_path / EVENTS_FILENAME).mkdir()
    with pytest.raises(StoreError):
        read_events(tmp_path)
    with pytest.raises(StoreError):
        list(iter_events(tmp_path))
    with pytest.raises(StoreError):
        append_event(tmp_path, Event.new("t", "a"), fsync=False)
    assert verify_log(log_path(tmp_path))


def test_a_fifo_in_place_of_a_log_is_refused_at_once(tmp_path):
    feature = tmp_path / "feat"
    feature.mkdir()
    os.mkfifo(feature / EVENTS_FILENAME)
    with pytest.raises(StoreError, match="not a regular file"):
        read_events(feature)
    with pytest.raises(StoreError, match="not a regular file"):
        append_event(feature, Event.new("T", "A"))
