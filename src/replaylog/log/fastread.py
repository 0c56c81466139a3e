"""The fast read path for logs of every line kind (SPEC sections 8 and 10).

A log that spec-kitty wrote mixes envelopes, transitions, annotations and records.
Read line by line (:func:`~replaylog.log.scan_log`), each line costs a dozen Python
calls. Here a log is read in chunks of 4 MiB. A chunk of lines as the store writes them
is parsed by msgspec into a ``Struct`` that checks their fields while it parses. So are
spec-kitty's transitions and annotations (told by their sorted keys' last ones): by a
``Struct`` of their exact key set, typed by their kind's rules. Any other line is parsed
into a dict; such lines are grouped by their keys (a log has a handful of key sets),
and each group's fields are checked by ``msgspec.convert``. The ids, times and names are
checked column by column in C (``bytes.translate``, big integers, one regex over a
whole joined column). The records are then built group by group with ``map`` over C
functions, not a Python call per line.

Anything unusual (a blank, bad, duplicate, torn or oversized line, a value of a
doubtful type, a line of no kind) raises :class:`~replaylog.log.read.Unclean`, and the caller
reads the log again with ``scan_log``, which finds and names the exact problem. So this
path accepts exactly what ``scan_log`` accepts and gives the same records
(``tests/test_s08_fastread.py`` holds it to that).
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Callable, Iterator, Sequence
from io import BytesIO
from itertools import accumulate, chain, compress, repeat
from operator import itemgetter, not_, setitem
from stat import S_ISREG
from types import GetSetDescriptorType
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple

import msgspec

from ..lines._base import ACTOR_KEYS
from ..lines.annotation import Annotation
from ..lines.canonical import MAX_CLOCK, MAX_LINE_BYTES, MAX_NAME_CHARS, names_plain
from ..lines.envelope import FIELD_SET, OPTIONAL_FIELDS, TIMESTAMP_PATTERN
from ..lines.event import Event
from ..lines.ids import ULID_PATTERN
from ..lines.record import Record
from ..lines.transition import ISO_8601, LANES, StatusEvent
from ..posix import flock, open_regular
from .read import Unclean

if TYPE_CHECKING:
    from ..lines import Line

__all__ = [
    "Group",
    "MixedChunk",
    "Plan",
    "build_records",
    "check_objects",
    "index_columns",
    "mixed_chunks",
    "read_lines",
    "read_objects",
]

# msgspec parses as fast as orjson, and reads an integer wider than 64 bits exactly, as
# the plain path's parser does (orjson would make it a float): no scan for them needed.
_decoder = msgspec.json.Decoder()
_decode = _decoder.decode
_READ_CHUNK = 4 << 20
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
if _READ_CHUNK <= MAX_LINE_BYTES:  # pragma: no cover
    raise ImportError("fastread's chunks must hold the longest line a log may have")

_Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_CHARS)]
_Id = Annotated[str, msgspec.Meta(min_length=26, max_length=26)]  # a ULID's length


class _StoreLine(msgspec.Struct, forbid_unknown_fields=True):
    """A line as the store writes it (SPEC section 2): the nine fields and no other key,
    their types and lengths checked by msgspec while it parses (the ids and timestamps
    are matched after). Fields in the order of the line's sorted keys."""

    aggregate_id: _Name
    causation_id: str | None
    correlation_id: str | None
    event_id: _Id
    event_type: _Name
    lamport_clock: Annotated[int, msgspec.Meta(ge=0, le=MAX_CLOCK)]
    node_id: Annotated[str, msgspec.Meta(min_length=1)]
    payload: dict[str, Any]
    timestamp: str


_store_decoder = msgspec.json.Decoder(_StoreLine)
_decode_store_line = _store_decoder.decode
_as_dict = msgspec.structs.asdict
_convert = msgspec.convert

_new_object = object.__new__
_NOTHING: frozenset[str] = frozenset()
_EMPTY: dict[str, Any] = {}  # never changed: copied for each record's empty ``extra``

_TYPE_STR = frozenset({str})
_TYPE_DICT = frozenset({dict})

# ULID_PATTERN's characters: the first digit at most 7, Crockford's base32 for the rest.
_ULID_FIRST = b"01234567"
_ULID_DIGITS = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"
if not re.fullmatch(ULID_PATTERN, "7" + _ULID_DIGITS.decode()[:25]):  # pragma: no cover
    raise ImportError("fastread's ULID alphabet differs from ULID_PATTERN's")
# One regex over a whole column joined by newlines (none of these patterns can match one).
_STAMPS = re.compile(f"(?:{TIMESTAMP_PATTERN}\n)*")
_ISO_TIMES = re.compile(f"(?:{ISO_8601.pattern}\n)*")

_ENVELOPE = "envelope"
_TRANSITION = "transition"
_ANNOTATION = "annotation"
_RECORD = "record"

# What each kind's record keeps as fields, and which of them a line may lack.
_CLASSES: dict[str, type[Any]] = {
    _ENVELOPE: Event,
    _TRANSITION: StatusEvent,
    _ANNOTATION: Annotation,
    _RECORD: Record,
}
_KNOWN: dict[str, frozenset[str]] = {
    _ENVELOPE: FIELD_SET,
    _TRANSITION: StatusEvent._KNOWN,
    _ANNOTATION: Annotation._KNOWN,
    _RECORD: Record._KNOWN,
}


def _dict_setter(cls: type[Any]) -> Callable[[Any, dict[str, Any]], None]:
    """What ``object.__setattr__(record, "__dict__", d)`` calls for a record of ``cls``
    (the ``__set__`` of the class's ``__dict__`` descriptor), without looking it up for
    each record."""
    for klass in cls.__mro__:
        descriptor = vars(klass).get("__dict__")
        if isinstance(descriptor, GetSetDescriptorType):
            return descriptor.__set__
    raise ImportError(f"{cls.__name__} has no instance dict")  # pragma: no cover


_SET_DICT = {cls: _dict_setter(cls) for cls in _CLASSES.values()}
_OPTIONAL: dict[str, tuple[str, ...]] = {
    _ENVELOPE: OPTIONAL_FIELDS,
    _TRANSITION: StatusEvent.OPTIONAL,
    _ANNOTATION: Annotation.OPTIONAL,
    _RECORD: Record.OPTIONAL,
}


class Plan(NamedTuple):
    """What the lines of one key set are and need, worked out once per key set."""

    kind: str
    keys: frozenset[str]
    checked: tuple[tuple[str, int], ...]  # the fields to check and their rules
    extra_keys: tuple[str, ...]  # keys the record keeps in ``extra``, in line order
    missing: tuple[str, ...]  # optional fields the lines lack, set to None
    absent: frozenset[str]
    additions: dict[str, Any]  # what each line's instance dict gets: the missing, absent
    cls: type[Any]
    spec: Any  # ``list[Struct]`` of the checked fields, for msgspec.convert to check
    times: tuple[str, int] | None  # the field checked as a time, and its rule
    objects: tuple[str, ...]  # the fields that must hold JSON objects
    names: tuple[str, ...]  # the names, which hold no control character (_NAMES)


class Group(NamedTuple):
    """The lines of one chunk that hold the same keys in the same order: one kind."""

    plan: Plan
    positions: range | list[int]  # where its lines are in the chunk
    objs: list[dict[str, Any]]


class MixedChunk(NamedTuple):
    """Consecutive lines of a log, every one validated, with their places and groups."""

    first_line: int  # physical number of the first line
    offsets: list[int]
    lengths: list[int]  # bytes of each line without its newline
    objs: list[dict[str, Any]]
    event_ids: list[str]
    groups: list[Group]
    end: int  # offset just past the chunk's last newline


# --------------------------------------------------------------------------- checks

# The rule of each field a kind checks (SPEC sections 2 and 10), as check_line applies
# them: a string, a non-empty one ("name"), one of at most 200 characters, a lane, a JSON
# object, a boolean, an integer in 0..2**63-1, a string or null ("opt"), an actor as
# check_actor says, the annotation kind; a timestamp and a transition's time are strings
# matched by a regex once per chunk.
_STR, _NAME, _NAME200, _LANE, _DICT, _BOOL, _CLOCK, _OPT, _ACTOR, _KIND, _STAMP, _TIME = range(12)
_REQUIRED: dict[str, tuple[tuple[str, int], ...]] = {
    _ENVELOPE: (("event_type", _NAME200), ("payload", _DICT)),
    _TRANSITION: (
        ("wp_id", _NAME),
        ("from_lane", _LANE),
        ("to_lane", _LANE),
        ("at", _TIME),
        ("actor", _ACTOR),
        ("force", _BOOL),
        ("execution_mode", _STR),
    ),
    _ANNOTATION: (
        ("kind", _KIND),
        ("wp_id", _NAME),
        ("at", _STR),
        ("actor", _ACTOR),
        ("delta", _DICT),
    ),
    _RECORD: (("type", _NAME), ("at", _STR)),
}
_IF_THERE: dict[str, tuple[tuple[str, int], ...]] = {
    _ENVELOPE: (
        ("aggregate_id", _NAME200),
        ("node_id", _NAME),
        ("lamport_clock", _CLOCK),
        ("causation_id", _OPT),
        ("correlation_id", _OPT),
    ),
    _TRANSITION: (("lamport_clock", _CLOCK),),
    _ANNOTATION: (("lamport_clock", _CLOCK),),
    _RECORD: (("lamport_clock", _CLOCK),),
}

#: The fields that are names (SPEC section 2, an envelope's): check_name and the node
#: id's check refuse a control character in them. Checked column by column, and only in
#: a chunk that may hold one (see :func:`_may_hold_controls`).
_NAMES = ("event_type", "aggregate_id", "node_id")

_plans: dict[tuple[str, ...], Plan] = {}
_MAX_PLANS = 4096  # key sets remembered; a log of ever-new key sets is still read right


def _kind_of(keys: frozenset[str]) -> str:
    """The kind told by the keys, as :func:`~replaylog.lines.line_kind` tells it (the
    ``kind`` value is checked with the other fields)."""
    if "event_type" in keys:
        return _ENVELOPE
    if "kind" in keys:
        return _ANNOTATION
    if "type" in keys:
        return _RECORD
    if "to_lane" in keys:
        return _TRANSITION
    raise Unclean


class _ActorObject(msgspec.Struct, forbid_unknown_fields=True):
    """An actor given as an object: exactly these four keys, each a string or null."""

    role: str | None
    profile: str | None
    tool: str | None
    model: str | None


if frozenset(_ActorObject.__struct_fields__) != ACTOR_KEYS:  # pragma: no cover
    raise ImportError("fastread's actor object differs from ACTOR_KEYS")

# What msgspec.convert is to check of each rule (a time is matched, and an object's
# type checked, column by column after: a ``dict`` here would copy each one).
_RULE_TYPES: dict[int, Any] = {
    _STR: str,
    _NAME: Annotated[str, msgspec.Meta(min_length=1)],
    _NAME200: _Name,
    _LANE: Literal[LANES],
    _DICT: Any,
    _BOOL: bool,
    _CLOCK: Annotated[int, msgspec.Meta(ge=0, le=MAX_CLOCK)],
    _OPT: str | None,
    _ACTOR: str | _ActorObject,
    _KIND: Literal["annotation"],
    _STAMP: str,
    _TIME: str,
}


def _spec(checked: list[tuple[str, int]]) -> Any:
    """The type that msgspec.convert checks a group's lines against: a list of a
    ``Struct`` of the checked fields (any other key of a line is passed over)."""
    struct: Any = msgspec.defstruct(
        "_Checked", [(name, _RULE_TYPES[rule]) for name, rule in checked]
    )
    return list[struct]


def _plan(shape: tuple[str, ...]) -> Plan:
    """The plan of a key set (in line order); raise :class:`Unclean` if its lines cannot
    be of any kind (no id, a required field missing)."""
    plan = _plans.get(shape)
    if plan is not None:
        return plan
    keys = frozenset(shape)
    _need("event_id" in keys)
    kind = _kind_of(keys)
    checked = list(_REQUIRED[kind])
    _need(all(name in keys for name, _ in checked))
    checked.extend(field for field in _IF_THERE[kind] if field[0] in keys)
    if kind == _ENVELOPE:  # its time: a timestamp (ISO-8601 UTC), else any string `at`
        checked.append(("timestamp", _STAMP) if "timestamp" in keys else ("at", _STR))
        _need(checked[-1][0] in keys)
    known = _KNOWN[kind]
    missing = tuple(k for k in _OPTIONAL[kind] if k not in keys)
    absent = frozenset(missing) if missing else _NOTHING
    plan = Plan(
        kind,
        keys,
        tuple(checked),
        tuple(k for k in shape if k not in known),
        missing,
        absent,
        {**dict.fromkeys(missing), "absent": absent},
        _CLASSES[kind],
        _spec(checked),
        next(((name, rule) for name, rule in checked if rule in (_STAMP, _TIME)), None),
        tuple(name for name, rule in checked if rule == _DICT),
        tuple(name for name in _NAMES if name in keys) if kind == _ENVELOPE else (),
    )
    if len(_plans) >= _MAX_PLANS:
        _plans.clear()
    _plans[shape] = plan
    return plan


class _Times(NamedTuple):
    """A rule for a column of times: the pattern of one time, the same for a column of
    them joined by newlines, whether the zone may only be UTC (``+00:00``), and the
    checks of each layout the pattern matched once, by template (see :func:`_layout`)."""

    one: re.Pattern[str]
    column: re.Pattern[str]
    utc_only: bool
    layouts: dict[bytes, _Layout]


_STAMP_TIMES = _Times(re.compile(TIMESTAMP_PATTERN), _STAMPS, True, {})
_ISO_TIMES_RULE = _Times(ISO_8601, _ISO_TIMES, False, {})

_AS_D = bytes.maketrans(b"0123456789", b"d" * 10)
_ZERO = bytes(1)
# The two-digit fields of YYYY-MM-DD?HH:MM:SS (where both patterns bound them), by offset,
# with the values each may take.
_DATE_TIME = (
    (5, bytes(range(1, 13))),
    (8, bytes(range(1, 32))),
    (11, bytes(range(24))),
    (14, bytes(range(60))),
    (17, bytes(range(61))),  # a leap second
)
_HOURS, _MINUTES = _DATE_TIME[2][1], _DATE_TIME[3][1]
_FEW_TIMES = 12  # below this many, the regex costs less than the checks by layout
_MAX_LAYOUTS = 4  # a column of more layouts is left to the regex


def _all_times(rule: _Times, texts: Sequence[Any], count: int) -> bool:
    """True if every one of the ``count`` texts is a string that ``rule.one`` matches.

    A column of one layout (the usual) is checked by :func:`_same_layout`; one of a few
    layouts, each of its own length, layout by layout; anything else by one regex over
    the texts joined (four times slower for a column of 20,000 times, and cheaper for a
    column of a few)."""
    try:
        joined = "\n".join(texts) + "\n"
    except TypeError:
        return False
    # A text holding a newline could pass as two texts: the count rules that out.
    if joined.count("\n") != count:
        return False
    if count >= _FEW_TIMES:
        if _same_layout(rule, joined, count):
            return True
        lengths = list(map(len, texts))
        layouts = set(lengths)
        if 1 < len(layouts) <= _MAX_LAYOUTS:
            for length in layouts:
                some = list(compress(texts, map(length.__eq__, lengths)))
                if not _same_layout(rule, "\n".join(some) + "\n", len(some)):
                    break
            else:
                return True
    return rule.column.fullmatch(joined) is not None


def _same_layout(rule: _Times, joined: str, count: int) -> bool:
    """True if the ``count`` times joined (each with its newline) are, all of them, times
    that ``rule.one`` matches and of one layout: a date and a time with seconds, the same
    fraction digits and zone form, digits at the same places and the same other
    characters. Of a layout that the pattern matched once (see :func:`_layout`), a time
    matches too if its two-digit fields are in bounds: the month, day, hour, minute,
    second and the zone's hours and minutes, each checked for all the times at once in C
    (the field's digits, one byte each, read as big integers). False means only "not
    shown here": the regex judges."""
    if not joined.isascii():
        return False
    data = joined.encode("ascii")
    stride = data.index(b"\n") + 1
    if len(data) != stride * count:
        return False
    template = data[:stride].translate(_AS_D)
    layout = rule.layouts.get(template)
    if layout is None:
        layout = _layout(rule, joined[: stride - 1], template)
        if layout is None:
            return False
    if data.translate(_AS_D) != template * count:
        return False  # some time of another layout
    for offset, digits in layout.digits:
        if data[offset::stride].translate(None, digits):
            return False
    pairs = layout.pairs
    if pairs:
        # Digits are bytes 48 to 57: 10 * tens + units - 528 is each field's value (0 to
        # 99, one byte each, so no carry crosses from one time to the next), for the
        # fields one after the other.
        size = len(pairs) * count
        tens = int.from_bytes(b"".join([data[offset::stride] for offset in pairs]), "big")
        units = int.from_bytes(b"".join([data[offset + 1 :: stride] for offset in pairs]), "big")
        ones = int.from_bytes(b"\x01" * size, "big")
        values = (10 * tens + units - 528 * ones).to_bytes(size, "big")
        for k, allowed in enumerate(layout.allowed):
            if values[k * count : (k + 1) * count].translate(None, allowed):
                return False
    return True


class _Layout(NamedTuple):
    """What is checked of the times of one layout: digits that may only be some (by
    offset), and two-digit fields whose values are bounded otherwise (by offset of their
    tens, with the values each may take)."""

    digits: tuple[tuple[int, bytes], ...]
    pairs: tuple[int, ...]
    allowed: tuple[bytes, ...]


_MAX_LAYOUTS_KNOWN = 256  # per rule; a column of ever-new layouts is still read right


def _layout(rule: _Times, first: str, template: bytes) -> _Layout | None:
    """The checks of the layout of ``first``, learned from it if the pattern matches it,
    and kept in ``rule.layouts``; None if not (its column is left to the regex).

    The checks depend on the layout only: which places hold digits, and the other
    characters. So a time of the layout matches the pattern if its fields are within
    the bounds checked: the pattern bounds nothing else (the year and fraction digits
    may be any). A field whose values are every pair of some tens and some units (the
    minutes: 0 to 5, then any digit) is checked digit by digit."""
    if len(first) < 19 or first[16] != ":" or not rule.one.fullmatch(first):
        return None
    end = 19  # past the seconds, and the fraction if any
    if first[19:20] in (".", ","):
        end = 20
        while first[end : end + 1].isdigit():
            end += 1
    fields = list(_DATE_TIME)
    zone = first[end:]
    if zone not in ("", "Z"):  # [+-]hh:mm or [+-]hhmm, as the pattern matched it
        minutes = end + (4 if ":" in zone else 3)
        fields.append((end + 1, _ZERO if rule.utc_only else _HOURS))
        fields.append((minutes, _ZERO if rule.utc_only else _MINUTES))
    digits: list[tuple[int, bytes]] = []
    pairs: list[int] = []
    allowed: list[bytes] = []
    for offset, values in fields:
        tens = bytes(sorted({48 + v // 10 for v in values}))
        units = bytes(sorted({48 + v % 10 for v in values}))
        if len(tens) * len(units) == len(values):  # every pair of those digits
            digits.append((offset, tens))
            if len(units) < 10:
                digits.append((offset + 1, units))
        else:
            pairs.append(offset)
            allowed.append(values)
    if len(rule.layouts) >= _MAX_LAYOUTS_KNOWN:
        rule.layouts.clear()
    layout = rule.layouts[template] = _Layout(tuple(digits), tuple(pairs), tuple(allowed))
    return layout


def _all_ulids(eids: list[str], *, sized: bool = False) -> bool:
    """True if every id matches ULID_PATTERN: 26 characters of its alphabet, the first at
    most 7; checked on the ids joined, in C, several times faster than a regex. ``sized``:
    every id is known to be a string of 26 characters already."""
    try:
        if not sized and set(map(len, eids)) != {26}:
            return False
        joined = "".join(eids).encode("ascii")
    except (TypeError, UnicodeEncodeError):  # not a string, or not ASCII
        return False
    return not joined.translate(None, _ULID_DIGITS) and not joined[::26].translate(
        None, _ULID_FIRST
    )


def _need(ok: bool) -> None:
    if not ok:
        raise Unclean


def _column(objs: list[dict[str, Any]], name: str) -> list[Any]:
    return list(map(itemgetter(name), objs))


def _check_kind(groups: list[Group], names: bool = True) -> None:
    """Every rule :func:`~replaylog.lines.check_line` applies, over all the lines of one
    kind in a chunk: each group's checked fields by msgspec.convert (in C, a line at a
    time), then the kind's times and objects column by column, and with ``names`` its
    names (see :func:`_may_hold_controls`)."""
    times: dict[int, list[Any]] = {}  # by rule
    objects: list[Any] = []
    texts: list[str] = []
    for group in groups:  # a handful
        plan = group.plan
        try:
            _convert(group.objs, plan.spec, strict=True)
        except msgspec.ValidationError:
            raise Unclean from None
        if plan.times is not None:
            name, rule = plan.times
            times.setdefault(rule, []).extend(map(itemgetter(name), group.objs))
        for name in plan.objects:
            objects.extend(map(itemgetter(name), group.objs))
        if names:
            for name in plan.names:  # strings: msgspec.convert checked them
                texts.extend(map(itemgetter(name), group.objs))
    _need(set(map(type, objects)) <= _TYPE_DICT)
    if names:
        _need(names_plain(texts))
    for rule, column in times.items():
        _need(_all_times(_STAMP_TIMES if rule == _STAMP else _ISO_TIMES_RULE, column, len(column)))


def _groups(objs: list[dict[str, Any]]) -> list[tuple[tuple[str, ...], range | list[int]]]:
    """The chunk's lines grouped by their keys (in order): ``(keys, positions)``."""
    shapes = list(map(tuple, objs))
    first = shapes[0]
    count = len(shapes)
    if shapes.count(first) == count:
        return [(first, range(count))]
    found: dict[tuple[str, ...], list[int]] = {}
    for i, shape in enumerate(shapes):
        found.setdefault(shape, []).append(i)
    return list(found.items())


def check_objects(
    objs: list[dict[str, Any]], *, names: bool = True
) -> tuple[list[str], list[Group]]:
    """Validate a chunk's parsed lines; returns their ids and groups, or raise
    :class:`Unclean` on any doubt. ``names=False``: the lines' bytes hold no control
    character (see :func:`_may_hold_controls`), so no name need be looked at for one."""
    _need(set(map(type, objs)) == _TYPE_DICT)
    groups = []
    kinds: dict[str, list[Group]] = {}
    for shape, positions in _groups(objs):
        plan = _plan(shape)
        members = objs if type(positions) is range else list(map(objs.__getitem__, positions))
        group = Group(plan, positions, members)
        groups.append(group)
        kinds.setdefault(plan.kind, []).append(group)
    eids = _column(objs, "event_id")
    _need(_all_ulids(eids))
    for same_kind in kinds.values():
        _check_kind(same_kind, names)
    return eids, groups


_STORE_SHAPE = tuple(_StoreLine.__struct_fields__)


def _check_store_lines(objs: list[dict[str, Any]], names: bool) -> tuple[list[str], list[Group]]:
    """What msgspec left to check of the store's own lines: the ids' alphabet (their length
    is checked), the timestamps and, with ``names``, the names (see
    :func:`_may_hold_controls`)."""
    eids = _column(objs, "event_id")
    stamps = _column(objs, "timestamp")
    _need(_all_ulids(eids, sized=True) and _all_times(_STAMP_TIMES, stamps, len(objs)))
    if names:
        _need(names_plain(chain.from_iterable(_column(objs, name) for name in _NAMES)))
    return eids, [Group(_plan(_STORE_SHAPE), range(len(objs)), objs)]


# --------------------------------------------------------------------------- typed lines

# spec-kitty writes its transitions and annotations with sorted keys, so a line's last
# keys tell its kind: ``..., "to_lane": "done", "wp_id": "WP01"}``. A line marked so is
# only a candidate: its kind's typed decoder judges it, and anything it refuses is read
# the general way.
_TAIL = 96  # the bytes of a line's end looked at
_MARKS = ((_TRANSITION, b'"to_lane": "'), (_ANNOTATION, b'"kind": "annotation"'))


class _Typed(NamedTuple):
    """A decoder of the lines of one key set (in line order) of a kind with no extra keys:
    a ``Struct`` of exactly those fields, each checked as the kind's rules say while the
    line is parsed (the ids' alphabet and the times are checked after, column by column).

    Each key set has two: one whose ``actor`` may only be a string, and one where it may
    also be an object (``objects``), whose keys are then checked after, column by column.
    Most lines' actor is a string: their runs need no look at the actors at all."""

    shape: tuple[str, ...]
    plan: Plan
    decode: Callable[[bytes], Any]
    objects: bool


# What the typed decoders check of each rule while they parse (a JSON object is read as
# a dict here, so nothing is copied).
_DECODED_TYPES = {
    **_RULE_TYPES,
    _DICT: dict[str, Any],
    _ACTOR: str | dict[str, str | None],
}
_DECODED_STRING_ACTOR = {**_DECODED_TYPES, _ACTOR: str}
_typed: dict[str, _Typed] = {}  # by kind: the decoder last taken up
# Every key set's decoders (by whether an actor may be an object), or None.
_typed_shapes: dict[tuple[tuple[str, ...], bool], _Typed | None] = {}
_MAX_TYPED = 256  # decoders remembered (a few kB each); a log of ever-new key sets is still read


def _typed_for(kind: str, line: bytes) -> _Typed | None:
    """The typed decoder of the key set of ``line``, if its lines can be read so."""
    try:
        obj = _decode(line)
        shape = tuple(obj) if type(obj) is dict else ()
    except (ValueError, RecursionError):
        return None
    objects = type(obj.get("actor")) is dict if shape else False
    if (shape, objects) in _typed_shapes:
        typed = _typed_shapes[shape, objects]
    else:
        typed = _make_typed(shape, objects)
        if len(_typed_shapes) >= _MAX_TYPED:
            _typed_shapes.clear()
        _typed_shapes[shape, objects] = typed
    if typed is None or typed.plan.kind != kind:
        return None
    _typed[kind] = typed
    return typed


def _make_typed(shape: tuple[str, ...], objects: bool) -> _Typed | None:
    try:
        plan = _plan(shape)
    except Unclean:
        return None
    if plan.extra_keys:
        return None
    rules = dict(plan.checked)
    types = _DECODED_TYPES if objects else _DECODED_STRING_ACTOR
    fields = [
        (name, _Id if name == "event_id" else types.get(rules.get(name, -1), Any)) for name in shape
    ]
    struct = msgspec.defstruct("_TypedLine", fields, forbid_unknown_fields=True, gc=False)
    return _Typed(shape, plan, msgspec.json.Decoder(struct).decode, objects)


def _typed_groups(kind: str, lines: list[bytes], positions: list[int]) -> list[Group] | None:
    """The groups of ``lines``, all of ``kind``, read by typed decoders and checked; None
    if they are not all so (the general way reads them then).

    The lines are read in runs: each decoder reads as far as it can (a line of another
    key set stops it), and the decoder of that line's key set goes on from there. All the
    runs take their lines from one iterator, so that a log whose key sets alternate is
    still read in one pass over its lines."""
    count = len(lines)
    if not count:
        return None
    objs: list[dict[str, Any]] = []
    runs: list[tuple[_Typed, int, int]] = []
    typed = _typed.get(kind)
    plan: Plan | None = None
    before: _Typed | None = None  # the decoder of the run before
    rest = iter(lines)
    start = 0  # where the run of ``typed`` starts
    while True:
        if typed is not None:
            try:
                objs.extend(map(_as_dict, map(typed.decode, rest)))
            except (ValueError, RecursionError):
                pass  # lines[len(objs)] was taken from ``rest`` and refused
            end = len(objs)
            if end > start:
                plan = typed.plan
                runs.append((typed, start, end))
                start = end
            if start == count:
                break
        else:
            next(rest)  # (no decoder of this kind yet: the first line teaches one)
        line = lines[start]
        if before is not None:
            # Key sets often alternate (spec-kitty's transitions with and without
            # ``review_result``): the decoder of the run before this one is tried first.
            try:
                objs.append(_as_dict(before.decode(line)))
                typed, before = before, typed
                continue
            except (ValueError, RecursionError):
                pass
        learned = _typed_for(kind, line)
        if learned is None or learned is typed or learned is before:
            return None  # a line of no typed key set, or one its decoder refuses
        try:
            objs.append(_as_dict(learned.decode(line)))
        except (ValueError, RecursionError):
            return None
        typed, before = learned, typed
    if plan is None:
        return None  # (the ids' alphabet is checked with the chunk's, by _parse)
    times = plan.times  # (one kind: one rule)
    if times is not None:
        name, rule = times
        column = _column(objs, name)
        if not _all_times(_STAMP_TIMES if rule == _STAMP else _ISO_TIMES_RULE, column, count):
            return None
    # An actor object's keys, in the runs of a decoder that lets an actor be one.
    actors = [
        actor
        for typed, start, end in runs
        if typed.objects
        for actor in map(itemgetter("actor"), objs[start:end])
        if type(actor) is dict
    ]
    if actors and set(map(frozenset, actors)) != {ACTOR_KEYS}:
        return None
    if len(runs) == 1:
        return [Group(plan, positions, objs)]
    parts: dict[tuple[str, ...], Group] = {}
    for typed, start, end in runs:  # a key set's runs make one group
        group = parts.setdefault(typed.shape, Group(typed.plan, [], []))
        group.positions.extend(positions[start:end])  # type: ignore[union-attr]
        group.objs.extend(objs[start:end])
    return list(parts.values())


def _parse_typed(parts: list[bytes], names: bool = True) -> tuple[list[Any], list[Group]] | None:
    """The objects and groups of a chunk whose transitions and annotations are read by
    typed decoders (see :class:`_Typed`), the other lines the general way; None if no
    line could be read so."""
    count = len(parts)
    rest: range | list[int] = range(count)  # the lines not read yet
    rest_parts = parts
    groups: list[Group] = []
    for kind, mark in _MARKS:
        marks = list(map(bytes.count, rest_parts, repeat(mark), repeat(-_TAIL)))
        if 1 not in marks:
            continue
        marked = list(compress(rest, marks))
        typed = _typed_groups(kind, list(compress(rest_parts, marks)), marked)
        if typed is None:
            continue
        groups.extend(typed)
        if len(marked) == len(rest):
            rest = []
            break
        unmarked = list(map(not_, marks))
        rest = list(compress(rest, unmarked))
        rest_parts = list(compress(rest_parts, unmarked))
    if not groups:
        return None
    if len(groups) == 1 and not rest:
        return groups[0].objs, groups
    objs: list[Any] = [None] * count
    if rest:
        try:
            others = list(map(_decode, rest_parts))
        except (ValueError, RecursionError):
            raise Unclean from None
        _, their_groups = check_objects(others, names=names)
        for group in their_groups:  # their positions, among the others: in the chunk
            where = (
                rest
                if type(group.positions) is range
                else list(map(rest.__getitem__, group.positions))
            )
            groups.append(group._replace(positions=where))
    for group in groups:
        list(map(setitem, repeat(objs), group.positions, group.objs))
    return objs, groups


def _parse(
    parts: list[bytes], records: bool, names: bool = True
) -> tuple[list[Any], list[str], list[Group]]:
    """The validated objects of a chunk's lines, their ids and groups. ``names=False``:
    the lines hold no control character (see :func:`_may_hold_controls`)."""
    if records:
        # The store's own lines are parsed and checked at once; spec-kitty's transitions
        # and annotations by typed decoders. Anything else goes to the general parse.
        if parts[0].startswith(b'{"aggregate_id": '):  # sorted keys
            try:
                objs = list(map(_as_dict, map(_decode_store_line, parts)))
                eids, groups = _check_store_lines(objs, names)
                return objs, eids, groups
            except (ValueError, RecursionError, Unclean):
                pass
        typed = _parse_typed(parts, names)
        if typed is not None:
            objs, groups = typed
            eids = _column(objs, "event_id")
            # Every id has a ULID's length: the typed decoders checked theirs, and
            # check_objects the others' alphabet too.
            _need(_all_ulids(eids, sized=True))
            return objs, eids, groups
    try:
        objs = list(map(_decode, parts))
    except (ValueError, RecursionError):
        raise Unclean from None
    eids, groups = check_objects(objs, names=names)
    return objs, eids, groups


def _may_hold_controls(chunk: bytes) -> bool:
    """False if no string in ``chunk``'s JSON can hold a control character. In JSON one
    is an escape (a backslash), unless it is DEL or a C1 control written as UTF-8 (its
    first byte 0xC2): a chunk of none of those three bytes (three memchr, the usual for
    the store's lines) needs no look at its names."""
    return b"\\" in chunk or b"\x7f" in chunk or b"\xc2" in chunk


def mixed_chunks(
    path: str,
    *,
    start: int = 0,
    start_line: int = 0,
    lock: bool = True,
    records: bool = True,
    places: bool = True,
) -> Iterator[MixedChunk]:
    """Read a log of any line kinds from byte ``start`` in validated chunks.

    Raises :class:`Unclean` on anything the plain path must judge (see the module
    docstring); duplicate ids are looked for from ``start`` on. A missing file yields
    nothing. With ``records`` (for :func:`build_records` and :func:`index_columns`), the
    store's own lines are parsed into dicts in the order of their fields; without, each
    object holds the line's keys in the line's order. Without ``places``, the chunks'
    ``offsets`` and ``lengths`` are left empty (for a reader that needs only the lines).
    """
    try:
        # As open_regular opens (no link followed, no wait on a FIFO), but the file's kind
        # is told by the fstat after the lock, which also gives its size: one system call
        # a log fewer. Anything but a regular file is left to the plain path, which names it.
        fd = os.open(path, _OPEN_FLAGS) if lock else open_regular(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    except OSError:
        raise Unclean from None
    try:
        limit: int | None = None
        if lock:
            # As scan_log does: the shared lock waits out an append in progress, and every
            # byte below the size seen then is a complete write. Reading only those, the
            # lock can go at once, so a slow consumer never holds up an append.
            flock(fd, fcntl.LOCK_SH, path)
            seen_then = os.fstat(fd)
            fcntl.flock(fd, fcntl.LOCK_UN)
            _need(S_ISREG(seen_then.st_mode))
            limit = seen_then.st_size
        seen: set[str] = set()
        pos = start  # where the next pread starts: always where a line starts
        line = start_line
        while True:
            want = _READ_CHUNK if limit is None else min(_READ_CHUNK, limit - pos)
            chunk = os.pread(fd, want, pos) if want > 0 else b""
            if not chunk:
                break
            # Each line with its newline; BytesIO finds them with memchr, several times
            # faster than bytes.split, and shares the chunk's buffer.
            parts = BytesIO(chunk).readlines()
            consumed = len(chunk)
            if not parts[-1].endswith(b"\n"):
                # The line the chunk ends in is read again, whole, by the next pread
                # (cheaper than joining the chunks). A chunk that holds no whole line ends
                # in a torn tail or holds part of a line over the limit.
                consumed -= len(parts.pop())
                _need(bool(parts))
            if places:
                sizes = list(map(len, parts))
                _need(max(sizes) <= MAX_LINE_BYTES)  # each line shorter than the limit
            elif consumed > MAX_LINE_BYTES:  # (else no line can be longer)
                _need(max(map(len, parts)) <= MAX_LINE_BYTES)
            objs, eids, groups = _parse(parts, records, _may_hold_controls(chunk))
            count = len(parts)
            del parts
            # One pass over the ids finds a duplicate within the chunk or with an earlier one.
            known = len(seen)
            seen.update(eids)
            if len(seen) != known + len(eids):
                raise Unclean  # scan_log reads identical duplicates once, or names the conflict
            end = pos + consumed
            offsets: list[int] = []
            lengths: list[int] = []
            if places:
                offsets = list(accumulate(sizes, initial=pos))
                offsets.pop()  # the end
                lengths = list(map((-1).__add__, sizes))  # without the newline
            yield MixedChunk(line + 1, offsets, lengths, objs, eids, groups, end)
            line += count
            pos = end
            if pos == limit:
                break  # all there is: no read to learn it
    finally:
        os.close(fd)


def _prepare(group: Group) -> type[Any]:
    """Turn a group's line objects into its records' instance dicts, as
    :func:`~replaylog.lines.build_line` does one by one: keys the record does not know
    moved into ``extra``, and the optional fields it lacks set to None and named in
    ``absent``. Returns the record class.

    Less is stored than build_line stores, for the same record: a spec-kitty record with
    no extra keys makes its empty ``extra`` when first asked for, its ``absent`` is told
    then by the fields it lacks, and those are the class's None (see
    :class:`~replaylog.lines.LineRecord`)."""
    plan, objs = group.plan, group.objs
    extra_keys = plan.extra_keys
    lazy = plan.cls is not Event
    if extra_keys:
        # Line by line: a column of pops per key, then a dict per line from their zip,
        # cost more at every size (callgrind, the corpus's 729 such lines in 128 groups:
        # 13.5 M instructions by column, 8.5 M so; one group of 9,600: 84 M, 76 M).
        for obj in objs:
            obj["extra"] = {key: obj.pop(key) for key in extra_keys}
    elif not lazy:
        # (operator.setitem is a plain C call; the dict.__setitem__ slot wrapper costs
        # twice as much per line.)
        list(map(setitem, objs, repeat("extra"), map(dict.copy, repeat(_EMPTY, len(objs)))))
    if plan.missing and not lazy:
        list(map(dict.update, objs, repeat(plan.additions)))
    return plan.cls


def build_records(chunk: MixedChunk) -> list[Line]:
    """The records of a chunk's lines, in file order; the line objects are consumed."""
    if len(chunk.groups) == 1:
        cls = _prepare(chunk.groups[0])
        records: list[Any] = list(map(_new_object, repeat(cls, len(chunk.objs))))
        list(map(_SET_DICT[cls], records, chunk.objs))
        return records
    records = [None] * len(chunk.objs)
    for group in chunk.groups:
        cls = _prepare(group)
        made = list(map(_new_object, repeat(cls, len(group.objs))))
        list(map(_SET_DICT[cls], made, group.objs))
        list(map(setitem, repeat(records), group.positions, made))
    return records


def index_columns(
    chunk: MixedChunk,
) -> tuple[list[str], list[str], list[str], list[int | None]]:
    """What the index keeps of each line of a chunk, in file order, as
    :func:`~replaylog.lines.index_fields` gives it: event types, aggregates, node ids and
    Lamport values (None where a line carries none). Call before :func:`build_records`."""
    parts = [_index_part(group) for group in chunk.groups]
    if len(parts) == 1:
        return parts[0]
    count = len(chunk.objs)
    columns: tuple[list[Any], ...] = tuple([None] * count for _ in range(4))
    for group, values in zip(chunk.groups, parts, strict=True):
        for column, part in zip(columns, values, strict=True):
            list(map(setitem, repeat(column), group.positions, part))
    return columns  # type: ignore[return-value]


def _index_part(group: Group) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
    objs, keys, kind = group.objs, group.plan.keys, group.plan.kind
    blank = [""] * len(objs)

    def col(name: str, default: Any) -> list[Any]:
        return _column(objs, name) if name in keys else [default] * len(objs)

    clocks = col("lamport_clock", None)
    if kind == _ENVELOPE:
        return col("event_type", ""), col("aggregate_id", ""), col("node_id", ""), clocks
    subjects = col("wp_id", "")
    if kind == _RECORD:
        if set(map(type, subjects)) != _TYPE_STR:  # a record's wp_id may be anything
            subjects = [s if type(s) is str else "" for s in subjects]
        return col("type", ""), subjects, blank, clocks
    return blank, subjects, blank, clocks


def read_objects(path: str, *, ordered: bool = True) -> list[dict[str, Any]] | None:
    """Every line object of a log (any kinds), or None when ``scan_log`` must read it.
    Without ``ordered``, an object's keys may come in another order than its line's (as
    a record's fields do), and the lines are read as for records, faster."""
    objs: list[dict[str, Any]] = []
    try:
        for chunk in mixed_chunks(path, records=not ordered, places=False):
            objs.extend(chunk.objs)
    except Unclean:
        return None
    return objs


def read_lines(path: str) -> list[Line] | None:
    """Every line of a log as its kind's record, or None when ``scan_log`` must read it."""
    chunks: list[MixedChunk] = []
    try:
        chunks.extend(mixed_chunks(path, places=False))
    except Unclean:
        return None
    # Built only once every chunk is known good: building consumes the line objects.
    if len(chunks) == 1:
        return build_records(chunks[0])
    return list(chain.from_iterable(map(build_records, chunks)))
