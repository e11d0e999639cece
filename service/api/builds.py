"""Builds: POST /v1/datasets/{id}/builds checks the recipe, records a queued job, then enqueues it.

The job is committed to Redis before the task is sent, so a worker never receives a job id it
cannot find. The API names the task (`tuneset.build`); it never imports the workers.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Response, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from service.api import Services
from service.api.errors import ApiProblem, not_found, problems
from service.api.schemas import BuildRequest, BuildStarted, ProblemItem
from service.core import pipeline
from service.core.models import ModelError
from service.core.outputs import Outputs, default_outputs
from service.core.templates import TemplateError, get_template
from service.queue import BUILD_TASK, enqueue

log = logging.getLogger("tuneset.api")


def recipe_of(data: BuildRequest, services: Services) -> pipeline.Recipe:
    """The core recipe, or a 422 problem naming the bad policy or model."""
    try:
        recipe = pipeline.Recipe(
            model=data.model or pipeline.DEFAULT_MODEL,
            policies=pipeline.parse_policies(f"{code}={act}" for code, act in (data.policies or {}).items()),
            system_prompt=data.system_prompt,
            train_on=data.train_on or "all",
        )
        pipeline.check_recipe(recipe)
    except pipeline.PolicyError as e:
        raise ApiProblem(
            422, "invalid-recipe", str(e), errors=[ProblemItem(None, None, "invalid_policy", str(e))]
        ) from None
    try:
        services.table.resolve(recipe.model)
    except ModelError as e:
        raise ApiProblem(
            422, "invalid-recipe", str(e), errors=[ProblemItem(None, None, "unknown_model", str(e))]
        ) from None
    return recipe


def outputs_of(data: BuildRequest) -> Outputs:
    """The selected outputs, or a 422 problem when they select nothing or name an unknown template."""
    outputs = data.outputs or default_outputs()
    if outputs.empty:
        raise ApiProblem(
            422,
            "invalid-recipe",
            "outputs selects nothing; name at least one of openai_jsonl, packed, report",
            errors=[ProblemItem(None, None, "invalid_outputs", "outputs selects nothing")],
        )
    if outputs.packed is not None:
        try:
            get_template(outputs.packed.template)
        except TemplateError as e:
            raise ApiProblem(
                422, "invalid-recipe", str(e), errors=[ProblemItem(None, None, "unknown_template", str(e))]
            ) from None
    return outputs


@post(
    "/datasets/{dataset_id:str}/builds",
    operation_id="startBuild",
    status_code=202,
    tags=["builds"],
    sync_to_thread=True,
    responses=problems(401, 404, 422, 503),
)
def start_build(
    dataset_id: FromPath[str],
    data: JSONBody[BuildRequest],
    tenant: NamedDependency[str],
    services: NamedDependency[Services],
) -> Response[BuildStarted]:
    """Start a build of the whole dataset: validate, repair and account it; store report.json and
    the provider JSONL as the job's artifacts. Follow it at /v1/jobs/{job_id}."""
    state = services.state
    if state.get_dataset(tenant, dataset_id) is None:
        raise not_found("dataset", dataset_id)
    recipe = recipe_of(data, services)
    spec: dict[str, Any] = {"dataset_id": dataset_id, "recipe": msgspec.to_builtins(recipe)}
    spec["outputs"] = msgspec.to_builtins(outputs_of(data))
    for option in ("dedupe", "split", "shard_size"):
        value = getattr(data, option)
        if value is not None:
            spec[option] = msgspec.to_builtins(value)
    job = state.create_job(tenant, "build", spec)
    job_id = str(job["id"])
    try:
        enqueue(services.settings, BUILD_TASK, [job_id])
    except Exception as e:
        log.error("could not enqueue build %s: %s", job_id, type(e).__name__)
        state.transition(
            job_id,
            {"queued"},
            "failed",
            error={"code": "enqueue_failed", "message": "the broker is unreachable"},
        )
        raise ApiProblem(
            503, "unavailable", "the job queue is unreachable; retry later", headers={"Retry-After": "5"}
        ) from None
    services.metrics.builds.inc()
    return Response(BuildStarted(job_id=job_id), status_code=202, headers={"Location": f"/v1/jobs/{job_id}"})
