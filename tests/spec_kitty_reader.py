"""A log read the way spec-kitty reads it, to check that spec-kitty still reads ours.

This follows spec-kitty's ``specify_cli/status/store.py`` (``read_event_stream``) and
the ``from_dict`` decoders of its ``models.py``, rule by rule: which lines it skips,
which it takes as transitions or annotations, and which stop its read. The lanes are
then reduced with ``replaylog.board.snapshot`` (checked against spec-kitty's own
``status.json`` files in ``test_s10_spec_kitty_board.py``). The one thing left out is spec-kitty's
lookup of a legacy line's ``mission_id`` in a sibling ``meta.json``, which never
changes a lane.

    read_event_stream(feature_dir) -> SpecKittyStream   # or SpecKittyReadError
    read_lanes(feature_dir) -> {wp_id: lane}
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replaylog.board import snapshot

__all__ = ["SpecKittyReadError", "SpecKittyStream", "read_event_stream", "read_lanes"]

EVENTS_FILENAME = "status.events.jsonl"
#: spec-kitty's ``Lane`` enum, with its ``uninitialized`` read sentinel.
SPEC_KITTY_LANES = frozenset(
    {
        "genesis",
        "uninitialized",
        "planned",
        "claimed",
        "in_progress",
        "for_review",
        "in_review",
        "approved",
        "done",
        "blocked",
        "canceled",
    }
)
_ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
_ACTOR_FIELDS = ("role", "profile", "tool", "model")
#: ``type`` records spec-kitty skips; a record of any other type is read as a transition.
_RETROSPECTIVE_TYPES = frozenset(
    {"RetrospectiveCaptured", "RetrospectiveCaptureFailed", "RetrospectiveSkipped"}
)


class SpecKittyReadError(Exception):
    """A line that stops spec-kitty's read (its ``StoreError``), with its 1-based number."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


@dataclass
class SpecKittyStream:
    """What spec-kitty takes from a log: its transitions and annotations, raw."""

    transitions: list[dict[str, Any]] = field(default_factory=list)
    annotations: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0


def _check_actor(value: Any) -> None:
    # decode_actor: a dict must be exactly the four fields, each a str or null.
    if isinstance(value, dict):
        if set(value) != set(_ACTOR_FIELDS):
            raise ValueError(f"structured actor must contain exactly {sorted(_ACTOR_FIELDS)}")
        for name in _ACTOR_FIELDS:
            if value[name] is not None and not isinstance(value[name], str):
                raise ValueError(f"structured actor field {name!r} must be a string or null")


def _check_lane(value: Any) -> None:
    # Lane(value): a str that is one of the enum's values (an unhashable value is a TypeError).
    if value not in SPEC_KITTY_LANES or not isinstance(value, str):
        raise ValueError(f"{value!r} is not a valid Lane")


def _check_transition(obj: dict[str, Any]) -> None:
    """``StatusEvent.from_dict``: the keys it indexes, the lanes, and the nested records."""
    for key in ("event_id", "wp_id", "from_lane", "to_lane", "at", "actor", "force"):
        if key not in obj:
            raise KeyError(key)
    if "execution_mode" not in obj:
        raise KeyError("execution_mode")
    _check_lane(obj["from_lane"])
    _check_lane(obj["to_lane"])
    _check_actor(obj["actor"])
    evidence = obj.get("evidence")
    if evidence:
        # DoneEvidence.from_dict: review is required, then repos and verification records.
        review = evidence["review"]
        for key in ("reviewer", "verdict", "reference"):
            review[key]  # noqa: B018 - indexing is the check, as in from_dict
        for repo in evidence.get("repos", []):
            for key in ("repo", "branch", "commit"):
                repo[key]  # noqa: B018
        for check in evidence.get("verification", []):
            for key in ("command", "result", "summary"):
                check[key]  # noqa: B018
    review_result = obj.get("review_result")
    if review_result:
        for key in ("reviewer", "verdict", "reference"):
            review_result[key]  # noqa: B018


def _check_annotation(obj: dict[str, Any]) -> None:
    """``InnerStateChanged.from_dict`` and ``WPInnerStateDelta.from_dict``."""
    event_id = obj["event_id"]
    if not isinstance(event_id, str) or not _ULID.match(event_id):
        raise ValueError(f"InnerStateChanged.event_id is not a valid ULID: {event_id!r}")
    delta = obj["delta"]
    obj["wp_id"], obj["at"]  # noqa: B018 - str(data[...]) needs them present
    _check_actor(obj["actor"])
    subtasks = delta.get("subtasks")
    if subtasks is not None:
        for value in subtasks.values():
            _check_lane(value)
    review = delta.get("review")
    if review is not None:
        for key in ("at", "actor", "wp_id", "reason"):
            review[key]  # noqa: B018
    if delta.get("shell_pid") is not None:
        int(delta["shell_pid"])
    for key in ("tracker_refs", "tracker_refs_replace"):
        if delta.get(key) is not None:
            list(delta[key])


def _is_non_lane(obj: dict[str, Any]) -> bool:
    """``is_non_lane_event``: lines that share the file and are skipped in place."""
    event_name = obj.get("event_name")
    if isinstance(event_name, str) and event_name.startswith("retrospective."):
        return True
    kind = obj.get("type")
    if isinstance(kind, str) and kind in _RETROSPECTIVE_TYPES:
        return True
    return "event_type" in obj


def read_event_stream(feature_dir: Path) -> SpecKittyStream:
    """Read ``feature_dir``'s log as spec-kitty's ``read_event_stream`` does."""
    path = feature_dir / EVENTS_FILENAME
    stream = SpecKittyStream()
    if not path.exists():
        return stream
    # read_text then str.splitlines(), as spec-kitty: a raw U+2028 or \x1c in a line
    # splits it there, so a writer must escape them.
    content = path.read_text(encoding="utf-8")
    for number, raw in enumerate(content.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped:
            continue
        try:
            obj = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise SpecKittyReadError(number, f"Invalid JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise SpecKittyReadError(number, "Invalid event structure: expected JSON object")
        kind = obj.get("kind")
        if kind is not None:
            if kind != "annotation":
                raise SpecKittyReadError(number, f"Unknown event kind {kind!r}")
            try:
                _check_annotation(obj)
            except (KeyError, ValueError, TypeError, AttributeError) as exc:
                raise SpecKittyReadError(number, f"Invalid event structure: {exc!r}") from exc
            stream.annotations.append(obj)
            continue
        if _is_non_lane(obj):
            stream.skipped += 1
            continue
        try:
            _check_transition(obj)
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise SpecKittyReadError(number, f"Invalid event structure: {exc!r}") from exc
        stream.transitions.append(obj)
    return stream


def read_lanes(feature_dir: Path) -> dict[str, str]:
    """Each work package's lane, as spec-kitty's reader and reducer see the log."""
    stream = read_event_stream(feature_dir)
    # spec-kitty reduces every line it took as a transition, even one with a stray
    # ``type`` key, which the board's own classification would set aside.
    lines = [{k: v for k, v in t.items() if k != "type"} for t in stream.transitions]
    snap = snapshot(lines + stream.annotations)
    return {wp_id: state["lane"] for wp_id, state in snap["work_packages"].items()}
