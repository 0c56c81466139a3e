"""SPEC section 5: replay through the store and the CLI, against a real server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from receiver import Action, Receiver, RecordedRequest, unused_port_url

from replaylog import (
    EVENTS_FILENAME,
    AuthenticationError,
    DeliveryError,
    EventStore,
    TransientDeliveryError,
    UsageError,
)

TOKEN = "s3cr3t-token-value-0123456789"


@pytest.fixture
def store(tmp_path: Path) -> Any:
    with EventStore(tmp_path, fsync=False) as s:
        yield s


@pytest.fixture
def receiver() -> Any:
    with Receiver() as r:
        yield r


def rows(store: EventStore) -> dict[str, tuple[str, int, str | None]]:
    return {
        eid: (status, retries, error)
        for eid, status, retries, error in store.index.conn.execute(
            "SELECT event_id, status, retry_count, last_error FROM events"
        )
    }


def fill(store: EventStore, n: int, features: tuple[str, ...] = ("alpha",)) -> list[str]:
    ids = []
    for i in range(n):
        ids.append(
            store.append(features[i % len(features)], "note", f"A{i % 3}", {"i": i}).event_id
        )
    return ids


def run_cli(
    root: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("REPLAYLOG_")}
    full_env["REPLAYLOG_FSYNC"] = "0"
    full_env.update(env or {})
    root.mkdir(parents=True, exist_ok=True)  # a --root that does not exist is refused
    return subprocess.run(
        [sys.executable, "-m", "replaylog", "--root", str(root), *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )


# --------------------------------------------------------------------------- delivery


def test_every_pending_event_is_delivered_once_in_lamport_order(store, receiver):
    ids = fill(store, 25, ("alpha", "beta", "gamma"))
    # A line merged in from another node, with a higher clock, goes after ours.
    foreign = {
        "event_id": "01JD0000000000000000000999",
        "event_type": "remote",
        "aggregate_id": "X",
        "payload": {},
        "timestamp": "2026-11-20T22:00:00Z",
        "node_id": "elsewhere",
        "lamport_clock": 10_000,
        "causation_id": None,
        "correlation_id": None,
        "extra_key": [1],
    }
    with open(store.log_path("beta"), "ab") as f:
        f.write((json.dumps(foreign, sort_keys=True) + "\n").encode())
    report = store.replay(receiver.url, batch_size=4, backoff_base=0.01)
    assert (report.accepted, report.rejected, report.pending) == (26, 0, 0)
    assert report.batches == 7
    sent = [eid for req in receiver.requests for eid in req.event_ids]
    assert sent == ids + [foreign["event_id"]]
    assert all(n == 1 for n in receiver.deliveries.values()) and receiver.duplicates == 0
    assert receiver.events[foreign["event_id"]] == foreign, "lines go exactly as in the log"
    assert {s for s, _, _ in rows(store).values()} == {"delivered"}
    again = store.replay(receiver.url)
    assert (again.accepted, again.batches) == (0, 0)
    assert len(receiver.requests) == 7


def test_batches_respect_count_and_byte_limits(store, receiver):
    big = {"text": "y" * 60_000}
    for i in range(12):
        store.append("alpha", "note", "A", big if i % 2 else {"i": i})
    store.replay(receiver.url, batch_size=5)
    assert all(len(r.event_ids) <= 5 for r in receiver.requests)
    assert all(r.json_bytes <= 256 * 1024 for r in receiver.requests)
    assert sum(len(r.event_ids) for r in receiver.requests) == 12


def test_partial_answers_mark_accepted_rejected_and_leave_missing_pending(store, receiver):
    ids = fill(store, 4)

    def answer(request: RecordedRequest) -> Action:
        body = {
            "accepted": [ids[0]],
            "rejected": [{"event_id": ids[1], "reason": "schema"}, ids[2]],
        }
        return Action.answer(200, body=json.dumps(body).encode())

    receiver.hook = answer
    report = store.replay(receiver.url)
    assert (report.accepted, report.rejected, report.pending, report.batches) == (1, 2, 1, 1)
    state = rows(store)
    assert state[ids[0]][0] == "delivered"
    assert state[ids[1]] == ("failed", 1, "schema")
    assert state[ids[2]][0:2] == ("failed", 1)
    assert state[ids[3]] == ("pending", 0, None)


def test_failed_events_wait_for_requeue_then_go_again(store, receiver):
    ids = fill(store, 3)
    receiver.reject_ids = {ids[1]: "bad lane"}
    store.replay(receiver.url)
    assert rows(store)[ids[1]][0] == "failed"
    receiver.reject_ids = {}
    assert store.replay(receiver.url).accepted == 0, "failed events are not sent again"
    assert store.requeue(event_id=ids[1]) == 1
    assert store.replay(receiver.url).accepted == 1
    assert set(receiver.events) == set(ids)


def test_results_shape_with_duplicate_counts_as_delivered(store, receiver):
    ids = fill(store, 3)

    def answer(request: RecordedRequest) -> Action:
        results = [
            {"event_id": ids[0], "status": "success"},
            {"event_id": ids[1], "status": "duplicate"},
            {"event_id": ids[2], "status": "rejected", "error": "no such aggregate"},
        ]
        return Action.answer(200, body=json.dumps({"results": results}).encode())

    receiver.hook = answer
    report = store.replay(receiver.url)
    assert (report.accepted, report.rejected) == (2, 1)
    assert rows(store)[ids[2]] == ("failed", 1, "no such aggregate")


def test_the_body_names_each_events_feature_in_order_and_the_senders_node_id(tmp_path, receiver):
    with EventStore(tmp_path, fsync=False, node_id="node-under-test") as store:
        ids = fill(store, 7, ("alpha", "beta", "gamma"))
        store.replay(receiver.url, batch_size=3)
    assert [r.event_ids for r in receiver.requests] == [tuple(ids[:3]), tuple(ids[3:6]), (ids[6],)]
    features = [f for r in receiver.requests for f in r.features or ()]
    assert features == [("alpha", "beta", "gamma")[n % 3] for n in range(7)]
    assert {r.node_id for r in receiver.requests} == {"node-under-test"}


@pytest.mark.parametrize("answer", ["accepted", "rejected"])
def test_an_event_in_two_logs_counts_as_the_two_events_the_answer_settles(
    tmp_path: Path, receiver: Receiver, answer: str
) -> None:
    root = tmp_path / "p"
    root.mkdir()
    with EventStore(root, fsync=False) as store:
        ids = fill(store, 3)
    # A copied log: the same three lines in a second feature (SPEC section 10 reads it).
    (root / "kitty-specs" / "beta").mkdir()
    log = root / "kitty-specs" / "alpha" / "status.events.jsonl"
    (root / "kitty-specs" / "beta" / "status.events.jsonl").write_bytes(log.read_bytes())
    receiver.answer_shape = "results"
    receiver.statuses = {i: answer for i in ids}
    with EventStore(root, fsync=False) as store:
        report = store.replay(receiver.url, batch_size=10)
        totals = store.status()["totals"]
    counts = (report.accepted, report.rejected, report.pending)
    assert counts == ((6, 0, 0) if answer == "accepted" else (0, 6, 0))
    assert totals[{"accepted": "delivered", "rejected": "failed"}[answer]] == 6


def test_accepted_and_warning_results_are_delivered_and_error_message_is_the_reason(
    store, receiver
):
    ids = fill(store, 3)
    receiver.answer_shape = "results"
    receiver.statuses = {ids[0]: "accepted", ids[1]: "warning", ids[2]: "rejected"}
    receiver.status_errors = {ids[1]: "payload key unknown", ids[2]: "lane does not exist"}
    report = store.replay(receiver.url)
    assert (report.accepted, report.rejected, report.pending) == (2, 1, 0)
    state = rows(store)
    assert state[ids[0]][0] == state[ids[1]][0] == "delivered"
    assert state[ids[2]] == ("failed", 1, "lane does not exist")


@pytest.mark.parametrize("status", ["queued", "pending", "deferred"])
def test_queued_pending_and_unnamed_statuses_stay_pending_and_are_not_resent_in_the_run(
    store, receiver, status
):
    ids = fill(store, 6)
    receiver.answer_shape = "results"
    receiver.statuses = {i: status for i in ids[::2]}  # every other one
    report = store.replay(receiver.url, batch_size=2)
    assert (report.accepted, report.rejected, report.pending, report.batches) == (3, 0, 3, 3)
    assert all(n == 1 for n in receiver.received.values()), "sent once in the run"
    state = rows(store)
    assert [state[i] for i in ids[::2]] == [("pending", 0, None)] * 3, "never failed"
    assert store.status()["totals"]["pending"] == 3
    receiver.statuses = {}
    again = store.replay(receiver.url)
    assert (again.accepted, again.pending) == (3, 0), "a later run sends them again"
    assert set(receiver.events) == set(ids)


def test_an_id_missing_from_the_answer_stays_pending_and_is_not_resent_in_the_run(store, receiver):
    ids = fill(store, 4)

    def answer(request: RecordedRequest) -> Action:
        body = {"accepted": list(request.event_ids[:1]), "rejected": []}
        return Action.answer(200, body=json.dumps(body).encode())

    receiver.hook = answer
    report = store.replay(receiver.url, batch_size=2)
    assert (report.accepted, report.pending, report.batches) == (2, 2, 2)
    assert [r.event_ids for r in receiver.requests] == [tuple(ids[:2]), tuple(ids[2:])]
    assert [rows(store)[i] for i in (ids[1], ids[3])] == [("pending", 0, None)] * 2


def test_a_400_with_details_fails_only_the_named_events_and_delivers_the_rest(store, receiver):
    ids = fill(store, 5)
    details = [
        {"event_id": ids[1], "error": "aggregate unknown"},
        {"event_id": ids[3], "reason": "bad payload"},
    ]
    receiver.script([Action.answer(400, body=json.dumps({"details": details}).encode())])
    report = store.replay(receiver.url)
    assert (report.accepted, report.rejected, report.pending) == (3, 2, 0)
    assert [r.event_ids for r in receiver.requests] == [
        tuple(ids),
        (ids[0], ids[2], ids[4]),
    ]
    state = rows(store)
    assert state[ids[1]] == ("failed", 1, "aggregate unknown")
    assert state[ids[3]] == ("failed", 1, "bad payload")
    assert [state[i][0] for i in (ids[0], ids[2], ids[4])] == ["delivered"] * 3
    assert set(receiver.events) == {ids[0], ids[2], ids[4]}


def test_a_400_without_details_fails_the_whole_batch_with_status_and_snippet(store, receiver):
    ids = fill(store, 2)
    receiver.script([Action.answer(400, body=b"malformed batch")])
    report = store.replay(receiver.url)
    assert report.rejected == 2
    assert all(rows(store)[i] == ("failed", 1, "HTTP 400: malformed batch") for i in ids)


def test_a_log_indexed_again_by_another_process_mid_replay_still_ends_all_delivered_once(
    tmp_path, receiver
):
    # Replay records a delivered event by the index row it read it from. Here, while the
    # server holds the first batch, another process finds the log's first two lines
    # swapped (as a rebase may leave them) and indexes it again: those two events now
    # sit in each other's rows. Each must still end delivered, and nothing sent twice.
    with EventStore(tmp_path, fsync=False) as store:
        ids = fill(store, 6)
        store.status()  # the index takes the appends in
        row_of = dict(store.index.conn.execute("SELECT event_id, id FROM events").fetchall())
        log = Path(store.log_path("alpha"))
        lines = log.read_bytes().splitlines(keepends=True)
        assert len({len(line) for line in lines}) == 1  # later lines keep their offsets
        indexed_again: list[subprocess.CompletedProcess[str]] = []

        def first_batch(request: RecordedRequest) -> None:
            if not indexed_again:
                log.write_bytes(b"".join([lines[1], lines[0], *lines[2:]]))
                indexed_again.append(run_cli(tmp_path, "status"))

        receiver.hook = first_batch
        report = store.replay(receiver.url, batch_size=2)
        assert indexed_again and indexed_again[0].returncode == 0, indexed_again
        now = dict(store.index.conn.execute("SELECT event_id, id FROM events").fetchall())
        assert (now[ids[0]], now[ids[1]]) == (row_of[ids[1]], row_of[ids[0]])
        assert (report.accepted, report.pending) == (6, 0)
        assert {s for s, _, _ in rows(store).values()} == {"delivered"}
        assert [eid for req in receiver.requests for eid in req.event_ids] == ids


def test_a_412_stops_the_run_touching_nothing(store, receiver):
    ids = fill(store, 4)
    receiver.script(["ok", Action.answer(412, body=b"protocol v2 required")])
    with pytest.raises(DeliveryError, match="protocol mismatch") as info:
        store.replay(receiver.url, batch_size=2, max_retries=3)
    assert not isinstance(info.value, (TransientDeliveryError, AuthenticationError))
    assert len(receiver.requests) == 2, "no retry, no further batch"
    state = rows(store)
    assert [state[i][0] for i in ids[:2]] == ["delivered"] * 2, "earlier answers are kept"
    assert [state[i] for i in ids[2:]] == [("pending", 0, None)] * 2


def test_cli_replay_exits_1_on_412_with_one_error_line(tmp_path, receiver):
    root = tmp_path / "p"
    assert run_cli(root, "append", "f", "--type", "t", "--aggregate", "a").returncode == 0
    receiver.script([Action.answer(412, body=b"upgrade")])
    result = run_cli(root, "replay", "--url", receiver.url)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert "protocol mismatch" in result.stderr
    status = json.loads(run_cli(root, "status", "--json").stdout)
    assert status["totals"]["pending"] == 1 and status["totals"]["failed"] == 0


def test_cli_replay_timeout_cuts_off_a_server_that_sends_a_byte_a_second(tmp_path, receiver):
    root = tmp_path / "p"
    assert run_cli(root, "append", "f", "--type", "t", "--aggregate", "a").returncode == 0
    receiver.hook = lambda request: Action.trickle(1.0)
    started = time.monotonic()
    try:
        result = run_cli(
            root, "replay", "--url", receiver.url, "--timeout", "2", "--max-retries", "0",
            timeout=12,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("replay --timeout 2 was still running after 12 s")
    elapsed = time.monotonic() - started
    assert result.returncode == 3, result.stderr
    assert "timed out" in result.stderr
    assert elapsed < 2 + 3.0, f"took {elapsed:.1f} s with --timeout 2"
    with EventStore(root) as s:
        ((status, retries, error),) = rows(s).values()
    assert (status, retries) == ("pending", 1) and error and error.startswith("timed out")


def test_a_500_then_200_recovers_inside_one_run(store, receiver):
    ids = fill(store, 3)
    receiver.script(["500", "ok"])
    report = store.replay(receiver.url, backoff_base=0.01)
    assert report.accepted == 3 and report.attempts == 2
    keys = {r.idempotency_key for r in receiver.requests}
    assert len(keys) == 1, "a retry of a batch carries the same Idempotency-Key"
    assert set(receiver.events) == set(ids)


def test_429_retry_after_is_obeyed(store, receiver):
    fill(store, 2)
    receiver.script(["429:1", "ok"])
    report = store.replay(receiver.url, backoff_base=0.01)
    assert report.accepted == 2
    gap = receiver.requests[1].at - receiver.requests[0].at
    assert gap >= 0.9, f"the retry came {gap:.2f} s after a Retry-After of 1 s"


def test_spent_retries_leave_events_pending_then_a_later_run_delivers(store, receiver, tmp_path):
    ids = fill(store, 3)
    receiver.script(["503"] * 4)
    with pytest.raises(TransientDeliveryError) as info:
        store.replay(receiver.url, max_retries=3, backoff_base=0.01)
    assert "503" in str(info.value)
    assert all(r == ("pending", 1, "HTTP 503 after 4 attempts") for r in rows(store).values())
    assert store.replay(receiver.url).accepted == 3
    assert set(receiver.events) == set(ids)


def test_cli_exit_3_when_retries_are_spent(tmp_path, receiver):
    root = tmp_path / "p"
    assert run_cli(root, "append", "f", "--type", "t", "--aggregate", "a").returncode == 0
    receiver.script(["503"] * 2)
    result = run_cli(
        root, "replay", "--url", receiver.url, "--max-retries", "1", "--backoff-base", "0.01"
    )
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    status = json.loads(run_cli(root, "status", "--json").stdout)
    assert status["totals"]["pending"] == 1


def test_authentication_refused_touches_nothing_and_exits_4(tmp_path, receiver):
    root = tmp_path / "p"
    run_cli(root, "append", "f", "--type", "t", "--aggregate", "a")
    before = (
        sqlite3.connect(root / ".replaylog" / "queue.db")
        .execute("SELECT status, retry_count, last_error FROM events")
        .fetchall()
    )
    receiver.script(["401"])
    result = run_cli(root, "replay", "--url", receiver.url, env={"REPLAYLOG_TOKEN": TOKEN})
    assert result.returncode == 4
    assert "authentication" in result.stderr.lower()
    assert TOKEN not in result.stdout + result.stderr
    assert receiver.requests[0].headers["authorization"] == f"Bearer {TOKEN}"
    after = (
        sqlite3.connect(root / ".replaylog" / "queue.db")
        .execute("SELECT status, retry_count, last_error FROM events")
        .fetchall()
    )
    assert before == after == [("pending", 0, None)]


def test_404_stops_and_names_the_url(store, receiver):
    fill(store, 1)
    url = receiver.url + "/wrong-prefix"
    with pytest.raises(DeliveryError) as info:
        store.replay(url)
    assert not isinstance(info.value, (TransientDeliveryError, AuthenticationError))
    assert "/wrong-prefix/api/v1/events/batch/" in str(info.value)
    assert rows(store) and all(r == ("pending", 0, None) for r in rows(store).values())


def test_413_splits_the_batch_until_it_fits(store, receiver):
    ids = fill(store, 10)
    receiver.max_events = 3
    report = store.replay(receiver.url, batch_size=10)
    assert report.accepted == 10 and report.pending == 0
    assert set(receiver.events) == set(ids)
    assert all(len(r.event_ids) <= 3 for r in receiver.requests if r.action == "ok")


def test_a_single_event_still_too_large_becomes_failed(store, receiver):
    ids = fill(store, 2)
    receiver.max_events = 0
    report = store.replay(receiver.url)
    assert report.rejected == 2
    assert all(rows(store)[i][0] == "failed" for i in ids)
    assert "413" in (rows(store)[ids[0]][2] or "")


def test_a_lost_answer_is_safe_to_repeat(store, receiver):
    ids = fill(store, 4)
    receiver.script(["drop", "ok"])
    report = store.replay(receiver.url, backoff_base=0.01)
    assert report.accepted == 4
    assert set(receiver.events) == set(ids)
    assert all(receiver.deliveries[i] == 2 for i in ids), "the server saw the batch twice"
    assert receiver.conflicts == []
    assert {s for s, _, _ in rows(store).values()} == {"delivered"}


def test_a_rebuilt_index_resends_and_the_server_holds_each_event_once(store, receiver):
    ids = fill(store, 6, ("alpha", "beta"))
    store.replay(receiver.url)
    index_path = store.index_path
    store.close()
    os.unlink(index_path)
    with EventStore(store.root, fsync=False) as fresh:
        fresh.rebuild_index()
        assert fresh.status()["totals"]["pending"] == 6
        report = fresh.replay(receiver.url)
        assert report.accepted == 6
    assert sorted(receiver.events) == sorted(ids)
    assert receiver.duplicates == 6 and receiver.conflicts == []


def test_plain_http_to_another_host_is_refused_without_the_flag(tmp_path):
    root = tmp_path / "p"
    run_cli(root, "append", "f", "--type", "t", "--aggregate", "a")
    result = run_cli(root, "replay", "--url", "http://example.invalid")
    assert result.returncode == 2 and "http://" in result.stderr
    with EventStore(root) as s, pytest.raises(UsageError):
        s.replay("http://192.0.2.1:9", allow_insecure_http=False)


def test_cli_replay_json_shape_and_token_never_printed(tmp_path, receiver):
    root = tmp_path / "p"
    for _ in range(3):
        run_cli(root, "append", "f", "--type", "t", "--aggregate", "a")
    result = run_cli(
        root,
        "replay",
        "--url",
        receiver.url,
        "--json",
        "--token-env",
        "MY_TOKEN",
        env={"MY_TOKEN": TOKEN},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"accepted": 3, "rejected": 0, "pending": 0, "batches": 1}
    assert receiver.requests[0].headers["authorization"] == f"Bearer {TOKEN}"
    human = run_cli(root, "replay", "--url", receiver.url, env={"REPLAYLOG_TOKEN": TOKEN})
    assert human.stdout.strip() == "accepted 0, rejected 0, pending 0, batches 0"
    for output in (result.stdout, result.stderr, human.stdout, human.stderr):
        assert TOKEN not in output


def test_token_not_in_reprs_or_errors(store):
    from replaylog.replay import ReplayConfig, Replayer

    config = ReplayConfig(url="http://127.0.0.1:9", token=TOKEN)
    with Replayer(config) as replayer:
        assert TOKEN not in repr(config) + str(config) + repr(replayer) + repr(store)
    fill(store, 1)
    with pytest.raises(TransientDeliveryError) as info:
        store.replay(unused_port_url(), token=TOKEN, max_retries=0)
    assert TOKEN not in str(info.value) + repr(info.value)


# --------------------------------------------------------------------------- offline emit


def append_sync(root: Path, url: str, timeout: float) -> tuple[Any, float]:
    """`replaylog append --sync` to ``url``; its result and how long it took."""
    run_cli(root, "status")  # create the index first: only the append is timed
    started = time.monotonic()
    result = run_cli(
        root, "append", "f", "--type", "t", "--aggregate", "a",
        "--sync", "--sync-timeout", str(timeout), "--url", url,
    )  # fmt: skip
    return result, time.monotonic() - started


def test_offline_append_sync_returns_within_the_timeout_and_keeps_the_event(tmp_path):
    root = tmp_path / "p"
    result, elapsed = append_sync(root, unused_port_url(), 1)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("Warning: ")
    assert elapsed < 1 + 3.0, f"took {elapsed:.2f} s for a 1 s sync timeout"
    event_id = result.stdout.strip()
    lines = (root / "kitty-specs" / "f" / EVENTS_FILENAME).read_text().splitlines()
    assert json.loads(lines[0])["event_id"] == event_id
    status = json.loads(run_cli(root, "status", "--json").stdout)
    assert status["totals"] == {"events": 1, "pending": 1, "delivered": 0, "failed": 0}


def test_a_stalled_server_does_not_hold_append_sync_past_its_timeout(tmp_path, receiver):
    root = tmp_path / "p"
    receiver.script([Action.stall(5)])
    result, elapsed = append_sync(root, receiver.url, 1)
    assert result.returncode == 0
    assert elapsed < 1 + 3.0


def test_emit_delivers_when_online(store, receiver):
    result = store.emit("alpha", "note", "A", {"x": 1}, url=receiver.url, sync_timeout=5)
    assert result.delivered and result.warning is None
    assert list(receiver.events) == [result.event.event_id]
    assert rows(store)[result.event.event_id][0] == "delivered"


def refuse_all(kind: str) -> Any:
    """A receiver hook that refuses every event of every batch, in the way ``kind`` says."""

    def hook(request: RecordedRequest) -> Action:
        if kind == "rejected":
            body = {"accepted": [], "rejected": [{"event_id": i, "reason": "not allowed"}
                                                 for i in request.event_ids]}  # fmt: skip
            return Action.answer(200, body=json.dumps(body).encode())
        if kind == "results":
            results = [{"event_id": i, "status": "rejected", "error_message": "not allowed"}
                       for i in request.event_ids]  # fmt: skip
            return Action.answer(200, body=json.dumps({"results": results}).encode())
        if kind == "400-details":
            details = [{"event_id": i, "error": "not allowed"} for i in request.event_ids]
            return Action.answer(400, body=json.dumps({"details": details}).encode())
        return Action.answer(int(kind), body=b"not allowed")

    return hook


@pytest.mark.parametrize("kind", ["rejected", "results", "400-details", "422", "412"])
def test_emit_refused_by_the_server_stays_pending_and_a_later_replay_sends_it(
    store, receiver, kind
):
    older = fill(store, 1)[0]
    receiver.hook = refuse_all(kind)
    result = store.emit("alpha", "note", "A", url=receiver.url, sync_timeout=5)
    event_id = result.event.event_id
    assert not result.delivered
    assert result.warning and "not allowed" in result.warning and "pending" in result.warning
    state = rows(store)
    assert state[event_id][0] == state[older][0] == "pending", "a refused emit is not failed"
    assert store.status()["totals"]["failed"] == 0
    if kind == "412":  # a 412 answers nothing about the events: they stay untouched
        assert state[event_id] == ("pending", 0, None)
    else:  # the refusal is kept as the last error of an attempt
        assert state[event_id][1] == 1 and "not allowed" in (state[event_id][2] or "")
    receiver.hook = None
    report = store.replay(receiver.url)
    assert (report.accepted, report.pending) == (2, 0)
    assert set(receiver.events) == {older, event_id}


def test_cli_append_sync_refused_exits_0_warns_and_a_plain_replay_delivers(tmp_path, receiver):
    root = tmp_path / "p"
    receiver.hook = refuse_all("rejected")
    result, _ = append_sync(root, receiver.url, 5)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("Warning: ") and "not allowed" in result.stderr
    assert "pending" in result.stderr
    status = json.loads(run_cli(root, "status", "--json").stdout)
    assert status["totals"] == {"events": 1, "pending": 1, "delivered": 0, "failed": 0}
    receiver.hook = None
    replayed = run_cli(root, "replay", "--url", receiver.url, "--json")
    assert replayed.returncode == 0, replayed.stderr
    assert json.loads(replayed.stdout)["accepted"] == 1
    assert list(receiver.events) == [result.stdout.strip()]


def test_emit_delivered_while_another_log_is_bad_says_delivered_with_a_warning(store, receiver):
    fill(store, 1, ("beta",))
    with open(store.log_path("beta"), "ab") as f:
        f.write(b"this is not json\n")
    result = store.emit("alpha", "note", "A", url=receiver.url, sync_timeout=5)
    assert result.delivered, result.warning
    assert result.warning and "beta" in result.warning
    assert list(receiver.events) == [result.event.event_id]


def test_sync_without_url_writes_nothing(tmp_path):
    root = tmp_path / "p"
    result = run_cli(root, "append", "f", "--type", "t", "--aggregate", "a", "--sync")
    assert result.returncode == 2
    assert not (root / "kitty-specs").exists()


# --------------------------------------------------------------------------- two replays


def test_two_replays_at_once_send_each_event_once(tmp_path, receiver):
    root = tmp_path / "p"
    root.mkdir()
    with EventStore(root, fsync=False) as s:
        s.append_many("f", [{"event_type": "t", "aggregate_id": f"A{i}"} for i in range(300)])
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "replaylog",
                "--root",
                str(root),
                "replay",
                "--url",
                receiver.url,
                "--batch-size",
                "7",
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    accepted = sum(json.loads(out)["accepted"] for out, _ in outs)
    assert accepted == 300
    assert len(receiver.events) == 300 and receiver.duplicates == 0


# --------------------------------------------------------------------------- the pending queue


def _line(event_id: str, lamport: int) -> bytes:
    event = {
        "event_id": event_id,
        "event_type": "remote",
        "aggregate_id": "X",
        "payload": {},
        "timestamp": "2026-11-20T22:00:00Z",
        "node_id": "elsewhere",
        "lamport_clock": lamport,
        "causation_id": None,
        "correlation_id": None,
    }
    return (json.dumps(event, sort_keys=True) + "\n").encode()


def _tied_logs(store: EventStore) -> None:
    """Two logs whose lines share Lamport values (merged from other nodes), and one event
    id that is in both logs."""
    for feature, ids in (("alpha", "ACEGJ"), ("beta", "BDFHK")):
        os.makedirs(os.path.dirname(store.log_path(feature)), exist_ok=True)
        with open(store.log_path(feature), "ab") as f:
            for i, letter in enumerate(ids):
                f.write(_line(f"01JD{letter * 22}", 5 + i // 2))
            f.write(_line("01JDZZZZZZZZZZZZZZZZZZZZZZ", 9))


def test_pending_pages_keep_lamport_then_event_id_order_for_any_page_size(store):
    fill(store, 7, ("alpha", "beta"))
    _tied_logs(store)
    store.status()
    expected = store.index.conn.execute(
        'SELECT feature, event_id, lamport, "offset", length FROM events'
        " WHERE status = 'pending' ORDER BY lamport, event_id"
    ).fetchall()
    assert len(expected) == 19 and len({row[2] for row in expected}) < 19, "ties exist"

    def fields(rows: Any) -> list[tuple[str, str, int, int, int]]:
        return [(r.feature, r.event_id, r.lamport, r.offset, r.length) for r in rows]

    for page in (1, 2, 3, 5, 19, 1000):
        assert fields(store.delivery.pending(page=page)) == expected, page
        only_beta = fields(store.delivery.pending(["beta"], page=page))
        assert only_beta == [row for row in expected if row[0] == "beta"], page
    assert list(store.delivery.pending([])) == []


def test_a_page_of_the_pending_queue_holds_nothing_the_collector_tracks(store):
    """A page held as objects the cycle collector tracks (SQLAlchemy Rows) is promoted
    to its oldest generation and sets off collections of the whole heap in long runs."""
    import gc

    from sqlalchemy.engine import Row

    from replaylog.index import PendingRow

    fill(store, 12)
    store.status()
    queue = store.delivery.pending(page=10)
    first = next(queue)
    gc.collect()
    tracked = [o for o in gc.get_objects() if isinstance(o, (Row, PendingRow))]
    assert tracked == [first], "only the row taken is alive"
    assert len([first, *queue]) == 12


def test_an_event_id_in_two_logs_is_delivered_in_both(store, receiver):
    _tied_logs(store)
    for batch_size in (1, 3):
        store.rebuild_index(reset_delivery=True)
        report = store.replay(receiver.url, batch_size=batch_size, backoff_base=0.01)
        assert (report.rejected, report.pending) == (0, 0), batch_size
        assert {s for s, _, _ in rows(store).values()} == {"delivered"}
        both = store.index.conn.execute(
            "SELECT feature, status FROM events WHERE event_id = ? ORDER BY feature",
            ("01JDZZZZZZZZZZZZZZZZZZZZZZ",),
        ).fetchall()
        assert both == [("alpha", "delivered"), ("beta", "delivered")]


def test_pending_count_agrees_with_status_and_reads_only_the_pending_index(store):
    from conftest import record
    from sqlalchemy import event as sa_event

    ids = fill(store, 12, ("alpha", "beta", "gamma"))  # alpha gets ids 0, 3, 6, 9
    record(store, accepted=ids[:3], rejected={ids[3]: "bad"}, transient=([ids[4]], "down"))
    counts = store.delivery.counts()
    assert {f: c["pending"] for f, c in counts.items()} == {"alpha": 2, "beta": 3, "gamma": 3}
    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, *rest: Any) -> None:
        seen.append((statement, params))

    sa_event.listen(store.delivery.engine, "before_cursor_execute", capture)
    assert store.delivery.pending_count() == 8
    assert store.delivery.pending_count(["beta", "gamma"]) == 6
    assert store.delivery.pending_count(["alpha"]) == 2
    assert store.delivery.pending_count([]) == 0
    sa_event.remove(store.delivery.engine, "before_cursor_execute", capture)
    for statement, params in seen[:3]:
        plan = store.index.conn.execute("EXPLAIN QUERY PLAN " + statement, params).fetchall()
        assert "ix_events_pending" in " ".join(str(step[-1]) for step in plan), plan
