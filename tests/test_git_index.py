"""After a git merge, the index takes the merged lines in as an append (SPEC sections 4, 9)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from test_gitmerge import configured_clone, git, git_env, ids_of, log_of, origin  # noqa: F401

from replaylog import EventStore
from replaylog.index import Index


def append_and_commit(clone: Path, n: int, who: str) -> list[str]:
    with EventStore(clone, fsync=False) as store:
        ids = [store.append("feat", "note", who, {"i": i}).event_id for i in range(n)]
        store.status()
    git(clone, "add", "-A")
    git(clone, "commit", "-q", "-m", f"{who}: {n} events")
    return ids


def table(index_path: Path) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(index_path)
    try:
        return con.execute(
            "SELECT feature, line, event_id, node_id, lamport, status FROM events"
            " ORDER BY feature, line"
        ).fetchall()
    finally:
        con.close()


def test_merged_lines_are_indexed_as_an_append_and_raise_the_clock(
    origin: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    theirs = configured_clone(origin, "theirs")
    ours = configured_clone(origin, "ours")
    their_ids = append_and_commit(theirs, 6, "theirs")
    git(theirs, "push", "-q", "origin", "main")
    our_ids = append_and_commit(ours, 3, "ours")
    before = log_of(ours).read_bytes()

    starts: list[int] = []
    real_ingest = Index.ingest

    def spy(self: Index, feature: str, path: str, **kw: Any) -> int:
        starts.append(kw.get("start", 0))
        return real_ingest(self, feature, path, **kw)

    monkeypatch.setattr(Index, "ingest", spy)
    git(ours, "pull", "-q", "--no-rebase", "--no-edit", "origin", "main")
    merged = log_of(ours).read_bytes()
    assert merged.startswith(before), "the merge driver keeps our lines first, byte for byte"
    assert sorted(ids_of(ours)) == sorted(set(ids_of(ours)))
    assert set(their_ids) | set(our_ids) <= set(ids_of(ours))

    with EventStore(ours, fsync=False) as store:
        status = store.status()
        assert starts == [len(before)], "catch-up read only the merged-in bytes"
        assert status["totals"]["events"] == len(ids_of(ours))
        merged_max = max(e.lamport_clock for e in store.read("feat"))
        nxt = store.append("feat", "note", "ours-after-merge")
        assert nxt.lamport_clock > merged_max
        incremental = table(Path(store.index_path))

    rebuilt_path = ours / "rebuilt.db"
    with EventStore(ours, index_path=rebuilt_path, fsync=False) as rebuilt:
        rebuilt.rebuild_index()
        assert rebuilt.status()["lamport_clock"] == nxt.lamport_clock
    assert table(rebuilt_path) == incremental


def test_rebase_rewrites_the_log_and_the_index_follows_without_losing_state(
    origin: Path,  # noqa: F811
) -> None:
    theirs = configured_clone(origin, "theirs")
    ours = configured_clone(origin, "ours")
    append_and_commit(theirs, 2, "theirs")
    git(theirs, "push", "-q", "origin", "main")
    our_ids = append_and_commit(ours, 2, "ours")
    with EventStore(ours, fsync=False) as store:
        delivery = store.delivery
        with store.index.write():
            delivery.record(
                accepted=our_ids[:1],
                rejected={},
                transient=None,
                now="t",
                features_of={our_ids[0]: ["feat"]},
            )
    git(ours, "pull", "-q", "--rebase", "origin", "main")
    with EventStore(ours, fsync=False) as store:
        status = store.status()["features"]["feat"]
        assert status["events"] == len(ids_of(ours))
        assert status["delivered"] == 1, "delivery state of a surviving event is kept"
        incremental = table(Path(store.index_path))
    rebuilt_path = ours / "rebuilt.db"
    with EventStore(ours, index_path=rebuilt_path, fsync=False) as rebuilt:
        rebuilt.rebuild_index()
    # A rebuild into a new file has no old state to carry: compare all but the status.
    assert [r[:5] for r in table(rebuilt_path)] == [r[:5] for r in incremental]
