"""SPEC section 10, the board: spec-kitty's reducer, its rendering, and the move rules.

The corpus tests read the real logs with plain ``json.loads`` per line, so they check
the board alone, whatever the reader does.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from spec_kitty_reader import SpecKittyReadError, read_event_stream, read_lanes

from replaylog import StoreError, UsageError
from replaylog.board import (
    ALLOWED_MOVES,
    EXECUTION_MODES,
    LANES,
    canonical_lane,
    check_move,
    current_lane,
    new_transition,
    render,
    snapshot,
)

SNAPSHOT_FIELDS = ("event_count", "last_event_id", "materialized_at", "summary", "work_packages")
MISSION_FIELDS = ("mission_slug", "mission_number", "mission_type")
DISPLAY = ("planned", "claimed", "in_progress", "for_review", "in_review")
DISPLAY += ("approved", "done", "blocked", "canceled")

_ids = count(1)


def ulid() -> str:
    """A fresh, increasing event id."""
    return f"01M0JYDN8853GTZX7F{next(_ids):08d}"


def move(
    wp_id: str,
    from_lane: str,
    to_lane: str,
    at: str,
    *,
    event_id: str | None = None,
    actor: Any = "claude",
    **extra: Any,
) -> dict[str, Any]:
    """A transition line as spec-kitty writes it."""
    line = {
        "actor": actor,
        "at": at,
        "event_id": event_id or ulid(),
        "evidence": None,
        "execution_mode": "worktree",
        "force": False,
        "from_lane": from_lane,
        "mission_slug": "042-demo",
        "policy_metadata": None,
        "reason": None,
        "review_ref": None,
        "to_lane": to_lane,
        "wp_id": wp_id,
    }
    line.update(extra)
    return line


def note(
    wp_id: str, at: str, delta: dict[str, Any], *, actor: Any = "user", event_id: str | None = None
) -> dict[str, Any]:
    """An annotation line."""
    return {
        "actor": actor,
        "at": at,
        "delta": delta,
        "event_id": event_id or ulid(),
        "kind": "annotation",
        "wp_id": wp_id,
    }


def at(minute: int, second: int = 0) -> str:
    return f"2026-08-01T10:{minute:02d}:{second:02d}Z"


def lanes(snap: dict[str, Any]) -> dict[str, str]:
    return {wp: state["lane"] for wp, state in snap["work_packages"].items()}


def read_lines(path: Path) -> list[dict[str, Any]]:
    """A log's lines, parsed one by one (blank lines skipped)."""
    text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# --------------------------------------------------------------------------- corpus


def corpus_features(corpus: Path) -> Iterator[Path]:
    for release in ("head", "v2.0.0"):
        yield from sorted(p for p in (corpus / release / "kitty-specs").iterdir() if p.is_dir())


def stale_features(corpus: Path) -> set[str]:
    expectations = json.loads((corpus / "head" / "expectations.json").read_text())
    return set(expectations["stale_status_json"])


def feature_snapshot(feature: Path) -> dict[str, Any]:
    meta_path = feature / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else None
    return snapshot(read_lines(feature / "status.events.jsonl"), meta=meta)


def test_board_equals_every_status_json_spec_kitty_committed(spec_kitty_corpus: Path) -> None:
    stale = stale_features(spec_kitty_corpus)
    compared, mismatched = 0, []
    for feature in corpus_features(spec_kitty_corpus):
        status = feature / "status.json"
        if not status.exists() or feature.name in stale:
            continue
        want = json.loads(status.read_text())
        got = feature_snapshot(feature)
        compared += 1
        fields = [name for name in SNAPSHOT_FIELDS + MISSION_FIELDS if got[name] != want[name]]
        if fields:
            mismatched.append(f"{feature.parent.parent.name}/{feature.name}: {fields}")
    assert mismatched == []
    # 180 features in head/, 1 without status.json, 5 stale; v2.0.0/ committed none.
    assert compared == 174


def test_stale_status_json_files_are_really_behind_their_logs(spec_kitty_corpus: Path) -> None:
    """The expectations file lists only files the log has moved past, none the board misreads."""
    kitty_specs = spec_kitty_corpus / "head" / "kitty-specs"
    for name in sorted(stale_features(spec_kitty_corpus)):
        want = json.loads((kitty_specs / name / "status.json").read_text())
        got = feature_snapshot(kitty_specs / name)
        assert got != want, name
        # Same work packages, same lanes: only annotations or the count moved on.
        assert lanes(got) == {wp: s["lane"] for wp, s in want["work_packages"].items()}, name


def test_envelopes_and_records_appended_leave_the_board_unchanged(
    spec_kitty_corpus: Path,
) -> None:
    feature = spec_kitty_corpus / "head" / "kitty-specs" / "076-init-command-overhaul"
    lines = read_lines(feature / "status.events.jsonl")
    before = snapshot(lines)
    extra = [
        {
            "aggregate_id": "WP01",
            "causation_id": None,
            "correlation_id": None,
            "event_id": ulid(),
            "event_type": "WPStatusChanged",
            "lamport_clock": 9,
            "node_id": "n1",
            # An envelope may carry lane-like keys: it is still not a transition.
            "payload": {"to_lane": "canceled"},
            "timestamp": "2030-01-01T00:00:00Z",
            "to_lane": "canceled",
            "wp_id": "WP01",
        },
        {"at": "2030-01-01T00:00:00Z", "event_id": ulid(), "type": "RetrospectiveCaptured"},
        {"at": "2030-01-01T00:00:00Z", "event_id": ulid(), "type": "Other", "to_lane": "done"},
    ]
    assert snapshot(lines + extra) == before
    assert snapshot(extra) == snapshot([])


# --------------------------------------------------------------------------- reducer rules


@pytest.mark.parametrize("rollback_first", [True, False], ids=["rollback-sorted-first", "second"])
def test_a_rollback_wins_over_a_forward_move_at_the_same_at(rollback_first: bool) -> None:
    first, second = ulid(), ulid()
    rollback_id, forward_id = (first, second) if rollback_first else (second, first)
    lines = [
        move("WP01", "for_review", "in_review", at(1)),
        move("WP01", "in_review", "approved", at(2), event_id=forward_id, actor="approver"),
        move("WP01", "in_review", "in_progress", at(2), event_id=rollback_id, actor="reviewer"),
    ]
    state = snapshot(lines)["work_packages"]["WP01"]
    assert (state["lane"], state["actor"], state["last_event_id"]) == (
        "in_progress",
        "reviewer",
        rollback_id,
    )


def test_a_review_ref_makes_for_review_to_in_progress_a_rollback() -> None:
    rollback, forward = ulid(), ulid()
    base = [move("WP01", "in_progress", "for_review", at(1))]
    with_ref = move("WP01", "for_review", "in_progress", at(2), event_id=rollback, review_ref="r")
    plain = move("WP01", "for_review", "in_progress", at(2), event_id=rollback)
    later = move("WP01", "for_review", "in_review", at(2), event_id=forward)
    assert lanes(snapshot([*base, with_ref, later]))["WP01"] == "in_progress"
    # Without the reference it is a plain move, and the later id wins.
    assert lanes(snapshot([*base, plain, later]))["WP01"] == "in_review"


def test_a_forward_move_at_a_later_at_overrides_a_rollback() -> None:
    lines = [
        move("WP01", "for_review", "in_review", at(1)),
        move("WP01", "in_review", "in_progress", at(2)),
        # Not from the lane the rollback left: spec-kitty's status.json still takes it.
        move("WP01", "in_review", "approved", at(3)),
    ]
    assert lanes(snapshot(lines)) == {"WP01": "approved"}


def test_a_duplicate_event_id_keeps_the_first_line() -> None:
    event_id = ulid()
    lines = [
        move("WP01", "planned", "claimed", at(1), event_id=event_id, actor="first"),
        move("WP01", "planned", "blocked", at(0), event_id=event_id, actor="second"),
    ]
    snap = snapshot(lines)
    assert snap["event_count"] == 1
    assert snap["work_packages"]["WP01"]["lane"] == "claimed"
    assert snap["work_packages"]["WP01"]["actor"] == "first"


def test_transitions_apply_in_at_order_compared_as_strings() -> None:
    # Written out of order: the file's order does not count, ``(at, event_id)`` does.
    first, last = ulid(), ulid()
    lines = [
        move("WP01", "claimed", "in_progress", "2026-08-01T10:00:05Z", event_id=last),
        move("WP01", "planned", "claimed", "2026-08-01T10:00:05Z", event_id=first),
        move("WP01", "genesis", "planned", "2026-08-01T10:00:01Z"),
    ]
    snap = snapshot(lines)
    assert snap["work_packages"]["WP01"]["lane"] == "in_progress"
    assert (snap["last_event_id"], snap["materialized_at"]) == (last, "2026-08-01T10:00:05Z")
    # As strings, "…00.5+00:00" sorts before "…00Z" ('.' < 'Z'), though it is later in time.
    mixed = [
        move("WP02", "genesis", "planned", "2026-08-01T10:00:00Z"),
        move("WP02", "planned", "blocked", "2026-08-01T10:00:00.5+00:00"),
    ]
    assert lanes(snapshot(mixed)) == {"WP02": "planned"}


def test_force_is_counted_and_structured_actors_show_their_tool() -> None:
    actor = {"model": "opus", "profile": "p", "role": "implementer", "tool": "claude"}
    lines = [
        move("WP01", "genesis", "planned", at(1), force=True),
        move("WP01", "planned", "done", at(2), force=True, actor=actor),
        move("WP02", "genesis", "planned", at(3), actor={**actor, "tool": None}),
    ]
    packages = snapshot(lines)["work_packages"]
    assert packages["WP01"]["force_count"] == 2
    assert packages["WP01"]["actor"] == "claude"
    assert packages["WP02"]["actor"] == "implementer"


def test_a_claim_writes_its_sidecar_and_later_moves_keep_runtime_slots() -> None:
    sidecar = {"agent": "codex", "shell_pid": 41, "shell_pid_created_at": "t0"}
    lines = [
        move("WP01", "genesis", "planned", at(1)),
        move("WP01", "planned", "claimed", at(2), policy_metadata=sidecar),
        note("WP01", at(2), {"subtasks": {"T1": "done"}, "note": "started"}),
        move("WP01", "claimed", "in_progress", at(3)),
        move("WP01", "in_progress", "blocked", at(4), policy_metadata={"shell_pid": 99}),
    ]
    state = snapshot(lines)["work_packages"]["WP01"]
    assert state == {
        "lane": "blocked",
        "actor": "claude",
        "last_transition_at": at(4),
        "last_event_id": lines[-1]["event_id"],
        "force_count": 0,
        "agent": "codex",
        "shell_pid": 41,
        "shell_pid_created_at": "t0",
        "subtasks": {"T1": "done"},
        "notes": ["started"],
    }


def test_review_result_lands_on_a_verdict_and_is_null_when_review_ends_without_one() -> None:
    verdict = {"reference": "ref", "reviewer": "r", "verdict": "approved", "extra": 1}
    lines = [
        move("WP01", "for_review", "in_review", at(1)),
        move("WP01", "in_review", "blocked", at(2)),
        move("WP02", "in_progress", "approved", at(3), review_result=verdict),
        move("WP02", "approved", "done", at(4)),
        move("WP03", "in_progress", "for_review", at(5)),
    ]
    packages = snapshot(lines)["work_packages"]
    assert packages["WP01"]["review_result"] is None
    assert packages["WP02"]["review_result"] == {
        "reference": "ref",
        "reviewer": "r",
        "verdict": "approved",
    }
    assert "review_result" not in packages["WP03"]


def test_annotations_fold_latest_wins_per_slot_in_at_order() -> None:
    base = move("WP01", "genesis", "planned", at(0))
    lines = [
        base,
        # File order is not the fold order: the later ``at`` wins.
        note("WP01", at(5), {"agent": "late", "model": "m2", "role": "reviewer"}),
        note("WP01", at(1), {"agent": "early", "model": "m1", "assignee": "ann", "shell_pid": 7}),
        note("WP01", at(6), {"agent": "", "shell_pid_created_at": "s"}),
    ]
    state = snapshot(lines)["work_packages"]["WP01"]
    assert state["agent"] == "late"  # a blank never overwrites a value
    assert (state["model"], state["role"], state["assignee"]) == ("m2", "reviewer", "ann")
    assert (state["shell_pid"], state["shell_pid_created_at"]) == (7, "s")
    # Annotations never move the markers of the last transition.
    assert state["last_event_id"] == base["event_id"]
    assert state["force_count"] == 0


def test_subtasks_merge_per_key_and_notes_append() -> None:
    lines = [
        move("WP01", "genesis", "planned", at(0)),
        note("WP01", at(1), {"subtasks": {"T1": "planned", "T2": "planned"}, "note": "one"}),
        note("WP01", at(2), {"subtasks": {"T2": "done"}, "note": "two"}),
    ]
    state = snapshot(lines)["work_packages"]["WP01"]
    assert state["subtasks"] == {"T1": "planned", "T2": "done"}
    assert state["notes"] == ["one", "two"]


def test_tracker_refs_are_unioned_or_replaced() -> None:
    lines = [
        note("WP01", at(1), {"tracker_refs": ["#1", "#2"]}),
        note("WP01", at(2), {"tracker_refs": ["#2", "#3"]}),
    ]
    assert snapshot(lines)["work_packages"]["WP01"]["tracker_refs"] == ["#1", "#2", "#3"]
    replaced = [
        *lines,
        # Replace wins over a union in the same delta, and keeps the first of duplicates.
        note("WP01", at(3), {"tracker_refs_replace": ["#9", "#8", "#9"], "tracker_refs": ["#1"]}),
    ]
    assert snapshot(replaced)["work_packages"]["WP01"]["tracker_refs"] == ["#9", "#8"]


def test_a_review_override_is_kept_and_an_empty_one_clears_it() -> None:
    override = {"actor": "arbiter", "at": "t", "reason": "superseded", "wp_id": "WP01"}
    empty = dict.fromkeys(override, "")
    lines = [note("WP01", at(1), {"review": override})]
    assert snapshot(lines)["work_packages"]["WP01"]["review"] == override
    lines.append(note("WP01", at(2), {"review": empty}))
    assert snapshot(lines)["work_packages"]["WP01"]["review"] is None


def test_release_runtime_claim_clears_agent_and_shell_pid_only() -> None:
    sidecar = {"agent": "codex", "shell_pid": 41, "shell_pid_created_at": "t0"}
    lines = [
        move("WP01", "planned", "claimed", at(1), policy_metadata=sidecar),
        note("WP01", at(2), {"assignee": "ann", "model": "m"}),
        note("WP01", at(3), {"release_runtime_claim": True}),
        move("WP02", "planned", "claimed", at(1), policy_metadata=sidecar),
        # A value in the same delta is applied after the release.
        note("WP02", at(3), {"release_runtime_claim": True, "agent": "again"}),
    ]
    packages = snapshot(lines)["work_packages"]
    wp01 = packages["WP01"]
    assert (wp01["agent"], wp01["shell_pid"], wp01["shell_pid_created_at"]) == (None, None, None)
    assert (wp01["assignee"], wp01["model"]) == ("ann", "m")
    assert (packages["WP02"]["agent"], packages["WP02"]["shell_pid"]) == ("again", None)


def test_a_wp_known_only_from_annotations_is_uninitialized_and_not_counted() -> None:
    lines = [
        move("WP01", "genesis", "planned", at(1)),
        note(
            "WP02",
            at(2),
            {"note": "hello"},
            actor={"model": None, "profile": None, "role": "r", "tool": "t"},
        ),
    ]
    snap = snapshot(lines)
    assert snap["work_packages"]["WP02"] == {
        "lane": "uninitialized",
        "actor": "t",
        "last_transition_at": None,
        "last_event_id": None,
        "force_count": 0,
        "notes": ["hello"],
    }
    assert snap["summary"] == {lane: int(lane == "planned") for lane in DISPLAY}
    assert snap["event_count"] == 1


def test_an_empty_log_gives_spec_kittys_empty_snapshot() -> None:
    assert snapshot([]) == {
        "event_count": 0,
        "last_event_id": None,
        "materialized_at": "",
        "mission_number": "",
        "mission_slug": "",
        "mission_type": "software-dev",
        "summary": dict.fromkeys(DISPLAY, 0),
        "work_packages": {},
    }


def test_mission_fields_come_from_meta_and_the_earliest_transition() -> None:
    lines = [
        move("WP01", "planned", "claimed", at(2), mission_slug="later-slug"),
        move("WP01", "genesis", "planned", at(1), mission_slug="042-demo"),
    ]
    meta = {"mission_number": "007", "mission_type": "research", "mission_slug": "other"}
    snap = snapshot(lines, meta=meta)
    assert (snap["mission_slug"], snap["mission_number"], snap["mission_type"]) == (
        "042-demo",
        "7",
        "research",
    )
    # No meta.json: the number is the slug's prefix, the type spec-kitty's default at the
    # corpus's commit; an older meta.json names the type ``mission``.
    snap = snapshot(lines)
    assert (snap["mission_number"], snap["mission_type"]) == ("42", "software-dev")
    assert snapshot(lines, meta={"mission": "research"})["mission_type"] == "research"
    both = {"mission_type": "documentation", "mission": "research"}
    assert snapshot(lines, meta=both)["mission_type"] == "documentation"
    # Older lines name the feature ``feature_slug``; an unsafe slug is dropped.
    legacy = move("WP01", "genesis", "planned", at(1), feature_slug="035-old")
    del legacy["mission_slug"]
    assert snapshot([legacy])["mission_slug"] == "035-old"
    hostile = move("WP01", "genesis", "planned", at(1), mission_slug="../../etc")
    assert snapshot([hostile])["mission_slug"] == ""


def test_a_delta_spec_kitty_cannot_read_is_refused_naming_the_event() -> None:
    bad = note("WP01", at(1), {"subtasks": {"T1": "finished"}})
    with pytest.raises(StoreError, match=f"annotation {bad['event_id']}.*subtasks.T1"):
        snapshot([bad])


def test_snapshot_does_not_change_its_lines() -> None:
    lines = [
        move("WP01", "planned", "claimed", at(1), policy_metadata={"agent": "a"}),
        note("WP01", at(2), {"subtasks": {"T1": "done"}, "tracker_refs": ["#1"], "note": "n"}),
        note("WP01", at(3), {"subtasks": {"T2": "done"}, "tracker_refs": ["#2"], "note": "m"}),
    ]
    before = copy.deepcopy(lines)
    snapshot(lines)
    snapshot(lines)
    assert lines == before


def test_current_lane_is_genesis_for_a_new_or_uninitialized_wp() -> None:
    snap = snapshot([move("WP01", "genesis", "planned", at(1)), note("WP02", at(1), {"note": "x"})])
    assert [current_lane(snap, wp) for wp in ("WP01", "WP02", "WP03")] == [
        "planned",
        "genesis",
        "genesis",
    ]


# --------------------------------------------------------------------------- moves

SPEC_MOVES = {
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


def test_allowed_moves_are_exactly_spec_section_10s() -> None:
    assert ALLOWED_MOVES == SPEC_MOVES
    assert set(LANES) == set(SPEC_MOVES) and len(LANES) == 10


@pytest.mark.parametrize(
    ("source", "target"), [(s, t) for s, targets in SPEC_MOVES.items() for t in targets]
)
def test_every_allowed_move_passes_without_force(source: str, target: str) -> None:
    # spec-kitty takes a move to done without force only with evidence of a review.
    check_move(source, target, force=False, evidence=DONE_EVIDENCE if target == "done" else None)


@pytest.mark.parametrize(
    ("source", "target"),
    [(s, t) for s in LANES for t in LANES[1:] if t not in SPEC_MOVES[s]],
)
def test_every_other_move_needs_force(source: str, target: str) -> None:
    with pytest.raises(UsageError, match=f"from {source} to {target} without --force"):
        check_move(source, target, force=False)
    check_move(source, target, force=True, review_ref="R1")


DONE_EVIDENCE = {"review": {"reviewer": "ann", "verdict": "approved", "reference": "PR#1"}}


@pytest.mark.parametrize("source", LANES)
def test_no_move_goes_to_genesis_even_forced(source: str) -> None:
    for force in (False, True):
        with pytest.raises(UsageError, match="cannot move WP02 to genesis"):
            check_move(source, "genesis", force=force, wp_id="WP02")
    with pytest.raises(UsageError, match="to genesis.*even with --force"):
        new_transition(**{**MOVE_ARGS, "to_lane": "genesis", "force": True, "reason": "r"})


@pytest.mark.parametrize(
    "evidence",
    [
        None,
        {},
        {"review": {"reviewer": "ann", "verdict": "approved"}},
        {"review": {"reviewer": "", "verdict": "approved", "reference": "PR#1"}},
        {"review": {"reviewer": "ann", "verdict": " ", "reference": "PR#1"}},
        {"review": "PR#1"},
    ],
)
@pytest.mark.parametrize("source", ["approved", "in_review"])
def test_done_without_evidence_of_a_review_needs_force(source: str, evidence: Any) -> None:
    with pytest.raises(UsageError, match="to done without evidence.*--evidence-file.*--force"):
        check_move(source, "done", force=False, wp_id="WP03", evidence=evidence)
    check_move(source, "done", force=True, evidence=evidence)
    check_move(source, "done", force=False, evidence=DONE_EVIDENCE)


def test_for_review_back_to_in_progress_needs_a_review_ref() -> None:
    with pytest.raises(
        UsageError, match="from for_review back to in_progress without --review-ref"
    ):
        check_move("for_review", "in_progress", force=True, wp_id="WP01")
    check_move("for_review", "in_progress", force=True, review_ref="R1")
    check_move("in_review", "in_progress", force=False)  # the review itself is the reference


def test_a_forced_move_line_needs_a_reason() -> None:
    with pytest.raises(UsageError, match="a forced move needs a reason: give --reason"):
        new_transition(**{**MOVE_ARGS, "force": True})
    with pytest.raises(UsageError, match="reason must be a non-empty string"):
        new_transition(**{**MOVE_ARGS, "force": True, "reason": " "})
    assert new_transition(**{**MOVE_ARGS, "force": True, "reason": "r"})["reason"] == "r"


@pytest.mark.parametrize("mode", ["foo", "Worktree", "direct-repo", "worktree "])
def test_a_move_line_has_one_of_spec_kittys_execution_modes(mode: str) -> None:
    with pytest.raises(UsageError, match="must be 'worktree' or 'direct_repo', not"):
        new_transition(**{**MOVE_ARGS, "execution_mode": mode})
    for known in EXECUTION_MODES:
        assert new_transition(**{**MOVE_ARGS, "execution_mode": known})["execution_mode"] == known


def test_a_refused_move_names_the_allowed_lanes() -> None:
    with pytest.raises(UsageError) as refused:
        check_move("planned", "done", force=False, wp_id="WP01")
    assert str(refused.value) == (
        "cannot move WP01 from planned to done without --force; "
        "allowed from planned: claimed, blocked, canceled"
    )
    with pytest.raises(UsageError, match="allowed from done: none"):
        check_move("done", "planned", force=False)


def test_doing_is_read_as_in_progress() -> None:
    assert canonical_lane("doing") == "in_progress"
    assert canonical_lane(" Doing ") == "in_progress"
    check_move("claimed", "doing", force=False)
    check_move("doing", "for_review", force=False)
    line = new_transition(
        event_id=ulid(),
        at="2026-08-01T10:00:00.000000+00:00",
        wp_id="WP01",
        from_lane="claimed",
        to_lane="doing",
        actor="me",
        mission_slug="demo",
    )
    assert line["to_lane"] == "in_progress"


@pytest.mark.parametrize("name", ["finished", "uninitialized", "", "in progress"])
def test_an_unknown_lane_is_refused_naming_the_lanes(name: str) -> None:
    with pytest.raises(UsageError, match="lanes are: genesis, planned, claimed, in_progress"):
        canonical_lane(name)
    with pytest.raises(UsageError, match="unknown lane"):
        check_move("planned", name, force=True)


# --------------------------------------------------------------------------- render


def board_lines() -> list[dict[str, Any]]:
    return [
        move("WP01", "genesis", "planned", at(1), actor="implement-command-with-a-long-name"),
        move("WP02", "planned", "claimed", at(2), actor="codex"),
        move("WP10", "in_review", "approved", at(3), actor="reviewer-renata"),
        move("WP03", "approved", "done", at(4), actor="merge"),
        *(move(f"WP{n:02d}", "planned", "blocked", at(5), actor="user") for n in range(20, 27)),
    ]


def test_the_board_fits_80_columns_and_shows_each_wp_and_actor() -> None:
    snap = snapshot(board_lines(), meta={"mission_number": 42})
    text = render(snap, width=80)
    rows = text.splitlines()
    assert max(len(row) for row in rows) <= 80
    for wp, actor in [("WP02", "codex"), ("WP10", "reviewer-renata"), ("WP03", "merge")]:
        assert any(f"{wp} {actor}" in row for row in rows), (wp, text)
    assert any(row.startswith("WP01 implement-") for row in rows)  # cut, not dropped
    for lane in DISPLAY:
        assert any(row.startswith(lane) or f" {lane} " in row for row in rows), lane
    assert "uninitialized" not in text
    assert rows[0] == "042-demo"
    assert rows[-1].startswith("11 work packages: planned 1, claimed 1, approved 1, done 1")


def test_the_board_shows_an_uninitialized_column_only_when_a_wp_is_there() -> None:
    lines = [*board_lines(), note("WP30", at(9), {"note": "x"}, actor="someone")]
    text = render(snapshot(lines))
    assert "uninitialized 1" in text
    assert "WP30 someone" in text
    assert "uninitialized 1" in text.splitlines()[-1] or "uninitialized 1" in text.splitlines()[-2]


@pytest.mark.parametrize("width", [20, 33, 60, 80, 120, 200])
def test_no_board_line_is_longer_than_the_width(width: int) -> None:
    lines = [*board_lines(), note("WP30", at(9), {"note": "x"})]
    text = render(snapshot(lines), width=width, title="a-very-long-feature-name-" * 5)
    assert max(len(row) for row in text.splitlines()) <= width


def test_the_board_is_the_same_whatever_order_the_log_was_written_in() -> None:
    lines = board_lines()
    assert render(snapshot(lines)) == render(snapshot(list(reversed(lines))))
    assert render(snapshot([])) == render(snapshot([]))
    assert "0 work packages" in render(snapshot([]))


# --------------------------------------------------------------------------- the move line


def latest_corpus_transition(corpus: Path) -> dict[str, Any]:
    """The most recent transition spec-kitty wrote in the corpus (by ``at``)."""
    best: dict[str, Any] = {}
    for feature in corpus_features(corpus):
        for line in read_lines(feature / "status.events.jsonl"):
            is_move = "to_lane" in line and not {"kind", "type", "event_type"} & line.keys()
            if is_move and line["at"] > best.get("at", ""):
                best = line
    return best


def test_a_move_line_has_every_key_spec_kitty_writes(spec_kitty_corpus: Path) -> None:
    recent = latest_corpus_transition(spec_kitty_corpus)
    assert recent["at"].startswith("2026-08-21")
    line = new_transition(
        event_id=ulid(),
        at="2026-08-22T09:00:00.123456+00:00",
        wp_id="WP05",
        from_lane="approved",
        to_lane="done",
        actor="merge",
        mission_slug="rc3-drg-projection-completeness-01M0GGS7",
        mission_id="01M0GGS75ZXXQYCA9561MFMJX8",
    )
    assert set(line) == set(recent)
    assert json.loads(json.dumps(line, sort_keys=True)) == line


def test_a_move_line_has_spec_kittys_defaults() -> None:
    event_id = ulid()
    line = new_transition(
        event_id=event_id,
        at="2026-08-22T09:00:00.123456+00:00",
        wp_id="WP01",
        from_lane="genesis",
        to_lane="planned",
        actor="me",
        mission_slug="demo",
    )
    assert line == {
        "event_id": event_id,
        "mission_slug": "demo",
        "wp_id": "WP01",
        "from_lane": "genesis",
        "to_lane": "planned",
        "at": "2026-08-22T09:00:00.123456+00:00",
        "actor": "me",
        "force": False,
        "execution_mode": "worktree",
        "reason": None,
        "review_ref": None,
        "evidence": None,
        "policy_metadata": None,
    }
    text = json.dumps(line, sort_keys=True)
    assert json.dumps(json.loads(text), sort_keys=True) == text


def test_move_evidence_is_written_in_spec_kittys_shape() -> None:
    evidence = {
        "review": {"reference": "PR#1", "reviewer": "ann", "verdict": "approved"},
        "repos": [{"branch": "main", "commit": "abc1234", "repo": "r", "files_touched": []}],
        "verification": [],
    }
    line = new_transition(
        event_id=ulid(),
        at="t",
        wp_id="WP01",
        from_lane="approved",
        to_lane="done",
        actor="me",
        mission_slug="demo",
        evidence=evidence,
        force=True,
        reason="why",
        review_ref="PR#1",
        execution_mode="direct_repo",
    )
    assert line["evidence"] == {
        "review": {"reference": "PR#1", "reviewer": "ann", "verdict": "approved"},
        "repos": [{"branch": "main", "commit": "abc1234", "repo": "r"}],
    }
    assert (line["force"], line["reason"], line["review_ref"]) == (True, "why", "PR#1")
    assert line["execution_mode"] == "direct_repo"
    assert new_transition(**{**MOVE_ARGS, "evidence": {}})["evidence"] is None


MOVE_ARGS: dict[str, Any] = {
    "event_id": "01M0JYDN8853GTZX7F00000000",
    "at": "2026-08-22T09:00:00.123456+00:00",
    "wp_id": "WP01",
    "from_lane": "approved",
    "to_lane": "done",
    "actor": "me",
    "mission_slug": "demo",
}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"evidence": {"repos": []}}, "must have a review"),
        ({"evidence": {"review": {"reviewer": "a", "verdict": "v"}}}, r"review\.reference"),
        (
            {"evidence": {"review": {"reviewer": "a", "verdict": "v", "reference": "r", "x": 1}}},
            "x",
        ),
        ({"evidence": {"review": {}, "proof": 1}}, "unknown field.*proof"),
        ({"evidence": ["not", "an", "object"]}, "JSON object"),
        ({"event_id": "not-a-ulid"}, "not a ULID"),
        ({"actor": ""}, "actor"),
        ({"wp_id": None}, "wp_id"),
        ({"to_lane": "finished"}, "unknown lane"),
        ({"force": "yes"}, "force"),
    ],
)
def test_a_move_line_spec_kitty_could_not_read_is_refused(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        new_transition(**{**MOVE_ARGS, **changes})


# --------------------------------------------------------------------------- spec-kitty's reader


@pytest.mark.parametrize(
    "name",
    [
        "head/002-lightweight-pypi-release",
        "head/076-init-command-overhaul",
        "head/080-ci-hardening-and-lint-cleanup",
        "head/sync-cli-degod-wave4-01M0B0MX",
        "head/ci-flake-report-workflow-01M0M9D8",
    ],
)
def test_spec_kittys_reader_sees_the_lanes_of_status_json(
    spec_kitty_corpus: Path, name: str
) -> None:
    release, feature = name.split("/")
    folder = spec_kitty_corpus / release / "kitty-specs" / feature
    status = json.loads((folder / "status.json").read_text())
    assert read_lanes(folder) == {wp: s["lane"] for wp, s in status["work_packages"].items()}


def test_spec_kittys_reader_takes_every_corpus_log(spec_kitty_corpus: Path) -> None:
    for feature in corpus_features(spec_kitty_corpus):
        stream = read_event_stream(feature)
        lines = read_lines(feature / "status.events.jsonl")
        assert len(stream.transitions) + len(stream.annotations) + stream.skipped == len(lines)
        assert read_lanes(feature) == lanes(snapshot(lines)), feature.name


def test_spec_kittys_reader_reads_a_move_appended_to_a_real_log(
    spec_kitty_corpus: Path, tmp_path: Path
) -> None:
    source = spec_kitty_corpus / "head" / "kitty-specs" / "076-init-command-overhaul"
    feature = tmp_path / "kitty-specs" / source.name
    shutil.copytree(source, feature)
    snap = feature_snapshot(feature)
    line = new_transition(
        event_id="01M9ZZZZZZZZZZZZZZZZZZZZZZ",
        at="2030-01-01T00:00:00.000001+00:00",
        wp_id="WP06",
        from_lane=current_lane(snap, "WP06"),
        to_lane="done",
        actor="replaylog",
        mission_slug=feature.name,
        mission_id="01KNNX21BR158X3Z029KRTF3CP",
        evidence={"review": {"reference": "r", "reviewer": "ann", "verdict": "approved"}},
    )
    with (feature / "status.events.jsonl").open("a", encoding="utf-8") as log:
        log.write(json.dumps(line, sort_keys=True) + "\n")
    assert read_lanes(feature)["WP06"] == "done"
    assert lanes(feature_snapshot(feature))["WP06"] == "done"


@pytest.mark.parametrize(
    "line",
    [
        {"at": "t", "event_id": "01M0JYDN8853GTZX7F00000001", "type": "Unknown"},
        {
            "event_id": "x",
            "kind": "annotation",
            "wp_id": "WP01",
            "at": "t",
            "actor": "a",
            "delta": {},
        },
        {"event_id": "01M0JYDN8853GTZX7F00000001", "kind": "note"},
        {**move("WP01", "planned", "finished", at(1))},
        {**move("WP01", "planned", "done", at(1), evidence={"repos": []})},
        {**move("WP01", "planned", "done", at(1), actor={"tool": "t"})},
    ],
    ids=["record-of-unknown-type", "annotation-id", "kind", "lane", "evidence", "actor"],
)
def test_spec_kittys_reader_stops_where_spec_kitty_stops(
    tmp_path: Path, line: dict[str, Any]
) -> None:
    good = json.dumps(move("WP01", "genesis", "planned", at(0)), sort_keys=True)
    (tmp_path / "status.events.jsonl").write_text(f"{good}\n\n{json.dumps(line)}\n")
    with pytest.raises(SpecKittyReadError) as stopped:
        read_event_stream(tmp_path)
    assert stopped.value.line == 3
