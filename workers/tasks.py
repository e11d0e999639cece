"""Named tasks: thin wrappers over functions that tests call directly."""

from __future__ import annotations

from celery.exceptions import SoftTimeLimitExceeded

from service.settings import get_settings
from service.store.state import State
from workers.app import app
from workers.build import run_build


@app.task(name="tuneset.build")  # type: ignore[untyped-decorator]
def build(job_id: str) -> None:
    try:
        run_build(job_id)
    except SoftTimeLimitExceeded:
        limit = get_settings().build_time_limit_s
        State.from_url(get_settings().redis_url).transition(
            job_id,
            {"queued", "running"},
            "failed",
            stage="failed",
            error={
                "code": "time_limit_exceeded",
                "message": f"the build ran longer than its {limit} s limit",
            },
        )
