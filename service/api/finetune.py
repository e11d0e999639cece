"""`POST /v1/jobs/{id}/fine-tune`: train on a build that already succeeded.

On a succeeded build with no upload yet, an upload job and a fine-tune job are created and the
upload starts; on a build whose upload succeeded (or on that upload job itself), only a fine-tune
job is created and started. One upload can feed several fine-tuning jobs (other hyperparameters,
seeds), and never uploads twice.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Response, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from service.api import Services
from service.api.builds import callback_of, plan_followups
from service.api.errors import ApiProblem, not_found, problems
from service.api.providers import provider_store
from service.api.schemas import FineTuneOptions, FineTuneRequest, JobStarted
from service.jobs import BuildSpec, Jobs, UploadSpec, spec_of
from service.jobs.chain import send_first


@post(
    "/jobs/{job_id:str}/fine-tune",
    operation_id="startFineTune",
    status_code=202,
    tags=["jobs"],
    sync_to_thread=True,
    responses=problems(401, 404, 409, 422, 503),
)
def start_fine_tune(
    job_id: FromPath[str],
    data: JSONBody[FineTuneRequest],
    tenant: NamedDependency[str],
    services: NamedDependency[Services],
) -> Response[JobStarted]:
    """Start a provider fine-tuning job from a succeeded build (uploading its files first if they
    are not at the provider yet) or from a succeeded upload job."""
    state, jobs = services.state, services.state.jobs
    job = jobs.tenant_job(tenant, job_id)
    if job is None or job["kind"] not in ("build", "upload"):
        raise not_found("build or upload job", job_id)
    if job["status"] != "succeeded":
        raise ApiProblem(
            409, "job-not-succeeded", f"the {job['kind']} job is {job['status']}; it must succeed first"
        )
    spec = spec_of(job)
    build = jobs.get(spec.build_job) if isinstance(spec, UploadSpec) else job
    build_spec = spec_of(build) if build is not None else None
    if build is None or not isinstance(build_spec, BuildSpec):
        raise not_found("build or upload job", job_id)  # the build has expired
    upload = job if job["kind"] == "upload" else _upload_of(jobs, build_spec)
    uploaded_to = _uploaded_to(upload)
    if upload is not None and upload["status"] != "succeeded":
        raise ApiProblem(
            409, "upload-not-finished", f"the build's upload job {upload['id']} is {upload['status']}"
        )
    provider_name = data.provider or uploaded_to
    if provider_name is None:
        raise ApiProblem(422, "invalid-request", "name the provider: the build has not been uploaded")
    if uploaded_to is not None and provider_name != uploaded_to:
        raise ApiProblem(422, "invalid-request", f"the build was uploaded to {uploaded_to!r}")
    provider = provider_store(services).get(tenant, provider_name)
    if provider is None:
        raise ApiProblem(422, "invalid-request", f"no provider {provider_name!r}; create it at /v1/providers")
    callback, secret = callback_of(data.callback_url, services)
    options = msgspec.convert(
        {k: v for k, v in msgspec.to_builtins(data).items() if k not in ("provider", "callback_url")},
        FineTuneOptions,
    )
    dataset = state.get_dataset(tenant, build_spec.dataset_id) or {}
    upload_id, fine_tune_id = plan_followups(
        jobs,
        tenant,
        str(build["id"]),
        provider,
        options,
        build_spec.recipe.model,
        str(dataset.get("kind", "chat")),
        callback,
        upload_job=str(upload["id"]) if upload else None,
    )
    assert fine_tune_id is not None
    if upload is None:  # the chain goes on from the upload, which the new fine-tune waits for
        send_first(services.settings, jobs, "upload", upload_id)
    else:
        send_first(services.settings, jobs, "fine_tune", fine_tune_id)
    return Response(
        JobStarted(job_id=fine_tune_id, upload_job_id=None if upload else upload_id, callback_secret=secret),
        status_code=202,
        headers={"Location": f"/v1/jobs/{fine_tune_id}"},
    )


def _upload_of(jobs: Jobs, build: BuildSpec) -> dict[str, Any] | None:
    return jobs.get(build.upload_job) if build.upload_job else None


def _uploaded_to(upload: dict[str, Any] | None) -> str | None:
    """The provider profile an upload job sends to."""
    spec = spec_of(upload) if upload else None
    return spec.provider if isinstance(spec, UploadSpec) else None
