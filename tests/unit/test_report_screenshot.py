"""The HTML report in a real browser: headless Chromium renders it without errors, takes a
screenshot that is not blank, and its DOM holds the SVG charts.

Chromium is required, not optional: CI installs it (`apt-get install -y chromium`). Two
control pages check the checks themselves: a blank page must fail the "not blank" test, and a
page that throws must log "Uncaught".
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from service.core import pipeline
from service.core.report_html import render_html

DATA = Path(__file__).parent.parent / "data" / "sharegpt_fastchat_dummy.json"
WIDTH, HEIGHT = 1280, 2400
INSTALL = "apt-get update && apt-get install -y chromium"

BAD_LINES = [
    '{"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}, '
    '{"role": "assistant", "content": "Hello."}]}',
    '{"messages": [{"role": "user", "content": "What is 2+2?"}, {"role": "user", "content": "Quick!"}, '
    '{"role": "assistant", "content": "4"}]}',
    '{"messages": [{"role": "user", "content": "Name a colour"}, {"role": "assistant", "content": "Blue"}], '
    '"<script>alert(1)</script>": 1}',
    "not json at all",
    '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}, '
    '{"role": "user", "content": "bye"}]}',
]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "/usr/bin/chromium"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(f"headless Chromium is needed to test the HTML report; install it with: {INSTALL}")


# headless, offline: no GPU, no QUIC, no first-run, background, component-update or sync traffic
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def run_chromium(tmp_path: Path, page: Path | str, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on a file or a loopback URL, in a new empty profile."""
    stem = page.stem if isinstance(page, Path) else "url"
    profile = tmp_path / f"profile-{stem}-{len(list(tmp_path.glob('profile-*')))}"
    cmd = [
        chromium(),
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        f"--window-size={WIDTH},{HEIGHT}",
        *args,
        page.resolve().as_uri() if isinstance(page, Path) else page,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def png_pixels(path: Path) -> tuple[int, int, bytes]:
    """Width, height and the inflated (still filtered) scanlines of a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, size = 8, b"", (0, 0)
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    return size[0], size[1], zlib.decompress(idat)


def looks_blank(width: int, height: int, raw: bytes) -> bool:
    """One colour everywhere: (filtered) scanlines all alike and few distinct byte values."""
    stride = len(raw) // height
    rows = {raw[i * stride : (i + 1) * stride] for i in range(height)}
    return len(rows) < 50 or len(set(raw)) < 32


def screenshot(tmp_path: Path, page: Path) -> Path:
    png = tmp_path / f"{page.stem}.png"
    result = run_chromium(tmp_path, page, f"--screenshot={png}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert png.exists(), result.stderr[-2000:]
    return png


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("report")
    out: dict[str, Path] = {}
    good = pipeline.summarize(DATA.read_bytes().splitlines(keepends=True), pipeline.Recipe())
    out["good"] = tmp / "good.html"
    out["good"].write_text(render_html(good.report(), histograms=good.histograms(), source=DATA.name))

    recipe = pipeline.Recipe(
        policies=pipeline.parse_policies(
            ["consecutive_same_role=fix", "unknown_key=fix", "trailing_non_assistant=fix"]
        )
    )
    bad = pipeline.summarize((line.encode() + b"\n" for line in BAD_LINES), recipe)
    report = bad.report()
    assert not report.ok
    assert report.fixes
    assert report.problems
    fill = [min(1.0, 0.55 + 0.003 * i) for i in range(150)]
    out["bad"] = tmp / "bad.html"
    out["bad"].write_text(
        render_html(
            report,
            histograms=bad.histograms(),
            packing={
                "seq_len": 2048,
                "sequences": 150,
                "real_tokens": 270_000,
                "padding_tokens": 37_200,
                "efficiency": 270_000 / 307_200,
                "fill": fill,
            },
            duplicates={"exact": 1, "near": 0, "samples": [{"index": 6, "of": 1, "kind": "exact"}]},
            source="bad.jsonl",
        )
    )
    return out


@pytest.mark.parametrize("name", ["good", "bad"])
def test_the_report_renders_to_a_screenshot_that_is_not_blank(
    tmp_path: Path, pages: dict[str, Path], name: str
) -> None:
    png = screenshot(tmp_path, pages[name])
    width, height, raw = png_pixels(png)
    assert (width, height) == (WIDTH, HEIGHT)
    assert not looks_blank(width, height, raw)


def test_a_blank_page_is_seen_as_blank(tmp_path: Path) -> None:
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    width, height, raw = png_pixels(screenshot(tmp_path, blank))
    assert looks_blank(width, height, raw)


@pytest.mark.parametrize("name", ["good", "bad"])
def test_the_dom_has_the_charts_and_no_script_errors(
    tmp_path: Path, pages: dict[str, Path], name: str
) -> None:
    result = run_chromium(tmp_path, pages[name], "--enable-logging=stderr", "--v=0", "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    charts = 3 if name == "bad" else 2
    assert dom.count('<svg class="chart"') == charts
    assert dom.count('class="bar"') > 10
    for chart_id in ("hist-billed", "hist-trained"):
        assert f'id="{chart_id}"' in dom
    if name == "bad":
        assert 'id="hist-fill"' in dom
        assert 'id="packing"' in dom
        assert 'id="duplicates"' in dom
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    assert "<script" not in dom
    assert "Uncaught" not in result.stderr
    assert "CONSOLE" not in result.stderr  # nothing at all written to the page's console


def test_a_script_error_would_be_seen(tmp_path: Path) -> None:
    page = tmp_path / "throws.html"
    page.write_text('<!DOCTYPE html><html><body><script>throw new Error("boom")</script></body></html>')
    result = run_chromium(tmp_path, page, "--enable-logging=stderr", "--v=0", "--dump-dom")
    assert "Uncaught" in result.stderr
