"""The ingestion benchmark runs end to end against a real server and prints every figure (no speed is asserted)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench import ingest

NUMBER = r"([0-9][0-9,]*(?:\.[0-9]+)?)"


def figure(text: str, pattern: str) -> float:
    """The first group of the first match of `pattern`, as a positive float."""
    match = re.search(pattern, text, re.MULTILINE)
    assert match is not None, f"nothing matches {pattern!r} in:\n{text}"
    value = float(match.group(1).replace(",", ""))
    assert value > 0, f"{pattern!r} gave {value}"
    return value


def phase_text(out: str, label: str) -> str:
    """The lines of one phase: from its title to the next blank line."""
    match = re.search(rf"^{re.escape(label)}.*?(?:\n\n|\Z)", out, re.MULTILINE | re.DOTALL)
    assert match is not None, f"no {label!r} section in:\n{out}"
    return match.group(0)


@pytest.mark.slow
def test_quick_ingest_benchmark_prints_every_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ingest.main(["--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out

    assert re.search(
        r"^environment: Python [0-9.]+ .*litestar [0-9.]+, msgspec [0-9.]+, uvicorn [0-9.]+.* [0-9]+ CPUs$",
        out,
        re.MULTILINE,
    ), out
    assert figure(out, rf"^data: batches of {NUMBER} examples") == ingest.BATCH_EXAMPLES
    figure(out, rf"^data: .*; {NUMBER}-[0-9,]+ bytes of application/jsonl per batch")
    figure(out, rf"^data: .*\(mean {NUMBER}\)")
    assert re.search(r"^server: uvicorn .* at http://127\.0\.0\.1:[0-9]+ ", out, re.MULTILINE), out

    for label, clients, batches in (
        ("(1) concurrent", ingest.QUICK_CLIENTS, ingest.QUICK_BATCHES),
        ("(2) single client", 1, ingest.QUICK_CLIENTS * ingest.QUICK_BATCHES),
    ):
        text = phase_text(out, label)
        assert figure(text, rf"^{re.escape(label)}: {NUMBER} clients? x") == clients
        assert figure(text, rf" x {NUMBER} batches") == batches
        assert figure(text, rf"batches: {NUMBER} stored \(201\)") == clients * batches
        assert re.search(r"stored \(201\), 0 errors;", text), text
        figure(text, rf"{NUMBER} bytes of JSONL in")
        figure(text, rf"JSONL in {NUMBER} s")
        figure(text, rf"throughput: {NUMBER} MB/s of JSONL accepted")
        figure(text, rf"{NUMBER} examples/s")
        figure(text, rf"{NUMBER} batches/s")
        figure(text, rf"stored {NUMBER} MB/s")
        for name in ("p50", "p90", "p99", "max"):
            figure(text, rf"{name} {NUMBER} ms")
        assert "check: stored data matches" in text, text
        assert "error:" not in text, text
        assert "DIFFERS" not in text, text
    figure(out, rf"^\(1\)/\(2\) throughput = {NUMBER}x")

    results = json.loads((tmp_path / "ingest.json").read_text())
    for phase in ("concurrent", "single"):
        assert results[phase]["errors"] == 0
        assert results[phase]["check"] == []
        assert results[phase]["mb_per_s"] > 0
