"""The token-level build benchmark runs in quick mode with real workers and prints both figures
for both shapes of data (no speed or memory is asserted: the full run's figures are in the README)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench import token_build

NUMBER = r"([0-9][0-9,]*(?:\.[0-9]+)?)"


@pytest.mark.slow
def test_quick_token_build_benchmark_prints_memory_and_throughput(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert token_build.main(["--quick", "--mb", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    figures = json.loads((tmp_path / "token_build.json").read_text())
    for shape in token_build.SHAPES:
        section = out.split(f"\n{shape} messages: ", 1)[1]
        memory = re.search(
            rf"\(1\) memory, token-level build: peak RSS of the largest worker process {NUMBER} MB -> "
            rf"{NUMBER} MiB, {NUMBER} MB -> {NUMBER} MiB; ratio {NUMBER} for",
            section,
        )
        assert memory is not None, section
        quarter_mb, quarter_rss, whole_mb, whole_rss, ratio = (
            float(g.replace(",", "")) for g in memory.groups()
        )
        assert 0 < quarter_mb < whole_mb
        assert float(f"{whole_rss / quarter_rss:.3f}") == pytest.approx(ratio, abs=0.002)
        assert re.search(r"target <= 1\.15   (PASS|MISS)", section)
        speed = re.search(
            rf"\(2\) throughput on [0-9.]+ MB, 1 worker: without token-level outputs {NUMBER} MB/s "
            rf"\([0-9.]+ s\), with packed \+ tokenized {NUMBER} MB/s \([0-9.]+ s\); ratio {NUMBER}",
            section,
        )
        assert speed is not None, section
        plain, token, ratio = (float(g) for g in speed.groups())
        assert float(f"{token / plain:.3f}") == pytest.approx(ratio, abs=0.002)
        assert re.search(r"target >= 0\.5   (PASS|MISS)", section)
        assert "packed/packed-00000.parquet" in section
        assert "tokenized/train-00000.parquet" in section
        result = figures[shape]
        assert result["artifacts_identical"] is True
        builds = {label: runs[0] for label, runs in result["builds"].items()}
        assert set(builds) == {"plain_full", "token_full", "token_quarter"}
        names = set(builds["token_full"]["artifacts"])
        assert {"packed/manifest.json", "tokenized/manifest.json", "train.jsonl"} <= names
        assert not any(n.startswith(("packed/", "tokenized/")) for n in builds["plain_full"]["artifacts"])
        assert builds["token_quarter"]["examples"] < builds["token_full"]["examples"]
