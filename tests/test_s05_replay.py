"""SPEC section 5, the HTTP transport of replay: unit tests with httpx.MockTransport,
then the same promises against a real server on 127.0.0.1 (tests/receiver.py)."""

from __future__ import annotations

import email.utils
import gzip
import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from receiver import Action, Receiver, unused_port_url

from replaylog import (
    AuthenticationError,
    DeliveryError,
    ReplaylogError,
    TransientDeliveryError,
    UsageError,
)
from replaylog.replay import BatchResult, PendingEvent, ReplayConfig, Replayer, batch_body

TOKEN = "s3cr3t-T0KEN-value-4242"
URL = "https://events.example.com"
FEATURE = "alpha"


# -- helpers -------------------------------------------------------------------


def make_events(
    n: int, *, pad: int = 0, start: int = 0, feature: str = FEATURE
) -> list[PendingEvent]:
    """n events with ULID-shaped ids in order; ``pad`` adds payload bytes to each line."""
    events = []
    for i in range(start, start + n):
        event_id = f"01HZX{i:021d}"
        obj = {
            "aggregate_id": "agg",
            "causation_id": None,
            "correlation_id": None,
            "event_id": event_id,
            "event_type": "Thing",
            "lamport_clock": i + 1,
            "node_id": "node",
            "payload": {"pad": "x" * pad},
            "timestamp": "2024-01-01T00:00:00Z",
        }
        events.append(PendingEvent(event_id, json.dumps(obj, sort_keys=True).encode(), feature))
    return events


def ids_of(events: list[PendingEvent]) -> tuple[str, ...]:
    return tuple(e.event_id for e in events)


def sha_key(ids: tuple[str, ...] | list[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


class Server:
    """A MockTransport handler that records requests and answers through ``respond``."""

    def __init__(self, respond: Callable[[httpx.Request, list[str]], httpx.Response] | None = None):
        self.requests: list[httpx.Request] = []
        self.bodies: list[bytes] = []  # uncompressed
        self.respond = respond or accept_all

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        raw = request.content
        if request.headers.get("content-encoding") == "gzip":
            raw = gzip.decompress(raw)
        self.bodies.append(raw)
        ids = [e["event_id"] for e in json.loads(raw)["events"]]
        return self.respond(request, ids)

    def batches(self) -> list[list[str]]:
        return [[e["event_id"] for e in json.loads(b)["events"]] for b in self.bodies]


def accept_all(request: httpx.Request, ids: list[str]) -> httpx.Response:
    return httpx.Response(200, json={"accepted": ids, "rejected": []})


def scripted(*answers: Any) -> Callable[[httpx.Request, list[str]], httpx.Response]:
    """Answer in turn: an int status, an httpx.Response, an exception to raise; then 200."""
    queue = list(answers)

    def respond(request: httpx.Request, ids: list[str]) -> httpx.Response:
        if not queue:
            return accept_all(request, ids)
        answer = queue.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        if isinstance(answer, int):
            return httpx.Response(answer, text=f"status {answer}")
        assert isinstance(answer, httpx.Response)
        return answer

    return respond


def replayer(
    server: Server,
    *,
    sleeps: list[float] | None = None,
    rng: random.Random | None = None,
    **kw: Any,
) -> Replayer:
    config = ReplayConfig(kw.pop("url", URL), **kw)
    record = sleeps.append if sleeps is not None else (lambda s: None)
    return Replayer(config, transport=httpx.MockTransport(server), sleep=record, rng=rng)


def run_all(server: Server, events: list[PendingEvent], **kw: Any) -> list[BatchResult]:
    with replayer(server, **kw) as r:
        return list(r.run(events))


# -- where and what is sent -----------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://events.example.com", "https://events.example.com/api/v1/events/batch/"),
        ("https://events.example.com/", "https://events.example.com/api/v1/events/batch/"),
        ("https://h.example.com/prefix", "https://h.example.com/prefix/api/v1/events/batch/"),
        ("https://h.example.com/a/b/", "https://h.example.com/a/b/api/v1/events/batch/"),
        ("http://127.0.0.1:8123", "http://127.0.0.1:8123/api/v1/events/batch/"),
    ],
)
def test_batches_go_to_the_batch_path_keeping_a_url_prefix_without_double_slash(
    url: str, expected: str
) -> None:
    server = Server()
    run_all(server, make_events(1), url=url)
    assert [str(r.url) for r in server.requests] == [expected]
    assert [r.method for r in server.requests] == ["POST"]


def test_body_holds_the_log_lines_byte_for_byte_never_reserialized() -> None:
    odd = [
        PendingEvent(
            "01HZX000000000000000000001", b'{"event_id":"01HZX000000000000000000001"}', "f1"
        ),
        PendingEvent(
            "01HZX000000000000000000002",
            b'{"z": 1.0, "event_id": "01HZX000000000000000000002", "s": "\\u00e9", "x": [1,2]}',
            "f2",
        ),
    ]
    server = Server()
    run_all(server, odd, node_id="node-7")
    assert server.bodies == [
        b'{"events": [' + odd[0].line + b", " + odd[1].line + b"]"
        b', "features": ["f1", "f2"], "node_id": "node-7"}'
    ]


def test_body_carries_the_feature_of_each_event_in_order_and_the_senders_node_id() -> None:
    events = make_events(2, feature="alpha") + make_events(1, start=2, feature="beta.2")
    server = Server()
    run_all(server, events, node_id="a1b2c3")
    (body,) = [json.loads(b) for b in server.bodies]
    assert list(body) == ["events", "features", "node_id"]
    assert [e["event_id"] for e in body["events"]] == list(ids_of(events))
    assert body["features"] == ["alpha", "alpha", "beta.2"]
    assert body["node_id"] == "a1b2c3"


def test_a_config_without_a_node_id_leaves_the_key_out_and_an_empty_one_is_refused() -> None:
    server = Server()
    run_all(server, make_events(1))
    assert set(json.loads(server.bodies[0])) == {"events", "features"}
    for bad in ("", "caf\udce9", "a\x00b", "tab\t", "n" * 201):  # (\udce9: a byte not UTF-8)
        with pytest.raises(UsageError, match="node id must be printable text"):
            ReplayConfig(URL, node_id=bad)
    assert ReplayConfig(URL, node_id="n" * 200).node_id == "n" * 200


def test_content_type_is_json_and_bearer_token_is_sent_only_when_set() -> None:
    with_token, without = Server(), Server()
    run_all(with_token, make_events(1), token=TOKEN)
    run_all(without, make_events(1))
    sent = with_token.requests[0].headers
    assert sent["content-type"] == "application/json"
    assert sent["authorization"] == f"Bearer {TOKEN}"
    assert without.requests[0].headers["content-type"] == "application/json"
    assert "authorization" not in without.requests[0].headers


def test_idempotency_key_is_sha256_of_ids_in_batch_order_and_same_on_every_retry() -> None:
    server = Server(scripted(503, 500))
    events = make_events(5)
    results = run_all(server, events, batch_size=3, max_retries=3)
    keys = [r.headers["idempotency-key"] for r in server.requests]
    first, second = ids_of(events[:3]), ids_of(events[3:])
    assert keys == [sha_key(first)] * 3 + [sha_key(second)]
    assert sha_key(first) != sha_key(second)
    assert [r.accepted for r in results] == [first, second]
    assert results[0].attempts == 3 and results[1].attempts == 1


def test_bodies_over_1_kib_are_gzipped_and_bodies_up_to_1_kib_are_not() -> None:
    overhead = len(batch_body([PendingEvent("", b"", FEATURE)]))

    def event_with_body_size(size: int, n: int) -> PendingEvent:
        event_id = f"01HZX{n:021d}"
        head = b'{"event_id": "' + event_id.encode() + b'", "p": "'
        line = head + b"y" * (size - overhead - len(head) - 2) + b'"}'
        event = PendingEvent(event_id, line, FEATURE)
        assert len(batch_body([event])) == size
        return event

    server = Server()
    run_all(server, [event_with_body_size(1024, 1), event_with_body_size(1025, 2)], batch_size=1)
    small, big = server.requests
    assert "content-encoding" not in small.headers
    assert len(small.content) == 1024
    assert big.headers["content-encoding"] == "gzip"
    assert len(big.content) < 1025
    assert gzip.decompress(big.content) == server.bodies[1]
    assert len(server.bodies[1]) == 1025


def test_batches_hold_at_most_batch_size_events_in_the_given_order() -> None:
    server = Server()
    events = make_events(25)
    results = run_all(server, events, batch_size=10)
    assert [len(b) for b in server.batches()] == [10, 10, 5]
    assert [i for b in server.batches() for i in b] == list(ids_of(events))
    assert [r.event_ids for r in results] == [
        ids_of(events[:10]),
        ids_of(events[10:20]),
        ids_of(events[20:]),
    ]


def test_batches_hold_at_most_max_batch_bytes_of_uncompressed_json() -> None:
    server = Server()
    events = make_events(40, pad=3000)  # ~3.2 KB per line
    limit = 20_000
    run_all(server, events, max_batch_bytes=limit)
    sizes = [len(b) for b in server.bodies]
    assert all(size <= limit for size in sizes)
    assert len(sizes) > 1
    # Greedy: the first event of each following batch would not have fitted.
    batches = server.batches()
    # Each event adds its line, its feature ("alpha" with quotes) and two ", ".
    line_len = {e.event_id: len(e.line) + len('"alpha"') + 4 for e in events}
    for body_size, next_batch in zip(sizes[:-1], batches[1:], strict=True):
        assert body_size + line_len[next_batch[0]] > limit


def test_default_byte_limit_is_256_kib() -> None:
    server = Server()
    run_all(server, make_events(60, pad=20_000), batch_size=1000)
    assert len(server.bodies) > 1
    assert all(len(b) <= 256 * 1024 for b in server.bodies)
    assert len(server.bodies[0]) + 20_200 > 256 * 1024  # filled, not split early


def test_a_single_event_bigger_than_the_byte_limit_goes_alone() -> None:
    server = Server()
    events = make_events(1) + make_events(1, pad=5000, start=1) + make_events(2, start=2)
    run_all(server, events, max_batch_bytes=2000)
    assert [len(b) for b in server.batches()] == [1, 1, 2]
    assert len(server.bodies[1]) > 2000


@pytest.mark.parametrize("size", [0, -1, 1001, 5000])
def test_batch_size_outside_1_to_1000_is_a_usage_error(size: int) -> None:
    with pytest.raises(UsageError, match="batch size"):
        ReplayConfig(URL, batch_size=size)


@pytest.mark.parametrize("size", [1, 1000])
def test_batch_size_limits_1_and_1000_are_allowed(size: int) -> None:
    server = Server()
    run_all(server, make_events(3), batch_size=size)
    assert [len(b) for b in server.batches()] == ([1, 1, 1] if size == 1 else [3])


def test_run_sends_the_next_batch_only_when_the_next_result_is_asked_for() -> None:
    server = Server()
    with replayer(server, batch_size=2) as r:
        results = r.run(make_events(6))
        assert server.requests == []
        next(results)
        assert len(server.requests) == 1
        next(results)
        assert len(server.requests) == 2


def test_no_events_sends_nothing() -> None:
    server = Server()
    assert run_all(server, []) == []
    assert server.requests == []


# -- answers --------------------------------------------------------------------


def test_accepted_rejected_shape_with_plain_and_detailed_rejections() -> None:
    events = make_events(4)
    a, b, c, d = ids_of(events)

    def respond(request: httpx.Request, ids: list[str]) -> httpx.Response:
        return httpx.Response(
            200,
            json={"accepted": [a, d], "rejected": [b, {"event_id": c, "reason": "bad payload"}]},
        )

    (result,) = run_all(Server(respond), events)
    assert result.event_ids == (a, b, c, d)
    assert result.accepted == (a, d)
    assert result.rejected[c] == "bad payload"
    assert set(result.rejected) == {b, c}
    assert result.rejected[b]  # a plain-id rejection still has a reason
    assert result.transient_error is None
    assert result.attempts == 1


def results(*items: dict[str, Any]) -> Callable[[httpx.Request, list[str]], httpx.Response]:
    """Answer every batch 200 {"results": items}."""
    return lambda request, ids: httpx.Response(200, json={"results": list(items)})


@pytest.mark.parametrize("status", ["success", "accepted", "warning", "duplicate"])
def test_results_statuses_success_accepted_warning_duplicate_mean_accepted(status: str) -> None:
    events = make_events(2)
    a, b = ids_of(events)
    answer = results({"event_id": a, "status": status}, {"event_id": b, "status": status})
    (result,) = run_all(Server(answer), events)
    assert result.accepted == (a, b)
    assert result.rejected == {} and result.transient_error is None


def test_results_status_rejected_is_rejected_with_error_or_error_message() -> None:
    events = make_events(3)
    a, b, c = ids_of(events)
    answer = results(
        {"event_id": a, "status": "rejected", "error": "missing field"},
        {"event_id": b, "status": "rejected", "error_message": "unknown lane"},
        {"event_id": c, "status": "rejected"},
    )
    (result,) = run_all(Server(answer), events)
    assert result.accepted == ()
    assert result.rejected[a] == "missing field"
    assert result.rejected[b] == "unknown lane"
    assert result.rejected[c]  # a rejection without a reason still says something


@pytest.mark.parametrize("status", ["queued", "pending", "conflict", "invalid", "error", ""])
def test_results_queued_pending_or_unnamed_statuses_leave_the_event_pending(status: str) -> None:
    events = make_events(2)
    a, b = ids_of(events)
    answer = results(
        {"event_id": a, "status": "success"},
        {"event_id": b, "status": status, "error_message": "later"},
    )
    (result,) = run_all(Server(answer), events)
    assert result.event_ids == (a, b)
    assert result.accepted == (a,)
    assert result.rejected == {}, "a status not named 'rejected' never fails an event"
    assert result.transient_error is None


def test_events_left_pending_by_an_answer_are_not_sent_again_in_the_run() -> None:
    def queued(request: httpx.Request, ids: list[str]) -> httpx.Response:
        return httpx.Response(
            200, json={"results": [{"event_id": i, "status": "queued"} for i in ids]}
        )

    events = make_events(5)
    answers = run_all(Server(queued), events, batch_size=2)
    assert [r.event_ids for r in answers] == [
        ids_of(events[:2]),
        ids_of(events[2:4]),
        ids_of(events[4:]),
    ]
    assert all(r.accepted == () and r.rejected == {} for r in answers)


def test_ids_in_neither_list_stay_pending_and_foreign_ids_are_ignored() -> None:
    events = make_events(3)
    a, b, c = ids_of(events)

    def respond(request: httpx.Request, ids: list[str]) -> httpx.Response:
        foreign = "01HZXFOREIGN0000000000000Z"
        return httpx.Response(200, json={"accepted": [a, foreign], "rejected": [foreign]})

    (result,) = run_all(Server(respond), events)
    assert result.event_ids == (a, b, c)
    assert result.accepted == (a,)
    assert result.rejected == {}
    assert result.transient_error is None  # b and c: pending, untouched


@pytest.mark.parametrize(
    "body",
    [
        b"not json at all",
        b"[]",
        b'{"ok": true}',
        b'{"accepted": "01HZX"}',
        b'{"results": [{"event_id": 5, "status": "success"}]}',
        b"",
    ],
)
def test_a_2xx_with_neither_answer_shape_is_a_transient_failure(body: bytes) -> None:
    server = Server(lambda request, ids: httpx.Response(200, content=body))
    events = make_events(4)
    results = run_all(server, events, batch_size=2, max_retries=1)
    assert len(results) == 1  # the run stopped: the second batch was never sent
    (result,) = results
    assert result.event_ids == ids_of(events[:2])
    assert result.accepted == () and result.rejected == {}
    assert result.transient_error is not None
    assert result.attempts == 2
    assert len(server.requests) == 2


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
def test_retryable_statuses_are_retried_in_the_same_run(status: int) -> None:
    server = Server(scripted(status, status))
    sleeps: list[float] = []
    results = run_all(server, make_events(2), sleeps=sleeps, max_retries=3)
    assert [r.accepted for r in results] == [ids_of(make_events(2))]
    assert results[0].attempts == 3
    assert len(sleeps) == 2


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("[Errno 111] Connection refused"),
        httpx.ReadTimeout("timed out"),
        httpx.ConnectTimeout("timed out"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ReadError("[Errno 104] Connection reset by peer"),
        httpx.WriteError("[Errno 32] Broken pipe"),
    ],
)
def test_network_errors_and_timeouts_are_retried(error: Exception) -> None:
    server = Server(scripted(error))
    results = run_all(server, make_events(1), max_retries=1)
    assert results[0].accepted == ids_of(make_events(1))
    assert results[0].attempts == 2


def test_retries_spent_yield_one_transient_result_then_the_run_stops() -> None:
    server = Server(lambda request, ids: httpx.Response(503, text="busy"))
    events = make_events(6)
    results = run_all(server, events, batch_size=2, max_retries=3)
    assert results == [
        BatchResult(ids_of(events[:2]), (), {}, "HTTP 503 after 4 attempts", attempts=4)
    ]
    assert len(server.requests) == 4


def test_transient_error_from_the_network_is_one_short_line() -> None:
    refused = httpx.ConnectError("[Errno 111] Connection\nrefused")
    server = Server(scripted(refused, refused, refused))
    (result,) = run_all(server, make_events(1), max_retries=2)
    assert result.transient_error is not None
    assert result.transient_error.startswith("connection refused")
    assert result.transient_error.endswith("after 3 attempts")
    assert "\n" not in result.transient_error


def test_backoff_sleeps_are_base_times_2_to_the_k_times_uniform_half_to_one() -> None:
    server = Server(lambda request, ids: httpx.Response(500))
    sleeps: list[float] = []
    run_all(server, make_events(1), sleeps=sleeps, rng=random.Random(7), backoff_base=2.0)
    twin = random.Random(7)
    assert sleeps == [2.0 * 2**k * twin.uniform(0.5, 1.0) for k in range(3)]
    for k, slept in enumerate(sleeps):
        assert 2.0 * 2**k * 0.5 <= slept <= 2.0 * 2**k


def test_backoff_has_jitter_within_its_range() -> None:
    seen = []
    for seed in range(20):
        sleeps: list[float] = []
        run_all(
            Server(scripted(500)),
            make_events(1),
            sleeps=sleeps,
            rng=random.Random(seed),
        )
        seen.append(sleeps[0])
    assert all(0.5 <= s <= 1.0 for s in seen)
    assert max(seen) - min(seen) > 0.1  # not a fixed delay


def test_retry_after_in_seconds_is_obeyed_instead_of_backoff() -> None:
    answer = httpx.Response(429, headers={"Retry-After": "7"})
    sleeps: list[float] = []
    results = run_all(Server(scripted(answer)), make_events(1), sleeps=sleeps)
    assert sleeps == [7.0]
    assert results[0].accepted


def test_retry_after_as_an_http_date_is_obeyed() -> None:
    when = datetime.now(timezone.utc) + timedelta(seconds=30)
    answer = httpx.Response(503, headers={"Retry-After": email.utils.format_datetime(when, True)})
    sleeps: list[float] = []
    run_all(Server(scripted(answer)), make_events(1), sleeps=sleeps)
    assert len(sleeps) == 1
    assert 27.0 <= sleeps[0] <= 30.0


@pytest.mark.parametrize("value", ["3600", "in-date"])
def test_retry_after_is_capped_at_60_seconds(value: str) -> None:
    if value == "in-date":
        value = email.utils.format_datetime(datetime.now(timezone.utc) + timedelta(hours=2), True)
    answer = httpx.Response(503, headers={"Retry-After": value})
    sleeps: list[float] = []
    run_all(Server(scripted(answer)), make_events(1), sleeps=sleeps)
    assert sleeps == [60.0]


def test_retry_after_that_cannot_be_read_falls_back_to_backoff() -> None:
    answer = httpx.Response(503, headers={"Retry-After": "soon-ish"})
    sleeps: list[float] = []
    run_all(Server(scripted(answer)), make_events(1), sleeps=sleeps, backoff_base=4.0)
    assert len(sleeps) == 1 and 2.0 <= sleeps[0] <= 4.0


@pytest.mark.parametrize("status", [401, 403])
def test_401_and_403_stop_the_run_with_authentication_failed(status: int) -> None:
    server = Server(lambda request, ids: httpx.Response(status, text=f"no {TOKEN}"))
    with replayer(server, token=TOKEN) as r:
        results = r.run(make_events(4))
        with pytest.raises(AuthenticationError, match="authentication failed") as info:
            next(results)
        assert list(results) == []
    assert len(server.requests) == 1
    assert TOKEN not in str(info.value)
    assert info.value.exit_code == 4


def test_404_stops_the_run_with_an_error_naming_the_url() -> None:
    server = Server(lambda request, ids: httpx.Response(404))
    with replayer(server, url="https://events.example.com/base") as r:
        with pytest.raises(DeliveryError) as info:
            list(r.run(make_events(2)))
    assert "https://events.example.com/base/api/v1/events/batch/" in str(info.value)
    assert not isinstance(info.value, TransientDeliveryError | AuthenticationError)
    assert info.value.exit_code == 1
    assert len(server.requests) == 1


def test_redirects_are_not_followed_and_stop_the_run() -> None:
    answer = httpx.Response(307, headers={"Location": "https://elsewhere.example.com/x"})
    server = Server(scripted(answer))
    with replayer(server, token=TOKEN) as r:
        with pytest.raises(DeliveryError, match="elsewhere.example.com"):
            list(r.run(make_events(1)))
    assert len(server.requests) == 1


def test_413_splits_the_batch_in_halves_each_with_its_own_key() -> None:
    events = make_events(5)
    always_too_big = events[2].event_id

    def respond(request: httpx.Request, ids: list[str]) -> httpx.Response:
        if len(ids) > 2 or always_too_big in ids and len(ids) > 1:
            return httpx.Response(413, text="too large")
        if ids == [always_too_big]:
            return httpx.Response(413, text="payload too large")
        return accept_all(request, ids)

    server = Server(respond)
    results = run_all(server, events, batch_size=5)
    a, b, c, d, e = ids_of(events)
    assert server.batches() == [[a, b, c, d, e], [a, b, c], [a, b], [c], [d, e]]
    for request, batch in zip(server.requests, server.batches(), strict=True):
        assert request.headers["idempotency-key"] == sha_key(batch)
    assert [r.event_ids for r in results] == [(a, b), (c,), (d, e)]
    assert results[0].accepted == (a, b) and results[2].accepted == (d, e)
    assert results[1].accepted == ()
    assert "413" in results[1].rejected[c] and "too large" in results[1].rejected[c]
    assert sum(r.attempts for r in results) == len(server.requests)


def test_a_single_event_refused_with_413_is_rejected_without_retry() -> None:
    server = Server(lambda request, ids: httpx.Response(413))
    (result,) = run_all(server, make_events(1))
    assert list(result.rejected) == [make_events(1)[0].event_id]
    assert "413" in result.rejected[make_events(1)[0].event_id]
    assert len(server.requests) == 1


def test_other_4xx_rejects_the_whole_batch_with_status_and_a_body_snippet() -> None:
    server = Server(scripted(httpx.Response(422, text="E" * 500)))
    events = make_events(3)
    results = run_all(server, events + make_events(1, start=3), batch_size=3)
    assert results[0].rejected == dict.fromkeys(ids_of(events), "HTTP 422: " + "E" * 200)
    assert results[0].accepted == ()
    assert len(results) == 2  # rejections are answers: the run goes on
    assert results[1].accepted


def details_400(details: Any) -> httpx.Response:
    return httpx.Response(400, json={"error": "validation failed", "details": details})


@pytest.mark.parametrize("as_string", [False, True])
def test_400_with_details_fails_only_the_named_events_and_resends_the_others(
    as_string: bool,
) -> None:
    events = make_events(5)
    a, b, c, d, e = ids_of(events)
    details: Any = [
        {"event_id": b, "error": "bad aggregate"},
        {"event_id": d, "reason": "unknown lane"},
        {"event_id": "01HZXNOTINTHEBATCH00000000", "error": "ignored"},
    ]
    server = Server(scripted(details_400(json.dumps(details) if as_string else details)))
    answers = run_all(server, events)
    assert server.batches() == [[a, b, c, d, e], [a, c, e]]
    keys = [r.headers["idempotency-key"] for r in server.requests]
    assert keys == [sha_key([a, b, c, d, e]), sha_key([a, c, e])]
    failed, sent_again = answers
    assert failed.event_ids == (b, d) and failed.accepted == ()
    assert failed.rejected == {b: "bad aggregate", d: "unknown lane"}
    assert failed.attempts == 1
    assert sent_again.event_ids == (a, c, e) and sent_again.accepted == (a, c, e)
    assert sum(r.attempts for r in answers) == len(server.requests)


def test_400_details_naming_every_event_fails_the_batch_without_sending_it_again() -> None:
    events = make_events(2)
    a, b = ids_of(events)
    server = Server(scripted(details_400([{"event_id": a, "error": "x"}, {"event_id": b}])))
    (answer,) = run_all(server, events)
    assert answer.rejected == {a: "x", b: "HTTP 400"}
    assert len(server.requests) == 1


def test_400_details_again_on_the_resent_events_fail_those_too() -> None:
    events = make_events(3)
    a, b, c = ids_of(events)
    server = Server(
        scripted(
            details_400([{"event_id": a, "error": "first"}]),
            details_400([{"event_id": c, "error": "second"}]),
        )
    )
    answers = run_all(server, events)
    assert server.batches() == [[a, b, c], [b, c], [b]]
    assert [r.rejected for r in answers] == [{a: "first"}, {c: "second"}, {}]
    assert answers[-1].accepted == (b,)


def test_a_transient_failure_after_400_details_keeps_the_rejections_and_stops() -> None:
    events = make_events(3)
    a, b, c = ids_of(events)
    server = Server(scripted(details_400([{"event_id": b, "error": "no"}]), 503, 503))
    answers = run_all(server, events + make_events(1, start=3), batch_size=3, max_retries=1)
    assert [r.event_ids for r in answers] == [(b,), (a, c)]
    assert answers[0].rejected == {b: "no"}
    assert answers[1].transient_error == "HTTP 503 after 2 attempts"
    assert len(server.requests) == 3  # the run stopped: the last event was never sent


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(400, text="bad request"),
        httpx.Response(400, json={"details": "not a list"}),
        httpx.Response(400, json={"details": []}),
        httpx.Response(400, json={"details": [{"event_id": "01HZXNOTINTHEBATCH00000000"}]}),
        httpx.Response(400, json={"details": ["01HZX000000000000000000000"]}),
        httpx.Response(400, json={"details": "[not json"}),
    ],
)
def test_400_without_usable_details_fails_the_whole_batch_like_any_4xx(
    answer: httpx.Response,
) -> None:
    events = make_events(2)
    server = Server(scripted(answer))
    (result,) = run_all(server, events)
    assert set(result.rejected) == set(ids_of(events))
    assert all(reason.startswith("HTTP 400: ") for reason in result.rejected.values())
    assert len(server.requests) == 1


def test_412_stops_the_run_at_once_saying_protocol_mismatch() -> None:
    server = Server(scripted(httpx.Response(412, text="client protocol v1 not supported")))
    with replayer(server, batch_size=1, max_retries=3) as r:
        results = r.run(make_events(3))
        with pytest.raises(DeliveryError, match="protocol mismatch") as info:
            next(results)
    assert not isinstance(info.value, (TransientDeliveryError, AuthenticationError))
    assert info.value.exit_code == 1
    assert "412" in str(info.value) and "client protocol v1 not supported" in str(info.value)
    assert len(server.requests) == 1, "a 412 is not retried"


def test_a_transient_failure_inside_a_413_split_stops_the_run() -> None:
    events = make_events(4)

    def respond(request: httpx.Request, ids: list[str]) -> httpx.Response:
        return httpx.Response(413 if len(ids) > 2 else 503)

    server = Server(respond)
    results = run_all(server, events, max_retries=1)
    assert [r.event_ids for r in results] == [ids_of(events[:2])]
    assert results[0].transient_error == "HTTP 503 after 2 attempts"
    assert results[0].attempts == 3  # the 413 request and two tries of the first half
    assert len(server.requests) == 3


# -- URLs and the token ------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1",
        "http://127.0.0.1:8080/prefix",
        "http://127.5.6.7:9",
        "http://[::1]:9000",
        "http://localhost:5000",
        "http://LOCALHOST",
        "https://events.example.com",
    ],
)
def test_loopback_http_and_any_https_are_allowed(url: str) -> None:
    server = Server()
    run_all(server, make_events(1), url=url)
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    "url",
    [
        "http://events.example.com",
        "http://10.0.0.1:8080",
        "http://localhost.evil.example.com",
        "http://128.0.0.1",
        "http://[::2]",
    ],
)
def test_plain_http_to_a_non_loopback_host_is_refused_unless_allowed(url: str) -> None:
    with pytest.raises(UsageError, match="allow-insecure-http"):
        ReplayConfig(url)
    server = Server()
    run_all(server, make_events(1), url=url, allow_insecure_http=True)
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    "url",
    [
        "",
        "events.example.com",
        "ftp://events.example.com",
        "file:///tmp/x",
        "https://",
        "https://events.example.com:99999",
        "https://user:pw@events.example.com",
        "https://events.example.com/?a=1",
        "https://events.example.com/#frag",
        "https://events.exa mple.com",
        "https://events.example.com/\nx",
    ],
)
def test_bad_urls_are_usage_errors_before_anything_is_sent(url: str) -> None:
    with pytest.raises(UsageError):
        ReplayConfig(url)


def test_usage_errors_are_replaylog_errors_with_exit_code_2() -> None:
    with pytest.raises(ReplaylogError) as info:
        ReplayConfig("ftp://x.example.com")
    assert info.value.exit_code == 2


def test_token_is_absent_from_repr_and_str_of_config_and_replayer() -> None:
    config = ReplayConfig(URL, token=TOKEN)
    with Replayer(config, transport=httpx.MockTransport(Server())) as r:
        for text in (repr(config), str(config), repr(r), str(r)):
            assert TOKEN not in text
    assert "***" in repr(config)
    assert "token=None" in repr(ReplayConfig(URL))


def test_token_is_absent_from_every_error_message() -> None:
    messages: list[str] = []

    def collect(respond: Callable[[httpx.Request, list[str]], httpx.Response]) -> None:
        with replayer(Server(respond), token=TOKEN, max_retries=0) as r:
            try:
                for result in r.run(make_events(2)):
                    messages.extend([result.transient_error or "", *result.rejected.values()])
            except ReplaylogError as exc:
                messages.append(str(exc))

    echo = f"you sent Bearer {TOKEN}"
    for status in (400, 401, 403, 404, 307, 413, 422, 500, 600):
        collect(lambda request, ids, status=status: httpx.Response(status, text=echo))
    collect(lambda request, ids: httpx.Response(200, text=echo))

    def raising(request: httpx.Request, ids: list[str]) -> httpx.Response:
        raise httpx.ConnectError(f"refused {TOKEN}")

    collect(raising)
    for kwargs in (
        {"batch_size": 0},
        {"url": "http://events.example.com"},
        {"url": "ftp://x"},
        {"timeout": 0},
    ):
        with pytest.raises(UsageError) as info:
            ReplayConfig(kwargs.pop("url", URL), token=TOKEN, **kwargs)
        messages.append(str(info.value))
    assert len(messages) > 10
    assert all(TOKEN not in m for m in messages)


@pytest.mark.parametrize("token", ["bad\ntoken-value", "with space", "tab\there", ""])
def test_a_token_that_cannot_be_a_header_is_refused_without_showing_it(token: str) -> None:
    with pytest.raises(UsageError, match="token") as info:
        ReplayConfig(URL, token=token)
    if token:
        assert token not in str(info.value)


def test_token_never_appears_in_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with Receiver() as r:
        r.script(["500", "ok"])
        config = ReplayConfig(r.url, token=TOKEN, backoff_base=0.01, timeout=2)
        with Replayer(config) as replay:
            results = list(replay.run(make_events(3)))
        assert r.requests[0].headers["authorization"] == f"Bearer {TOKEN}"
    assert results[0].accepted
    assert caplog.records  # httpx/httpcore did log something
    assert TOKEN not in caplog.text


# -- deadline --------------------------------------------------------------------


def test_no_sleep_goes_past_the_deadline() -> None:
    answer = httpx.Response(503, headers={"Retry-After": "5"})
    server = Server(scripted(answer, answer))
    sleeps: list[float] = []
    deadline = time.monotonic() + 2.0
    results = run_all(server, make_events(1), sleeps=sleeps, deadline=deadline, max_retries=5)
    assert sleeps == []
    assert len(server.requests) == 1
    assert results[0].transient_error == "HTTP 503 after 1 attempt"


def test_a_passed_deadline_sends_nothing() -> None:
    server = Server()
    results = run_all(server, make_events(3), deadline=time.monotonic() - 1)
    assert results == []
    assert server.requests == []


def test_each_request_timeout_is_the_smaller_of_timeout_and_time_left() -> None:
    seen: list[dict[str, float]] = []

    def respond(request: httpx.Request, ids: list[str]) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return accept_all(request, ids)

    run_all(Server(respond), make_events(1), timeout=10.0, deadline=time.monotonic() + 1.5)
    run_all(Server(respond), make_events(1), timeout=0.25)
    assert 0 < seen[0]["read"] <= 1.5 and 0 < seen[0]["connect"] <= 1.5
    assert seen[1]["read"] == 0.25


# -- against a real server on 127.0.0.1 ------------------------------------------


def real(url: str, **kw: Any) -> ReplayConfig:
    kw.setdefault("backoff_base", 0.01)
    kw.setdefault("timeout", 2.0)
    return ReplayConfig(url, **kw)


@pytest.mark.parametrize("prefix", ["", "/prefix"])
def test_every_event_is_delivered_exactly_once_to_a_real_server(prefix: str) -> None:
    events = make_events(250, pad=50)
    with Receiver(prefix=prefix) as r, Replayer(real(r.url, token=TOKEN)) as replay:
        results = list(replay.run(events))
    assert [len(res.accepted) for res in results] == [100, 100, 50]
    assert r.events == {e.event_id: json.loads(e.line) for e in events}
    assert set(r.deliveries.values()) == {1}
    assert r.duplicates == 0
    assert all(req.gzipped for req in r.requests)  # these bodies are well over 1 KiB
    assert len({req.idempotency_key for req in r.requests}) == 3


def test_500_then_200_recovers_in_the_same_run() -> None:
    events = make_events(5)
    with Receiver() as r, Replayer(real(r.url)) as replay:
        r.script(["500", "ok"])
        results = list(replay.run(events))
    assert [res.accepted for res in results] == [ids_of(events)]
    assert results[0].attempts == 2
    assert [req.action for req in r.requests] == ["500", "ok"]
    assert set(r.events) == set(ids_of(events))


def test_429_with_retry_after_is_obeyed_against_a_real_server() -> None:
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        time.sleep(min(seconds, 0.05))

    with Receiver() as r, Replayer(real(r.url), sleep=sleep) as replay:
        r.script(["429:1"])
        results = list(replay.run(make_events(2)))
    assert sleeps == [1.0]
    assert results[0].accepted == ids_of(make_events(2))


def test_retries_spent_against_a_real_server_leave_the_batch_pending_and_stop() -> None:
    events = make_events(4)
    with Receiver() as r, Replayer(real(r.url, batch_size=2, max_retries=2)) as replay:
        r.script(["503", "502", "500"])
        results = list(replay.run(events))
    assert results == [
        BatchResult(ids_of(events[:2]), (), {}, "HTTP 500 after 3 attempts", attempts=3)
    ]
    assert len(r.requests) == 3  # the second batch was never sent
    assert r.events == {}


def test_an_answer_lost_after_the_server_stored_the_batch_is_safe_to_repeat() -> None:
    events = make_events(3)
    with Receiver() as r, Replayer(real(r.url)) as replay:
        r.script(["drop"])
        results = list(replay.run(events))
    assert results[0].accepted == ids_of(events)
    assert results[0].attempts == 2
    assert r.requests[0].idempotency_key == r.requests[1].idempotency_key
    assert dict(r.deliveries) == dict.fromkeys(ids_of(events), 2)
    assert r.duplicates == 3
    assert r.conflicts == []
    assert len(r.events) == 3


def test_a_connection_closed_without_an_answer_is_retried() -> None:
    with Receiver() as r, Replayer(real(r.url)) as replay:
        r.script(["close", "close"])
        results = list(replay.run(make_events(2)))
    assert results[0].accepted == ids_of(make_events(2))
    assert results[0].attempts == 3
    assert set(r.deliveries.values()) == {1}


def test_garbage_answer_from_a_real_server_is_retried() -> None:
    with Receiver() as r, Replayer(real(r.url)) as replay:
        r.script(["garbage"])
        results = list(replay.run(make_events(2)))
    assert results[0].accepted == ids_of(make_events(2))
    assert results[0].attempts == 2


def test_a_server_slower_than_the_timeout_is_retried() -> None:
    started = time.monotonic()
    with Receiver() as r, Replayer(real(r.url, timeout=0.3)) as replay:
        r.script([Action.stall(3)])
        results = list(replay.run(make_events(2)))
    assert results[0].accepted == ids_of(make_events(2))
    assert results[0].attempts == 2
    assert time.monotonic() - started < 2.5  # leaving the receiver ended the stall


def test_results_shape_and_rejections_from_a_real_server() -> None:
    events = make_events(4)
    with Receiver() as r, Replayer(real(r.url)) as replay:
        r.answer_shape = "results"
        r.reject_ids = {events[1].event_id: "schema mismatch"}
        r.script(["drop"])  # the second copy of the rest comes back as "duplicate"
        results = list(replay.run(events))
    assert results[0].accepted == ids_of([events[0], events[2], events[3]])
    assert results[0].rejected == {events[1].event_id: "schema mismatch"}


def test_413_splits_against_a_real_server_until_batches_fit() -> None:
    events = make_events(10)
    with Receiver() as r, Replayer(real(r.url, batch_size=10)) as replay:
        r.max_events = 3
        results = list(replay.run(events))
    assert [e for res in results for e in res.accepted] == list(ids_of(events))
    assert set(r.deliveries.values()) == {1}
    assert sum(res.attempts for res in results) == len(r.requests)
    assert all(len(req.event_ids) <= 3 for req in r.requests if req.action == "ok")


@pytest.mark.parametrize("status", [401, 403])
def test_authentication_failure_from_a_real_server(status: int) -> None:
    with Receiver() as r, Replayer(real(r.url, token=TOKEN)) as replay:
        r.script([str(status)])
        with pytest.raises(AuthenticationError, match="authentication failed"):
            list(replay.run(make_events(2)))
        assert len(r.requests) == 1


def test_wrong_prefix_against_a_real_server_names_the_url() -> None:
    with Receiver(prefix="/right") as r:
        wrong = f"http://127.0.0.1:{r.port}/wrong"
        with Replayer(real(wrong)) as replay, pytest.raises(DeliveryError, match="404") as info:
            list(replay.run(make_events(1)))
        assert r.requests[0].path == "/wrong/api/v1/events/batch/"
    assert f"{wrong}/api/v1/events/batch/" in str(info.value)


def test_a_closed_port_with_a_deadline_gives_up_by_the_deadline() -> None:
    config = real(
        unused_port_url(), max_retries=50, backoff_base=0.05, deadline=time.monotonic() + 0.6
    )
    started = time.monotonic()
    with Replayer(config) as replay:
        results = list(replay.run(make_events(3)))
    elapsed = time.monotonic() - started
    assert elapsed < 1.2
    (result,) = results
    assert result.transient_error is not None
    assert "refused" in result.transient_error
    assert result.attempts > 1  # it did retry while there was time


class _LongestBackoff(random.Random):
    """Backoff without its jitter: each sleep is its longest (backoff_base * 2**retry)."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_no_retry_is_started_with_only_milliseconds_left_before_the_deadline() -> None:
    # The first attempt is refused at once; its backoff (0.1 s) would end 25 ms before
    # the deadline, too little for an attempt (replay.MIN_ATTEMPT): a retry cut to that
    # would fail on the clock, and its "timed out" would hide the refusal. So the run
    # stops after one attempt, saying what the server did.
    config = real(
        unused_port_url(), max_retries=5, backoff_base=0.1, deadline=time.monotonic() + 0.125
    )
    with Replayer(config, rng=_LongestBackoff()) as replay:
        (result,) = list(replay.run(make_events(2)))
    assert result.attempts == 1
    assert result.transient_error is not None and "refused" in result.transient_error


def test_a_stalled_server_with_a_deadline_gives_up_by_the_deadline() -> None:
    with Receiver() as r:
        r.hook = lambda request: Action.stall(5)
        config = real(r.url, timeout=10.0, deadline=time.monotonic() + 0.5)
        started = time.monotonic()
        with Replayer(config) as replay:
            results = list(replay.run(make_events(1)))
        elapsed = time.monotonic() - started
    assert elapsed < 1.5
    assert results[0].transient_error is not None
    assert results[0].transient_error.startswith("timed out")
    assert r.events == {}


def test_the_receiver_shuts_down_promptly_even_while_a_handler_stalls() -> None:
    with Receiver() as r:
        r.script([Action.stall(10)])
        with Replayer(real(r.url, timeout=0.2, max_retries=0)) as replay:
            list(replay.run(make_events(1)))
        leaving = time.monotonic()
    assert time.monotonic() - leaving < 2.0


def run_in_thread(replay: Replayer, events: list[PendingEvent], limit: float) -> Any:
    """Run ``replay`` in a thread; its results, or None if it still runs after ``limit``."""
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(list(replay.run(events))), daemon=True)
    thread.start()
    thread.join(limit)
    return None if thread.is_alive() else out[0]


@pytest.mark.parametrize("body_only", [False, True], ids=["whole-answer", "body"])
def test_the_timeout_bounds_a_request_up_to_the_last_byte_of_a_trickled_answer(
    body_only: bool,
) -> None:
    # Each byte comes well within the timeout, so only a bound on the whole request ends it.
    with Receiver() as r, Replayer(real(r.url, timeout=1.0, max_retries=0)) as replay:
        r.script([Action.trickle(0.2, body_only=body_only)])
        started = time.monotonic()
        results = run_in_thread(replay, make_events(2), limit=6.0)
        elapsed = time.monotonic() - started
        assert results is not None, "the request was not cut off at its timeout"
    assert 0.9 <= elapsed < 2.5, elapsed
    (result,) = results
    assert result.accepted == ()
    assert result.transient_error is not None and result.transient_error.startswith("timed out")


def test_a_trickled_answer_is_retried_and_a_retry_in_time_delivers() -> None:
    with Receiver() as r, Replayer(real(r.url, timeout=0.5, max_retries=1)) as replay:
        r.script([Action.trickle(0.1)])
        results = run_in_thread(replay, make_events(2), limit=6.0)
    assert results is not None
    assert results[0].accepted == ids_of(make_events(2))
    assert results[0].attempts == 2


def test_a_proxy_from_the_environment_is_still_used(monkeypatch: pytest.MonkeyPatch) -> None:
    target = unused_port_url()  # nothing listens there: only the proxy can answer
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    with Receiver() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("http_proxy", proxy.url)
        with Replayer(real(target, max_retries=0)) as replay, pytest.raises(DeliveryError):
            list(replay.run(make_events(1)))  # the receiver is no proxy: it answers 404
        assert [r.path for r in proxy.requests] == [target + "/api/v1/events/batch/"]
