"""The examples one line becomes (windows, per-turn examples) all land on one side of the split."""

from __future__ import annotations

import os

from service.core.shards import Row
from service.core.split import SplitSpec, assign
from workers.sharded import split_keys


def _rows() -> list[Row]:
    rows: list[Row] = []
    for line in range(1, 401):
        parts = 1 + line % 4  # lines giving 1 to 4 examples
        for w in range(parts):
            rows.append(Row(line, w if parts > 1 else None, os.urandom(16), 10, 5, 2))
    return rows


def test_every_example_of_a_line_is_on_its_first_examples_side() -> None:
    rows = _rows()
    sides = assign(split_keys(rows), SplitSpec(validation_fraction=0.3, seed=3), 1)
    by_line: dict[int, set[bool]] = {}
    for row, side in zip(rows, sides, strict=True):
        by_line.setdefault(row.line, set()).add(side)
    assert all(len(s) == 1 for s in by_line.values())
    assert 0 < sum(sides) < len(rows)  # both sides are used


def test_a_line_of_one_example_is_split_by_its_own_content() -> None:
    rows = [r for r in _rows() if r.window is None]
    spec = SplitSpec(validation_fraction=0.3, seed=3)
    assert assign(split_keys(rows), spec, 1) == assign([r.key for r in rows], spec, 1)


def test_without_the_grouping_lines_would_straddle_the_sides() -> None:
    rows = _rows()
    sides = assign([r.key for r in rows], SplitSpec(validation_fraction=0.3, seed=3), 1)
    by_line: dict[int, set[bool]] = {}
    for row, side in zip(rows, sides, strict=True):
        by_line.setdefault(row.line, set()).add(side)
    assert any(len(s) == 2 for s in by_line.values())  # the problem this grouping solves is real
