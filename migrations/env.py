"""Alembic environment for the replaylog index.

replaylog passes its own open connection in ``config.attributes["connection"]``. From
the command line, the index is ``-x index=PATH``, else ``REPLAYLOG_INDEX``, else
``.replaylog/queue.db`` under the working directory.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

from replaylog.index.schema import metadata

config = context.config
target_metadata = metadata


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=target_metadata,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    index = context.get_x_argument(as_dictionary=True).get("index") or os.environ.get(
        "REPLAYLOG_INDEX", os.path.join(".replaylog", "queue.db")
    )
    os.makedirs(os.path.dirname(os.path.abspath(index)), exist_ok=True)
    engine = create_engine(f"sqlite:///{index}")
    with engine.connect() as conn:
        _run(conn)
        conn.commit()


if context.is_offline_mode():
    raise SystemExit("replaylog migrations run online only: they need the SQLite file")
run_migrations_online()
