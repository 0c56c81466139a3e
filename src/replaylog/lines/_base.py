"""What the records of spec-kitty's line kinds share: known fields, absent ones, extra keys."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from ..errors import EventValidationError
from .canonical import canonical_line, normalize_payload, show_value

__all__ = ["ACTOR_KEYS", "LineRecord", "check_actor", "check_str"]

T = TypeVar("T", bound="LineRecord")

_new_object = object.__new__
_set_attr = object.__setattr__


class LineRecord:
    """A frozen record of one line: its known fields, ``extra`` (every other key) and
    ``absent`` (the optional fields the line did not hold, so that :meth:`to_dict` gives
    the line's object back exactly). Subclasses are frozen dataclasses that name their
    ``REQUIRED`` and ``OPTIONAL`` fields and their check."""

    REQUIRED: ClassVar[tuple[str, ...]] = ()
    OPTIONAL: ClassVar[tuple[str, ...]] = ()
    extra: dict[str, Any]
    absent: frozenset[str]

    def __post_init__(self) -> None:
        # Records made by a caller are checked like lines read from a log; records read
        # from a log are built by :meth:`build` without this (they were checked already).
        _set_attr(self, "absent", frozenset(self.absent))
        unknown = self.absent - set(self.OPTIONAL)
        if unknown:
            raise EventValidationError(
                f"field(s) {', '.join(sorted(unknown))} cannot be absent from a {self.KIND}"  # type: ignore[attr-defined]
            )
        _set_attr(self, "extra", normalize_payload(self.extra, "extra"))
        clash = self.extra.keys() & self._KNOWN  # type: ignore[attr-defined]
        if clash:
            raise EventValidationError(f"extra key '{min(clash)}' collides with a field")
        from .kinds import check_line  # here: kinds imports the records built on this class

        kind = check_line(self.to_dict())
        if kind != self.KIND:  # type: ignore[attr-defined]
            raise EventValidationError(
                f"the line is a {kind}, not a {self.KIND}"  # type: ignore[attr-defined]
            )

    if not TYPE_CHECKING:  # (to a type checker, a record has its fields and no others)

        def __getattr__(self, name: str) -> Any:
            # Only for a name the instance and its class lack. A record the fast read path
            # built holds only what its line held (SPEC section 8): its empty ``extra`` is
            # made when first asked for, ``absent`` is told by the optional fields it lacks,
            # and those are the class's None.
            if name == "extra":
                return self.__dict__.setdefault("extra", {})
            if name == "absent":
                held = self.__dict__
                return held.setdefault(
                    "absent", frozenset(k for k in self.OPTIONAL if k not in held)
                )
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @classmethod
    def build(cls: type[T], obj: dict[str, Any]) -> T:
        """The record of a checked line object; ``obj`` is consumed, not copied."""
        known = cls._KNOWN  # type: ignore[attr-defined]
        obj["extra"] = {k: obj.pop(k) for k in [k for k in obj if k not in known]}
        if cls.OPTIONAL:
            missing = [k for k in cls.OPTIONAL if k not in obj]
            if missing:
                for k in missing:
                    obj[k] = None
                obj["absent"] = frozenset(missing)
        record: T = _new_object(cls)
        _set_attr(record, "__dict__", obj)
        return record

    @classmethod
    def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
        """Check a line object of this kind and build its record (``data`` is copied)."""
        if not isinstance(data, Mapping):
            raise EventValidationError(f"a line must be a JSON object, got {type(data).__name__}")
        from .kinds import check_line  # the kind is told by the keys: a line of another kind fails

        kind = check_line(data)
        if kind != cls.KIND:  # type: ignore[attr-defined]
            raise EventValidationError(
                f"the line is a {kind}, not a {cls.KIND}"  # type: ignore[attr-defined]
            )
        return cls.build(dict(data))

    def to_line(self) -> bytes:
        """The canonical line, newline included, as the log stores it (SPEC section 2)."""
        return canonical_line(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """The line object: the fields the line held, and its other keys."""
        d = {k: getattr(self, k) for k in self.REQUIRED}
        absent = self.absent
        for k in self.OPTIONAL:
            if k not in absent:
                d[k] = getattr(self, k)
        d.update(self.extra)
        return d


def check_str(obj: Mapping[str, Any], name: str, *, empty: bool = True) -> None:
    value = obj.get(name)
    if name not in obj:
        raise EventValidationError(f"missing field '{name}'")
    if type(value) is not str or (not empty and not value):
        what = "a string" if empty else "a non-empty string"
        raise EventValidationError(f"field '{name}' must be {what}, got {show_value(value)}")


ACTOR_KEYS = frozenset({"role", "profile", "tool", "model"})


def check_actor(obj: Mapping[str, Any]) -> None:
    """``actor``: a string, or an object of exactly role, profile, tool, model (str or null)."""
    if "actor" not in obj:
        raise EventValidationError("missing field 'actor'")
    actor = obj["actor"]
    if type(actor) is str:
        return
    if type(actor) is dict and actor.keys() == ACTOR_KEYS:
        for key in sorted(ACTOR_KEYS):
            if actor[key] is not None and type(actor[key]) is not str:
                raise EventValidationError(
                    f"field 'actor.{key}' must be a string or null, got {show_value(actor[key])}"
                )
        return
    raise EventValidationError(
        "field 'actor' must be a string or an object of exactly 'role', 'profile', 'tool'"
        f" and 'model', got {show_value(actor)}"
    )
