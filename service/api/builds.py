"""Builds: POST /v1/datasets/{id}/builds checks the recipe, records a queued job, then enqueues it.

The job is committed to Redis before the task is sent, so a worker never receives a job id it
cannot find. The API names the task (`service.jobs.chain.send_first`); it never imports the workers. A model
profile a token-level output names (`outputs.packed.profile`, `outputs.tokenized.profile`) must
exist when the build is submitted (else 422 `unknown_profile`); its content hash then is kept in
the job's spec.
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
from service.api.idempotency import IdempotencyKey, fingerprint, idempotent
from service.api.profiles import profile_store, unknown_profile
from service.api.providers import guarded_url, provider_store, secret_box
from service.api.schemas import BuildRequest, BuildStarted, FineTuneOptions, ProblemItem
from service.core import pipeline
from service.core.models import ModelError, ModelTable, extend
from service.core.outputs import Outputs, default_outputs
from service.core.packing import DEFAULT_TEMPLATE
from service.core.targets import registry
from service.core.templates import TemplateError, get_template
from service.jobs import BuildSpec, Callback, ErrorCode, Jobs, new_job_id
from service.jobs.chain import plan_followers, send_first
from service.webhooks.signing import new_secret

log = logging.getLogger("tuneset.api")
DEFAULT_TOKEN_TEMPLATE = (
    "harmony"  # the template of a token-level output that names neither template nor profile
)


def recipe_of(data: BuildRequest, services: Services, table: ModelTable | None = None) -> pipeline.Recipe:
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
        (table or services.table).resolve(recipe.model)
    except ModelError as e:
        raise ApiProblem(
            422, "invalid-recipe", str(e), errors=[ProblemItem(None, None, "unknown_model", str(e))]
        ) from None
    return recipe


def outputs_of(data: BuildRequest, tenant: str, services: Services) -> tuple[Outputs, dict[str, str]]:
    """The selected outputs and the content hash of each model profile they name, or a 422 problem
    when they select nothing or name an unknown template or profile (checked now, not by a worker)."""
    outputs = data.outputs or default_outputs()
    if outputs.empty:
        raise ApiProblem(
            422,
            "invalid-recipe",
            "outputs selects nothing; name at least one of openai_jsonl, targets, packed, tokenized, report",
            errors=[ProblemItem(None, None, "invalid_outputs", "outputs selects nothing")],
        )
    profiles: dict[str, str] = {}
    for spec in (outputs.packed, outputs.tokenized):
        if spec is None:
            continue
        if spec.profile is None:  # then the spec names a template (harmony by default)
            try:
                get_template(spec.template or DEFAULT_TEMPLATE)
            except TemplateError as e:
                raise ApiProblem(
                    422,
                    "invalid-recipe",
                    str(e),
                    errors=[ProblemItem(None, None, "unknown_template", str(e))],
                ) from None
            continue
        record = profile_store(services).get(tenant, spec.profile)
        if record is None:
            raise unknown_profile(spec.profile, slug="invalid-recipe")
        profiles[spec.profile] = record.content_hash
    return outputs, profiles


@post(
    "/datasets/{dataset_id:str}/builds",
    operation_id="startBuild",
    status_code=202,
    tags=["builds"],
    sync_to_thread=True,
    responses=problems(401, 404, 409, 422, 503),
)
def start_build(
    dataset_id: FromPath[str],
    data: JSONBody[BuildRequest],
    tenant: NamedDependency[str],
    services: NamedDependency[Services],
    idempotency_key: IdempotencyKey = None,
) -> Response[BuildStarted]:
    """Start a build of the whole dataset: validate, repair and account it; store report.json and
    the provider JSONL as the job's artifacts. Follow it at /v1/jobs/{job_id}."""
    bound_to = fingerprint("startBuild", dataset_id, msgspec.json.encode(data))
    return idempotent(
        services, tenant, idempotency_key, bound_to, lambda: _start_build(dataset_id, data, tenant, services)
    )


def _start_build(
    dataset_id: str, data: BuildRequest, tenant: str, services: Services
) -> Response[BuildStarted]:
    state = services.state
    dataset = state.get_dataset(tenant, dataset_id)
    if dataset is None:
        raise not_found("dataset", dataset_id)
    outputs, profiles = outputs_of(data, tenant, services)
    _check_kinds(outputs, str(dataset.get("kind") or "chat"))
    provider = _upload_provider(data, outputs, tenant, services)
    models = provider["models"] if provider else None
    recipe = recipe_of(data, services, extend(services.table, models) if models else None)
    callback, callback_secret = callback_of(data.callback_url, services)
    spec = BuildSpec(
        dataset_id=dataset_id,
        recipe=recipe,
        outputs=outputs,
        profiles=profiles or None,  # each model profile's content hash when the build was submitted
        dedupe=data.dedupe,
        split=data.split,
        models=models,
        callback=callback,
    )
    if data.shard_size is not None:
        spec.shard_size = data.shard_size
    jobs = state.jobs
    job_id = new_job_id()
    started = BuildStarted(job_id=job_id, callback_secret=callback_secret)
    if provider is not None:
        started.upload_job_id, started.fine_tune_job_id = plan_followups(
            jobs, tenant, job_id, provider, data.fine_tune, recipe.model, str(dataset["kind"]), callback
        )
        spec.upload_job = started.upload_job_id
    jobs.create(tenant, spec, job_id=job_id)
    try:
        send_first(services.settings, jobs, "build", job_id)
    except Exception as e:
        log.error("could not enqueue build %s: %s", job_id, type(e).__name__)
        jobs.fail(job_id, ErrorCode.enqueue_failed, "the broker is unreachable")
        raise ApiProblem(
            503, "unavailable", "the job queue is unreachable; retry later", headers={"Retry-After": "5"}
        ) from None
    services.metrics.builds.inc()
    return Response(started, status_code=202, headers={"Location": f"/v1/jobs/{job_id}"})


def _check_kinds(outputs: Outputs, kind: str) -> None:
    """Every selected target must take the dataset's kind (422 `invalid_outputs` naming it)."""
    for name in outputs.target_names():
        target = registry.get(name)
        if kind not in target.kinds:
            message = f"target {name} takes {' and '.join(sorted(target.kinds))} datasets, not {kind}"
            raise ApiProblem(
                422,
                "invalid-recipe",
                message,
                errors=[ProblemItem(None, None, "invalid_outputs", message)],
            )


def _upload_provider(
    data: BuildRequest, outputs: Outputs, tenant: str, services: Services
) -> dict[str, Any] | None:
    if data.fine_tune is not None and data.upload is None:
        raise ApiProblem(422, "invalid-recipe", "fine_tune needs upload: name the provider to upload to")
    if data.upload is None:
        return None
    if not any(registry.get(name).uploads for name in outputs.target_names()):
        uploading = ", ".join(t.name for t in registry.TARGETS.values() if t.uploads)
        raise ApiProblem(
            422,
            "invalid-recipe",
            f"upload needs the openai_jsonl output or a target that uploads ({uploading}) in targets",
        )
    provider = provider_store(services).get(tenant, data.upload.provider)
    if provider is None:
        raise ApiProblem(
            422, "invalid-recipe", f"no provider {data.upload.provider!r}; create it at /v1/providers"
        )
    return provider


def callback_of(url: str | None, services: Services) -> tuple[Callback | None, str | None]:
    """The job's callback (its signing secret encrypted) and the secret, shown once to the caller."""
    if url is None:
        return None, None
    box = secret_box(services)
    guarded_url(url, services, "callback_url")
    secret = new_secret()
    return Callback(url=url, secret=box.encrypt(secret)), secret


def plan_followups(
    jobs: Jobs,
    tenant: str,
    build_job: str,
    provider: dict[str, Any],
    fine_tune: FineTuneOptions | None,
    model: str,
    dataset_kind: str,
    callback: Callback | None,
    upload_job: str | None = None,
) -> tuple[str, str | None]:
    """Create the upload job (unless `upload_job` exists) and the fine-tune job that wait for it
    (`service.jobs.chain`); the fine-tune trains `model`, with DPO on a preference dataset."""
    options: dict[str, Any] | None = None
    if fine_tune is not None:
        options = msgspec.to_builtins(fine_tune)
        options.setdefault("model", model)
        options.setdefault("method", "dpo" if dataset_kind == "preference" else "supervised")
    return plan_followers(
        jobs, tenant, build_job, provider["id"], provider["name"], options, callback, upload_job=upload_job
    )
