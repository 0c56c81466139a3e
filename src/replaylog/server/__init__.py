"""``replaylog serve``: the receiver of SPEC section 11.

It takes section 5's batches from every clone of a project, keeps each event once per
project in SQLite or PostgreSQL, and gives them back in receive order, with the board of
each feature and a page that shows them. Modules:

- :mod:`.app`: the Starlette routes and ``create_app``;
- :mod:`.ingest`: a batch's body (gzip, caps) and its lines, checked;
- :mod:`.storage`: the tables and every SQL statement, SQLite and PostgreSQL;
- :mod:`.tokens`: the tokens file and projects;
- ``static/``: the boards page; ``migrations/``: the schema's Alembic revisions.

Importing this package pulls in Starlette and SQLAlchemy; the CLI imports it only for
``serve``.
"""

from __future__ import annotations

import logging
import socket

from ..errors import ReceiverError
from .app import Receiver, create_app
from .storage import DEFAULT_DB_URL, Storage

__all__ = ["DEFAULT_DB_URL", "Receiver", "Storage", "create_app", "serve"]


def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    db: str = DEFAULT_DB_URL,
    tokens_file: str | None = None,
) -> None:
    """Run the receiver under uvicorn until it is stopped (SIGINT or SIGTERM).

    Raises ``UsageError`` (a bad tokens file or URL) or ``ReceiverError`` (the database
    cannot be used, or the address cannot be listened on) before serving anything."""
    import uvicorn

    app = create_app(db, tokens_file=tokens_file)
    sock = _listen(host, port)
    # proxy_headers off: a client's address is the socket's peer, never a header it sent,
    # so that "loopback only" cannot be talked around. The access log shows method, path
    # and status, never headers (so never a token).
    config = uvicorn.Config(app, host=host, port=port, proxy_headers=False, server_header=False)
    server = uvicorn.Server(config)
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    logging.getLogger("uvicorn.error").info(
        "replaylog serve on http://%s:%d, events in %s%s",
        shown,
        bound[1],
        app.state.receiver.storage.shown_url,
        "" if tokens_file else " (no tokens file: this machine only, project 'default')",
    )
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        # uvicorn has shut down gracefully and raises the SIGINT it caught again: Ctrl-C
        # is how a receiver in a terminal is stopped, not an error.
        if not server.started:
            raise
        logging.getLogger("uvicorn.error").info("replaylog serve stopped")
        return
    finally:
        sock.close()
    if not server.started:
        raise ReceiverError(f"the receiver did not start on {host}:{port} (see above)")


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a port in use is one clear error."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ReceiverError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)  # from here connections wait for the server instead of failing
    except OSError as exc:
        sock.close()
        raise ReceiverError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock
