"""Redis may restart under a running task (shared/reliability.md): what must be recorded is retried
until Redis answers again; what is only informative (progress) is best effort."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TypeVar

import redis

T = TypeVar("T")
PATIENCE_S = 120.0


def until_recorded(fn: Callable[[], T], patience_s: float = PATIENCE_S) -> T:
    """`fn()`, retried with backoff while Redis is unreachable, for up to `patience_s`."""
    deadline = time.monotonic() + patience_s
    delay = 0.2
    while True:
        try:
            return fn()
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def best_effort(fn: Callable[[], object]) -> None:
    with contextlib.suppress(redis.RedisError):
        fn()
