"""The receiver's HTTP routes (SPEC section 11), a Starlette app.

=====================================  ===============================================
``POST /api/v1/events/batch/``         section 5's batches: ``{"results": [...]}``
``GET  /api/v1/events``                events in receive order: ``after``, ``limit``,
                                       ``feature``; ``{"events": [...], "next": SEQ}``
``GET  /api/v1/features``              ``{"features": [{"feature", "events", "last_seq"}]}``
``GET  /api/v1/features/F/board``      section 10's board of F over every clone's events
``GET  /api/v1/conflicts``             lines refused as conflicts: ``after``, ``limit``
``GET  /``                             the boards page (``/static/...`` its script)
``GET  /health``                       200 ``{"status": "ok"}`` (503 when the database
                                       does not answer)
=====================================  ===============================================

Every ``/api/`` route needs ``Authorization: Bearer TOKEN`` when the server has a tokens
file (401 otherwise) and answers for that token's project only. Without a tokens file,
only loopback clients are served (403 for others), all in the project ``default``.
A busy or unreachable database is 503 with ``Retry-After``, never 500.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..board import snapshot
from ..errors import StoreError
from .ingest import (
    DEFAULT_MAX_BODY_BYTES,
    BadRequest,
    BodyReader,
    check_idempotency_key,
    parse_batch,
)
from .storage import DEFAULT_DB_URL, Busy, IdempotencyMismatch, Storage
from .tokens import DEFAULT_PROJECT, NAME_RE, Token, load_tokens, token_digest

__all__ = ["LoopbackOnly", "RETRY_AFTER_SECONDS", "Receiver", "create_app"]

log = logging.getLogger("replaylog.server")

#: What a 503 asks the client to wait, in seconds.
RETRY_AFTER_SECONDS = 1
_MAX_PAGE = 1000
_MAX_INT64 = 2**63 - 1
_DEFAULT_PAGE = 100
_JSON = "application/json"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _busy(exc: Busy) -> Response:
    # The database's own words can name hosts and files, never a token: log them, and
    # give the client only what to do.
    log.warning("database busy: %s", exc)
    return _error(
        503,
        "the database is busy or restarting; retry later",
        {"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def _is_loopback(host: str | None) -> bool:
    """127.0.0.0/8 and ::1, also as an IPv4-mapped IPv6 address (a dual-stack socket)."""
    if host is None:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


class LoopbackOnly:
    """ASGI middleware: refuse every client that is not on this machine (403)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            client = scope.get("client")
            if not _is_loopback(client[0] if client else None):
                response = _error(
                    403,
                    "this server takes requests from this machine only; give it a"
                    " --tokens-file to serve others",
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class Receiver:
    """The routes over one :class:`Storage` and one set of tokens (None: loopback only)."""

    def __init__(
        self,
        storage: Storage,
        tokens: dict[str, Token] | None,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self.storage = storage
        self.tokens = tokens
        self.max_body_bytes = max_body_bytes

    # ------------------------------------------------------------------ auth

    def project(self, request: Request) -> str | Response:
        """The project of the request's token, or the 401 to answer."""
        tokens = self.tokens
        if tokens is None:
            return DEFAULT_PROJECT
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        found = tokens.get(token_digest(token)) if scheme.lower() == "bearer" and token else None
        if found is None:
            return _error(
                401,
                "authentication failed: send `Authorization: Bearer TOKEN` with a token of"
                " this server's tokens file",
                {"WWW-Authenticate": "Bearer"},
            )
        return found.project

    # ------------------------------------------------------------------ ingest

    async def batch(self, request: Request) -> Response:
        project = self.project(request)
        if isinstance(project, Response):
            return project
        try:
            key = check_idempotency_key(request.headers.get("idempotency-key"))
            body = await self._read_body(request)
        except BadRequest as exc:
            return _error(exc.status, exc.message)
        try:
            answer = await run_in_threadpool(self._ingest, project, key, body)
        except BadRequest as exc:
            return _error(exc.status, exc.message)
        except IdempotencyMismatch:
            return _error(
                422,
                "this Idempotency-Key came before with another body: a key names one batch",
            )
        except Busy as exc:
            return _busy(exc)
        return Response(answer, media_type=_JSON)

    async def _read_body(self, request: Request) -> bytes:
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("identity", "gzip", ""):
            raise BadRequest(415, f"Content-Encoding {encoding[:40]!r}: only gzip is taken")
        declared = request.headers.get("content-length")
        if (
            declared is not None
            and declared.isascii()
            and declared.isdigit()
            and int(declared) > self.max_body_bytes
        ):
            raise BadRequest(413, f"the body is over {self.max_body_bytes} bytes")
        reader = BodyReader(gzip=encoding == "gzip", limit=self.max_body_bytes)
        async for chunk in request.stream():
            reader.feed(chunk)
        return reader.finish()

    def _ingest(self, project: str, key: str | None, body: bytes) -> bytes:
        node_id, entries = parse_batch(body)
        body_hash = hashlib.sha256(body).hexdigest() if key is not None else ""
        return self.storage.ingest(project, node_id, entries, key=key, body_hash=body_hash)

    # ------------------------------------------------------------------ reading

    async def events(self, request: Request) -> Response:
        project = self.project(request)
        if isinstance(project, Response):
            return project
        try:
            after = _int_param(request, "after", 0)
            limit = _limit(request)
            feature = request.query_params.get("feature")
            if feature is not None:
                _check_feature(feature)
        except BadRequest as exc:
            return _error(exc.status, exc.message)
        try:
            rows = await run_in_threadpool(
                self.storage.events_page, project, after=after, limit=limit, feature=feature
            )
        except Busy as exc:
            return _busy(exc)
        # The stored lines are JSON already: spliced in, never parsed and dumped again.
        items = ",".join(
            f'{{"seq": {r.seq}, "feature": {json.dumps(r.feature)},'
            f' "node_id": {json.dumps(r.node_id)}, "event": {r.line}}}'
            for r in rows
        )
        following = rows[-1].seq if rows else after
        return Response(f'{{"events": [{items}], "next": {following}}}', media_type=_JSON)

    async def features(self, request: Request) -> Response:
        project = self.project(request)
        if isinstance(project, Response):
            return project
        try:
            rows = await run_in_threadpool(self.storage.features, project)
        except Busy as exc:
            return _busy(exc)
        return JSONResponse(
            {"features": [{"feature": f, "events": n, "last_seq": last} for f, n, last in rows]}
        )

    async def board(self, request: Request) -> Response:
        project = self.project(request)
        if isinstance(project, Response):
            return project
        feature = request.path_params["feature"]
        try:
            _check_feature(feature)
        except BadRequest as exc:
            return _error(exc.status, exc.message)
        try:
            board = await run_in_threadpool(self._board, project, feature)
        except Busy as exc:
            return _busy(exc)
        except (StoreError, ValueError) as exc:
            # Lines section 2 and 10 take but the reducer cannot fold (a delta spec-kitty's
            # own reader refuses, as the CLI's board refuses it), or a value JSON cannot
            # hold that an older receiver stored: this feature's board, not the server.
            return _error(422, f"the board of feature {feature!r} cannot be made: {exc}")
        if board is None:
            return _error(404, f"no event of feature {feature!r} in this project")
        return Response(board, media_type=_JSON)

    def _board(self, project: str, feature: str) -> bytes | None:
        lines = self.storage.feature_lines(project, feature)
        if not lines:
            return None
        # The CLI's reducer, over the feature's lines in receive order.
        made = snapshot([json.loads(line) for line in lines], meta=None)
        return json.dumps(made, allow_nan=False).encode("ascii")

    async def conflicts(self, request: Request) -> Response:
        project = self.project(request)
        if isinstance(project, Response):
            return project
        try:
            after = _int_param(request, "after", 0)
            limit = _limit(request)
        except BadRequest as exc:
            return _error(exc.status, exc.message)
        try:
            rows = await run_in_threadpool(
                self.storage.conflicts_page, project, after=after, limit=limit
            )
        except Busy as exc:
            return _busy(exc)
        # As for events: the stored lines are JSON already, spliced in as they are.
        items = ",".join(
            f'{{"id": {r.id}, "event_id": {json.dumps(r.event_id)},'
            f' "feature": {json.dumps(r.feature)}, "node_id": {json.dumps(r.node_id)},'
            f' "received": {r.line}, "stored": {r.stored if r.stored is not None else "null"}}}'
            for r in rows
        )
        following = rows[-1].id if rows else after
        return Response(f'{{"conflicts": [{items}], "next": {following}}}', media_type=_JSON)

    async def health(self, request: Request) -> Response:
        try:
            await run_in_threadpool(self.storage.ping)
        except Busy as exc:
            return _busy(exc)
        return JSONResponse({"status": "ok"})

    # ------------------------------------------------------------------ the page

    async def page(self, request: Request) -> Response:
        return Response(
            _asset("index.html"), media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS
        )

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        media = _ASSETS.get(name)
        if media is None:
            return _error(404, "no such file")
        return Response(_asset(name), media_type=media, headers=_PAGE_HEADERS)


_ASSETS = {"board.js": "text/javascript; charset=utf-8", "board.css": "text/css; charset=utf-8"}
_PAGE_HEADERS = {
    # The page runs its own script only and shows event data as text, never as markup.
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
_asset_cache: dict[str, bytes] = {}


def _asset(name: str) -> bytes:
    data = _asset_cache.get(name)
    if data is None:
        data = _asset_cache[name] = (
            resources.files("replaylog.server").joinpath("static").joinpath(name).read_bytes()
        )
    return data


def _int_param(request: Request, name: str, default: int) -> int:
    value = request.query_params.get(name)
    if value is None:
        return default
    # ASCII digits only (str.isdigit takes other scripts' digits too), and at most what
    # the database's 64-bit integers hold.
    digits = value.isascii() and value.isdigit() and len(value) <= 19
    if not digits or int(value) > _MAX_INT64:
        raise BadRequest(400, f"'{name}' must be an integer from 0 to {_MAX_INT64}")
    return int(value)


def _limit(request: Request) -> int:
    limit = _int_param(request, "limit", _DEFAULT_PAGE)
    if not 1 <= limit <= _MAX_PAGE:
        raise BadRequest(400, f"'limit' must be from 1 to {_MAX_PAGE}")
    return limit


def _check_feature(feature: str) -> None:
    if feature in (".", "..") or NAME_RE.fullmatch(feature) is None:
        raise BadRequest(400, f"{feature[:140]!r} is not a feature name")


def create_app(
    db: str | Storage = DEFAULT_DB_URL,
    *,
    tokens_file: str | None = None,
    tokens: dict[str, Token] | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    busy_timeout: float = 5.0,
) -> Starlette:
    """The receiver as an ASGI app. ``db``: a database URL (migrated now) or a
    :class:`Storage`; ``tokens_file`` (or ``tokens``, ``{sha256 hex: Token}``): who may
    send, else loopback only. Raises ``UsageError`` for a bad tokens file or URL and
    ``ReceiverError`` for a database it cannot use."""
    if tokens_file is not None:
        tokens = load_tokens(tokens_file)
    if isinstance(db, Storage):
        storage = db
    else:
        storage = Storage(db, busy_timeout=busy_timeout)
    storage.migrate()
    receiver = Receiver(storage, tokens, max_body_bytes=max_body_bytes)
    Handler = Callable[[Request], Awaitable[Response]]
    routes: list[tuple[str, Handler, list[str]]] = [
        ("/api/v1/events/batch/", receiver.batch, ["POST"]),
        ("/api/v1/events", receiver.events, ["GET"]),
        ("/api/v1/features", receiver.features, ["GET"]),
        ("/api/v1/features/{feature}/board", receiver.board, ["GET"]),
        ("/api/v1/conflicts", receiver.conflicts, ["GET"]),
        ("/health", receiver.health, ["GET"]),
        ("/", receiver.page, ["GET"]),
        ("/static/{name}", receiver.static, ["GET"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        storage.close()

    app = Starlette(
        routes=[Route(path, handler, methods=methods) for path, handler, methods in routes],
        lifespan=lifespan,
    )
    app.state.receiver = receiver
    if tokens is None:
        app.add_middleware(LoopbackOnly)
    return app
