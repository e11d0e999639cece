"""Named tasks: thin wrappers over functions that tests call directly."""

from __future__ import annotations

from workers.app import app
from workers.build import run_build


@app.task(name="tuneset.build")  # type: ignore[untyped-decorator]
def build(job_id: str) -> None:
    run_build(job_id)
