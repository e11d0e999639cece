"""The web UI in a real browser against the real service: a `tuneset api` process, a real
Celery worker process, the session's redis-server, the fake provider on loopback and a webhook
receiver, all for one module; Debian's chromium (`/usr/bin/chromium`, `make browser` installs it)
driven by Playwright with a fresh profile. Playwright's own browser download is never used.

Screenshots go to `.test-artifacts/ui/` (gitignored), one per page a test looks at.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, sync_playwright

from service.providers.fake import FakeProvider, run_fake_provider
from service.run import stop
from service.settings import Settings
from service.store.secrets import new_key
from service.store.state import TERMINAL, State
from tests.conftest import DATA, jsonl
from tests.integration.test_fine_tune_flow import Receiver, loop_env
from tests.integration.test_sse_streams import api_process
from tests.integration.test_worker_faults import _start_worker
from tests.unit.test_report_screenshot import CHROMIUM_FLAGS

ROOT = Path(__file__).parents[2]
ARTIFACTS = ROOT / ".test-artifacts" / "ui"
CHROMIUM = "/usr/bin/chromium"
os.environ["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"


def sharegpt() -> list[Any]:
    """The 500 real ShareGPT conversations (tests/data is the same file as ../shared/data)."""
    rows: list[Any] = json.loads((DATA / "sharegpt_fastchat_dummy.json").read_text())
    return rows


@dataclass
class Stack:
    base: str
    key: str
    http: httpx.Client
    state: State
    fake: FakeProvider
    receiver: Receiver
    api_log: Path

    def dataset(self, name: str, batches: list[list[Any]]) -> str:
        r = self.http.post("/v1/datasets", json={"name": name, "kind": "chat"})
        assert r.status_code == 201, r.text
        ds: str = r.json()["id"]
        for rows in batches:
            r = self.http.post(
                f"/v1/datasets/{ds}/batches",
                content=jsonl(*rows),
                headers={"Content-Type": "application/jsonl"},
            )
            assert r.status_code == 201, r.text
        return ds

    def build(self, dataset_id: str, recipe: dict[str, Any]) -> dict[str, Any]:
        r = self.http.post(f"/v1/datasets/{dataset_id}/builds", json=recipe)
        assert r.status_code == 202, r.text
        started: dict[str, Any] = r.json()
        return started

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.http.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        job: dict[str, Any] = r.json()
        return job

    def wait(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (job := self.job(job_id))["status"] not in TERMINAL:
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
        return job


@pytest.fixture(scope="module")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("ui")
    state = State.from_url(redis_url)
    state.r.flushdb()
    settings = Settings(
        redis_url=redis_url,
        data_dir=tmp / "data",
        secret_key=new_key(),
        webhook_allow_hosts=["127.0.0.1"],
        webhook_retry_schedule_s=[0.3, 0.3],
        provider_poll_interval_s=0.5,
        build_time_limit_s=120,
        visibility_timeout_s=150,
    )
    env = {
        "secret_key": settings.secret_key.get_secret_value() if settings.secret_key else "",
        "webhook_allow_hosts": json.dumps(settings.webhook_allow_hosts),
        "webhook_retry_schedule_s": json.dumps(settings.webhook_retry_schedule_s),
        "provider_poll_interval_s": str(settings.provider_poll_interval_s),
    }
    worker: subprocess.Popen[bytes] | None = None
    with run_fake_provider(step_seconds=0.3) as fake, api_process(redis_url, tmp, **env) as api:
        try:
            worker = _start_worker(settings, tmp / "worker.log", env=loop_env(settings))
            key = state.create_key("acme")
            with httpx.Client(
                base_url=api.base, headers={"Authorization": f"Bearer {key}"}, timeout=30
            ) as http:
                yield Stack(api.base, key, http, state, fake, Receiver(), api.log)
        except BaseException:
            for log in (api.log, tmp / "worker.log"):
                if log.exists():
                    print(f"--- {log.name}\n{log.read_text()[-6000:]}")
            raise
        finally:
            if worker is not None:
                stop(worker)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    """Debian's chromium with a fresh user-data-dir, at 1280 px."""
    assert Path(CHROMIUM).exists(), "chromium is missing: `make browser` (apt-get install -y chromium)"
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 800},
        )
        context.set_default_timeout(20_000)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser: BrowserContext, stack: Stack) -> Iterator[Page]:
    """A signed-in page: the login form filled in, as a user would."""
    browser.clear_cookies()
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{stack.base}/ui/login")
    page.get_by_label("API key").fill(stack.key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{stack.base}/ui/datasets")
    try:
        yield page
    finally:
        page.close()
    assert not errors, errors  # no script error on any page


def shot(page: Page, name: str, *, full_page: bool = True) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    assert path.stat().st_size > 1000
    return path


@contextlib.contextmanager
def laptop(page: Page) -> Iterator[None]:
    """A laptop screen for the block (1366 x 768), then back to 1280 x 800."""
    page.set_viewport_size({"width": 1366, "height": 768})
    try:
        yield
    finally:
        page.set_viewport_size({"width": 1280, "height": 800})
