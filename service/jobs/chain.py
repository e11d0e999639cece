"""The chain build → upload → fine-tune, declared once: which job waits for which, and what
starts each kind. The API uses it to create the waiting jobs and start the first; the
dispatcher (`workers.notify`) uses it when a job ends, to start the next or end it the same way.

A waiting job is queued with stage `waiting` and named in its predecessor's spec (`upload_job`
in a build's, `fine_tune_job` in an upload's). It never starts on its own: it is enqueued when
its predecessor succeeds, and failed or cancelled (with `build_failed`, `upload_cancelled`, ...)
when its predecessor does not.
"""

from __future__ import annotations

from typing import Any

from service.jobs.errors import JobError, waited_for
from service.jobs.specs import BuildSpec, Callback, FineTuneSpec, JobSpec, Kind, UploadSpec
from service.jobs.store import Jobs, new_job_id, spec_of
from service.queue import BUILD_TASK, FINE_TUNE_TASK, UPLOAD_TASK, enqueue
from service.settings import Settings

ORDER: tuple[Kind, ...] = ("build", "upload", "fine_tune")
TASKS: dict[Kind, str] = {"build": BUILD_TASK, "upload": UPLOAD_TASK, "fine_tune": FINE_TUNE_TASK}
WAITING = "waiting"  # the stage of a job that waits for its predecessor


def task_of(kind: Kind) -> str:
    """The task that runs a job of `kind`."""
    return TASKS[kind]


def send_first(settings: Settings, jobs: Jobs, kind: Kind, job_id: str) -> None:
    """Start a job: its first step is sent, and the job joins the index of live jobs first, so
    the orphan sweep (service/jobs/orphans.py) sends it again if the broker loses the message."""
    send(settings, jobs, task_of(kind), job_id)


def send(settings: Settings, jobs: Jobs, task: str, job_id: str) -> None:
    """Send a job's step that starts or resumes it, the job joining the live index first."""
    jobs.mark_sent(job_id)
    enqueue(settings, task, [job_id])


def follower_of(spec: JobSpec) -> str | None:
    """The id of the job that waits for this one, if any."""
    if isinstance(spec, BuildSpec):
        return spec.upload_job
    if isinstance(spec, UploadSpec):
        return spec.fine_tune_job
    return None


def links(spec: JobSpec) -> dict[str, str]:
    """The other jobs of its chain that a job names, as `{build_job_id, upload_job_id, fine_tune_job_id}`."""
    named = {
        "build_job": getattr(spec, "build_job", None),
        "upload_job": getattr(spec, "upload_job", None),
        "fine_tune_job": getattr(spec, "fine_tune_job", None),
    }
    return {f"{link}_id": job_id for link, job_id in named.items() if job_id}


def plan_followers(
    jobs: Jobs,
    tenant: str,
    build_job: str,
    provider_id: str,
    provider: str,
    fine_tune_options: dict[str, Any] | None,
    callback: Callback | None,
    upload_job: str | None = None,
) -> tuple[str, str | None]:
    """Create the upload job (unless `upload_job` exists) and, with options, the fine-tune job
    that waits for it; both wait. Returns their ids. The build's spec names the upload (its
    creator writes `upload_job`), so create them before the build."""
    fine_tune_job = new_job_id() if fine_tune_options is not None else None
    common: dict[str, Any] = {
        "build_job": build_job,
        "provider_id": provider_id,
        "provider": provider,
        "callback": callback,
    }
    if upload_job is None:
        upload_job = new_job_id()
        upload = UploadSpec(**common, fine_tune_job=fine_tune_job)
        jobs.create(tenant, upload, job_id=upload_job, stage=WAITING)
    if fine_tune_options is not None and fine_tune_job is not None:
        fine_tune = FineTuneSpec(**common, upload_job=upload_job, options=fine_tune_options)
        jobs.create(tenant, fine_tune, job_id=fine_tune_job, stage=WAITING)
    return upload_job, fine_tune_job


def after_ending(jobs: Jobs, job: dict[str, Any]) -> tuple[str, str] | None:
    """What an ended job means for the one waiting for it: `(task, follower id)` to enqueue when
    it succeeded; otherwise the follower is ended the same way here (failed or cancelled), and
    its own ending is announced in turn."""
    follower = follower_of(spec_of(job))
    if follower is None:
        return None
    kind: Kind = job["kind"]
    status = str(job["status"])
    if status == "succeeded":
        return task_of(ORDER[ORDER.index(kind) + 1]), follower
    code = waited_for(kind, status)
    message = f"the {kind} job {job['id']} {status}"
    if status == "cancelled":
        jobs.cancel(follower, error=JobError(code, message))
    else:
        jobs.fail(follower, code, message)
    return None
