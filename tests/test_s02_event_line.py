"""SPEC section 2, the event line: fields, validation, ULIDs and the canonical line."""

from __future__ import annotations

import dataclasses
import getpass
import json
import math
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from conftest import typed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ulid import ULID

from replaylog import (
    EVENTS_FILENAME,
    Event,
    UsageError,
    append_event,
    generate_event_id,
    read_events,
    read_events_raw,
    validate_ulid_format,
)
from replaylog.errors import EventValidationError
from replaylog.lines import canonical
from replaylog.lines import ids as event_module
from replaylog.lines.canonical import (
    ITEM_KEYS,
    MAX_LINE_BYTES,
    LineTemplate,
    canonical_line,
    lines_of,
    new_line_object,
    new_lines,
)
from replaylog.lines.ids import generate_event_ids, local_node_id

CROCKFORD = set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")
A_ULID = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
A_TIME = "2026-11-20T22:00:00.123456Z"


def line_dict(**changes: Any) -> dict[str, Any]:
    """A valid line object, with some fields changed."""
    d: dict[str, Any] = {
        "event_id": A_ULID,
        "event_type": "WPStatusChanged",
        "aggregate_id": "WP01",
        "payload": {"from_lane": "planned", "to_lane": "doing"},
        "timestamp": A_TIME,
        "node_id": "3f9a2c1b7d4e",
        "lamport_clock": 7,
        "causation_id": None,
        "correlation_id": None,
    }
    d.update(changes)
    return d


def canonical_text(line: bytes) -> bytes:
    return (json.dumps(json.loads(line), sort_keys=True) + "\n").encode()


# --------------------------------------------------------------------------- the record


def test_from_dict_of_to_dict_gives_an_equal_event() -> None:
    e = Event.new(
        "WPStatusChanged",
        "WP01",
        {"from": "planned", "n": [1, 2.5, None, True], "deep": {"a": {"b": "c"}}},
        causation_id="c-1",
        correlation_id="r-1",
        extra={"schema_version": 2},
    )
    again = Event.from_dict(e.to_dict())
    assert again == e
    assert again.to_line() == e.to_line()


def test_unknown_keys_are_kept_in_extra_and_written_back() -> None:
    d = line_dict(schema_version=3, meta={"source": "import", "tags": ["a", "b"]})
    e = Event.from_dict(d)
    assert e.extra == {"schema_version": 3, "meta": {"source": "import", "tags": ["a", "b"]}}
    assert e.to_dict() == d
    written = json.loads(e.to_line())
    assert written["schema_version"] == 3
    assert written["meta"] == {"source": "import", "tags": ["a", "b"]}


def test_a_line_key_named_extra_is_kept_like_any_other(tmp_path: Path) -> None:
    d = line_dict(extra={"x": 1})
    e = Event.from_dict(d)
    assert e.extra == {"extra": {"x": 1}}
    assert e.to_dict() == d
    append_event(tmp_path, e, fsync=False)
    assert read_events(tmp_path) == [e]
    assert read_events_raw(tmp_path) == [d]


def test_extra_key_that_names_a_field_is_refused() -> None:
    with pytest.raises(EventValidationError, match="'payload'"):
        Event.new("t", "a", extra={"payload": {}})


def test_line_has_sorted_keys_and_is_its_own_canonical_form() -> None:
    e = Event.from_dict(line_dict(zeta=1, alpha={"y": 1, "x": 2}))
    line = e.to_line()
    assert line == (json.dumps(e.to_dict(), sort_keys=True, allow_nan=False) + "\n").encode()
    assert line == canonical_text(line)
    text = line.decode("ascii")
    keys = list(json.loads(text))
    assert keys == sorted(keys)
    assert text.count("\n") == 1 and text.endswith("\n")


def test_unset_causation_and_correlation_are_written_as_null() -> None:
    line = Event.new("t", "a").to_line().decode()
    assert '"causation_id": null' in line
    assert '"correlation_id": null' in line


def test_event_is_frozen() -> None:
    e = Event.new("t", "a")
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.event_type = "other"  # type: ignore[misc]


def test_with_clock_returns_a_copy_with_the_new_value() -> None:
    e = Event.new("t", "a", {"k": 1})
    later = e.with_clock(42)
    assert later.lamport_clock == 42
    assert e.lamport_clock == 0
    assert later.event_id == e.event_id and later.payload == e.payload


def test_new_refuses_unknown_fields_by_name() -> None:
    with pytest.raises(EventValidationError, match="colour"):
        Event.new("t", "a", colour="red")


def test_equal_events_hash_equal() -> None:
    e = Event.from_dict(line_dict())
    assert hash(e) == hash(Event.from_dict(line_dict()))
    assert len({e, Event.from_dict(line_dict())}) == 1


# --------------------------------------------------------------------------- ULIDs


def test_ulids_are_26_crockford_upper_case_chars() -> None:
    for _ in range(1000):
        eid = generate_event_id()
        assert len(eid) == 26
        assert set(eid) <= CROCKFORD
        assert validate_ulid_format(eid)


def test_ulids_made_in_one_millisecond_strictly_increase() -> None:
    ids = [generate_event_id() for _ in range(20_000)]
    assert all(a < b for a, b in pairwise(ids))
    # The loop is tight: many ids share their millisecond (the first 10 characters),
    # so this checked the same-millisecond rule, not only the clock.
    same_ms = sum(a[:10] == b[:10] for a, b in pairwise(ids))
    assert same_ms > 1000


def test_ulids_of_one_millisecond_count_up_by_one_from_a_random_first() -> None:
    """Within a millisecond each id is the one before plus one (python-ulid decodes them),
    across the 1,024 boundaries of the last two digits; a new millisecond starts anew."""
    ids = [generate_event_id() for _ in range(20_000)]
    values = [int(ULID.from_str(eid)) for eid in ids]
    assert [str(ULID.from_int(v)) for v in values] == ids
    steps = [b - a for a, b in pairwise(values)]
    same_ms = [step for (a, b), step in zip(pairwise(ids), steps, strict=True) if a[:10] == b[:10]]
    assert same_ms and set(same_ms) == {1}
    assert any(b & 1023 == 0 for b in values[1:])  # a carry into the digits before was made


def test_ulids_from_several_threads_are_unique_and_increase_per_thread() -> None:
    results: list[list[str]] = [[] for _ in range(4)]

    def work(k: int) -> None:
        results[k] = [generate_event_id() for _ in range(3000)]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for ids in results:
        assert all(a < b for a, b in pairwise(ids))
    assert len({i for ids in results for i in ids}) == 4 * 3000


def test_ulids_parse_with_python_ulid_and_carry_the_current_time() -> None:
    before = time.time_ns() // 1_000_000
    ids = [generate_event_id() for _ in range(50)]
    after = time.time_ns() // 1_000_000
    for eid in ids:
        parsed = ULID.from_str(eid)
        assert str(parsed) == eid
        assert before <= parsed.milliseconds <= after


@pytest.mark.parametrize("low", [0, 5, 1000, 1023])
@pytest.mark.parametrize("count", [1, 2, 24, 1024, 3000])
def test_ulids_made_as_a_batch_count_up_by_one_from_above_the_last(
    monkeypatch: pytest.MonkeyPatch, low: int, count: int
) -> None:
    """generate_event_ids gives what many generate_event_id calls in one millisecond give:
    strictly increasing ids, each the one before plus one, across the 1,024 boundaries of
    the last two digits; and the next single id is above them all (python-ulid decodes)."""
    ahead = ((time.time_ns() // 1_000_000 + 10_000) << 80) | (7 << 20) | low
    monkeypatch.setattr(event_module, "_last_ulid", ahead)
    ids = generate_event_ids(count)
    values = [int(ULID.from_str(eid)) for eid in ids]
    assert len(ids) == count and all(validate_ulid_format(eid) for eid in ids)
    assert [str(ULID.from_int(v)) for v in values] == ids
    assert values == list(range(ahead + 1, ahead + 1 + count))
    assert int(ULID.from_str(generate_event_id())) > values[-1]


def test_ulids_made_as_a_batch_carry_the_current_time() -> None:
    before = time.time_ns() // 1_000_000
    ids = generate_event_ids(100)
    after = time.time_ns() // 1_000_000
    assert ids == sorted(ids) and len(set(ids)) == 100
    assert all(before <= ULID.from_str(eid).milliseconds <= after for eid in ids)
    assert generate_event_ids(0) == []


def _child_ids(conn: Any) -> None:
    conn.send([generate_event_id() for _ in range(200)])
    conn.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_repeat_its_parents_ulids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Put the parent's last id ten seconds ahead, so that every id it makes next counts
    # up from it. A child that inherited that state would make the very same ids.
    ahead = (time.time_ns() // 1_000_000 + 10_000) << 80
    monkeypatch.setattr(event_module, "_last_ulid", ahead)
    ctx = multiprocessing.get_context("fork")
    parent_end, child_end = ctx.Pipe()
    child = ctx.Process(target=_child_ids, args=(child_end,))
    child.start()
    mine = [generate_event_id() for _ in range(200)]
    theirs = parent_end.recv()
    child.join(10)
    assert child.exitcode == 0
    assert not set(mine) & set(theirs)


@pytest.mark.parametrize(
    "value",
    [A_ULID, "00000000000000000000000000", "7ZZZZZZZZZZZZZZZZZZZZZZZZZ", generate_event_id()],
)
def test_validate_ulid_format_accepts_ulids(value: str) -> None:
    assert validate_ulid_format(value) is True


@pytest.mark.parametrize(
    "value",
    [
        "",
        A_ULID.lower(),
        A_ULID[:-1],
        A_ULID + "0",
        "8ZZZZZZZZZZZZZZZZZZZZZZZZZ",  # more than 128 bits
        "01ARZ3NDEKTSV4RRFFQ69G5FAI",  # I is not Crockford
        "01ARZ3NDEKTSV4RRFFQ69G5FAL",
        "01ARZ3NDEKTSV4RRFFQ69G5FAO",
        "01ARZ3NDEKTSV4RRFFQ69G5FAU",
        " " + A_ULID[1:],
        A_ULID[:-1] + "\n",
        "０１ARZ3NDEKTSV4RRFFQ69G5FA",  # full-width digits
        None,
        12345,
        A_ULID.encode(),
    ],
)
def test_validate_ulid_format_rejects_anything_else(value: object) -> None:
    assert validate_ulid_format(value) is False


# --------------------------------------------------------------------------- node id


def test_default_node_id_is_stable_and_not_the_host_or_user_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("REPLAYLOG_NODE_ID", raising=False)
    node = local_node_id()
    assert node and node == local_node_id()
    assert Event.new("t", "a").node_id == node
    for name in (socket.gethostname(), getpass.getuser()):
        assert node != name
        if len(name) >= 4:
            assert name not in node
    # Stable across processes too (nothing is cached on disk or in the index).
    env = {k: v for k, v in os.environ.items() if k != "REPLAYLOG_NODE_ID"}
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from replaylog.lines.ids import local_node_id; print(local_node_id())",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert out.stdout.strip() == node


def test_replaylog_node_id_overrides_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPLAYLOG_NODE_ID", "laptop-7")
    assert local_node_id() == "laptop-7"
    assert Event.new("t", "a").node_id == "laptop-7"


# --------------------------------------------------------------------------- validation

BAD_FIELDS = [
    ("event_id", "", "ULID"),
    ("event_id", A_ULID.lower(), "ULID"),
    ("event_id", 123, "ULID"),
    ("event_id", None, "ULID"),
    ("event_type", "", "non-empty string"),
    ("event_type", "x" * 201, "at most 200"),
    ("event_type", 5, "non-empty string"),
    ("event_type", None, "non-empty string"),
    ("event_type", ["t"], "non-empty string"),
    ("aggregate_id", "", "non-empty string"),
    ("aggregate_id", "x" * 201, "at most 200"),
    ("aggregate_id", 1.5, "non-empty string"),
    ("payload", [1, 2], "JSON object"),
    ("payload", "text", "JSON object"),
    ("payload", 3, "JSON object"),
    ("timestamp", "2026-11-20 22:00:00Z", "ISO-8601"),
    ("timestamp", "2026-11-20T22:00:00+01:00", "ISO-8601"),
    ("timestamp", "2026-11-20T22:00:00", "ISO-8601"),
    ("timestamp", "2026-13-20T22:00:00Z", "ISO-8601"),
    ("timestamp", "2026-11-20T25:00:00Z", "ISO-8601"),
    ("timestamp", "٢٠٢٦-11-20T22:00:00Z", "ISO-8601"),  # Arabic-Indic digits
    ("timestamp", "yesterday", "ISO-8601"),
    ("timestamp", 1_700_000_000, "ISO-8601"),
    # Names are identifiers shown one to a line: no control character (C0, DEL, C1).
    ("event_type", "a\nb", "holds a control character ('\\n')"),
    ("event_type", "\x1b[31mred", "holds a control character ('\\x1b')"),
    ("aggregate_id", "x\ry", "holds a control character ('\\r')"),
    ("aggregate_id", "tab\t", "holds a control character ('\\t')"),
    ("aggregate_id", "nul\x00", "holds a control character ('\\x00')"),
    ("node_id", "del\x7f", "holds a control character ('\\x7f')"),
    ("node_id", "next line\x85", "holds a control character ('\\x85')"),
    ("node_id", "", "non-empty string"),
    ("node_id", 7, "non-empty string"),
    ("node_id", None, "non-empty string"),
    ("lamport_clock", -1, "non-negative integer"),
    ("lamport_clock", 1.0, "non-negative integer"),
    ("lamport_clock", "3", "non-negative integer"),
    ("lamport_clock", True, "non-negative integer"),
    ("lamport_clock", None, "non-negative integer"),
    ("lamport_clock", 2**63, "at most 2**63-1"),  # more than the index can hold
    ("causation_id", 5, "string or null"),
    ("causation_id", ["c"], "string or null"),
    ("correlation_id", 5.5, "string or null"),
    ("correlation_id", {"id": "c"}, "string or null"),
]


@pytest.mark.parametrize(("field", "value", "why"), BAD_FIELDS)
def test_constructor_error_names_the_field_and_why(field: str, value: object, why: str) -> None:
    fields = line_dict(**{field: value})
    with pytest.raises(EventValidationError) as info:
        Event(**fields)
    assert f"'{field}'" in str(info.value)
    assert why in str(info.value)
    assert isinstance(info.value, UsageError)


@pytest.mark.parametrize(("field", "value", "why"), BAD_FIELDS)
def test_from_dict_error_names_the_field_and_why(field: str, value: object, why: str) -> None:
    with pytest.raises(EventValidationError) as info:
        Event.from_dict(line_dict(**{field: value}))
    assert f"'{field}'" in str(info.value)
    assert why in str(info.value)


@pytest.mark.parametrize("field", ["event_type", "payload", "timestamp"])
def test_from_dict_names_a_missing_field(field: str) -> None:
    d = line_dict()
    del d[field]
    with pytest.raises(EventValidationError, match=f"'{field}'"):
        Event.from_dict(d)


@pytest.mark.parametrize(
    "field", ["aggregate_id", "node_id", "lamport_clock", "causation_id", "correlation_id"]
)
def test_an_envelope_written_elsewhere_may_lack_a_field_which_stays_absent(field: str) -> None:
    """SPEC section 10: lines the store did not write may lack these; to_dict gives the
    line's object back exactly, without the field."""
    d = line_dict()
    del d[field]
    event = Event.from_dict(d)
    assert getattr(event, field) is None
    assert event.absent == {field}
    assert event.to_dict() == d and field not in event.to_dict()
    assert Event.from_dict(event.to_dict()) == event


def test_an_envelope_may_give_its_time_as_at_instead_of_timestamp() -> None:
    d = line_dict()
    del d["timestamp"]
    d["at"] = "2026-06-17T19:13:22.170524+00:00"
    event = Event.from_dict(d)
    assert event.timestamp is None and event.extra == {"at": d["at"]}
    assert event.to_dict() == d


def test_names_of_unusual_printable_text_are_accepted() -> None:
    # Only control characters are refused: a no-break space, a joiner, a combining mark
    # or a line separator (none of them "printable" to Python) are text like any other.
    for name in ("a\u00a0b", "\U0001f469\u200d\U0001f4bb", "e\u0301", "a\u2028b", "\u00a0"):
        e = Event.new(name, name, node_id=name)
        assert Event.from_dict(e.to_dict()) == e
        assert canonical.check_name(name, "event_type") == name


def test_a_store_node_id_with_a_control_character_is_refused_at_append() -> None:
    for node in ("laptop\n7", "\x7f", "n\x9f"):
        with pytest.raises(EventValidationError, match="field 'node_id' holds a control") as info:
            new_line_object("T", "a", None, None, None, node)
        assert "REPLAYLOG_NODE_ID" in str(info.value)
        assert new_lines([{"event_type": "T", "aggregate_id": "a"}], node, "now") is None
    with pytest.raises(EventValidationError, match="field 'node_id' must be a non-empty"):
        new_line_object("T", "a", None, None, None, "")


def test_names_of_exactly_200_characters_are_accepted() -> None:
    e = Event.new("t" * 200, "a" * 200)
    assert Event.from_dict(e.to_dict()) == e


@pytest.mark.parametrize("payload", [[1], "x", 3, (("a", 1),), {1, 2}])
def test_payload_that_is_not_an_object_is_refused(payload: object) -> None:
    with pytest.raises(EventValidationError, match="'payload' must be a JSON object"):
        Event.new("t", "a", payload)  # type: ignore[arg-type]


def test_from_dict_refuses_something_that_is_not_a_mapping() -> None:
    with pytest.raises(EventValidationError, match="JSON object"):
        Event.from_dict([("event_id", A_ULID)])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "payload",
    [
        {"x": math.nan},
        {"x": math.inf},
        {"x": -math.inf},
        {"deep": {"list": [1, 2, {"v": math.nan}]}},
    ],
)
def test_nan_and_infinity_in_a_payload_are_refused(payload: dict[str, Any]) -> None:
    with pytest.raises(EventValidationError, match="'payload'.*NaN or Infinity") as info:
        Event.new("t", "a", payload)
    assert isinstance(info.value, UsageError)
    with pytest.raises(EventValidationError, match="'payload'"):
        Event.from_dict(line_dict(payload=payload))


def test_nan_in_an_extra_key_is_refused_naming_extra() -> None:
    with pytest.raises(EventValidationError, match="'extra'.*NaN"):
        Event.from_dict(line_dict(score=math.inf))


def test_from_dict_refuses_a_payload_json_cannot_hold() -> None:
    with pytest.raises(EventValidationError, match="'payload'"):
        Event.from_dict(line_dict(payload={"tags": {"a", "b"}}))


def test_a_payload_that_contains_itself_is_refused() -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(EventValidationError, match="'payload'"):
        Event.new("t", "a", loop)


def test_non_plain_payload_is_stored_as_json_would_read_it_back() -> None:
    e = Event.new("t", "a", {"pair": (1, 2)})
    assert e.payload == {"pair": [1, 2]}
    assert Event.from_dict(json.loads(e.to_line())) == e


def test_a_line_over_1_mib_is_refused_and_one_of_exactly_1_mib_is_not() -> None:
    base = Event.from_dict(line_dict(payload={"blob": ""}))
    room = MAX_LINE_BYTES - len(base.to_line())
    exact = Event.from_dict(line_dict(payload={"blob": "x" * room}))
    assert len(exact.to_line()) == MAX_LINE_BYTES
    over = Event.from_dict(line_dict(payload={"blob": "x" * (room + 1)}))
    with pytest.raises(EventValidationError, match="1 MiB"):
        over.to_line()


def test_line_limit_counts_escaped_bytes_not_characters() -> None:
    # "é" is written as \\u00e9: six bytes. 200,000 of them fit in 1 MiB as characters,
    # not as a line.
    e = Event.new("t", "a", {"text": "é" * 200_000})
    with pytest.raises(EventValidationError, match="1 MiB"):
        e.to_line()


def test_canonical_line_refuses_nan_with_a_usage_error() -> None:
    with pytest.raises(EventValidationError):
        canonical_line({"x": math.nan})


def test_canonical_line_refuses_a_payload_changed_into_something_json_cannot_hold() -> None:
    e = Event.new("t", "a", {"k": 1})
    e.payload["k"] = object()  # the record is frozen, the dict inside is not
    with pytest.raises(EventValidationError):
        e.to_line()


# --------------------------------------------------------------------------- round trips

UNICODE = {
    "emoji": "🚀✨👩‍💻",
    "cjk": "事件日志",
    "rtl": "שלום עולם مرحبا",
    "combining": "e\u0301",
    "line_separators": "a\u2028b\u2029c",
    "controls": "tab\tnewline\ncr\rnul\x00",
    "quotes": "\"'\\",
    "ключ": "значение",
}


def test_unicode_payload_round_trips_through_the_log(tmp_path: Path) -> None:
    written = append_event(tmp_path, Event.new("t", "a", UNICODE), fsync=False)
    raw = (tmp_path / EVENTS_FILENAME).read_bytes()
    assert raw.isascii()
    assert raw.count(b"\n") == 1
    assert read_events(tmp_path) == [written]
    assert read_events(tmp_path)[0].payload == UNICODE


def test_very_long_reason_round_trips(tmp_path: Path) -> None:
    reason = "because " * 120_000  # 960,000 characters
    written = append_event(tmp_path, Event.new("t", "a", {"reason": reason}), fsync=False)
    assert read_events(tmp_path) == [written]
    assert read_events(tmp_path)[0].payload["reason"] == reason


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5)
    ),
    max_leaves=25,
)
payloads = st.dictionaries(st.text(), json_values, max_size=6)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(payload=payloads)
def test_any_json_payload_survives_append_and_read(tmp_path: Path, payload: dict[str, Any]) -> None:
    feature = Path(tempfile.mkdtemp(dir=tmp_path))
    written = append_event(feature, Event.new("t", "a", payload), fsync=False)
    line = (feature / EVENTS_FILENAME).read_bytes()
    assert line == written.to_line()
    assert line == canonical_text(line)
    [back] = read_events(feature)
    assert back == written
    assert typed(back.payload) == typed(payload)
    assert typed(read_events_raw(feature)[0]["payload"]) == typed(payload)


# ------------------------------------------------------- new lines made as a batch

# Mostly what append_many writes as it is, now and then what it must refuse or escape.
good_names = ["T", "WPStatusChanged", "é", "\U0001f600", "a{b}c"]
names = st.sampled_from(good_names * 6 + ["\ud800", "", "x" * 201, "a\nb", "\x7f", "\u00a0"])
optional_ids = st.sampled_from([None] * 6 + ["c-1", "ü", "\udc00", 5])
odd_payloads = [[1], "text", {1: "x"}, {"x": math.nan}, {"big": "y" * (1 << 20)}]
batch_items = st.lists(
    st.fixed_dictionaries(
        {"event_type": names, "aggregate_id": names},
        optional={
            "payload": st.none() | payloads | payloads | payloads | st.sampled_from(odd_payloads),
            "causation_id": optional_ids,
            "correlation_id": optional_ids,
        },
    ),
    min_size=1,
    max_size=6,
)


def _one_by_one(
    monkeypatch: pytest.MonkeyPatch, items: list[dict[str, Any]], ids: list[str], now: str
) -> tuple[list[dict[str, Any]], list[LineTemplate]]:
    """What new_line_object and LineTemplate.of_new give item by item, with these ids."""
    given = iter(ids)
    monkeypatch.setattr(canonical, "generate_event_id", lambda: next(given))
    objs = [
        new_line_object(
            i["event_type"],
            i["aggregate_id"],
            i.get("payload"),
            i.get("causation_id"),
            i.get("correlation_id"),
            "node-1",
            now,
        )
        for i in items
    ]
    return objs, [LineTemplate.of_new(obj) for obj in objs]


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(items=batch_items)
def test_a_batch_of_new_lines_is_what_one_by_one_makes(
    monkeypatch: pytest.MonkeyPatch, items: list[dict[str, Any]]
) -> None:
    """new_lines (append_many's column-by-column path) gives the very objects and lines
    of the item-by-item path, or None for a batch that path must judge (it names the
    problem); never a batch the item-by-item path would refuse."""
    now = "2026-12-01T12:00:00.000000Z"
    made_ids: list[str] = []
    real_ids = canonical.generate_event_ids
    with monkeypatch.context() as m:
        m.setattr(
            canonical, "generate_event_ids", lambda n: made_ids.extend(real_ids(n)) or made_ids
        )
        try:
            made = new_lines(items, "node-1", now)
        except EventValidationError as exc:  # a line that cannot be written, named
            with pytest.raises(EventValidationError) as one_by_one:
                _one_by_one(m, items, made_ids, now)
            assert str(one_by_one.value) == str(exc)
            return
    if made is None:
        return
    objs, templates = made
    assert not any(keys - ITEM_KEYS for keys in map(set, items))
    with monkeypatch.context() as m:
        expected_objs, expected_templates = _one_by_one(m, items, made_ids, now)
    assert objs == expected_objs
    assert list(map(type, templates)) == list(map(type, expected_templates))
    assert templates == expected_templates
    assert lines_of(templates, 7) == [t.line(7 + k) for k, t in enumerate(expected_templates)]


def test_a_plain_batch_takes_the_column_path_and_a_doubtful_one_does_not() -> None:
    plain = [
        {"event_type": "T", "aggregate_id": f"A{i}", "payload": {"n": i, "s": "x"}}
        for i in range(100)
    ]
    made = new_lines([*plain, {"event_type": "T", "aggregate_id": "B"}], "node-1", "now")
    assert made is not None
    objs, templates = made
    assert [o["aggregate_id"] for o in objs[:3]] == ["A0", "A1", "A2"] and objs[-1]["payload"] == {}
    assert json.loads(templates[0].line(1)) == {**objs[0], "lamport_clock": 1}
    for doubtful in (
        {"event_type": "T"},
        {"event_type": "T", "aggregate_id": "A", "payload": {"x": math.nan}},
        {"event_type": "T", "aggregate_id": "A", "payload": [1]},
        {"event_type": "T", "aggregate_id": "A", "extra": 1},
        {"event_type": 5, "aggregate_id": "A"},
        {"event_type": "T", "aggregate_id": "A\nB"},  # a control character: named one by one
    ):
        assert new_lines([*plain, doubtful], "node-1", "now") is None


def test_every_name_of_the_event_class_is_the_one_class() -> None:
    # The class lives in lines/event.py, loaded on first use; the older names still work.
    import pickle

    import replaylog
    import replaylog.lines
    import replaylog.lines.envelope as envelope
    from replaylog.lines.event import Event as EventClass

    assert replaylog.Event is replaylog.lines.Event is envelope.Event is EventClass
    event = EventClass.new("Created", "WP01", {"n": 1}, lamport_clock=3)
    assert type(envelope.build_event(event.to_dict())) is EventClass
    assert pickle.loads(pickle.dumps(event)) == event
    with pytest.raises(AttributeError):
        envelope.NoSuchName  # noqa: B018
