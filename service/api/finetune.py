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
from service.queue import FINE_TUNE_TASK, UPLOAD_TASK, enqueue
from service.store.state import State


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
    state = services.state
    job = state.tenant_job(tenant, job_id)
    if job is None or job["kind"] not in ("build", "upload"):
        raise not_found("build or upload job", job_id)
    if job["status"] != "succeeded":
        raise ApiProblem(
            409, "job-not-succeeded", f"the {job['kind']} job is {job['status']}; it must succeed first"
        )
    build = job if job["kind"] == "build" else state.job(job["spec"]["build_job"]) or {}
    upload = job if job["kind"] == "upload" else _upload_of(state, build)
    if upload is not None and upload["status"] != "succeeded":
        raise ApiProblem(
            409, "upload-not-finished", f"the build's upload job {upload['id']} is {upload['status']}"
        )
    provider_name = data.provider or (upload["spec"]["provider"] if upload else None)
    if provider_name is None:
        raise ApiProblem(422, "invalid-request", "name the provider: the build has not been uploaded")
    if upload is not None and provider_name != upload["spec"]["provider"]:
        raise ApiProblem(422, "invalid-request", f"the build was uploaded to {upload['spec']['provider']!r}")
    provider = provider_store(services).get(tenant, provider_name)
    if provider is None:
        raise ApiProblem(422, "invalid-request", f"no provider {provider_name!r}; create it at /v1/providers")
    callback, secret = callback_of(data.callback_url, services)
    options = msgspec.convert(
        {k: v for k, v in msgspec.to_builtins(data).items() if k not in ("provider", "callback_url")},
        FineTuneOptions,
    )
    dataset = state.get_dataset(tenant, build.get("spec", {}).get("dataset_id", "")) or {}
    upload_id, fine_tune_id = plan_followups(
        state,
        tenant,
        str(build["id"]),
        provider,
        options,
        str(build["spec"]["recipe"].get("model")),
        str(dataset.get("kind", "chat")),
        callback,
        upload_job=str(upload["id"]) if upload else None,
    )
    assert fine_tune_id is not None
    if upload is None:
        enqueue(services.settings, UPLOAD_TASK, [upload_id], queue=services.settings.io_queue)
    else:
        enqueue(services.settings, FINE_TUNE_TASK, [fine_tune_id], queue=services.settings.io_queue)
    return Response(
        JobStarted(job_id=fine_tune_id, upload_job_id=None if upload else upload_id, callback_secret=secret),
        status_code=202,
        headers={"Location": f"/v1/jobs/{fine_tune_id}"},
    )


def _upload_of(state: State, build: dict[str, Any]) -> dict[str, Any] | None:
    upload_id = (build.get("spec") or {}).get("upload_job")
    return state.job(upload_id) if upload_id else None
