"""The canonical line (SPEC section 2): its limits, the checks every kind shares, the
payload's plain form and the one JSON serialization the log stores.

On every hot path (the CLI append, the reader), so it imports nothing heavier than the
standard library.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from itertools import chain, repeat
from operator import itemgetter
from typing import Any, NamedTuple

from ..errors import EventValidationError
from .ids import generate_event_id, generate_event_ids, utc_now

__all__ = [
    "EVENT_FIELDS",
    "MAX_CLOCK",
    "MAX_LINE_BYTES",
    "MAX_NAME_CHARS",
    "ITEM_KEYS",
    "MAX_NESTING",
    "LineTemplate",
    "canonical_line",
    "check_name",
    "check_no_control",
    "check_optional_id",
    "check_own_node_id",
    "check_readable",
    "is_plain",
    "lone_surrogate_at",
    "names_plain",
    "new_line_object",
    "lines_of",
    "new_lines",
    "normalize_payload",
    "same_json",
    "show_value",
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


# --------------------------------------------------------------------------- validation


def check_name(value: object, name: str) -> str:
    """``value`` if it is a name (a type, an aggregate): a non-empty string of at most
    200 characters and no control character; else :class:`EventValidationError` naming
    the field ``name``."""
    if type(value) is not str or not value or len(value) > MAX_NAME_CHARS:
        raise EventValidationError(
            f"field '{name}' must be a non-empty string of at most {MAX_NAME_CHARS} characters,"
            f" got {_show(value)}"
        )
    if not value.isprintable():  # the quick test: printable text holds no control character
        check_no_control(value, name)
    return value


#: The control characters (Unicode category Cc: C0, DEL, C1). In a name (an event type,
#: an aggregate, a node id) one would break the line it is shown on: a newline or a
#: carriage return forges another line, an escape sequence drives the terminal.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_ASCII_CONTROLS = bytes(range(0x20)) + b"\x7f"


def check_no_control(value: str, name: str) -> None:
    """Refuse a name holding a control character, naming the field ``name``."""
    found = _CONTROL.search(value)
    if found is not None:
        raise EventValidationError(
            f"field '{name}' holds a control character ({found.group()!r}): a name is one"
            f" line of text, without newlines, tabs or other control characters;"
            f" got {_show(value)}"
        )


def names_plain(names: Iterable[str]) -> bool:
    """True if no string of ``names`` holds a control character, told in C for all of
    them at once; False means only "not shown here" (:func:`check_no_control` judges)."""
    joined = "".join(names)
    if joined.isascii():  # (a flag of the string: free)
        data = joined.encode("ascii")
        return len(data.translate(None, _ASCII_CONTROLS)) == len(data)
    return joined.isprintable()


def check_optional_id(value: object, name: str) -> str | None:
    """``value`` if it is a string or None (a causation or correlation id)."""
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
    if (
        type(event_type) is not str
        or not 0 < len(event_type) <= MAX_NAME_CHARS
        or not event_type.isprintable()
    ):
        check_name(event_type, "event_type")
    if (
        type(aggregate_id) is not str
        or not 0 < len(aggregate_id) <= MAX_NAME_CHARS
        or not aggregate_id.isprintable()
    ):
        check_name(aggregate_id, "aggregate_id")
    if type(node_id) is not str or not node_id or not node_id.isprintable():
        check_own_node_id(node_id)
    if payload is None:
        payload = {}
    elif type(payload) is not dict or not _is_small_and_flat(payload) and not is_plain(payload):
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


def check_own_node_id(node_id: object) -> None:
    """Refuse a store's node id that no reader would take back (SPEC section 2's
    ``node_id``: a non-empty string; a name, so without control characters)."""
    advice = "; the node id comes from REPLAYLOG_NODE_ID (or EventStore's node_id)"
    if type(node_id) is not str or not node_id:
        raise EventValidationError(
            f"field 'node_id' must be a non-empty string, got {_show(node_id)}{advice}"
        )
    try:
        check_no_control(node_id, "node_id")
    except EventValidationError as exc:
        raise EventValidationError(f"{exc}{advice}") from None


#: Section 2's fields, in the order of :class:`~replaylog.Event`'s fields (and of the
#: objects :func:`new_line_object` and :func:`new_lines` make).
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
#: The keys a new event given as a mapping may have.
ITEM_KEYS = frozenset({"event_type", "aggregate_id", "payload", "causation_id", "correlation_id"})
_NEEDED_KEYS = frozenset({"event_type", "aggregate_id"})
_NONE_TYPE = frozenset({type(None)})


def _all_names(values: list[Any]) -> bool:
    """True if every value is what check_name accepts (no call per value)."""
    return (
        set(map(type, values)) == _STR_TYPE
        and min(map(len, values)) > 0
        and max(map(len, values)) <= MAX_NAME_CHARS
        and names_plain(values)
    )


def new_lines(
    items: list[dict[str, Any]], node_id: str, now: str
) -> tuple[list[dict[str, Any]], list[LineTemplate]] | None:
    """The line objects and templates of new events from ``items`` (plain dicts, as
    ``EventStore.append_many`` takes them), made column by column without a Python call
    per event: what :func:`new_line_object` and :meth:`LineTemplate.of_new` give, item by
    item, for the same ids and time.

    None when any item needs a closer look (a missing or unknown key, a value of another
    type, a payload to normalize, a character that needs escaping, a large line): the
    caller then goes item by item, which names the first problem as it always has.
    """
    if not items or type(node_id) is not str or not node_id or not node_id.isprintable():
        return None
    shapes = set(map(frozenset, items))
    if not all(_NEEDED_KEYS <= keys <= ITEM_KEYS for keys in shapes):
        return None
    get: Any = dict.get  # the columns hold whatever the caller gave
    types = list(map(get, items, repeat("event_type")))
    aggregates = list(map(get, items, repeat("aggregate_id")))
    if not (_all_names(types) and _all_names(aggregates)):
        return None
    causes = list(map(get, items, repeat("causation_id")))
    correlations = list(map(get, items, repeat("correlation_id")))
    payloads = list(map(get, items, repeat("payload")))
    ids_kinds = set(map(type, causes)) | set(map(type, correlations))
    if not ids_kinds <= _STR_OR_NONE:
        return None
    kinds = set(map(type, payloads))
    if type(None) in kinds:  # no payload: a new empty object for each, as one by one
        payloads = [{} if p is None else p for p in payloads]
        kinds.discard(type(None))
    if kinds - {dict}:
        return None
    if set(map(type, chain.from_iterable(payloads))) - _STR_TYPE:
        return None  # a key that is no string
    if set(map(type, chain.from_iterable(map(dict.values, payloads)))) - _FLAT_TYPES:
        if not all(map(is_plain, payloads)):
            return None
    try:
        texts = list(map("".join, map(_iterencode, payloads, repeat(0))))
    except (ValueError, TypeError, RecursionError):  # pragma: no cover - checked plain
        return None
    ids = generate_event_ids(len(items))
    quote = _quote
    quoted_types = list(map(quote, types))
    quoted_aggregates = list(map(quote, aggregates))
    if ids_kinds == _NONE_TYPE:
        quoted_causes: Iterable[str] = repeat("null")
        quoted_correlations: Iterable[str] = repeat("null")
    else:
        quoted_causes = list(map(_quote_or_null, causes))
        quoted_correlations = list(map(_quote_or_null, correlations))
    heads = list(
        map(
            '{{"aggregate_id": {}, "causation_id": {}, "correlation_id": {}, "event_id":'
            ' "{}", "event_type": {}, "lamport_clock": '.format,
            quoted_aggregates,
            quoted_causes,
            quoted_correlations,
            ids,
            quoted_types,
        )
    )
    tail_format = ', "node_id": ' + quote(node_id).replace("{", "{{").replace("}", "}}")
    tails = list(map((tail_format + ', "payload": {}, "timestamp": "' + now + '"}}').format, texts))
    objs = list(
        map(
            dict,
            map(
                zip,
                repeat(EVENT_FIELDS),
                zip(
                    ids,
                    types,
                    aggregates,
                    payloads,
                    repeat(now),
                    repeat(node_id),
                    repeat(1),
                    causes,
                    correlations,
                ),
            ),
        )
    )
    # What of_new checks line by line: an escape that may be a lone surrogate, a size
    # that may pass the limit. Rare: those batches are templated one by one.
    escaped = "".join(
        [*texts, *quoted_types, *quoted_aggregates, *quoted_causes, *quoted_correlations]
        if ids_kinds != _NONE_TYPE
        else [*texts, *quoted_types, *quoted_aggregates]
    )
    if (
        "\\u" in escaped
        or "\\u" in tail_format
        or (max(map(len, heads)) + max(map(len, tails)) >= _SMALL_LINE)
    ):
        return objs, [LineTemplate.of_new(obj) for obj in objs]
    return objs, list(map(tuple.__new__, repeat(LineTemplate), zip(heads, tails, strict=True)))


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


show_value = _show  # how an error message quotes a bad value


_STR_TYPE = frozenset({str})
_FLAT_TYPES = frozenset({str, int, bool, type(None)})


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON: unlike ``==``, ``true`` is not ``1`` and ``1.0`` is not ``1``."""
    try:
        return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    except (ValueError, RecursionError):
        return False


def is_plain(value: object, depth: int = 0) -> bool:
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
        return all(is_plain(v, depth + 1) for v in values)
    if kind is list:
        return all(is_plain(v, depth + 1) for v in value)  # type: ignore[attr-defined]
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
    if type(payload) is dict and is_plain(payload):
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
    value must not exhaust the stack that checks it), and an object two of whose keys
    JSON writes alike (``1`` and ``"1"``): one of their values would be lost."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            if set(map(type, item)) - _STR_TYPE:
                _check_keys_distinct(item, name)
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


def _json_key(key: object) -> object:
    """The key JSON writes for ``key``, as ``json.dumps`` makes it (any other key is
    refused by the encoder: returned as it is)."""
    if isinstance(key, str):
        return str(key)
    if key is True:
        return "true"
    if key is False:
        return "false"
    if key is None:
        return "null"
    if isinstance(key, int):
        return int.__repr__(key)
    if isinstance(key, float):
        return float.__repr__(key)
    return key


def _check_keys_distinct(obj: Mapping[Any, Any], name: str) -> None:
    seen: dict[object, object] = {}
    for key in obj:
        written = _json_key(key)
        try:
            first = seen.setdefault(written, key)
        except TypeError:  # not hashable: the encoder refuses it with its own message
            continue
        if first is not key:
            raise EventValidationError(
                f"field '{name}' holds the keys {show_value(first)} and {show_value(key)},"
                f" which JSON writes alike ({show_value(written)}): one value would be lost;"
                " give distinct string keys"
            )


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


def lone_surrogate_at(value: object) -> str | None:
    """Where the first string (key or value) in a parsed JSON value holding a lone
    surrogate is (``"field 'payload.x'"``), or None."""
    if isinstance(value, Mapping):
        return _lone_surrogate_at(value, "")
    return None if _lone_surrogate_at([value], "") is None else "a string"


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


def lines_of(templates: list[LineTemplate], first: int) -> list[bytes]:
    """The lines of ``templates`` with the Lamport values ``first``, ``first + 1``, ...:
    :meth:`LineTemplate.line` of each, without a Python call per line when no template
    needs measuring."""
    if set(map(type, templates)) != {LineTemplate}:
        return [t.line(first + k) for k, t in enumerate(templates)]
    texts = map(
        "{}{}{}\n".format,
        map(itemgetter(0), templates),
        range(first, first + len(templates)),
        map(itemgetter(1), templates),
    )
    return list(map(str.encode, texts))
