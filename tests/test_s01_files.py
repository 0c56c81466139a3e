"""SPEC section 1, files: where a feature's log is, how it is created, and what is refused.

Logs are created on first append with their folders, idempotently, readable and not
executable; a symlinked log (also a dangling one) is refused for reading and writing;
a feature name outside section 1's pattern is refused before any file is touched.
The same promises through the command line, and the index file's, are in
``test_s01_files_security.py``; ``--root``, ``--logs-dir`` and ``--index`` are in
``test_s06_cli.py``.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from conftest import lines_of, new_event

from replaylog import (
    EVENTS_FILENAME,
    Event,
    StoreError,
    UsageError,
    append_event,
    iter_events,
    read_events,
    read_events_raw,
)
from replaylog.log import log_path, repair_log, validate_feature_name, verify_log


def test_first_append_creates_missing_directories(tmp_path: Path) -> None:
    feature = tmp_path / "root" / "kitty-specs" / "001-feature"
    e = append_event(feature, Event.new("t", "a"), fsync=False)
    assert (feature / EVENTS_FILENAME).is_file()
    assert read_events(feature) == [e]


def test_creating_files_and_directories_is_idempotent(tmp_path: Path) -> None:
    feature = tmp_path / "a" / "b"
    first = append_event(feature, Event.new("t", "a"))
    second = append_event(feature, Event.new("t", "a"))
    (feature / EVENTS_FILENAME).unlink()  # the folder exists, the file does not
    third = append_event(feature, Event.new("t", "a"))
    assert read_events(feature) == [third]
    assert first.lamport_clock == 1 and second.lamport_clock == 2


def test_log_file_is_created_readable_and_not_executable(tmp_path: Path) -> None:
    append_event(tmp_path, Event.new("t", "a"), fsync=False)
    mode = stat.S_IMODE((tmp_path / EVENTS_FILENAME).stat().st_mode)
    assert mode & stat.S_IRUSR and mode & stat.S_IWUSR
    assert not mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def test_symlinked_log_is_refused_for_reading_and_writing(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.jsonl"
    target.write_bytes(b"".join(lines_of(new_event(1), new_event(2))))
    before = target.read_bytes()
    feature = tmp_path / "feat"
    feature.mkdir()
    (feature / EVENTS_FILENAME).symlink_to(target)
    for read in (read_events, read_events_raw, lambda f: list(iter_events(f))):
        with pytest.raises(StoreError, match="symbolic link") as info:
            read(feature)
        assert info.value.path == log_path(feature)
    with pytest.raises(StoreError, match="symbolic link"):
        append_event(feature, Event.new("t", "a"), fsync=False)
    with pytest.raises(StoreError, match="symbolic link"):
        repair_log(feature)
    [problem] = verify_log(log_path(feature))
    assert "symbolic link" in problem.message
    assert target.read_bytes() == before
    assert (feature / EVENTS_FILENAME).is_symlink()


def test_dangling_symlinked_log_is_refused_and_its_target_not_created(tmp_path: Path) -> None:
    target = tmp_path / "nowhere.jsonl"
    (tmp_path / EVENTS_FILENAME).symlink_to(target)
    with pytest.raises(StoreError, match="symbolic link"):
        append_event(tmp_path, Event.new("t", "a"), fsync=False)
    with pytest.raises(StoreError, match="symbolic link"):
        read_events(tmp_path)
    assert not target.exists()


@pytest.mark.parametrize(
    "name",
    ["a", "001-my-feature", "Feature_2.v3", "A" * 128, "9", "x..y", "trailing.", "a-"],
)
def test_good_feature_names_are_accepted(name: str) -> None:
    assert validate_feature_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "..",
        ".",
        "../x",
        "a/b",
        "a\\b",
        "",
        "a" * 129,
        "-rf",
        ".hidden",
        "_private",
        "café",
        "ｆｕｌｌ",
        "name with space",
        "name\n",
        "a\x00b",
        None,
        42,
    ],
)
def test_bad_feature_names_are_refused_with_a_usage_error(name: object) -> None:
    with pytest.raises(UsageError, match="feature name"):
        validate_feature_name(name)
