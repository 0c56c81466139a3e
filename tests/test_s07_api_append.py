"""SPEC section 7 (with 3): ``append_event`` and ``append_events``, the appends without an
index, refuse what would make the log unreadable and leave nothing behind when refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from replaylog import (
    Event,
    EventStore,
    StoreError,
    UsageError,
    append_event,
    append_events,
    read_events,
)
from replaylog.lines import StatusEvent


def _transition(**fields: object) -> StatusEvent:
    line = {
        "event_id": Event.new("T", "A").event_id,
        "wp_id": "WP01",
        "from_lane": "planned",
        "to_lane": "claimed",
        "at": "2026-11-20T10:00:00+00:00",
        "actor": "alice",
        "force": False,
        "execution_mode": "worktree",
    }
    line.update(fields)
    return StatusEvent.from_dict(line)


@pytest.mark.parametrize("kind", ["event", "transition"])
def test_an_event_whose_id_the_log_holds_is_refused_and_nothing_is_written(
    tmp_path: Path, kind: str
) -> None:
    feature = tmp_path / "f"
    first = Event.new("T", "A", {"n": 1}) if kind == "event" else _transition()
    append_event(feature, first)
    log = feature / "status.events.jsonl"
    before = log.read_bytes()
    for again in ([first], [Event.new("T", "B"), first]):
        with pytest.raises(UsageError, match=f"{first.event_id} is already in the log"):
            append_events(feature, again)
        assert log.read_bytes() == before
    assert [e.event_id for e in read_events(feature)] == [first.event_id]  # still readable


def test_an_event_given_twice_in_one_call_is_refused(tmp_path: Path) -> None:
    event = Event.new("T", "A")
    with pytest.raises(UsageError, match="given twice"):
        append_events(tmp_path / "f", [event, Event.new("T", "B"), event])
    assert not (tmp_path / "f" / "status.events.jsonl").exists()


@pytest.mark.parametrize("value", [{"event_type": "T"}, "a line", None])
def test_what_is_not_an_event_or_a_line_record_is_a_usage_error(
    tmp_path: Path, value: object
) -> None:
    with pytest.raises(UsageError, match="takes an Event or a line record"):
        append_event(tmp_path / "f", value)  # type: ignore[arg-type]
    assert not (tmp_path / "f" / "status.events.jsonl").exists()


def test_the_store_leaves_no_empty_log_when_its_first_append_to_a_feature_fails(
    tmp_path: Path,
) -> None:
    # A log holds the largest Lamport value a line may: the next append has no value
    # left, and is refused after the new feature's log was made under its lock.
    top = dict(Event.new("T", "A").to_dict(), lamport_clock=2**63 - 1)
    feature = tmp_path / "kitty-specs" / "a"
    feature.mkdir(parents=True)
    (feature / "status.events.jsonl").write_text(json.dumps(top, sort_keys=True) + "\n")
    with EventStore(tmp_path, fsync=False) as store:
        with pytest.raises(StoreError, match="2\\*\\*63-1"):
            store.append("new-feature", "T", "A")
        assert store.features() == ["a"]
    assert not (tmp_path / "kitty-specs" / "new-feature" / "status.events.jsonl").exists()
