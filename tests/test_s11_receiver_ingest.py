"""SPEC section 11 (with 5), reading a batch: the fast path that keeps each line's text as
the replay client sent it agrees with the plain path that parses the body whole."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from server_fixtures import envelope, transition

from replaylog import EventStore
from replaylog.server import ingest
from replaylog.server.ingest import BadRequest, parse_batch
from replaylog.server.storage import Candidate


def _plain(body: bytes) -> Any:
    original = ingest._client_layout
    ingest._client_layout = lambda _body: None  # type: ignore[assignment]
    try:
        return _outcome(body)
    finally:
        ingest._client_layout = original


def _outcome(body: bytes) -> Any:
    try:
        node, entries = parse_batch(body)
    except BadRequest as exc:
        return ("error", exc.status, exc.message)
    shown = []
    for e in entries:
        if isinstance(e, Candidate):
            shown.append(("stored", e.event_id, e.feature, json.loads(e.line), e.obj))
        else:
            shown.append(("refused", e["event_id"], e["error"]))
    return node, shown


def _layout(lines: list[Any], features: list[Any] | None = None, node: Any = "n") -> bytes:
    feats = ["demo"] * len(lines) if features is None else features
    return json.dumps({"events": lines, "features": feats, "node_id": node}).encode()


def _with_number(text: str) -> bytes:
    """A batch of one valid line whose payload holds the number ``text`` as written."""
    return _layout([dict(envelope(0), payload={"x": 1.25})]).replace(b"1.25", text.encode())


CASES = [
    _layout([]),
    _layout([envelope(i) for i in range(5)]),
    _layout([envelope(0), dict(envelope(1), lamport_clock=-1), transition("WP1", "a", "b")]),
    _layout([envelope(0), envelope(1)], ["demo", "../x"]),
    _layout([envelope(0)], ["a", "b"]),
    _layout([envelope(0)], node=""),
    _layout([7]),
    _layout([envelope(i) for i in range(1001)]),
    _layout([dict(envelope(0), payload={"big": 10**30, "u": "é☃", "f": 1.5e300})]),
    _layout([dict(envelope(0), payload={"x": math.nan})]),
    _layout([dict(envelope(0), payload={"x": -math.inf})]),
    b'{"events": [], "features": [], "node_id": "n", "events": [1]}',
    b'{"events": [{"event_id": "x"} ], "features": ["a"], "node_id": "n"}',
    b'{"events": [{"a": 1}, {"b": 2}]}',
    b'{"events": [{"a": 1}, {"b": 2}]} trailing',
    b'{"events": [{"a": 1}',
    b'{"events": ["\\ud800"], "features": ["a"], "node_id": "n"}',
    b'{"events": [], "features": ["a"], "node_id": "x", "features": [], "node_id": "y"}',
    b'{"events": [{"event_id": "x", "a": 1, "a": 2}], "features": ["a"], "node_id": "n"}',
    b'{"events": [{"event_id": "x"}],"features": ["a"], "node_id": "n"}',
    b'{"events": [{"event_id": "x"},{"event_id": "y"}], "features": ["a", "a"], "node_id": "n"}',
    b'{"events": [{"event_id": "x"}], }',  # a trailing comma: not JSON
    b'{"events": [{"event_id": "x"}], "features": ["a"], }',
    b'{"events": [{"event_id": "x"}], , "features": ["a"]}',
    # Beyond a double's range: an infinity, not JSON (the first two were once stored).
    _with_number("1e400"),
    _with_number("-1E400"),
    _with_number("1e-400"),  # (only rounds to 0.0: a number)
    # A lone surrogate in a line: the log readers refuse it, so the receiver does too.
    _layout([dict(envelope(0), payload={"x": "a\ud800b"})]),
    _layout([dict(envelope(0), payload={"\udfff": 1})]),
    _layout([dict(envelope(0), payload={"ok": "\U0001f600"})]),  # a pair: text
    # A node id that cannot be stored as text (both were once a 500).
    _layout([envelope(0)], node="a\ud800b"),
    _layout([envelope(0)], node="a\u0000b"),
    _layout([envelope(0)], node="x" * 201),
]


@pytest.mark.parametrize("body", CASES)
def test_the_fast_path_agrees_with_the_plain_path(body: bytes) -> None:
    assert _outcome(body) == _plain(body)


@pytest.mark.parametrize("body", CASES)
def test_msgspecs_reader_agrees_with_the_stdlibs_or_leaves_the_body_to_it(body: bytes) -> None:
    by_c = ingest._client_layout_c(body)
    if by_c is not None:
        assert by_c == ingest._client_layout_py(body)


def test_what_msgspec_reads_otherwise_than_json_is_left_to_the_stdlib() -> None:
    for value in ("1E400", '"\\ud800"', "NaN"):
        body = f'{{"events": [{{"event_id": "x", "v": {value}}}], "features": ["a"]}}'.encode()
        assert ingest._client_layout_c(body) is None
        assert repr(ingest._client_layout(body)) == repr(ingest._client_layout_py(body))  # NaN


def test_a_number_beyond_a_doubles_range_is_refused_on_either_path() -> None:
    for text in ("1e400", "-1E400"):
        for outcome in (_outcome(_with_number(text)), _plain(_with_number(text))):
            assert outcome[1][0][0] == "refused", outcome
            assert "beyond a double's range" in outcome[1][0][2]
    assert _outcome(_with_number("1e-400"))[1][0][0] == "stored"


def test_a_line_holding_a_lone_surrogate_is_refused_naming_the_field() -> None:
    body = _layout([dict(envelope(0), payload={"x": "a\ud800b"}), envelope(1)])
    for outcome in (_outcome(body), _plain(body)):
        (kind, _, error), (stored, *_) = outcome[1]
        assert kind == "refused" and stored == "stored"
        assert "'payload.x'" in error and "lone surrogate" in error


def test_a_node_id_that_is_not_printable_text_is_a_bad_request() -> None:
    for node in ("a\ud800b", "a\u0000b", "tab\there", "x" * 201):
        outcome = _outcome(_layout([envelope(0)], node=node))
        assert outcome[:2] == ("error", 400), outcome
        assert "'node_id'" in outcome[2]


def test_a_line_is_kept_as_the_client_sent_it() -> None:
    line = json.dumps(envelope(0), sort_keys=True)
    odd = line.replace('"payload": {', '"payload":   {')  # still JSON, other spacing
    body = (f'{{"events": [{line}, {odd}], "features": ["a", "a"], "node_id": "n"}}').encode()
    _, entries = parse_batch(body)
    assert [e.line for e in entries if isinstance(e, Candidate)] == [line, odd]


def test_the_replay_clients_body_takes_the_fast_path_with_its_log_lines(tmp_path: Path) -> None:
    seen: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        raw = request.content
        seen.append(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
        return httpx.Response(200, json={"results": []})

    with EventStore(tmp_path, fsync=False) as store:
        store.append_many("demo", [{"event_type": "T", "aggregate_id": f"A{i}"} for i in range(30)])
        store.replay("http://127.0.0.1:9", transport=httpx.MockTransport(handler))
        log_lines = (tmp_path / "kitty-specs" / "demo" / "status.events.jsonl").read_text()
    assert seen
    layout = ingest._client_layout_c(seen[0])  # msgspec's reader, not the stdlib's
    assert layout is not None
    assert layout == ingest._client_layout_py(seen[0])
    _, entries = parse_batch(seen[0])
    assert [e.line for e in entries if isinstance(e, Candidate)] == log_lines.splitlines()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(
    payloads=st.lists(json_values, max_size=4),
    extra=st.dictionaries(st.text(max_size=5), json_values, max_size=3),
    sort=st.booleans(),
)
def test_both_paths_agree_on_any_json(
    payloads: list[Any], extra: dict[str, Any], sort: bool
) -> None:
    lines = []
    for i, payload in enumerate(payloads):
        line = dict(envelope(i), payload={"v": payload})
        line.update({k: v for k, v in extra.items() if k not in line})
        lines.append(line)
    body = json.dumps(
        {"events": lines, "features": ["demo"] * len(lines), "node_id": "n"}, sort_keys=sort
    ).encode()
    fast, plain = _outcome(body), _plain(body)
    # NaN never equals itself: compare their texts instead.
    assert json.dumps(fast, sort_keys=True) == json.dumps(plain, sort_keys=True)
