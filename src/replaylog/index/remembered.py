"""Delivery state kept while an event is out of the index (SPEC sections 5 and 12): the
``remembered`` table, filled when a log vanishes or is rewritten and given back when its
events are indexed again, and carried over by ``rebuild-index``.

Raw ``sqlite3``, not SQLAlchemy Core: catch-up (on the append path) and ``rebuild-index``
run these, and neither imports SQLAlchemy, whose import alone takes longer than an append.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import NamedTuple

__all__ = ["DeliveryState", "delivery_states", "remember", "remember_states", "restore"]


class DeliveryState(NamedTuple):
    """An event's delivery state (SPEC section 5), as ``events`` and ``remembered`` hold it."""

    feature: str
    event_id: str
    status: str
    retry_count: int
    last_retry_at: str | None
    last_error: str | None


_STATE_COLUMNS = "feature, event_id, status, retry_count, last_retry_at, last_error"
#: The state worth keeping: a pending event never tried is what indexing it again gives.
_STATE_KEPT = "(status != 'pending' OR retry_count > 0)"
_REMEMBER = (
    f"INSERT INTO remembered ({_STATE_COLUMNS}) {{rows}} ON CONFLICT(feature, event_id)"
    " DO UPDATE SET status = excluded.status, retry_count = excluded.retry_count,"
    " last_retry_at = excluded.last_retry_at, last_error = excluded.last_error"
)


def delivery_states(conn: sqlite3.Connection) -> list[DeliveryState]:
    """Every delivery state worth keeping: those ``remembered`` of events absent for now,
    then those of indexed events (which, listed last, win for an event in both)."""
    rows = conn.execute(
        f"SELECT {_STATE_COLUMNS} FROM remembered UNION ALL"
        f" SELECT {_STATE_COLUMNS} FROM events WHERE {_STATE_KEPT}"
    )
    return [DeliveryState._make(row) for row in rows]


def remember_states(conn: sqlite3.Connection, states: Iterable[DeliveryState]) -> None:
    """Keep ``states`` in ``remembered``; a later state of an event replaces an earlier."""
    conn.executemany(_REMEMBER.format(rows="VALUES (?, ?, ?, ?, ?, ?)"), states)


def remember(conn: sqlite3.Connection, feature: str) -> None:
    """Keep the delivery state of a feature's events that are about to be dropped
    from ``events``, until they are indexed again (SPEC section 12)."""
    rows = f"SELECT {_STATE_COLUMNS} FROM events WHERE feature = ? AND {_STATE_KEPT}"
    conn.execute(_REMEMBER.format(rows=rows), (feature,))


def restore(conn: sqlite3.Connection, feature: str | None = None) -> None:
    """Give indexed events back the state remembered for them (one feature, or all)."""
    where, args = ("r.feature = ?", (feature,)) if feature is not None else ("1", ())
    if conn.execute(f"SELECT 1 FROM remembered AS r WHERE {where} LIMIT 1", args).fetchone():
        conn.execute(
            "UPDATE events SET status = r.status, retry_count = r.retry_count,"
            " last_retry_at = r.last_retry_at, last_error = r.last_error"
            f" FROM remembered AS r WHERE {where} AND r.feature = events.feature"
            " AND r.event_id = events.event_id",
            args,
        )
        conn.execute(
            f"DELETE FROM remembered AS r WHERE {where} AND EXISTS (SELECT 1 FROM events"
            " AS e WHERE e.feature = r.feature AND e.event_id = r.event_id)",
            args,
        )
