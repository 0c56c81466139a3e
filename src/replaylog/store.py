"""EventStore (SPEC section 7): the logs, the index and replay, tied together.

The log is the truth; the index follows it. Every method that reports or uses index
state first catches up with the logs.

The store checks what it is given and leaves the rest to the module that owns it: an
append is the transaction of :mod:`replaylog.append` (lock, catch up, reserve clock
values, write, record); ``status.json`` and ``meta.json`` are read and written by
:mod:`replaylog.featurefiles`.
"""

from __future__ import annotations

import _thread
import _weakref
import contextlib
import errno
import functools
import json
import math
import os
import stat
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from . import log as _log
from .append import Appender
from .errors import (
    DeliveryError,
    LogsUnreadableError,
    ReplaylogError,
    ReplaylogWarning,
    StoreError,
    TransientDeliveryError,
    UsageError,
    is_log_problem,
    os_error,
    translate,
)
from .index import Index
from .index.locks import replay_lock
from .lines.canonical import ITEM_KEYS, LineTemplate, new_line_object, new_lines
from .lines.envelope import build_events, build_new_event
from .lines.ids import local_node_id, utc_now, validate_ulid_format
from .posix import open_regular, refuse_links

if TYPE_CHECKING:
    import httpx

    from .index.delivery import Delivery
    from .lines import Line, StatusEvent
    from .lines.event import Event
    from .replay import ReplayConfig
    from .reports import EmitResult, ReplayReport, VerifyReport

__all__ = ["EventStore", "check_root", "find_root"]

DEFAULT_LOGS_DIR = "kitty-specs"


def find_root(start: str | None = None) -> str:
    """The nearest ancestor of ``start`` holding ``.git`` or ``.replaylog``, else ``start``."""
    here = os.path.abspath(start or os.getcwd())
    current = here
    while True:
        if os.path.exists(os.path.join(current, ".git")) or os.path.isdir(
            os.path.join(current, ".replaylog")
        ):
            return current
        parent = os.path.dirname(current)
        if parent == current:
            return here
        current = parent


def check_root(root: str) -> str:
    """``root`` if it is an existing folder, else :class:`UsageError`.

    A root that does not exist is a typo: the store makes the logs folder and the index
    under its root, never the root itself. ``replaylog --root`` refuses the same (click
    checks the option first, and the store it opens checks again)."""
    try:
        st = os.stat(root)
    except (FileNotFoundError, NotADirectoryError):
        raise UsageError(
            f"the root {root} does not exist: give the folder of an existing project"
            " (replaylog makes the logs folder and the index under the root, never the"
            " root itself)"
        ) from None
    except ValueError:  # a NUL byte: no such folder can exist
        raise UsageError(f"the root {root!r} is not a valid path") from None
    except OSError:
        return root  # it cannot be looked at: the first file it holds says why
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"the root {root} is not a folder: give the folder of a project")
    return root


_F = TypeVar("_F", bound=Callable[..., Any])
_DICT_TYPE = frozenset({dict})


def _edge(method: _F) -> _F:
    """The library's edge (SPEC section 12): an ``OSError``, ``sqlite3`` or SQLAlchemy
    error leaves a public method as one of :mod:`replaylog.errors`, with its path."""

    @functools.wraps(method)
    def mapped(self: EventStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except ReplaylogError:
            raise
        except Exception as exc:
            error = translate(exc, path=self.root, index=self.index_path)
            if error is None:
                raise
            raise error from exc

    return cast(_F, mapped)


def _edge_iter(store: EventStore, items: Iterator[Any]) -> Iterator[Any]:
    """:func:`_edge` for a generator: errors met while iterating are mapped too."""
    try:
        yield from items
    except ReplaylogError:
        raise
    except Exception as exc:
        error = translate(exc, path=store.root, index=store.index_path)
        if error is None:
            raise
        raise error from exc


_inherited: list[Index] = []  # indexes opened by a parent process: kept, never closed


class _ThreadState:
    """What one thread's calls on an :class:`EventStore` use: a connection to the index
    (with its clock file) and descriptors of the logs kept open. Each thread has its own,
    so threads share a store as processes share a project: each takes the logs' locks on
    descriptors of its own, and SQLite orders their connections' writes."""

    __slots__ = ("__weakref__", "appender", "delivery", "index")

    def __init__(self) -> None:
        self.index: Index | None = None
        self.delivery: Delivery | None = None
        self.appender = Appender()

    def __del__(self) -> None:
        # The thread has ended (its thread-local state goes with it), or the store is
        # gone: what it opened is closed now, so that a program that starts a thread per
        # task does not pile up descriptors until it closes the store.
        try:
            self.close()
        except Exception:  # noqa: BLE001, S110 - nothing to tell at that point
            pass

    def close(self) -> None:
        self.appender.close()
        index, delivery = self.index, self.delivery
        self.index = self.delivery = None
        if index is not None and index.pid != os.getpid():
            _inherited.append(index)  # a forked child's copy: its parent's to close
            return
        if delivery is not None:
            delivery.close()
        if index is not None:
            index.close()


class EventStore:
    """The event store of one project root. Use as a context manager, or call ``close``."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        logs_dir: str = DEFAULT_LOGS_DIR,
        index_path: str | os.PathLike[str] | None = None,
        node_id: str | None = None,
        fsync: bool = True,
    ) -> None:
        self.root = check_root(os.path.abspath(os.fspath(root)))
        self.logs_root = os.path.join(self.root, logs_dir)
        self.index_path = (
            os.path.abspath(os.fspath(index_path))
            if index_path is not None
            else os.path.join(self.root, ".replaylog", "queue.db")
        )
        self.node_id = node_id or local_node_id()
        self.fsync = fsync
        # Each thread that uses the store has its own connection to the index and its
        # own descriptors of the logs (see _ThreadState); every thread's, for close().
        # (_thread's own: threading.local and threading.Lock are these, and the import of
        # threading would cost the CLI's append its start-up time.)
        self._local = _thread._local()
        self._states: list[_weakref.ReferenceType[_ThreadState]] = []  # held by their threads
        self._states_lock = _thread.allocate_lock()

    @classmethod
    def from_environment(
        cls,
        root: str | os.PathLike[str],
        *,
        logs_dir: str = DEFAULT_LOGS_DIR,
        index_path: str | os.PathLike[str] | None = None,
    ) -> EventStore:
        """The store a ``replaylog`` command opens: ``fsync`` is on unless
        ``REPLAYLOG_FSYNC`` is ``0``, ``false`` or ``no`` (SPEC section 3)."""
        fsync = os.environ.get("REPLAYLOG_FSYNC", "1").strip().lower() not in ("0", "false", "no")
        return cls(root, logs_dir=logs_dir, index_path=index_path, fsync=fsync)

    def __repr__(self) -> str:
        return f"EventStore(root={self.root!r}, index_path={self.index_path!r})"

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the index and the logs kept open, those of every thread that used the
        store (call it once they are done: every append is complete on return). The
        store opens them again if it is used after."""
        with self._states_lock:
            states = [ref() for ref in self._states]
        for state in states:
            if state is not None:  # (None: its thread has ended, and closed it)
                state.close()

    def _state(self) -> _ThreadState:
        """This thread's connection to the index and descriptors of the logs."""
        try:
            return self._local.state  # type: ignore[no-any-return]
        except AttributeError:
            state = self._local.state = _ThreadState()
            with self._states_lock:  # (and those of threads that have ended go)
                self._states = [ref for ref in self._states if ref() is not None]
                self._states.append(_weakref.ref(state))
            return state

    @property
    def _appender(self) -> Appender:
        return self._state().appender

    @property
    def _open_logs(self) -> dict[str, Any]:
        """The logs this thread's appender keeps open: a feature in it may take the fast path."""
        return self._state().appender.open_logs

    @property
    def _index(self) -> Index | None:
        """This thread's index, if it has opened it."""
        return self._state().index

    # ------------------------------------------------------------------ paths

    def feature_dir(self, feature: str) -> str:
        """The folder of a feature's log; refuses a bad name before touching anything.

        Every folder between the root and the log must be a real one (SPEC section 12):
        a symbolic link there, which a cloned repository can hold, would take reads and
        appends outside the logs folder. The root itself may be a link: the user names it.
        """
        path = os.path.join(self.logs_root, _log.validate_feature_name(feature))
        refuse_links(self.root, path)
        return path

    def log_path(self, feature: str) -> str:
        return _log.log_path(self.feature_dir(feature))

    def require_log(self, feature: str) -> str:
        """The path of a feature's log; :class:`StoreError` if the feature has none."""
        path = self.log_path(feature)
        if not os.path.lexists(path):
            raise StoreError(
                f"feature {feature!r} has no log ({path}); `replaylog status` lists the"
                " features there are",
                path=path,
            )
        return path

    @_edge
    def features(self) -> list[str]:
        """Every feature that has a log, sorted by name."""
        return self._listing()[0]

    def _listing(self) -> tuple[list[str], dict[str, StoreError]]:
        """Every feature that has a log, sorted; and every folder of the logs folder that
        holds a log but whose name cannot be a feature's, by name, as the error that says
        so. Such a log is never read, indexed or replayed: the commands over many logs
        list it as a bad one, so that nothing is left out silently."""
        try:
            names = os.listdir(self.logs_root)
        except FileNotFoundError:
            return [], {}
        except NotADirectoryError as exc:
            raise StoreError(f"{self.logs_root} is not a folder", path=self.logs_root) from exc
        found = []
        strays: dict[str, StoreError] = {}
        for name in sorted(names):
            path = os.path.join(self.logs_root, name, _log.EVENTS_FILENAME)
            if not os.path.lexists(path):
                continue
            try:
                _log.validate_feature_name(name)
            except UsageError:
                # Shown as PATH:LINE: a name with a control character or an undecodable
                # byte is escaped (as is a backslash then, so no two names are shown
                # alike), so that it can neither forge nor break the report's lines.
                plain = name.isprintable() and "\\" not in name
                shown = name if plain else ascii(name)[1:-1]
                strays[shown] = StoreError(
                    f"the folder name {name!r} is not a feature name (1-128 characters from"
                    " A-Z a-z 0-9 . _ -, starting with a letter or digit), so this log is not"
                    " read, indexed or replayed: rename the folder",
                    path=os.path.join(self.logs_root, shown, _log.EVENTS_FILENAME),
                )
                continue
            found.append(name)
        return found, strays

    # ------------------------------------------------------------------ index

    @property
    def index(self) -> Index:
        state = self._state()
        index = state.index
        if index is not None and index.pid != os.getpid():
            # A forked child: SQLite connections must not cross a fork. The parent's is
            # set aside, never used or closed here, and the child opens its own.
            _inherited.append(index)
            state.index = index = None
            state.delivery = None
        if index is None:
            index = state.index = Index(self.index_path)
        return index

    @property
    def delivery(self) -> Delivery:
        state = self._state()
        index = self.index
        if state.delivery is None:
            from .index.delivery import Delivery

            state.delivery = Delivery(index.conn)
        return state.delivery

    @_edge
    def catch_up(self, features: Iterable[str] | None = None) -> None:
        """Bring the index up to date with the logs (all of them, or the ones named).

        A log that cannot be read raises :class:`StoreError`; over all logs, every
        readable one is caught up first and :class:`LogsUnreadableError` lists the bad.
        """
        if features is None:
            bad = self._catch_up_all()
            if bad:
                raise _unreadable(bad, "every other log was indexed")
            return
        # Names are checked before the index is opened: a bad one touches no file (section 1).
        checked = {_log.validate_feature_name(f) for f in features}
        index = self.index
        for name in sorted(checked):
            index.catch_up(name, self.log_path(name))

    def _catch_up_all(self) -> dict[str, StoreError]:
        """Catch up with every log; returns the logs that could not be read, by feature
        (SPEC section 10: one bad log does not stop the others), the logs in folders that
        cannot be a feature's among them."""
        index = self.index
        listed, bad = self._listing()
        for name in sorted(set(listed) | set(index.known_features())):
            path = _log.log_path(os.path.join(self.logs_root, name))
            try:
                self.feature_dir(name)  # a linked folder is refused (SPEC section 12)
                index.catch_up(name, path)
            except StoreError as exc:
                if not is_log_problem(exc, path):
                    raise  # the index's disk, not this log: nothing else can go on either
                exc.path = exc.path or path
                bad[name] = exc
        return bad

    # ------------------------------------------------------------------ writing

    @_edge
    def append(
        self,
        feature: str,
        event_type: str,
        aggregate_id: str,
        payload: Mapping[str, Any] | None = None,
        *,
        causation_id: str | None = None,
        correlation_id: str | None = None,
    ) -> Event:
        """Append one event durably and return it with its id and Lamport value."""
        return build_new_event(
            self._write_new(
                feature, event_type, aggregate_id, payload, causation_id, correlation_id
            )
        )

    def _write_new(
        self,
        feature: str,
        event_type: str,
        aggregate_id: str,
        payload: Mapping[str, Any] | None,
        causation_id: str | None,
        correlation_id: str | None,
    ) -> dict[str, Any]:
        """:meth:`append`, returning the line object written (its Lamport value in it)
        rather than an Event."""
        obj = new_line_object(
            event_type, aggregate_id, payload, causation_id, correlation_id, self.node_id
        )
        appender = self._state().appender
        if feature in appender.open_logs and appender.append_to_open_log(
            self, feature, [LineTemplate.of_new(obj)], [obj]
        ):  # (a name checked when its log was first opened)
            return obj
        return self._append_objects(feature, [obj])[0]

    #: :meth:`append` for the ``replaylog append`` command, which prints the line object
    #: and so needs no Event (nor the ``dataclasses`` module the Event class imports).
    _append_object = _edge(_write_new)

    @_edge
    def append_many(self, feature: str, events: Iterable[Event | Mapping[str, Any]]) -> list[Event]:
        """Append several events with one lock, one ``write`` and one fsync.

        Everything that can be refused is refused before the log is touched, and a
        failed write is cut back, so the batch is written whole or not at all. (Only a
        process killed in the middle of a large write can leave the batch's first lines
        and a torn tail, which the next append or ``repair`` deals with.)

        Items are :class:`Event` objects (written with their id and payload, and a new
        Lamport value) or mappings with ``event_type``, ``aggregate_id``, ``payload`` and
        optional ``causation_id`` and ``correlation_id``.
        """
        now = utc_now()
        if type(events) is list:
            items = events
        elif isinstance(events, (Mapping, str, bytes)) or not isinstance(events, Iterable):
            # (an Event is no iterable; a mapping or a string would be taken apart)
            one = isinstance(events, Mapping) or hasattr(events, "event_id")
            raise UsageError(
                "append_many takes a list of events (Event objects or mappings), got"
                f" {'None' if events is None else type(events).__name__}"
                + ("; for one event, use append()" if one else "")
            )
        else:
            items = list(events)
        # The collector stays off while the batch is made and written: it makes several
        # objects per event, none of them cyclic, and each collection would walk them
        # (and the caller's items) again. The caller's iterable is consumed before.
        with _log.GcPaused():
            return self._append_items(feature, items, now)

    def _append_items(self, feature: str, items: list[Any], now: str) -> list[Event]:
        if items and set(map(type, items)) == _DICT_TYPE:
            # New events from plain dicts, the usual batch: made column by column.
            made = new_lines(cast("list[dict[str, Any]]", items), self.node_id, now)
            if made is not None:
                objs, templates = made
                return build_events(self._append_objects(feature, objs, templates=templates))
        from .lines.event import Event  # (here: the CLI append never needs the class)

        objs = []
        given_ids = []
        for item in items:
            if isinstance(item, Event):
                if item.absent:
                    raise UsageError(
                        f"event {item.event_id} lacks {', '.join(sorted(item.absent))}: a line"
                        " the store writes holds every field of SPEC section 2"
                    )
                objs.append(item.to_dict())
                given_ids.append(item.event_id)
            elif type(item) is dict or isinstance(item, Mapping):  # the ABC check is slow
                objs.append(self._new_line_object(item, now))
            else:
                raise UsageError(
                    f"an event must be an Event or a mapping, not {type(item).__name__}"
                )
        return build_events(self._append_objects(feature, objs, given_ids))

    _ITEM_KEYS = ITEM_KEYS

    def _new_line_object(self, item: Mapping[str, Any], now: str) -> dict[str, Any]:
        """The line object of a new event from a mapping, validated (no Event built)."""
        unknown = item.keys() - self._ITEM_KEYS
        if unknown:
            raise UsageError(f"unknown key(s) in an event: {', '.join(sorted(unknown))}")
        if "event_type" not in item or "aggregate_id" not in item:
            raise UsageError("each event needs 'event_type' and 'aggregate_id'")
        # The id, time and node are this store's own; only what the caller gave is checked.
        return new_line_object(
            item["event_type"],
            item["aggregate_id"],
            item.get("payload"),
            item.get("causation_id"),
            item.get("correlation_id"),
            self.node_id,
            now,
        )

    def _append_objects(
        self,
        feature: str,
        objs: list[dict[str, Any]],
        given_ids: list[str] | None = None,
        templates: list[LineTemplate] | None = None,
    ) -> list[dict[str, Any]]:
        """Append line objects, and return them with their Lamport values. ``given_ids``:
        ids that came from the caller's Events (ids made here are new by construction, so
        only those are looked up in the index); ``templates``: the objects' lines, when
        made with them (new ids, all distinct)."""
        feature_dir = self.feature_dir(feature)
        if not objs:
            return []
        if templates is None:
            # Serializing checks everything that can be refused, before the log is touched.
            templates = [LineTemplate.of(obj) for obj in objs]
            ids = [obj["event_id"] for obj in objs]
            if len(set(ids)) != len(ids):
                twice = next(i for i in ids if ids.count(i) > 1)
                raise UsageError(f"event {twice} is twice in one append; each event_id once")
        return self._appender.append(self, feature, feature_dir, templates, objs, given_ids)

    # ------------------------------------------------------------------ reading

    @_edge
    def read(self, feature: str) -> list[Line]:
        """Every line of a feature in file order (identical duplicate lines once), each as
        its kind's record: :class:`Event` for envelopes, and spec-kitty's kinds."""
        return _log.read_events(self.feature_dir(feature))

    def iter_events(self, feature: str) -> Iterator[Line]:
        """Stream a feature's lines in file order, in bounded memory."""
        return _edge_iter(self, _log.iter_events(self.feature_dir(feature)))

    @_edge
    def log(
        self,
        feature: str,
        *,
        event_type: str | None = None,
        aggregate_id: str | None = None,
        limit: int | None = None,
    ) -> Iterator[Line]:
        """``replaylog log``: a feature's lines in file order, filtered as
        :func:`replaylog.lines.matches` says, at most ``limit`` of them.

        A feature that has no log is a :class:`StoreError` here, before any line is
        given out, as in ``verify``.
        """
        from .lines import matches

        self.require_log(feature)

        def shown() -> Iterator[Line]:
            if limit == 0:
                return
            count = 0
            for line in self.iter_events(feature):
                if matches(line, type=event_type, aggregate=aggregate_id):
                    yield line
                    count += 1
                    if limit is not None and count >= limit:
                        return

        return shown()

    @_edge
    def read_raw(self, feature: str) -> list[dict[str, Any]]:
        """A feature's line objects exactly as in the log, in file order."""
        return _log.read_events_raw(self.feature_dir(feature))

    @_edge
    def status(self, feature: str | None = None) -> dict[str, Any]:
        """Counts per feature (events, pending, delivered, failed), totals, and the clock.

        A ``feature`` that has no log is a :class:`StoreError`, as in :meth:`log`. Over
        every log, the bad ones (and the logs in folders that cannot be a feature's) are
        left out of the counts and listed by :class:`LogsUnreadableError`.
        """
        names = [feature] if feature is not None else None
        bad: dict[str, StoreError] = {}
        if names is None:
            bad = self._catch_up_all()
            listed = self.features()
        else:
            self.require_log(names[0])
            self.catch_up(names)
            listed = names
        counts = self.delivery.counts(names)
        if names is None:
            listed = sorted(set(listed) | set(counts))
        zero = {"events": 0, "pending": 0, "delivered": 0, "failed": 0}
        per = {name: counts.get(name, dict(zero)) for name in listed if name not in bad}
        totals = {k: sum(c[k] for c in per.values()) for k in zero}
        report = {"lamport_clock": self.index.clock(), "features": per, "totals": totals}
        if bad:
            raise _unreadable(bad, "left out of the counts; every other log is counted", report)
        return report

    # ------------------------------------------------------------------ the board

    @_edge
    def board(self, feature: str) -> dict[str, Any]:
        """The board of ``feature`` (SPEC section 10): the snapshot spec-kitty writes to
        ``status.json``, made from the log and the feature's ``meta.json`` when present.

        A feature folder without a log yet (spec-kitty made its ``meta.json``) has an
        empty board; a feature that has neither is a :class:`StoreError`, as in ``log``.
        Reads the log only: no index.
        """
        from .board import snapshot
        from .featurefiles import feature_meta

        feature_dir = self.feature_dir(feature)
        if not os.path.isdir(feature_dir):
            self.require_log(feature)
        meta = feature_meta(feature_dir)
        # The collector stays off until the board is made, not only while the log is
        # read: the snapshot's allocations would make it walk every line object.
        with _log.GcPaused():
            lines = _log.read_events_raw(feature_dir, ordered=False)  # it looks keys up
            try:
                return snapshot(lines, meta=meta)
            except StoreError as exc:
                if exc.path is None:
                    exc.path = _log.log_path(feature_dir)
                raise

    @_edge
    def boards(self) -> dict[str, dict[str, Any]]:
        """The board of every feature that has a log, by feature name.

        Every readable log is shown; if any cannot be read, :class:`LogsUnreadableError`
        lists each bad one, and its ``partial`` holds the boards of the others.
        """
        shown: dict[str, dict[str, Any]] = {}
        names, bad = self._listing()  # a log in a misnamed folder is listed, never skipped
        for name in names:
            try:
                shown[name] = self.board(name)
            except StoreError as exc:
                if exc.path is None:
                    exc.path = self.log_path(name)
                bad[name] = exc
        if bad:
            raise _unreadable(bad, "left out; every other board is shown", shown)
        return shown

    @_edge
    def move(
        self,
        feature: str,
        wp_id: str,
        *,
        to: str,
        actor: str,
        reason: str | None = None,
        review_ref: str | None = None,
        evidence: Mapping[str, Any] | None = None,
        execution_mode: str | None = None,
        force: bool = False,
    ) -> StatusEvent:
        """Move a work package to lane ``to``: one transition line, as spec-kitty writes it.

        The move starts from the WP's current lane (``genesis`` for a WP the log has not
        moved yet) and follows SPEC section 10's lane rules unless ``force``; ``doing`` is
        ``in_progress``. A refused move is a :class:`UsageError` naming the allowed lanes,
        and touches no file. So is a move spec-kitty would not accept, even forced: a
        forced one without ``reason``, an ``execution_mode`` other than ``worktree`` or
        ``direct_repo``, a move to ``genesis``, one to ``done`` without ``force`` and
        without ``evidence`` naming a reviewer, a verdict and a reference, and one from
        ``for_review`` back to ``in_progress`` without ``review_ref``. The log is read and
        appended under its exclusive lock, so concurrent moves see each other. When the
        feature has a ``status.json``, the new snapshot is written there atomically. A
        feature without a log gets one, as spec-kitty's first transition makes it.

        Once the line is durable the move has happened: should ``status.json`` or the
        index fail after that, a ``ReplaylogWarning`` says so (the index catches up at the
        next command; ``replaylog board FEATURE --json`` gives the snapshot).
        """
        from .board import canonical_lane, check_move, current_lane, new_transition, snapshot
        from .featurefiles import (
            STATUS_FILENAME,
            feature_meta,
            mission_id_of,
            status_json_stat,
            transition_time,
            write_status_json,
        )
        from .lines import StatusEvent
        from .lines.ids import generate_event_id

        # Everything that can be refused is refused before a file is touched.
        feature_dir = self.feature_dir(feature)
        target = canonical_lane(to)
        for name, value in (("work package", wp_id), ("actor", actor)):
            # Shown on boards and terminals: a newline or control character would forge lines.
            if (
                isinstance(value, str)
                and value.strip()  # an empty one is refused below, by its field's own rule
                and (not value.isprintable() or value != value.strip())
            ):
                raise UsageError(
                    f"the {name} {value!r} holds a control character or surrounding space;"
                    " give it as plain text"
                )
        meta = feature_meta(feature_dir)
        mission_id = mission_id_of(meta, feature_dir)
        status_path = os.path.join(feature_dir, STATUS_FILENAME)
        status_stat = status_json_stat(status_path)

        def transition(from_lane: str) -> tuple[dict[str, Any], StatusEvent, bytes]:
            obj = new_transition(
                event_id=generate_event_id(),
                at=transition_time(),
                wp_id=wp_id,
                from_lane=from_lane,
                to_lane=target,
                actor=actor,
                mission_slug=feature,
                mission_id=mission_id,
                reason=reason,
                review_ref=review_ref,
                evidence=evidence,
                execution_mode="worktree" if execution_mode is None else execution_mode,
                force=force,
            )
            try:
                # status.json is written as UTF-8: text it cannot hold is refused here.
                json.dumps(obj, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError as exc:
                raise UsageError(
                    f"the transition holds text that is not valid Unicode ({exc.reason})"
                ) from exc
            record = StatusEvent.from_dict(obj)
            return obj, record, record.to_line()

        transition("genesis")  # checks every value given, before the log is opened

        def check_rules(source: str) -> None:
            check_move(
                source, target, force=force, wp_id=wp_id, review_ref=review_ref, evidence=evidence
            )

        path = _log.log_path(feature_dir)
        if not os.path.lexists(path):
            # LogWriter would create the log: a refused first move must not.
            check_rules("genesis")

        with _log.LogWriter(feature_dir, fsync=self.fsync) as writer:
            try:
                lines = [line.obj for line in _log.scan_log(writer.path, lock=False)]
                try:
                    before = snapshot(lines, meta=meta)
                except StoreError as exc:
                    exc.path = exc.path or writer.path
                    raise
                source = current_lane(before, wp_id)
                check_rules(source)
                obj, record, data = transition(source)
                after = snapshot([*lines, obj], meta=meta)
                last = before["work_packages"].get(wp_id) or {}
                if after["work_packages"][wp_id]["last_event_id"] != obj["event_id"]:
                    # Lines apply in `at` order: a line dated before the WP's last move
                    # would be written and never shown.
                    raise StoreError(
                        f"{writer.path}: {wp_id}'s last transition is dated"
                        f" {last.get('last_transition_at')}, which sorts after the time now,"
                        f" {obj['at']} (transitions apply in the order of their `at` text,"
                        " as spec-kitty applies them), so a new one would not show: check"
                        " this machine's clock, or that line's `at`. Nothing was written",
                        path=writer.path,
                    )
                index = self.index
                with index.write():
                    # A broken index stops the move here, before the line is written.
                    index.catch_up_locked(feature, writer.path, lock_log=False)
                writer.write([data])  # cut back to where it was if it fails
            except BaseException:
                if writer.created:
                    # The empty log this move created: nothing is left behind.
                    with contextlib.suppress(OSError):
                        os.unlink(writer.path)
                raise
            # Everything below follows a durable line: the move has happened.
            if status_stat is not None:
                try:
                    write_status_json(status_path, after, fsync=self.fsync)
                except (ReplaylogError, OSError, ValueError) as exc:
                    # A full or read-only disk is named as every other command names it
                    # (the temporary file's name means nothing to the user).
                    why: object = exc
                    if isinstance(exc, OSError):
                        exc.filename = None
                        why = os_error(exc, status_path, "write")
                    warnings.warn(
                        f"{record.event_id} is in the log, but {status_path} could not be"
                        f" updated: {why}; `replaylog board {feature} --json` gives the"
                        " snapshot",
                        ReplaylogWarning,
                        stacklevel=2,
                    )
            try:
                with index.write():
                    index.catch_up_locked(feature, writer.path, lock_log=False)
            except Exception as exc:  # noqa: BLE001 - the line is durable: never a failure
                warnings.warn(
                    f"{record.event_id} is in the log; the index could not take it in yet"
                    f" ({exc}); the next command catches up",
                    ReplaylogWarning,
                    stacklevel=2,
                )
        return record

    @_edge
    def pending(self, feature: str | None = None, *, limit: int | None = None) -> list[Line]:
        """Pending events in replay order, ``(lamport_clock, event_id)``."""
        names = [feature] if feature is not None else None
        self.catch_up(names)
        from .lines import build_line

        out: list[Line] = []
        with _LineReader(self) as reader:
            for row in self.delivery.pending(names):
                out.append(build_line(_log.parse_line(reader.line(row))))
                if limit is not None and len(out) >= limit:
                    break
        return out

    # ------------------------------------------------------------------ maintenance

    @_edge
    def verify(self, features: Iterable[str] | None = None) -> VerifyReport:
        """Check every log (or the ones named): errors, and warnings such as duplicates.

        A log that cannot be looked at (a symbolic link on the way to it, SPEC section
        12), a named feature without a log, and, over every log, a log in a folder whose
        name cannot be a feature's are errors of the report, like a bad line: every
        other log is checked all the same (SPEC section 10).
        """
        from .reports import Problem, VerifyReport

        strays: dict[str, StoreError] = {}
        if features is not None:
            # Every name is checked before any file is looked at (SPEC section 1).
            names = [_log.validate_feature_name(f) for f in features]
        else:
            names, strays = self._listing()
        problems: list[Problem] = []
        for name in sorted(set(names) | set(strays)) if features is None else names:
            stray = strays.get(name)
            if stray is not None:
                problems.append(Problem(stray.path or name, None, str(stray)))
                continue
            try:
                path = self.log_path(name)  # refuses a linked folder on the way
            except StoreError as exc:
                problems.append(Problem(exc.path or name, exc.line, str(exc)))
                continue
            if not os.path.lexists(path):
                problems.append(Problem(path, None, f"feature {name!r} has no log"))
                continue
            problems.extend(_log.verify_log(path))
        try:
            from .gitmerge import driver_warning

            warning = driver_warning(self.root, os.path.relpath(self.logs_root, self.root))
        except (ImportError, ReplaylogError, OSError):
            warning = None
        if warning:
            problems.append(
                Problem(os.path.join(self.root, ".gitattributes"), None, warning, "warning")
            )
        return VerifyReport(problems)

    @_edge
    def repair(self, feature: str) -> bool:
        """Move a torn, invalid last line aside (SPEC section 3). True if anything changed."""
        feature_dir = self.feature_dir(feature)
        path = _log.log_path(feature_dir)
        before = os.path.getsize(path) if os.path.exists(path) else 0
        moved = _log.repair_log(feature_dir, fsync=self.fsync)
        after = os.path.getsize(path) if os.path.exists(path) else 0
        return moved is not None or after != before

    @_edge
    def requeue(self, feature: str | None = None, *, event_id: str | None = None) -> int:
        """Make ``failed`` events ``pending`` again (of ``feature``, or of every log; only
        ``event_id``, if given); returns how many.

        As in :meth:`log`, a ``feature`` that has no log is a :class:`StoreError`; so is an
        ``event_id`` that the log of ``feature`` (or, without one, no log) holds. An
        ``event_id`` that is not a ULID is a :class:`UsageError`. Nothing changes then.
        """
        if feature is not None:
            _log.validate_feature_name(feature)
        if event_id is not None and not validate_ulid_format(event_id):
            raise UsageError(
                f"the event id {event_id!r} is not a ULID: an event_id is 26 characters of"
                " Crockford base32, upper case (`replaylog log FEATURE` shows them)"
            )
        names = None
        if feature is not None:
            self.require_log(feature)
            names = [feature]
        self.catch_up(names)
        delivery = self.delivery
        index = self.index
        with index.write():
            if event_id is not None:
                holders = names if names is not None else index.known_features()
                if not any(index.known_event_ids(name, [event_id]) for name in holders):
                    if feature is None:
                        raise StoreError(
                            f"event {event_id} is in no log; `replaylog log FEATURE` lists"
                            " a feature's events"
                        )
                    path = self.log_path(feature)
                    raise StoreError(
                        f"event {event_id} is not in the log of feature {feature!r} ({path});"
                        f" `replaylog log {feature}` lists its events",
                        path=path,
                    )
            return delivery.requeue(names, event_id)

    @_edge
    def rebuild_index(
        self,
        *,
        reset_delivery: bool = False,
        skip_bad: bool = False,
        progress: Callable[[str, int], None] | None = None,
        wait: float | None = None,
    ) -> dict[str, Any]:
        """Build a fresh index from every log and put it in place of the old one.

        The new index is built in a temporary file and renamed over the old one, so a
        crash leaves the old index as it was. Delivery state (of events that still exist,
        and that the old index remembers of absent ones) is carried over from the old
        index when it is readable, unless ``reset_delivery``. The swap waits for a
        running replay to finish, ``wait`` seconds at most (default 300).

        Every log is read; if any cannot be, :class:`LogsUnreadableError` lists each bad
        one and the old index is kept, unless ``skip_bad``: then the index is built from
        the readable logs and the result's ``"skipped"`` lists the others.
        """
        from .index.rebuild import REPLAY_WAIT_SECONDS, rebuild

        if wait is not None and not (0 <= wait < float("inf")):
            raise UsageError(f"wait must be a number of seconds >= 0, not {wait!r}")
        self.close()
        # Every log there is; a linked folder on the way to one is a bad log (SPEC 12).
        names, strays = self._listing()
        logs = [(name, _log.log_path(os.path.join(self.logs_root, name))) for name in names]
        kept = (
            "the index was not rebuilt and stays as it was (`rebuild-index --skip-bad`"
            " builds it from the other logs)"
        )
        if strays and not skip_bad:
            # A log the index cannot take (its folder's name is not a feature's) keeps the
            # old index as any bad log does; the others are read all the same, so that the
            # error lists every bad one.
            raise _unreadable({**self._unreadable_logs(logs, progress), **strays}, kept)
        result, bad = rebuild(
            self.index_path,
            logs,
            root=self.root,
            reset_delivery=reset_delivery,
            skip_bad=skip_bad,
            progress=progress,
            wait=REPLAY_WAIT_SECONDS if wait is None else wait,
        )
        if bad and not skip_bad:
            raise _unreadable(bad, kept)
        bad.update(strays)
        if bad:
            result["skipped"] = [
                {"feature": name, "path": err.path, "line": err.line, "message": str(err)}
                for name, err in sorted(bad.items())
            ]
        return result

    def _unreadable_logs(
        self, logs: list[tuple[str, str]], progress: Callable[[str, int], None] | None
    ) -> dict[str, StoreError]:
        """The logs of ``logs`` that cannot be read, each as its first error; nothing is
        written (a rebuild that will keep the old index lists them all)."""
        bad: dict[str, StoreError] = {}
        for name, path in logs:
            try:
                refuse_links(self.root, os.path.dirname(path))  # SPEC section 12
                error = next((p for p in _log.verify_log(path) if p.level == "error"), None)
            except StoreError as exc:
                exc.path = exc.path or path
                bad[name] = exc
            else:
                if error is not None:
                    bad[name] = StoreError(error.message, path=error.path, line=error.line)
            if progress is not None:
                progress(name, 0)
        return bad

    # ------------------------------------------------------------------ replay

    @_edge
    def replay(
        self,
        url: str,
        *,
        token: str | None = None,
        batch_size: int = 100,
        max_retries: int = 3,
        backoff_base: float = 1.0,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        feature: str | None = None,
        allow_insecure_http: bool = False,
        on_batch: Callable[[int, int], None] | None = None,
        deadline: float | None = None,
        wait_for_lock: bool = True,
    ) -> ReplayReport:
        """Send pending events to ``url`` in Lamport order (SPEC section 5).

        Raises :class:`TransientDeliveryError` when retries are spent (events stay
        pending), :class:`AuthenticationError` on 401/403 and :class:`DeliveryError`
        on 404, 412 and other stops. ``on_batch(events_done, events_total)`` reports
        progress. ``timeout`` bounds each request from connect to the last byte.
        """
        from .replay import ReplayConfig

        config = ReplayConfig(
            url=url,
            token=token,
            batch_size=batch_size,
            max_retries=max_retries,
            backoff_base=backoff_base,
            timeout=timeout,
            allow_insecure_http=allow_insecure_http,
            deadline=deadline,
            node_id=self.node_id,
        )
        return self._replay(
            config,
            transport=transport,
            feature=feature,
            on_batch=on_batch,
            wait_for_lock=wait_for_lock,
            refused_stay_pending=False,
        )

    def _replay(
        self,
        config: ReplayConfig,
        *,
        transport: httpx.BaseTransport | None,
        feature: str | None,
        on_batch: Callable[[int, int], None] | None,
        wait_for_lock: bool,
        refused_stay_pending: bool,
    ) -> ReplayReport:
        """One replay run. With ``refused_stay_pending`` (emit) the server's rejections
        leave events pending, with the reason as their last error, instead of failed."""
        from .replay import PendingEvent, Replayer
        from .reports import ReplayReport

        # A bad name is refused before the replay lock creates its file (section 1).
        names = [_log.validate_feature_name(feature)] if feature is not None else None
        with self._replay_lock(wait_for_lock):
            bad: dict[str, StoreError] = {}
            if names is None:
                bad = self._catch_up_all()
                if bad:  # SPEC 10: the readable logs are replayed, the bad ones listed
                    names = [f for f in self.index.known_features() if f not in bad]
            else:
                self.catch_up(names)
            delivery = self.delivery
            total = self._count_pending(names)
            accepted = rejected = batches = attempts = done = 0
            stopped: str | None = None
            with _LineReader(self) as reader, Replayer(config, transport=transport) as replayer:
                # Tuples, not lists: the collector stops tracking them (Delivery.pending).
                rows_of: dict[str, tuple[tuple[str, int], ...]] = {}

                def queue() -> Iterator[PendingEvent]:
                    for row in delivery.pending(names):
                        event_id = row.event_id
                        rows_of[event_id] = rows_of.get(event_id, ()) + ((row.feature, row.row_id),)
                        yield PendingEvent(event_id, reader.line(row), row.feature)

                for result in replayer.run(queue()):
                    attempts += result.attempts
                    with self.index.write():
                        delivery.record(
                            accepted=result.accepted,
                            rejected={} if refused_stay_pending else result.rejected,
                            retried=result.rejected if refused_stay_pending else None,
                            transient=(
                                (result.event_ids, result.transient_error)
                                if result.transient_error
                                else None
                            ),
                            now=utc_now(),
                            rows_of=rows_of,
                        )
                    # Counted in the index's events: one id may be in two logs (a copied
                    # log), each a row of its own that the answer settles.
                    settled = {e: len(rows_of.get(e, ())) or 1 for e in result.event_ids}
                    for event_id in result.event_ids:
                        rows_of.pop(event_id, None)
                    if result.transient_error:
                        stopped = result.transient_error
                        break
                    batches += 1
                    accepted += sum(map(settled.__getitem__, result.accepted))
                    rejected += sum(map(settled.__getitem__, result.rejected))
                    done += sum(settled.values())
                    if on_batch is not None:
                        on_batch(done, total)
            report = ReplayReport(accepted, rejected, self._count_pending(names), batches, attempts)
        if stopped is not None:
            error = TransientDeliveryError(
                f"replay stopped: {stopped}; {report.pending} event(s) stay pending and will"
                " be sent by the next replay"
            )
            error.report = report  # type: ignore[attr-defined]
            raise error
        if bad:
            raise _unreadable(bad, "not replayed; every other log was", report)
        return report

    def _count_pending(self, names: list[str] | None) -> int:
        return self.delivery.pending_count(names)

    @contextlib.contextmanager
    def _replay_lock(self, wait: bool) -> Iterator[None]:
        """One replay at a time per index, so no event is in two runs' batches at once."""
        with replay_lock(self.index_path, timeout=None if wait else 0.0) as held:
            if not held:
                raise DeliveryError("another replay is running for this index")
            yield

    @_edge
    def emit(
        self,
        feature: str,
        event_type: str,
        aggregate_id: str,
        payload: Mapping[str, Any] | None = None,
        *,
        url: str,
        token: str | None = None,
        sync_timeout: float = 2.0,
        causation_id: str | None = None,
        correlation_id: str | None = None,
        allow_insecure_http: bool = False,
        transport: httpx.BaseTransport | None = None,
    ) -> EmitResult:
        """Append durably, then try to deliver within ``sync_timeout`` seconds in all.

        Delivery failing for any reason (offline, refused, slow) is not an error: the
        event is safe in the log, stays pending (a refusal too: the next ``replay``
        sends it again), and ``warning`` says what happened.
        A URL or token that can never be used (plain http:// to another host, no host)
        is a :class:`UsageError` before anything is written, like a missing URL.
        """
        from .replay import ReplayConfig, is_number
        from .reports import EmitResult

        started = time.monotonic()
        ReplayConfig(url=url, token=token, allow_insecure_http=allow_insecure_http)
        if not (is_number(sync_timeout) and 0 <= sync_timeout < math.inf):
            raise UsageError(
                f"the sync timeout must be a finite number of seconds, at least 0, got"
                f" {sync_timeout!r}"
            )
        event = self.append(
            feature,
            event_type,
            aggregate_id,
            payload,
            causation_id=causation_id,
            correlation_id=correlation_id,
        )
        deadline = started + sync_timeout
        try:
            config = ReplayConfig(
                url=url,
                token=token,
                max_retries=0,
                timeout=max(0.05, deadline - time.monotonic()),
                allow_insecure_http=allow_insecure_http,
                deadline=deadline,
                node_id=self.node_id,
            )
            self._replay(
                config,
                transport=transport,
                feature=None,
                on_batch=None,
                wait_for_lock=False,
                refused_stay_pending=True,
            )
        except Exception as exc:  # noqa: BLE001 - offline-first: delivery never fails an emit
            if self._emitted_status(feature, event.event_id)[0] == "delivered":
                # The run went on after this event (another log is bad, say).
                return EmitResult(event, True, f"event {event.event_id} delivered, but: {exc}")
            # A transient stop already says that the event stays pending.
            pending = "" if isinstance(exc, TransientDeliveryError) else "; it stays pending"
            return EmitResult(
                event, False, f"event {event.event_id} saved, not delivered: {exc}{pending}"
            )
        status, error = self._emitted_status(feature, event.event_id)
        if status == "delivered":
            return EmitResult(event, True)
        why = f" ({error})" if error else ""
        return EmitResult(
            event,
            False,
            f"event {event.event_id} saved, not delivered yet{why}; it stays pending and"
            " the next replay sends it again",
        )

    def _emitted_status(self, feature: str, event_id: str) -> tuple[str | None, str | None]:
        """An emitted event's delivery status and last error, (None, None) if unknown."""
        from .index.delivery import emitted_status

        try:
            return emitted_status(self.index.conn, feature, event_id)
        except Exception:  # noqa: BLE001 - only a warning depends on it; the event is safe
            return None, None


def _unreadable(
    bad: dict[str, StoreError], done: str, partial: object = None
) -> LogsUnreadableError:
    """The error of a command over many logs: ``done`` says what it did all the same."""
    problems = [(err.path or name, err.line, str(err)) for name, err in sorted(bad.items())]
    if len(problems) == 1:
        path, _line, message = problems[0]
        what = f"1 log cannot be read: {path}: {message}"
    else:
        what = f"{len(bad)} logs cannot be read ({', '.join(sorted(bad))})"
    return LogsUnreadableError(
        f"{what}; {done}. Fix what each problem names (`replaylog verify` lists them all):"
        " a torn last line with `replaylog repair`, a bad line by hand, a link or a"
        " misnamed folder as its message says",
        problems=problems,
        partial=partial,
    )


class _LineReader:
    """Reads indexed lines back from the logs by offset, one open file per feature."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.fds: dict[str, int] = {}

    def __enter__(self) -> _LineReader:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def line(self, row: Any) -> bytes:
        fd = self.fds.get(row.feature)
        if fd is None:
            path = self.store.log_path(row.feature)
            try:
                fd = open_regular(path, os.O_RDONLY)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    raise StoreError(
                        f"{path} disappeared while its events were being read; run again",
                        path=path,
                    ) from exc
                raise
            self.fds[row.feature] = fd
        data = os.pread(fd, row.length, row.offset)
        if len(data) != row.length or row.event_id.encode() not in data:
            # Only a log changed since the index caught up can get here (rewritten, or
            # edited where the catch-up of a grown log does not look): the next catch-up
            # must index it again from the start, so the next run does not fail too.
            path = self.store.log_path(row.feature)
            self.store.index.forget_progress(row.feature)
            raise StoreError(
                f"{path} changed while its events were being read (expected event"
                f" {row.event_id} at byte {row.offset}); it is indexed again by the next"
                " command: run again",
                path=path,
            )
        return data
