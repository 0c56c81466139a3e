"""Reading a batch (SPEC sections 5 and 11): the body, gunzipped under a cap, and its lines.

Nothing here touches the database or the network: :class:`BodyReader` takes the body's
bytes as they arrive, :func:`parse_batch` turns the whole body into what
:meth:`Storage.ingest` stores, or raises :class:`BadRequest` with the status to answer.
"""

from __future__ import annotations

import json
import math
import zlib
from typing import Any, TypedDict, cast

import msgspec

from ..errors import EventValidationError
from ..lines import check_line
from ..lines.canonical import MAX_LINE_BYTES, MAX_NAME_CHARS, check_readable
from .storage import Candidate
from .tokens import NAME_RE

__all__ = [
    "BadRequest",
    "BodyReader",
    "DEFAULT_MAX_BODY_BYTES",
    "MAX_BATCH_EVENTS",
    "check_idempotency_key",
    "parse_batch",
]

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_BATCH_EVENTS = 1000
_MAX_KEY_CHARS = 200


class BadRequest(Exception):
    """The request cannot be taken: ``status`` (400, 413, 415, 422) and a message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class BodyReader:
    """Collects a request body chunk by chunk, inflating gzip as it goes, and stops at
    ``limit`` bytes of decompressed body (413): a gzip bomb is never inflated past it."""

    def __init__(self, *, gzip: bool, limit: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.limit = limit
        self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzip else None
        self._parts: list[bytes] = []
        self._size = 0
        self._raw = 0

    def _too_big(self) -> BadRequest:
        return BadRequest(
            413, f"the body is over {self.limit} bytes (decompressed); send smaller batches"
        )

    def _keep(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self.limit:
            raise self._too_big()
        self._parts.append(data)

    def feed(self, chunk: bytes) -> None:
        """Take the next bytes of the body as they came off the wire."""
        self._raw += len(chunk)
        if self._raw > self.limit:
            raise self._too_big()
        inflate = self._inflate
        if inflate is None:
            self._keep(chunk)
            return
        try:
            self._inflate_all(chunk)
        except zlib.error as exc:
            raise BadRequest(
                400, f"the body is not valid gzip ({exc}), though Content-Encoding says gzip"
            ) from exc

    def _inflate_all(self, data: bytes) -> None:
        while True:
            inflate = self._inflate
            assert inflate is not None
            if inflate.eof:
                # Another gzip member follows (as `cat a.gz b.gz` makes): inflate it too.
                data = inflate.unused_data + data
                if not data:
                    return
                inflate = self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
            # Never more than one byte past the cap at once, however well it compresses.
            self._keep(inflate.decompress(data, self.limit - self._size + 1))
            data = inflate.unconsumed_tail
            if not data and not inflate.eof:
                return  # all input taken: it stopped for want of input, not of room

    def finish(self) -> bytes:
        """The whole decompressed body; a gzip stream cut short is a 400."""
        inflate = self._inflate
        if inflate is not None and not inflate.eof:
            raise BadRequest(400, "the gzip body is cut short (its end is missing)")
        return b"".join(self._parts)


def check_idempotency_key(value: str | None) -> str | None:
    """The ``Idempotency-Key`` header, or None; a key that cannot be one is a 400."""
    if value is None:
        return None
    if not value or len(value) > _MAX_KEY_CHARS or not value.isascii() or not value.isprintable():
        raise BadRequest(
            400, f"Idempotency-Key must be 1 to {_MAX_KEY_CHARS} printable ASCII characters"
        )
    return value


def _refused(event_id: str, error: str) -> dict[str, str]:
    return {"event_id": event_id, "status": "rejected", "error": error}


_CLIENT_HEAD = '{"events": ['
_CLIENT_HEAD_BYTES = _CLIENT_HEAD.encode()


class _RawBody(TypedDict, total=False):
    events: list[msgspec.Raw]  # each line's bytes as received, parsed on their own below
    features: Any
    node_id: Any


_raw_body = msgspec.json.Decoder(_RawBody).decode
_decode_line = msgspec.json.Decoder().decode


def _client_layout(body: bytes) -> tuple[dict[str, Any], list[str | None]] | None:
    """The batch read as section 5's client lays it out, ``{"events": [LINE, LINE, ...],
    ...}`` with each log line as it is in the log, together with the text of each line;
    None when the body is laid out otherwise (:func:`parse_batch` then reads it whole).

    The fast path of ingest: it keeps each line's text as received, where the plain path
    must serialize each parsed line again. A line holding NaN, Infinity or a number beyond
    a double's range gets no text, so that it is refused like on the plain path.
    """
    if not body.startswith(_CLIENT_HEAD_BYTES):
        return None
    return _client_layout_c(body) or _client_layout_py(body)


def _client_layout_c(body: bytes) -> tuple[dict[str, Any], list[str | None]] | None:
    """:func:`_client_layout` by msgspec, in C; None for whatever it does not read exactly
    as :mod:`json` does (NaN, Infinity, a number out of a double's range, a lone
    surrogate), and for a body laid out otherwise: the stdlib reader then decides."""
    try:
        data = _raw_body(body)
        raws = data["events"]
        objs = [_decode_line(raw) for raw in raws]
    except (msgspec.DecodeError, KeyError):
        return None
    # The layout, exactly as the stdlib reader takes it: ", " between the lines, then ", "
    # and the other keys, or the end of the object.
    joined = b", ".join(raws)
    end = len(_CLIENT_HEAD_BYTES) + len(joined)
    if body[len(_CLIENT_HEAD_BYTES) : end] != joined or body[end : end + 1] != b"]":
        return None
    if body[end + 1 : end + 3] != b", " and body[end + 1 :].strip() != b"}":
        return None
    data["events"] = objs  # the lines, parsed, in place of their bytes
    return cast("dict[str, Any]", data), [bytes(raw).decode("utf-8") for raw in raws]


def _client_layout_py(body: bytes) -> tuple[dict[str, Any], list[str | None]] | None:
    """:func:`_client_layout` by :mod:`json`'s own decoder, a line at a time."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    constants: list[str] = []

    def constant(name: str) -> float:
        constants.append(name)
        return float(name.replace("Infinity", "inf"))

    def number(text: str) -> float:
        # A number beyond a double's range (1e400) reads as an infinity: no text either.
        value = float(text)
        if not math.isfinite(value):
            constants.append(text)
        return value

    decode = json.JSONDecoder(parse_constant=constant, parse_float=number).raw_decode
    objs: list[Any] = []
    texts: list[str | None] = []
    start = len(_CLIENT_HEAD)
    if text.startswith("]", start):
        end = start + 1
    else:
        while True:
            seen = len(constants)
            try:
                obj, end = decode(text, start)
            except (ValueError, RecursionError):
                return None
            objs.append(obj)
            texts.append(text[start:end] if len(constants) == seen else None)
            if text.startswith(", ", end):
                start = end + 2
            elif text.startswith("]", end):
                end += 1
                break
            else:
                return None
    rest = text[end:]
    if rest.startswith(", ") and rest[2:].lstrip().startswith('"'):  # another key
        rest = "{" + rest[2:]
    elif rest.strip() == "}":
        rest = "{}"
    else:
        return None
    try:
        data = json.loads(rest)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or "events" in data:
        return None  # a second "events" key: the plain path reads it as json does
    data["events"] = objs
    return data, texts


def parse_batch(body: bytes) -> tuple[str, list[Candidate | dict[str, str]]]:
    """The sender's node id and, per event in order, a :class:`Candidate` to store or the
    result of a refused line. A body that is not a batch raises :class:`BadRequest`."""
    fast = _client_layout(body)
    texts: list[str | None] | None
    if fast is not None:
        data, texts = fast
    else:
        texts = None
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as exc:
            detail = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
            raise BadRequest(400, f"the body is not JSON: {detail}") from exc
    if not isinstance(data, dict):
        raise BadRequest(400, 'the body must be a JSON object {"events", "features", "node_id"}')
    lines, features, node_id = data.get("events"), data.get("features"), data.get("node_id")
    if not isinstance(lines, list):
        raise BadRequest(400, "'events' must be a list of line objects")
    if len(lines) > MAX_BATCH_EVENTS:
        raise BadRequest(
            413, f"a batch holds at most {MAX_BATCH_EVENTS} events, this one {len(lines)}"
        )
    if not isinstance(features, list) or len(features) != len(lines):
        raise BadRequest(
            400, "'features' must be a list with the feature of each event, in the same order"
        )
    if (
        not isinstance(node_id, str)
        or not node_id
        or len(node_id) > MAX_NAME_CHARS
        or not node_id.isprintable()  # no NUL, control character or lone surrogate
    ):
        raise BadRequest(
            400,
            "'node_id' must be the sender's node id: printable text of 1 to"
            f" {MAX_NAME_CHARS} characters",
        )
    entries: list[Candidate | dict[str, str]] = []
    good_features: set[str] = set()
    dumps = json.dumps
    for number, (obj, feature) in enumerate(zip(lines, features, strict=True)):
        if not isinstance(obj, dict) or not isinstance(obj.get("event_id"), str):
            raise BadRequest(400, f"events[{number}] must be a line object with an 'event_id'")
        if not isinstance(feature, str):
            raise BadRequest(400, f"features[{number}] must be a string")
        event_id: str = obj["event_id"]
        if feature not in good_features:
            if feature in (".", "..") or NAME_RE.fullmatch(feature) is None:
                entries.append(_refused(event_id, f"bad feature name {feature[:140]!r}"))
                continue
            good_features.add(feature)
        try:
            check_line(obj)
            line = texts[number] if texts is not None else None
            if line is None:
                # Section 2's form of the line (sorted keys, default separators, ASCII):
                # byte for byte what the sender's log holds.
                line = dumps(obj, sort_keys=True, allow_nan=False)
            check_readable(line, obj)  # a lone surrogate: no reader of a log takes it
        except EventValidationError as exc:
            entries.append(_refused(event_id, f"invalid event structure: {exc}"))
            continue
        except ValueError:
            entries.append(
                _refused(
                    event_id,
                    "NaN, Infinity or a number beyond a double's range in the line: not JSON",
                )
            )
            continue
        size = len(line) if line.isascii() else len(line.encode("utf-8"))
        if size + 1 > MAX_LINE_BYTES:
            entries.append(_refused(event_id, f"the line is over {MAX_LINE_BYTES} bytes (1 MiB)"))
            continue
        entries.append(Candidate(event_id, feature, line, obj))
    return node_id, entries
