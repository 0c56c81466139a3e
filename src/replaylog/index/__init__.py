"""The replay index, ``queue.db`` (SPEC section 4), by role: :mod:`.core` (the
:class:`Index` front), :mod:`.opening`, :mod:`.catchup`, :mod:`.remembered`,
:mod:`.delivery`, :mod:`.rebuild`, :mod:`.locks`, and the schema in :mod:`.sql`
(plain SQL, with every raw statement) and :mod:`.schema` (SQLAlchemy).

The names of :mod:`.delivery` are imported on first use: it loads SQLAlchemy, which
the append path never imports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .catchup import LogProgress, log_progress
from .core import Index
from .locks import replay_lock, replay_lock_path
from .opening import (
    HEAD_REVISION,
    REVISIONS,
    create_schema,
    find_migrations,
    foreign_file,
    is_index_place,
    run_migrations,
)
from .remembered import DeliveryState, delivery_states, remember_states

if TYPE_CHECKING:
    from .delivery import Delivery, PendingRow

__all__ = [
    "HEAD_REVISION",
    "REVISIONS",
    "Delivery",
    "DeliveryState",
    "Index",
    "LogProgress",
    "PendingRow",
    "create_schema",
    "delivery_states",
    "find_migrations",
    "foreign_file",
    "is_index_place",
    "log_progress",
    "remember_states",
    "replay_lock",
    "replay_lock_path",
    "run_migrations",
]

_LAZY = frozenset({"Delivery", "PendingRow"})


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import delivery

    value = getattr(delivery, name)
    globals()[name] = value
    return value
