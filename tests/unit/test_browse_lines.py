"""Browsing a dataset in pages: lines stream from the batch blobs, only as far as a page needs, and
every page gives each line the problems `pipeline.run` (what /v1/validate runs) gives it over the
whole input, duplicates of earlier pages included, with and without fixes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from service.core.browse import BatchSpan, Browser, Lines
from service.core.pipeline import Recipe, parse_policies, run
from service.core.problems import Problem
from tests.conftest import mtbench_conversations, sharegpt_conversations


def _blob(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


class Blobs:
    """Batch blobs served in chunks of `size` bytes, counting what was opened and read."""

    def __init__(self, parts: list[list[dict[str, Any]]], size: int) -> None:
        self.data = {f"b{i}": _blob(p) for i, p in enumerate(parts)}
        self.spans = [BatchSpan(f"b{i}", f"b{i}", len(p)) for i, p in enumerate(parts)]
        self.size = size
        self.opened: list[str] = []
        self.chunks = 0

    def open_chunks(self, key: str) -> Iterator[bytes]:
        self.opened.append(key)
        data = self.data[key]
        for i in range(0, len(data), self.size):
            self.chunks += 1
            yield data[i : i + self.size]


def _rows() -> list[dict[str, Any]]:
    share = sharegpt_conversations()[:60]
    bench = mtbench_conversations()[:20]
    padded = json.loads(json.dumps(share[3]))  # the same example once the text fix strips it
    padded["messages"][0]["content"] = "  " + padded["messages"][0]["content"] + "\n"
    return [*share[:30], *bench, padded, *share[30:], share[3], share[40]]


@pytest.mark.parametrize("size", [1, 7, 4096])
def test_lines_stream_across_chunks_and_batches(size: int) -> None:
    rows = _rows()
    parts = [rows[:25], rows[25:70], rows[70:]]
    blobs = Blobs(parts, size)
    lines = Lines(blobs.spans, blobs.open_chunks)
    assert lines.total == len(rows)
    got = list(lines.rows(1, lines.total + 1))
    assert [r.line for r in got] == list(range(1, len(rows) + 1))
    assert [json.loads(r.raw) for r in got] == rows
    assert [r.batch_id for r in got] == ["b0"] * 25 + ["b1"] * 45 + ["b2"] * (len(rows) - 70)
    assert lines.span("b1") == (26, 71)
    assert lines.span("nope") is None


def test_a_page_reads_only_the_blobs_and_chunks_it_needs() -> None:
    rows = _rows()
    blobs = Blobs([rows[:40], rows[40:]], 256)
    browser = Browser(Lines(blobs.spans, blobs.open_chunks), Recipe(), "openai")
    found, next_line = browser.scan(1, len(rows) + 1, 5, 10_000, lambda _b: True)
    assert [b.line for b in found] == [1, 2, 3, 4, 5]
    assert next_line == 6
    assert blobs.opened == ["b0"]
    assert blobs.chunks < len(blobs.data["b0"]) // 256 / 2  # the first of 40 lines, not the batch


def _by_line(problems: list[Problem]) -> dict[int, list[Problem]]:
    out: dict[int, list[Problem]] = {}
    for p in problems:
        assert p.line is not None
        out.setdefault(p.line, []).append(p)
    return out


@pytest.mark.parametrize(
    "policies",
    [[], ["unnormalized_text=fix", "consecutive_same_role=fix"], ["duplicate_example=drop"]],
)
@pytest.mark.parametrize("limit", [1, 4, 50])
def test_every_page_has_the_problems_validate_finds(policies: list[str], limit: int) -> None:
    rows = _rows()
    blobs = Blobs([rows[:35], rows[35:]], 512)
    recipe = Recipe(policies=parse_policies(policies))
    reference = run(_blob(rows).split(b"\n"), Recipe(policies=parse_policies(policies)), per_example=True)
    assert reference.problems_detail is not None
    expected = _by_line(reference.problems_detail)
    if "unnormalized_text=fix" in policies:  # line 51 is line 4 only after the fix
        assert any(p.code == "duplicate_example" for p in expected[51])
    browser = Browser(Lines(blobs.spans, blobs.open_chunks), recipe, "openai")
    start: int | None = 1
    seen = []
    while start is not None:
        found, start = browser.scan(start, len(rows) + 1, limit, 10_000, lambda _b: True)
        for b in found:
            assert b.problems == expected.get(b.line, []), b.line
            seen.append(b.line)
    assert seen == list(range(1, len(rows) + 1))


def _peak_of_a_deep_page(n: int, policies: list[str]) -> int:
    """Peak memory of the last page of an n-line dataset (distinct lines, built from real ones)."""
    import tracemalloc

    share = sharegpt_conversations()
    rows = []
    for i in range(n):
        row = json.loads(json.dumps(share[i % len(share)]))
        row["messages"][0]["content"] += f" ({i})"
        rows.append(row)
    blobs = Blobs([rows[: n // 2], rows[n // 2 :]], 64 * 1024)
    browser = Browser(
        Lines(blobs.spans, blobs.open_chunks), Recipe(policies=parse_policies(policies)), "openai"
    )
    browser.scan(1, 3, 2, 10, lambda _b: True)  # encoders and tables loaded before measuring
    del rows
    tracemalloc.start()
    try:
        found, _ = browser.scan(n - 9, n + 1, 5, 10_000, lambda _b: True)
        assert [b.line for b in found] == list(range(n - 9, n - 4))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("policies", [[], ["consecutive_same_role=fix"]])
def test_memory_does_not_grow_with_the_lines_before_a_page(policies: list[str]) -> None:
    """Lines before the page are streamed and hashed, never kept: six times the lines, the same peak."""
    small, large = _peak_of_a_deep_page(2000, policies), _peak_of_a_deep_page(12_000, policies)
    assert large < 1.2 * small, (small, large)
