"""Where a feature's log is (SPEC section 1): feature names and the log's file name."""

from __future__ import annotations

import os
import re

from ..errors import UsageError

__all__ = ["EVENTS_FILENAME", "log_path", "validate_feature_name"]

EVENTS_FILENAME = "status.events.jsonl"
_FEATURE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def validate_feature_name(name: object) -> str:
    """Return ``name`` if it is a valid feature name, else raise :class:`UsageError`."""
    if not isinstance(name, str) or name in (".", "..") or not _FEATURE_RE.fullmatch(name):
        raise UsageError(
            f"invalid feature name {name!r}: use 1-128 characters from A-Z a-z 0-9 . _ -,"
            " starting with a letter or digit"
        )
    return name


def log_path(feature_dir: str | os.PathLike[str]) -> str:
    """The path of the log inside a feature folder."""
    return os.path.join(os.fspath(feature_dir), EVENTS_FILENAME)
