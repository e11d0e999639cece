"""The packing benchmark runs in quick mode and prints every figure (no speed is asserted)."""

from __future__ import annotations

import re

import pytest

from bench import pack

NUMBER = r"([0-9][0-9,]*(?:\.[0-9]+)?)"


def figure(text: str, pattern: str) -> float:
    match = re.search(pattern, text, re.MULTILINE)
    assert match is not None, f"nothing matches {pattern!r} in:\n{text}"
    return float(match.group(1).replace(",", ""))


@pytest.mark.slow
def test_quick_pack_benchmark_prints_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    assert pack.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert figure(out, rf"^data: {NUMBER} documents") == pack.QUICK_DOCS
    tokens = figure(out, rf"capped at 4096: {NUMBER} tokens")
    lower = figure(out, rf"^lower bound: {NUMBER} sequences of 4096")
    assert lower == -(-tokens // 4096)
    ours = rf"^tuneset best_fit_decreasing \(global\): {NUMBER} s, {NUMBER} sequences, efficiency {NUMBER}"
    match = re.search(ours, out, re.MULTILINE)
    assert match is not None, out
    sequences = float(match.group(2).replace(",", ""))
    assert sequences >= lower
    assert float(match.group(3)) == pytest.approx(tokens / (sequences * 4096), abs=1e-5)
    assert "check: every document placed exactly once" in out
    if pack.trl_version() is None:
        assert "uv pip install --no-deps trl transformers" in out
    else:
        assert re.search(
            r"^TRL [0-9.]+ pack_dataset\(strategy='bfd'\): [0-9.]+ s, [0-9,]+ sequences", out, re.M
        )
        assert "target efficiency >= TRL's" in out
        assert "target time <= TRL's" in out


def test_no_trl_flag_skips_the_comparison(capsys: pytest.CaptureFixture[str]) -> None:
    assert pack.main(["--docs", "500", "--no-trl"]) == 0
    out = capsys.readouterr().out
    assert "TRL" not in out
    assert figure(out, rf"^data: {NUMBER} documents") == 500
