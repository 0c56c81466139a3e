"""The files spec-kitty keeps beside a feature's log (SPEC section 10): ``meta.json``,
read for a board and a move, and ``status.json``, the snapshot a move rewrites.
"""

from __future__ import annotations

import json
import os
import stat
import warnings
from typing import Any

from .errors import ReplaylogWarning, StoreError
from .posix import open_regular, replace_atomically, temp_beside

__all__ = [
    "META_FILENAME",
    "STATUS_FILENAME",
    "feature_meta",
    "mission_id_of",
    "read_side_file",
    "status_json_stat",
    "transition_time",
    "write_status_json",
]

#: The snapshot spec-kitty keeps beside a log; ``move`` rewrites it when it is there.
STATUS_FILENAME = "status.json"
META_FILENAME = "meta.json"
_MAX_SIDE_FILE = 64 << 20  # meta.json and status.json are small; a huge one is refused


def read_side_file(path: str, what: str) -> bytes | None:
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


def feature_meta(feature_dir: str) -> dict[str, Any] | None:
    """The feature's ``meta.json`` (spec-kitty's mission metadata), None when absent."""
    path = os.path.join(feature_dir, META_FILENAME)
    data = read_side_file(path, "feature's meta.json")
    if data is None:
        return None
    try:
        meta = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        from .log.read import json_error_reason

        raise StoreError(
            f"{path}: the feature's meta.json is not valid JSON ({json_error_reason(exc)});"
            " correct it or remove it",
            path=path,
        ) from exc
    if not isinstance(meta, dict):
        raise StoreError(
            f"{path}: the feature's meta.json must hold a JSON object, not"
            f" {type(meta).__name__}; correct it or remove it",
            path=path,
        )
    return meta


def mission_id_of(meta: dict[str, Any] | None, feature_dir: str) -> str | None:
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


def status_json_stat(path: str) -> os.stat_result | None:
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


def transition_time() -> str:
    """Now, as spec-kitty dates a transition: UTC, microseconds always, ``+00:00``."""
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def write_status_json(path: str, snap: dict[str, Any], *, fsync: bool) -> None:
    """Replace ``status.json`` by ``snap`` atomically, written as spec-kitty writes it.

    Keys of the old file that the board does not make (spec-kitty's ``retrospective``,
    made from its retrospective events, which a move never adds) are kept as they were.
    A temporary file in the same folder is written, fsynced and renamed over the old
    one, then the folder is fsynced; on failure the old file stays and the temporary
    one is removed.
    """
    old = status_json_stat(path)
    out = dict(snap)
    if old is not None:
        try:
            previous = json.loads((read_side_file(path, "status.json") or b"").decode("utf-8"))
        except (StoreError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            from .log.read import json_error_reason

            previous = None  # spec-kitty overwrites a damaged snapshot too, but says so here
            why = exc if isinstance(exc, StoreError) else json_error_reason(exc)
            warnings.warn(
                f"{path} was not a readable snapshot ({why}); it was replaced by the board"
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
        check=lambda: status_json_stat(path),
    )
