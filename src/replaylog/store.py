"""EventStore (SPEC section 7): the logs, the index and replay, tied together.

The log is the truth; the index follows it. Every method that reports or uses index
state first catches up with the logs.

An append locks the feature's log. The first append of a store to a log catches the
index up with it, takes its Lamport values from the index, writes and fsyncs the log,
and records the new lines in the index. The store then keeps the log open: a later
append that finds the log exactly as the store left it (the same file, the same size) only
takes its Lamport values from the clock file, writes and fsyncs. The index takes those
lines in when it next catches up (SPEC section 4 lets its writes be deferred past an
append, never skipped), in one batch.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import os
import sqlite3
import stat
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from . import log as _log
from .errors import (
    DeliveryError,
    LogsUnreadableError,
    ReplaylogError,
    ReplaylogWarning,
    StoreError,
    TransientDeliveryError,
    UsageError,
    is_log_problem,
    translate,
)
from .index import Index
from .index.locks import _LOCK_EX_NB, replay_lock
from .lines.canonical import LineTemplate, new_line_object
from .lines.envelope import Event, build_event, build_events
from .lines.ids import local_node_id, utc_now
from .posix import open_regular, refuse_links, replace_atomically, temp_beside, wait_for_lock

if TYPE_CHECKING:
    import httpx

    from .clock import ClockFile
    from .index.delivery import Delivery
    from .lines import Line, StatusEvent
    from .replay import ReplayConfig
    from .reports import EmitResult, ReplayReport, VerifyReport

__all__ = ["EventStore", "find_root"]

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


_F = TypeVar("_F", bound=Callable[..., Any])


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


class _OpenLog:
    """A log this store appended to, kept open, and how it looked after that append."""

    __slots__ = ("fd", "path", "ino", "dev", "size", "pid", "clock")

    def __init__(self, fd: int, path: str, st: os.stat_result, clock: ClockFile | None) -> None:
        self.fd = fd
        self.path = path
        self.pid = os.getpid()
        self.ino, self.dev, self.size = st.st_ino, st.st_dev, st.st_size
        # The index's clock file, open in this process, or None: the next appends take
        # their values from it without going through the index.
        self.clock = clock

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


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
        self.root = os.path.abspath(os.fspath(root))
        self.logs_root = os.path.join(self.root, logs_dir)
        self.index_path = (
            os.path.abspath(os.fspath(index_path))
            if index_path is not None
            else os.path.join(self.root, ".replaylog", "queue.db")
        )
        self.node_id = node_id or local_node_id()
        self.fsync = fsync
        self._index: Index | None = None
        self._seen_all_logs = False
        self._delivery: Delivery | None = None
        self._open_logs: dict[str, _OpenLog] = {}

    def __repr__(self) -> str:
        return f"EventStore(root={self.root!r}, index_path={self.index_path!r})"

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the index and the logs kept open (every append is complete on return)."""
        for open_log in self._open_logs.values():
            open_log.close()
        self._open_logs.clear()
        if self._index is not None and self._index.pid != os.getpid():
            _inherited.append(self._index)  # a forked child's copy: its parent's to close
            self._delivery = self._index = None
        if self._delivery is not None:
            self._delivery.close()
            self._delivery = None
        if self._index is not None:
            self._index.close()
            self._index = None

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
        try:
            names = os.listdir(self.logs_root)
        except FileNotFoundError:
            return []
        except NotADirectoryError as exc:
            raise StoreError(f"{self.logs_root} is not a folder", path=self.logs_root) from exc
        found = []
        for name in names:
            try:
                _log.validate_feature_name(name)
            except UsageError:
                continue
            if os.path.lexists(os.path.join(self.logs_root, name, _log.EVENTS_FILENAME)):
                found.append(name)
        return sorted(found)

    # ------------------------------------------------------------------ index

    @property
    def index(self) -> Index:
        index = self._index
        if index is not None and index.pid != os.getpid():
            # A forked child: SQLite connections must not cross a fork. The parent's is
            # set aside, never used or closed here, and the child opens its own.
            _inherited.append(index)
            self._index = index = None
            self._delivery = None
        if index is None:
            index = self._index = Index(self.index_path)
        return index

    @property
    def delivery(self) -> Delivery:
        if self._delivery is None:
            from .index.delivery import Delivery

            self._delivery = Delivery(self.index.conn)
        return self._delivery

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
        (SPEC section 10: one bad log does not stop the others)."""
        index = self.index
        bad: dict[str, StoreError] = {}
        for name in sorted(set(self.features()) | set(index.known_features())):
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
        obj = new_line_object(
            event_type, aggregate_id, payload, causation_id, correlation_id, self.node_id
        )
        if feature in self._open_logs:  # a name checked when its log was first opened
            events = self._append_to_open_log(feature, [LineTemplate.of_new(obj)], [obj])
            if events is not None:
                return events[0]
        return self._append(feature, [obj])[0]

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
        objs = []
        given_ids = []
        for item in events:
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
        return self._append(feature, objs, given_ids)

    _ITEM_KEYS = frozenset(
        {"event_type", "aggregate_id", "payload", "causation_id", "correlation_id"}
    )

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

    def _append(
        self, feature: str, objs: list[dict[str, Any]], given_ids: list[str] | None = None
    ) -> list[Event]:
        """Append line objects; ``given_ids``: ids that came from the caller's Events (ids
        made here are new by construction, so only those are looked up in the index)."""
        feature_dir = self.feature_dir(feature)
        if not objs:
            return []
        # Serializing checks everything that can be refused, before the log is touched.
        templates = [LineTemplate.of(obj) for obj in objs]
        ids = [obj["event_id"] for obj in objs]
        if len(set(ids)) != len(ids):
            twice = next(i for i in ids if ids.count(i) > 1)
            raise UsageError(f"event {twice} is twice in one append; each event_id once")
        if not given_ids:
            events = self._append_to_open_log(feature, templates, objs)
            if events is not None:
                return events
        index = self.index
        if not self._seen_all_logs:
            # Once per store (so once per command): lines merged into other logs since
            # the index last looked (a `git pull`) raise the clock before this append.
            # Later appends of a long-lived store catch up with their own log only.
            for name in self.features():
                if name == feature:
                    continue  # caught up below, under the log's own lock
                try:
                    self.catch_up([name])
                except StoreError:
                    # Another log's problem is reported by that log's own commands;
                    # it must not stop an append to this one.
                    continue
            self._seen_all_logs = True
        with _log.LogWriter(feature_dir, fsync=self.fsync) as writer:
            with index.write():
                index._catch_up_locked(feature, writer.path, lock_log=False)
                known = index.known_event_ids(feature, given_ids) if given_ids else []
                if known:
                    # The same id again would be a second, different line of one event.
                    raise UsageError(
                        f"event {known[0]} is already in the log of {feature!r};"
                        " a new event needs a new event_id"
                    )
                first = index.reserve_clock(len(objs))
            progress = index.progress(feature)
            size_before, lines_before = (progress[0], progress[1]) if progress else (0, 0)
            lines = [t.line(first + k) for k, t in enumerate(templates)]
            offset = writer.write(lines)
            # A torn (but valid) last line was completed by this write: it is a line too.
            number = lines_before + (1 if size_before < offset else 0)
            rows = []
            for k, (line, obj) in enumerate(zip(lines, objs, strict=True)):
                clock = obj["lamport_clock"] = first + k
                number += 1
                rows.append(
                    (
                        feature,
                        number,
                        offset,
                        len(line) - 1,
                        obj["event_id"],
                        obj["event_type"],
                        obj["aggregate_id"],
                        obj["node_id"],
                        clock,
                    )
                )
                offset += len(line)
            try:
                index.add_appended(
                    feature,
                    writer.path,
                    rows,
                    size=writer.size,
                    line_count=number,
                    fd=writer.fd,
                    last_line=lines[-1],
                )
            except (OSError, sqlite3.Error) as exc:
                # The lines are durable in the log, so the append is done (SPEC section
                # 12): reporting a failure would make a retry write them twice. The
                # index takes them in when it next catches up (section 4).
                self._warn_index_deferred(len(lines), exc)
            self._keep_open(feature, writer)
        return build_events(objs)  # the line objects are not used again: no copies

    def _warn_index_deferred(self, count: int, exc: BaseException) -> None:
        error = translate(exc, index=self.index_path)
        warnings.warn(
            ReplaylogWarning(
                f"{count} event(s) saved in the log, but the index could not take them in"
                f" yet ({error}); the next command that can write the index catches up"
            ),
            stacklevel=5,
        )

    def _keep_open(self, feature: str, writer: _log.LogWriter) -> None:
        """Keep the log of ``writer`` open for the next appends; its lock is released."""
        old = self._open_logs.pop(feature, None)
        if old is not None:
            old.close()
        st = os.fstat(writer.fd)
        clock = self._index.opened_clock() if self._index is not None else None
        open_log = _OpenLog(writer.detach(), writer.path, st, clock)
        fcntl.flock(open_log.fd, fcntl.LOCK_UN)
        self._open_logs[feature] = open_log

    def _append_to_open_log(
        self, feature: str, templates: list[LineTemplate], objs: list[dict[str, Any]]
    ) -> list[Event] | None:
        """Append to a log this store left open, if nobody changed it since; None when
        the full append must run (first append, another writer, a rewrite, a fork)."""
        open_log = self._open_logs.get(feature)
        if open_log is None or self._index is None:
            return None
        clock = open_log.clock
        if open_log.pid != os.getpid() or clock is None or clock.fd < 0:
            # A forked child: an inherited descriptor would share its parent's locks.
            self._open_logs.pop(feature).close()
            return None
        fd = open_log.fd
        flock = fcntl.flock
        try:
            flock(fd, _LOCK_EX_NB)
        except BlockingIOError:
            wait_for_lock(fd, fcntl.LOCK_EX, f"the lock on {open_log.path}")
        try:
            first = None
            # Nothing new in the log since this store's last append (the _OpenLog checks,
            # written out): every value in it is at most the clock's, so the clock alone
            # gives the next ones.
            if os.lseek(fd, 0, os.SEEK_END) == open_log.size:
                try:
                    here = os.lstat(open_log.path)
                except OSError:
                    here = None
                if here is not None and here.st_ino == open_log.ino and here.st_dev == open_log.dev:
                    first = clock.reserve(len(templates))
            if first is None:
                self._open_logs.pop(feature).close()  # closing releases the lock
                return None
            if len(templates) == 1:
                data = templates[0].line(first)
            else:
                data = b"".join([t.line(first + k) for k, t in enumerate(templates)])
            try:
                _log.write_durably(fd, data, open_log.size, self.fsync, open_log.path)
            except BaseException:
                self._open_logs.pop(feature).close()
                raise
            open_log.size += len(data)
        finally:
            if open_log.fd >= 0:
                flock(fd, fcntl.LOCK_UN)
        if len(objs) == 1:
            objs[0]["lamport_clock"] = first
            return [build_event(objs[0])]
        for k, obj in enumerate(objs):
            obj["lamport_clock"] = first + k
        return build_events(objs)

    # ------------------------------------------------------------------ reading

    @_edge
    def read(self, feature: str) -> list[Line]:
        """Every line of a feature in file order (identical duplicate lines once), each as
        its kind's record: :class:`Event` for envelopes, and spec-kitty's kinds."""
        return _log.read_events(self.feature_dir(feature))

    def iter_events(self, feature: str) -> Iterator[Line]:
        """Stream a feature's lines in file order, in bounded memory."""
        return _edge_iter(self, _log.iter_events(self.feature_dir(feature)))

    def log(
        self,
        feature: str,
        *,
        event_type: str | None = None,
        aggregate_id: str | None = None,
        limit: int | None = None,
    ) -> Iterator[Line]:
        """``replaylog log``: a feature's lines in file order, filtered as
        :func:`replaylog.lines.matches` says, at most ``limit`` of them."""
        from .lines import matches

        if limit == 0:
            return
        shown = 0
        for line in self.iter_events(feature):
            if matches(line, type=event_type, aggregate=aggregate_id):
                yield line
                shown += 1
                if limit is not None and shown >= limit:
                    return

    @_edge
    def read_raw(self, feature: str) -> list[dict[str, Any]]:
        """A feature's line objects exactly as in the log, in file order."""
        return _log.read_events_raw(self.feature_dir(feature))

    @_edge
    def status(self, feature: str | None = None) -> dict[str, Any]:
        """Counts per feature (events, pending, delivered, failed), totals, and the clock."""
        names = [feature] if feature is not None else None
        bad = self._catch_up_all() if names is None else {}
        if names is not None:
            self.catch_up(names)
        counts = self.delivery.counts(names)
        listed = names if names is not None else sorted(set(self.features()) | set(counts))
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

        feature_dir = self.feature_dir(feature)
        if not os.path.isdir(feature_dir):
            self.require_log(feature)
        meta = _feature_meta(feature_dir)
        lines = _log.read_events_raw(feature_dir)
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
        bad: dict[str, StoreError] = {}
        for name in self.features():
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
        and touches no file. The log is read and appended under its exclusive lock, so
        concurrent moves see each other. When the feature has a ``status.json``, the new
        snapshot is written there atomically. A feature without a log gets one, as
        spec-kitty's first transition makes it.

        Once the line is durable the move has happened: should ``status.json`` or the
        index fail after that, a ``ReplaylogWarning`` says so (the index catches up at the
        next command; ``replaylog board FEATURE --json`` gives the snapshot).
        """
        from .board import canonical_lane, check_move, current_lane, new_transition, snapshot
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
        meta = _feature_meta(feature_dir)
        mission_id = _mission_id(meta, feature_dir)
        status_path = os.path.join(feature_dir, STATUS_FILENAME)
        status_stat = _status_json_stat(status_path)

        def transition(from_lane: str) -> tuple[dict[str, Any], StatusEvent, bytes]:
            obj = new_transition(
                event_id=generate_event_id(),
                at=_transition_time(),
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
        path = _log.log_path(feature_dir)
        if not os.path.lexists(path):
            # LogWriter would create the log: a refused first move must not.
            check_move("genesis", target, force=force, wp_id=wp_id)

        with _log.LogWriter(feature_dir, fsync=self.fsync) as writer:
            try:
                lines = [line.obj for line in _log.scan_log(writer.path, lock=False)]
                try:
                    before = snapshot(lines, meta=meta)
                except StoreError as exc:
                    exc.path = exc.path or writer.path
                    raise
                source = current_lane(before, wp_id)
                check_move(source, target, force=force, wp_id=wp_id)
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
                    index._catch_up_locked(feature, writer.path, lock_log=False)
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
                    _write_status_json(status_path, after, fsync=self.fsync)
                except (ReplaylogError, OSError, ValueError) as exc:
                    warnings.warn(
                        f"{record.event_id} is in the log, but {status_path} could not be"
                        f" updated: {exc}; `replaylog board {feature} --json` gives the"
                        " snapshot",
                        ReplaylogWarning,
                        stacklevel=2,
                    )
            try:
                with index.write():
                    index._catch_up_locked(feature, writer.path, lock_log=False)
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
        """Check every log (or the ones named): errors, and warnings such as duplicates."""
        names = list(features) if features is not None else self.features()
        from .reports import Problem, VerifyReport

        problems: list[Problem] = []
        for name in names:
            path = self.log_path(name)
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
        """Make ``failed`` events ``pending`` again; returns how many."""
        names = [feature] if feature is not None else None
        self.catch_up(names)
        delivery = self.delivery
        with self.index.write():
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
        logs = [
            (name, _log.log_path(os.path.join(self.logs_root, name))) for name in self.features()
        ]
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
            raise _unreadable(
                bad,
                "the index was not rebuilt and stays as it was (`rebuild-index --skip-bad`"
                " builds it from the other logs)",
            )
        if bad:
            result["skipped"] = [
                {"feature": name, "path": err.path, "line": err.line, "message": str(err)}
                for name, err in sorted(bad.items())
            ]
        return result

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
                features_of: dict[str, list[str]] = {}

                def queue() -> Iterator[PendingEvent]:
                    for row in delivery.pending(names):
                        features_of.setdefault(row.event_id, []).append(row.feature)
                        yield PendingEvent(row.event_id, reader.line(row), row.feature)

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
                            features_of=features_of,
                        )
                    for event_id in result.event_ids:
                        features_of.pop(event_id, None)
                    if result.transient_error:
                        stopped = result.transient_error
                        break
                    batches += 1
                    accepted += len(result.accepted)
                    rejected += len(result.rejected)
                    done += len(result.event_ids)
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
        return sum(c["pending"] for c in self.delivery.counts(names).values())

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
        from .replay import ReplayConfig
        from .reports import EmitResult

        started = time.monotonic()
        ReplayConfig(url=url, token=token, allow_insecure_http=allow_insecure_http)
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


# --------------------------------------------------------------------------- the board's files

#: The snapshot spec-kitty keeps beside a log; ``move`` rewrites it when it is there.
STATUS_FILENAME = "status.json"
META_FILENAME = "meta.json"
_MAX_SIDE_FILE = 64 << 20  # meta.json and status.json are small; a huge one is refused


def _read_side_file(path: str, what: str) -> bytes | None:
    """The bytes of a file beside a log (never through a symbolic link), None if absent."""
    try:
        fd = open_regular(path, os.O_RDONLY, refusal=f"the {what} must be one")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the {what}: {exc.strerror}", path=path) from exc
    try:
        st = os.fstat(fd)
        if st.st_size > _MAX_SIDE_FILE:
            raise StoreError(f"{path}: the {what} is larger than 64 MiB", path=path)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the {what}: {exc.strerror}", path=path) from exc
    finally:
        os.close(fd)


def _feature_meta(feature_dir: str) -> dict[str, Any] | None:
    """The feature's ``meta.json`` (spec-kitty's mission metadata), None when absent."""
    path = os.path.join(feature_dir, META_FILENAME)
    data = _read_side_file(path, "feature's meta.json")
    if data is None:
        return None
    try:
        meta = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise StoreError(
            f"{path}: the feature's meta.json is not valid JSON ({exc}); correct it or remove it",
            path=path,
        ) from exc
    if not isinstance(meta, dict):
        raise StoreError(
            f"{path}: the feature's meta.json must hold a JSON object, not"
            f" {type(meta).__name__}; correct it or remove it",
            path=path,
        )
    return meta


def _mission_id(meta: dict[str, Any] | None, feature_dir: str) -> str | None:
    """``mission_id`` of ``meta.json`` for a transition line: a non-empty string, or none."""
    value = meta.get("mission_id") if meta else None
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        path = os.path.join(feature_dir, META_FILENAME)
        raise StoreError(
            f"{path}: 'mission_id' must be a non-empty string, got {value!r}; correct it",
            path=path,
        )
    return value


def _status_json_stat(path: str) -> os.stat_result | None:
    """The ``status.json`` a move will rewrite, None when absent; never a link or special file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"{path}: cannot look at status.json: {exc.strerror}", path=path) from exc
    if stat.S_ISLNK(st.st_mode):
        raise StoreError(
            f"{path} is a symbolic link; replaylog never replaces it. Replace it with the"
            " real file, or remove it. Nothing was written",
            path=path,
        )
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(
            f"{path} is not a regular file; replaylog never replaces it. Nothing was written",
            path=path,
        )
    return st


def _transition_time() -> str:
    """Now, as spec-kitty dates a transition: UTC, microseconds always, ``+00:00``."""
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def _write_status_json(path: str, snap: dict[str, Any], *, fsync: bool) -> None:
    """Replace ``status.json`` by ``snap`` atomically, written as spec-kitty writes it.

    Keys of the old file that the board does not make (spec-kitty's ``retrospective``,
    made from its retrospective events, which a move never adds) are kept as they were.
    A temporary file in the same folder is written, fsynced and renamed over the old
    one, then the folder is fsynced; on failure the old file stays and the temporary
    one is removed.
    """
    old = _status_json_stat(path)
    out = dict(snap)
    if old is not None:
        try:
            previous = json.loads((_read_side_file(path, "status.json") or b"").decode("utf-8"))
        except (StoreError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            previous = None  # spec-kitty overwrites a damaged snapshot too, but says so here
            warnings.warn(
                f"{path} was not a readable snapshot ({exc}); it was replaced by the board"
                " of the log",
                ReplaylogWarning,
                stacklevel=2,
            )
        if isinstance(previous, dict):
            for key, value in previous.items():
                out.setdefault(key, value)
    data = (json.dumps(out, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode("utf-8")

    def write(fd: int) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    fd, tmp = temp_beside(path, ".tmp")
    # Still a plain file (or gone) just before the rename: never replace anything else.
    replace_atomically(
        fd,
        tmp,
        path,
        write,
        mode=stat.S_IMODE(old.st_mode) if old is not None else 0o644,
        fsync=fsync,
        check=lambda: _status_json_stat(path),
    )


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
        f"{what}; {done}. Correct or remove the lines named by hand (`replaylog verify`"
        " lists every problem)",
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
