"""A typed client of the tuneset API, sync (`Client`) and async (`AsyncClient`), on httpx.

Answers decode into the API's own wire types (`service.api.schemas`), so a field the API adds or
renames is a type error here too. Errors are `ApiError`, carrying the RFC 9457 problem. Both
clients build their requests with the same `Call`s; only the I/O differs.

    from tuneset.client import Client

    with Client() as ts:  # TUNESET_URL, TUNESET_API_KEY or ~/.config/tuneset/config.toml
        ds = ts.create_dataset("support")
        ts.push_batch(ds.id, open("chats.jsonl", "rb").read(), idempotency_key="chats-1")
        job = ts.wait(ts.start_build(ds.id, BuildRequest(model="gpt-4o-mini")).job_id)
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar

import httpx
import msgspec
from httpx_sse import ServerSentEvent, aconnect_sse, connect_sse

from service.api.schemas import (
    ApiKey,
    ApiKeyList,
    Artifact,
    ArtifactList,
    BatchCreated,
    BatchPage,
    BuildRequest,
    BuildStarted,
    Dataset,
    DatasetCreate,
    DatasetKind,
    DatasetPage,
    Job,
    JobPage,
    JobStatus,
    KeyCreate,
    Order,
    ProblemDetails,
)
from tuneset.config import Config

__all__ = [
    "ApiError",
    "AsyncClient",
    "Client",
    "JobEvent",
    "Pushed",
]

T = TypeVar("T")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
IN_FLIGHT_WAIT_S = 120.0  # how long a push waits for an earlier request with its key to finish
_encoder = msgspec.json.Encoder()


class ApiError(Exception):
    """An error answer: its status and, when the API sent one, its problem."""

    def __init__(self, status: int, problem: ProblemDetails | None, text: str = "") -> None:
        self.status = status
        self.problem = problem
        message = f"{problem.title}: {problem.detail}" if problem else (text[:500] or f"HTTP {status}")
        super().__init__(f"{status} {message}")

    @property
    def code(self) -> str | None:
        """The problem's slug (`urn:tuneset:problem:not-found` -> `not-found`)."""
        return self.problem.type.rsplit(":", 1)[-1] if self.problem else None

    @classmethod
    def of(cls, response: httpx.Response) -> ApiError:
        try:
            problem: ProblemDetails | None = msgspec.json.decode(response.content, type=ProblemDetails)
        except (msgspec.DecodeError, msgspec.ValidationError):
            problem = None
        return cls(response.status_code, problem, response.text)


class ArtifactMismatch(Exception):
    """A downloaded artifact's SHA-256 is not the one the job lists (nothing was written)."""


class JobEvent(msgspec.Struct, frozen=True):
    """One Server-Sent Event of a job: `status` ({"status"}) or `progress` ({"stage", "done", "total"})."""

    id: str
    type: str
    data: dict[str, Any]

    @property
    def terminal(self) -> bool:
        return self.type == "status" and self.data.get("status") in TERMINAL


class Pushed(msgspec.Struct, frozen=True):
    """A pushed batch, and whether the service replayed an earlier push with the same key."""

    batch: BatchCreated
    replayed: bool


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and the type its answer decodes to (None: no body)."""

    method: str
    path: str
    type: type[T] | None
    params: dict[str, str | int] = field(default_factory=dict)
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def decode(self, response: httpx.Response) -> T:
        if response.is_error:
            raise ApiError.of(response)
        if self.type is None:
            return None  # type: ignore[return-value]
        return msgspec.json.decode(response.content, type=self.type)


def _json(value: Any) -> tuple[bytes, dict[str, str]]:
    return _encoder.encode(value), {"Content-Type": "application/json"}


def _params(**values: str | int | None) -> dict[str, str | int]:
    return {k: v for k, v in values.items() if v is not None}


class Calls:
    """Every request the clients send, as data."""

    @staticmethod
    def create_dataset(name: str, kind: DatasetKind, description: str | None) -> Call[Dataset]:
        body, headers = _json(DatasetCreate(name=name, kind=kind, description=description))
        return Call("POST", "/v1/datasets", Dataset, body=body, headers=headers)

    @staticmethod
    def list_datasets(order: Order, limit: int, cursor: str | None) -> Call[DatasetPage]:
        return Call("GET", "/v1/datasets", DatasetPage, _params(order=order, limit=limit, cursor=cursor))

    @staticmethod
    def get_dataset(dataset_id: str) -> Call[Dataset]:
        return Call("GET", f"/v1/datasets/{dataset_id}", Dataset)

    @staticmethod
    def delete_dataset(dataset_id: str) -> Call[None]:
        return Call("DELETE", f"/v1/datasets/{dataset_id}", None)

    @staticmethod
    def push_batch(
        dataset_id: str, jsonl: bytes, idempotency_key: str | None, fmt: str | None, on_invalid: str
    ) -> Call[BatchCreated]:
        headers = {"Content-Type": "application/jsonl"}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        params = _params(format=fmt, on_invalid=None if on_invalid == "reject" else on_invalid)
        return Call("POST", f"/v1/datasets/{dataset_id}/batches", BatchCreated, params, jsonl, headers)

    @staticmethod
    def list_batches(dataset_id: str) -> Call[BatchPage]:
        return Call("GET", f"/v1/datasets/{dataset_id}/batches", BatchPage)

    @staticmethod
    def delete_batch(dataset_id: str, batch_id: str) -> Call[None]:
        return Call("DELETE", f"/v1/datasets/{dataset_id}/batches/{batch_id}", None)

    @staticmethod
    def start_build(dataset_id: str, recipe: BuildRequest, idempotency_key: str | None) -> Call[BuildStarted]:
        body, headers = _json(recipe)
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        return Call("POST", f"/v1/datasets/{dataset_id}/builds", BuildStarted, body=body, headers=headers)

    @staticmethod
    def get_job(job_id: str) -> Call[Job]:
        return Call("GET", f"/v1/jobs/{job_id}", Job)

    @staticmethod
    def list_jobs(
        status: JobStatus | None, dataset_id: str | None, order: Order, limit: int, cursor: str | None
    ) -> Call[JobPage]:
        params = _params(status=status, dataset_id=dataset_id, order=order, limit=limit, cursor=cursor)
        return Call("GET", "/v1/jobs", JobPage, params)

    @staticmethod
    def cancel_job(job_id: str) -> Call[Job]:
        return Call("POST", f"/v1/jobs/{job_id}/cancel", Job)

    @staticmethod
    def artifacts(job_id: str) -> Call[ArtifactList]:
        return Call("GET", f"/v1/jobs/{job_id}/artifacts", ArtifactList)

    @staticmethod
    def list_keys(tenant: str | None) -> Call[ApiKeyList]:
        return Call("GET", "/v1/keys", ApiKeyList, _params(tenant=tenant))

    @staticmethod
    def create_key(tenant: str, admin: bool) -> Call[ApiKey]:
        body, headers = _json(KeyCreate(tenant=tenant, admin=admin))
        return Call("POST", "/v1/keys", ApiKey, body=body, headers=headers)

    @staticmethod
    def revoke_key(key_id: str) -> Call[None]:
        return Call("DELETE", f"/v1/keys/{key_id}", None)


def _headers(config: Config) -> dict[str, str]:
    return {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}


def _event(sse: ServerSentEvent) -> JobEvent:
    data = msgspec.json.decode(sse.data) if sse.data else {}
    return JobEvent(id=sse.id, type=sse.event, data=data if isinstance(data, dict) else {"value": data})


def _in_flight(error: ApiError) -> bool:
    return error.status == 409 and error.code == "request-in-flight"


def artifact_path(directory: Path, name: str) -> Path:
    """Where artifact `name` (which may hold folders) goes under `directory`; refuses a name
    that would leave it."""
    parts = PurePosixPath(name).parts
    if not parts or PurePosixPath(name).is_absolute() or any(p in ("..", ".") for p in parts):
        raise ValueError(f"refusing the artifact name {name!r}")
    return directory.joinpath(*parts)


class _Download:
    """An artifact written to a temporary file beside its place, moved there once its SHA-256 matches."""

    def __init__(self, directory: Path, artifact: Artifact) -> None:
        self.artifact = artifact
        self.path = artifact_path(directory, artifact.name)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        self.tmp = Path(tmp)
        self.file = os.fdopen(fd, "wb")
        self.digest = hashlib.sha256()

    def write(self, chunk: bytes) -> None:
        self.file.write(chunk)
        self.digest.update(chunk)

    def finish(self) -> Path:
        self.file.close()
        expected = self.artifact.sha256
        if expected is not None and self.digest.hexdigest() != expected:
            self.tmp.unlink()
            raise ArtifactMismatch(
                f"{self.artifact.name}: SHA-256 {self.digest.hexdigest()}, the job lists {expected}"
            )
        self.tmp.replace(self.path)
        return self.path

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


class Client:
    """The sync client. `url`/`api_key` default to the configuration (`tuneset.config`)."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.config = Config.load(url, api_key)
        self.http = httpx.Client(
            base_url=self.config.url,
            headers=_headers(self.config),
            timeout=timeout,
            transport=transport,
            trust_env=False,  # a service URL is not a proxy's business
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _send(self, call: Call[T]) -> httpx.Response:
        return self.http.request(
            call.method, call.path, params=call.params, content=call.body, headers=call.headers
        )

    def run(self, call: Call[T]) -> T:
        return call.decode(self._send(call))

    # -- datasets and batches --------------------------------------------------------------

    def create_dataset(
        self, name: str, kind: DatasetKind = "chat", description: str | None = None
    ) -> Dataset:
        return self.run(Calls.create_dataset(name, kind, description))

    def list_datasets(self, order: Order = "desc", limit: int = 50, cursor: str | None = None) -> DatasetPage:
        return self.run(Calls.list_datasets(order, limit, cursor))

    def datasets(self, order: Order = "desc") -> Iterator[Dataset]:
        """Every dataset, page after page."""
        cursor: str | None = None
        while True:
            page = self.list_datasets(order, 200, cursor)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def get_dataset(self, dataset_id: str) -> Dataset:
        return self.run(Calls.get_dataset(dataset_id))

    def delete_dataset(self, dataset_id: str) -> None:
        self.run(Calls.delete_dataset(dataset_id))

    def push_batch(
        self,
        dataset_id: str,
        jsonl: bytes,
        *,
        idempotency_key: str | None = None,
        fmt: str | None = None,
        on_invalid: Literal["reject", "skip"] = "reject",
    ) -> Pushed:
        """Push JSONL lines as one batch. With a key, a batch the service is still storing from an
        earlier (interrupted) request is waited for, then replayed: it is stored once."""
        call = Calls.push_batch(dataset_id, jsonl, idempotency_key, fmt, on_invalid)
        deadline = time.monotonic() + IN_FLIGHT_WAIT_S
        while True:
            response = self._send(call)
            try:
                batch = call.decode(response)
            except ApiError as e:
                if not _in_flight(e) or time.monotonic() > deadline:
                    raise
                time.sleep(float(response.headers.get("Retry-After", "1")))
                continue
            return Pushed(batch, response.headers.get("Idempotent-Replayed") == "true")

    def list_batches(self, dataset_id: str) -> BatchPage:
        return self.run(Calls.list_batches(dataset_id))

    def delete_batch(self, dataset_id: str, batch_id: str) -> None:
        self.run(Calls.delete_batch(dataset_id, batch_id))

    # -- builds and jobs -------------------------------------------------------------------

    def start_build(
        self, dataset_id: str, recipe: BuildRequest | None = None, *, idempotency_key: str | None = None
    ) -> BuildStarted:
        return self.run(Calls.start_build(dataset_id, recipe or BuildRequest(), idempotency_key))

    def get_job(self, job_id: str) -> Job:
        return self.run(Calls.get_job(job_id))

    def list_jobs(
        self,
        status: JobStatus | None = None,
        dataset_id: str | None = None,
        order: Order = "desc",
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        return self.run(Calls.list_jobs(status, dataset_id, order, limit, cursor))

    def cancel_job(self, job_id: str) -> Job:
        return self.run(Calls.cancel_job(job_id))

    def events(self, job_id: str, last_event_id: str | None = None) -> Iterator[JobEvent]:
        """The job's events until it ends, resuming with Last-Event-ID when a stream ends early."""
        last, ended = last_event_id, False
        while True:
            headers = {"Last-Event-ID": last} if last else {}
            with connect_sse(self.http, "GET", f"/v1/jobs/{job_id}/events", headers=headers) as source:
                if source.response.is_error:
                    source.response.read()
                    raise ApiError.of(source.response)
                for sse in source.iter_sse():
                    event = _event(sse)
                    last = event.id or last
                    yield event
                    if event.terminal:
                        return
            if self.get_job(job_id).status in TERMINAL:
                if ended:
                    return
                ended = True  # one more stream replays its ending
            time.sleep(0.5)  # the stream ended early (the service's Redis failed): resume

    def wait(self, job_id: str) -> Job:
        """The job once it has ended."""
        for _ in self.events(job_id):
            pass
        return self.get_job(job_id)

    def artifacts(self, job_id: str) -> list[Artifact]:
        return self.run(Calls.artifacts(job_id)).items

    def download(self, job_id: str, artifact: Artifact, directory: Path) -> Path:
        """Write one artifact under `directory` (its folders too), checked against its SHA-256."""
        download = _Download(directory, artifact)
        try:
            with self.http.stream("GET", f"/v1/jobs/{job_id}/artifacts/{artifact.name}") as response:
                if response.is_error:
                    response.read()
                    raise ApiError.of(response)
                for chunk in response.iter_bytes():
                    download.write(chunk)
        except BaseException:
            download.abort()
            raise
        return download.finish()

    # -- API keys (an admin key) -----------------------------------------------------------

    def list_keys(self, tenant: str | None = None) -> list[ApiKey]:
        return self.run(Calls.list_keys(tenant)).items

    def create_key(self, tenant: str, admin: bool = False) -> ApiKey:
        return self.run(Calls.create_key(tenant, admin))

    def revoke_key(self, key_id: str) -> None:
        self.run(Calls.revoke_key(key_id))


class AsyncClient:
    """The async client: the same methods as `Client`, awaited."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = Config.load(url, api_key)
        self.http = httpx.AsyncClient(
            base_url=self.config.url,
            headers=_headers(self.config),
            timeout=timeout,
            transport=transport,
            trust_env=False,
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _send(self, call: Call[T]) -> httpx.Response:
        return await self.http.request(
            call.method, call.path, params=call.params, content=call.body, headers=call.headers
        )

    async def run(self, call: Call[T]) -> T:
        return call.decode(await self._send(call))

    async def create_dataset(
        self, name: str, kind: DatasetKind = "chat", description: str | None = None
    ) -> Dataset:
        return await self.run(Calls.create_dataset(name, kind, description))

    async def list_datasets(
        self, order: Order = "desc", limit: int = 50, cursor: str | None = None
    ) -> DatasetPage:
        return await self.run(Calls.list_datasets(order, limit, cursor))

    async def get_dataset(self, dataset_id: str) -> Dataset:
        return await self.run(Calls.get_dataset(dataset_id))

    async def delete_dataset(self, dataset_id: str) -> None:
        await self.run(Calls.delete_dataset(dataset_id))

    async def push_batch(
        self,
        dataset_id: str,
        jsonl: bytes,
        *,
        idempotency_key: str | None = None,
        fmt: str | None = None,
        on_invalid: Literal["reject", "skip"] = "reject",
    ) -> Pushed:
        call = Calls.push_batch(dataset_id, jsonl, idempotency_key, fmt, on_invalid)
        deadline = time.monotonic() + IN_FLIGHT_WAIT_S
        while True:
            response = await self._send(call)
            try:
                batch = call.decode(response)
            except ApiError as e:
                if not _in_flight(e) or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
                continue
            return Pushed(batch, response.headers.get("Idempotent-Replayed") == "true")

    async def list_batches(self, dataset_id: str) -> BatchPage:
        return await self.run(Calls.list_batches(dataset_id))

    async def delete_batch(self, dataset_id: str, batch_id: str) -> None:
        await self.run(Calls.delete_batch(dataset_id, batch_id))

    async def start_build(
        self, dataset_id: str, recipe: BuildRequest | None = None, *, idempotency_key: str | None = None
    ) -> BuildStarted:
        return await self.run(Calls.start_build(dataset_id, recipe or BuildRequest(), idempotency_key))

    async def get_job(self, job_id: str) -> Job:
        return await self.run(Calls.get_job(job_id))

    async def list_jobs(
        self,
        status: JobStatus | None = None,
        dataset_id: str | None = None,
        order: Order = "desc",
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        return await self.run(Calls.list_jobs(status, dataset_id, order, limit, cursor))

    async def cancel_job(self, job_id: str) -> Job:
        return await self.run(Calls.cancel_job(job_id))

    async def events(self, job_id: str, last_event_id: str | None = None) -> AsyncIterator[JobEvent]:
        last, ended = last_event_id, False
        while True:
            headers = {"Last-Event-ID": last} if last else {}
            async with aconnect_sse(self.http, "GET", f"/v1/jobs/{job_id}/events", headers=headers) as source:
                if source.response.is_error:
                    await source.response.aread()
                    raise ApiError.of(source.response)
                async for sse in source.aiter_sse():
                    event = _event(sse)
                    last = event.id or last
                    yield event
                    if event.terminal:
                        return
            if (await self.get_job(job_id)).status in TERMINAL:
                if ended:
                    return
                ended = True
            await asyncio.sleep(0.5)

    async def wait(self, job_id: str) -> Job:
        async for _ in self.events(job_id):
            pass
        return await self.get_job(job_id)

    async def artifacts(self, job_id: str) -> list[Artifact]:
        return (await self.run(Calls.artifacts(job_id))).items

    async def download(self, job_id: str, artifact: Artifact, directory: Path) -> Path:
        download = _Download(directory, artifact)
        try:
            async with self.http.stream("GET", f"/v1/jobs/{job_id}/artifacts/{artifact.name}") as response:
                if response.is_error:
                    await response.aread()
                    raise ApiError.of(response)
                async for chunk in response.aiter_bytes():
                    download.write(chunk)
        except BaseException:
            download.abort()
            raise
        return download.finish()

    async def list_keys(self, tenant: str | None = None) -> list[ApiKey]:
        return (await self.run(Calls.list_keys(tenant))).items

    async def create_key(self, tenant: str, admin: bool = False) -> ApiKey:
        return await self.run(Calls.create_key(tenant, admin))

    async def revoke_key(self, key_id: str) -> None:
        await self.run(Calls.revoke_key(key_id))
