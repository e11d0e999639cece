"""The API's documentation pages work offline: in headless Chromium with every host but loopback
unresolvable, /schema and /schema/swagger render Swagger UI with the API's operations."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from service.settings import Settings
from tests.integration.test_sse_streams import api_process
from tests.unit.test_report_screenshot import run_chromium


@pytest.mark.slow
@pytest.mark.parametrize("page", ["/schema", "/schema/swagger"])
def test_docs_render_offline(settings: Settings, page: str, tmp_path: Path) -> None:
    with api_process(settings.redis_url, tmp_path) as api:
        html = httpx.get(api.base + page).text
        assert "cdn." not in html, "the page names a CDN"
        assert "googleapis" not in html, "the page names a CDN"
        done = run_chromium(
            tmp_path,
            api.base + page,
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",  # offline but for loopback
            "--virtual-time-budget=15000",
            "--dump-dom",
        )
    dom = done.stdout
    assert 'class="swagger-ui' in dom, done.stderr[-2000:]
    assert "opblock" in dom, "Swagger UI did not render the operations"  # one block per operation
    for path in ("/v1/datasets", "/v1/jobs/{job_id}/artifacts/{name}"):
        assert path in dom, path
