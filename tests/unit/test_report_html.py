"""The HTML build report: self-contained, escaped, deterministic, and its bars are the data."""

from __future__ import annotations

from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from service.cli import main
from service.core import pipeline
from service.core.pipeline import BuildInfo, Histogram, Recipe, Report, group_problems, histogram
from service.core.problems import Action, Problem
from service.core.report_html import bar_chart, render_html

DATA = Path(__file__).parent.parent / "data" / "sharegpt_fastchat_dummy.json"
SCRIPT = "<script>alert(1)</script>"


def _summary(path: Path = DATA, **recipe: object) -> pipeline.Summary:
    rec = msgspec.convert(recipe, pipeline.Recipe)
    return pipeline.summarize(path.read_bytes().splitlines(keepends=True), rec, per_example=True)


@pytest.fixture(scope="module")
def summary() -> pipeline.Summary:
    return _summary()


class Bar(msgspec.Struct):
    chart: str
    count: int
    height: float
    y: float


class _Page(HTMLParser):
    """Collects every tag, the bars of each chart (by the id of its figure) and the text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: Counter[str] = Counter()
        self.bars: list[Bar] = []
        self.figure: str | None = None
        self.text: list[str] = []
        self.attrs: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags[tag] += 1
        self.attrs.append((tag, a))
        if tag == "figure":
            self.figure = a.get("id")
        if tag == "rect" and a.get("class") == "bar":
            assert self.figure is not None
            self.bars.append(
                Bar(self.figure, int(a["data-count"] or ""), float(a["height"] or ""), float(a["y"] or ""))
            )

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self.figure = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> _Page:
    p = _Page()
    p.feed(page)
    p.close()
    return p


def _reference_counts(values: list[int], hist: Histogram) -> list[int]:
    """Bin counts computed independently of `histogram`, from the edges alone."""
    return [
        sum(1 for v in values if lo <= v < hi) for lo, hi in zip(hist.edges, hist.edges[1:], strict=False)
    ]


# --- the histogram ------------------------------------------------------------------------------


@given(st.lists(st.integers(0, 200_000), min_size=1, max_size=300), st.integers(1, 60))
def test_histogram_bins_every_value_once_in_round_equal_bins(values: list[int], bins: int) -> None:
    h = histogram(values, bins)
    assert len(h.edges) == len(h.counts) + 1
    assert 1 <= len(h.counts) <= bins
    assert sum(h.counts) == len(values)
    widths = {h.edges[i + 1] - h.edges[i] for i in range(len(h.counts))}
    assert len(widths) == 1
    (width,) = widths
    assert width.is_integer()
    assert str(int(width)).strip("0") in ("1", "2", "5")  # 1, 2 or 5 times a power of ten
    assert h.edges[0] % width == 0
    assert h.edges[0] <= min(values)
    assert max(values) < h.edges[-1]
    assert h.counts == _reference_counts(values, h)


def test_histogram_of_nothing_is_empty() -> None:
    assert histogram([]) == Histogram([], [])


def test_summary_histograms_are_the_per_example_billed_and_trained_tokens(summary: pipeline.Summary) -> None:
    report = summary.report()
    assert report.examples_detail is not None
    billed = [d.billed_tokens for d in report.examples_detail]
    trained = [d.trained_tokens for d in report.examples_detail]
    hists = summary.histograms()
    assert set(hists) == {"billed", "trained"}
    assert hists["billed"].counts == _reference_counts(billed, hists["billed"])
    assert hists["trained"].counts == _reference_counts(trained, hists["trained"])
    assert sum(hists["billed"].counts) == report.examples_out == 500
    assert len(summary.histograms(bins=5)["billed"].counts) <= 5


# --- the page -----------------------------------------------------------------------------------


def test_the_page_is_self_contained_and_has_every_section(summary: pipeline.Summary) -> None:
    report = summary.report()
    page = render_html(report, histograms=summary.histograms())
    doc = parse(page)
    text = " ".join(doc.text)
    assert page.startswith("<!DOCTYPE html>")
    assert doc.tags["script"] == 0  # no JavaScript
    assert doc.tags["link"] == 0
    assert doc.tags["img"] == 0
    assert doc.tags["iframe"] == 0
    for _tag, attrs in doc.attrs:  # no external assets: the only URL is the SVG namespace
        for name in ("src", "href"):
            assert name not in attrs
    assert doc.tags["style"] == 1
    assert doc.tags["svg"] == 2
    # header
    assert "OK" in text
    assert "ERRORS" not in text
    assert report.model in text
    assert "sharegpt" in text
    for label in ("examples in", "examples out", "dropped", "failed"):
        assert label in text
    # cost box
    assert "28,751" in text  # billed and billable tokens
    assert "$0.2588" in text
    assert "$3 / 1M tokens" in text
    assert "default epochs" in text
    # distributions: every stat of the report, for the three rows
    for row in ("messages per example", "billed tokens per example", "trained tokens per example"):
        assert row in text
    assert report.tokens.billed_per_example is not None
    for cell in ("27", "34", "52", "57.50", "86", "97"):
        assert cell in doc.text
    # charts: titles, axes, tick labels
    assert "Billed tokens per example" in text
    assert "Trained tokens per example" in text
    assert "examples" in doc.text  # the y axis label
    assert page.count('class="axis"') >= 4
    assert page.count('class="tick"') >= 8
    # problems and fixes
    assert "no_system_message" in text
    assert "… and 495 more" in text
    assert "No fixes applied." in text
    assert 'id="packing"' not in page
    assert 'id="duplicates"' not in page


def test_bar_heights_are_proportional_to_the_counts_from_the_reports_data(
    summary: pipeline.Summary,
) -> None:
    report = summary.report()
    assert report.examples_detail is not None
    page = render_html(report, histograms=summary.histograms())
    bars = parse(page).bars
    for name, values in (
        ("billed", [d.billed_tokens for d in report.examples_detail]),
        ("trained", [d.trained_tokens for d in report.examples_detail]),
    ):
        hist = summary.histograms()[name]
        chart = [b for b in bars if b.chart == f"hist-{name}"]
        assert [b.count for b in chart] == _reference_counts(values, hist)
        assert sum(b.count for b in chart) == 500
        peak = max(chart, key=lambda b: b.count)
        assert peak.height > 100  # a visible plot, not a flat line
        for b in chart:
            assert b.height == pytest.approx(b.count * peak.height / peak.count, abs=0.01)
            assert b.y + b.height == pytest.approx(peak.y + peak.height, abs=0.01)  # one baseline
        assert len({round(b.height, 1) for b in chart}) > 3  # the real shape, not one block


def test_raw_values_are_binned_like_the_summary_does(summary: pipeline.Summary) -> None:
    report = summary.report()
    assert report.examples_detail is not None
    raw = {"billed": [d.billed_tokens for d in report.examples_detail]}
    from_raw = render_html(report, histograms=raw)
    from_summary = render_html(report, histograms={"billed": summary.histograms()["billed"]})
    assert from_raw == from_summary


def test_an_empty_histogram_says_so() -> None:
    svg = bar_chart(Histogram([], []), title="t", x_label="x", y_label="y")
    assert "no data" in svg
    assert "<rect" not in svg


def test_every_string_from_the_data_is_escaped(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], '
        '"<script>alert(1)</script>": 1}\n'
    )
    summary = _summary(bad, policies={"unknown_key": "fix"})
    report = summary.report()
    assert any(SCRIPT in p.message for p in report.problems)
    assert any(SCRIPT in c.detail for c in report.changes)
    report.problems += group_problems(
        [Problem("invalid_json", "error", f"a message with {SCRIPT} & <b>", 9, None, "fail")]
    )
    report.build = BuildInfo(
        job_id=f"job{SCRIPT}",
        dataset_id=f"ds{SCRIPT}",
        created_at=SCRIPT,
        recipe=Recipe(system_prompt=SCRIPT, policies={SCRIPT: Action.FIX}),
    )
    report.notes.append(f"note {SCRIPT}")
    report = msgspec.structs.replace(report, model=f"m{SCRIPT}", format=f"f{SCRIPT}")
    page = render_html(
        report,
        histograms=summary.histograms(),
        packing={"efficiency": 0.5, "policy": SCRIPT, "weird": SCRIPT, "fill": [0.5]},
        duplicates={"exact": 1, "samples": [{"line": SCRIPT}, {"kind": SCRIPT}]},
        title=f"t{SCRIPT}",
        source=f"s{SCRIPT}",
        generated=SCRIPT,
    )
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "a message with &lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;" in page
    doc = parse(page)
    assert doc.tags["script"] == 0
    # the header's input, job, dataset, created, model and format tags; none come from the data
    assert doc.tags["b"] == 6


def test_the_page_is_deterministic() -> None:
    a, b = _summary(), _summary()
    page_a = render_html(a.report(), histograms=a.histograms())
    assert page_a == render_html(b.report(), histograms=b.histograms())
    assert "generated by tuneset<" in page_a  # no timestamp unless one is passed in
    assert "2030-01-01" in render_html(a.report(), generated="2030-01-01")


def _with_everything(report: Report) -> str:
    return render_html(
        report,
        packing={
            "seq_len": 4096,
            "policy": "truncate",
            "sequences": 3,
            "slots": 12288,
            "real_tokens": 11000,
            "padding_tokens": 1288,
            "efficiency": 11000 / 12288,
            "lower_bound": 3,
            "fill": [0.99, 0.97, 0.72],
        },
        duplicates={
            "exact": 2,
            "near": 1,
            "threshold": 0.85,
            "samples": [
                {"index": 7, "of": 2, "similarity": 1.0, "kind": "exact"},
                {"index": 9, "of": 4, "similarity": 0.9, "kind": "near"},
            ],
        },
    )


def test_packing_and_duplicates_when_given(summary: pipeline.Summary) -> None:
    page = _with_everything(summary.report())
    doc = parse(page)
    text = " ".join(doc.text)
    assert 'id="packing"' in page
    assert 'id="duplicates"' in page
    assert "89.5%" in text  # efficiency
    assert "padding tokens" in text
    assert "1,288" in text
    assert "10.5%" in text
    assert "lower_bound" in text  # an unknown field is still listed
    assert "Sequence fill" in text
    fill = [b for b in doc.bars if b.chart == "hist-fill"]
    assert len(fill) == 20
    assert [b.count for b in fill if b.count] == [1, 2]  # 72% in one bin, 97% and 99% in the last
    assert "exact duplicates removed" in text
    assert "near duplicates removed" in text
    assert "similarity" in doc.text
    assert "0.90" in doc.text


def test_validate_writes_the_html_report(tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["validate", str(DATA), "--html", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    summary = _summary()
    assert page == render_html(summary.report(), histograms=summary.histograms(), source=str(DATA))
    assert "tuneset validate" in result.output  # the terminal report is still printed
