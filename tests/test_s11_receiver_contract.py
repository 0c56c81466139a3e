"""SPEC section 11, the receiver's contract, in process, on SQLite and on PostgreSQL.

One suite, every test run against both databases (``db_url``), the way eventsourcing
tests its recorders; the app is called through ``httpx.ASGITransport``.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server_fixtures import (
    TOKEN_A,
    TOKEN_B,
    AppClient,
    all_events,
    annotation,
    body,
    envelope,
    transition,
)

from replaylog.server import create_app
from replaylog.server.ingest import BodyReader
from replaylog.server.tokens import load_tokens


@pytest.fixture
def client(db_url: str) -> Iterator[AppClient]:
    app = create_app(db_url)
    c = AppClient(app)
    yield c
    c.close()
    app.state.receiver.storage.close()


@pytest.fixture
def tclient(db_url: str, tokens_file: Path) -> Iterator[AppClient]:
    app = create_app(db_url, tokens_file=str(tokens_file))
    c = AppClient(app, client=("10.9.8.7", 50000))  # not loopback: tokens decide
    yield c
    c.close()
    app.state.receiver.storage.close()


def statuses(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    return [r["status"] for r in response.json()["results"]]


def stored_ids(client: AppClient, **headers: str) -> list[str]:
    return [e["event"]["event_id"] for e in all_events(client, **headers)]


# --------------------------------------------------------------------------- ingest


def test_each_event_is_answered_in_request_order_success_then_duplicate(
    client: AppClient,
) -> None:
    lines = [envelope(i) for i in range(5)]
    first = client.post(content=body(lines))
    assert statuses(first) == ["success"] * 5
    assert [r["event_id"] for r in first.json()["results"]] == [e["event_id"] for e in lines]
    again = client.post(content=body(lines[2:] + [envelope(9)]))
    assert statuses(again) == ["duplicate", "duplicate", "duplicate", "success"]
    assert len(stored_ids(client)) == 6


def test_equal_content_as_parsed_json_is_a_duplicate_whatever_its_spacing(
    client: AppClient,
) -> None:
    line = envelope(1)
    assert statuses(client.post(content=body([line]))) == ["success"]
    reordered = dict(reversed(list(line.items())))
    raw = json.dumps({"node_id": "x", "features": ["demo"], "events": [reordered]}, indent=3)
    assert statuses(client.post(content=raw.encode())) == ["duplicate"]
    assert client.get("/api/v1/conflicts").json()["conflicts"] == []


def test_same_id_with_other_content_is_rejected_as_a_conflict_and_listed(
    client: AppClient,
) -> None:
    line = envelope(1)
    client.post(content=body([line], node="node-a"))
    changed = dict(line, payload={"edited": True})
    answer = client.post(content=body([changed, envelope(2)], node="node-b"))
    assert statuses(answer) == ["rejected", "success"]
    assert "conflict" in answer.json()["results"][0]["error"]
    conflicts = client.get("/api/v1/conflicts").json()["conflicts"]
    assert len(conflicts) == 1
    assert conflicts[0]["event_id"] == line["event_id"]
    assert conflicts[0]["node_id"] == "node-b"
    assert conflicts[0]["received"] == changed
    assert conflicts[0]["stored"] == line
    stored = [e["event"] for e in all_events(client)]
    assert stored[0] == line  # the first content stays


@pytest.mark.parametrize(
    ("first", "then"),
    [
        (True, 1),
        (1, True),
        (False, 0),
        (0, False),
        (1, 1.0),
        ([True], [1]),
        ({"a": 0}, {"a": False}),
    ],
)
def test_values_python_holds_equal_but_json_does_not_are_a_conflict(
    client: AppClient, first: Any, then: Any
) -> None:
    line = dict(envelope(1), payload={"v": first})
    assert statuses(client.post(content=body([line]))) == ["success"]
    answer = client.post(content=body([dict(line, payload={"v": then})]))
    assert statuses(answer) == ["rejected"]
    conflicts = client.get("/api/v1/conflicts").json()["conflicts"]
    assert [c["received"]["payload"] for c in conflicts] == [{"v": then}]


def test_lines_section_2_or_10_refuses_are_rejected_with_the_field_and_not_stored(
    client: AppClient,
) -> None:
    good = envelope(0)
    bad_clock = dict(envelope(1), lamport_clock=-3)
    bad_lane = transition("WP01", "planned", "flying")
    no_kind = {"event_id": envelope(2)["event_id"], "hello": 1}
    bad_id = dict(envelope(3), event_id="not-a-ulid")
    answer = client.post(content=body([good, bad_clock, bad_lane, no_kind, bad_id]))
    results = answer.json()["results"]
    assert statuses(answer) == ["success", "rejected", "rejected", "rejected", "rejected"]
    assert "lamport_clock" in results[1]["error"]
    assert "transition" in results[2]["error"] and "to_lane" in results[2]["error"]
    assert "kind" in results[3]["error"]
    assert "event_id" in results[4]["error"]
    assert stored_ids(client) == [good["event_id"]]


def test_a_bad_feature_name_or_nan_rejects_that_event_only(client: AppClient) -> None:
    lines = [envelope(0), envelope(1), envelope(2)]
    raw = json.dumps(
        {"events": lines, "features": ["demo", "../etc", "demo"], "node_id": "n"}
    ).replace('"n": 2}', '"n": NaN}')
    answer = client.post(content=raw.encode())
    assert statuses(answer) == ["success", "rejected", "rejected"]
    assert "feature" in answer.json()["results"][1]["error"]
    assert "NaN" in answer.json()["results"][2]["error"]
    assert stored_ids(client) == [lines[0]["event_id"]]


def test_every_kind_of_spec_kitty_line_is_stored_as_received(client: AppClient) -> None:
    lines = [
        transition("WP01", "planned", "claimed"),
        {"event_id": envelope(0)["event_id"], "kind": "annotation", "wp_id": "WP01",
         "at": "2026-11-20T10:01:00+00:00", "actor": "bob", "delta": {"note": "hi"}},
        {"event_id": envelope(0)["event_id"], "type": "MissionCreated",
         "at": "2026-11-20T09:00:00+00:00", "anything": [1, 2]},
        {"event_id": envelope(0)["event_id"], "event_type": "Legacy", "payload": {},
         "at": "2026-11-20T09:00:00Z", "big": 123456789012345678901234567890},
    ]  # fmt: skip
    assert statuses(client.post(content=body(lines))) == ["success"] * 4
    stored = all_events(client)
    assert [e["event"] for e in stored] == lines  # big integers kept exactly
    assert {e["feature"] for e in stored} == {"demo"}
    assert {e["node_id"] for e in stored} == {"node-a"}


def test_a_batch_may_repeat_an_id_the_second_is_a_duplicate_or_a_conflict(
    client: AppClient,
) -> None:
    line = envelope(0)
    other = dict(line, payload={"x": 1})
    assert statuses(client.post(content=body([line, dict(line), other]))) == [
        "success",
        "duplicate",
        "rejected",
    ]
    assert len(stored_ids(client)) == 1


def test_gzip_bodies_are_taken(client: AppClient) -> None:
    lines = [envelope(i) for i in range(50)]
    answer = client.post(content=gzip.compress(body(lines)), headers={"Content-Encoding": "gzip"})
    assert statuses(answer) == ["success"] * 50
    # Two gzip members one after the other are one body, as gzip itself reads them.
    raw = body([envelope(60)])
    half = len(raw) // 2
    two = gzip.compress(raw[:half]) + gzip.compress(raw[half:])
    assert statuses(client.post(content=two, headers={"Content-Encoding": "gzip"})) == ["success"]


@pytest.mark.parametrize(
    ("raw", "encoding", "words"),
    [
        (b"not json at all", None, "not JSON"),
        (b'{"events": [', None, "not JSON"),
        (b"[1, 2]", None, "JSON object"),
        (b'{"features": [], "node_id": "n"}', None, "'events'"),
        (b'{"events": {}, "features": [], "node_id": "n"}', None, "'events'"),
        (b'{"events": [], "node_id": "n"}', None, "'features'"),
        (b'{"events": [{"event_id": "x"}], "features": [], "node_id": "n"}', None, "'features'"),
        (b'{"events": [], "features": []}', None, "'node_id'"),
        (b'{"events": [], "features": [], "node_id": ""}', None, "'node_id'"),
        (b'{"events": [5], "features": ["f"], "node_id": "n"}', None, "events[0]"),
        (b'{"events": [{"a": 1}], "features": ["f"], "node_id": "n"}', None, "event_id"),
        (b'{"events": [{"event_id": "x"}], "features": [3], "node_id": "n"}', None, "features[0]"),
        (b"\xff\xfe\x00garbage", None, "not JSON"),
        (b"[" * 100_000, None, "not JSON"),
        (b"this is not gzip", "gzip", "gzip"),
        (gzip.compress(b'{"events": [], "features": [], "node_id": "n"}')[:-12], "gzip",
         "cut short"),
        (gzip.compress(b'{"events": []}') + b"junk after", "gzip", "gzip"),
    ],
)  # fmt: skip
def test_a_body_that_is_not_a_batch_is_400_and_stores_nothing(
    client: AppClient, raw: bytes, encoding: str | None, words: str
) -> None:
    headers = {"Content-Encoding": encoding} if encoding else {}
    answer = client.post(content=raw, headers=headers)
    assert answer.status_code == 400, answer.text
    assert words in answer.json()["error"]
    assert stored_ids(client) == []
    assert client.get("/health").status_code == 200


def test_a_good_line_beside_a_shape_error_is_not_stored(client: AppClient) -> None:
    raw = json.dumps({"events": [envelope(0), 7], "features": ["demo", "demo"], "node_id": "n"})
    assert client.post(content=raw.encode()).status_code == 400
    assert stored_ids(client) == []


def test_more_than_1000_events_is_413_and_stores_nothing(client: AppClient) -> None:
    lines = [envelope(i) for i in range(1001)]
    answer = client.post(content=gzip.compress(body(lines)), headers={"Content-Encoding": "gzip"})
    assert answer.status_code == 413
    assert "1000" in answer.json()["error"]
    assert stored_ids(client) == []
    assert statuses(client.post(content=body(lines[:1000]))) == ["success"] * 1000


def test_a_body_over_the_cap_is_413(db_url: str) -> None:
    app = create_app(db_url, max_body_bytes=10_000)
    c = AppClient(app)
    try:
        lines = [envelope(i) for i in range(100)]
        assert c.post(content=body(lines)).status_code == 413
        bomb = gzip.compress(b" " * 5_000_000)  # 5 MB of spaces (valid JSON whitespace)
        assert len(bomb) < 10_000
        answer = c.post(content=bomb, headers={"Content-Encoding": "gzip"})
        assert answer.status_code == 413
        assert "decompressed" in answer.json()["error"]
        assert stored_ids(c) == []
    finally:
        c.close()
        app.state.receiver.storage.close()


def test_a_gzip_bomb_is_never_inflated_past_the_cap() -> None:
    bomb = zlib.compress(b"\0" * (1 << 30), 9)  # 1 GiB of zeros in about 1 MB
    wrapped = gzip.compress(b"")[:10] + bomb[2:-4] + b"\0" * 8  # gzip header, raw deflate
    reader = BodyReader(gzip=True, limit=8 * 1024 * 1024)
    kept: list[int] = []
    with pytest.raises(Exception) as info:
        for start in range(0, len(wrapped), 65536):
            reader.feed(wrapped[start : start + 65536])
            kept.append(reader._size)
    assert getattr(info.value, "status", None) == 413
    assert max(kept, default=0) <= 8 * 1024 * 1024


def test_unknown_content_encoding_is_415(client: AppClient) -> None:
    answer = client.post(content=body([envelope(0)]), headers={"Content-Encoding": "br"})
    assert answer.status_code == 415
    assert stored_ids(client) == []


# --------------------------------------------------------------------------- idempotency


def test_an_idempotency_key_seen_before_gets_the_same_answer(client: AppClient) -> None:
    lines = [envelope(i) for i in range(3)]
    key = {"Idempotency-Key": "k" * 64}
    first = client.post(content=body(lines), headers=key)
    assert statuses(first) == ["success"] * 3
    again = client.post(content=body(lines), headers=key)
    assert again.json() == first.json()  # success again, not duplicate
    assert len(stored_ids(client)) == 3


def test_an_idempotency_key_with_another_body_is_422_and_stores_nothing(
    client: AppClient,
) -> None:
    key = {"Idempotency-Key": "key-1"}
    assert statuses(client.post(content=body([envelope(0)]), headers=key)) == ["success"]
    other = client.post(content=body([envelope(1)]), headers=key)
    assert other.status_code == 422
    assert len(stored_ids(client)) == 1


def test_an_idempotency_key_is_its_senders_two_clones_replaying_the_same_events_both_succeed(
    client: AppClient,
) -> None:
    # The replay client's key is the hash of the batch's event ids (SPEC section 5): a
    # second clone with the same events sends the same key, in a body naming its own
    # node id. That is not a reuse of the first clone's key.
    lines = [envelope(i) for i in range(3)]
    key = {"Idempotency-Key": "f" * 64}
    first = client.post(content=body(lines, node="clone-a"), headers=key)
    assert statuses(first) == ["success"] * 3
    second = client.post(content=body(lines, node="clone-b"), headers=key)
    assert statuses(second) == ["duplicate"] * 3
    assert (
        statuses(client.post(content=body(lines, node="clone-b"), headers=key)) == ["duplicate"] * 3
    )  # its own key, seen before with this body: the same answer
    reused = client.post(content=body([envelope(7)], node="clone-b"), headers=key)
    assert reused.status_code == 422  # the same sender, the same key, another body
    assert len(stored_ids(client)) == 3


def test_an_idempotency_key_belongs_to_its_project(tclient: AppClient) -> None:
    key = "same-key"
    a = tclient.post(
        content=body([envelope(0)]),
        headers={"Idempotency-Key": key, "Authorization": f"Bearer {TOKEN_A}"},
    )
    b = tclient.post(
        content=body([envelope(1)]),
        headers={"Idempotency-Key": key, "Authorization": f"Bearer {TOKEN_B}"},
    )
    assert statuses(a) == ["success"] and statuses(b) == ["success"]


# --------------------------------------------------------------------------- reading back


def test_events_come_back_in_receive_order_with_a_cursor_that_only_grows(
    client: AppClient,
) -> None:
    sent = []
    for k in range(4):
        lines = [envelope(10 * k + i, node=f"node-{k}") for i in range(5)]
        sent += [line["event_id"] for line in lines]
        client.post(content=body(lines, feature=f"f{k % 2}", node=f"node-{k}"))
    page = client.get("/api/v1/events?after=0&limit=7").json()
    assert [e["event"]["event_id"] for e in page["events"]] == sent[:7]
    seqs = [e["seq"] for e in page["events"]]
    assert seqs == sorted(seqs) and len(set(seqs)) == 7
    assert page["next"] == seqs[-1]
    rest = client.get(f"/api/v1/events?after={page['next']}&limit=1000").json()
    assert [e["event"]["event_id"] for e in rest["events"]] == sent[7:]
    empty = client.get(f"/api/v1/events?after={rest['next']}").json()
    assert empty == {"events": [], "next": rest["next"]}
    f1 = client.get("/api/v1/events?feature=f1&limit=1000").json()["events"]
    assert [e["event"]["event_id"] for e in f1] == sent[5:10] + sent[15:20]
    assert {e["node_id"] for e in f1} == {"node-1", "node-3"}


@pytest.mark.parametrize(
    "query", ["after=-1", "after=x", "limit=0", "limit=1001", "feature=..", "feature=a/b"]
)
def test_bad_paging_parameters_are_400(client: AppClient, query: str) -> None:
    assert client.get(f"/api/v1/events?{query}").status_code == 400


def test_features_are_listed_with_their_counts(client: AppClient) -> None:
    client.post(content=body([envelope(i) for i in range(3)], feature="alpha"))
    client.post(content=body([envelope(i + 5) for i in range(2)], feature="beta"))
    features = client.get("/api/v1/features").json()["features"]
    assert [(f["feature"], f["events"]) for f in features] == [("alpha", 3), ("beta", 2)]


def test_health_answers_200(client: AppClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}


# --------------------------------------------------------------------------- projects


def test_a_request_without_a_known_token_is_401(tclient: AppClient) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN_A}"}):
        answer = tclient.post(content=body([envelope(0)]), headers=headers)
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"] == "Bearer"
        assert tclient.get("/api/v1/events", headers=headers).status_code == 401
    assert tclient.get("/health").status_code == 200


def test_projects_are_kept_apart(tclient: AppClient) -> None:
    a = {"Authorization": f"Bearer {TOKEN_A}"}
    b = {"Authorization": f"Bearer {TOKEN_B}"}
    shared = envelope(0)
    assert statuses(tclient.post(content=body([shared, envelope(1)]), headers=a)) == [
        "success",
        "success",
    ]
    # The same id in another project is that project's own event, not a duplicate.
    other = dict(shared, payload={"b": True})
    assert statuses(tclient.post(content=body([other], feature="bfeat"), headers=b)) == ["success"]
    assert len(stored_ids(tclient, **a)) == 2
    assert [e["event"] for e in all_events(tclient, **b)] == [other]
    features = tclient.get("/api/v1/features", headers=b).json()["features"]
    assert [f["feature"] for f in features] == ["bfeat"]
    assert tclient.get("/api/v1/conflicts", headers=a).json()["conflicts"] == []


def test_without_a_tokens_file_only_loopback_is_served_in_project_default(
    db_url: str,
) -> None:
    app = create_app(db_url)
    remote = AppClient(app, client=("192.0.2.10", 40000))
    mapped = AppClient(app, client=("::ffff:10.0.0.1", 40000))
    local6 = AppClient(app, client=("::1", 40000))
    local_mapped = AppClient(app, client=("::ffff:127.0.0.1", 40000))
    try:
        for other in (remote, mapped):
            assert other.post(content=body([envelope(0)])).status_code == 403
            assert other.get("/health").status_code == 403
            assert other.get("/").status_code == 403
        assert statuses(local6.post(content=body([envelope(0)]))) == ["success"]
        assert statuses(local_mapped.post(content=body([envelope(1)]))) == ["success"]
        rows = app.state.receiver.storage.events_page("default", after=0, limit=10)
        assert len(rows) == 2
    finally:
        for c in (remote, mapped, local6, local_mapped):
            c.close()
        app.state.receiver.storage.close()


def test_a_tokens_file_with_a_bad_line_is_refused_naming_the_line(tmp_path: Path) -> None:
    from replaylog.errors import UsageError

    path = tmp_path / "tokens"
    path.write_text("# ok\nalpha my-raw-secret-token\n", encoding="utf-8")
    with pytest.raises(UsageError) as info:
        load_tokens(str(path))
    assert "line 2" in str(info.value)
    assert "my-raw-secret-token" not in str(info.value)  # never repeats what could be a token
    path.write_text("../x " + "a" * 64 + "\n", encoding="utf-8")
    with pytest.raises(UsageError, match="project name"):
        load_tokens(str(path))
    path.write_text("# nothing\n\n", encoding="utf-8")
    with pytest.raises(UsageError, match="no token"):
        load_tokens(str(path))


# --------------------------------------------------------------------------- the board


def test_the_board_is_section_10s_over_every_clones_events(
    client: AppClient, spec_kitty_corpus: Path
) -> None:
    head = spec_kitty_corpus / "head"
    stale = set(json.loads((head / "expectations.json").read_text())["stale_status_json"])
    checked = 0
    for folder in sorted((head / "kitty-specs").iterdir()):
        status_file = folder / "status.json"
        if folder.name in stale or not status_file.is_file():
            continue
        raw_lines = (folder / "status.events.jsonl").read_text(encoding="utf-8").splitlines()
        lines = [json.loads(line) for line in raw_lines if line.strip()]
        if len(lines) < 20:
            continue
        # One clone sends the first half; another sends the whole log, the first half
        # again (duplicates) and what only it has.
        half = len(lines) // 2
        client.post(content=body(lines[:half], feature=folder.name, node="clone-a"))
        for start in range(0, len(lines), 100):
            chunk = lines[start : start + 100]
            client.post(content=body(chunk, feature=folder.name, node="clone-b"))
        board = client.get(f"/api/v1/features/{folder.name}/board")
        assert board.status_code == 200, board.text
        expected = json.loads(status_file.read_text(encoding="utf-8"))
        got = board.json()
        for key in ("event_count", "last_event_id", "materialized_at", "summary", "work_packages"):
            assert got[key] == expected[key], (folder.name, key)
        checked += 1
        if checked == 3:
            break
    assert checked == 3


def test_a_feature_whose_board_cannot_be_made_is_422_and_the_others_still_are(
    client: AppClient,
) -> None:
    # Lines section 10 takes (verify passes them), with a delta the reducer refuses as
    # spec-kitty's own reader does: this feature's board says so, the server goes on.
    bad = [transition("WP01", "genesis", "planned"), annotation("WP01", {"shell_pid": "n/a"})]
    assert statuses(client.post(content=body(bad, feature="broken"))) == ["success"] * 2
    good = [transition("WP02", "genesis", "planned")]
    assert statuses(client.post(content=body(good, feature="fine"))) == ["success"]
    answer = client.get("/api/v1/features/broken/board")
    assert answer.status_code == 422
    assert "shell_pid" in answer.json()["error"] and "broken" in answer.json()["error"]
    assert client.get("/api/v1/features/fine/board").json()["work_packages"]["WP02"]["lane"] == (
        "planned"
    )


@pytest.mark.parametrize("path", ["/api/v1/events", "/api/v1/conflicts"])
@pytest.mark.parametrize(
    "after", ["9223372036854775808", "99999999999999999999", "1" * 5000, "%EF%BC%91", "-1", "1.0"]
)
def test_an_after_that_is_not_a_64_bit_count_is_400(
    client: AppClient, path: str, after: str
) -> None:
    answer = client.get(f"{path}?after={after}")
    assert answer.status_code == 400, answer.text
    assert "'after'" in answer.json()["error"]
    assert client.get(f"{path}?after=9223372036854775807").status_code == 200


def test_the_board_of_a_feature_without_events_is_404(client: AppClient) -> None:
    assert client.get("/api/v1/features/nothing-here/board").status_code == 404
    assert client.get("/api/v1/features/..%2Fx/board").status_code in (400, 404)


def test_a_batch_is_stored_in_its_own_order_not_its_ids(client: AppClient) -> None:
    lines = [envelope(i) for i in range(300)][::-1]  # ids falling
    for i, line in enumerate(lines):
        line["payload"] = {"i": i}
    client.post(content=body(lines))
    got = client.get("/api/v1/events?after=0&limit=1000").json()["events"]
    assert [e["event"]["event_id"] for e in got] == [line["event_id"] for line in lines]
