"""The event record (SPEC section 2): fields, validation, ULIDs and the canonical line.

This module is on every hot path (the CLI append, the reader), so it imports nothing
heavier than the standard library. ULIDs are encoded here in a few lines rather than
with python-ulid, whose import alone costs more than a whole ``replaylog append``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from itertools import repeat
from typing import Any, NamedTuple

from .errors import UsageError

__all__ = [
    "EVENT_FIELDS",
    "LineTemplate",
    "MAX_LINE_BYTES",
    "Event",
    "EventValidationError",
    "build_event",
    "build_events",
    "check_envelope",
    "generate_event_id",
    "local_node_id",
    "show_value",
    "validate_ulid_format",
]

#: A whole line, newline included, is at most this many bytes.
MAX_LINE_BYTES = 1024 * 1024
MAX_NAME_CHARS = 200
#: The largest Lamport value a line may hold: the index keeps it as SQLite's 64-bit integer.
MAX_CLOCK = 2**63 - 1
#: Objects and arrays nested deeper than this in a payload are refused at append: every
#: reader (orjson stops at 1024 levels, json at Python's recursion limit) must give the
#: line back, with room to spare for the callers' own stacks.
MAX_NESTING = 256

EVENT_FIELDS = (
    "event_id",
    "event_type",
    "aggregate_id",
    "payload",
    "timestamp",
    "node_id",
    "lamport_clock",
    "causation_id",
    "correlation_id",
)
_FIELD_SET = frozenset(EVENT_FIELDS)

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
#: A ULID as text; log.py matches whole columns of ids with the same pattern.
ULID_PATTERN = r"[0-7][0-9A-HJKMNP-TV-Z]{25}"
#: ISO-8601 UTC. ASCII digits only (``\d`` would take any script's digits) and each
#: part within its range, so that what passes can be parsed as a date and time.
TIMESTAMP_PATTERN = (
    r"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
    r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60)(?:\.[0-9]{1,9})?(?:Z|\+00:00)"
)
_ULID_RE = re.compile(ULID_PATTERN)
_TIMESTAMP_RE = re.compile(TIMESTAMP_PATTERN)


class EventValidationError(UsageError):
    """An event breaks a rule of SPEC section 2. The message names the field and why."""


# --------------------------------------------------------------------------- ULIDs

_ulid_lock = threading.Lock()
_last_ulid = 0  # the last id this process made, as a 128-bit int
# Seeded from the OS once (and again in a forked child): ids need uniqueness, not
# secrecy, and a system call per id would cost more than the rest of making it.
_random = random.Random(os.urandom(32))
_random_bits = _random.getrandbits


_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]  # every 10-bit value, 2 digits
_FORTY_BITS = (1 << 40) - 1
_time_digits: tuple[int, str] = (-1, "")  # a millisecond and its first 10 digits


def _encode_ulid(value: int) -> str:
    """The 26 digits of a 128-bit value: 130 bits, so the value under two zero bits.

    Taken 10 bits (two digits) at a time: the 48-bit time in the first 10 digits (the
    same for every id of one millisecond, so kept), then the 80 random bits in 16.
    """
    global _time_digits
    pairs = _PAIRS
    ms = value >> 80
    known, head = _time_digits
    if ms != known:
        head = "".join([pairs[(ms >> shift) & 1023] for shift in (40, 30, 20, 10, 0)])
        _time_digits = (ms, head)
    hi = (value >> 40) & _FORTY_BITS
    lo = value & _FORTY_BITS
    return (
        f"{head}{pairs[hi >> 30]}{pairs[(hi >> 20) & 1023]}{pairs[(hi >> 10) & 1023]}"
        f"{pairs[hi & 1023]}{pairs[lo >> 30]}{pairs[(lo >> 20) & 1023]}"
        f"{pairs[(lo >> 10) & 1023]}{pairs[lo & 1023]}"
    )


def generate_event_id() -> str:
    """A new ULID. Ids made by one process strictly increase, even within one millisecond."""
    global _last_ulid
    with _ulid_lock:
        value = (time.time_ns() // 1_000_000) << 80 | _random_bits(80)
        if value <= _last_ulid:
            # Same millisecond (or a clock step back): count up from the last id.
            value = _last_ulid + 1
        _last_ulid = value
    return _encode_ulid(value)


def _forget_last_ulid() -> None:
    # A forked child must not count up from its parent's last id: both would make the
    # same ids within one millisecond. It starts afresh from the clock and new randomness.
    global _last_ulid
    _last_ulid = 0
    _random.seed(os.urandom(32))


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_last_ulid)


def validate_ulid_format(value: object) -> bool:
    """True if ``value`` is a 26-character upper-case Crockford base32 ULID."""
    return isinstance(value, str) and _ULID_RE.fullmatch(value) is not None


# --------------------------------------------------------------------------- node id

_node_id_cache: str | None = None


def local_node_id() -> str:
    """This machine user's node id: ``REPLAYLOG_NODE_ID``, else a hash of machine and user.

    It is stable across index rebuilds (nothing is stored) and never reveals the raw
    host or user name.
    """
    global _node_id_cache
    override = os.environ.get("REPLAYLOG_NODE_ID")
    if override:
        return override
    if _node_id_cache is None:
        machine = ""
        for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
            try:
                with open(path, encoding="ascii") as f:
                    machine = f.read().strip()
                    break
            except OSError:
                continue
        if not machine:
            import socket

            machine = socket.gethostname()
        seed = f"replaylog-node\0{machine}\0{os.getuid() if hasattr(os, 'getuid') else 0}"
        _node_id_cache = hashlib.sha256(seed.encode()).hexdigest()[:16]
    return _node_id_cache


_stamp_of_second: tuple[int, str] = (-1, "")


def utc_now() -> str:
    """The current time as ISO-8601 UTC with a ``Z`` suffix, in microseconds."""
    global _stamp_of_second
    second, micro = divmod(time.time_ns() // 1000, 1_000_000)
    known, prefix = _stamp_of_second  # one tuple: threads see a second and its text together
    if second != known:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _stamp_of_second = (second, prefix)
    return f"{prefix}.{str(micro + 1_000_000)[1:]}Z"  # six digits, quicker than :06d


# --------------------------------------------------------------------------- validation


def check_name(value: object, name: str) -> str:
    if type(value) is not str or not value or len(value) > MAX_NAME_CHARS:
        raise EventValidationError(
            f"field '{name}' must be a non-empty string of at most {MAX_NAME_CHARS} characters,"
            f" got {_show(value)}"
        )
    return value


def check_optional_id(value: object, name: str) -> str | None:
    if value is not None and type(value) is not str:
        raise EventValidationError(f"field '{name}' must be a string or null, got {_show(value)}")
    return value


def new_line_object(
    event_type: object,
    aggregate_id: object,
    payload: object,
    causation_id: object,
    correlation_id: object,
    node_id: str,
    now: str | None = None,
) -> dict[str, Any]:
    """The line object of a new event, checked, with a new id (no :class:`Event` built).

    ``lamport_clock`` is 1 until the store gives the event its value.
    """
    # The checks of check_name and check_optional_id, written out: this runs per append.
    if type(event_type) is not str or not 0 < len(event_type) <= MAX_NAME_CHARS:
        check_name(event_type, "event_type")
    if type(aggregate_id) is not str or not 0 < len(aggregate_id) <= MAX_NAME_CHARS:
        check_name(aggregate_id, "aggregate_id")
    if payload is None:
        payload = {}
    elif type(payload) is not dict or not _is_small_and_flat(payload) and not _is_plain(payload):
        payload = normalize_payload(payload)
    if causation_id is not None and type(causation_id) is not str:
        check_optional_id(causation_id, "causation_id")
    if correlation_id is not None and type(correlation_id) is not str:
        check_optional_id(correlation_id, "correlation_id")
    return {
        "event_id": generate_event_id(),
        "event_type": event_type,
        "aggregate_id": aggregate_id,
        "payload": payload,
        "timestamp": utc_now() if now is None else now,
        "node_id": node_id,
        "lamport_clock": 1,
        "causation_id": causation_id,
        "correlation_id": correlation_id,
    }


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


show_value = _show  # how an error message quotes a bad value


_STR_TYPE = frozenset({str})
_FLAT_TYPES = frozenset({str, int, bool, type(None)})


def _is_plain(value: object, depth: int = 0) -> bool:
    """True if ``value`` is already what ``json.loads`` would give back (so lines round-trip)."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return True
    if kind is float:
        return math.isfinite(value)  # type: ignore[arg-type]
    if depth > 200:
        return False
    if kind is dict:
        if set(map(type, value)) - _STR_TYPE:  # type: ignore[call-overload]
            return False
        values = value.values()  # type: ignore[attr-defined]
        if not set(map(type, values)) - _FLAT_TYPES:
            return True  # flat strings, integers, booleans and nulls: nothing to look into
        return all(_is_plain(v, depth + 1) for v in values)
    if kind is list:
        return all(_is_plain(v, depth + 1) for v in value)  # type: ignore[attr-defined]
    return False


def _is_small_and_flat(payload: dict[str, Any]) -> bool:
    """A quick yes for the usual payload: a few string keys of flat values (no sets built)."""
    if len(payload) > 8:
        return False
    flat = _FLAT_TYPES
    for key, value in payload.items():
        if type(key) is not str or type(value) not in flat:
            return False
    return True


def normalize_payload(payload: object, name: str = "payload") -> dict[str, Any]:
    """Check a payload is a JSON object without NaN/Infinity and return it in plain form."""
    if payload is None:
        return {}
    if not isinstance(payload, Mapping):
        raise EventValidationError(
            f"field '{name}' must be a JSON object, got {type(payload).__name__}"
        )
    if type(payload) is dict and _is_plain(payload):
        return payload
    _check_nesting(payload, name)
    try:
        plain = json.loads(json.dumps(dict(payload), allow_nan=False))
    except ValueError as exc:
        if "Circular reference" in str(exc):
            raise EventValidationError(f"field '{name}' contains itself") from exc
        raise EventValidationError(
            f"field '{name}' holds NaN or Infinity, which JSON cannot carry"
        ) from exc
    except (TypeError, RecursionError) as exc:
        raise EventValidationError(f"field '{name}' is not JSON-serializable: {exc}") from exc
    return plain  # type: ignore[no-any-return]


def _check_nesting(value: object, name: str) -> None:
    """Refuse objects and arrays nested deeper than MAX_NESTING (no recursion: a deep
    value must not exhaust the stack that checks it)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children: Iterable[object] = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if depth > MAX_NESTING:
            raise EventValidationError(
                f"field '{name}' is nested more than {MAX_NESTING} levels deep; readers could"
                " not give such a line back"
            )
        stack.extend(zip(children, repeat(depth + 1)))


def _lone_surrogate_at(obj: object, where: str) -> str | None:
    """Where the first string (key or value) in ``obj`` holding a lone surrogate is."""
    stack: list[tuple[object, str]] = [(obj, where)]
    while stack:
        item, at = stack.pop()
        if type(item) is str or isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return f"field '{at}'"
        elif isinstance(item, Mapping):
            for key, value in item.items():
                if isinstance(key, str):
                    try:
                        key.encode("utf-8")
                    except UnicodeEncodeError:
                        return f"a key in field '{at}'" if at else "a key of the event"
                stack.append((value, f"{at}.{key}" if at else str(key)))
        elif isinstance(item, (list, tuple)):
            stack.extend((v, f"{at}[{i}]") for i, v in enumerate(item))
    return None


def check_readable(text: str, obj: Mapping[str, Any]) -> None:
    """Refuse a line whose strings hold a lone surrogate: json writes one as ``\\udXXX``
    and reads it back, but it is no text, and printing or encoding it fails.

    The quick test looks for such an escape in the serialized ``text``; only a line that
    has one (a surrogate pair, that is, a character beyond U+FFFF, or a lone one) is
    walked.
    """
    if "\\ud" in text or "\\uD" in text:
        at = _lone_surrogate_at(obj, "")
        if at is not None:
            raise EventValidationError(
                f"{at} holds a lone surrogate (half of a UTF-16 pair), which is not text:"
                " no reader could print it; give valid Unicode"
            )


# --------------------------------------------------------------------------- the record


#: Fields an envelope written elsewhere may lack (SPEC section 10); the store writes all.
OPTIONAL_FIELDS = (
    "aggregate_id",
    "timestamp",
    "node_id",
    "lamport_clock",
    "causation_id",
    "correlation_id",
)
_OPTIONAL_SET = frozenset(OPTIONAL_FIELDS)
_NOTHING: frozenset[str] = frozenset()


@dataclass(frozen=True, eq=True)
class Event:
    """One event (an envelope line). ``extra`` holds any other keys of the line, unchanged.

    ``absent`` names the fields of section 2 that the line does not hold (an envelope
    written by another tool, SPEC section 10); they are None here and stay absent in
    :meth:`to_dict`. Events the store writes hold every field.
    """

    event_id: str
    event_type: str
    aggregate_id: str | None
    payload: dict[str, Any]
    timestamp: str | None
    node_id: str | None
    lamport_clock: int | None
    causation_id: str | None = None
    correlation_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    absent: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.absent:
            object.__setattr__(self, "absent", frozenset(self.absent))
            unknown = self.absent - _OPTIONAL_SET
            if unknown:
                raise EventValidationError(
                    f"field(s) {', '.join(sorted(unknown))} cannot be absent from an event"
                )
            check_envelope(self.to_dict())
        else:
            _check_fields(self.__dict__)
        object.__setattr__(self, "payload", normalize_payload(self.payload))
        object.__setattr__(self, "extra", normalize_payload(self.extra, "extra"))
        for key in self.extra:
            if key in _FIELD_SET:
                raise EventValidationError(f"extra key '{key}' collides with an event field")

    def __hash__(self) -> int:
        return hash((self.event_id, self.lamport_clock))

    KIND = "envelope"

    @classmethod
    def new(
        cls,
        event_type: str,
        aggregate_id: str,
        payload: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> Event:
        """A new event with a fresh id, the current time and this node's id.

        ``lamport_clock`` is 0 until a store assigns one on append.
        """
        unknown = set(fields) - _FIELD_SET - {"extra"}
        if unknown:
            raise EventValidationError(f"unknown event field(s): {', '.join(sorted(unknown))}")
        fields.setdefault("event_id", generate_event_id())
        fields.setdefault("timestamp", utc_now())
        fields.setdefault("node_id", local_node_id())
        fields.setdefault("lamport_clock", 0)
        return cls(
            event_type=event_type,
            aggregate_id=aggregate_id,
            payload=payload,  # type: ignore[arg-type]
            **fields,
        )

    def with_clock(self, lamport_clock: int) -> Event:
        """A copy of this event with another Lamport value."""
        return replace(self, lamport_clock=lamport_clock)

    def to_dict(self) -> dict[str, Any]:
        """The line object: every field, ``None`` ids included, plus the extra keys.

        Fields named in ``absent`` are left out, so a line read is given back exactly."""
        if self.absent:
            d = {k: getattr(self, k) for k in EVENT_FIELDS if k not in self.absent}
            d.update(self.extra)
            return d
        d = {
            "event_id": self.event_id,
            "event_type": self.event_type,
            "aggregate_id": self.aggregate_id,
            "payload": self.payload,
            "timestamp": self.timestamp,
            "node_id": self.node_id,
            "lamport_clock": self.lamport_clock,
            "causation_id": self.causation_id,
            "correlation_id": self.correlation_id,
        }
        if self.extra:
            d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        """Build and validate an event from a line object. Unknown keys go to ``extra``."""
        if not isinstance(data, Mapping):
            raise EventValidationError(f"an event must be a JSON object, got {type(data).__name__}")
        d = dict(data)
        if not _is_plain(d):
            # Not what json.loads gives (NaN, a set, a tuple...): let __init__ check and
            # normalize the payload and extra keys as it does for a new event.
            absent = frozenset(k for k in OPTIONAL_FIELDS if k not in d)
            extra = {k: v for k, v in d.items() if k not in _FIELD_SET}
            fields: dict[str, Any] = {k: d.get(k) for k in EVENT_FIELDS}
            return cls(**fields, extra=extra, absent=absent)
        check_envelope(d)
        return build_event(d)

    def to_line(self) -> bytes:
        """The canonical line, newline included, as the log stores it."""
        return canonical_line(self.to_dict())


def canonical_line(obj: Mapping[str, Any]) -> bytes:
    """``json.dumps(obj, sort_keys=True, allow_nan=False)`` plus a newline, size-checked."""
    try:
        text = json.dumps(obj, sort_keys=True, allow_nan=False)
    except ValueError as exc:
        raise EventValidationError(
            f"the event cannot be written as JSON (NaN, Infinity or a cycle): {exc}"
        ) from exc
    except (TypeError, RecursionError) as exc:  # a payload changed after it was checked
        raise EventValidationError(f"the event is not JSON-serializable: {exc}") from exc
    if len(text) >= MAX_LINE_BYTES:  # ensure_ascii: one byte per character, plus "\n"
        raise EventValidationError(
            f"the event's line is {len(text) + 1} bytes; a line may be at most"
            f" {MAX_LINE_BYTES} bytes (1 MiB)"
        )
    check_readable(text, obj)
    return (text + "\n").encode("ascii")


def _default(value: object) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


try:
    # The C encoder, made once: JSONEncoder.encode builds a new one on every call,
    # which costs about a third of serializing a small payload. No circular-reference
    # markers: payloads are checked to be plain (so acyclic) before they get here.
    from json.encoder import (  # type: ignore[attr-defined]
        c_encode_basestring_ascii,
        c_make_encoder,
    )

    _iterencode = c_make_encoder(
        None, _default, c_encode_basestring_ascii, None, ": ", ", ", True, False, False
    )

    def _encode(obj: Mapping[str, Any]) -> str:
        return "".join(_iterencode(obj, 0))

except ImportError:  # pragma: no cover - CPython always has the C encoder
    _encode = json.JSONEncoder(sort_keys=True, allow_nan=False).encode  # type: ignore[assignment]


def _dumps(obj: Mapping[str, Any]) -> str:
    """``json.dumps(obj, sort_keys=True, allow_nan=False)``, with one encoder for all."""
    try:
        return _encode(obj)
    except ValueError as exc:
        raise EventValidationError(
            f"the event cannot be written as JSON (NaN, Infinity or a cycle): {exc}"
        ) from exc
    except (TypeError, RecursionError) as exc:
        raise EventValidationError(f"the event is not JSON-serializable: {exc}") from exc


_quote = json.encoder.encode_basestring_ascii
_TEXT_FIELDS = (
    "event_id",
    "event_type",
    "aggregate_id",
    "timestamp",
    "node_id",
    "causation_id",
    "correlation_id",
)


_STR_OR_NONE = frozenset({str, type(None)})


def _quote_or_null(value: str | None) -> str:
    return "null" if value is None else _quote(value)


_SMALL_LINE = 4096  # surely within the line limit, whatever the clock value


class LineTemplate(NamedTuple):
    """A canonical line serialized once, its Lamport value filled in later.

    An append serializes (and so validates and size-checks) its events before it locks
    the log, and learns their Lamport values only under the lock. ``json.dumps`` with
    sorted keys writes the top-level keys in order, so the line is exactly
    ``head + str(clock) + tail``, with head ending in ``"lamport_clock": ``.
    """

    head: str
    tail: str

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> LineTemplate:
        if len(obj) == 9 and set(map(type, map(obj.get, _TEXT_FIELDS))) <= _STR_OR_NONE:
            # The nine fields and no other key: all but the payload are strings (or
            # null), which the encoder's own C function writes exactly as dumps does.
            q = _quote
            head = (
                f'{{"aggregate_id": {q(obj["aggregate_id"])}, "causation_id": '
                f'{_quote_or_null(obj["causation_id"])}, "correlation_id": '
                f'{_quote_or_null(obj["correlation_id"])}, "event_id": {q(obj["event_id"])},'
                f' "event_type": {q(obj["event_type"])}, "lamport_clock": '
            )
            tail = (
                f', "node_id": {q(obj["node_id"])}, "payload": {_dumps(obj["payload"])},'
                f' "timestamp": {q(obj["timestamp"])}}}'
            )
            check_readable(head + tail, obj)
            return cls._sized(head, tail)
        before = {k: v for k, v in obj.items() if k < "lamport_clock"}
        after = {k: v for k, v in obj.items() if k > "lamport_clock"}
        head = _dumps(before)[:-1]  # "{...": without its closing brace
        head = f'{head}, "lamport_clock": ' if before else '{"lamport_clock": '
        tail = _dumps(after)[1:]  # "...}": without its opening brace
        tail = f", {tail}" if after else "}"
        check_readable(head + tail, obj)
        return cls._sized(head, tail)

    @classmethod
    def of_new(cls, obj: Mapping[str, Any]) -> LineTemplate:
        """:meth:`of` for an object from :func:`new_line_object`, whose fields are known
        to be strings (or null) and whose id and time need no escaping."""
        q = _quote
        cause, corr = obj["causation_id"], obj["correlation_id"]
        head = (
            f'{{"aggregate_id": {q(obj["aggregate_id"])}, "causation_id": '
            f'{"null" if cause is None else q(cause)}, "correlation_id": '
            f'{"null" if corr is None else q(corr)}, "event_id": "{obj["event_id"]}",'
            f' "event_type": {q(obj["event_type"])}, "lamport_clock": '
        )
        tail = (
            f', "node_id": {q(obj["node_id"])}, "payload": {_dumps(obj["payload"])},'
            f' "timestamp": "{obj["timestamp"]}"}}'
        )
        if "\\u" in tail or "\\u" in head:
            check_readable(head + tail, obj)
        if len(head) + len(tail) < _SMALL_LINE:
            return cls(head, tail)
        return cls._sized(head, tail)

    @classmethod
    def _sized(cls, head: str, tail: str) -> LineTemplate:
        # The clock value takes 1 to 19 digits (at most 2**63-1): a line too big with
        # one digit is refused now; one that fits with 19 surely fits; one in between is
        # measured when its value is known, before anything is written.
        size = len(head) + 1 + len(tail) + 1
        if size > MAX_LINE_BYTES:
            raise EventValidationError(
                f"the event's line is at least {size} bytes; a line may be at most"
                f" {MAX_LINE_BYTES} bytes (1 MiB)"
            )
        if size + 18 > MAX_LINE_BYTES:
            return _MeasuredTemplate(head, tail)
        return cls(head, tail)

    def line(self, lamport_clock: int) -> bytes:
        """The line, newline included, with this Lamport value."""
        return f"{self.head}{lamport_clock}{self.tail}\n".encode("ascii")


class _MeasuredTemplate(LineTemplate):
    """A template within 18 bytes of the line limit: each line is measured when made."""

    def line(self, lamport_clock: int) -> bytes:
        data = f"{self.head}{lamport_clock}{self.tail}\n".encode("ascii")
        if len(data) > MAX_LINE_BYTES:
            raise EventValidationError(
                f"the event's line is {len(data)} bytes with Lamport value {lamport_clock};"
                f" a line may be at most {MAX_LINE_BYTES} bytes (1 MiB)"
            )
        return data


def _check_fields(d: Mapping[str, Any], *, partial: bool = False) -> None:
    """Validate the nine fields of SPEC section 2 in ``d``; raise naming the first bad one.

    ``partial``: the optional fields (:data:`OPTIONAL_FIELDS`) are checked only when
    present (an envelope written elsewhere, SPEC section 10).
    """
    eid = d.get("event_id")
    if type(eid) is not str or _ULID_RE.fullmatch(eid) is None:
        raise EventValidationError(f"field 'event_id' must be a ULID, got {_show(eid)}")
    check_name(d.get("event_type"), "event_type")
    if not partial or "aggregate_id" in d:
        check_name(d.get("aggregate_id"), "aggregate_id")
    if not partial or "timestamp" in d:
        ts = d.get("timestamp")
        if type(ts) is not str or _TIMESTAMP_RE.fullmatch(ts) is None:
            raise EventValidationError(
                f"field 'timestamp' must be ISO-8601 UTC ending in Z or +00:00, got {_show(ts)}"
            )
    if not partial or "node_id" in d:
        node = d.get("node_id")
        if type(node) is not str or not node:
            raise EventValidationError(
                f"field 'node_id' must be a non-empty string, got {_show(node)}"
            )
    if not partial or "lamport_clock" in d:
        clock = d.get("lamport_clock")
        if type(clock) is not int or clock < 0 or clock > MAX_CLOCK:
            raise EventValidationError(
                f"field 'lamport_clock' must be a non-negative integer of at most 2**63-1,"
                f" got {_show(clock)}"
            )
    if not partial or "causation_id" in d:
        check_optional_id(d.get("causation_id"), "causation_id")
    if not partial or "correlation_id" in d:
        check_optional_id(d.get("correlation_id"), "correlation_id")


_new_object = object.__new__
_set_attr = object.__setattr__


def check_line_object(d: Mapping[str, Any]) -> None:
    """Validate a parsed line object of any kind (SPEC sections 2 and 10) without changing
    it; raise naming its kind and the first bad field."""
    from .lines import check_line

    check_line(d)


def check_envelope(d: Mapping[str, Any]) -> None:
    """Validate an envelope line (one with ``event_type``) without changing it.

    A line the store writes holds every field of section 2; one written elsewhere may
    lack ``aggregate_id``, ``node_id``, ``lamport_clock``, ``causation_id`` and
    ``correlation_id``, and give its time as ``at`` instead of ``timestamp``; what it
    holds follows section 2 all the same (SPEC section 10).
    """
    if d.keys() >= _FIELD_SET:
        _check_fields(d)
    else:
        if "event_type" not in d:
            raise EventValidationError("missing field 'event_type'")
        if "payload" not in d:
            raise EventValidationError("missing field 'payload'")
        if "timestamp" not in d and type(d.get("at")) is not str:
            raise EventValidationError(
                "missing field 'timestamp' (or 'at'): an event needs the time it was written"
            )
        _check_fields(d, partial=True)
    if type(d["payload"]) is not dict:
        raise EventValidationError(
            f"field 'payload' must be a JSON object, got {_show(d['payload'])}"
        )


def build_event(d: dict[str, Any]) -> Event:
    """Turn an already validated line object (a dict this function consumes) into an Event.

    The reader's hot path: it skips dataclass ``__init__`` and reuses the parsed dict as
    the instance dict, moving unknown keys into ``extra``.
    """
    if len(d) == 9 and d.keys() == _FIELD_SET:
        d["extra"] = {}
        d["absent"] = _NOTHING
    else:
        d["extra"] = {k: d.pop(k) for k in [k for k in d if k not in _FIELD_SET]}
        if len(d) == 10:
            d["absent"] = _NOTHING
        else:
            missing = [k for k in OPTIONAL_FIELDS if k not in d]
            for k in missing:
                d[k] = None
            d["absent"] = frozenset(missing)
    event: Event = _new_object(Event)
    _set_attr(event, "__dict__", d)
    return event


def build_events(objs: list[dict[str, Any]]) -> list[Event]:
    """:func:`build_event` for many envelope objects that hold every field of section 2
    (the lines of a clean log); when none has extra keys, without a Python call per
    event (``map`` over C functions)."""
    if set(map(len, objs)) - {9}:
        return [build_event(d) for d in objs]
    list(map(dict.__setitem__, objs, repeat("extra"), iter(dict, None)))
    list(map(dict.__setitem__, objs, repeat("absent"), repeat(_NOTHING)))
    events: list[Event] = list(map(_new_object, repeat(Event, len(objs))))
    list(map(_set_attr, events, repeat("__dict__"), objs))
    return events
