"""The HTTP transport of replay (SPEC.md section 5): batches, httpx and the retry policy.

This module touches no file and no database. :class:`Replayer` takes events that are
already in replay order and yields one :class:`BatchResult` per batch that got a final
answer; the store applies each result to the index before it asks for the next one.

How an answer is handled::

    2xx, {"accepted", "rejected"} or {"results"}   -> BatchResult (accepted / rejected / pending)
    2xx with any other body                        -> transient (below)
    network error, timeout, 408, 425, 429, 5xx     -> retried; when spent: BatchResult with
                                                      transient_error, then the run stops
    401, 403                                       -> AuthenticationError
    412                                            -> DeliveryError: protocol mismatch
    404, 3xx, other statuses                       -> DeliveryError naming the URL
    413                                            -> batch split in halves; a single event
                                                      still refused is rejected
    400 with "details" naming events               -> those rejected (one BatchResult), the
                                                      rest of the batch sent again without them
    any other 4xx                                  -> every event of the batch rejected

``timeout`` bounds a whole request, from connect to the last byte of the answer: the
default transport gives every socket operation only the time left before the request's
deadline, so a server that trickles its answer is cut off like one that stalls.

The token is only ever put in the ``Authorization`` header: it is kept out of reprs,
exception messages and results.
"""

from __future__ import annotations

import contextlib
import email.utils
import gzip
import hashlib
import ipaddress
import json
import math
import random
import re
import ssl
import time
import urllib.request
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import httpcore
import httpx

from ._version import __version__
from .errors import AuthenticationError, DeliveryError, UsageError
from .lines.canonical import MAX_NAME_CHARS

__all__ = [
    "BATCH_PATH",
    "BatchResult",
    "PendingEvent",
    "ReplayConfig",
    "Replayer",
    "batch_body",
    "endpoint_url",
    "idempotency_key",
]

BATCH_PATH = "/api/v1/events/batch/"
MAX_BATCH_SIZE = 1000
GZIP_THRESHOLD = 1024  # bodies strictly larger than this are gzipped
RETRY_AFTER_CAP = 60.0
#: With a deadline, a retry is made only if it would have at least this long (or the
#: whole timeout, if shorter) before the deadline once its backoff is slept.
MIN_ATTEMPT = 0.05
RETRYABLE_STATUSES = frozenset({408, 425, 429})
MAX_ANSWER_BYTES = 8 * 1024 * 1024  # a 2xx answer bigger than this is not a valid answer
SNIPPET_CHARS = 200
MAX_REASON_CHARS = 1000

_BODY_HEAD = b'{"events": ['
_BODY_FEATURES = b'], "features": ['
_BODY_NODE = b'], "node_id": '
_BODY_SEP = b", "
_BODY_TAIL = b"]}"
_ACCEPTED_STATUSES = frozenset({"success", "accepted", "warning", "duplicate"})
_REJECTED_STATUS = "rejected"
_WRITE_CHUNK = 16 * 1024  # a write is cut in pieces so that each piece gets the time left
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class ReplayConfig:
    """Where and how to replay. Invalid values raise :class:`UsageError` at construction.

    ``timeout`` bounds each request from connect to the last byte of the answer.
    ``deadline`` is a ``time.monotonic()`` value after which nothing more is attempted
    (offline emit uses it): each request's timeout is ``min(timeout, time left)``, no
    sleep goes past it, and no retry starts with less than ``min(timeout, MIN_ATTEMPT)``
    left (a retry cut shorter would fail on the clock, not on the server). ``node_id``
    is the sender's, sent in every batch body.
    """

    url: str
    token: str | None = field(default=None, repr=False)
    batch_size: int = 100
    max_retries: int = 3
    backoff_base: float = 1.0
    timeout: float = 10.0
    allow_insecure_http: bool = False
    max_batch_bytes: int = 256 * 1024
    deadline: float | None = None
    node_id: str | None = None

    def __post_init__(self) -> None:
        _validate_url(self.url, allow_insecure_http=self.allow_insecure_http)
        if self.token == "":
            raise UsageError("the token is empty; set REPLAYLOG_TOKEN to the token, or unset it")
        if self.token is not None and not _is_header_safe(self.token):
            # Never echo the token: say what is wrong with it, not what it is.
            raise UsageError(
                "the token contains characters that cannot go in an HTTP header "
                "(only printable ASCII without spaces is allowed); check REPLAYLOG_TOKEN"
            )
        if not is_int(self.batch_size) or not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise UsageError(
                f"batch size must be between 1 and {MAX_BATCH_SIZE}, got {self.batch_size!r}"
            )
        if not is_int(self.max_retries) or self.max_retries < 0:
            raise UsageError(f"max retries must be 0 or more, got {self.max_retries!r}")
        if not is_number(self.backoff_base) or not self.backoff_base >= 0:
            raise UsageError(f"backoff base must be 0 or more seconds, got {self.backoff_base!r}")
        if not is_number(self.timeout) or not self.timeout > 0:
            raise UsageError(f"timeout must be more than 0 seconds, got {self.timeout!r}")
        if not is_int(self.max_batch_bytes) or self.max_batch_bytes < 1:
            raise UsageError(f"max batch bytes must be at least 1, got {self.max_batch_bytes!r}")
        if self.deadline is not None and not (
            is_number(self.deadline) and math.isfinite(self.deadline)
        ):
            raise UsageError(
                f"the deadline must be a time.monotonic() value, got {self.deadline!r}"
            )
        if self.node_id is not None and (
            not isinstance(self.node_id, str)
            or not 1 <= len(self.node_id) <= MAX_NAME_CHARS
            or not self.node_id.isprintable()  # a receiver stores it as text (SPEC 11)
        ):
            raise UsageError(
                f"the node id must be printable text of 1 to {MAX_NAME_CHARS} characters,"
                f" got {self.node_id!r}; check REPLAYLOG_NODE_ID"
            )

    def __repr__(self) -> str:
        token = "None" if self.token is None else "'***'"
        return (
            f"ReplayConfig(url={self.url!r}, token={token}, batch_size={self.batch_size!r}, "
            f"max_retries={self.max_retries!r}, backoff_base={self.backoff_base!r}, "
            f"timeout={self.timeout!r}, allow_insecure_http={self.allow_insecure_http!r}, "
            f"max_batch_bytes={self.max_batch_bytes!r}, deadline={self.deadline!r}, "
            f"node_id={self.node_id!r})"
        )

    __str__ = __repr__

    @property
    def endpoint(self) -> str:
        """The URL batches are POSTed to."""
        return endpoint_url(self.url)


class PendingEvent(NamedTuple):
    """One event to send: its id, its log line without the trailing newline, its feature.

    A named tuple: one is made for every event replayed, and a tuple is made faster
    than a frozen dataclass."""

    event_id: str
    line: bytes
    feature: str


@dataclass(frozen=True)
class BatchResult:
    """The final answer for one batch (or one half of a batch split after a 413).

    ``accepted`` ids become delivered, ``rejected`` ones failed with the reason as
    last error. With ``transient_error`` set every id stays pending (retry count + 1)
    and it is the last result of the run. Ids in none of these stay pending untouched.
    ``attempts`` counts HTTP requests; the requests that got a 413 are counted in the
    first result that follows them, so the sum over a run is every request made.
    """

    event_ids: tuple[str, ...]
    accepted: tuple[str, ...]
    rejected: dict[str, str]
    transient_error: str | None
    attempts: int


def endpoint_url(url: str) -> str:
    """``<url>/api/v1/events/batch/``, keeping a path prefix and avoiding ``//``."""
    return url.rstrip("/") + BATCH_PATH


def idempotency_key(event_ids: Iterable[str]) -> str:
    """Hex sha256 of the event ids joined by newlines, in batch order."""
    return hashlib.sha256("\n".join(event_ids).encode("utf-8")).hexdigest()


def batch_body(events: Iterable[PendingEvent], node_id: str | None = None) -> bytes:
    """The JSON body of a batch: ``{"events", "features", "node_id"}``.

    The events are the raw log lines, never re-serialized; ``features`` gives the feature
    of each, in the same order. Without a ``node_id`` that key is left out.
    """
    batch = list(events)
    quoted = {feature: _json_string(feature) for feature in {event.feature for event in batch}}
    return (
        _BODY_HEAD
        + _BODY_SEP.join([event.line for event in batch])
        + _BODY_FEATURES
        + _BODY_SEP.join([quoted[event.feature] for event in batch])
        + _body_end(node_id)
    )


def _body_end(node_id: str | None) -> bytes:
    return _BODY_NODE + _json_string(node_id) + b"}" if node_id is not None else _BODY_TAIL


def _json_string(text: str) -> bytes:
    return json.dumps(text).encode("ascii")


class Replayer:
    """Sends events in batches to one server; one HTTP client per replayer.

    Use as a context manager, or call :meth:`close`. ``transport`` replaces the network
    (``httpx.MockTransport`` in tests); ``sleep`` and ``rng`` make the backoff testable.
    """

    def __init__(
        self,
        config: ReplayConfig,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self._endpoint = config.endpoint
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self._network: _DeadlineBackend | None = None
        if transport is None and not _proxied(config.endpoint):
            self._network = _DeadlineBackend()
            transport = _DeadlineTransport(self._network, https=not _is_plain_http(config.url))
        # With a proxy from the environment httpx's own transport is used, as before: each
        # of its reads and writes is bounded by the timeout, and reading the body by the
        # request's deadline, but not the time the proxy takes to send the headers.
        self._client = httpx.Client(
            transport=transport,
            timeout=config.timeout,
            follow_redirects=False,  # a redirect could carry the token elsewhere; we stop instead
            headers={"User-Agent": f"replaylog/{__version__}"},
            # Loading the system's CA certificates takes 50-250 ms, a large part of an
            # `append --sync` budget; a plain-http URL never uses them.
            verify=not _is_plain_http(config.url),
        )
        self._closed = False

    def __repr__(self) -> str:
        return f"Replayer(url={self.config.url!r}, closed={self._closed!r})"

    __str__ = __repr__

    def __enter__(self) -> Replayer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP client and its connections. Safe to call twice."""
        if not self._closed:
            self._closed = True
            self._client.close()

    def run(self, events: Iterable[PendingEvent]) -> Iterator[BatchResult]:
        """Send ``events`` (already in replay order) batch by batch.

        Validation happens now; the returned iterator sends a batch only when the next
        result is asked for. It raises :class:`AuthenticationError` on 401/403 and
        :class:`DeliveryError` on 404 and other answers that retrying will not fix.
        """
        if self._closed:
            raise UsageError("this Replayer is closed; make a new one")
        _validate_url(self.config.url, allow_insecure_http=self.config.allow_insecure_http)
        return self._run(events)

    # -- the run ---------------------------------------------------------------

    def _run(self, events: Iterable[PendingEvent]) -> Iterator[BatchResult]:
        config = self.config
        for batch in _chunk(events, config.batch_size, config.max_batch_bytes, config.node_id):
            stopped = yield from self._send_batch(batch, carried_attempts=0)
            if stopped:
                return

    def _request(self, batch: list[PendingEvent]) -> tuple[bytes, dict[str, str]]:
        """The body and headers of one batch, the same on every retry of it."""
        ids = (event.event_id for event in batch)
        headers = {"Content-Type": "application/json", "Idempotency-Key": idempotency_key(ids)}
        if self.config.token is not None:
            headers["Authorization"] = f"Bearer {self.config.token}"
        body = batch_body(batch, self.config.node_id)
        if len(body) > GZIP_THRESHOLD:
            body = gzip.compress(body, compresslevel=6, mtime=0)
            headers["Content-Encoding"] = "gzip"
        return body, headers

    def _send_batch(
        self, batch: list[PendingEvent], *, carried_attempts: int
    ) -> Generator[BatchResult, None, bool]:
        """Send one batch until it has a final answer; yield its result(s).

        Returns True when the run must stop (transient failure or deadline passed).
        """
        ids = tuple(event.event_id for event in batch)
        body, headers = self._request(batch)
        attempts = 0
        retries = 0
        last_failure = ""
        while True:
            request_timeout = self._time_left(self.config.timeout)
            if request_timeout is None:
                if attempts == 0:
                    # Nothing was tried for this batch: it is not an answer, leave it alone.
                    return True
                yield self._transient(ids, last_failure, attempts, carried_attempts)
                return True
            attempts += 1
            retry_after: float | None = None
            outcome = self._attempt(body, headers, request_timeout)
            if isinstance(outcome, _Answer):
                status = outcome.status
                if 200 <= status < 300:
                    parsed = _parse_answer(outcome.content, ids)
                    if parsed is not None:
                        accepted, reasons = parsed
                        rejected = {i: self._reason(r) for i, r in reasons.items()}
                        yield BatchResult(
                            ids, accepted, rejected, None, attempts + carried_attempts
                        )
                        return False
                    last_failure = f"HTTP {status} with an answer that is not a batch result"
                elif status in (401, 403):
                    raise AuthenticationError(self._auth_message(status))
                elif status == 404:
                    raise DeliveryError(
                        f"HTTP 404 Not Found from {self._endpoint}: the server has no replay "
                        "endpoint there; check the URL (--url or REPLAYLOG_URL)"
                    )
                elif status == 412:
                    detail = self._snippet(outcome.content)
                    raise DeliveryError(
                        f"HTTP 412 from {self._endpoint}: protocol mismatch, the server does "
                        f"not take batches from replaylog {__version__}"
                        + (f" ({detail})" if detail else "")
                        + "; nothing was changed: upgrade replaylog or the server"
                    )
                elif status == 413:
                    return (
                        yield from self._split(batch, ids, outcome, attempts + carried_attempts)
                    )
                elif status in RETRYABLE_STATUSES or 500 <= status < 600:
                    last_failure = f"HTTP {status}"
                    retry_after = _parse_retry_after(outcome.retry_after)
                elif status == 400 and (details := _parse_details(outcome.content, ids)):
                    # The server named the events it refuses: only they fail, and the
                    # others go again as a batch of their own (its own key).
                    rejected = {i: self._reason(r) for i, r in details.items()}
                    yield BatchResult(
                        tuple(rejected), (), rejected, None, attempts + carried_attempts
                    )
                    rest = [event for event in batch if event.event_id not in rejected]
                    if not rest:
                        return False
                    batch, ids = rest, tuple(event.event_id for event in rest)
                    body, headers = self._request(batch)
                    attempts = retries = carried_attempts = 0
                    continue
                elif 400 <= status < 500:
                    reason = f"HTTP {status}: {self._snippet(outcome.content)}"
                    rejected = dict.fromkeys(ids, reason)
                    yield BatchResult(ids, (), rejected, None, attempts + carried_attempts)
                    return False
                elif 300 <= status < 400:
                    # The server wrote the Location: it may quote the token, like a body.
                    location = self._clean(outcome.location or "no Location header")
                    raise DeliveryError(
                        f"HTTP {status} redirect from {self._endpoint} ({location}); replay does "
                        "not follow redirects: set the URL to the final address"
                    )
                else:
                    snippet = self._snippet(outcome.content)
                    raise DeliveryError(
                        f"unexpected HTTP {status} from {self._endpoint}: {snippet}"
                    )
            else:
                last_failure = outcome

            if retries >= self.config.max_retries:
                yield self._transient(ids, last_failure, attempts, carried_attempts)
                return True
            if retry_after is not None:
                delay = retry_after
            else:
                delay = self.config.backoff_base * 2**retries * self._rng.uniform(0.5, 1.0)
            if (
                self.config.deadline is not None
                and time.monotonic() + delay + min(self.config.timeout, MIN_ATTEMPT)
                >= self.config.deadline
            ):
                # No time left for a retry after the sleep: one cut to a few milliseconds
                # would fail on the clock, not on the server, and its "timed out" would
                # replace what the server really did (refused, answered 503, ...).
                yield self._transient(ids, last_failure, attempts, carried_attempts)
                return True
            if delay > 0:
                self._sleep(delay)
            retries += 1

    def _split(
        self,
        batch: list[PendingEvent],
        ids: tuple[str, ...],
        answer: _Answer,
        attempts: int,
    ) -> Generator[BatchResult, None, bool]:
        if len(batch) == 1:
            detail = self._snippet(answer.content)
            reason = "HTTP 413: event too large for the server" + (f": {detail}" if detail else "")
            yield BatchResult(ids, (), {ids[0]: reason}, None, attempts)
            return False
        middle = (len(batch) + 1) // 2
        stopped = yield from self._send_batch(batch[:middle], carried_attempts=attempts)
        if stopped:
            return True
        return (yield from self._send_batch(batch[middle:], carried_attempts=0))

    def _attempt(self, body: bytes, headers: dict[str, str], timeout: float) -> _Answer | str:
        """One POST, ended when ``timeout`` seconds have passed since it started.

        Returns the answer, or a one-line description of a retryable failure.
        """
        deadline = time.monotonic() + timeout
        if self._network is not None:
            self._network.start(deadline, timeout)
        try:
            with self._client.stream(
                "POST", self._endpoint, content=body, headers=headers, timeout=timeout
            ) as response:
                status = response.status_code
                if status in RETRYABLE_STATUSES or 500 <= status < 600:
                    content = b""  # retried: the body is not needed
                else:
                    content, complete = self._read_capped(response, deadline, timeout)
                    if not complete:
                        return f"HTTP {status} with an answer larger than {MAX_ANSWER_BYTES} bytes"
                return _Answer(
                    status,
                    content,
                    response.headers.get("Retry-After"),
                    response.headers.get("Location"),
                )
        except httpx.TimeoutException as exc:
            return _describe_network_error(exc)
        except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError) as exc:
            return _describe_network_error(exc)
        except httpx.DecodingError:
            return "answer could not be decoded"
        except httpx.HTTPError as exc:
            # LocalProtocolError, UnsupportedProtocol, ...: retrying would not help.
            raise DeliveryError(
                f"could not send to {self._endpoint}: {type(exc).__name__}: {self._clean(exc)}"
            ) from exc
        finally:
            if self._network is not None:
                self._network.stop()

    def _read_capped(
        self, response: httpx.Response, deadline: float, timeout: float
    ) -> tuple[bytes, bool]:
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                return b"", False
            if time.monotonic() > deadline:
                raise httpx.ReadTimeout(_over_time(timeout))
        return b"".join(chunks), True

    def _time_left(self, timeout: float) -> float | None:
        """The timeout for the next request, or None when the deadline has passed."""
        if self.config.deadline is None:
            return timeout
        left = self.config.deadline - time.monotonic()
        if left <= 0:
            return None
        return min(timeout, left)

    def _transient(
        self, ids: tuple[str, ...], failure: str, attempts: int, carried_attempts: int
    ) -> BatchResult:
        plural = "attempt" if attempts == 1 else "attempts"
        message = self._clean(f"{failure} after {attempts} {plural}")
        return BatchResult(ids, (), {}, message, attempts + carried_attempts)

    def _auth_message(self, status: int) -> str:
        if self.config.token is None:
            hint = "no token is set; put one in REPLAYLOG_TOKEN (or the variable of --token-env)"
        else:
            hint = "check the token in REPLAYLOG_TOKEN (or the variable of --token-env)"
        return f"authentication failed: HTTP {status} from {self._endpoint}; {hint}"

    def _reason(self, reason: str) -> str:
        return self._clean(reason)[:MAX_REASON_CHARS]

    def _snippet(self, content: bytes) -> str:
        """The first characters of an answer body, on one line, token masked."""
        return self._clean(content.decode("utf-8", errors="replace"))[:SNIPPET_CHARS]

    def _clean(self, text: object) -> str:
        """One line of text, with the token (should it ever appear) masked."""
        line = _WHITESPACE.sub(" ", str(text)).strip()
        token = self.config.token
        if token:
            line = line.replace(token, "***")
        return line


@dataclass(frozen=True)
class _Answer:
    status: int
    content: bytes
    retry_after: str | None
    location: str | None


def _chunk(
    events: Iterable[PendingEvent], batch_size: int, max_bytes: int, node_id: str | None
) -> Iterator[list[PendingEvent]]:
    """Group events lazily: at most ``batch_size`` events and ``max_bytes`` of JSON body.

    A single event whose body alone exceeds ``max_bytes`` goes in a batch of its own.
    """
    empty = len(_BODY_HEAD) + len(_BODY_FEATURES) + len(_body_end(node_id))
    separators = 2 * len(_BODY_SEP)  # one among the events, one among the features
    feature_sizes: dict[str, int] = {}
    batch: list[PendingEvent] = []
    size = empty
    for event in events:
        own = feature_sizes.get(event.feature)
        if own is None:
            own = feature_sizes[event.feature] = len(_json_string(event.feature))
        own += len(event.line)
        added = own + (separators if batch else 0)
        if batch and (len(batch) >= batch_size or size + added > max_bytes):
            yield batch
            batch = []
            size = empty
            added = own
        batch.append(event)
        size += added
    if batch:
        yield batch


def _parse_answer(
    content: bytes, ids: tuple[str, ...]
) -> tuple[tuple[str, ...], dict[str, str]] | None:
    """Accepted ids and rejected reasons (batch order), or None if the body is neither shape.

    Ids that are not in the batch are ignored. An id both accepted and rejected counts
    as accepted: the server has it.
    """
    try:
        data = json.loads(content)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    accepted: set[str] = set()
    rejected: dict[str, str] = {}
    if "results" in data:
        results = data["results"]
        if not isinstance(results, list):
            return None
        for item in results:
            if not isinstance(item, dict):
                return None
            event_id, status = item.get("event_id"), item.get("status")
            if not isinstance(event_id, str) or not isinstance(status, str):
                return None
            if status in _ACCEPTED_STATUSES:
                accepted.add(event_id)
            elif status == _REJECTED_STATUS:
                rejected.setdefault(event_id, _item_reason(item, ("error", "error_message")))
            # "queued", "pending" or a status not named in SPEC section 5: the event
            # stays pending, neither accepted nor rejected.
    elif "accepted" in data or "rejected" in data:
        accepted_list = data.get("accepted", [])
        rejected_list = data.get("rejected", [])
        if not isinstance(accepted_list, list) or not isinstance(rejected_list, list):
            return None
        for event_id in accepted_list:
            if not isinstance(event_id, str):
                return None
            accepted.add(event_id)
        for item in rejected_list:
            if isinstance(item, str):
                rejected.setdefault(item, "rejected by the server")
            elif isinstance(item, dict) and isinstance(item.get("event_id"), str):
                rejected.setdefault(item["event_id"], _item_reason(item, ("reason",)))
            else:
                return None
    else:
        return None
    accepted_ids = tuple(dict.fromkeys(i for i in ids if i in accepted))
    rejected_ids = {
        i: rejected[i] for i in dict.fromkeys(ids) if i in rejected and i not in accepted
    }
    return accepted_ids, rejected_ids


def _parse_details(content: bytes, ids: tuple[str, ...]) -> dict[str, str]:
    """The events a 400 answer names in ``details``, with their reasons, in batch order.

    ``details`` is a list (or a JSON string holding one) of ``{"event_id", "error" |
    "reason"}``. Entries that name no event of the batch are ignored; an empty result
    means the answer has no usable details.
    """
    try:
        data = json.loads(content)
        details = data.get("details") if isinstance(data, dict) else None
        if isinstance(details, str):
            details = json.loads(details)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(details, list):
        return {}
    named: dict[str, str] = {}
    for item in details:
        if isinstance(item, dict) and isinstance(item.get("event_id"), str):
            reason = _item_reason(item, ("error", "reason", "error_message"), "HTTP 400")
            named.setdefault(item["event_id"], reason)
    return {i: named[i] for i in dict.fromkeys(ids) if i in named}


def _item_reason(
    item: dict[str, Any], keys: tuple[str, ...], default: str = "rejected by the server"
) -> str:
    """The first of ``keys`` that ``item`` has (not null), as text."""
    for key in keys:
        value = item.get(key)
        if value is not None:
            return _reason(value)
    return default


def _reason(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or HTTP date), capped at 60."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value), RETRY_AFTER_CAP)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    seconds = (when - datetime.now(timezone.utc)).total_seconds()
    return min(max(seconds, 0.0), RETRY_AFTER_CAP)


def _describe_network_error(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.ConnectTimeout):
        kind = "connect timed out"
    elif isinstance(exc, httpx.TimeoutException):
        kind = "timed out"
    elif isinstance(exc, httpx.ConnectError):
        kind = "connection refused" if "refused" in str(exc).lower() else "could not connect"
    elif isinstance(exc, httpx.RemoteProtocolError):
        kind = "connection closed without a complete answer"
    elif isinstance(exc, httpx.ProxyError):
        kind = "proxy error"
    else:
        kind = "connection error"
    detail = _WHITESPACE.sub(" ", str(exc)).strip()[:SNIPPET_CHARS]
    return f"{kind} ({detail})" if detail and detail.lower() != kind else kind


def _over_time(timeout: float) -> str:
    return f"no complete answer within the timeout of {timeout:g} s"


def _is_plain_http(url: str) -> bool:
    return url.lower().startswith("http://")


def _proxied(endpoint: str) -> bool:
    """Whether the environment names a proxy for ``endpoint`` (httpx then uses it)."""
    proxies = urllib.request.getproxies()
    parts = urlsplit(endpoint)
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(parts.hostname or "")


# -- the request deadline ----------------------------------------------------------
#
# httpx's timeouts apply to each socket operation: a server that sends one byte just
# before each read times out never trips them. The default transport is httpx's own
# (httpcore's connection pool) over a network backend that gives every connect, TLS
# handshake, read and write only the time left before the request's deadline.

_HTTPCORE_ERRORS: tuple[tuple[type[Exception], type[httpx.HTTPError]], ...] = (
    # Most specific first: the first match is the one raised.
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextlib.contextmanager
def _httpx_errors() -> Iterator[None]:
    """httpcore's exceptions as the httpx ones the replayer handles."""
    try:
        yield
    except Exception as exc:
        for theirs, ours in _HTTPCORE_ERRORS:
            if isinstance(exc, theirs):
                raise ours(str(exc)) from exc
        raise


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's socket backend, each operation cut to the time left (see above)."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()
        self._deadline: float | None = None
        self._timeout = 0.0

    def start(self, deadline: float, timeout: float) -> None:
        """Bound the request that starts now: nothing of it goes past ``deadline``."""
        self._deadline, self._timeout = deadline, timeout

    def stop(self) -> None:
        self._deadline = None

    def time_left(
        self, timeout: float | None, error: type[httpcore.TimeoutException]
    ) -> float | None:
        """``timeout`` cut to the time left; raises ``error`` when none is left."""
        if self._deadline is None:
            return timeout
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise error(_over_time(self._timeout))
        return left if timeout is None else min(timeout, left)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        left = self.time_left(timeout, httpcore.ConnectTimeout)
        stream = self._inner.connect_tcp(host, port, left, local_address, socket_options)
        return _DeadlineStream(stream, self)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        left = self.time_left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_unix_socket(path, left, socket_options), self)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, backend: _DeadlineBackend) -> None:
        self._inner = inner
        self._backend = backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        left = self._backend.time_left(timeout, httpcore.ReadTimeout)
        return self._inner.read(max_bytes, left)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # One piece at a time, so that a server that reads slowly is cut off too.
        for start in range(0, len(buffer), _WRITE_CHUNK):
            left = self._backend.time_left(timeout, httpcore.WriteTimeout)
            self._inner.write(buffer[start : start + _WRITE_CHUNK], left)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        left = self._backend.time_left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(
            self._inner.start_tls(ssl_context, server_hostname, left), self._backend
        )

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineTransport(httpx.BaseTransport):
    """httpx's HTTP/1.1 transport over :class:`_DeadlineBackend`."""

    def __init__(self, backend: _DeadlineBackend, *, https: bool) -> None:
        self._pool = httpcore.ConnectionPool(
            # Only https needs the CA certificates (see Replayer); httpx finds them.
            ssl_context=httpx.create_ssl_context() if https else None,
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=backend,
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _httpx_errors():
            answer = self._pool.handle_request(core_request)
        assert isinstance(answer.stream, Iterable)
        return httpx.Response(
            status_code=answer.status,
            headers=answer.headers,
            stream=_AnswerStream(answer.stream),
            extensions=answer.extensions,
        )

    def close(self) -> None:
        self._pool.close()


class _AnswerStream(httpx.SyncByteStream):
    def __init__(self, inner: Iterable[bytes]) -> None:
        self._inner = inner

    def __iter__(self) -> Iterator[bytes]:
        with _httpx_errors():
            yield from self._inner

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()


def _is_header_safe(value: str) -> bool:
    return value != "" and all(33 <= ord(ch) <= 126 for ch in value)


def _is_loopback(host: str) -> bool:
    host = host.lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def is_int(value: object) -> bool:
    """An integer, not a bool (a setting of the API, checked as the option would be)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """An integer or a float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _validate_url(url: str, *, allow_insecure_http: bool) -> None:
    """Refuse what cannot be a replay base URL; the message says what to give instead."""
    if url is not None and not isinstance(url, str):
        raise UsageError(
            f"invalid replay URL {url!r}: it must be a string, such as https://events.example.com"
        )
    if not url or not url.strip():
        raise UsageError("no replay URL given: pass --url or set REPLAYLOG_URL")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise UsageError(
            f"invalid replay URL {url!r}: it contains white space or control characters"
        )
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise UsageError(f"invalid replay URL {url!r}: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise UsageError(
            f"invalid replay URL {url!r}: the scheme must be http or https, "
            "e.g. https://events.example.com"
        )
    if not host:
        raise UsageError(f"invalid replay URL {url!r}: it has no host")
    if parts.username is not None or parts.password is not None:
        # Such a URL would be printed in errors; credentials belong in the token.
        raise UsageError(
            "the replay URL must not contain a user name or password; "
            "put the token in REPLAYLOG_TOKEN instead"
        )
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise UsageError(
            f"invalid replay URL {url!r}: it must not have a query or fragment; "
            f"give the base URL, {BATCH_PATH} is added to it"
        )
    try:
        httpx.URL(endpoint_url(url))
    except httpx.InvalidURL as exc:
        raise UsageError(f"invalid replay URL {url!r}: {exc}") from exc
    if parts.scheme == "http" and not allow_insecure_http and not _is_loopback(host):
        raise UsageError(
            f"refusing to send events over plain http:// to {host}: use https://, "
            "or pass --allow-insecure-http (allow_insecure_http=True) if you accept that"
        )
