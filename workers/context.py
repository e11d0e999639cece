"""One job as a worker step sees it: its record and typed spec, where its files go, and the one
way a step ends it (`fail`, `cancel_if_asked`, `succeed`), each recorded through a Redis restart.

Read once when the step starts; `live` says whether there is anything left to do (an ended or
expired job is left alone, so a redelivered step is harmless).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from service.jobs import TERMINAL, BuildSpec, Code, JobSpec, spec_of
from service.store.blobs import job_prefix
from workers.resilience import until_recorded
from workers.runtime import Runtime, runtime


class JobContext:
    def __init__(self, job_id: str, rt: Runtime | None = None) -> None:
        self.rt = rt or runtime()
        self.settings, self.state, self.blobs, self.jobs = (
            self.rt.settings,
            self.rt.state,
            self.rt.blobs,
            self.rt.jobs,
        )
        self.job_id = job_id
        self.job: dict[str, Any] = self.jobs.get(job_id) or {}
        self.tenant: str = self.job.get("tenant", "")
        self._spec: JobSpec | None = None

    @property
    def live(self) -> bool:
        return bool(self.job) and self.job["status"] not in TERMINAL

    @property
    def spec(self) -> JobSpec:
        if self._spec is None:
            self._spec = spec_of(self.job)
        return self._spec

    @property
    def build(self) -> BuildSpec:
        """The spec of a build job (the sharded build's steps run only builds)."""
        spec = self.spec
        assert isinstance(spec, BuildSpec), f"job {self.job_id} is a {self.job.get('kind')}, not a build"
        return spec

    def key(self, name: str) -> str:
        """A blob key among the job's files."""
        return job_prefix(self.tenant, self.job_id) + name

    def _clean_up(self, stored: Iterable[dict[str, Any]] = ()) -> None:
        """Remove what an ended job leaves: its stored artifacts (given) and a build's work files."""
        for artifact in stored:
            self.blobs.delete_prefix(artifact["key"])
        if self.job.get("kind") == "build":
            self.blobs.delete_prefix(self.key("work/"))

    def start(self, stage: str) -> bool:
        return until_recorded(lambda: self.jobs.start(self.job_id, stage))

    def succeed(self, result: dict[str, Any]) -> bool:
        return until_recorded(lambda: self.jobs.succeed(self.job_id, result))

    def fail(
        self,
        code: Code,
        message: str,
        *,
        result: dict[str, Any] | None = None,
        stored: Iterable[dict[str, Any]] = (),
    ) -> bool:
        """Fail the job and remove what it had stored: a failed job keeps no outputs (but the
        result it names, such as a failed build's report.json). False when it had already ended."""
        failed = until_recorded(lambda: self.jobs.fail(self.job_id, code, message, result=result))
        self._clean_up(stored)
        return failed

    def cancel_if_asked(
        self, *, result: dict[str, Any] | None = None, stored: Iterable[dict[str, Any]] = ()
    ) -> bool:
        """Honour a cancel request (True: the job is cancelled and its files are gone)."""
        if not self.jobs.cancel_requested(self.job_id):
            return False
        until_recorded(lambda: self.jobs.cancel(self.job_id, result=result))
        self._clean_up(stored)
        return True
