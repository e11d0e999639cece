"""The API under test, in process, on the session's real redis-server (tests/conftest.py), a fresh db per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from litestar import Litestar
from litestar.testing import TestClient

from service.api.app import create_app
from service.settings import Settings
from service.store.state import State


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Settings:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    return Settings(redis_url=redis_url, data_dir=tmp_path, max_body_bytes=1024 * 1024)


@pytest.fixture
def app(settings: Settings) -> Litestar:
    return create_app(settings)


@pytest.fixture
def client(app: Litestar) -> Iterator[TestClient[Litestar]]:
    with TestClient(app) as c:
        yield c


@pytest.fixture
def state(settings: Settings) -> Iterator[State]:
    s = State.from_url(settings.redis_url)
    yield s
    s.r.close()
