"""A small, real HTTP server on 127.0.0.1 that plays the replay endpoint, for tests.

It speaks SPEC.md section 5 from the server side, keeps what it received, and can be
told to misbehave. Everything runs in daemon threads; leaving the ``with`` block shuts
it down (also when a handler is stalled)::

    with Receiver() as r:                  # Receiver(prefix="/prefix") serves under a prefix
        ... replay to r.url ...
        r.events        {event_id: event object}   the first copy of every stored event
        r.deliveries    Counter {event_id: n}      times an id was stored or arrived again
        r.duplicates    int                        deliveries that were repeats
        r.received      Counter {event_id: n}      times an id arrived at all, any answer
        r.conflicts     [event_id]                 same id again with different content
        r.requests      [RecordedRequest]          every request, in arrival order

What it answers (first match wins):

1. the next scripted action:  ``r.script(["500", "429:1", "close", "ok"])``
2. ``r.hook(request)``, if set and it returns an :class:`Action` (or shorthand string)
3. 413 when a batch has more than ``r.max_events`` events or a body (uncompressed)
   over ``r.max_body_bytes``
4. the default: store the events, answer 200 ``{"accepted": [...], "rejected": [...]}``
   (or ``{"results": [...]}`` when ``r.answer_shape == "results"``); ids in
   ``r.reject_ids`` ({id: reason}) are rejected and not stored; ids in ``r.statuses``
   ({id: status}, e.g. "queued") are not stored and answered with that status in the
   results shape (``r.status_errors`` ({id: text}) adds an ``error_message``).

Action shorthands (see :meth:`Action.parse`):

    "ok"          the default answer            "results"  default, in the results shape
    "503"         answer that status, store nothing (a 2xx status stores and answers)
    "429:2"       status with ``Retry-After: 2`` (the part after ":" is sent verbatim)
    "close"       read the request, close the connection without answering, store nothing
    "drop"        store the events, then close without answering (the answer is lost)
    "stall"       wait ``Action.seconds`` (default 3, at most 10), then close; store nothing
    "garbage"     200 with a body that is not JSON; store nothing
    "trickle"     store, then send the whole answer (status line, headers, body) one
                  byte every ``Action.seconds``; ``Action.trickle(s, body_only=True)``
                  sends the status line and headers at once and trickles the body

Requests to other paths get 404, other methods 405, bodies that are not a batch 400.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import json
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = ["Action", "BATCH_PATH", "Receiver", "RecordedRequest", "unused_port_url"]

BATCH_PATH = "/api/v1/events/batch/"
MAX_STALL_SECONDS = 10.0


@dataclass(frozen=True)
class Action:
    """How to answer one request."""

    kind: str = "ok"  # ok | status | close | drop | stall | garbage | trickle | trickle-body
    status: int = 200
    retry_after: str | None = None
    shape: str | None = None  # "accepted" or "results"; None: the receiver's answer_shape
    body: bytes | None = None  # for kind "status": the body to send (default: a short text)
    seconds: float = 3.0  # for kind "stall"; for "trickle", the time between two bytes

    @classmethod
    def parse(cls, spec: Action | str) -> Action:
        """Turn a shorthand string (see the module docstring) into an Action."""
        if isinstance(spec, Action):
            return spec
        text = spec.strip().lower()
        if text in ("ok", "accept"):
            return cls()
        if text == "results":
            return cls(shape="results")
        if text in ("close", "drop", "stall", "garbage"):
            return cls(kind=text)
        if text == "trickle":
            return cls.trickle(1.0)
        code, _, retry_after = spec.strip().partition(":")
        if code.isdigit():
            return cls(kind="status", status=int(code), retry_after=retry_after or None)
        raise ValueError(f"unknown receiver action {spec!r}")

    @classmethod
    def answer(
        cls, status: int, *, retry_after: str | None = None, body: bytes | None = None
    ) -> Action:
        """Answer ``status``, storing nothing; but a 2xx without ``body`` stores and
        answers as usual. A ``body`` is sent as it is, whatever the status."""
        return cls(kind="status", status=status, retry_after=retry_after, body=body)

    @classmethod
    def ok(cls, *, shape: str | None = None) -> Action:
        """The default answer (store, then accepted/rejected or results shape)."""
        return cls(shape=shape)

    @classmethod
    def stall(cls, seconds: float) -> Action:
        """Wait ``seconds`` (at most 10), then close without answering."""
        return cls(kind="stall", seconds=seconds)

    @classmethod
    def trickle(cls, seconds: float, *, body_only: bool = False) -> Action:
        """Store, then answer one byte every ``seconds`` (until the receiver stops)."""
        return cls(kind="trickle-body" if body_only else "trickle", seconds=seconds)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the receiver saw it."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    event_ids: tuple[str, ...]  # empty when the body was not a batch
    wire_bytes: int  # body size as sent (compressed if gzipped)
    json_bytes: int  # body size after gunzip
    gzipped: bool
    at: float  # time.monotonic() on arrival
    action: str = ""  # what the receiver did: "ok", "413", "close", ...
    features: tuple[str, ...] | None = None  # the body's "features", None when absent
    node_id: str | None = None  # the body's "node_id"

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("idempotency-key")


class Receiver:
    """A replay endpoint on 127.0.0.1 with a random port. See the module docstring."""

    def __init__(self, *, prefix: str = "") -> None:
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.events: dict[str, dict[str, Any]] = {}
        self.deliveries: collections.Counter[str] = collections.Counter()
        self.received: collections.Counter[str] = collections.Counter()
        self.duplicates = 0
        self.conflicts: list[str] = []
        self.requests: list[RecordedRequest] = []
        self.hook: Callable[[RecordedRequest], Action | str | None] | None = None
        self.max_events: int | None = None
        self.max_body_bytes: int | None = None
        self.reject_ids: dict[str, str] = {}
        self.statuses: dict[str, str] = {}
        self.status_errors: dict[str, str] = {}
        self.answer_shape = "accepted"
        self._script: collections.deque[Action] = collections.deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle ------------------------------------------------------------

    def start(self) -> Receiver:
        receiver = self

        class Handler(_Handler):
            owner = receiver

        server = _QuietServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes stalled handlers
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "the receiver is not running"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The base URL to give the replayer (includes the prefix, no trailing slash)."""
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    # -- programming it --------------------------------------------------------

    def script(self, actions: Iterable[Action | str]) -> None:
        """Queue actions, one per coming request; then back to the default rules."""
        parsed = [Action.parse(a) for a in actions]
        with self._lock:
            self._script.extend(parsed)

    @property
    def scripted_left(self) -> int:
        with self._lock:
            return len(self._script)

    def _choose(self, request: RecordedRequest, json_bytes: int) -> Action:
        with self._lock:
            if self._script:
                return self._script.popleft()
        if self.hook is not None:
            chosen = self.hook(request)
            if chosen is not None:
                return Action.parse(chosen)
        too_many = self.max_events is not None and len(request.event_ids) > self.max_events
        too_big = self.max_body_bytes is not None and json_bytes > self.max_body_bytes
        if too_many or too_big:
            return Action.answer(413, body=b"batch too large")
        return Action()

    # -- what the handler calls -------------------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)
            self.received.update(request.event_ids)

    def _store(self, events: list[dict[str, Any]]) -> list[tuple[str, str, str | None, bool]]:
        """Store a batch; (event_id, status, reason, from r.statuses) per event, in order."""
        outcome: list[tuple[str, str, str | None, bool]] = []
        with self._lock:
            for event in events:
                event_id = event["event_id"]
                if event_id in self.statuses:
                    error = self.status_errors.get(event_id)
                    outcome.append((event_id, self.statuses[event_id], error, True))
                    continue
                if event_id in self.reject_ids:
                    outcome.append((event_id, "rejected", self.reject_ids[event_id], False))
                    continue
                self.deliveries[event_id] += 1
                if event_id in self.events:
                    self.duplicates += 1
                    if self.events[event_id] != event:
                        self.conflicts.append(event_id)
                    outcome.append((event_id, "duplicate", None, False))
                else:
                    self.events[event_id] = event
                    outcome.append((event_id, "success", None, False))
        return outcome


class _QuietServer(ThreadingHTTPServer):
    """A client that goes away (a replay process exiting with its connection kept
    alive, a client timing out) is normal here: no traceback for it on stderr."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    owner: Receiver
    protocol_version = "HTTP/1.1"  # keep-alive, so a dropped connection is a real case
    # Headers and body go out in separate writes: without TCP_NODELAY the body waits
    # for the client's delayed ACK, about 40 ms an answer.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass  # keep test output clean

    def do_GET(self) -> None:
        self._reply(405, b"method not allowed")

    def do_PUT(self) -> None:
        self._read_body()
        self._reply(405, b"method not allowed")

    def do_POST(self) -> None:
        owner = self.owner
        arrived = time.monotonic()
        wire = self._read_body()
        if wire is None:
            self._reply(411, b"length required")
            return
        headers = {name.lower(): value for name, value in self.headers.items()}
        gzipped = headers.get("content-encoding", "").lower() == "gzip"
        try:
            raw = gzip.decompress(wire) if gzipped else wire
        except (OSError, EOFError):
            self._reply(400, b"bad gzip body")
            return
        events, features, node_id = _parse_batch(raw)
        request = RecordedRequest(
            method="POST",
            path=self.path,
            headers=headers,
            event_ids=tuple(e["event_id"] for e in events or ()),
            wire_bytes=len(wire),
            json_bytes=len(raw),
            gzipped=gzipped,
            at=arrived,
            features=features,
            node_id=node_id,
        )
        if self.path != owner.prefix + BATCH_PATH:
            owner._record(dataclasses.replace(request, action="404"))
            self._reply(404, b"not found")
            return
        if events is None:
            owner._record(dataclasses.replace(request, action="400"))
            self._reply(400, b'body is not {"events": [...]}')
            return

        action = owner._choose(request, len(raw))
        label = str(action.status) if action.kind == "status" else action.kind
        if action.shape == "results" and action.kind == "ok":
            label = "results"
        owner._record(dataclasses.replace(request, action=label))

        if action.kind == "close":
            self.close_connection = True
        elif action.kind == "stall":
            owner._stopping.wait(min(action.seconds, MAX_STALL_SECONDS))
            self.close_connection = True
        elif action.kind == "drop":
            owner._store(events)
            self.close_connection = True
        elif action.kind in ("trickle", "trickle-body"):
            outcome = owner._store(events)
            body = _answer(outcome, action.shape or owner.answer_shape)
            self._trickle(action, body)
        elif action.kind == "garbage":
            self._reply(200, b"<html>this is not the answer you are looking for</html>")
        elif action.kind == "status" and (
            action.body is not None or not 200 <= action.status < 300
        ):
            body = action.body if action.body is not None else f"HTTP {action.status}".encode()
            extra = {"Retry-After": action.retry_after} if action.retry_after else {}
            self._reply(action.status, body, extra)
        else:
            outcome = owner._store(events)
            shape = action.shape or owner.answer_shape
            self._reply(action.status, _answer(outcome, shape), content_type="application/json")

    def _trickle(self, action: Action, body: bytes) -> None:
        head = (
            f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.close_connection = True
        slow = body
        try:
            if action.kind == "trickle-body":
                self.wfile.write(head)
            else:
                slow = head + body
            for i in range(len(slow)):
                self.wfile.write(slow[i : i + 1])
                if self.owner._stopping.wait(action.seconds):
                    return
        except OSError:
            return  # the client gave up: that is what a trickle tests

    def _read_body(self) -> bytes | None:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            return None
        return self.rfile.read(int(length))

    def _reply(
        self,
        status: int,
        body: bytes,
        extra: dict[str, str] | None = None,
        *,
        content_type: str = "text/plain",
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            self.close_connection = True  # the client went away; nothing to do


def _parse_batch(
    raw: bytes,
) -> tuple[list[dict[str, Any]] | None, tuple[str, ...] | None, str | None]:
    """The events (None when the body is not a batch), its features and node id."""
    try:
        data = json.loads(raw)
    except ValueError:
        return None, None, None
    if not isinstance(data, dict) or not isinstance(data.get("events"), list):
        return None, None, None
    events: list[dict[str, Any]] = data["events"]
    for event in events:
        if not isinstance(event, dict) or not isinstance(event.get("event_id"), str):
            return None, None, None
    features = data.get("features")
    node_id = data.get("node_id")
    return (
        events,
        tuple(features) if isinstance(features, list) else None,
        node_id if isinstance(node_id, str) else None,
    )


def _answer(outcome: list[tuple[str, str, str | None, bool]], shape: str) -> bytes:
    if shape == "results":
        results: list[dict[str, Any]] = []
        for event_id, status, reason, key in outcome:
            item: dict[str, Any] = {"event_id": event_id, "status": status}
            if reason is not None:
                # r.statuses' texts go as "error_message", rejections' as "error".
                item["error" if status == "rejected" and not key else "error_message"] = reason
            results.append(item)
        return json.dumps({"results": results}).encode()
    accepted = [e for e, status, _, _ in outcome if status in ("success", "duplicate")]
    rejected = [
        {"event_id": event_id, "reason": reason}
        for event_id, status, reason, _ in outcome
        if status == "rejected"
    ]
    return json.dumps({"accepted": accepted, "rejected": rejected}).encode()


def unused_port_url() -> str:
    """A loopback URL where (almost certainly) nothing listens: connections are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
