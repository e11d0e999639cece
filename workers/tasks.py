"""Named tasks: thin wrappers over functions that tests call directly."""

from __future__ import annotations

from celery.exceptions import SoftTimeLimitExceeded

from service.settings import get_settings
from service.store.state import State
from workers.app import app
from workers.sharded import finalize_build, plan_build, run_shard


def _time_limit(job_id: str) -> None:
    settings = get_settings()
    State.from_url(settings.redis_url).transition(
        job_id,
        {"queued", "running"},
        "failed",
        stage="failed",
        error={
            "code": "time_limit_exceeded",
            "message": f"a build step ran longer than its {settings.build_time_limit_s} s limit",
        },
    )


@app.task(name="tuneset.build")  # type: ignore[untyped-decorator]
def build(job_id: str) -> None:
    """Plan a build and fan it out into shard tasks."""
    try:
        plan_build(job_id)
    except SoftTimeLimitExceeded:
        _time_limit(job_id)


@app.task(name="tuneset.build_shard")  # type: ignore[untyped-decorator]
def build_shard(job_id: str, index: int) -> None:
    try:
        run_shard(job_id, index)
    except SoftTimeLimitExceeded:
        _time_limit(job_id)


@app.task(name="tuneset.build_finalize")  # type: ignore[untyped-decorator]
def build_finalize(job_id: str) -> None:
    try:
        finalize_build(job_id)
    except SoftTimeLimitExceeded:
        _time_limit(job_id)
