"""The UI's pages other than the example browser: datasets, jobs (a build's live progress,
cancel, report, files), provider fine-tunes and webhook deliveries.

Each handler calls the function the matching JSON API handler calls (`service.api.*`: the same
tenant scoping, the same 404s and 409s, the same retry rate limit), then renders the result; a
page never shows anything the API would not answer to the same key.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter
from litestar.response import Redirect, ServerSentEvent

from service.api import Services
from service.api.batches import batch_out
from service.api.datasets import dataset_out, page_ids
from service.api.errors import ApiProblem, not_found
from service.api.jobs import (
    artifact_response,
    artifacts_of,
    cancel,
    job_events,
    job_out,
    job_page,
    tenant_job,
)
from service.api.schemas import CURSOR_PATTERN, JobStatus
from service.api.webhooks import count_retry, delivery_out, replay_delivery, subscription_out, webhook_store
from service.jobs import TERMINAL
from service.store.blobs import BlobNotFound
from service.ui.examples import Recipe
from service.ui.render import html
from service.ui.session import same_origin

REPORT = "report.json"
UiCursor = Annotated[str | None, QueryParameter(pattern=CURSOR_PATTERN)]


def read_report(services: Services, job: dict[str, Any]) -> dict[str, Any] | None:
    """The job's report.json (what downloadArtifact serves), or None while it has none."""
    found = next((a for a in artifacts_of(services, job) if a["name"] == REPORT), None)
    key = found.get("key") if found else None
    if not isinstance(key, str) or not key.startswith(f"{job['tenant']}/"):
        return None
    try:
        report: dict[str, Any] = json.loads(services.blobs.get(key))
    except (BlobNotFound, ValueError):  # gone since it was listed, or not JSON: no report to show
        return None
    return report


def report_recipe_query(report: dict[str, Any]) -> str:
    """The example browser's query for the recipe a report was built with (its model or profile,
    policies, system prompt, train_on), so a problem line opens under the same fixes."""
    build = report.get("build") if isinstance(report.get("build"), dict) else None
    recipe = build.get("recipe") if build and isinstance(build.get("recipe"), dict) else {}
    profile = str(build.get("profile") or "") if build else ""
    model = recipe.get("model") or report["model"]
    target = f"profile:{profile.split('@')[0]}" if profile else f"model:{model}"
    policies = " ".join(f"{code}={action}" for code, action in sorted((recipe.get("policies") or {}).items()))
    query = {
        "target": target,
        "policies": policies,
        "system_prompt": recipe.get("system_prompt") or "",
        "train_on": "" if recipe.get("train_on") in (None, "all") else recipe["train_on"],
    }
    return urlencode({k: v for k, v in query.items() if v})


def model_choices(services: Services) -> list[dict[str, Any]]:
    """The models a build may name, each with the aliases that resolve to it (as /v1/models)."""
    aliases: dict[str, list[str]] = {}
    for alias, name in sorted(services.table.aliases.items()):
        aliases.setdefault(name, []).append(alias)
    return [{"name": n, "names": [n, *aliases.get(n, [])]} for n in services.table.names()]


def _spec(job: dict[str, Any]) -> dict[str, Any]:
    spec = job.get("spec")
    return spec if isinstance(spec, dict) else {}


def _dataset_name(services: Services, tenant: str, dataset_id: str | None) -> str | None:
    ds = services.state.get_dataset(tenant, dataset_id) if dataset_id else None
    return str(ds["name"]) if ds else None


@get("/", include_in_schema=False, sync_to_thread=False)
def home() -> Redirect:
    return Redirect("/ui/datasets", status_code=303)


@get("/datasets", include_in_schema=False, sync_to_thread=True)
def datasets_page(
    tenant: NamedDependency[str], services: NamedDependency[Services], cursor: UiCursor = None
) -> Response[str]:
    """The tenant's datasets, newest first, 50 a page."""
    ids, next_cursor = page_ids(services, tenant, "datasets", cursor, 50)
    items = [dataset_out(ds) for i in ids if (ds := services.state.get_dataset(tenant, i)) is not None]
    return html("datasets.html", tenant=tenant, datasets=items, next_cursor=next_cursor, nav="datasets")


@get("/datasets/{dataset_id:str}", include_in_schema=False, sync_to_thread=True)
def dataset_page(
    dataset_id: FromPath[str], tenant: NamedDependency[str], services: NamedDependency[Services]
) -> Response[str]:
    """A dataset: its batches (with the lines each holds), its builds, and the problems its newest
    finished build reported, by code and count (each links to the examples with that problem)."""
    ds = services.state.get_dataset(tenant, dataset_id)
    if ds is None:
        raise not_found("dataset", dataset_id)
    batches = []
    first = 1
    for raw in services.state.batches(dataset_id):
        b = batch_out(raw)
        batches.append({"batch": b, "first": first, "last": first + b.examples - 1})
        first += b.examples
    builds = job_page(services, tenant, None, dataset_id, None, 50, "desc").items
    report, report_job = None, None
    for build in builds:
        if build.kind == "build" and build.status in ("succeeded", "failed"):
            record = tenant_job(services, tenant, build.id)
            if (report := read_report(services, record)) is not None:
                report_job = build
                break
    return html(
        "dataset.html",
        tenant=tenant,
        nav="datasets",
        dataset=dataset_out(ds),
        batches=batches,
        builds=builds,
        report=report,
        report_job=report_job,
        recipe=Recipe(None, None, None),
        targets={"model": model_choices(services), "template": [], "profile": []},
    )


@get("/jobs", include_in_schema=False, sync_to_thread=True)
def jobs_page(
    tenant: NamedDependency[str],
    services: NamedDependency[Services],
    status: JobStatus | None = None,
    dataset_id: UiCursor = None,
    cursor: UiCursor = None,
) -> Response[str]:
    """Every job of the tenant (builds, uploads, fine-tunes), newest first; by status, by dataset."""
    page = job_page(services, tenant, status, dataset_id, cursor, 50, "desc")
    return html(
        "jobs.html",
        tenant=tenant,
        nav="jobs",
        jobs=page.items,
        next_cursor=page.next_cursor,
        status=status,
        dataset_id=dataset_id,
        statuses=["queued", "running", "succeeded", "failed", "cancelled"],
    )


@get("/fine-tunes", include_in_schema=False, sync_to_thread=True)
def fine_tunes_page(tenant: NamedDependency[str], services: NamedDependency[Services]) -> Response[str]:
    """The fine-tuning jobs among the tenant's newest 1,000 jobs, with the provider's model."""
    found, cursor = [], None
    for _ in range(5):
        page = job_page(services, tenant, None, None, cursor, 200, "desc")
        found += [j for j in page.items if j.kind == "fine_tune"]
        if (cursor := page.next_cursor) is None:
            break
    return html("fine_tunes.html", tenant=tenant, nav="fine-tunes", jobs=found)


@get("/jobs/{job_id:str}", include_in_schema=False, sync_to_thread=True)
def job_page_view(
    job_id: FromPath[str], tenant: NamedDependency[str], services: NamedDependency[Services]
) -> Response[str]:
    """One job: status and progress (live, from its event stream, while it runs), cancel, its
    files, the report summary of a build, the events and checkpoints of a fine-tune."""
    record = tenant_job(services, tenant, job_id)
    job = job_out(record)
    spec = _spec(record)
    dataset_id = spec.get("dataset_id")
    result = job.result if isinstance(job.result, dict) else {}
    return html(
        "job.html",
        tenant=tenant,
        nav="fine-tunes" if job.kind == "fine_tune" else "jobs",
        job=job,
        spec=spec,
        live=job.status not in TERMINAL,
        dataset_id=dataset_id,
        dataset_name=_dataset_name(services, tenant, dataset_id),
        artifacts=artifacts_of(services, record),
        report=read_report(services, record) if job.kind == "build" else None,
        result=result,
        events=result.get("events") or [],
        checkpoints=result.get("checkpoints") or [],
        result_json=json.dumps(job.result, indent=2, sort_keys=True) if job.result is not None else "",
    )


@get("/jobs/{job_id:str}/report", include_in_schema=False, sync_to_thread=True)
def report_page(
    job_id: FromPath[str], tenant: NamedDependency[str], services: NamedDependency[Services]
) -> Response[str]:
    """A build's report: totals, cost, fixes, and every problem with links from each line it
    names to that example in the browser; the plots are the report.html artifact."""
    record = tenant_job(services, tenant, job_id)
    report = read_report(services, record)
    if report is None:
        raise ApiProblem(404, "not-found", f"job {job_id} has no report (yet)")
    names = {a["name"] for a in artifacts_of(services, record)}
    dataset_id = _spec(record).get("dataset_id")
    return html(
        "report.html",
        tenant=tenant,
        nav="jobs",
        job=job_out(record),
        report=report,
        dataset_id=dataset_id,
        dataset_name=_dataset_name(services, tenant, dataset_id),
        has_html="report.html" in names,
        line_query=report_recipe_query(report),
    )


@get("/jobs/{job_id:str}/artifacts/{name:path}", include_in_schema=False, sync_to_thread=True)
def artifact(
    job_id: FromPath[str],
    name: FromPath[str],
    tenant: NamedDependency[str],
    services: NamedDependency[Services],
) -> Response[Any]:
    """A job's file, shown in the browser. It is the build's own output (report.html holds the
    data's text), so it is sandboxed: its scripts run in an origin of their own, without the
    session cookie and unable to reach the UI."""
    response = artifact_response(services, tenant, job_id, name.lstrip("/"), inline=True)
    response.headers["Content-Security-Policy"] = "sandbox allow-scripts"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@get("/jobs/{job_id:str}/events", include_in_schema=False)
async def events(
    job_id: FromPath[str],
    request: Request[Any, Any, Any],
    tenant: NamedDependency[str],
    services: NamedDependency[Services],
) -> ServerSentEvent:
    """The job's event stream, as GET /v1/jobs/{id}/events serves it, for the page's EventSource
    (which cannot send an Authorization header but sends the /ui cookie)."""
    return await job_events(services, tenant, job_id, request.headers.get("last-event-id"))


@post("/jobs/{job_id:str}/cancel", include_in_schema=False, guards=[same_origin], sync_to_thread=True)
def cancel_job(
    job_id: FromPath[str], tenant: NamedDependency[str], services: NamedDependency[Services]
) -> Redirect:
    """The cancel button: cancelJob, then back to the job's page."""
    cancel(services, tenant, job_id)
    return Redirect(f"/ui/jobs/{job_id}", status_code=303)


DeliveryFilter = Literal["pending", "delivered", "failed"]


@get("/webhooks", include_in_schema=False, sync_to_thread=True)
def webhooks_page(
    tenant: NamedDependency[str],
    services: NamedDependency[Services],
    status: DeliveryFilter | None = None,
    cursor: UiCursor = None,
    retried: str | None = None,
) -> Response[str]:
    """Subscriptions and every webhook delivery with its attempts (oldest first, as the API lists
    them), each pending or failed one with a retry button."""
    store = webhook_store(services)
    items, next_cursor = store.delivery_page(tenant, cursor, 50, status, None)
    deliveries = [delivery_out(d) for d in items]
    return html(
        "webhooks.html",
        tenant=tenant,
        nav="webhooks",
        subscriptions=[subscription_out(s) for s in store.all_subscriptions(tenant)],
        deliveries=deliveries,
        next_cursor=next_cursor,
        status=status,
        retried=retried,
    )


@post(
    "/webhooks/deliveries/{delivery_id:str}/retry",
    include_in_schema=False,
    guards=[same_origin],
    sync_to_thread=True,
)
def retry(
    delivery_id: FromPath[str], tenant: NamedDependency[str], services: NamedDependency[Services]
) -> Redirect:
    """The retry button: retryDelivery (same rate limit), then back to the deliveries."""
    count_retry(services, tenant)
    replay_delivery(services, tenant, delivery_id)
    return Redirect(f"/ui/webhooks?retried={delivery_id}#{delivery_id}", status_code=303)
