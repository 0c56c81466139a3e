"""The Lamport rules of SPEC section 10 in :mod:`replaylog.clock`."""

from __future__ import annotations

from typing import Any

import pytest

from replaylog.clock import derive_clocks, lamport_of

CLOCKS: list[list[int | None]] = [
    [None, None, None],
    [5, None, 3, None, 9, None],
    [None, 7, None, 2, 2, None],
    [],
]


@pytest.mark.parametrize("clocks", CLOCKS)
@pytest.mark.parametrize("before", [0, 4])
def test_the_index_derives_each_missing_clock_as_lamport_of_does(
    clocks: list[int | None], before: int
) -> None:
    rows = [("f", n, f"id{n}", clock) for n, clock in enumerate(clocks)]
    derived, top = derive_clocks(rows, before)
    expected: list[int] = []
    best = before
    for clock in clocks:
        obj: dict[str, Any] = {} if clock is None else {"lamport_clock": clock}
        value = lamport_of(obj, best)
        expected.append(value)
        best = max(best, value)
    assert [row[-1] for row in derived] == expected
    assert [row[:-1] for row in derived] == [row[:-1] for row in rows]
    assert top == best


def test_a_line_without_a_clock_is_one_above_the_largest_value_before_it() -> None:
    assert lamport_of({}, 9) == 10
    assert lamport_of({"lamport_clock": 3}, 9) == 3
    derived, top = derive_clocks([("a", 9), ("b", 3), ("c", None)], 0)
    assert [row[-1] for row in derived] == [9, 3, 10] and top == 10
