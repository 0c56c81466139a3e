"""Git integration (SPEC section 9): the merge driver, ``git-setup`` and ``verify``'s warning.

The merge driver keeps a merged log an *extension* of OURS: every byte of OURS stays
where it was, and the events only THEIRS has follow in THEIRS' order. Nothing is sorted
or re-serialized, so the index takes a merge in as a plain append, and merging the same
branches twice gives the same bytes. The only conflict is one event id with two
different contents, which no automatic rule can settle.
"""

from __future__ import annotations

import errno
import mmap
import os
import shlex
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from functools import partial
from typing import Any

from .errors import (
    DiskError,
    EventValidationError,
    ReplaylogError,
    StoreError,
    UsageError,
    os_error,
)
from .lines.canonical import MAX_LINE_BYTES
from .lines.canonical import same_json as _same_json
from .lines.kinds import check_line
from .log import EVENTS_FILENAME, parse_line
from .log.read import InvalidJson
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
        except (ValueError, RecursionError) as exc:
            why = f" ({exc})" if isinstance(exc, InvalidJson) else ""  # as the readers say
            problem = f"invalid JSON: {_snippet(raw)}{why}"
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


def _interpreter() -> str:
    """The absolute path of this Python, by the name its folder gives it most plainly.

    ``.venv/bin/python``, ``python3`` and ``python3.11`` are one program: the command is
    the same whichever of them ran ``git-setup``, so that running it again changes
    nothing. Only names in the same folder are tried: a link is never resolved out of a
    venv, whose packages the interpreter it points at does not see.
    """
    exe = os.path.abspath(sys.executable)
    folder = os.path.dirname(exe)
    for name in ("python3", "python"):
        candidate = os.path.join(folder, name)
        try:
            if os.path.samefile(candidate, exe):
                return candidate
        except OSError:
            continue
    return exe


def driver_command() -> str:
    """The command git runs for the driver: this Python, by its absolute path, with
    ``-m replaylog``. It works whatever PATH git runs with (a venv need not be active).
    """
    if sys.executable:
        program = shlex.quote(_interpreter())
        # -P (Python 3.11+): the work tree, where git runs the driver, is not put first on
        # sys.path, so a folder named replaylog there is not imported instead.
        program += " -P -m replaylog" if sys.version_info >= (3, 11) else " -m replaylog"
    else:  # an embedded Python that cannot name itself: the script on PATH, by its path
        found = shutil.which("replaylog")
        program = shlex.quote(os.path.abspath(found)) if found else "replaylog"
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


def _is_other_driver(attr: str) -> bool:
    return attr.startswith("merge=") and attr != "merge=replaylog"


def _kind(path: str) -> str | None:
    """What ``path`` is when it exists but is not a regular file ("a symbolic link", ...)."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None  # absent, or the read that follows says what is wrong
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    return None if stat.S_ISREG(mode) else "not a regular file"


def _refused(path: str, kind: str) -> StoreError:
    why = (
        "git-setup does not write through a link (it may lead outside the repository)"
        if kind == "a symbolic link"
        else "git-setup writes .gitattributes only as a regular file"
    )
    return StoreError(
        f"{path} is {kind}; {why}, so nothing was changed. Replace it with a regular file"
        " holding the lines you want, then run `replaylog git-setup` again",
        path=path,
    )


def _read_attributes(path: str) -> tuple[bytes, int | None]:
    """The bytes and mode of ``.gitattributes`` (``b""`` and None when there is none).

    A symbolic link or anything but a regular file is refused (:class:`StoreError`).
    """
    kind = _kind(path)
    if kind is not None:
        raise _refused(path, kind)
    try:
        # O_NOFOLLOW: a link put there since the look above is refused all the same.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return b"", None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refused(path, "a symbolic link") from exc
        raise os_error(exc, path, "read") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _refused(path, "not a regular file")
        with open(fd, "rb", closefd=False) as f:
            return f.read(), stat.S_IMODE(info.st_mode)
    except OSError as exc:
        raise os_error(exc, path, "read") from exc
    finally:
        os.close(fd)


def _new_file_mode() -> int:
    """The mode ``open`` gives a new file: 0o666 less the umask (which only setting reads)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _write_attributes(path: str, data: bytes, mode: int) -> None:
    """Replace ``.gitattributes`` atomically: a temporary file beside it, fsynced, renamed."""

    def write(fd: int) -> None:
        with open(fd, "wb", closefd=False) as out:
            out.write(data)

    try:
        tmp_fd, tmp = temp_beside(path, ".tmp")
        replace_atomically(tmp_fd, tmp, path, write, mode=mode, folder_best_effort=True)
    except OSError as exc:
        exc.filename = None  # the temporary file's name means nothing to the user
        raise os_error(exc, path, "write") from exc


def _without_other_drivers(data: bytes) -> tuple[bytes, list[str]]:
    """``data`` without the merge drivers other than replaylog that its lines give to
    event logs, and the drivers taken off.

    A line left with its pattern only goes; one with other attributes keeps them. Every
    other line stays byte for byte.
    """
    kept: list[bytes] = []
    removed: list[str] = []
    for line in data.splitlines(keepends=True):
        body = line.rstrip(b"\r\n")
        tokens = body.decode("utf-8", "surrogateescape").split()
        if (
            not tokens
            or tokens[0].startswith("#")
            or not tokens[0].endswith(EVENTS_FILENAME)
            or not any(_is_other_driver(attr) for attr in tokens[1:])
        ):
            kept.append(line)
            continue
        removed += [a[len("merge=") :] for a in tokens[1:] if _is_other_driver(a)]
        rest = [attr for attr in tokens[1:] if not _is_other_driver(attr)]
        if rest:
            text = " ".join([tokens[0], *rest])
            kept.append(text.encode("utf-8", "surrogateescape") + line[len(body) :])
    return b"".join(kept), removed


def _with_our_line(data: bytes) -> bytes:
    """``data`` with ``**/status.events.jsonl merge=replaylog`` added unless it applies."""
    if _has_our_attribute(data.decode("utf-8", "surrogateescape")):
        return data
    prefix = b"\n" if data and not data.endswith(b"\n") else b""
    return data + prefix + ATTRIBUTES_LINE.encode() + b"\n"


def effective_driver(root: str, logs_dir: str = "kitty-specs") -> str | None:
    """The merge driver git gives a log under ``logs_dir`` in the clone at ``root``, as
    ``git check-attr`` reads every ``.gitattributes`` (None when none is given)."""
    sample = f"{logs_dir.strip('/')}/feature/{EVENTS_FILENAME}"
    result = _git(root, "check-attr", "merge", "--", sample)
    if result.returncode != 0:
        return None
    value = result.stdout.strip().rsplit(": ", 1)[-1]
    return None if value in ("", "unspecified", "unset") else value


def _restore_config(root: str, key: str, values: list[str]) -> None:
    _git(root, "config", "--local", "--unset-all", key)
    for value in values:
        _git(root, "config", "--local", "--add", key, value)


def git_setup(root: str, *, replace: bool = False, logs_dir: str = "kitty-specs") -> dict[str, Any]:
    """Configure the clone at ``root`` for the merge driver (SPEC section 9). Idempotent.

    Adds ``**/status.events.jsonl merge=replaylog`` to ``<root>/.gitattributes`` unless it
    is there, and sets ``merge.replaylog.name`` and ``merge.replaylog.driver`` (see
    :func:`driver_command`) in the repository's local git config. Returns whether each
    step changed anything in this run.

    When ``.gitattributes`` already gives the logs another merge driver (spec-kitty writes
    ``kitty-specs/**/status.events.jsonl merge=spec-kitty-event-log``), nothing is changed
    unless ``replace``; the result's ``existing_driver`` names it either way. Replacing
    takes that driver off its line (the line goes if nothing else is on it) and adds ours,
    so that one driver is named for the logs; every other line stays byte for byte, and
    the file is replaced atomically with its mode kept.

    Raises :class:`UsageError` if ``root`` is not inside a git work tree, and
    :class:`StoreError` if ``.gitattributes`` is a symbolic link or not a regular file,
    if the config cannot be written, or if after replacing git would still use another
    driver (set elsewhere). An error leaves the file and the config as they were.
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
    data, mode = _read_attributes(attributes)  # a link is refused before anything changes
    existing = effective_driver(root, logs_dir)
    other = existing if existing not in (None, "replaylog") else None
    if other is not None and not replace:
        return {"gitattributes": False, "config": False, "existing_driver": other}
    removed: list[str] = []
    new = data
    if replace:
        new, removed = _without_other_drivers(data)
    new = _with_our_line(new)

    undo: list[Callable[[], None]] = []
    try:
        if new != data:
            _write_attributes(attributes, new, _new_file_mode() if mode is None else mode)
            if mode is None:
                undo.append(lambda: os.unlink(attributes))
            else:
                undo.append(lambda: _write_attributes(attributes, data, mode))
        if other is not None:
            now = effective_driver(root, logs_dir)
            if now != "replaylog":
                used = f"merge={now}" if now else "no merge driver"
                raise StoreError(
                    f"{attributes}: git gives the logs {used} even with replaylog's line,"
                    " so another attributes file or line sets it (.git/info/attributes, a"
                    " .gitattributes nearer the logs, or a wider pattern later in this"
                    " file); nothing was changed. Remove it there, then run"
                    " `replaylog git-setup --replace` again",
                    path=attributes,
                )
        changed_config = False
        for key, value in (
            ("merge.replaylog.name", DRIVER_NAME),
            ("merge.replaylog.driver", driver_command()),
        ):
            current = _git(root, "config", "--local", "--get-all", key)
            before = current.stdout.splitlines() if current.returncode == 0 else []
            if before == [value]:
                continue
            result = _git(root, "config", "--local", "--replace-all", key, value)
            if result.returncode != 0:
                raise StoreError(
                    f"cannot set {key} in the git config of {root}: {result.stderr.strip()};"
                    " nothing was changed"
                )
            undo.append(partial(_restore_config, root, key, before))
            changed_config = True
    except BaseException:
        for step in reversed(undo):
            with suppress(OSError, ReplaylogError):
                step()
        raise
    outcome: dict[str, Any] = {"gitattributes": new != data, "config": changed_config}
    if other is not None or removed:
        outcome["existing_driver"] = other if other is not None else removed[0]
    return outcome


def _missing_program(root: str, command: str) -> str | None:
    """The program ``command`` runs when it cannot be found, as ``sh`` would look for it
    from the top of the work tree; None when it is there or the command is more than a
    program and its arguments."""
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    if not words or "=" in words[0] or words[0] in ("exec", "command", "eval", "."):
        return None  # an assignment or a shell builtin: a shell command not read here
    program = words[0]
    if "/" not in program:
        return None if shutil.which(program) else program
    if not os.path.isabs(program):
        top = _git(root, "rev-parse", "--show-toplevel").stdout.strip()
        program = os.path.join(top or root, program)
    return None if os.path.isfile(program) and os.access(program, os.X_OK) else words[0]


def _program_warning(root: str, attributes: str) -> str | None:
    """The warning for a configured driver whose program cannot be found."""
    command = _git(root, "config", "--get", "merge.replaylog.driver").stdout.strip()
    program = _missing_program(root, command)
    if program is None:
        return None
    where = "is not on PATH" if "/" not in program else "does not exist or cannot be run"
    return (
        f"{attributes} names merge=replaylog, but this clone's merge.replaylog.driver runs"
        f" {program}, which {where}, so `git merge` fails on the logs and marks them"
        " conflicted: run `replaylog git-setup` to configure a command that does not"
        " depend on PATH"
    )


def driver_warning(root: str, logs_dir: str = "kitty-specs") -> str | None:
    """A one-line warning when git will not merge the logs with the driver the
    ``.gitattributes`` names: the clone has not configured it, its program cannot be
    found, another driver is named for the logs too (the one git uses is said), or
    ``.gitattributes`` is a symbolic link or not a regular file (git does not read it).

    None when the attribute is absent, outside a git work tree, or when git is not
    installed.
    """
    root = os.fspath(root)
    attributes = os.path.join(root, ".gitattributes")
    kind = _kind(attributes)
    try:
        if kind is not None:
            if not _inside_work_tree(root):
                return None
            return (
                f"{attributes} is {kind}, which git does not read attributes from, so no"
                " merge driver it names is used for the logs (and `replaylog git-setup`"
                " does not write to it): replace it with a regular file"
            )
        text = _read_attributes(attributes)[0].decode("utf-8", "surrogateescape")
    except (OSError, StoreError):
        return None
    if not _names_driver(text):
        return None
    try:
        if not _inside_work_tree(root):
            return None
        others = sorted(_other_drivers(text) - {"replaylog"})
        configured = _git(root, "config", "--get", "merge.replaylog.driver").returncode == 0
        if others:
            used = effective_driver(root, logs_dir)
            named = (
                f"{attributes} names two merge drivers for the logs"
                f" (replaylog and {', '.join(others)})"
            )
            if used == "replaylog":
                if not configured:
                    return (
                        f"{named}; git picks replaylog's, whose line comes last, but this"
                        " clone's git config has no merge.replaylog.driver, so git merges"
                        " the logs as plain text: run `replaylog git-setup`"
                    )
                return _program_warning(root, attributes) or (
                    f"{named}; git uses replaylog, whose line comes last. Remove the other"
                    " line if no one merges with it (`replaylog git-setup --replace` does)"
                )
            return (
                f"{named}; git uses {used or 'neither'}, so replaylog's driver does not run:"
                " `replaylog git-setup --replace` makes it the one git uses"
            )
        if configured:
            return _program_warning(root, attributes)
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
