"""Reading a log strictly (SPEC sections 3 and 8): parse, check and dedup each line.

Readers take a shared ``flock`` only for the moment they learn the log's size, so a
reader never sees half of an append and never holds one up. A bad line stops the read
with a :class:`StoreError` naming the line, and memory stays bounded whatever the file
holds. The fast path for whole logs is :mod:`.fastread`; this is the plain path that
judges what the fast one finds unusual.
"""

from __future__ import annotations

import fcntl
import gc
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from ..errors import EventValidationError, StoreError, os_error
from ..lines.canonical import MAX_LINE_BYTES, lone_surrogate_at, same_json
from ..posix import flock, open_regular
from .paths import log_path

if TYPE_CHECKING:
    from ..lines import Line
    from ..reports import Problem


def _import_fast_loads(data: bytes) -> Any:
    """Parse with orjson, imported on first use: its import costs about as much as a
    whole ``replaylog append``, which parses no line of an up-to-date log."""
    global _fast_loads
    try:  # orjson parses several times faster; json is the fallback and the tie-breaker.
        from orjson import loads
    except ImportError:  # pragma: no cover - orjson is a dependency
        loads = json.loads  # type: ignore[assignment]
    _fast_loads = loads
    return loads(data)


_fast_loads: Callable[[bytes], Any] = _import_fast_loads

__all__ = [
    "GcPaused",
    "InvalidJson",
    "LogLine",
    "Unclean",
    "iter_events",
    "json_error_reason",
    "last_newline",
    "line_object_at",
    "parse_line",
    "read_events",
    "read_events_raw",
    "same_json",
    "scan_log",
    "snippet",
    "verify_log",
]

_CHUNK = 1 << 20
_SNIPPET = 80
_JSON_SPACE = b" \t\r"  # a line of only these (or nothing) is blank

# orjson reads an integer wider than 64 bits as a float, silently. Such a number is a run
# of at least 19 digits after "-", a bracket, a comma, a colon or white space: mapping
# those bytes to "!" and every digit to "0" finds one with a single bytes.find.
_WIDE_INT = b"!" + b"0" * 19
_NUMBER_MAP = bytes(
    0x21 if b in b"-[,: \t\r\n" else 0x30 if 0x30 <= b <= 0x39 else b for b in range(256)
)


class LogLine(NamedTuple):
    """One non-blank line of a log: where it is and what it holds."""

    number: int  # 1-based physical line number
    offset: int  # byte offset of the line's first byte
    end: int  # byte offset just past the line's newline (or end of file when torn)
    obj: dict[str, Any]  # the parsed JSON object
    terminated: bool  # False only for a torn last line that still parses


def snippet(raw: bytes) -> str:
    """The start of a bad line as an error message quotes it: printable, at most 80 characters."""
    text = raw[: 4 * _SNIPPET].decode("utf-8", "replace")[:_SNIPPET]
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _has_wide_int(data: bytes) -> bool:
    """True if ``data`` may hold an integer orjson would turn into a float."""
    return data.translate(_NUMBER_MAP).find(_WIDE_INT) >= 0


class InvalidJson(StoreError, ValueError):
    """A line that is not JSON an event may hold; its message says why, in a user's words
    (never the parser's own: it may name Python internals). The readers quote the line
    with its number and path before it; a caller that parses a single line meets a
    :class:`StoreError` all the same, never a bare ValueError."""


def _no_constants(name: str) -> Any:
    raise InvalidJson(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: valid JSON syntax, but no event may hold it
        raise InvalidJson(f"the number {text[:40]} is beyond a double's range")
    return value


# What json's syntax errors mean, said for a log's reader (json.JSONDecodeError.msg).
_SYNTAX = {
    "Expecting value": "no JSON value at character {at}",
    "Expecting property name enclosed in double quotes": "a key in double quotes expected"
    " at character {at}",
    "Expecting ':' delimiter": "':' expected at character {at}",
    "Expecting ',' delimiter": "',' or a closing bracket expected at character {at}",
    "Unterminated string starting at": "the string at character {at} is not closed",
    "Invalid control character at": "a control character not escaped, at character {at}",
    "Invalid \\escape": "a backslash escape JSON does not have, at character {at}",
    "Invalid \\uXXXX escape": "a \\u escape without four hex digits, at character {at}",
    "Extra data": "more after the JSON value, from character {at}",
}


def json_error_reason(exc: BaseException) -> str:
    """Why :mod:`json` refused a text, in the project's words (its own may name Python
    internals: "use sys.set_int_max_str_digits()")."""
    if isinstance(exc, RecursionError):
        return "objects and arrays nested too deeply to read: readers stop at about 1,000 levels"
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text (byte {exc.start + 1})"
    if isinstance(exc, json.JSONDecodeError):
        if not exc.doc.strip(" \t\r\n"):
            return "only white space, no JSON value"
        if exc.msg != "Unterminated string starting at" and not exc.doc[exc.pos :].strip():
            return "the line ends before its JSON value does"
        return _SYNTAX.get(exc.msg, "not JSON at character {at}").format(at=exc.pos + 1)
    if "integer string conversion" in str(exc):  # int()'s limit (Python 3.11 and later)
        limit = getattr(sys, "get_int_max_str_digits", lambda: 4300)()
        return f"an integer of more than {limit} digits, more than a reader takes"
    return "not JSON"


def parse_line(raw: bytes) -> Any:
    """Parse one line strictly: orjson first, then json for what orjson cannot hold.

    A line that is not JSON an event may hold raises :class:`InvalidJson`, whose message
    is the reason: bad syntax, NaN or Infinity, a number beyond a double's range, an
    integer too long or nesting too deep to read, bytes that are not UTF-8, or a string
    holding a lone surrogate (``"\\ud800"``: half of a UTF-16 pair, not text; neither
    orjson nor msgspec reads one, and no reader could print or encode it).
    """
    if not _has_wide_int(raw):
        try:
            return _fast_loads(raw)
        except ValueError:
            pass
    # json.loads keeps integers wider than 64 bits exact (orjson reads them as floats or
    # refuses them); it must still refuse NaN/Infinity and invalid UTF-8 as orjson does.
    try:
        obj = json.loads(
            raw.decode("utf-8"), parse_constant=_no_constants, parse_float=_finite_float
        )
    except InvalidJson:
        raise
    except (ValueError, RecursionError) as exc:
        raise InvalidJson(json_error_reason(exc)) from exc
    # orjson refuses a lone surrogate and json takes it: only such a line (or one with a
    # wide integer) gets here, and only one with such an escape is looked through.
    if b"\\ud" in raw or b"\\uD" in raw:
        where = lone_surrogate_at(obj)
        if where is not None:
            raise InvalidJson(
                f"{where} holds a lone surrogate (half of a UTF-16 pair), which is not text"
            )
    return obj


def _raw_lines(fd: int, start: int, limit: int | None) -> Iterator[tuple[int, bytes, bool]]:
    """Yield ``(offset, line_without_newline, terminated)`` from ``start`` in bounded memory.

    A line longer than the limit is yielded as its first bytes with ``terminated`` False
    and the scan stops there: nothing past it can be trusted to be a line boundary.
    """
    offset = start
    carry = b""
    pos = start
    end = limit
    while True:
        want = _CHUNK if end is None else min(_CHUNK, end - pos)
        chunk = os.pread(fd, want, pos) if want > 0 else b""
        pos += len(chunk)
        if not chunk:
            if carry:
                yield offset, carry, False
            return
        data = carry + chunk if carry else chunk
        parts = data.split(b"\n")
        carry = parts.pop()
        for part in parts:
            yield offset, part, True
            offset += len(part) + 1
        if len(carry) >= MAX_LINE_BYTES:
            yield offset, carry[: MAX_LINE_BYTES + 1], False
            return


def scan_log(
    path: str,
    *,
    start: int = 0,
    start_line: int = 0,
    lock: bool = True,
    dedup: bool = True,
    on_problem: Callable[[StoreError], None] | None = None,
    on_duplicate: Callable[[int, int, str], None] | None = None,
    limit: int | None = None,
    position: list[int] | None = None,
) -> Iterator[LogLine]:
    """Yield every event line of the log at ``path``, strictly.

    A bad line raises :class:`StoreError` (``Line N: invalid JSON: ...`` or ``Line N:
    invalid event structure: ...``) unless ``on_problem`` is given, which then receives
    each problem and the scan goes on (``verify`` uses that). With ``dedup``, a second
    identical line of an ``event_id`` is skipped (``on_duplicate(line, first_line, id)``
    hears of it) and a different one is a problem. With ``lock``, the scan reads the log
    as it was when no append was in progress, holding the shared lock only for that
    moment; ``lock=False`` is for a caller that already holds the log's lock.
    ``position``, when given as ``[offset, line]``, is kept at the end of the last whole
    (newline-terminated) line read, blank ones included: where an incremental reader
    resumes. A missing file yields nothing.
    """
    # Imported here: the line kinds' records cost start-up time, and an append that finds
    # its log as the index left it reads nothing.
    from ..lines import check_line

    try:
        fd = open_regular(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise os_error(exc, path, "read the log") from exc
    try:
        if lock:
            # The shared lock waits out an append in progress; every byte below the size
            # seen then is a complete write that later appends leave alone. Reading only
            # those, the lock can go at once: a slow consumer of this generator
            # (`replaylog log | less`) must not hold up every append to the log.
            flock(fd, fcntl.LOCK_SH, path)
            size = os.fstat(fd).st_size
            fcntl.flock(fd, fcntl.LOCK_UN)
            limit = size if limit is None else min(limit, size)
        seen: dict[str, tuple[int, int, int]] = {}
        number = start_line
        for offset, raw, terminated in _raw_lines(fd, start, limit):
            number += 1
            if position is not None and terminated:
                position[0] = offset + len(raw) + 1
                position[1] = number
            if terminated and not raw.strip(_JSON_SPACE):
                # A blank line. A blank last line without its newline is torn (SPEC 3: a
                # torn tail that is not JSON), as append and repair judge it.
                continue
            problem: StoreError | None = None
            bad_json = True
            obj: Any = None
            if len(raw) > MAX_LINE_BYTES - 1:
                problem = StoreError(
                    f"Line {number}: invalid JSON: {snippet(raw)} (the line is longer than"
                    f" the 1 MiB limit)",
                    path=path,
                    line=number,
                )
            else:
                try:
                    obj = parse_line(raw)
                    bad_json = False
                except (ValueError, RecursionError) as exc:
                    why = f" ({exc})" if isinstance(exc, InvalidJson) else ""
                    problem = StoreError(
                        f"Line {number}: invalid JSON: {snippet(raw)}{why}", path=path, line=number
                    )
            if problem is None and type(obj) is not dict:
                problem = StoreError(
                    f"Line {number}: invalid event structure: a line must hold a JSON object,"
                    f" not {type(obj).__name__ if obj is not None else 'null'}",
                    path=path,
                    line=number,
                )
            if problem is None:
                try:
                    check_line(obj)
                except EventValidationError as exc:
                    problem = StoreError(
                        f"Line {number}: invalid event structure: {exc}", path=path, line=number
                    )
            if problem is None and dedup:
                eid = obj["event_id"]
                first = seen.get(eid)
                if first is None:
                    seen[eid] = (number, offset, len(raw))
                else:
                    first_line, first_offset, first_size = first
                    if same_json(line_object_at(fd, first_offset, first_size), obj):
                        if on_duplicate is not None:
                            on_duplicate(number, first_line, eid)
                        continue
                    problem = StoreError(
                        f"Line {number}: invalid event structure: event_id {eid} already"
                        f" appears at line {first_line} with different content",
                        path=path,
                        line=number,
                    )
            if problem is not None:
                # A line over the limit was cut short: it is the torn tail only if no
                # newline follows it (a look back from the end, on this error path only).
                if (
                    not terminated
                    and bad_json
                    and (
                        len(raw) < MAX_LINE_BYTES or last_newline(fd, os.fstat(fd).st_size) < offset
                    )
                ):
                    problem = StoreError(
                        f"{problem} (the last line is torn: it has no newline; run"
                        f" `replaylog repair` to move it aside)",
                        path=path,
                        line=number,
                    )
                if on_problem is None:
                    raise problem
                on_problem(problem)
                if len(raw) > MAX_LINE_BYTES - 1:
                    return
                continue
            end = offset + len(raw) + (1 if terminated else 0)
            yield LogLine(number, offset, end, obj, terminated)
    finally:
        os.close(fd)


def line_object_at(fd: int, offset: int, size: int | None = None) -> Any:
    """Parse the line at ``offset``, ``size`` bytes when known (to compare duplicate ids)."""
    if size is not None:
        return parse_line(os.pread(fd, size, offset))
    for _, raw, _terminated in _raw_lines(fd, offset, None):
        return parse_line(raw)
    return None


class Unclean(Exception):
    """The fast path met something unusual: :func:`scan_log` must judge the log."""


class GcPaused:
    """Pause the cycle collector for a read (and what is made of it at once, such as a
    board). Reading makes many small objects, none of them cyclic: the collector would
    only walk them again and again (about half the time of a large read). A class rather
    than a generator: a project of many small logs pays for it once per log."""

    __slots__ = ("was_enabled",)

    def __enter__(self) -> None:
        self.was_enabled = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc: object) -> None:
        if self.was_enabled:
            gc.enable()


def read_events_raw(
    feature_dir: str | os.PathLike[str], *, ordered: bool = True
) -> list[dict[str, Any]]:
    """Every line of a feature's log as its JSON object, in file order (every kind).

    Without ``ordered``, an object's keys may come in another order than its line's: for
    a reader that only looks keys up (the board), and faster."""
    from .fastread import read_objects

    path = log_path(feature_dir)
    with GcPaused():
        objs = read_objects(path, ordered=ordered)
        if objs is None:  # something unusual: the plain path judges it, and names it
            objs = [line.obj for line in scan_log(path)]
    return objs


def iter_events(feature_dir: str | os.PathLike[str]) -> Iterator[Line]:
    """Stream the lines of a feature's log in file order, each as its kind's record
    (:class:`Event`, :class:`~replaylog.lines.StatusEvent`, ...), in bounded memory."""
    from ..lines import build_line
    from .fastread import build_records, mixed_chunks

    path = log_path(feature_dir)
    done = 0  # lines given out by the fast path
    try:
        for chunk in mixed_chunks(path):
            yield from build_records(chunk)
            done = chunk.first_line + len(chunk.objs) - 1
        return
    except Unclean:
        pass
    # The plain path reads from the start, so that it knows every id before this point
    # (duplicates), and gives out only what the fast path had not.
    for line in scan_log(path):
        if line.number > done:
            yield build_line(line.obj)


def read_events(feature_dir: str | os.PathLike[str]) -> list[Line]:
    """Every line of a feature's log in file order, each as its kind's record
    (an envelope as :class:`Event`, a transition as :class:`~replaylog.lines.StatusEvent`,
    an annotation as :class:`~replaylog.lines.Annotation`, a record as
    :class:`~replaylog.lines.Record`); ``[]`` when there is no log."""
    path = log_path(feature_dir)
    with GcPaused():
        lines = _read_lines(path)
        if lines is not None:
            return lines
        from ..lines import build_line

        return [build_line(line.obj) for line in scan_log(path)]


def _import_read_lines(path: str) -> list[Line] | None:
    """fastread's read_lines, imported on first use (it imports msgspec, which the
    append path never needs)."""
    global _read_lines
    from .fastread import read_lines

    _read_lines = read_lines
    return read_lines(path)


_read_lines: Callable[[str], list[Line] | None] = _import_read_lines


def verify_log(path: str) -> list[Problem]:
    """Every problem of one log: errors for unreadable lines, warnings for identical duplicates."""
    from ..reports import Problem

    problems: list[Problem] = []

    def problem(err: StoreError) -> None:
        problems.append(Problem(path, err.line, str(err)))

    def duplicate(number: int, first: int, eid: str) -> None:
        problems.append(
            Problem(
                path,
                number,
                f"Line {number}: duplicate of line {first} (event_id {eid}); read once",
                "warning",
            )
        )

    try:
        for _ in scan_log(path, on_problem=problem, on_duplicate=duplicate):
            pass
    except StoreError as err:
        problems.append(Problem(path, err.line, str(err)))
    return problems


def last_newline(fd: int, size: int) -> int:
    """The offset of the last newline in the first ``size`` bytes of ``fd``, or -1."""
    pos = size
    while pos > 0:
        step = min(_CHUNK, pos)
        block = os.pread(fd, step, pos - step)
        newline = block.rfind(b"\n")
        if newline >= 0:
            return pos - step + newline
        pos -= step
    return -1
