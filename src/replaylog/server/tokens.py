"""Projects and tokens of the receiver (SPEC section 11).

``--tokens-file`` holds one token per line::

    # PROJECT  SHA256-HEX-OF-TOKEN                                               NAME (optional)
    team-a     9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08  alice laptop

Fields are separated by spaces or tabs; the name is the rest of the line. Blank lines and
lines starting with ``#`` are skipped. A project name follows the feature-name rule of
section 1. The file holds hashes only (``printf %s "$TOKEN" | sha256sum``), so reading it
reveals no token; it is read once, when the server starts.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from ..errors import UsageError

__all__ = ["DEFAULT_PROJECT", "NAME_RE", "Token", "load_tokens", "token_digest"]

#: The project of every request when the server runs without a tokens file.
DEFAULT_PROJECT = "default"
#: Section 1's feature-name rule, used for features and projects alike.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_HEX_RE = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True)
class Token:
    """Who a token is: its project, and the name the tokens file gives it."""

    project: str
    name: str | None = None


def token_digest(token: str) -> str:
    """The hex SHA-256 of a bearer token, as the tokens file holds it."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def load_tokens(path: str) -> dict[str, Token]:
    """Read a tokens file: ``{sha256 hex: Token}``. A bad line is a :class:`UsageError`
    naming the file and line; the message never repeats the line, which could hold a token
    written there by mistake."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise UsageError(f"--tokens-file {path}: cannot read it: {reason}") from exc
    tokens: dict[str, Token] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        parts = stripped.split(None, 2)
        where = f"--tokens-file {path}, line {number}"
        if len(parts) < 2:
            raise UsageError(f"{where}: expected `PROJECT SHA256-HEX-OF-TOKEN [NAME]`")
        project, digest = parts[0], parts[1]
        if NAME_RE.fullmatch(project) is None:
            raise UsageError(
                f"{where}: the project name must be letters, digits, '.', '_' or '-'"
                " (at most 128, starting with a letter or digit)"
            )
        if _HEX_RE.fullmatch(digest) is None:
            raise UsageError(
                f"{where}: the second field must be the SHA-256 of the token in 64 hex"
                ' digits (`printf %s "$TOKEN" | sha256sum`), never the token itself'
            )
        digest = digest.lower()
        if digest in tokens and tokens[digest].project != project:
            raise UsageError(f"{where}: this token is already given to another project")
        tokens[digest] = Token(project, parts[2].strip() if len(parts) > 2 else None)
    if not tokens:
        raise UsageError(
            f"--tokens-file {path} holds no token: every request would be refused"
            " (leave the option out to serve loopback only)"
        )
    return tokens
