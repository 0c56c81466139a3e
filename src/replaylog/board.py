"""The board of a spec-kitty feature (SPEC section 10): lines in, snapshot out.

A pure module: no file, index or network access, so the CLI, the API and the server
show the same board. ``snapshot`` is spec-kitty's reducer (its
``specify_cli/status/reducer.py``): it takes the parsed lines of one log and gives
exactly the snapshot spec-kitty writes to ``status.json``. ``render`` draws that
snapshot as lanes in columns; ``check_move`` and ``new_transition`` are the rules and
the line of ``replaylog move``.

How the snapshot is made, in spec-kitty's order:

1. transitions (lines with ``to_lane`` and no ``kind``, ``type`` or ``event_type``)
   are deduplicated by ``event_id``, the first kept, and applied in ``(at, event_id)``
   order compared as strings; envelopes and records are not part of the board;
2. a rollback is a reviewer's rejection: ``in_review`` to ``in_progress``, or
   ``for_review`` to ``in_progress`` with a ``review_ref``. A transition whose ``at``
   equals the one that set a WP's current state does not override a rollback, and a
   rollback overrides a forward move at an equal ``at``; otherwise the later wins;
3. annotations are folded afterwards, in ``(at, event_id)`` order, slot by slot;
4. the summary counts each display lane (every lane but ``genesis``; a WP known only
   from annotations is ``uninitialized`` and counted in none).
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable, Mapping
from operator import itemgetter
from typing import Any

from .errors import StoreError, UsageError
from .lines.transition import LANES  # every lane a transition may name, in lifecycle order

__all__ = [
    "ALLOWED_MOVES",
    "DISPLAY_LANES",
    "EXECUTION_MODES",
    "LANES",
    "UNINITIALIZED",
    "canonical_lane",
    "check_move",
    "current_lane",
    "new_transition",
    "render",
    "snapshot",
]

#: The lanes the summary counts, and the columns the board always draws.
DISPLAY_LANES: tuple[str, ...] = LANES[1:]
#: The lane of a WP known only from annotations; never written in a transition.
UNINITIALIZED = "uninitialized"

#: The moves allowed without ``--force`` (SPEC section 10), target lanes in SPEC order.
ALLOWED_MOVES: dict[str, tuple[str, ...]] = {
    "genesis": ("planned", "canceled"),
    "planned": ("claimed", "blocked", "canceled"),
    "claimed": ("in_progress", "blocked", "canceled"),
    "in_progress": ("for_review", "approved", "planned", "blocked", "canceled"),
    "for_review": ("in_review", "blocked", "canceled"),
    "in_review": ("approved", "done", "in_progress", "planned", "blocked", "canceled"),
    "approved": ("done", "in_progress", "planned", "blocked", "canceled"),
    "blocked": ("in_progress", "canceled"),
    "done": (),
    "canceled": (),
}

#: The execution modes spec-kitty's ``validate_event_schema`` accepts; the first is its default.
EXECUTION_MODES: tuple[str, ...] = ("worktree", "direct_repo")

_LANE_SET = frozenset(LANES)
_LANE_ALIASES = {"doing": "in_progress"}
#: spec-kitty's ``Lane`` also knows the read sentinel, so a subtask status may be it.
_SUBTASK_STATUSES = _LANE_SET | {UNINITIALIZED}

#: Annotation fields that replace the slot of the same name (latest wins).
_REPLACE_SLOTS: tuple[str, ...] = (
    "shell_pid",
    "shell_pid_created_at",
    "agent",
    "assignee",
    "role",
    "agent_profile",
    "agent_profile_version",
    "model",
    "provider",
)
#: What ``release_runtime_claim`` clears: who holds the claim, nothing else.
_CLAIM_RELEASE_SLOTS: tuple[str, ...] = ("agent", "shell_pid", "shell_pid_created_at")
_REVIEW_OVERRIDE_FIELDS: tuple[str, ...] = ("at", "actor", "wp_id", "reason")

_ULID_RE = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")
_SAFE_SEGMENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_MISSION_NUMBER_RE = re.compile(r"(\d+)-")
#: The order transitions are applied and annotations folded in, as strings.
_ORDER = itemgetter("at", "event_id")


# --------------------------------------------------------------------------- lanes


def canonical_lane(name: str) -> str:
    """The lane ``name`` stands for: ``doing`` is ``in_progress``; case and spaces ignored.

    Raises ``UsageError`` naming the lanes when ``name`` is none of them.
    """
    key = name.strip().lower() if isinstance(name, str) else ""
    lane = _LANE_ALIASES.get(key, key)
    if lane not in _LANE_SET:
        raise UsageError(
            f"unknown lane {name!r}; lanes are: {', '.join(LANES)} (doing = in_progress)"
        )
    return lane


def _refuse_genesis_target(target: str, wp_id: str | None) -> None:
    """``genesis`` is where a WP starts: spec-kitty never moves one there, forced or not."""
    if target == "genesis":
        who = f"{wp_id} " if wp_id else "a work package "
        raise UsageError(
            f"cannot move {who}to genesis: it is where a work package starts, not a lane"
            " to move to (spec-kitty refuses it, even with --force)"
        )


def _names_a_review(evidence: Any) -> bool:
    """Whether ``evidence`` holds the review spec-kitty's ``validate_done_evidence`` asks for."""
    review = evidence.get("review") if isinstance(evidence, Mapping) else None
    if not isinstance(review, Mapping):
        return False
    return all(
        isinstance(review.get(name), str) and review[name].strip()
        for name in ("reviewer", "verdict", "reference")
    )


def check_move(
    from_lane: str,
    to_lane: str,
    *,
    force: bool,
    wp_id: str | None = None,
    review_ref: str | None = None,
    evidence: Any = None,
) -> None:
    """Refuse a move SPEC section 10 does not allow, or one spec-kitty would not accept.

    Without ``force`` only the moves of ``ALLOWED_MOVES`` pass; the ``UsageError``
    names the lanes that are allowed from ``from_lane``. Past the lane rules, as
    spec-kitty's validators refuse them: a move to ``genesis`` (even forced); a move to
    ``done`` without ``force`` whose ``evidence`` does not name a reviewer, a verdict
    and a reference; and a move from ``for_review`` back to ``in_progress`` (forced,
    since the lane rules refuse it) without a ``review_ref``.
    """
    source = canonical_lane(from_lane)
    target = canonical_lane(to_lane)
    _refuse_genesis_target(target, wp_id)
    who = f"{wp_id} " if wp_id else ""
    if not force and target not in ALLOWED_MOVES[source]:
        allowed = ", ".join(ALLOWED_MOVES[source]) or "none (it is a final lane)"
        raise UsageError(
            f"cannot move {who}from {source} to {target} without --force; "
            f"allowed from {source}: {allowed}"
        )
    if target == "done" and not force and not _names_a_review(evidence):
        raise UsageError(
            f"cannot move {who}to done without evidence: give --evidence-file (a review"
            " naming its reviewer, verdict and reference), or --force and --reason"
            " (spec-kitty refuses an unforced done without evidence)"
        )
    if source == "for_review" and target == "in_progress" and not review_ref:
        raise UsageError(
            f"cannot move {who}from for_review back to in_progress without --review-ref,"
            " the review it answers (spec-kitty refuses it without one, even forced)"
        )


def current_lane(snap: Mapping[str, Any], wp_id: str) -> str:
    """The lane a move of ``wp_id`` starts from: ``genesis`` for a WP no transition named."""
    state = (snap.get("work_packages") or {}).get(wp_id)
    lane = state.get("lane") if state else None
    return lane if lane in _LANE_SET else "genesis"


# --------------------------------------------------------------------------- snapshot


def _actor_name(actor: Any) -> str:
    """The snapshot's ``actor``: a structured actor shows as its tool, else its role."""
    if isinstance(actor, dict):
        return str(actor.get("tool") or actor.get("role") or "")
    return str(actor)


def _is_rollback(line: Mapping[str, Any]) -> bool:
    """A reviewer's rejection: back to ``in_progress`` from review."""
    if line["to_lane"] != "in_progress":
        return False
    source = line["from_lane"]
    return source == "in_review" or (source == "for_review" and line.get("review_ref") is not None)


def _beats_setter(setter: Mapping[str, Any], line: Mapping[str, Any]) -> bool:
    """spec-kitty's rollback-aware precedence between two moves of one WP at the same
    ``at`` (``_should_apply_event``): a rollback beats a forward move; a forward move
    never beats a rollback.

    Only concurrent moves (the same ``at``) are weighed: spec-kitty's later rule that a
    rollback also stands against later moves is not what wrote the corpus's status.json.
    """
    return not (_is_rollback(setter) and not _is_rollback(line))


def _review_result(value: Any) -> dict[str, Any] | None:
    """spec-kitty's ``ReviewResult.to_dict`` of a line's ``review_result`` (falsy: none)."""
    if not value or not isinstance(value, dict):
        return None
    result = {key: value.get(key) for key in ("reviewer", "verdict", "reference")}
    if value.get("feedback_path") is not None:
        result["feedback_path"] = value["feedback_path"]
    return result


def _apply_transitions(transitions: list[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every WP's state after ``transitions`` (sorted, without duplicates), by WP id.

    One loop for them all, without a call per transition: the board reads every one."""
    states: dict[str, dict[str, Any]] = {}
    setters: dict[str, Mapping[str, Any]] = {}  # the transition that last set each state
    for line in transitions:
        wp_id = line["wp_id"]
        state = states.get(wp_id)
        if state is None:
            state = states[wp_id] = {"force_count": 0}
        elif state["last_transition_at"] == line["at"] and not _beats_setter(setters[wp_id], line):
            continue
        setters[wp_id] = line
        from_lane = line["from_lane"]
        to_lane = line["to_lane"]
        # Updated in place, so every runtime slot already there is carried over, as
        # spec-kitty's rebuilt state carries them (its ``_RUNTIME_SLOTS``).
        state["lane"] = to_lane
        actor = line["actor"]
        state["actor"] = actor if type(actor) is str else _actor_name(actor)
        state["last_transition_at"] = line["at"]
        state["last_event_id"] = line["event_id"]
        if line["force"]:
            state["force_count"] += 1
        if from_lane == "planned" and to_lane == "claimed":
            # The claim is the one transition that writes runtime slots, from its sidecar.
            meta = line.get("policy_metadata") or {}
            if isinstance(meta, dict):
                if meta.get("shell_pid") is not None:
                    state["shell_pid"] = meta["shell_pid"]
                if meta.get("shell_pid_created_at") is not None:
                    state["shell_pid_created_at"] = meta["shell_pid_created_at"]
                if meta.get("agent"):
                    state["agent"] = meta["agent"]
        # A verdict always lands; leaving review without one lands an explicit null.
        value = line.get("review_result")
        review_result = _review_result(value) if value else None
        if review_result is not None or from_lane == "in_review":
            state["review_result"] = review_result
    return states


def _apply_annotation(state: dict[str, Any], delta: Mapping[str, Any]) -> None:
    """Fold one annotation's ``delta`` into a WP's state (``_apply_annotation_delta``)."""
    if delta.get("release_runtime_claim"):
        for name in _CLAIM_RELEASE_SLOTS:
            state[name] = None
    for name in _REPLACE_SLOTS:
        value = delta.get(name)
        # A blank never overwrites a recorded value; only the release above clears.
        if value is not None and value != "":
            state[name] = int(value) if name == "shell_pid" else value
    subtasks = delta.get("subtasks")
    if subtasks is not None:
        merged = state.get("subtasks")
        if not merged:
            merged = state["subtasks"] = {}
        for subtask_id, status in subtasks.items():
            merged[str(subtask_id)] = str(status)
    note = delta.get("note")
    if note is not None:
        notes = state.get("notes")
        if not notes:
            notes = state["notes"] = []
        notes.append(note)
    replace = delta.get("tracker_refs_replace")
    added = delta.get("tracker_refs")
    if replace is not None:
        state["tracker_refs"] = list(dict.fromkeys(replace))
    elif added is not None:
        refs = state.get("tracker_refs")
        if not refs:
            refs = state["tracker_refs"] = []
        for ref in added:
            if ref not in refs:
                refs.append(ref)
    review = delta.get("review")
    if review is not None:
        override = {name: str(review[name]) for name in _REVIEW_OVERRIDE_FIELDS}
        # All four fields empty is the release of a stale override, not an override.
        state["review"] = override if any(override.values()) else None


def _safe_slug(slug: Any) -> str:
    """The mission slug as spec-kitty keeps it: one safe path segment, else ``""``."""
    if not slug or not isinstance(slug, str):
        return ""
    if ".." in slug or not _SAFE_SEGMENT_RE.fullmatch(slug):
        return ""
    return slug


def _mission_number(raw: Any, slug: str) -> str:
    """``mission_number`` as status.json writes it: a decimal string, else the slug's prefix."""
    number = ""
    if isinstance(raw, int) and not isinstance(raw, bool):
        number = str(raw)
    elif isinstance(raw, str) and raw.strip():
        digits = raw.strip()
        number = str(int(digits)) if digits.isdigit() else digits
    if not number:
        match = _MISSION_NUMBER_RE.match(slug)
        number = str(int(match.group(1))) if match else ""
    return number


def _mission_type(meta: Mapping[str, Any] | None) -> str:
    """``mission_type`` as spec-kitty at the corpus's commit resolves it: meta.json's
    ``mission_type``, else its older ``mission`` key, else ``"software-dev"`` (also
    with no meta.json). Later spec-kitty releases (3.2.7, for one) read
    ``mission_type`` only and give ``""`` for a feature that has none; every corpus
    feature has one, so both agree on every committed status.json.
    """
    if meta:
        value = meta.get("mission_type") or meta.get("mission")
        if value is not None and str(value).strip():
            return str(value).strip()
    return "software-dev"


def _validate_delta(line: Mapping[str, Any]) -> None:
    """Refuse a delta spec-kitty's reader refuses, rather than fold it into nonsense."""
    delta = line["delta"]
    where = f"invalid event structure: annotation {line.get('event_id')}: delta"
    subtasks = delta.get("subtasks")
    if subtasks is not None:
        if not isinstance(subtasks, dict):
            raise StoreError(f"{where}.subtasks must be an object")
        for subtask_id, status in subtasks.items():
            if status not in _SUBTASK_STATUSES:
                raise StoreError(f"{where}.subtasks.{subtask_id} is {status!r}, not a lane")
    for name in ("tracker_refs", "tracker_refs_replace"):
        refs = delta.get(name)
        if refs is not None and (
            not isinstance(refs, list) or any(isinstance(ref, (dict, list)) for ref in refs)
        ):
            raise StoreError(f"{where}.{name} must be a list of references")
    review = delta.get("review")
    if review is not None and (
        not isinstance(review, dict) or not all(k in review for k in _REVIEW_OVERRIDE_FIELDS)
    ):
        raise StoreError(
            f"{where}.review must be an object of {', '.join(_REVIEW_OVERRIDE_FIELDS)}"
        )
    shell_pid = delta.get("shell_pid")
    if shell_pid is not None and (isinstance(shell_pid, bool) or not isinstance(shell_pid, int)):
        if not (isinstance(shell_pid, str) and shell_pid.strip().isdigit()):
            raise StoreError(f"{where}.shell_pid is {shell_pid!r}, not a number")


def snapshot(
    lines: Iterable[Mapping[str, Any]], *, meta: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The ``status.json`` snapshot spec-kitty's reducer makes of one log's lines.

    ``lines`` are the parsed objects of every line of the log, in file order; only
    transitions and annotations count. ``meta`` is the feature's ``meta.json``, if any:
    it gives ``mission_number`` and ``mission_type``. ``mission_slug`` comes, as in
    spec-kitty, from the earliest transition (``""`` when there is none). The lines
    are not changed.
    """
    transitions: list[Mapping[str, Any]] = []
    annotations: list[Mapping[str, Any]] = []
    seen: set[str] = set()
    for line in lines:
        # Written out rather than a loop over the keys: this runs once per line.
        if "to_lane" in line and "kind" not in line and "type" not in line:
            if "event_type" not in line:
                event_id = line["event_id"]
                if event_id not in seen:
                    seen.add(event_id)
                    transitions.append(line)
        elif line.get("kind") == "annotation":
            annotations.append(line)
    transitions.sort(key=_ORDER)
    # Annotations are not deduplicated: spec-kitty folds each line it reads.
    annotations.sort(key=_ORDER)

    states = _apply_transitions(transitions)
    for line in annotations:
        _validate_delta(line)
        wp_id = line["wp_id"]
        state = states.get(wp_id)
        if state is None:
            state = states[wp_id] = {
                "lane": UNINITIALIZED,
                "actor": _actor_name(line["actor"]),
                "last_transition_at": None,
                "last_event_id": None,
                "force_count": 0,
            }
        _apply_annotation(state, line["delta"])

    summary = dict.fromkeys(DISPLAY_LANES, 0)
    for state in states.values():
        lane = state["lane"]
        if lane in summary:
            summary[lane] += 1

    last = transitions[-1] if transitions else None
    slug = ""
    if transitions:
        first = transitions[0]
        slug = _safe_slug(first.get("mission_slug") or first.get("feature_slug")).strip()
    return {
        "event_count": len(transitions),
        "last_event_id": last["event_id"] if last is not None else None,
        "materialized_at": last["at"] if last is not None else "",
        "mission_number": _mission_number(meta.get("mission_number") if meta else None, slug),
        "mission_slug": slug,
        "mission_type": _mission_type(meta),
        "summary": summary,
        "work_packages": states,
    }


# --------------------------------------------------------------------------- render

_GAP = 2
_MAX_COLUMN = 24
_MIN_WIDTH = 20


def _natural_key(text: str) -> tuple[Any, ...]:
    """``WP2`` before ``WP10``."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def _fit(text: str, width: int) -> str:
    if len(text) <= width:
        return text.ljust(width)
    return text[: width - 1] + "~"


def _bands(widths: list[int], width: int) -> list[range]:
    """Consecutive columns grouped so that each group fits ``width``."""
    bands: list[range] = []
    start, used = 0, 0
    for index, column in enumerate(widths):
        if index > start and used + _GAP + column > width:
            bands.append(range(start, index))
            start, used = index, 0
        used += column if index == start else _GAP + column
    bands.append(range(start, len(widths)))
    return bands


def render(snap: Mapping[str, Any], *, width: int = 80, title: str | None = None) -> str:
    """The board as plain text: lanes as columns, wrapped into bands that fit ``width``.

    The first lines are ``title`` (default: the mission slug) and the transition count.
    Each lane is a column as wide as its cards (at most 24 characters, longer cards cut
    with ``~``); the columns wrap into as many bands as ``width`` needs. A ``genesis`` or
    ``uninitialized`` column appears only when a WP is there. The last line is the
    summary. The same snapshot always gives the same text, and no line is longer than
    ``width`` (at least 20).
    """
    width = max(width, _MIN_WIDTH)
    packages: Mapping[str, Mapping[str, Any]] = snap.get("work_packages") or {}
    by_lane: dict[str, list[str]] = {}
    for wp_id in sorted(packages, key=_natural_key):
        state = packages[wp_id]
        card = f"{wp_id} {state.get('actor') or ''}".rstrip()
        by_lane.setdefault(str(state.get("lane")), []).append(card)
    lanes = list(DISPLAY_LANES)
    lanes += [lane for lane in ("genesis", UNINITIALIZED) if by_lane.get(lane)]
    lanes += sorted(lane for lane in by_lane if lane not in lanes)
    headers = [f"{lane} {len(by_lane.get(lane, []))}" for lane in lanes]
    cap = min(_MAX_COLUMN, width)
    widths = [
        min(cap, max([len(header), *(len(card) for card in by_lane.get(lane, []))]))
        for lane, header in zip(lanes, headers, strict=True)
    ]

    events = snap.get("event_count", 0)
    stamp = snap.get("materialized_at")
    heading = title or snap.get("mission_slug") or "(no mission slug)"
    count = f"{events} transition{'' if events == 1 else 's'}"
    out = [_fit(heading, width), _fit(f"{count}, last at {stamp}" if stamp else count, width)]
    gap = " " * _GAP
    for band in _bands(widths, width):
        out.append("")
        out.append(gap.join(_fit(headers[i], widths[i]) for i in band))
        out.append(gap.join("-" * widths[i] for i in band))
        depth = max(len(by_lane.get(lanes[i], [])) for i in band)
        for row in range(depth):
            cells = []
            for i in band:
                cards = by_lane.get(lanes[i], [])
                cells.append(_fit(cards[row] if row < len(cards) else "", widths[i]))
            out.append(gap.join(cells))
    counts = [f"{lane} {len(by_lane[lane])}" for lane in lanes if by_lane.get(lane)]
    total = len(packages)
    summary = f"{total} work package{'' if total == 1 else 's'}"
    if counts:
        summary += ": " + ", ".join(counts)
    out.append("")
    out.extend(textwrap.wrap(summary, width, subsequent_indent="  "))
    return "\n".join(line.rstrip() for line in out) + "\n"


# --------------------------------------------------------------------------- move


def _text(value: Any, name: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"{name} must be a non-empty string")
    return value


def _unknown_fields(obj: Mapping[Any, Any], known: set[str]) -> str:
    """The keys of ``obj`` not in ``known``, sorted and joined for a message ('' if
    none); a key that is no string (an API caller's ``{1: ...}``) is shown as Python
    writes it."""
    unknown = [key for key in obj if key not in known]
    return ", ".join(sorted(k if isinstance(k, str) else repr(k) for k in unknown))


def _evidence_record(
    value: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> dict[str, Any]:
    """One object of the evidence: its required string fields, nothing unknown."""
    if not isinstance(value, dict):
        raise UsageError(f"evidence: {where} must be an object")
    unknown = _unknown_fields(value, {*required, *optional})
    if unknown:
        raise UsageError(f"evidence: {where} has unknown field(s): {unknown}")
    for name in required:
        if not isinstance(value.get(name), str):
            raise UsageError(f"evidence: {where}.{name} must be a string")
    return {name: value[name] for name in required}


def _evidence_list(evidence: Mapping[str, Any], name: str) -> list[Any]:
    items = evidence.get(name, [])
    if not isinstance(items, list):
        raise UsageError(f"evidence: {name} must be a list")
    return items


def _evidence(evidence: Any) -> dict[str, Any] | None:
    """spec-kitty's ``DoneEvidence.to_dict()`` of ``evidence``; what it cannot read is refused.

    spec-kitty's reader stops at a line whose evidence lacks a field, so evidence it
    could not read must never reach the log; unknown fields are refused rather than
    dropped. An empty object is no evidence, as in spec-kitty.
    """
    if evidence is None:
        return None
    if not isinstance(evidence, dict):
        raise UsageError("evidence must be a JSON object")
    if not evidence:
        return None
    unknown = _unknown_fields(evidence, {"review", "repos", "verification"})
    if unknown:
        raise UsageError(f"evidence has unknown field(s): {unknown}")
    if "review" not in evidence:
        raise UsageError("evidence must have a review: {reviewer, verdict, reference}")
    review = ("reviewer", "verdict", "reference")
    result: dict[str, Any] = {"review": _evidence_record(evidence["review"], "review", review)}
    repos = []
    for i, item in enumerate(_evidence_list(evidence, "repos")):
        where = f"repos[{i}]"
        repo = _evidence_record(item, where, ("repo", "branch", "commit"), ("files_touched",))
        files = item.get("files_touched", [])
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise UsageError(f"evidence: {where}.files_touched must be a list of strings")
        if files:
            repo["files_touched"] = list(files)
        repos.append(repo)
    if repos:
        result["repos"] = repos
    checks = [
        _evidence_record(item, f"verification[{i}]", ("command", "result", "summary"))
        for i, item in enumerate(_evidence_list(evidence, "verification"))
    ]
    if checks:
        result["verification"] = checks
    return result


def new_transition(
    *,
    event_id: str,
    at: str,
    wp_id: str,
    from_lane: str,
    to_lane: str,
    actor: str,
    mission_slug: str,
    mission_id: str | None = None,
    reason: str | None = None,
    review_ref: str | None = None,
    evidence: Mapping[str, Any] | None = None,
    execution_mode: str = "worktree",
    force: bool = False,
) -> dict[str, Any]:
    """The line object of one transition, as spec-kitty's ``StatusEvent.to_dict()`` writes it.

    The keys are ``event_id``, ``mission_slug``, ``wp_id``, ``from_lane``, ``to_lane``,
    ``at``, ``actor``, ``force``, ``execution_mode``, ``reason``, ``review_ref``,
    ``evidence`` and ``policy_metadata``, always present (``null`` when unset;
    ``policy_metadata`` is always ``null`` here), and ``mission_id`` only when given.
    ``review_result`` is written by spec-kitty only for a review verdict, never here.
    ``execution_mode`` is one of ``EXECUTION_MODES`` (default spec-kitty's
    ``"worktree"``). Lanes are canonical (``doing`` is written ``in_progress``), and
    ``to_lane`` is never ``genesis``; a forced move has a ``reason``, as spec-kitty's
    ``validate_event_schema`` asks. ``evidence`` is normalized to spec-kitty's
    ``DoneEvidence`` shape (``review`` required, empty lists left out). This checks
    the values, not the move from the WP's lane: call ``check_move`` first.
    """
    if not isinstance(event_id, str) or not _ULID_RE.fullmatch(event_id):
        raise UsageError(f"event_id {event_id!r} is not a ULID")
    if not isinstance(force, bool):
        raise UsageError("force must be true or false")
    if force and reason is None:
        raise UsageError(
            "a forced move needs a reason: give --reason (spec-kitty refuses force=true"
            " without one)"
        )
    line: dict[str, Any] = {
        "event_id": event_id,
        "mission_slug": _text(mission_slug, "mission_slug"),
        "wp_id": _text(wp_id, "wp_id"),
        "from_lane": canonical_lane(from_lane),
        "to_lane": canonical_lane(to_lane),
        "at": _text(at, "at"),
        "actor": _text(actor, "actor"),
        "force": force,
        "execution_mode": _text(execution_mode, "execution_mode"),
        "reason": _text(reason, "reason", optional=True),
        "review_ref": _text(review_ref, "review_ref", optional=True),
        "evidence": _evidence(evidence),
        "policy_metadata": None,
    }
    _refuse_genesis_target(line["to_lane"], line["wp_id"])
    if line["execution_mode"] not in EXECUTION_MODES:
        raise UsageError(
            "execution_mode (--execution-mode) must be"
            f" {' or '.join(map(repr, EXECUTION_MODES))}, not {execution_mode!r}"
        )
    if mission_id is not None:
        line["mission_id"] = _text(mission_id, "mission_id")
    return line
