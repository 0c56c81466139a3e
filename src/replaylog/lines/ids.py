"""Ids and times of lines (SPEC section 2): ULIDs, this machine's node id, the UTC time.

On every hot path (the CLI append, the reader), so it imports nothing heavier than the
standard library. ULIDs are encoded here in a few lines rather than with python-ulid,
whose import alone costs more than a whole ``replaylog append``.
"""

from __future__ import annotations

import os
import re
import time
from _random import Random  # random's generator itself: the module imports much more
from _thread import allocate_lock  # threading.Lock, without importing threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hashlib import sha256 as builtin_sha256
else:
    # SHA-256 without hashlib, whose import loads all of OpenSSL: more than an append costs.
    try:
        from _sha2 import sha256 as builtin_sha256  # Python 3.12 and later
    except ImportError:
        try:
            from _sha256 import sha256 as builtin_sha256  # Python 3.11 and earlier
        except ImportError:  # a Python built without them
            from hashlib import sha256 as builtin_sha256

__all__ = [
    "ULID_PATTERN",
    "builtin_sha256",
    "generate_event_id",
    "local_node_id",
    "utc_now",
    "validate_ulid_format",
]

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
#: A ULID as text; the readers match whole columns of ids with the same pattern.
ULID_PATTERN = r"[0-7][0-9A-HJKMNP-TV-Z]{25}"
_ULID_RE = re.compile(ULID_PATTERN)


# --------------------------------------------------------------------------- ULIDs

_ulid_lock = allocate_lock()
_last_ulid = 0  # the last id this process made, as a 128-bit int
# Seeded from the OS once (and again in a forked child): ids need uniqueness, not
# secrecy, and a system call per id would cost more than the rest of making it.
_random = Random(int.from_bytes(os.urandom(32), "big"))  # every bit of the seed used
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


_last_id: tuple[int, str] = (0, "")  # the last id generate_event_id made, and its text


def generate_event_id() -> str:
    """A new ULID. Ids made by one process strictly increase, even within one millisecond:
    the first of a millisecond is random, each next one the one before plus one."""
    global _last_ulid, _last_id
    with _ulid_lock:
        last = _last_ulid
        ms = time.time_ns() // 1_000_000
        if ms > last >> 80:
            value = ms << 80 | _random_bits(80)
            text = _encode_ulid(value)
        else:
            # Same millisecond (or a clock step back): count up from the last id. Its
            # text, when this function made it, gives all but the last two digits.
            value = last + 1
            low = value & 1023
            known, text = _last_id
            text = text[:24] + _PAIRS[low] if known == last and low else _encode_ulid(value)
        _last_ulid = value
        _last_id = (value, text)
    return text


def generate_event_ids(count: int) -> list[str]:
    """``count`` new ULIDs in increasing order, as ``count`` calls of
    :func:`generate_event_id` would give them within one millisecond: a random first one,
    then each the one before plus one. Made 1,024 at a time: the ids of one run of the
    last two digits share the 24 before them, so each is that prefix plus a digit pair."""
    global _last_ulid
    if count <= 0:
        return []
    with _ulid_lock:
        first = (time.time_ns() // 1_000_000) << 80 | _random_bits(80)
        if first <= _last_ulid:
            first = _last_ulid + 1
        last = first + count - 1
        if last >> 128:  # pragma: no cover - past the year 10889
            raise OverflowError("no ULID is left above the last one made")
        _last_ulid = last
    pairs = _PAIRS
    ids: list[str] = []
    value = first
    while value <= last:
        low = value & 1023
        stop = min(1024, low + last - value + 1)
        prefix = _encode_ulid(value)[:24]
        ids.extend(map(prefix.__add__, pairs[low:stop]))
        value += stop - low
    return ids


def _forget_last_ulid() -> None:
    # A forked child must not count up from its parent's last id: both would make the
    # same ids within one millisecond. It starts afresh from the clock and new randomness.
    global _last_ulid
    _last_ulid = 0
    _random.seed(int.from_bytes(os.urandom(32), "big"))


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
        _node_id_cache = builtin_sha256(seed.encode()).hexdigest()[:16]
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
