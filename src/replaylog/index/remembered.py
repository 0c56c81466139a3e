"""Delivery state kept while an event is out of the index (SPEC sections 5 and 12): the
``remembered`` table, filled when a log vanishes or is rewritten and given back when its
events are indexed again, and carried over by ``rebuild-index``.

Raw ``sqlite3``, not SQLAlchemy Core: catch-up (on the append path) and ``rebuild-index``
run these, and neither imports SQLAlchemy, whose import alone takes longer than an append.
The statements are in :mod:`replaylog.index.sql`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import NamedTuple

from .sql import (
    DELIVERY_STATES,
    FORGET_RESTORED,
    FORGET_RESTORED_OF_FEATURE,
    HAS_REMEMBERED,
    HAS_REMEMBERED_OF_FEATURE,
    REMEMBER_FEATURE,
    REMEMBER_STATES,
    RESTORE,
    RESTORE_OF_FEATURE,
)

__all__ = ["DeliveryState", "delivery_states", "remember", "remember_states", "restore"]


class DeliveryState(NamedTuple):
    """An event's delivery state (SPEC section 5), as ``events`` and ``remembered`` hold it."""

    feature: str
    event_id: str
    status: str
    retry_count: int
    last_retry_at: str | None
    last_error: str | None


def delivery_states(conn: sqlite3.Connection) -> list[DeliveryState]:
    """Every delivery state worth keeping: those ``remembered`` of events absent for now,
    then those of indexed events (which, listed last, win for an event in both)."""
    rows = conn.execute(DELIVERY_STATES)
    return [DeliveryState._make(row) for row in rows]


def remember_states(conn: sqlite3.Connection, states: Iterable[DeliveryState]) -> None:
    """Keep ``states`` in ``remembered``; a later state of an event replaces an earlier."""
    conn.executemany(REMEMBER_STATES, states)


def remember(conn: sqlite3.Connection, feature: str) -> None:
    """Keep the delivery state of a feature's events that are about to be dropped
    from ``events``, until they are indexed again (SPEC section 12)."""
    conn.execute(REMEMBER_FEATURE, (feature,))


def restore(conn: sqlite3.Connection, feature: str | None = None) -> None:
    """Give indexed events back the state remembered for them (one feature, or all)."""
    args: tuple[str, ...]
    if feature is not None:
        any_sql, restore_sql, forget_sql = (
            HAS_REMEMBERED_OF_FEATURE,
            RESTORE_OF_FEATURE,
            FORGET_RESTORED_OF_FEATURE,
        )
        args = (feature,)
    else:
        any_sql, restore_sql, forget_sql, args = HAS_REMEMBERED, RESTORE, FORGET_RESTORED, ()
    if conn.execute(any_sql, args).fetchone():
        conn.execute(restore_sql, args)
        conn.execute(forget_sql, args)
