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
    """Run the receiver under uvicorn until it is stopped (SIGINT or SIGTERM)."""
    import uvicorn

    app = create_app(db, tokens_file=tokens_file)
    # proxy_headers off: a client's address is the socket's peer, never a header it sent,
    # so that "loopback only" cannot be talked around. The access log shows method, path
    # and status, never headers (so never a token).
    uvicorn.run(app, host=host, port=port, proxy_headers=False, server_header=False)
