"""Alembic environment for the receiver's database (``replaylog serve``).

The server runs these migrations itself when it starts, passing its own connection in
``config.attributes["connection"]``. By hand: ``alembic -c /dev/null -x db=URL upgrade head``
with ``script_location`` pointing here, or simply start ``replaylog serve --db URL``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from replaylog.server.storage import VERSION_TABLE, metadata

config = context.config


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("db", "sqlite:///replaylog-server.db")
    engine = create_engine(url)
    with engine.connect() as conn:
        _run(conn)
        conn.commit()


if context.is_offline_mode():
    raise SystemExit("the receiver's migrations run online only")
run_migrations_online()
