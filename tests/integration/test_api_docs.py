"""The API's documentation pages work offline: in headless Chromium with every host but loopback
unresolvable, /schema and /schema/swagger render Swagger UI with the API's operations."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.run import free_port, stop
from service.settings import Settings
from tests.integration.conftest import settings_env
from tests.unit.test_report_screenshot import chromium

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def api_url(settings: Settings) -> Iterator[str]:
    port = free_port()
    log = settings.data_dir / "api.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "api", "--port", str(port)],
            env=settings_env(settings),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/livez", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the API did not start:\n{log.read_text()}")
            time.sleep(0.1)
        yield url
    finally:
        stop(proc)


@pytest.mark.slow
@pytest.mark.parametrize("page", ["/schema", "/schema/swagger"])
def test_docs_render_offline(api_url: str, page: str, tmp_path: Path) -> None:
    html = httpx.get(api_url + page).text
    assert "cdn." not in html, "the page names a CDN"
    assert "googleapis" not in html, "the page names a CDN"
    done = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",  # offline but for loopback
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=15000",
            "--dump-dom",
            api_url + page,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    dom = done.stdout
    assert 'class="swagger-ui' in dom, done.stderr[-2000:]
    assert "opblock" in dom, "Swagger UI did not render the operations"  # one block per operation
    for path in ("/v1/datasets", "/v1/jobs/{job_id}/artifacts/{name}"):
        assert path in dom, path
