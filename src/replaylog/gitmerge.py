"""Git integration (SPEC section 9): the merge driver, ``git-setup`` and ``verify``'s warning.

The merge driver keeps a merged log an *extension* of OURS: every byte of OURS stays
where it was, and the events only THEIRS has follow in THEIRS' order. Nothing is sorted
or re-serialized, so the index takes a merge in as a plain append, and merging the same
branches twice gives the same bytes. The only conflict is one event id with two
different contents, which no automatic rule can settle.
"""

from __future__ import annotations

import mmap
import os
import shlex
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from .errors import DiskError, EventValidationError, StoreError, UsageError, os_error
from .lines.canonical import MAX_LINE_BYTES
from .lines.canonical import same_json as _same_json
from .lines.kinds import check_line
from .log import EVENTS_FILENAME, parse_line
from .log.read import snippet as _snippet
from .posix import replace_atomically, temp_beside

__all__ = [
    "ATTRIBUTES_LINE",
    "ATTRIBUTES_PATTERN",
    "DRIVER_NAME",
    "MergeConflict",
    "driver_command",
    "driver_warning",
    "git_setup",
    "merge_logs",
]

#: The line ``git-setup`` adds to ``.gitattributes``.
ATTRIBUTES_PATTERN = f"**/{EVENTS_FILENAME}"
ATTRIBUTES_LINE = f"{ATTRIBUTES_PATTERN} merge=replaylog"
#: ``merge.replaylog.name``: what git shows for the driver.
DRIVER_NAME = "replaylog: union of append-only event logs by event_id"

_CHUNK = 1 << 20


class MergeConflict(StoreError):
    """Two sides of a merge cannot be joined: one event id with two contents, or a bad line.

    OURS is left exactly as it was; git then reports the file as conflicted.
    """


# --------------------------------------------------------------------------- merge driver


class _Side:
    """One side of a merge, mapped read-only: its bytes, lines and where they start."""

    def __init__(self, label: str, path: str, buf: bytes | mmap.mmap, size: int, mode: int) -> None:
        self.label = label
        self.path = path
        self.buf = buf
        self.size = size
        self.mode = mode

    def lines(self, start: int = 0, number: int = 0) -> Iterator[tuple[int, int, int]]:
        """Yield ``(line number, start, end)`` per physical line from ``start`` (which
        follows line ``number``); ``end`` excludes the ``\\n``."""
        size = self.size
        find = self.buf.find
        while start < size:
            number += 1
            end = find(b"\n", start)
            if end < 0:
                yield number, start, size
                return
            yield number, start, end
            start = end + 1

    def line_at(self, start: int) -> bytes:
        end = self.buf.find(b"\n", start)
        return self.buf[start : self.size if end < 0 else end]

    def number_of(self, start: int) -> int:
        """The number of the line that starts at byte ``start``."""
        buf = self.buf
        return 1 + sum(
            buf[i : min(i + _CHUNK, start)].count(b"\n") for i in range(0, start, _CHUNK)
        )

    def ends_with_newline(self) -> bool:
        return self.size == 0 or self.buf[self.size - 1 : self.size] == b"\n"


@contextmanager
def _mapped(label: str, path: str, where: str, *, nofollow: bool) -> Iterator[_Side]:
    """Open one side read-only and map it; an empty file is just ``b""``."""
    flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_NOFOLLOW if nofollow else 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        reason = "it is a symbolic link" if nofollow and os.path.islink(path) else exc.strerror
        raise MergeConflict(f"{where}: cannot read {label} ({path}): {reason}", path=path) from exc
    try:
        info = os.fstat(fd)
        try:
            buf: bytes | mmap.mmap = (
                mmap.mmap(fd, info.st_size, access=mmap.ACCESS_READ) if info.st_size else b""
            )
        except (OSError, ValueError) as exc:
            raise MergeConflict(f"{where}: cannot read {label} ({path}): {exc}", path=path) from exc
        side = _Side(label, path, buf, info.st_size, stat.S_IMODE(info.st_mode))
        try:
            yield side
        finally:
            if isinstance(buf, mmap.mmap):
                buf.close()
    finally:
        os.close(fd)


def _unreadable(
    side: _Side, number: int, start: int, end: int, where: str, structure: str | None = None
) -> MergeConflict:
    """The error for a line that is not a JSON object with a string ``event_id``, or (with
    ``structure``, the reason) one that sections 2 and 10 refuse."""
    if structure is not None:
        problem = f"invalid event structure: {structure}"
    elif end - start > MAX_LINE_BYTES - 1:
        raw = side.buf[start : start + 4096]  # enough for the snippet, not the whole line
        problem = f"invalid JSON: {_snippet(raw)} (the line is longer than the 1 MiB limit)"
    else:
        raw = side.buf[start:end]
        try:
            obj = parse_line(raw)
        except (ValueError, RecursionError):
            problem = f"invalid JSON: {_snippet(raw)}"
        else:
            if type(obj) is not dict:
                problem = "invalid event structure: a line must hold a JSON object"
            else:
                problem = "invalid event structure: no string 'event_id'"
    return MergeConflict(
        f"{where}: cannot merge, {side.label} ({side.path}) line {number}: {problem};"
        f" fix that line, then merge again",
        path=side.path,
        line=number,
    )


def _same(a_raw: bytes, b_raw: bytes) -> bool:
    """Equal as parsed JSON (section 3's rule for duplicates); equal bytes need no parse."""
    return a_raw == b_raw or _same_json(parse_line(a_raw), parse_line(b_raw))


def _common_prefix(a: _Side, b: _Side) -> int:
    """Length of the longest run of whole lines with which both sides begin.

    Both sides of a merge usually start with the same history; those lines need no
    second look on THEIRS' side, as their ids are OURS' ids with the same bytes.
    """
    n = min(a.size, b.size)
    lo = 0
    step = _CHUNK
    while lo < n:  # skip equal chunks, then halve down to the first differing byte
        hi = min(lo + step, n)
        if a.buf[lo:hi] == b.buf[lo:hi]:
            lo = hi
        elif step == 1:
            break
        else:
            step = max(1, step // 2)
    return a.buf.rfind(b"\n", 0, lo) + 1


def _read_ids(
    side: _Side, where: str, from_offset: int = 0, after_line: int = 0
) -> Iterator[tuple[str, int, int, int]]:
    """Yield ``(event_id, line number, start, end)`` per non-blank line; bad lines raise."""
    buf = side.buf
    limit = MAX_LINE_BYTES - 1
    for number, start, end in side.lines(from_offset, after_line):
        if end - start > limit:
            raise _unreadable(side, number, start, end, where)
        raw = buf[start:end]
        try:
            obj = parse_line(raw)
            eid = obj["event_id"]
        except (ValueError, RecursionError, TypeError, KeyError, IndexError):
            if not raw.strip():
                continue
            raise _unreadable(side, number, start, end, where) from None
        if type(eid) is not str or type(obj) is not dict:
            raise _unreadable(side, number, start, end, where)
        try:
            # A line the readers refuse (sections 2 and 10) would make the merged log
            # unreadable: that side cannot be merged.
            check_line(obj)
        except EventValidationError as exc:
            raise _unreadable(side, number, start, end, where, str(exc)) from None
        yield eid, number, start, end


def merge_logs(base: str, ours: str, theirs: str, path: str | None = None) -> int:
    """The git merge driver (``%O %A %B %P``): extend OURS with the events only THEIRS has.

    Writes the result atomically over OURS: every line of OURS byte for byte in its
    order, then each line of THEIRS whose ``event_id`` is not in OURS, in THEIRS' order.
    Returns the number of lines taken from THEIRS (OURS is not rewritten when it is 0).
    BASE is accepted but not needed: logs are append-only, so an event missing on one
    side was never deleted, only not yet seen.

    Raises :class:`MergeConflict`, leaving OURS untouched, when one ``event_id`` has
    different content (not equal as parsed JSON) in two places, or when a line of
    either side is not a JSON object with a string ``event_id``.
    """
    del base  # see the docstring: the union needs no common ancestor
    where = path if path else ours
    with (
        _mapped("OURS", ours, where, nofollow=True) as ours_side,
        _mapped("THEIRS", theirs, where, nofollow=False) as theirs_side,
    ):
        ours_buf, theirs_buf = ours_side.buf, theirs_side.buf

        # Where each id's first line starts; a line is re-read only when ids meet.
        ours_ids: dict[str, int] = {}
        setdefault = ours_ids.setdefault
        for eid, number, start, end in _read_ids(ours_side, where):
            first = setdefault(eid, start)
            if first != start and not _same(ours_side.line_at(first), ours_buf[start:end]):
                raise _conflict(where, eid, ours_side, first, ours_side, number)

        skip = _common_prefix(ours_side, theirs_side)
        new_ids: dict[str, int] = {}  # insertion order is THEIRS' order
        for eid, number, start, end in _read_ids(
            theirs_side, where, skip, theirs_side.number_of(skip) - 1
        ):
            at = ours_ids.get(eid)
            if at is not None:
                if not _same(ours_side.line_at(at), theirs_buf[start:end]):
                    raise _conflict(where, eid, ours_side, at, theirs_side, number)
                continue
            first = new_ids.setdefault(eid, start)
            if first != start and not _same(theirs_side.line_at(first), theirs_buf[start:end]):
                raise _conflict(where, eid, theirs_side, first, theirs_side, number)

        if new_ids:
            _write_merged(ours, ours_side, theirs_side, new_ids.values(), where)
        return len(new_ids)


def _conflict(
    where: str, eid: str, first: _Side, first_start: int, second: _Side, second_number: int
) -> MergeConflict:
    first_number = first.number_of(first_start)
    if first is second:
        places = f"lines {first_number} and {second_number} of {first.label}"
    else:
        places = f"{first.label} line {first_number} and {second.label} line {second_number}"
    return MergeConflict(
        f"{where}: merge conflict: event_id {eid} has different content in {places};"
        f" OURS was left as it was. Keep one version of the event, then `git add` the file",
        path=where,
        line=first_number,
    )


def _write_error(exc: OSError, ours: str, where: str, place: str) -> StoreError:
    """The error for a merge result that could not be written: a full or read-only disk
    is a :class:`DiskError` naming OURS (not a conflict of the logs)."""
    exc.filename = None  # the temporary file's name means nothing to the user
    mapped = os_error(exc, ours, f"write the merge result of {where} {place}")
    if isinstance(mapped, DiskError):
        mapped.args = (f"{mapped}; OURS was left as it was",)
        return mapped
    return MergeConflict(
        f"{where}: cannot write the merge result {place} {ours}: {exc.strerror};"
        f" OURS was left as it was",
        path=ours,
    )


def _write_merged(
    ours: str,
    ours_side: _Side,
    theirs_side: _Side,
    starts: Iterable[int],
    where: str,
) -> None:
    """Write OURS + the new THEIRS lines to a temporary file, fsync, rename over OURS."""
    try:
        tmp_fd, tmp = temp_beside(ours, ".merge")
    except OSError as exc:
        raise _write_error(exc, ours, where, "beside") from exc

    def write(fd: int) -> None:
        with open(fd, "wb", buffering=1 << 20, closefd=False) as out:
            if ours_side.size:
                out.write(ours_side.buf)
            if not ours_side.ends_with_newline():
                out.write(b"\n")
            for start in starts:
                out.write(theirs_side.line_at(start))
                out.write(b"\n")

    try:
        # The rename is what matters; a failed fsync of the folder after it is let pass.
        replace_atomically(tmp_fd, tmp, ours, write, mode=ours_side.mode, folder_best_effort=True)
    except OSError as exc:
        raise _write_error(exc, ours, where, "over") from exc


# --------------------------------------------------------------------------- git-setup


def _git(root: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", root, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )


def _inside_work_tree(root: str) -> bool:
    result = _git(root, "rev-parse", "--is-inside-work-tree")
    return result.returncode == 0 and result.stdout.strip() == "true"


def driver_command() -> str:
    """The command git runs for the driver: ``replaylog`` when on PATH, else this Python."""
    if shutil.which("replaylog"):
        program = "replaylog"
    else:
        program = f"{shlex.quote(sys.executable)} -m replaylog"
    # git fills in %O %A %B with plain temporary names and %P already shell-quoted.
    return f"{program} merge-driver %O %A %B %P"


def _attribute_lines(text: str) -> Iterator[list[str]]:
    for line in text.splitlines():
        tokens = line.split()
        if tokens and not tokens[0].startswith("#"):
            yield tokens


def _has_our_attribute(text: str) -> bool:
    """Whether the last merge attribute given to ``**/status.events.jsonl`` is ours."""
    ours = False
    for tokens in _attribute_lines(text):
        if tokens[0] != ATTRIBUTES_PATTERN:
            continue
        for attr in tokens[1:]:
            if attr == "merge=replaylog":
                ours = True
            elif attr.lstrip("-!") == "merge" or attr.startswith("merge="):
                ours = False
    return ours


def _names_driver(text: str) -> bool:
    return any("merge=replaylog" in tokens[1:] for tokens in _attribute_lines(text))


def _read_attributes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""


def effective_driver(root: str, logs_dir: str = "kitty-specs") -> str | None:
    """The merge driver git gives a log under ``logs_dir`` in the clone at ``root``, as
    ``git check-attr`` reads every ``.gitattributes`` (None when none is given)."""
    sample = f"{logs_dir.strip('/')}/feature/{EVENTS_FILENAME}"
    result = _git(root, "check-attr", "merge", "--", sample)
    if result.returncode != 0:
        return None
    value = result.stdout.strip().rsplit(": ", 1)[-1]
    return None if value in ("", "unspecified", "unset") else value


def git_setup(root: str, *, replace: bool = False, logs_dir: str = "kitty-specs") -> dict[str, Any]:
    """Configure the clone at ``root`` for the merge driver (SPEC section 9). Idempotent.

    Adds ``**/status.events.jsonl merge=replaylog`` to ``<root>/.gitattributes`` unless it
    is there, and sets ``merge.replaylog.name`` and ``merge.replaylog.driver`` in the
    repository's local git config. Returns whether each step changed anything in this run.

    When ``.gitattributes`` already gives the logs another merge driver (spec-kitty writes
    ``kitty-specs/**/status.events.jsonl merge=spec-kitty-event-log``), nothing is changed
    unless ``replace``; the result's ``existing_driver`` names it either way. Replacing
    appends our line after theirs (the last line wins in git) and removes no line.
    Raises :class:`UsageError` if ``root`` is not inside a git work tree.
    """
    root = os.fspath(root)
    try:
        inside = _inside_work_tree(root)
    except OSError as exc:
        raise UsageError(f"cannot run git ({exc.strerror}); install git first") from exc
    if not inside:
        raise UsageError(
            f"{root} is not inside a git work tree; run `git init` there or pass --root"
        )

    attributes = os.path.join(root, ".gitattributes")
    existing = effective_driver(root, logs_dir)
    other = existing if existing not in (None, "replaylog") else None
    if other is not None and not replace:
        return {"gitattributes": False, "config": False, "existing_driver": other}
    data = _read_attributes(attributes)
    changed_attributes = other is not None or not _has_our_attribute(
        data.decode("utf-8", "surrogateescape")
    )
    if changed_attributes:
        prefix = b"\n" if data and not data.endswith(b"\n") else b""
        try:
            with open(attributes, "ab") as f:
                f.write(prefix + ATTRIBUTES_LINE.encode() + b"\n")
        except OSError as exc:
            raise StoreError(
                f"{attributes}: cannot write: {exc.strerror}", path=attributes
            ) from exc

    changed_config = False
    for key, value in (
        ("merge.replaylog.name", DRIVER_NAME),
        ("merge.replaylog.driver", driver_command()),
    ):
        current = _git(root, "config", "--local", "--get-all", key)
        if current.returncode == 0 and current.stdout.splitlines() == [value]:
            continue
        result = _git(root, "config", "--local", "--replace-all", key, value)
        if result.returncode != 0:
            raise StoreError(
                f"cannot set {key} in the git config of {root}: {result.stderr.strip()}"
            )
        changed_config = True
    outcome: dict[str, Any] = {"gitattributes": changed_attributes, "config": changed_config}
    if other is not None:
        outcome["existing_driver"] = other
    return outcome


def driver_warning(root: str, logs_dir: str = "kitty-specs") -> str | None:
    """A one-line warning when git will not merge the logs with the driver the
    ``.gitattributes`` names: the clone has not configured it, or another driver is
    named for the logs too (the one git uses is said).

    None when the attribute is absent, outside a git work tree, or when git is not
    installed.
    """
    root = os.fspath(root)
    attributes = os.path.join(root, ".gitattributes")
    try:
        text = _read_attributes(attributes).decode("utf-8", "surrogateescape")
    except OSError:
        return None
    if not _names_driver(text):
        return None
    try:
        if not _inside_work_tree(root):
            return None
        others = sorted(_other_drivers(text) - {"replaylog"})
        if others:
            used = effective_driver(root, logs_dir)
            named = (
                f"{attributes} names two merge drivers for the logs"
                f" (replaylog and {', '.join(others)})"
            )
            if used == "replaylog":
                if _git(root, "config", "--get", "merge.replaylog.driver").returncode != 0:
                    return (
                        f"{named}; git picks replaylog's, whose line comes last, but this"
                        " clone's git config has no merge.replaylog.driver, so git merges"
                        " the logs as plain text: run `replaylog git-setup`"
                    )
                return (
                    f"{named}; git uses replaylog, whose line comes last. Remove the other"
                    " line if no one merges with it"
                )
            return (
                f"{named}; git uses {used or 'neither'}, so replaylog's driver does not run:"
                " `replaylog git-setup --replace` makes it the one git uses"
            )
        if _git(root, "config", "--get", "merge.replaylog.driver").returncode == 0:
            return None
    except OSError:
        return None
    return (
        f"{attributes} names merge=replaylog but this clone's git config has no"
        f" merge.replaylog.driver, so git will not use it when merging logs;"
        f" run `replaylog git-setup`"
    )


def _other_drivers(text: str) -> set[str]:
    """Merge drivers that ``.gitattributes`` lines give to event logs."""
    drivers = set()
    for tokens in _attribute_lines(text):
        if not tokens[0].endswith(EVENTS_FILENAME):
            continue
        for attr in tokens[1:]:
            if attr.startswith("merge="):
                drivers.add(attr[len("merge=") :])
    return drivers
