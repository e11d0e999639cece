"""/readyz turns unready when the API cannot serve: not only when Redis is down (test_api.py), but
when no worker thread is free for the synchronous handlers, and it says so instead of hanging."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from litestar.concurrency import sync_to_thread
from litestar.testing import TestClient

from service.api.app import create_app
from service.settings import Settings
from tests.api.test_api import assert_problem


def test_readyz_is_a_503_when_no_worker_thread_is_free(redis_url: str, tmp_path: Path) -> None:
    settings = Settings(redis_url=redis_url, data_dir=tmp_path, ready_timeout_s=0.3)
    release = threading.Event()
    safety = threading.Timer(10, release.set)  # a readiness check that needs a thread still ends
    safety.start()
    try:
        with TestClient(create_app(settings)) as client:
            assert client.get("/readyz").status_code == 200
            # take every thread of the executor that runs the synchronous handlers (and queue more)
            for _ in range(64):
                client.blocking_portal.start_task_soon(sync_to_thread, release.wait)
            time.sleep(0.2)
            start = time.monotonic()
            r = client.get("/readyz")
            elapsed = time.monotonic() - start
            body = assert_problem(r, 503, "not-ready")
            assert "worker thread" in body["detail"]
            assert r.headers["retry-after"]
            assert elapsed < 3, elapsed
            release.set()
            deadline = time.monotonic() + 10
            while client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "still unready after the threads were freed"
                time.sleep(0.05)
    finally:
        release.set()
        safety.cancel()
