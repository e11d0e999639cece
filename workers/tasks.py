"""Named tasks: thin wrappers over functions that tests call directly."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis
from celery.exceptions import SoftTimeLimitExceeded
from kombu.exceptions import OperationalError

from service.settings import get_settings
from service.store.state import State
from workers.app import app
from workers.sharded import finalize_build, plan_build, run_shard


def _fail(job_id: str, code: str, message: str) -> None:
    settings = get_settings()
    State.from_url(settings.redis_url).transition(
        job_id, {"queued", "running"}, "failed", stage="failed", error={"code": code, "message": message}
    )


def _time_limit(job_id: str) -> None:
    _fail(
        job_id,
        "time_limit_exceeded",
        f"a build step ran longer than its {get_settings().build_time_limit_s} s limit",
    )


def _through_outages(step: Callable[..., None], *args: Any, patience_s: float = 180.0) -> None:
    """Run a build step, and run it again while Redis (state or broker) is unreachable.

    Every step is idempotent (markers, compare-and-set transitions), so redoing it after a Redis
    restart is safe; without this, a step that met the outage would fail and its message, acked,
    would be lost (shared/reliability.md)."""
    deadline = time.monotonic() + patience_s
    delay = 0.5
    while True:
        try:
            step(*args)
            return
        except (redis.RedisError, OperationalError):
            if time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        except SoftTimeLimitExceeded:
            raise
        except Exception as e:  # a bug must end the job, not leave it running forever
            _fail(str(args[0]), "internal_error", f"a build step failed: {type(e).__name__}")
            raise


@app.task(name="tuneset.build")  # type: ignore[untyped-decorator]
def build(job_id: str) -> None:
    """Plan a build and fan it out into shard tasks."""
    try:
        _through_outages(plan_build, job_id)
    except SoftTimeLimitExceeded:
        _time_limit(job_id)


@app.task(name="tuneset.build_shard")  # type: ignore[untyped-decorator]
def build_shard(job_id: str, index: int) -> None:
    try:
        _through_outages(run_shard, job_id, index)
    except SoftTimeLimitExceeded:
        _time_limit(job_id)


@app.task(name="tuneset.build_finalize")  # type: ignore[untyped-decorator]
def build_finalize(job_id: str) -> None:
    try:
        _through_outages(finalize_build, job_id)
    except SoftTimeLimitExceeded:
        _time_limit(job_id)
