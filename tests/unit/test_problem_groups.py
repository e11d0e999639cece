"""Problems are grouped as they are found: a run keeps a bounded summary of them, not every
finding, unless it was asked for every one (per_example)."""

from __future__ import annotations

from service.core.pipeline import Recipe, summarize
from tests.conftest import jsonl, mtbench_conversations


def _lines(copies: int) -> list[bytes]:
    convos = mtbench_conversations()
    return jsonl(*[c for _ in range(copies) for c in convos]).splitlines()


def test_findings_are_folded_into_groups_and_not_kept() -> None:
    lines = _lines(40)  # 1,200 examples, each without a system message, most duplicates
    summary = summarize(lines, Recipe())
    assert summary.problems == []  # nothing kept per finding
    report = summary.report()
    counts = {g.code: g.count for g in report.problems}
    assert counts["no_system_message"] == 1200
    assert counts == report.problem_counts
    assert report.problems_detail is None

    detailed = summarize(lines, Recipe(), per_example=True).report()
    assert detailed.problems == report.problems  # the same groups either way
    assert detailed.problems_detail is not None
    assert len(detailed.problems_detail) == sum(counts.values())


def test_a_file_too_small_for_the_model_fails_once_however_often_it_is_reported() -> None:
    summary = summarize(_lines(1)[:3], Recipe())
    first, second = summary.report(), summary.report()
    assert not first.ok
    assert [g.count for g in first.problems if g.code == "too_few_examples"] == [1]
    assert first.problems == second.problems  # reporting does not fold the file's problem in twice
