"""Real parts: the session's redis-server (tests/conftest.py) and real Celery worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.run import stop, worker_command
from service.settings import Settings
from service.store.state import State

ROOT = Path(__file__).parents[2]


def fresh_settings(redis_url: str, tmp_path: Path, **extra: Any) -> Settings:
    """Settings for one test on an emptied Redis database (`extra` overrides or adds fields)."""
    State.from_url(redis_url).r.flushdb()
    fields: dict[str, Any] = {"build_time_limit_s": 60, "visibility_timeout_s": 90, **extra}
    return Settings(redis_url=redis_url, data_dir=tmp_path / "data", **fields)


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Settings:
    return fresh_settings(redis_url, tmp_path)


def settings_env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "TUNESET_REDIS_URL": settings.redis_url,
        "TUNESET_DATA_DIR": str(settings.data_dir),
        "TUNESET_BUILD_TIME_LIMIT_S": str(settings.build_time_limit_s),
        "TUNESET_VISIBILITY_TIMEOUT_S": str(settings.visibility_timeout_s),
    }


@pytest.fixture
def worker(settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    """One real `celery worker` process (a main process and one pool child)."""
    log = settings.data_dir / "worker.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            worker_command(settings, loglevel="info"),
            env=settings_env(settings),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60  # a worker imports pyarrow, tokenizers, ...: slow on a busy machine
        while b"ready." not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{log.read_text()}")
            time.sleep(0.1)
        yield proc
    finally:
        stop(proc)
        if sys.exc_info()[0] is not None:
            print(log.read_text())
