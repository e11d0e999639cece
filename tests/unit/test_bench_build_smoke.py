"""The build benchmark runs in quick mode with real workers and prints every figure (no speed is asserted)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench import build

NUMBER = r"([0-9][0-9,]*(?:\.[0-9]+)?)"


def figure(text: str, pattern: str) -> float:
    """The first group of the first match of `pattern`, as a positive float."""
    match = re.search(pattern, text, re.MULTILINE)
    assert match is not None, f"nothing matches {pattern!r} in:\n{text}"
    value = float(match.group(1).replace(",", ""))
    assert value > 0, f"{pattern!r} gave {value}"
    return value


def build_line(text: str, workers: int) -> re.Match[str]:
    plural = "s" if workers > 1 else ""
    pattern = (
        rf"^    {workers} worker{plural}: {NUMBER} s wall, {NUMBER} MB/s, {NUMBER} shards, "
        rf"{NUMBER} examples out, peak RSS of the largest worker process {NUMBER} MiB"
    )
    match = re.search(pattern, text, re.MULTILINE)
    assert match is not None, f"no {workers}-worker build line in:\n{text}"
    assert all(float(g.replace(",", "")) > 0 for g in match.groups()), match.group(0)
    return match


@pytest.mark.slow
def test_quick_build_benchmark_prints_every_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert build.main(["--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out

    assert re.search(r"^environment: Python [0-9.]+ .*celery [0-9.]+.* [0-9]+ CPUs$", out, re.MULTILINE), out
    size = figure(out, rf"^data: {NUMBER} bytes")
    assert size >= build.QUICK_MB * 1e6
    examples = figure(out, rf"^data: .* MB of canonical chat JSONL, {NUMBER} distinct")
    batches = figure(out, rf"generated in [0-9.]+ s; {NUMBER} batches")
    assert batches >= 2
    assert "redis-server at redis://127.0.0.1:" in out

    throughput, memory = out.split("\n(3) ", 1)
    for n in build.WORKERS:
        match = build_line(throughput, n)
        assert float(match.group(3)) > 1  # several shards
        assert float(match.group(4).replace(",", "")) == examples
    figure(throughput, rf"^    speed-up \(2 vs 1 worker, best runs\) = {NUMBER}x   target >= 1.7")
    assert re.search(r"check: artifacts identical in all 2 builds with 1 and 2 workers", throughput), (
        throughput
    )
    assert "DIFFER" not in out

    half = build_line(memory, 1)
    assert float(half.group(4).replace(",", "")) < examples
    figure(memory, rf"peak RSS, largest worker process: [0-9.]+ MB -> {NUMBER} MiB")
    figure(memory, rf"-> [0-9.]+ MiB, [0-9.]+ MB -> {NUMBER} MiB; ratio")
    figure(memory, rf"; ratio {NUMBER} for")
    assert re.search(r"target <= 1\.15   (PASS|MISS)$", memory, re.MULTILINE), memory

    figures = json.loads((tmp_path / "build.json").read_text())
    assert figures["repeats"] == build.QUICK_REPEATS == 1
    builds = {label: runs[0] for label, runs in figures["builds"].items()}
    assert figures["artifacts_identical"] is True
    assert builds["full_1w"]["artifacts"] == builds["full_2w"]["artifacts"]
    assert {"report.json", "train.jsonl"} <= set(builds["full_1w"]["artifacts"])
    for result in builds.values():
        assert result["wall_s"] > 0
        assert result["mb_per_s"] > 0
        assert result["peak_rss"] > 0
        assert result["samples"] > 0
        assert result["examples_out"] == result["examples"]
        roles = {p["role"] for p in result["processes"]}
        assert roles == {"main", "pool child"}  # the whole process tree of every worker was sampled
    assert len({p["worker"] for p in builds["full_2w"]["processes"]}) == 2
    for n in build.WORKERS:
        assert (tmp_path / f"build_full_{n}w_r1_worker{n}.log").exists()
