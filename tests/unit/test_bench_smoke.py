"""The throughput benchmark runs end to end on tiny data and prints every figure (no speed is asserted)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import validate_throughput

NUMBER = r"([0-9]+(?:\.[0-9]+)?)"


def figure(out: str, pattern: str) -> float:
    """The first group of the first line matching `pattern`, as a positive float."""
    match = re.search(pattern, out, re.MULTILINE)
    assert match is not None, f"no line matches {pattern!r} in:\n{out}"
    value = float(match.group(1).replace(",", ""))
    assert value > 0, f"{pattern!r} gave {value}"
    return value


@pytest.mark.slow
def test_quick_benchmark_prints_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert validate_throughput.main(["--quick", "--mb", "0.5", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out

    assert re.search(r"^environment: Python .*tiktoken [0-9.]+.* [0-9]+ CPUs", out, re.MULTILINE), out
    assert figure(out, r"^data: .*\(([0-9,]+) bytes") >= 500_000
    figure(out, r"^data: .* bytes = ([0-9.]+) MB\)")
    figure(out, r"^data: .*: ([0-9,]+) distinct examples")
    figure(out, r"^data: .* ([0-9,]+) messages")
    assert list(tmp_path.glob("*.jsonl"))

    for label in ("(a)", "(b)", "(c)"):
        figure(out, rf"^{re.escape(label)} .*? {NUMBER} MB/s")
        figure(out, rf"^{re.escape(label)} .*? MB/s   best {NUMBER} CPU s")
    figure(out, rf"\(c\)/\(a\) = {NUMBER}")
    figure(out, rf"\(c\)/\(b\) = {NUMBER}")
    assert "(agree)" in out  # tuneset's billed tokens equal the cookbook's on the same file

    # both corpora, each with all of its figures; the short one has short messages
    corpora = re.findall(r"^data: (long|short) messages: .*? median message ([0-9.]+) characters", out, re.M)
    assert [name for name, _ in corpora] == ["long", "short"], out
    assert 60 <= float(corpora[1][1]) <= 200
    for label in ("(a)", "(b)", "(c)"):
        assert len(re.findall(rf"^{re.escape(label)} .*? {NUMBER} MB/s", out, re.M)) == 2
    assert out.count("(agree)") == 2
    for name in ("long messages", "short messages"):
        figure(out, rf"^    {name} +\(c\)/\(a\) = {NUMBER}   \(c\)/\(b\) = [0-9.]+$")
        figure(out, rf"^    {name} +\(c\)/\(a\) = [0-9.]+   \(c\)/\(b\) = {NUMBER}$")

    figure(out, rf"80 turns {NUMBER} ms")
    figure(out, rf"160 turns {NUMBER} ms")
    figure(out, rf"160/80 = {NUMBER}")

    cases = re.findall(
        rf"^    (\S.*?)\s+(?:{NUMBER} ms   (?:PASS|MISS)(.*)|FAILED: (.*))$", out, re.MULTILINE
    )
    assert len(cases) == 5, out
    for label, ms, rest, failure in cases:
        if ms:
            assert float(ms) > 0
        else:  # a slow machine may blow the budget; that is a figure, not a failure of the benchmark
            assert "budget" in failure, failure
        if "<|endoftext|>" in label and ms:
            assert "special_token_text reported: yes" in rest
