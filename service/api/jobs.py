"""Jobs: get, list (newest first; by status, by dataset; cursor pagination), cancel, Server-Sent
Events, artifacts."""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, cast

from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    OpenAPIFormat,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Schema,
)
from litestar.params import FromPath, HeaderParameter, QueryParameter
from litestar.response import ServerSentEvent, Stream

from service.api import Services
from service.api.datasets import Cursor, Limit, OrderQuery, page_ids
from service.api.errors import ApiProblem, not_found, problems
from service.api.schemas import (
    CURSOR_PATTERN,
    Artifact,
    ArtifactList,
    Job,
    JobError,
    JobPage,
    JobStatus,
    Order,
    Progress,
)
from service.api.streams import event_stream
from service.jobs import TERMINAL
from service.store.blobs import BlobNotFound
from service.times import rfc3339, rfc3339_or_none

_EVENT_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._-]")
SCAN_LIMIT = 2000  # ids examined at most per filtered page; the cursor continues from there
MEDIA_TYPES = {
    ".json": "application/json",
    ".jsonl": "application/jsonl",
    ".html": "text/html",  # Litestar adds `; charset=utf-8` to text/ types
    ".parquet": "application/vnd.apache.parquet",
}


@dataclass
class ArtifactDownload(Operation):
    """OpenAPI: an artifact is served with the media type its name gives (MEDIA_TYPES)."""

    def __post_init__(self) -> None:
        ok = (self.responses or {}).get("200")
        if isinstance(ok, OpenAPIResponse):
            binary = Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)
            types = sorted({*MEDIA_TYPES.values(), "application/octet-stream"})
            ok.content = {  # a .json artifact is any JSON document (a report, a manifest)
                media: OpenAPIMediaType(schema=Schema() if media == "application/json" else binary)
                for media in types
            }


def job_out(job: dict[str, Any]) -> Job:
    error = job.get("error")
    if isinstance(error, dict):
        job_error: JobError | None = JobError(
            str(error.get("code") or "error"), str(error.get("message") or "")
        )
    elif error:
        job_error = JobError("error", str(error))
    else:
        job_error = None
    return Job(
        id=str(job["id"]),
        kind=str(job["kind"]),
        status=cast(JobStatus, job["status"]),
        stage=str(job.get("stage") or ""),
        progress=Progress(done=int(job["done"]), total=int(job["total"])),
        created_at=rfc3339(job["created_at"]),
        started_at=rfc3339_or_none(job.get("started_at")),
        finished_at=rfc3339_or_none(job.get("finished_at")),
        result=job.get("result"),
        error=job_error,
        cancel_requested=bool(job.get("cancel_requested")),
    )


def artifacts_of(services: Services, job: dict[str, Any]) -> list[dict[str, Any]]:
    """The job's files; none once the dataset they were built from is deleted (even a build that
    finished after the delete, whose files the delete could not yet see)."""
    spec = job.get("spec")
    dataset_id = spec.get("dataset_id") if isinstance(spec, dict) else None
    if dataset_id and not services.state.dataset_exists(str(dataset_id)):
        return []
    result = job.get("result")
    items = result.get("artifacts") if isinstance(result, dict) else None
    return [a for a in items or [] if isinstance(a, dict) and isinstance(a.get("name"), str)]


def tenant_job(services: Services, tenant: str, job_id: str) -> dict[str, Any]:
    """The tenant's job record, or a 404 problem."""
    job = services.state.jobs.tenant_job(tenant, job_id)
    if job is None:
        raise not_found("job", job_id)
    return job


def cancel(services: Services, tenant: str, job_id: str) -> Job:
    """cancelJob (and the web UI's cancel button): 409 once the job ended otherwise."""
    job = tenant_job(services, tenant, job_id)
    if job["status"] in TERMINAL and job["status"] != "cancelled":
        raise ApiProblem(409, "job-finished", f"the job already {job['status']}")
    services.state.jobs.request_cancel(job_id)
    return job_out(tenant_job(services, tenant, job_id))


async def job_events(
    services: Services, tenant: str, job_id: str, last_event_id: str | None
) -> ServerSentEvent:
    """streamJobEvents (and the web UI's EventSource, at /ui/jobs/{id}/events with the cookie)."""
    # async on purpose: an open stream holds no worker thread (see service.store.events)
    if await services.feed.job_tenant(job_id) != tenant:
        raise not_found("job", job_id)
    if last_event_id is not None and not (
        _EVENT_ID.match(last_event_id) and all(int(n) < 2**64 for n in last_event_id.split("-"))
    ):  # a stream id is two 64-bit numbers; Redis refuses larger ones
        raise ApiProblem(400, "invalid-event-id", "Last-Event-ID is not an event id of this stream")
    release = services.streams.acquire(tenant)
    events = services.feed.follow(job_id, last_event_id or "0", services.settings.sse_keepalive_s)
    return event_stream(events, release)


def artifact_response(
    services: Services, tenant: str, job_id: str, name: str, *, inline: bool = False
) -> Response[Any]:
    """downloadArtifact; `inline` (the web UI's report and files) asks the browser to show it."""
    job = tenant_job(services, tenant, job_id)
    found = next((a for a in artifacts_of(services, job) if a["name"] == name), None)
    key = found.get("key") if found else None
    if not isinstance(key, str) or not key.startswith(f"{tenant}/"):
        raise not_found("artifact", name)
    blobs = services.blobs
    try:
        size = blobs.size(key)
    except (BlobNotFound, ValueError):
        raise not_found("artifact", name) from None
    suffix = name[name.rfind(".") :] if "." in name else ""
    filename = _UNSAFE_FILENAME.sub("_", name.rsplit("/", 1)[-1])
    disposition = "inline" if inline else "attachment"
    return Stream(
        blobs.open_chunks(key),
        media_type=MEDIA_TYPES.get(suffix, "application/octet-stream"),
        headers={
            "Content-Length": str(size),
            "Content-Disposition": f'{disposition}; filename="{filename}"',
            **({"ETag": f'"{found["sha256"]}"'} if found and found.get("sha256") else {}),
        },
    )


def _after_in(ids: list[str], order: Order) -> Callable[[str | None, int], list[str]]:
    """Pages of `ids` (sorted, oldest first) in `order`, after a cursor."""

    def source(after: str | None, n: int) -> list[str]:
        if order == "asc":
            start = bisect.bisect_right(ids, after) if after else 0
            return ids[start : start + n]
        end = bisect.bisect_left(ids, after) if after else len(ids)
        return ids[max(0, end - n) : end][::-1]

    return source


def job_page(
    services: Services,
    tenant: str,
    status: JobStatus | None,
    dataset_id: str | None,
    cursor: str | None,
    limit: int,
    order: Order,
) -> JobPage:
    """One page of the tenant's jobs (listJobs; the web UI's jobs page too)."""
    state = services.state
    if dataset_id is None and status is None:
        ids, next_cursor = page_ids(services, tenant, "jobs", cursor, limit, order)
        page = [job_out(j) for j in state.jobs.tenant_jobs(tenant, ids)]
        return JobPage(items=page, next_cursor=next_cursor)
    source: Callable[[str | None, int], list[str]]
    if dataset_id is None:

        def source(after: str | None, n: int) -> list[str]:
            return state.list_ids(tenant, "jobs", after, n, newest_first=order == "desc")

    else:
        if state.get_dataset(tenant, dataset_id) is None:
            raise not_found("dataset", dataset_id)
        source = _after_in(state.dataset_job_ids(dataset_id), order)
    items: list[Job] = []
    after = cursor
    scanned = 0
    while scanned < SCAN_LIMIT:
        ids = source(after, limit)
        for job in state.jobs.tenant_jobs(tenant, ids):
            if status is None or job["status"] == status:
                items.append(job_out(job))
                if len(items) == limit:
                    return JobPage(items=items, next_cursor=str(job["id"]))
        after, scanned = (ids[-1] if ids else after), scanned + len(ids)
        if len(ids) < limit:
            return JobPage(items=items, next_cursor=None)
    return JobPage(items=items, next_cursor=after)


class JobController(Controller):
    path = "/jobs"
    tags = ("jobs",)

    def _job(self, services: Services, tenant: str, job_id: str) -> dict[str, Any]:
        return tenant_job(services, tenant, job_id)

    @get("/{job_id:str}", operation_id="getJob", sync_to_thread=True, responses=problems(401, 404))
    def get_job(
        self, job_id: FromPath[str], tenant: NamedDependency[str], services: NamedDependency[Services]
    ) -> Job:
        """A job's status, stage, progress, times, result and error."""
        return job_out(self._job(services, tenant, job_id))

    @get(operation_id="listJobs", sync_to_thread=True, responses=problems(401, 404))
    def list_jobs(
        self,
        tenant: NamedDependency[str],
        services: NamedDependency[Services],
        status: Annotated[JobStatus | None, QueryParameter(description="only jobs in this status")] = None,
        dataset_id: Annotated[
            str | None,
            QueryParameter(pattern=CURSOR_PATTERN, description="only the jobs built from this dataset"),
        ] = None,
        cursor: Cursor = None,
        limit: Limit = 50,
        order: OrderQuery = "desc",
    ) -> JobPage:
        """The tenant's jobs, newest first (`order=asc`: oldest first). A page may hold fewer than
        `limit` jobs and still have a next_cursor (with a filter, or when finished jobs expired:
        see job retention). `dataset_id` names a dataset that still exists (else 404)."""
        return job_page(services, tenant, status, dataset_id, cursor, limit, order)

    @post(
        "/{job_id:str}/cancel",
        operation_id="cancelJob",
        status_code=202,
        sync_to_thread=True,
        responses=problems(401, 404, 409),
    )
    def cancel_job(
        self, job_id: FromPath[str], tenant: NamedDependency[str], services: NamedDependency[Services]
    ) -> Job:
        """Ask a job to stop: a queued job is cancelled at once, a running one at its next check."""
        return cancel(services, tenant, job_id)

    @get(
        "/{job_id:str}/events",
        operation_id="streamJobEvents",
        media_type="text/event-stream",
        responses=problems(401, 404, 429, 503),
    )
    async def stream_job_events(
        self,
        job_id: FromPath[str],
        tenant: NamedDependency[str],
        services: NamedDependency[Services],
        last_event_id: Annotated[
            str | None,
            HeaderParameter(name="Last-Event-ID", description="resume after this event id"),
        ] = None,
    ) -> ServerSentEvent:
        """The job's events as Server-Sent Events (`id:` stream id, `event:` type, `data:` JSON);
        the stream ends once the job is in a terminal state, or early when the state store fails
        (reconnect with `Last-Event-ID`). While idle it sends a `: keep-alive` comment every
        TUNESET_SSE_KEEPALIVE_S seconds. 429 (with Retry-After) when the tenant has
        TUNESET_SSE_MAX_STREAMS_PER_TENANT streams open, 503 when the server has
        TUNESET_SSE_MAX_STREAMS."""
        return await job_events(services, tenant, job_id, last_event_id)

    @get(
        "/{job_id:str}/artifacts",
        operation_id="listArtifacts",
        sync_to_thread=True,
        responses=problems(401, 404),
    )
    def list_artifacts(
        self, job_id: FromPath[str], tenant: NamedDependency[str], services: NamedDependency[Services]
    ) -> ArtifactList:
        """The files a finished job produced (empty until it has any)."""
        job = self._job(services, tenant, job_id)
        return ArtifactList(
            items=[
                Artifact(name=a["name"], size=int(a.get("size") or 0), sha256=a.get("sha256"))
                for a in artifacts_of(services, job)
            ]
        )

    @get(
        "/{job_id:str}/artifacts/{name:path}",
        operation_id="downloadArtifact",
        sync_to_thread=True,
        operation_class=ArtifactDownload,
        responses={
            200: ResponseSpec(
                data_container=bytes,
                media_type="application/octet-stream",
                description="the artifact's bytes (application/json for .json, application/jsonl for .jsonl)",
                generate_examples=False,
            ),
            **problems(401, 404),
        },
    )
    def download_artifact(
        self,
        job_id: FromPath[str],
        name: FromPath[str],
        tenant: NamedDependency[str],
        services: NamedDependency[Services],
    ) -> Response[Any]:
        """One artifact, streamed. Names may hold folders (`packed/manifest.json`): the name is a path."""
        return artifact_response(services, tenant, job_id, name.lstrip("/"))  # a path keeps its slash
