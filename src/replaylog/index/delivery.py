"""Delivery state in the index (SPEC sections 4 and 5), on SQLAlchemy Core.

Counts for ``status``, the pending queue in ``(lamport_clock, event_id)`` order, the
outcome of each replayed batch, ``requeue``, and an emitted event's status. The store
calls these after the index has caught up with the logs; each function that writes runs
in one transaction. The state kept for events out of the index is in
:mod:`replaylog.index.remembered`, which runs without SQLAlchemy.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from sqlalchemy import (
    Connection,
    and_,
    bindparam,
    case,
    create_engine,
    func,
    literal_column,
    null,
    select,
    tuple_,
    update,
)
from sqlalchemy.pool import StaticPool

from .schema import events
from .sql import EMITTED_STATUS

__all__ = ["Delivery", "PendingRow", "emitted_status"]

_STATUSES = ("pending", "delivered", "failed")


class PendingRow(NamedTuple):
    """One pending event of the queue, made from a row of a page as it is taken."""

    feature: str
    event_id: str
    lamport: int
    offset: int
    length: int
    row_id: int  # the index row it came from, for record()


_AFTER_LAMPORT = "after_lamport"  # where the next page of pending() starts
_AFTER_EVENT_ID = "after_event_id"
_AFTER_ID = "after_id"

# The statements below take their constants inline (literal_column), so that each is
# run with one plain tuple per row, its parameters in the order of ``names``.
_PENDING: Any = literal_column("'pending'")


class _Update(NamedTuple):
    statement: Any
    names: tuple[str, ...]  # its parameters, in the order the compiled SQL takes them


_BY_KEY = and_(
    events.c.feature == bindparam("f"),
    events.c.event_id == bindparam("e"),
    events.c.status == _PENDING,
)
_DELIVERED_VALUES = {"status": literal_column("'delivered'"), "last_error": null()}
_RETRY_VALUES = {
    "retry_count": events.c.retry_count + literal_column("1"),
    "last_retry_at": bindparam("now"),
    "last_error": bindparam("error"),
}
_DELIVERED = _Update(update(events).where(_BY_KEY).values(_DELIVERED_VALUES), ("f", "e"))
# The row id, when it is still the event's row, spares the look-up of the unique index:
# the row must still hold the same feature and event id and be pending, or it is left.
_DELIVERED_BY_ROW = _Update(
    update(events).where(events.c.id == bindparam("id"), _BY_KEY).values(_DELIVERED_VALUES),
    ("id", "f", "e"),
)
_FAILED = _Update(
    update(events).where(_BY_KEY).values(status=literal_column("'failed'"), **_RETRY_VALUES),
    ("now", "error", "f", "e"),
)
_RETRIED = _Update(update(events).where(_BY_KEY).values(_RETRY_VALUES), ("now", "error", "f", "e"))


class Delivery:
    """SQLAlchemy Core over the index's own ``sqlite3`` connection.

    The connection runs in autocommit mode and replaylog opens its transactions itself
    (``Index.write``), so SQLAlchemy here builds and runs statements only.
    """

    def __init__(self, raw: sqlite3.Connection) -> None:
        # SQLAlchemy's first connect rolls the connection back, which would silently end
        # a transaction of ours: open this layer before any Index.write().
        if raw.in_transaction:
            raise RuntimeError("Delivery must be created outside a transaction")
        self.raw = raw
        self.engine = create_engine("sqlite://", creator=lambda: raw, poolclass=StaticPool)
        self.conn: Connection = self.engine.connect()
        self._compiled: dict[Any, str] = {}

    def close(self) -> None:
        self.conn.close()
        self.engine.dispose()

    def counts(self, features: Iterable[str] | None = None) -> dict[str, dict[str, int]]:
        """``{feature: {"events", "pending", "delivered", "failed"}}`` for each feature."""
        query = select(
            events.c.feature,
            func.count(),
            *(func.sum(case((events.c.status == s, 1), else_=0)) for s in _STATUSES),
        ).group_by(events.c.feature)
        if features is not None:
            query = query.where(events.c.feature.in_(list(features)))
        result: dict[str, dict[str, int]] = {}
        for feature, total, pending, delivered, failed in self.conn.execute(query):
            result[feature] = {
                "events": int(total),
                "pending": int(pending or 0),
                "delivered": int(delivered or 0),
                "failed": int(failed or 0),
            }
        return result

    def pending_count(self, features: list[str] | None = None) -> int:
        """How many events are pending (in ``features``), counted on the partial index
        of pending rows: the cost does not grow with the number of delivered events."""
        query = select(func.count()).select_from(events).where(events.c.status == "pending")
        if features is not None:
            # As in pending(): ``|| ''`` keeps SQLite on the partial index.
            query = query.where(events.c.feature.concat("").in_(features))
        return int(self.conn.execute(query).scalar_one())

    def pending(
        self, features: list[str] | None = None, *, page: int = 1000
    ) -> Iterator[PendingRow]:
        """Pending events in ``(lamport, event_id)`` order, page by page (keyset paging).

        Each page is a range scan of the partial index on pending rows, so its cost
        does not grow with the number of delivered events.

        A page is held as plain tuples of strings and integers, which CPython's cycle
        collector stops tracking: objects it tracks that live as long as a page are
        promoted to its oldest generation, and enough of them set off collections of the
        whole heap (all the imported libraries) during a replay, more the longer it runs.
        """
        # The row id breaks ties: an event id can be in two logs with the same Lamport
        # value, and a page that ends between them must not skip the second. Each entry
        # of the partial index ends with the row id, so this order needs no sorting.
        query = (
            select(
                events.c.feature,
                events.c.event_id,
                events.c.lamport,
                events.c.offset,
                events.c.length,
                events.c.id,
            )
            .where(events.c.status == "pending")
            .order_by(events.c.lamport, events.c.event_id, events.c.id)
            .limit(page)
        )
        if features is not None:
            # ``|| ''`` keeps SQLite off the index on feature, which would read every
            # event of the feature (delivered ones too) and sort them for each page.
            query = query.where(events.c.feature.concat("").in_(features))
        following = query.where(
            tuple_(events.c.lamport, events.c.event_id, events.c.id)
            > tuple_(
                # The values are each page's; these make the statement compile alone.
                bindparam(_AFTER_LAMPORT, 0),
                bindparam(_AFTER_EVENT_ID, ""),
                bindparam(_AFTER_ID, 0),
            )
        )
        # Run on the connection itself: its rows are plain tuples, which the cycle
        # collector stops tracking (SQLAlchemy's Rows it tracks), and no Row is made for
        # each of them. Each PendingRow lives only until the caller has taken it.
        compiled = query.compile(dialect=self.engine.dialect)
        rows = self.raw.execute(*_expanded(compiled, {})).fetchall()
        while True:
            for feature, event_id, lamport, offset, length, row_id in rows:
                yield PendingRow(feature, event_id, lamport, offset, length, row_id)
            if len(rows) < page:
                return
            if compiled.statement is not following:
                compiled = following.compile(dialect=self.engine.dialect)
            _, event_id, lamport, _, _, row_id = rows[-1]
            after = {_AFTER_LAMPORT: lamport, _AFTER_EVENT_ID: event_id, _AFTER_ID: row_id}
            rows = self.raw.execute(*_expanded(compiled, after)).fetchall()

    def record(
        self,
        *,
        accepted: Iterable[str],
        rejected: dict[str, str],
        transient: tuple[Iterable[str], str] | None,
        now: str,
        rows_of: Mapping[str, Sequence[tuple[str, int | None]]],
        retried: Mapping[str, str] | None = None,
    ) -> None:
        """Apply one batch's answer. Call inside ``Index.write`` (one transaction).

        ``rejected`` events become failed; ``transient`` ones (ids, error) and ``retried``
        ones ({id: error}) stay pending with ``retry_count`` + 1 and the error.
        ``rows_of`` maps each event id of the batch to the (feature, row id) of each
        pending row it came from (the row id may be None). Each update finds its row by
        (feature, event_id) through the unique index, or by its row id, so its cost does
        not grow with the size of the table. A delivered event goes by its row id first,
        which must still hold that feature and event id, pending; if any row does not
        (its log was indexed again meanwhile, or no row id was given), the batch's
        delivered events are updated by key too, which leaves the ones already delivered
        as they are.
        """

        def keys(ids: Iterable[str]) -> list[tuple[str, str]]:
            return [(f, e) for e in ids for f, _ in rows_of.get(e, ())]

        by_row = [(row_id, f, e) for e in accepted for f, row_id in rows_of.get(e, ())]
        if self._many(_DELIVERED_BY_ROW, by_row) < len(by_row):  # (id None matches no row)
            self._many(_DELIVERED, [(f, e) for _, f, e in by_row])
        failed = keys(rejected)
        self._many(_FAILED, [(now, rejected[e], f, e) for f, e in failed])
        if transient is not None:
            ids, error = transient
            self._many(_RETRIED, [(now, error, f, e) for f, e in keys(ids)])
        if retried:
            self._many(_RETRIED, [(now, retried[e], f, e) for f, e in keys(retried)])

    def _many(self, update_: _Update, rows: list[tuple[Any, ...]]) -> int:
        """Run an UPDATE built with SQLAlchemy for many rows, straight on the connection,
        each row a tuple in the order of ``update_.names``; returns the rows changed.

        SQLAlchemy's own executemany builds every row's parameters in Python, which was
        the larger part of recording a replayed batch; the statement is compiled once.
        """
        if not rows:
            return 0
        sql = self._compiled.get(update_.statement)
        if sql is None:
            done = update_.statement.compile(dialect=self.engine.dialect)
            if tuple(done.positiontup or ()) != update_.names:
                raise RuntimeError(f"parameters {done.positiontup} != {update_.names}")
            sql = self._compiled[update_.statement] = str(done)
        return int(self.raw.executemany(sql, rows).rowcount)

    def requeue(self, features: list[str] | None = None, event_id: str | None = None) -> int:
        """``failed`` back to ``pending``. Call inside ``Index.write``."""
        query = update(events).where(events.c.status == "failed").values(status="pending")
        if features is not None:
            query = query.where(events.c.feature.in_(features))
        if event_id is not None:
            query = query.where(events.c.event_id == event_id)
        return int(self.conn.execute(query).rowcount)


def _expanded(compiled: Any, values: dict[str, Any]) -> tuple[str, Sequence[Any]]:
    """A compiled query's SQL, its IN lists spelled out, and its parameters in order,
    ``values`` for the named ones: what the ``sqlite3`` connection runs."""
    state = compiled.construct_expanded_state(values)
    return state.statement, state.positional_parameters


def emitted_status(
    conn: sqlite3.Connection, feature: str, event_id: str
) -> tuple[str | None, str | None]:
    """An emitted event's delivery status and last error, (None, None) if unknown.

    Raw ``sqlite3``: one look-up by the unique index, on the connection the replay of
    the emit used, with no SQLAlchemy connection to open for it."""
    row = conn.execute(EMITTED_STATUS, (feature, event_id)).fetchone()
    if row is None:
        return None, None
    status, last_error = row
    return status, last_error
